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
pub mod writer;

use std::sync::Arc;

use bytes::Bytes;

pub use embedded::EmbeddedStore;

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

/// Where history lives. Implementations are shared by all threads; writes
/// come from the single writer thread only, reads from any shard.
///
/// # Blocking
///
/// Calls block the calling thread. The embedded store answers reads from its
/// page cache in microseconds, which is why shards call it directly; a store
/// with network latency must be driven from a side runtime instead.
pub trait HistoryStore: Send + Sync + 'static {
    /// Store a batch atomically. A record whose `(room, seq)` is already
    /// stored with the same bytes counts as stored (retries are idempotent).
    fn append(&self, batch: &[Record]) -> Result<(), StoreError>;

    /// The highest stored seq of a room, 0 when it has none.
    fn last_seq(&self, room: &str) -> Result<u64, StoreError>;

    /// Up to `limit` messages with seq below `before` (all when None),
    /// newest first.
    fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError>;

    /// Up to `limit` messages with seq above `since`, oldest first.
    fn after(&self, room: &str, since: u64, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError>;

    /// A short name for `/health`.
    fn kind(&self) -> &'static str;
}
