//! Cluster mode: several hubbub processes on one real Redis and one real
//! MongoDB-wire server (both started by the test command), with clients
//! spread across the nodes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{all_history, http_get, seqs, wait_until, Client, Mongo, Redis, Server, FAST};
use serde_json::{json, Value};

/// A cluster's backends, and flags for a node of it.
struct Backends {
    redis: Redis,
    mongo: Mongo,
}

impl Backends {
    fn start() -> Option<Backends> {
        let redis = Redis::start()?;
        let mongo = Mongo::start()?;
        Some(Backends { redis, mongo })
    }

    fn node(&self, name: &str) -> Server {
        let (redis, mongo) = (self.redis.url(), self.mongo.url());
        let mut args = vec![
            "--redis-url",
            &redis,
            "--mongo-url",
            &mongo,
            "--node-id",
            name,
            "--node-ttl",
            "3",
            "--history-max-wait",
            "3",
        ];
        args.extend(FAST);
        let server = Server::start(&args);
        wait_until_ready(&server, true);
        server
    }
}

fn wait_until_ready(server: &Server, ready: bool) {
    let what = if ready {
        "/ready is 200"
    } else {
        "/ready is 503"
    };
    wait_until(what, || {
        let status = http_get(server.port, "/ready", None).map(|(s, _)| s);
        status.is_ok_and(|s| (s == 200) == ready)
    });
}

/// The contents of message frames, in order.
fn contents(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["content"].as_str().expect("content").to_owned())
        .collect()
}

/// User ids in a presence answer or join ack.
fn member_ids(ack: &Value) -> BTreeSet<String> {
    ack["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Ask for the member list until it is `want` (presence travels through
/// Redis, so it settles shortly after the joins are acked).
async fn await_members(c: &mut Client, room: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let id = format!("who-{}", common::rand_suffix());
        c.send(json!({"type": "presence", "room": room, "id": id}))
            .await;
        let got = member_ids(&c.reply(&id).await);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "members of {room}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_nodes_deliver_one_room_in_one_order() {
    let Some(backends) = Backends::start() else {
        return;
    };
    let nodes: Vec<Server> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| backends.node(n))
        .collect();
    let room = "course:cluster";

    // Two students on each node.
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            let mut c = node.connect(&format!("s{i}{j}")).await;
            c.join(room).await;
            clients.push(c);
        }
    }
    let everyone: Vec<String> = (0..3)
        .flat_map(|i| (0..2).map(move |j| format!("s{i}{j}")))
        .collect();
    let everyone: Vec<&str> = everyone.iter().map(|s| s.as_str()).collect();
    await_members(&mut clients[0], room, &everyone).await;

    // One sender per node, all at once.
    const EACH: usize = 30;
    let mut senders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.connect(&format!("t{i}")).await;
        c.join(room).await;
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..EACH {
                let ack = c
                    .post(room, &format!("t{i}-{k}"), &format!("t{i}-{k}"))
                    .await;
                acked.push(ack["seq"].as_u64().unwrap());
            }
            acked
        }));
    }
    let mut acked = BTreeSet::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    let total = 3 * EACH;
    assert_eq!(acked.len(), total, "every message acked under its own seq");

    // Every client sees every message once, all in the same order, and that
    // order is the seq order.
    let mut orders = Vec::new();
    for c in &mut clients {
        let got = c.messages(room, total).await;
        let s = seqs(&got);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "out of seq order: {s:?}");
        assert_eq!(s.iter().copied().collect::<BTreeSet<_>>(), acked);
        orders.push(contents(&got));
        c.assert_none_before_pong("a second copy", |v| v["type"] == "message")
            .await;
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "clients disagree on the order"
    );

    // History is one and the same on every node.
    let mut pages = Vec::new();
    for i in [0, 2, 4] {
        let h = all_history(&mut clients[i], room).await;
        assert_eq!(seqs(&h), acked.iter().copied().collect::<Vec<_>>());
        pages.push(contents(&h));
    }
    assert!(pages.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(pages[0], orders[0], "history order is the delivery order");
}

#[tokio::test]
async fn dms_and_presence_cross_nodes_and_a_killed_node_drops_its_users() {
    let Some(backends) = Backends::start() else {
        return;
    };
    let n1 = backends.node("p1");
    let n2 = backends.node("p2");
    let mut n3 = backends.node("p3");
    let room = "class:presence";

    let mut ana = n1.connect("ana").await;
    ana.join(room).await;
    let mut ben = n2.connect("ben").await;
    ben.join(room).await;
    let online = |who: &'static str, status: &'static str| {
        move |v: &Value| v["type"] == "presence" && v["user"]["id"] == who && v["status"] == status
    };
    ana.next_where("ben online, from another node", online("ben", "online"))
        .await;
    await_members(&mut ana, room, &["ana", "ben"]).await;
    await_members(&mut ben, room, &["ana", "ben"]).await;

    // Typing crosses nodes too, in the room and to a user; never echoed.
    ben.send(json!({"type": "typing", "room": room, "state": true}))
        .await;
    let ev = ana.next_of("typing").await;
    assert_eq!(
        (ev["room"].as_str(), ev["user"].as_str()),
        (Some(room), Some("ben")),
        "{ev}"
    );
    ben.send(json!({"type": "typing", "to": "ana", "state": true}))
        .await;
    let ev = ana.next_of("typing").await;
    assert_eq!(ev["user"], "ben", "{ev}");
    assert!(ev.get("room").is_none(), "a DM typing event: {ev}");
    ben.assert_none_before_pong("own typing echoed", |v| v["type"] == "typing")
        .await;

    // A DM reaches every connection of the recipient, on any node, and the
    // sender's other connections, but not the sending connection.
    let mut ben_on_n3 = n3.connect("ben").await;
    let mut ana_on_n3 = n3.connect("ana").await;
    // A node listens for a user's DMs once the user connects to it; wait
    // until n3 has both users' channels.
    wait_until("n3 subscribed ana's and ben's channels", || {
        let health = http_get(n3.port, "/health", None).unwrap().1;
        let health: Value = serde_json::from_str(&health).unwrap();
        health["backends"]["cluster"]["subscriptions"] == 2
    });
    ana.send(json!({"type": "dm", "to": "ben", "content": "psst", "id": "d1"}))
        .await;
    let ack = ana.reply("d1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for (who, c) in [
        ("ben", &mut ben),
        ("ben on n3", &mut ben_on_n3),
        ("ana on n3", &mut ana_on_n3),
    ] {
        let dm = c.next_of("dm").await;
        assert_eq!(dm["content"], "psst", "{who}: {dm}");
        assert_eq!(dm["seq"], ack["seq"], "{who}");
    }
    ana.assert_none_before_pong("an echo of her own DM", |v| v["type"] == "dm")
        .await;

    // ben leaves everywhere: ana, on another node, sees him go.
    drop(ben);
    ben_on_n3.ws.close(None).await.ok();
    drop(ben_on_n3);
    ana.next_where("ben offline", online("ben", "offline"))
        .await;
    await_members(&mut ana, room, &["ana"]).await;

    // carl's node dies without a word: its heartbeat stops and the others
    // drop him within the node TTL.
    let mut carl = n3.connect("carl").await;
    carl.join(room).await;
    ana.next_where("carl online", online("carl", "online"))
        .await;

    // A node that stalls past the TTL is taken for dead; when it wakes, it
    // notices and registers its users again.
    unsafe { libc::kill(n3.pid(), libc::SIGSTOP) };
    ana.next_where(
        "carl offline while his node stalls",
        online("carl", "offline"),
    )
    .await;
    unsafe { libc::kill(n3.pid(), libc::SIGCONT) };
    ana.next_where("carl online once it wakes", online("carl", "online"))
        .await;
    await_members(&mut ana, room, &["ana", "carl"]).await;

    let mut said = Vec::new();
    for k in 0..3 {
        let ack = carl.post(room, &format!("c{k}"), "before the crash").await;
        said.push(ack["seq"].as_u64().unwrap());
    }
    n3.kill();
    ana.next_where(
        "carl offline after his node died",
        online("carl", "offline"),
    )
    .await;
    await_members(&mut ana, room, &["ana"]).await;

    // What carl's node acked before it died is in the history, and carl,
    // resuming on another node from before his first message, gets exactly
    // the rest.
    let h = seqs(&all_history(&mut ana, room).await);
    assert!(said.iter().all(|s| h.contains(s)), "{said:?} in {h:?}");
    let mut carl = n1.connect("carl").await;
    let since = said[0] - 1;
    carl.send(json!({"type": "join", "room": room, "since": since, "id": "j"}))
        .await;
    assert_eq!(carl.reply("j").await["type"], "ack");
    let rest: Vec<u64> = h.iter().copied().filter(|s| *s > since).collect();
    assert_eq!(seqs(&carl.messages(room, rest.len()).await), rest);
    drop(n2);
}

/// Post `n` messages from `c`, numbered from `from`; returns (seq, content)
/// of the acked ones and the number answered `unavailable`.
async fn post_many(
    c: &mut Client,
    room: &str,
    from: usize,
    n: usize,
) -> (Vec<(u64, String)>, usize) {
    let mut acked = Vec::new();
    let mut unavailable = 0;
    for k in from..from + n {
        let id = format!("m{k}");
        c.send(json!({"type": "message", "room": room, "id": id, "content": id}))
            .await;
        let answer = c.reply(&id).await;
        match answer["type"].as_str() {
            Some("ack") => acked.push((answer["seq"].as_u64().unwrap(), id)),
            Some("error") if answer["code"] == "unavailable" => unavailable += 1,
            _ => panic!("unexpected answer: {answer}"),
        }
    }
    (acked, unavailable)
}

#[tokio::test]
async fn a_redis_restart_mid_stream_loses_nothing_and_resumes_without_gaps() {
    let Some(mut backends) = Backends::start() else {
        return;
    };
    let n1 = backends.node("r1");
    let n2 = backends.node("r2");
    let room = "course:redis-restart";

    let mut sender = n1.connect("sam").await;
    sender.join(room).await;
    let mut reader = n2.connect("rita").await;
    reader.join(room).await;
    let mut bob = n2.connect("bob").await;
    bob.join(room).await;
    await_members(&mut sender, room, &["bob", "rita", "sam"]).await;

    let (mut acked, _) = post_many(&mut sender, room, 0, 20).await;

    // Redis dies, and with it every key: counters, presence, subscriptions.
    backends.redis.kill();
    wait_until_ready(&n1, false);
    // bob leaves while nobody can hear it.
    bob.ws.close(None).await.ok();
    drop(bob);
    let (during, unavailable) = post_many(&mut sender, room, 20, 3).await;
    assert!(
        during.is_empty(),
        "nothing can be ordered without Redis: {during:?}"
    );
    assert_eq!(unavailable, 3, "each refused with unavailable");

    backends.redis.restart();
    wait_until_ready(&n1, true);
    wait_until_ready(&n2, true);
    let (after, _) = post_many(&mut sender, room, 23, 20).await;
    assert_eq!(after.len(), 20, "all acked once Redis is back");

    // Seqs continue above the old ones although Redis forgot its counter:
    // 10,000 above, past anything another node might have had in flight.
    let before = acked.last().unwrap().0;
    assert!(
        after[0].0 > before + 10_000,
        "{} after {before}",
        after[0].0
    );
    acked.extend(after);
    let s: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert!(
        s.windows(2).all(|w| w[0] < w[1]),
        "seqs reused after the restart: {s:?}"
    );

    // Presence converges: sam, on the other node, hears that bob left.
    sender
        .next_where("bob offline after the outage", |v| {
            v["type"] == "presence" && v["user"]["id"] == "bob" && v["status"] == "offline"
        })
        .await;
    await_members(&mut sender, room, &["rita", "sam"]).await;

    // The reader on the other node saw every acked message once, in order.
    let live = reader.messages(room, acked.len()).await;
    let live: Vec<(u64, String)> = seqs(&live).into_iter().zip(contents(&live)).collect();
    assert_eq!(live, acked);
    reader
        .assert_none_before_pong("a duplicate", |v| v["type"] == "message")
        .await;

    // History has exactly the acked messages; a client resuming from the
    // middle gets the rest with no gap.
    let h = all_history(&mut reader, room).await;
    let stored: Vec<(u64, String)> = seqs(&h).into_iter().zip(contents(&h)).collect();
    assert_eq!(stored, acked);
    let mut late = n2.connect("lara").await;
    let middle = acked[10].0;
    late.send(json!({"type": "join", "room": room, "since": middle, "id": "j"}))
        .await;
    late.reply("j").await;
    let rest = late.messages(room, acked.len() - 11).await;
    assert_eq!(
        seqs(&rest),
        acked[11..].iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );

    let health: Value =
        serde_json::from_str(&http_get(n2.port, "/health", None).unwrap().1).unwrap();
    let cluster = &health["backends"]["cluster"];
    assert_eq!(cluster["kind"], "redis", "{health}");
    assert!(
        cluster["connects"].as_u64().unwrap() >= 2,
        "reconnected: {cluster}"
    );
}

#[tokio::test]
async fn a_mongodb_outage_in_a_cluster_loses_nothing_acked() {
    let Some(mut backends) = Backends::start() else {
        return;
    };
    let n1 = backends.node("m1");
    let n2 = backends.node("m2");
    let room = "course:mongo-outage";

    let mut sender = n1.connect("sam").await;
    sender.join(room).await;
    let mut reader = n2.connect("rita").await;
    reader.join(room).await;
    await_members(&mut reader, room, &["rita", "sam"]).await;
    let (mut acked, _) = post_many(&mut sender, room, 0, 10).await;

    // Messages sent while MongoDB is down wait in the queue; past
    // --history-max-wait (3 s here) they are refused as not stored.
    backends.mongo.kill();
    wait_until_ready(&n1, false);
    // m10 is taken into a batch that retries until MongoDB is back; m11 to
    // m14 queue behind it, wait past --history-max-wait, and are refused.
    let send = |k: usize| {
        json!({"type": "message", "room": room, "id": format!("m{k}"),
                                 "content": format!("m{k}")})
    };
    sender.send(send(10)).await;
    wait_until("m10 left the queue for a batch", || {
        let health = http_get(n1.port, "/health", None).unwrap().1;
        let health: Value = serde_json::from_str(&health).unwrap();
        health["backends"]["history"]["sending"] == 1
    });
    for k in 11..15 {
        sender.send(send(k)).await;
    }
    for k in 11..15 {
        let answer = sender.reply(&format!("m{k}")).await;
        assert_eq!(answer["code"], "unavailable", "{answer}");
    }
    backends.mongo.restart();
    let answer = sender.reply_within("m10", Duration::from_secs(30)).await;
    assert_eq!(
        answer["type"], "ack",
        "the batch in flight is stored: {answer}"
    );
    acked.push((answer["seq"].as_u64().unwrap(), "m10".to_owned()));
    wait_until_ready(&n1, true);
    let (after, _) = post_many(&mut sender, room, 15, 10).await;
    assert_eq!(after.len(), 10);
    acked.extend(after);

    // The reader saw exactly the acked messages, in order, whatever was
    // refused in between (refused seqs are announced and skipped).
    let live = reader.messages(room, acked.len()).await;
    let live: Vec<(u64, String)> = seqs(&live).into_iter().zip(contents(&live)).collect();
    assert_eq!(live, acked);
    let h = all_history(&mut reader, room).await;
    let stored: Vec<(u64, String)> = seqs(&h).into_iter().zip(contents(&h)).collect();
    assert_eq!(stored, acked, "history: every acked message once");
}
