//! History in MongoDB (a real MongoDB-wire server, SecantusDB, started by the
//! test command): pages, resume and restart through the store, the document
//! shape, and an outage in the middle of a stream.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{http_get, seqs, Mongo, Server, FAST};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

async fn collection(mongo: &Mongo) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(mongo.url()).await.unwrap();
    client.database("hubbub").collection("messages")
}

/// The seqs of every stored message of a room, oldest first.
async fn all_history(c: &mut common::Client, room: &str) -> Vec<u64> {
    seqs(&common::all_history(c, room).await)
}

#[tokio::test]
async fn history_pages_resume_and_restart_go_through_mongodb() {
    let Some(mongo) = Mongo::start() else { return };
    let url = mongo.url();
    let mut args = vec!["--mongo-url", &url, "--history-cache", "4"];
    args.extend(FAST);
    let mut server = Server::start(&args);

    let mut a = server.connect("ana").await;
    a.join("course:m").await;
    for i in 1..=30 {
        a.post("course:m", &format!("m{i}"), &format!("n{i}")).await;
    }

    // Older than the 4 cached messages: from MongoDB.
    a.send(json!({"type": "history", "room": "course:m", "before": 11, "limit": 5, "id": "old"}))
        .await;
    let page = a.reply("old").await;
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        vec![10, 9, 8, 7, 6]
    );
    assert_eq!(page["messages"][0]["content"], "n10");

    // A resume from further back than the cache.
    let mut b = server.connect("bo").await;
    b.send(json!({"type": "join", "room": "course:m", "since": 3, "id": "j"}))
        .await;
    assert_eq!(b.reply("j").await["last_seq"], 30);
    assert_eq!(
        seqs(&b.messages("course:m", 27).await),
        (4..=30).collect::<Vec<_>>()
    );

    // The documents: one per message, with the frame and the unique index.
    let coll = collection(&mongo).await;
    assert_eq!(
        coll.count_documents(doc! {"room": "course:m"})
            .await
            .unwrap(),
        30
    );
    let d = coll
        .find_one(doc! {"room": "course:m", "seq": 7_i64})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_str("content").unwrap(), "n7");
    assert_eq!(d.get_str("cid").unwrap(), "m7");
    assert_eq!(
        d.get_document("from").unwrap().get_str("id").unwrap(),
        "ana"
    );
    let frame: Value = serde_json::from_str(d.get_str("frame").unwrap()).unwrap();
    assert_eq!(frame["seq"], 7);
    let names: Vec<String> = coll.list_index_names().await.unwrap();
    assert!(names.contains(&"room_seq".to_owned()), "{names:?}");

    // A restart continues the seq from MongoDB.
    drop((a, b));
    assert!(server.stop().success());
    server.restart();
    let mut a = server.connect("ana").await;
    assert_eq!(a.join("course:m").await["last_seq"], 30);
    assert_eq!(a.post("course:m", "m31", "after restart").await["seq"], 31);

    let (_, health) = http_get(server.port, "/health", None).unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["backends"]["history"]["kind"], "mongodb");
}

#[tokio::test]
async fn a_mongodb_outage_loses_nothing_acked_and_writes_nothing_twice() {
    let Some(mongo) = Mongo::start() else { return };
    let url = mongo.url();
    let mut args = vec![
        "--mongo-url",
        &url,
        "--history-queue",
        "8",
        "--history-max-wait",
        "2",
    ];
    args.extend(FAST);
    let server = Server::start(&args);
    let room = "course:outage";

    let mut senders = Vec::new();
    for i in 0..3 {
        let mut c = server.connect(&format!("s{i}")).await;
        c.join(room).await;
        senders.push(c);
    }
    let mut watcher = server.connect("watcher").await;
    watcher.join(room).await;

    // The outage runs on its own clock: down from 2 s to 6 s.
    let port = server.port;
    let outage = std::thread::spawn(move || {
        let mut mongo = mongo;
        std::thread::sleep(Duration::from_secs(2));
        mongo.kill();
        common::wait_until("/ready reports the outage", || {
            http_get(port, "/ready", None)
                .map(|(s, _)| s == 503)
                .unwrap_or(false)
        });
        std::thread::sleep(Duration::from_secs(4));
        mongo.restart();
        mongo
    });

    // Send in rounds of 15 for 10 s, each round waiting for every answer:
    // during the outage an answer waits for the store or for
    // --history-max-wait.
    let mut acked = BTreeSet::new();
    let mut unavailable = 0;
    let mut n = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        for (i, c) in senders.iter_mut().enumerate() {
            for _ in 0..5 {
                n += 1;
                let (id, content) = (format!("x{n}"), format!("c{i}"));
                let frame = json!({"type": "message", "room": room, "id": id, "content": content});
                c.send(frame).await;
            }
        }
        let mut k = n - 15;
        for c in senders.iter_mut() {
            for _ in 0..5 {
                k += 1;
                let r = c
                    .reply_within(&format!("x{k}"), Duration::from_secs(60))
                    .await;
                match (r["type"].as_str(), r["code"].as_str()) {
                    (Some("ack"), _) => assert!(
                        acked.insert(r["seq"].as_u64().unwrap()),
                        "seq acked twice: {r}"
                    ),
                    (Some("error"), Some("unavailable")) => unavailable += 1,
                    other => panic!("unexpected answer {other:?}: {r}"),
                }
            }
        }
    }
    let mongo = outage.join().expect("the outage happened and ended");
    assert!(
        unavailable > 0,
        "a full queue during the outage answers unavailable"
    );
    common::wait_until("/ready again after MongoDB returns", || {
        http_get(server.port, "/ready", None)
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });

    // Acked seqs have no gap, and every one of them is stored exactly once.
    let acked: Vec<u64> = acked.into_iter().collect();
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    assert_eq!(
        all_history(&mut senders[0], room).await,
        acked,
        "history holds exactly the acked"
    );
    let coll = collection(&mongo).await;
    let docs: Vec<Document> = coll
        .find(doc! {"room": room})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), acked.len(), "nothing written twice");

    // The watcher saw every acked message once, in order, live.
    let live = watcher.messages(room, acked.len()).await;
    assert_eq!(seqs(&live), acked);
    eprintln!("outage: {} acked, {} unavailable", acked.len(), unavailable);
}

#[tokio::test]
async fn a_dead_store_does_not_keep_a_stopping_node_up() {
    let Some(mut mongo) = Mongo::start() else {
        return;
    };
    let url = mongo.url();
    let mut args = vec!["--mongo-url", &url, "--shutdown-grace", "2"];
    args.extend(FAST);
    let mut server = Server::start(&args);
    let mut a = server.connect("ana").await;
    a.join("course:stop").await;
    a.post("course:stop", "m1", "stored").await;

    // MongoDB goes away with a message in flight; the node is asked to stop.
    mongo.kill();
    a.send(json!({"type": "message", "room": "course:stop", "id": "m2", "content": "x"}))
        .await;
    common::wait_until("m2 is being written", || {
        let (_, body) = http_get(server.port, "/health", None).unwrap();
        let health: Value = serde_json::from_str(&body).unwrap();
        health["backends"]["history"]["sending"] == 1
    });
    let started = Instant::now();
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let status = server.stop_wait();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exited {:?} after SIGTERM with the store down",
        started.elapsed()
    );
}
