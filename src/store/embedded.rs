//! The default history store: a redb database file under `--data-dir`.
//!
//! redb was chosen over fjall and sled because it is a single-file, pure-Rust
//! B-tree with ACID transactions and fsync on commit by default: exactly the
//! "group commit, then ack" contract the writer needs, with ordered range
//! scans over `(room, seq)` keys for history pages. An LSM tree (fjall) would
//! write faster but brings compaction threads and tuning that a chat history
//! of small, append-only rows does not need.

use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{HistoryStore, ReadFuture, Record, Rows, StoreError};

/// `(room, seq)` → frame JSON.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

pub struct EmbeddedStore {
    db: Database,
}

impl EmbeddedStore {
    /// Open (or create) `history.redb` in `dir`, creating the directory.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create --data-dir {}: {e}", dir.display())))?;
        let path = dir.join("history.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;

        // Create the table up front so that readers never meet a missing one.
        let tx = db.begin_write().map_err(StoreError::new)?;
        tx.open_table(MESSAGES).map_err(StoreError::new)?;
        tx.commit().map_err(StoreError::new)?;
        Ok(EmbeddedStore { db })
    }

    /// Newest first, below `before`.
    pub fn page_now(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::new)?;
        let table = tx.open_table(MESSAGES).map_err(StoreError::new)?;
        let end = before.unwrap_or(u64::MAX);
        let range = table
            .range((room, 0)..(room, end))
            .map_err(StoreError::new)?;

        let mut out = Vec::with_capacity(limit.min(256));
        for entry in range.rev().take(limit) {
            let (k, v) = entry.map_err(StoreError::new)?;
            out.push((k.value().1, Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    /// Oldest first, above `since`.
    pub fn after_now(&self, room: &str, since: u64, limit: usize) -> Result<Rows, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::new)?;
        let table = tx.open_table(MESSAGES).map_err(StoreError::new)?;
        let start = since.saturating_add(1);
        let range = table
            .range((room, start)..=(room, u64::MAX))
            .map_err(StoreError::new)?;

        let mut out = Vec::with_capacity(limit.min(256));
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(StoreError::new)?;
            out.push((k.value().1, Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }
}

impl HistoryStore for EmbeddedStore {
    fn append(&self, batch: &[Record]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(StoreError::new)?;
        {
            let mut table = tx.open_table(MESSAGES).map_err(StoreError::new)?;
            for r in batch {
                table
                    .insert((&*r.room, r.seq), &r.json[..])
                    .map_err(StoreError::new)?;
            }
        }
        // Durability::Immediate (the default): fsync before returning.
        tx.commit().map_err(StoreError::new)
    }

    fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::new)?;
        let table = tx.open_table(MESSAGES).map_err(StoreError::new)?;
        let mut range = table
            .range((room, 0)..=(room, u64::MAX))
            .map_err(StoreError::new)?;
        let last = match range.next_back() {
            Some(entry) => entry.map_err(StoreError::new)?.0.value().1,
            None => 0,
        };
        Ok(last)
    }

    // Reads answer at once from redb's page cache (microseconds), so they
    // run inline on the calling shard.
    fn page(&self, room: &str, before: Option<u64>, limit: usize) -> ReadFuture {
        Box::pin(std::future::ready(self.page_now(room, before, limit)))
    }

    fn after(&self, room: &str, since: u64, limit: usize) -> ReadFuture {
        Box::pin(std::future::ready(self.after_now(room, since, limit)))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(room: &str, seq: u64) -> Record {
        Record {
            room: Arc::from(room),
            seq,
            json: Bytes::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    #[test]
    fn pages_are_newest_first_and_rooms_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let batch: Vec<_> = (1..=10)
            .map(|s| rec("a", s))
            .chain([rec("ab", 1), rec("b", 1)])
            .collect();
        store.append(&batch).unwrap();

        assert_eq!(store.last_seq("a").unwrap(), 10);
        assert_eq!(store.last_seq("zzz").unwrap(), 0);
        let seqs = |v: Vec<(u64, Bytes)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(store.page_now("a", None, 3).unwrap()), vec![10, 9, 8]);
        assert_eq!(seqs(store.page_now("a", Some(3), 50).unwrap()), vec![2, 1]);
        assert_eq!(seqs(store.after_now("a", 7, 50).unwrap()), vec![8, 9, 10]);
        assert_eq!(seqs(store.after_now("a", 2, 2).unwrap()), vec![3, 4]);
        assert_eq!(seqs(store.page_now("ab", None, 50).unwrap()), vec![1]);
    }

    #[test]
    fn survives_reopen_and_repeated_appends() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.append(&[rec("r", 1), rec("r", 2)]).unwrap();
            store.append(&[rec("r", 2)]).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.last_seq("r").unwrap(), 2);
        assert_eq!(
            store.page_now("r", None, 10).unwrap()[0].1,
            Bytes::from("{\"seq\":2}")
        );
    }
}
