//! Message history: the [`HistoryStore`] interface, its embedded
//! implementation, and the batch writer that commits to it.
//!
//! A room's owner shard assigns each message its `seq`, encodes the frame, and
//! queues a [`Record`] for the [`writer`]. The writer commits records in
//! batches (group commit) and reports each outcome back to the owner, which
//! acks and fans the message out only after its commit. Reads (history pages,
//! resume after reconnect, a room's last seq) go straight to the store.
//!
//! Stored values are the exact JSON of the `message` or `dm` frame, so a
//! history page is a concatenation of stored bytes.

pub mod embedded;
pub mod mongo;
pub mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use embedded::EmbeddedStore;
pub use mongo::MongoStore;

/// One message on its way to the store.
#[derive(Debug, Clone)]
pub struct Record {
    pub room: Arc<str>,
    pub seq: u64,
    /// The frame's JSON (no WebSocket header).
    pub json: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("history store: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> StoreError {
        StoreError(e.to_string())
    }
}

/// Rows of a read: `(seq, frame JSON)`.
pub type Rows = Vec<(u64, Bytes)>;

/// A read in progress. Polled on a shard's event loop, so it must not block:
/// a networked store runs the query on its side runtime and this future only
/// waits for the answer.
pub type ReadFuture = Pin<Box<dyn Future<Output = Result<Rows, StoreError>>>>;

/// Where history lives. Implementations are shared by all threads.
///
/// Writes (`append`, `last_seq`) come from the writer threads only and may
/// block them. Reads (`page`, `after`) come from shards and return futures.
pub trait HistoryStore: Send + Sync + 'static {
    /// Store a batch. A record whose `(room, seq)` is already stored counts
    /// as stored, so that a retry after an unclear failure is idempotent.
    fn append(&self, batch: &[Record]) -> Result<(), StoreError>;

    /// The highest stored seq of a room, 0 when it has none.
    fn last_seq(&self, room: &str) -> Result<u64, StoreError>;

    /// Up to `limit` messages with seq below `before` (all when None),
    /// newest first.
    fn page(&self, room: &str, before: Option<u64>, limit: usize) -> ReadFuture;

    /// Up to `limit` messages with seq above `since`, oldest first.
    fn after(&self, room: &str, since: u64, limit: usize) -> ReadFuture;

    /// A short name for `/health`.
    fn kind(&self) -> &'static str;

    /// Whether the store answers, as last probed (a networked store probes
    /// in the background, so that readiness reflects an outage even when no
    /// message is being written).
    fn reachable(&self) -> bool {
        true
    }
}
