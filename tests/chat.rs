//! End-to-end tests of the chat protocol against the real binary.

mod common;

use common::{http_get, seqs, token, Server, FAST};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_describes_user_and_limits() {
    let server = Server::start(&[]);
    let t = token("u1", json!({"name": "Ana", "role": "teacher"}));
    let url = format!("{}?token={t}", server.url());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let Some(Ok(Message::Text(first))) = futures_util::StreamExt::next(&mut ws).await else {
        panic!("no welcome");
    };
    let w: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(w["type"], "welcome");
    assert_eq!(
        w["user"],
        json!({"id": "u1", "name": "Ana", "role": "teacher"})
    );
    assert_eq!(w["limits"]["max_message_bytes"], 4096);
    assert_eq!(w["limits"]["messages_per_sec"], 10);
    assert!(w["conn"].is_string() && w["server_time"].is_u64());
}

#[tokio::test]
async fn room_messages_reach_every_member_once_with_acks() {
    let server = Server::start(&FAST);
    let mut a = server.connect("ana").await;
    let mut b = server.connect("bo").await;
    let mut outsider = server.connect("cy").await;
    a.join("course:1").await;
    let ack = b.join("course:1").await;
    assert_eq!(ack["last_seq"], 0);
    let members: Vec<&str> = ack["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(members.contains(&"ana") && members.contains(&"bo"), "{ack}");

    let ack = a.post("course:1", "m1", "hello <b>class</b>").await;
    assert_eq!(ack["room"], "course:1");
    assert_eq!(ack["seq"], 1);
    let got_a = a.messages("course:1", 1).await;
    let got_b = b.messages("course:1", 1).await;
    assert_eq!(got_a, got_b, "sender and member see the same frame");
    let m = &got_b[0];
    assert_eq!(m["seq"], ack["seq"]);
    assert_eq!(m["ts"], ack["ts"]);
    assert_eq!(m["id"], "m1");
    assert_eq!(m["from"]["id"], "ana");
    assert_eq!(
        m["content"], "hello &lt;b&gt;class&lt;&#x2F;b&gt;",
        "escaped by default"
    );

    outsider
        .assert_none_before_pong("message to a non-member", |v| v["type"] == "message")
        .await;
}

#[tokio::test]
async fn concurrent_senders_across_workers_share_one_gap_free_order() {
    let server = Server::start(&[
        "--workers",
        "4",
        "--messages-per-sec",
        "10000",
        "--message-burst",
        "10000",
        "--user-messages-per-sec",
        "10000",
    ]);
    let room = "course:race";
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = server.connect(&format!("s{i}")).await;
        c.join(room).await;
        clients.push(c);
    }

    // Every client sends 25 messages without waiting for acks.
    let per = 25;
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..per {
            c.send(
                json!({"type": "message", "room": room, "id": format!("c{i}-{k}"), "content": "x"}),
            )
            .await;
        }
    }
    let total = per * clients.len();
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let frames = c.messages(room, total).await;
        orders.push(
            frames
                .iter()
                .map(|f| (f["seq"].as_u64().unwrap(), f["id"].clone()))
                .collect::<Vec<_>>(),
        );
    }
    let expected: Vec<u64> = (1..=total as u64).collect();
    for order in &orders {
        assert_eq!(order.iter().map(|(s, _)| *s).collect::<Vec<_>>(), expected);
        assert_eq!(order, &orders[0], "every member sees the same order");
    }
}

#[tokio::test]
async fn resume_with_since_replays_the_gap_without_duplicates() {
    let server = Server::start(&FAST);
    let mut a = server.connect("ana").await;
    let mut b = server.connect("bo").await;
    a.join("r").await;
    b.join("r").await;
    for i in 0..5 {
        a.post("r", &format!("p{i}"), "before").await;
    }
    let seen = b.messages("r", 5).await;
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    drop(b);

    for i in 5..12 {
        a.post("r", &format!("p{i}"), "while away").await;
    }

    let mut b = server.connect("bo").await;
    b.send(json!({"type": "join", "room": "r", "since": last, "id": "rejoin"}))
        .await;
    let ack = b.reply("rejoin").await;
    assert_eq!(ack["last_seq"], 12);
    a.post("r", "p12", "live").await;
    let got = b.messages("r", 8).await;
    assert_eq!(seqs(&got), (6..=13).collect::<Vec<_>>());
    b.assert_none_before_pong("duplicate", |v| v["type"] == "message")
        .await;
}

#[tokio::test]
async fn resume_reaches_beyond_the_memory_cache() {
    let server = Server::start(&[
        "--history-cache",
        "4",
        "--messages-per-sec",
        "10000",
        "--message-burst",
        "10000",
        "--user-messages-per-sec",
        "10000",
    ]);
    let mut a = server.connect("ana").await;
    a.join("deep").await;
    for i in 0..20 {
        a.post("deep", &format!("d{i}"), "x").await;
    }
    let mut b = server.connect("bo").await;
    b.send(json!({"type": "join", "room": "deep", "since": 2, "id": "j"}))
        .await;
    b.reply("j").await;
    assert_eq!(
        seqs(&b.messages("deep", 18).await),
        (3..=20).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn history_pages_newest_first_over_ws_and_http() {
    let server = Server::start(&[
        "--history-cache",
        "16",
        "--messages-per-sec",
        "10000",
        "--message-burst",
        "10000",
        "--user-messages-per-sec",
        "10000",
    ]);
    let mut a = server.connect("ana").await;
    a.join("hist").await;
    for i in 1..=120 {
        a.post("hist", &format!("h{i}"), &format!("n{i}")).await;
    }

    a.send(json!({"type": "history", "room": "hist", "id": "q1"}))
        .await;
    let page = a.reply("q1").await;
    assert_eq!(page["type"], "history");
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        (71..=120).rev().collect::<Vec<_>>()
    );
    assert_eq!(page["has_more"], true);

    a.send(json!({"type": "history", "room": "hist", "before": 21, "limit": 100, "id": "q2"}))
        .await;
    let page = a.reply("q2").await;
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        (1..=20).rev().collect::<Vec<_>>()
    );
    assert_eq!(page["has_more"], false);
    assert_eq!(page["messages"][0]["content"], "n20");

    // The REST API returns the same page.
    let t = token("ana", json!({}));
    let (status, body) = http_get(
        server.port,
        "/api/rooms/hist/messages?before=21&limit=100",
        Some(&t),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let http: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(http["messages"], page["messages"]);

    let (status, _) = http_get(server.port, "/api/rooms/hist/messages", None).unwrap();
    assert_eq!(status, 401);
    let limited = token("ana", json!({"rooms": ["other:*"]}));
    let (status, _) = http_get(server.port, "/api/rooms/hist/messages", Some(&limited)).unwrap();
    assert_eq!(status, 403);
    let (status, _) =
        http_get(server.port, "/api/rooms/hist/messages?limit=500", Some(&t)).unwrap();
    assert_eq!(status, 400);
    let (status, body) = http_get(server.port, "/nope", None).unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("not found"));
}

#[tokio::test]
async fn restart_keeps_history_and_continues_seq() {
    let mut server = Server::start(&FAST);
    let mut a = server.connect("ana").await;
    a.join("keep").await;
    for i in 1..=10 {
        a.post("keep", &format!("k{i}"), "x").await;
    }
    drop(a);
    assert!(server.stop().success(), "SIGTERM exits 0");
    server.restart();

    let mut a = server.connect("ana").await;
    let ack = a.join("keep").await;
    assert_eq!(ack["last_seq"], 10);
    let ack = a.post("keep", "k11", "after restart").await;
    assert_eq!(ack["seq"], 11);

    // SIGKILL: what was acked is still there.
    server.kill();
    server.restart();
    let mut a = server.connect("ana").await;
    a.send(json!({"type": "history", "room": "keep", "limit": 100, "id": "h"}))
        .await;
    let page = a.reply("h").await;
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        (1..=11).rev().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn resend_with_the_same_id_is_stored_once() {
    let mut server = Server::start(&FAST);
    let mut a = server.connect("ana").await;
    a.join("once").await;
    let first = a.post("once", "same", "hello").await;
    let again = a.post("once", "same", "hello").await;
    assert_eq!(first, again, "the original ack, repeated");

    // Also after a restart (rebuilt from the stored messages).
    drop(a);
    server.stop();
    server.restart();
    let mut a = server.connect("ana").await;
    a.join("once").await;
    let third = a.post("once", "same", "hello").await;
    assert_eq!(third["seq"], first["seq"]);
    a.send(json!({"type": "history", "room": "once", "id": "h"}))
        .await;
    let page = a.reply("h").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn direct_messages_reach_every_connection_of_both_users() {
    let server = Server::start(&FAST);
    let mut ana1 = server.connect("ana").await;
    let mut ana2 = server.connect("ana").await;
    let mut bo = server.connect("bo").await;
    let mut cy = server.connect("cy").await;

    ana1.send(json!({"type": "dm", "to": "bo", "content": "psst", "id": "d1"}))
        .await;
    let ack = ana1.reply("d1").await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["seq"], 1);
    for c in [&mut ana2, &mut bo] {
        let dm = c.next_of("dm").await;
        assert_eq!(
            (
                dm["from"]["id"].as_str(),
                dm["to"].as_str(),
                dm["seq"].as_u64()
            ),
            (Some("ana"), Some("bo"), Some(1))
        );
        assert_eq!(dm["content"], "psst");
    }
    // The sending connection has the ack; the DM goes to the sender's
    // *other* connections (PROTOCOL.md).
    ana1.assert_none_before_pong("the DM echoed to its sender", |v| v["type"] == "dm")
        .await;
    cy.assert_none_before_pong("someone else's DM", |v| v["type"] == "dm")
        .await;

    bo.send(json!({"type": "dm", "to": "ana", "content": "hi back", "id": "d2"}))
        .await;
    assert_eq!(
        bo.reply("d2").await["seq"],
        2,
        "one seq per pair, both directions"
    );
    bo.send(json!({"type": "history", "with": "ana", "id": "h"}))
        .await;
    let page = bo.reply("h").await;
    assert_eq!(page["with"], "ana");
    assert_eq!(seqs(page["messages"].as_array().unwrap()), vec![2, 1]);
}

#[tokio::test]
async fn typing_reaches_others_and_is_never_stored() {
    let server = Server::start(&FAST);
    let mut a = server.connect("ana").await;
    let mut b = server.connect("bo").await;
    a.join("t").await;
    b.join("t").await;
    a.send(json!({"type": "typing", "room": "t", "state": true}))
        .await;
    let ev = b.next_of("typing").await;
    assert_eq!(
        ev,
        json!({"type": "typing", "room": "t", "user": "ana", "state": true})
    );
    a.assert_none_before_pong("own typing echoed", |v| v["type"] == "typing")
        .await;

    b.send(json!({"type": "typing", "to": "ana", "state": false}))
        .await;
    let ev = a.next_of("typing").await;
    assert_eq!(
        ev,
        json!({"type": "typing", "to": "ana", "user": "bo", "state": false})
    );

    a.send(json!({"type": "history", "room": "t", "id": "h"}))
        .await;
    assert_eq!(a.reply("h").await["messages"], json!([]));
}

#[tokio::test]
async fn presence_events_and_member_lists() {
    let server = Server::start(&FAST);
    let mut a = server.connect("ana").await;
    a.join("p").await;
    let mut b1 = server.connect("bo").await;
    b1.join("p").await;
    let ev = a.next_of("presence").await;
    assert_eq!(
        (ev["user"]["id"].as_str(), ev["status"].as_str()),
        (Some("bo"), Some("online"))
    );

    // A second connection of the same user is not a new arrival.
    let mut b2 = server.connect("bo").await;
    b2.join("p").await;
    a.send(json!({"type": "presence", "room": "p", "id": "who"}))
        .await;
    let list = a.reply("who").await;
    let mut ids: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["ana", "bo"]);
    a.assert_none_before_pong("second online event", |v| v["type"] == "presence")
        .await;

    // Offline only when the user's last connection goes.
    drop(b1);
    a.assert_none_before_pong("offline while bo has a connection", |v| {
        v["type"] == "presence"
    })
    .await;
    b2.send(json!({"type": "leave", "room": "p", "id": "bye"}))
        .await;
    assert_eq!(b2.reply("bye").await["type"], "ack");
    let ev = a.next_of("presence").await;
    assert_eq!(
        (ev["user"]["id"].as_str(), ev["status"].as_str()),
        (Some("bo"), Some("offline"))
    );
}
