//! The MongoDB history store (`--mongo-url`), for deployments that keep
//! history in MongoDB.
//!
//! The driver runs on the tokio side runtime. Writer threads block on it
//! (`Handle::block_on`), which is what they are for; shards never do: their
//! reads are spawned on the runtime and awaited through a oneshot channel.
//!
//! One document per message, in the `messages` collection:
//!
//! ```text
//! { room: "course:42", seq: 17, ts: ISODate(..), kind: "message" | "dm",
//!   from: { id, name, role }, to: "u2" (DMs), content: "...", cid: "c7",
//!   frame: "<the exact JSON frame delivered to clients>" }
//! ```
//!
//! `(room, seq)` has a unique index, so a retried batch cannot store a
//! message twice: a duplicate-key error means "already stored". Writes are
//! journaled (`j: true`) unless the URL sets a write concern, since an ack
//! promises that the message survives a crash. `ts` carries
//! the optional retention TTL index. Reads return `frame` as stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, IndexModel};

use super::{HistoryStore, ReadFuture, Record, Rows, StoreError};

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;

/// How often the store is pinged in the background.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long server selection may take before an operation fails. The
/// driver's default (30 s) would park a writer for half a minute per attempt
/// during an outage; the writer retries on its own schedule instead.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

pub struct MongoStore {
    rt: tokio::runtime::Handle,
    messages: Collection<Document>,
    retention: Option<Duration>,
    /// Set after a failure: indexes are ensured again before the next write,
    /// in case the server came back without them (a restored or new node).
    recheck_indexes: AtomicBool,
    /// The last background ping's verdict.
    reachable: Arc<AtomicBool>,
}

impl MongoStore {
    /// Connect, check the server answers, and ensure the indexes.
    pub fn connect(
        url: &str,
        db: &str,
        retention: Option<Duration>,
        rt: tokio::runtime::Handle,
    ) -> Result<MongoStore, StoreError> {
        let (messages, database) = rt.block_on(async {
            let mut opts = ClientOptions::parse(url)
                .await
                .map_err(|e| StoreError(format!("invalid --mongo-url: {e}")))?;
            opts.server_selection_timeout
                .get_or_insert(SELECTION_TIMEOUT);
            opts.connect_timeout.get_or_insert(SELECTION_TIMEOUT);
            opts.app_name.get_or_insert_with(|| "hubbub".to_owned());
            // An ack promises the message survives a crash, so a write must
            // be journaled before it counts. A write concern in the URL
            // (`w=majority`, which journals on replica sets) takes precedence.
            opts.write_concern
                .get_or_insert_with(|| WriteConcern::builder().journal(true).build());
            let client = Client::with_options(opts).map_err(StoreError::new)?;
            let database = client.database(db);
            database
                .run_command(doc! { "ping": 1 })
                .await
                .map_err(|e| StoreError(format!("MongoDB at --mongo-url does not answer: {e}")))?;
            Ok::<_, StoreError>((database.collection::<Document>("messages"), database))
        })?;

        let reachable = Arc::new(AtomicBool::new(true));
        rt.spawn(probe(database, reachable.clone()));
        let store = MongoStore {
            rt,
            messages,
            retention,
            recheck_indexes: AtomicBool::new(false),
            reachable,
        };
        store.rt.block_on(store.ensure_indexes())?;
        Ok(store)
    }

    async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexModel::builder()
            .keys(doc! { "room": 1, "seq": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("room_seq".to_owned())
                    .build(),
            )
            .build();
        self.messages
            .create_index(unique)
            .await
            .map_err(StoreError::new)?;

        if let Some(keep) = self.retention {
            let ttl = IndexModel::builder()
                .keys(doc! { "ts": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(keep)
                        .name("ts_retention".to_owned())
                        .build(),
                )
                .build();
            self.messages
                .create_index(ttl)
                .await
                .map_err(StoreError::new)?;
        }
        Ok(())
    }

    /// Run a query on the side runtime; the shard awaits only the answer.
    fn run(
        &self,
        fut: impl std::future::Future<Output = Result<Rows, StoreError>> + Send + 'static,
    ) -> ReadFuture {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError("side runtime stopped".into())))
        })
    }
}

/// Ping MongoDB every second; log and record each change of state.
async fn probe(db: mongodb::Database, reachable: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let up = db.run_command(doc! { "ping": 1 }).await.is_ok();
        if reachable.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("MongoDB reachable again");
            } else {
                tracing::warn!("MongoDB unreachable");
            }
        }
    }
}

/// The document stored for a record.
fn to_document(r: &Record) -> Document {
    let frame = String::from_utf8_lossy(&r.json).into_owned();
    let v: serde_json::Value = serde_json::from_slice(&r.json).unwrap_or_default();
    let ts = v["ts"]
        .as_i64()
        .unwrap_or_else(|| DateTime::now().timestamp_millis());
    let from = &v["from"];

    let mut d = doc! {
        "room": r.room.as_ref(),
        "seq": r.seq as i64,
        "ts": DateTime::from_millis(ts),
        "kind": v["type"].as_str().unwrap_or("message"),
        "from": {
            "id": from["id"].as_str().unwrap_or(""),
            "name": from["name"].as_str().unwrap_or(""),
            "role": from["role"].as_str().unwrap_or(""),
        },
        "content": v["content"].as_str().unwrap_or(""),
        "frame": frame,
    };
    if let Some(to) = v["to"].as_str() {
        d.insert("to", to);
    }
    if let Some(cid) = v["id"].as_str() {
        d.insert("cid", cid);
    }
    d
}

fn rows(docs: Vec<Document>) -> Rows {
    docs.into_iter()
        .filter_map(|d| {
            let seq = match d.get("seq")? {
                Bson::Int64(n) => *n as u64,
                Bson::Int32(n) => *n as u64,
                _ => return None,
            };
            let frame = d.get_str("frame").ok()?;
            Some((seq, Bytes::copy_from_slice(frame.as_bytes())))
        })
        .collect()
}

impl HistoryStore for MongoStore {
    fn append(&self, batch: &[Record]) -> Result<(), StoreError> {
        let docs: Vec<Document> = batch.iter().map(to_document).collect();
        let result = self.rt.block_on(async {
            if self.recheck_indexes.load(Ordering::Relaxed) {
                self.ensure_indexes().await?;
                self.recheck_indexes.store(false, Ordering::Relaxed);
            }
            self.messages
                .insert_many(docs)
                .ordered(false)
                .await
                .map_err(|e| {
                    // Duplicates of records stored by an earlier attempt count
                    // as stored; any other failure fails the batch.
                    match &*e.kind {
                        ErrorKind::InsertMany(failure)
                            if failure.write_concern_error.is_none()
                                && failure.write_errors.as_ref().is_some_and(|errs| {
                                    errs.iter().all(|w| w.code == DUPLICATE_KEY)
                                }) =>
                        {
                            None
                        }
                        ErrorKind::Write(WriteFailure::WriteError(w))
                            if w.code == DUPLICATE_KEY =>
                        {
                            None
                        }
                        _ => Some(StoreError::new(e)),
                    }
                })
        });
        match result {
            Ok(_) | Err(None) => Ok(()),
            Err(Some(e)) => {
                self.recheck_indexes.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        self.rt.block_on(async {
            let newest = self
                .messages
                .find_one(doc! { "room": room })
                .sort(doc! { "seq": -1 })
                .projection(doc! { "seq": 1 })
                .await
                .map_err(StoreError::new)?;
            Ok(match newest.as_ref().and_then(|d| d.get("seq")) {
                Some(Bson::Int64(n)) => *n as u64,
                Some(Bson::Int32(n)) => *n as u64,
                _ => 0,
            })
        })
    }

    fn page(&self, room: &str, before: Option<u64>, limit: usize) -> ReadFuture {
        let coll = self.messages.clone();
        let filter = match before {
            Some(b) => doc! { "room": room, "seq": { "$lt": b as i64 } },
            None => doc! { "room": room },
        };
        self.run(async move {
            let cursor = coll
                .find(filter)
                .sort(doc! { "seq": -1 })
                .limit(limit as i64)
                .projection(doc! { "seq": 1, "frame": 1 })
                .await
                .map_err(StoreError::new)?;
            Ok(rows(cursor.try_collect().await.map_err(StoreError::new)?))
        })
    }

    fn after(&self, room: &str, since: u64, limit: usize) -> ReadFuture {
        let coll = self.messages.clone();
        let filter = doc! { "room": room, "seq": { "$gt": since as i64 } };
        self.run(async move {
            let cursor = coll
                .find(filter)
                .sort(doc! { "seq": 1 })
                .limit(limit as i64)
                .projection(doc! { "seq": 1, "frame": 1 })
                .await
                .map_err(StoreError::new)?;
            Ok(rows(cursor.try_collect().await.map_err(StoreError::new)?))
        })
    }

    fn kind(&self) -> &'static str {
        "mongodb"
    }

    fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}
