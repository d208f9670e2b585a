//! Limits, slow and dead clients, faults and shutdown, against the real
//! binary. Each test states the outcome it expects and could fail.

mod common;

use common::{close_code, http_get, token, RawClient, Server, FAST};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn health(server: &Server) -> Value {
    let (_, body) = http_get(server.port, "/health", None).unwrap();
    serde_json::from_str(&body).unwrap()
}

async fn upgrade_with_origin(server: &Server, origin: &str) -> u16 {
    let mut req = format!("{}?token={}", server.url(), token("u", json!({})))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    server.upgrade_request_status(req).await
}

/// A raw HTTP request; returns the whole response text.
fn raw_http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn origins_are_checked_at_the_upgrade_and_for_the_api() {
    let server = Server::start(&["--allowed-origins", "https://app.example"]);
    assert_eq!(
        upgrade_with_origin(&server, "https://evil.example").await,
        403
    );
    assert_eq!(
        upgrade_with_origin(&server, "https://app.example").await,
        101
    );

    let t = token("u", json!({}));
    let api = |origin: &str, method: &str| {
        raw_http(
            server.port,
            &format!(
                "{method} /api/rooms/r/messages HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
                 Authorization: Bearer {t}\r\nAccess-Control-Request-Method: GET\r\n\r\n"
            ),
        )
    };
    let ok = api("https://app.example", "GET");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.contains("Access-Control-Allow-Origin: https://app.example"),
        "{ok}"
    );
    let pre = api("https://app.example", "OPTIONS");
    assert!(
        pre.starts_with("HTTP/1.1 204") && pre.contains("Authorization"),
        "{pre}"
    );
    assert!(api("https://evil.example", "GET").starts_with("HTTP/1.1 403"));
}

#[tokio::test]
async fn without_an_allow_list_a_production_secret_refuses_browsers() {
    // The harness passes a real --jwt-secret, so no origin is allowed.
    let server = Server::start(&[]);
    assert_eq!(
        upgrade_with_origin(&server, "https://any.example").await,
        403
    );
    let _ = server.connect("native-client").await; // no Origin header: allowed
}

#[tokio::test]
async fn connection_caps_per_user_and_per_process() {
    let server = Server::start(&["--max-conns-per-user", "2", "--max-connections", "3"]);
    let _a1 = server.connect("ana").await;
    let _a2 = server.connect("ana").await;
    let url = format!("{}?token={}", server.url(), token("ana", json!({})));
    assert_eq!(
        server.upgrade_status(&url).await,
        429,
        "third connection of one user"
    );

    let _b = server.connect("bo").await;
    let url = format!("{}?token={}", server.url(), token("cy", json!({})));
    assert_eq!(server.upgrade_status(&url).await, 503, "process cap");

    // Existing connections keep working.
    let mut a3 = _a1;
    a3.join("still").await;
    let h = health(&server);
    assert_eq!(h["refused"]["user_connections"], 1);
    assert_eq!(h["refused"]["capacity"], 1);
}

#[tokio::test]
async fn new_connections_per_ip_are_rate_limited() {
    let server = Server::start(&["--connections-per-ip-per-sec", "1"]);
    // The health poll at start used part of the burst of 5.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            http_get(server.port, "/health", None)
                .map(|(s, _)| s)
                .unwrap_or(0),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn joins_history_and_typing_have_their_own_budgets() {
    let server = Server::start(&["--joins-per-sec", "1", "--history-per-sec", "1"]);
    let mut c = server.connect("ana").await;
    let mut limited = 0;
    for i in 0..8 {
        c.send(json!({"type": "join", "room": format!("r{i}"), "id": format!("j{i}")}))
            .await;
        let r = c.reply(&format!("j{i}")).await;
        if r["code"] == "rate_limited" {
            assert!(r["retry_after_ms"].as_u64().unwrap() > 0);
            limited += 1;
        }
    }
    assert_eq!(limited, 3, "burst of 5 joins, then rate_limited");
    let mut limited = 0;
    for i in 0..6 {
        c.send(json!({"type": "history", "room": "r0", "id": format!("h{i}")}))
            .await;
        if c.reply(&format!("h{i}")).await["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert_eq!(limited, 2, "burst of 4 history requests");
}

#[tokio::test]
async fn per_user_message_rate_spans_connections() {
    let server = Server::start(&[
        "--messages-per-sec",
        "1000",
        "--message-burst",
        "1000",
        "--user-messages-per-sec",
        "1",
    ]);
    let mut a1 = server.connect("ana").await;
    let mut a2 = server.connect("ana").await;
    a1.join("r").await;
    a2.join("r").await;
    // Burst per user is 3: two from one connection, then the other is limited.
    a1.post("r", "1", "x").await;
    a1.post("r", "2", "x").await;
    a2.post("r", "3", "x").await;
    a2.send(json!({"type": "message", "room": "r", "id": "4", "content": "x"}))
        .await;
    assert_eq!(a2.reply("4").await["code"], "rate_limited");
}

#[tokio::test]
async fn a_slow_reader_is_cut_off_without_slowing_its_room() {
    let mut args = vec!["--max-outbound-bytes", "262144"];
    args.extend(FAST);
    let server = Server::start(&args);
    let mut slow = RawClient::connect(server.port, &token("slow", json!({})), Some(4096)).await;
    slow.send_frame(1, br#"{"type":"join","room":"flood","id":"j"}"#)
        .await;
    let mut fast = server.connect("fast").await;
    let mut sender = server.connect("sender").await;
    fast.join("flood").await;
    sender.join("flood").await;

    // About 8 MB for every member: more than the slow client's socket
    // buffers and its 256 KiB queue can hold. The fast member reads all the
    // time; the sender reads its acks as it goes.
    let n = 2000;
    let reader = tokio::spawn(async move { fast.messages("flood", n).await });
    let content = "y".repeat(4000);
    for chunk in 0..n / 20 {
        for i in chunk * 20..(chunk + 1) * 20 {
            let id = format!("f{i}");
            let frame = json!({"type": "message", "room": "flood", "id": id, "content": content});
            sender.send(frame).await;
        }
        for i in chunk * 20..(chunk + 1) * 20 {
            assert_eq!(sender.reply(&format!("f{i}")).await["type"], "ack");
        }
    }
    // The fast member got everything, in order.
    let got = reader.await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());

    // The slow one, once it reads, finds a 1013 close after what it had.
    let frames = slow.read_to_end().await;
    let (op, payload) = frames.last().expect("frames");
    assert_eq!(
        (*op, close_code(payload)),
        (8, 1013),
        "{} frames",
        frames.len()
    );
    assert!(frames.len() < n, "it did not get everything");
    assert_eq!(health(&server)["stats"]["slow_consumers"], 1);
}

#[tokio::test]
async fn silent_peers_are_pinged_and_dropped() {
    let server = Server::start(&["--ping-interval", "1", "--pong-timeout", "1"]);
    // Never answers pings.
    let mut mute = RawClient::connect(server.port, &token("mute", json!({})), None).await;
    // Reads all the time (tungstenite answers pings while reading).
    let mut alive = server.connect("alive").await;
    alive.join("here").await;

    let dropped = async {
        let ping = mute.wait_frame(9).await;
        assert!(ping.is_empty());
        mute.read_to_end().await
    };
    let chatting = async {
        for i in 0..15 {
            alive.post("here", &format!("m{i}"), "still here").await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let (frames, ()) = tokio::join!(dropped, chatting);
    let (op, payload) = frames.last().unwrap();
    assert_eq!((*op, close_code(payload)), (8, 1001));
    alive.post("here", "last", "outlived the mute one").await;
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_keeps_every_ack() {
    let mut server = Server::start(&FAST);
    let mut a = server.connect("ana").await;
    let mut b = server.connect("bo").await;
    a.join("drain").await;
    b.join("drain").await;
    for i in 0..200 {
        a.send(json!({"type": "message", "room": "drain", "id": format!("d{i}"), "content": "x"}))
            .await;
    }
    let mut acked = 0;
    for i in 0..50 {
        if a.reply(&format!("d{i}")).await["type"] == "ack" {
            acked += 1;
        }
    }
    assert_eq!(acked, 50);

    let started = std::time::Instant::now();
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    assert_eq!(b.close_code().await, 1001);
    let status = server.stop_wait();
    assert!(status.success(), "{status:?}");
    eprintln!("drained and exited in {} ms", started.elapsed().as_millis());

    server.restart();
    let mut c = server.connect("cy").await;
    let ack = c.join("drain").await;
    assert!(ack["last_seq"].as_u64().unwrap() >= 50, "{ack}");
}

#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
#[tokio::test]
async fn a_panicking_connection_does_not_take_down_its_worker() {
    let server = Server::start(&["--workers", "1"]);
    let mut victim = RawClient::connect(server.port, &token("v", json!({})), None).await;
    let mut bystander = server.connect("by").await;
    bystander.join("calm").await;

    victim.send_frame(1, br#"{"type":"__panic"}"#).await;
    victim.read_to_end().await; // the connection goes away

    bystander.post("calm", "after", "still served").await;
    let mut newcomer = server.connect("new").await;
    newcomer.join("calm").await;
    assert_eq!(
        health(&server)["connections"],
        2,
        "the panicked connection was unregistered"
    );
}

#[tokio::test]
async fn backends_that_fail_at_start_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(file.join("sub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args(["--listen", &addr, "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen"), "{err}");
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let server = Server::start_logged(&["--log", "trace"]);
    let t = token("secretive", json!({}));
    let mut c = server.connect_token(&t).await;
    c.join("r").await;
    let bad = format!("{}x", t);
    let _ = server
        .upgrade_status(&format!("{}?token={bad}", server.url()))
        .await;
    drop(c);
    let log = server.log();
    assert!(
        log.contains("refusing connections"),
        "the refusal is logged"
    );
    let signature = t.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "a token appeared in the log");
}

#[tokio::test]
async fn rs256_keys_refuse_hs256_tokens_signed_with_the_public_key() {
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem");
    let server = Server::start(&["--jwt-public-key", public]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": "u", "exp": now + 600});

    let pem = std::fs::read(public).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&pem).unwrap(),
    )
    .unwrap();
    let url = |t: &str| format!("{}?token={t}", server.url());
    assert_eq!(server.upgrade_status(&url(&confused)).await, 401);

    let private = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa_private.pem"
    ))
    .unwrap();
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(server.upgrade_status(&url(&good)).await, 101);
}

#[tokio::test]
async fn es256_keys_work() {
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ec_public.pem");
    let server = Server::start(&["--jwt-public-key", public]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let private = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ec_private.pem"
    ))
    .unwrap();
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"sub": "u", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(
        server
            .upgrade_status(&format!("{}?token={good}", server.url()))
            .await,
        101
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_upgrade_is_dropped() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(&["--handshake-timeout", "1"]);
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    // Half an upgrade request, then nothing.
    tokio::io::AsyncWriteExt::write_all(&mut silent, b"GET /ws/chat HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(common::WAIT, silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}

#[tokio::test]
async fn a_connection_joins_at_most_max_rooms_per_conn() {
    let server = Server::start(&["--max-rooms-per-conn", "2"]);
    let mut c = server.connect("ana").await;
    c.join("r1").await;
    c.join("r2").await;
    c.join("r1").await; // joining again is no new room
    c.send(json!({"type": "join", "room": "r3", "id": "third"}))
        .await;
    let err = c.reply("third").await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    c.send(json!({"type": "leave", "room": "r1", "id": "out"}))
        .await;
    assert_eq!(c.reply("out").await["type"], "ack");
    c.join("r3").await;
}

#[tokio::test]
async fn sigint_stops_like_sigterm() {
    let mut server = Server::start(&[]);
    let mut a = server.connect("ana").await;
    a.join("r").await;
    a.post("r", "m1", "kept").await;
    unsafe { libc::kill(server.pid(), libc::SIGINT) };
    assert_eq!(a.close_code().await, 1001);
    assert!(server.stop_wait().success());
    server.restart();
    let mut b = server.connect("bo").await;
    assert_eq!(b.join("r").await["last_seq"], 1);
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&["--shutdown-grace", "60"]);
    // A client that never answers the close handshake keeps the drain going.
    let mut stubborn = RawClient::connect(server.port, &token("s", json!({})), None).await;
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let close = stubborn.wait_frame(8).await;
    assert_eq!(close_code(&close), 1001);

    let started = std::time::Instant::now();
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let status = server.stop_wait();
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn typing_beyond_its_budget_is_dropped_silently() {
    let server = Server::start(&["--typing-per-sec", "1"]);
    let mut ana = server.connect("ana").await;
    let mut bo = server.connect("bo").await;
    ana.join("t").await;
    bo.join("t").await;
    for _ in 0..10 {
        ana.send(json!({"type": "typing", "room": "t", "state": true}))
            .await;
    }
    // The message travels behind the typing events on the same queues.
    ana.post("t", "after", "done typing").await;
    bo.next_where("the message", |v| v["type"] == "message")
        .await;
    let shown = bo.frames.iter().filter(|v| v["type"] == "typing").count();
    assert!(
        (2..=3).contains(&shown),
        "{shown} of 10 typing events shown (burst 2)"
    );
    ana.assert_none_before_pong("an error for dropped typing", |v| v["type"] == "error")
        .await;
}

#[tokio::test]
async fn page_member_list_and_resume_sizes_are_configurable() {
    let mut args = vec![
        "--max-history-page",
        "2",
        "--max-members-listed",
        "2",
        "--max-resume",
        "3",
        "--history-cache",
        "1",
    ];
    args.extend(FAST);
    let server = Server::start(&args);
    let mut a = server.connect("ana").await;
    let mut b = server.connect("bo").await;
    let mut c = server.connect("cy").await;
    a.join("cfg").await;
    b.join("cfg").await;
    let ack = c.join("cfg").await;
    assert_eq!(ack["members"].as_array().unwrap().len(), 2, "{ack}");
    for i in 1..=6 {
        a.post("cfg", &format!("m{i}"), "x").await;
    }

    a.send(json!({"type": "history", "room": "cfg", "limit": 50, "id": "h"}))
        .await;
    let page = a.reply("h").await;
    assert_eq!(common::seqs(page["messages"].as_array().unwrap()), [6, 5]);

    // A resume from the start replays 3 (from the store: the cache holds 1).
    let mut late = server.connect("dee").await;
    late.send(json!({"type": "join", "room": "cfg", "since": 0, "id": "j"}))
        .await;
    late.reply("j").await;
    assert_eq!(common::seqs(&late.messages("cfg", 3).await), [1, 2, 3]);
    late.assert_none_before_pong("more than --max-resume", |v| v["type"] == "message")
        .await;
}
