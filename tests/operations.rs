//! What operators and the application's backend use: /metrics and the admin
//! API, against the real binary.

mod common;

use common::{http_get, token, Server};
use serde_json::{json, Value};

const KEY: &str = "an-admin-key-for-tests";

/// One sample of a metric line, e.g. `hubbub_joins_total{shard="0"}`,
/// summed over every label set when `name` has none.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(server: &Server) -> String {
    let (status, body) = http_get(server.port, "/metrics", None).unwrap();
    assert_eq!(status, 200);
    body
}

/// An admin request; returns (status, body).
fn admin(port: u16, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let server = Server::start(&["--messages-per-sec", "1", "--message-burst", "5"]);
    let before = scrape(&server);
    for name in [
        "hubbub_connections",
        "hubbub_messages_in_total",
        "hubbub_fanout_seconds_count",
        "hubbub_history_queue",
    ] {
        assert!(before.contains(name), "{name} missing from\n{before}");
    }

    let mut a = server.connect("ana").await;
    let mut b = server.connect("bo").await;
    a.join("m").await;
    b.join("m").await;
    for i in 0..5 {
        a.post("m", &format!("p{i}"), "x").await;
    }
    b.messages("m", 5).await;
    a.send(json!({"type": "message", "room": "m", "id": "over", "content": "x"}))
        .await;
    assert_eq!(a.reply("over").await["code"], "rate_limited");
    let url = format!("{}?token=bad", server.url());
    assert_eq!(server.upgrade_status(&url).await, 401);

    let after = scrape(&server);
    assert_eq!(metric(&after, "hubbub_connections"), 2.0);
    assert_eq!(metric(&after, "hubbub_messages_in_total"), 5.0);
    assert!(
        metric(&after, "hubbub_messages_out_total") >= 10.0,
        "both members got 5"
    );
    assert!(metric(&after, "hubbub_joins_total") >= 2.0);
    assert!(metric(&after, "hubbub_fanout_seconds_count") >= 5.0);
    assert_eq!(metric(&after, "hubbub_ack_seconds_count"), 5.0);
    assert!(metric(&after, "hubbub_history_batch_size_count") >= 1.0);
    assert_eq!(metric(&after, "hubbub_rooms"), 1.0, "room m is in memory");
    assert_eq!(metric(&after, "hubbub_slow_consumers_total"), 0.0);
    assert!(
        after.contains(r#"hubbub_rate_limited_total{limit="messages"} 1"#),
        "{after}"
    );
    assert!(
        after.contains(r#"hubbub_refused_connections_total{reason="auth"} 1"#),
        "{after}"
    );
}

#[tokio::test]
async fn the_admin_api_publishes_describes_and_disconnects() {
    let server = Server::start(&["--admin-key", KEY]);
    let mut a = server.connect("ana").await;
    a.join("course:7").await;

    let (status, _) = admin(
        server.port,
        "GET",
        "/admin/rooms/course:7",
        "wrong-key-wrong-key",
        None,
    );
    assert_eq!(status, 401);

    let body = json!({"content": "Class starts in 5 minutes", "id": "notice-1"});
    let (status, ack) = admin(
        server.port,
        "POST",
        "/admin/rooms/course:7/messages",
        KEY,
        Some(body),
    );
    assert_eq!(status, 200, "{ack}");
    let ack: Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(ack["seq"], 1);
    let m = a.messages("course:7", 1).await.remove(0);
    assert_eq!(
        m["from"],
        json!({"id": "system", "name": "System", "role": "admin"})
    );
    assert_eq!(m["content"], "Class starts in 5 minutes");

    let (status, info) = admin(server.port, "GET", "/admin/rooms/course:7", KEY, None);
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["last_seq"], 1);
    assert_eq!(info["members"][0]["id"], "ana");

    let (status, _) = admin(
        server.port,
        "POST",
        "/admin/users/ana/disconnect",
        KEY,
        None,
    );
    assert_eq!(status, 202);
    assert_eq!(a.close_code().await, 4001);
}

#[tokio::test]
async fn without_a_key_the_admin_api_does_not_exist() {
    let server = Server::start(&[]);
    let (status, _) = admin(server.port, "GET", "/admin/rooms/r", KEY, None);
    assert_eq!(status, 404);
    let (status, _) = http_get(server.port, "/metrics", Some(&token("u", json!({})))).unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn ready_and_alive_subcommands_probe_the_local_server() {
    let probe = |what: &str, port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
            .arg(what)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap()
            .status
            .success()
    };
    let mut server = Server::start(&[]);
    assert!(probe("ready", server.port));
    assert!(probe("alive", server.port));
    assert!(server.stop().success());
    assert!(!probe("ready", server.port), "nothing listens any more");
    assert!(!probe("alive", server.port));
}
