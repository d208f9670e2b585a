//! Bad input of every kind: the right error or close code, the connection
//! kept where the protocol says so, and nothing already acked lost.

mod common;

use common::{http_get, sign, token, Server, SECRET};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn expect_error(c: &mut common::Client, id: &str, code: &str) -> Value {
    let r = c.reply(id).await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some(code)),
        "{r}"
    );
    r
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_connection_survives() {
    let server = Server::start(&[]);
    let mut c = server.connect("ana").await;
    c.join("r").await;
    let acked = c.post("r", "keep", "kept").await;

    c.send_raw(Message::text("{not json")).await;
    let err = c.next_of("error").await;
    assert_eq!(err["code"], "bad_request");

    c.send(json!({"type": "launch", "id": "u1"})).await;
    assert_eq!(
        expect_error(&mut c, "u1", "bad_request").await["message"],
        "unknown type"
    );
    c.send(json!({"id": "u2", "room": "r"})).await;
    expect_error(&mut c, "u2", "bad_request").await;
    c.send(json!({"type": "message", "room": "r", "id": "u3"}))
        .await;
    assert_eq!(
        expect_error(&mut c, "u3", "bad_request").await["message"],
        "missing content"
    );
    c.send(json!({"type": "join", "room": 42, "id": "u4"}))
        .await;
    c.send(json!({"type": "join", "room": "bad room!", "id": "u5"}))
        .await;
    expect_error(&mut c, "u5", "bad_request").await;
    c.send(json!({"type": "join", "room": "dm:a:b", "id": "u6"}))
        .await;
    expect_error(&mut c, "u6", "bad_request").await;
    c.send(json!({"type": "history", "room": "r", "limit": 1000, "id": "u7"}))
        .await;
    expect_error(&mut c, "u7", "bad_request").await;
    c.send_raw(Message::binary(vec![1, 2, 3])).await;
    c.send(json!({"type": "message", "room": "r", "id": "u8", "content": "\u{0}\u{1}"}))
        .await;
    assert_eq!(
        expect_error(&mut c, "u8", "bad_request").await["message"],
        "empty content"
    );

    c.send(json!({"type": "message", "room": "nowhere", "id": "nj", "content": "x"}))
        .await;
    expect_error(&mut c, "nj", "not_joined").await;
    c.send(json!({"type": "leave", "room": "nowhere", "id": "nl"}))
        .await;
    expect_error(&mut c, "nl", "not_joined").await;
    c.send(json!({"type": "typing", "room": "nowhere", "state": true, "id": "nt"}))
        .await;
    expect_error(&mut c, "nt", "not_joined").await;

    let big = "x".repeat(4097);
    c.send(json!({"type": "message", "room": "r", "id": "big", "content": big}))
        .await;
    expect_error(&mut c, "big", "too_large").await;
    // Escaping can push content over the limit: the size after sanitising counts.
    let grows = "<".repeat(1500);
    c.send(json!({"type": "message", "room": "r", "id": "grow", "content": grows}))
        .await;
    expect_error(&mut c, "grow", "too_large").await;

    // Still alive, and what was acked is still in the history.
    c.send(json!({"type": "history", "room": "r", "id": "h"}))
        .await;
    let page = c.reply("h").await;
    assert_eq!(page["messages"][0]["seq"], acked["seq"]);
    assert_eq!(page["messages"][0]["content"], "kept");
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        1,
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn room_claims_and_policy_give_forbidden() {
    let server = Server::start(&["--room-policy", "claims"]);
    let mut limited = server
        .connect_token(&token("ana", json!({"rooms": ["course:42:*"]})))
        .await;
    limited.join("course:42:a").await;
    limited
        .send(json!({"type": "join", "room": "course:43:a", "id": "f1"}))
        .await;
    expect_error(&mut limited, "f1", "forbidden").await;
    limited
        .send(json!({"type": "history", "room": "course:43:a", "id": "f2"}))
        .await;
    expect_error(&mut limited, "f2", "forbidden").await;

    // Under the claims policy, a token without the claim may join nothing…
    let mut bare = server.connect("bo").await;
    bare.send(json!({"type": "join", "room": "course:42:a", "id": "f3"}))
        .await;
    expect_error(&mut bare, "f3", "forbidden").await;
    // …except an admin.
    let mut admin = server
        .connect_token(&token("root", json!({"role": "admin"})))
        .await;
    admin.join("course:42:a").await;
}

#[tokio::test]
async fn flooding_is_rate_limited_then_closed_with_1008() {
    let server = Server::start(&["--messages-per-sec", "1", "--message-burst", "3"]);
    let mut c = server.connect("ana").await;
    c.join("r").await;
    for i in 0..3 {
        c.post("r", &format!("ok{i}"), "x").await;
    }
    c.send(json!({"type": "message", "room": "r", "id": "slow", "content": "x"}))
        .await;
    let err = expect_error(&mut c, "slow", "rate_limited").await;
    let retry = err["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1000).contains(&retry), "{err}");

    // Ignoring the warnings gets the connection closed.
    for i in 0..40 {
        let frame = json!({"type": "message", "room": "r", "id": format!("f{i}"), "content": "x"});
        if c.ws.send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
    }
    assert_eq!(c.close_code().await, 1008);
}

#[tokio::test]
async fn bad_tokens_are_refused_at_the_upgrade_with_401() {
    let server = Server::start(&[]);
    let url = server.url();
    let expired = sign(SECRET, &json!({"sub": "u", "exp": now() - 3600}));
    let early = sign(
        SECRET,
        &json!({"sub": "u", "exp": now() + 3600, "nbf": now() + 600}),
    );
    let wrong = sign("not-the-secret", &json!({"sub": "u", "exp": now() + 3600}));
    let no_sub = sign(SECRET, &json!({"exp": now() + 3600}));
    let no_exp = sign(SECRET, &json!({"sub": "u"}));
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"u","exp":{}}}"#, now() + 3600))
    );
    let huge = "a".repeat(9000);
    for (what, t) in [
        ("expired", expired),
        ("not yet valid", early),
        ("wrong signature", wrong),
        ("no sub", no_sub),
        ("no exp", no_exp),
        ("alg none", none),
        ("garbage", "garbage".to_owned()),
        ("oversized", huge),
    ] {
        let status = server.upgrade_status(&format!("{url}?token={t}")).await;
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(server.upgrade_status(&url).await, 401, "no token");

    // Accepted through the Authorization header and through the subprotocol.
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("u", json!({}))).parse().unwrap(),
    );
    assert_eq!(server.upgrade_request_status(req).await, 101);
    let mut req = url.clone().into_client_request().unwrap();
    let proto = format!("bearer, {}", token("u", json!({})));
    req.headers_mut()
        .insert("sec-websocket-protocol", proto.parse().unwrap());
    let (_, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol login");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "bearer");

    let (_, health) = http_get(server.port, "/health", None).unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    assert!(health["refused"]["auth"].as_u64().unwrap() >= 9, "{health}");
}

#[tokio::test]
async fn bad_upgrades_get_400_and_426() {
    let server = Server::start(&[]);
    let t = token("u", json!({}));
    let (status, body) = http_get(server.port, &format!("/ws/chat?token={t}"), None).unwrap();
    assert_eq!(status, 400, "plain GET on the WebSocket path");
    assert!(
        body.contains("pgrade") || body.contains("websocket"),
        "{body}"
    );

    let mut req = format!("{}?token={t}", server.url())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-version", "8".parse().unwrap());
    assert_eq!(server.upgrade_request_status(req).await, 426);
}

#[tokio::test]
async fn oversized_frames_and_invalid_utf8_close_the_connection() {
    let server = Server::start(&["--max-frame-bytes", "8192"]);
    let mut c = server.connect("ana").await;
    c.send_raw(Message::text("x".repeat(9000))).await;
    assert_eq!(c.close_code().await, 1009);

    // Invalid UTF-8 in a text frame; tungstenite will not send one, so write
    // the masked frame by hand on a raw socket after the upgrade.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let t = token("u", json!({}));
    let head = format!(
        "GET /ws/chat?token={t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let payload = [0xffu8, 0xfe, 0x41];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(common::WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    // The close frame is the last frame: 0x88, length, code 1007.
    let close = seen
        .windows(4)
        .rposition(|w| w[0] == 0x88 && w[2..4] == 1007u16.to_be_bytes());
    assert!(
        close.is_some(),
        "no 1007 close in {:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test]
async fn a_full_history_queue_answers_unavailable_and_loses_nothing_acked() {
    let server = Server::start(&[
        "--history-queue",
        "1",
        "--messages-per-sec",
        "10000",
        "--message-burst",
        "10000",
        "--user-messages-per-sec",
        "10000",
    ]);
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = server.connect(&format!("s{i}")).await;
        c.join("q").await;
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..50 {
            c.send(
                json!({"type": "message", "room": "q", "id": format!("{i}-{k}"), "content": "x"}),
            )
            .await;
        }
    }
    let mut acked = Vec::new();
    let mut unavailable = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..50 {
            let r = c.reply(&format!("{i}-{k}")).await;
            match (r["type"].as_str(), r["code"].as_str()) {
                (Some("ack"), _) => acked.push(r["seq"].as_u64().unwrap()),
                (Some("error"), Some("unavailable")) => unavailable += 1,
                other => panic!("unexpected answer {other:?}: {r}"),
            }
        }
    }
    assert!(
        unavailable > 0,
        "a one-slot queue under a burst of 300 refuses some"
    );
    acked.sort();
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "acked seqs have no gap"
    );

    let c = &mut clients[0];
    c.send(json!({"type": "history", "room": "q", "limit": 100, "id": "h"}))
        .await;
    let page = c.reply("h").await;
    let stored = page["messages"].as_array().unwrap().len();
    assert_eq!(
        stored,
        acked.len().min(100),
        "every acked message is stored, and only those"
    );
}
