//! The history writer: one thread that commits queued records in batches.
//!
//! Group commit: the thread takes everything queued (up to `max_batch`) into
//! one transaction, so the cost of a commit (an fsync for the embedded store)
//! is shared by every message that arrived while the previous one ran.
//!
//! It also guards the "no gap, never reused" promise of `seq`: for each room it
//! accepts only the seq that follows the last one it stored. When a batch
//! cannot be stored, every record of it and every later record of the same
//! rooms is reported as not stored, with the seq the writer expects next, and
//! the owner shard rewinds its counter to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{HistoryStore, Record};

/// A record and who to tell about it.
#[derive(Debug)]
pub struct Pending {
    /// The shard that owns the room.
    pub owner: usize,
    /// The owner's counter epoch for the room when it assigned `seq`; echoed
    /// back so that the owner can ignore outcomes from before a rewind.
    pub epoch: u32,
    pub record: Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// Not stored (store failure, or an out-of-order seq after one); the
    /// writer will accept `expected` next for this room.
    NotStored { expected: u64 },
}

#[derive(Debug)]
pub struct Report {
    pub room: Arc<str>,
    pub seq: u64,
    pub epoch: u32,
    pub outcome: Outcome,
}

enum Msg {
    Write(Pending),
    Stop,
}

/// Counters and state shown by `/health` and `/ready`.
#[derive(Default)]
pub struct WriterStatus {
    /// False while the last commit attempt failed.
    pub healthy: AtomicBool,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub failed_records: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_batch: usize,
    pub queue: usize,
    /// How long one batch is retried before its records are reported as not
    /// stored.
    pub retry_for: Duration,
}

/// The shards' side of the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Msg>,
    pub status: Arc<WriterStatus>,
}

impl WriterHandle {
    /// Queue a record without blocking; hands it back when the queue is full.
    pub fn try_submit(&self, p: Pending) -> Result<(), Pending> {
        match self.tx.try_send(Msg::Write(p)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Msg::Write(p))) | Err(TrySendError::Disconnected(Msg::Write(p))) => {
                Err(p)
            }
            Err(_) => unreachable!("only writes are submitted here"),
        }
    }

    /// Records waiting to be committed.
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    /// Ask the writer to finish: everything queued before this call is
    /// committed (or reported) first. Blocks while the queue is full.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Start the writer thread. `notify(owner, reports)` is called from it after
/// each batch, once per owner shard with reports in seq order per room.
pub fn spawn<F>(
    store: Arc<dyn HistoryStore>,
    cfg: WriterConfig,
    notify: F,
) -> std::io::Result<(WriterHandle, JoinHandle<()>)>
where
    F: Fn(usize, Vec<Report>) + Send + 'static,
{
    let (tx, rx) = crossbeam_channel::bounded(cfg.queue);
    let status = Arc::new(WriterStatus::default());
    status.healthy.store(true, Ordering::Relaxed);

    let writer = Writer { store, cfg, status: status.clone(), next: HashMap::new() };
    let thread = std::thread::Builder::new()
        .name("hubbub-history".into())
        .spawn(move || writer.run(rx, notify))?;
    Ok((WriterHandle { tx, status }, thread))
}

struct Writer {
    store: Arc<dyn HistoryStore>,
    cfg: WriterConfig,
    status: Arc<WriterStatus>,
    /// The seq each room must have next; loaded from the store on first use.
    next: HashMap<Arc<str>, u64>,
}

impl Writer {
    fn run<F: Fn(usize, Vec<Report>)>(mut self, rx: Receiver<Msg>, notify: F) {
        let mut stopping = false;
        while !stopping {
            // 1. Wait for one record, then take whatever else is queued.
            let mut batch = Vec::new();
            match rx.recv() {
                Ok(Msg::Write(p)) => batch.push(p),
                Ok(Msg::Stop) | Err(_) => break,
            }
            while batch.len() < self.cfg.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Write(p)) => batch.push(p),
                    Ok(Msg::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }

            // 2. Commit, and 3. tell each owner.
            let mut by_owner: HashMap<usize, Vec<Report>> = HashMap::new();
            for (owner, report) in self.commit(batch) {
                by_owner.entry(owner).or_default().push(report);
            }
            for (owner, reports) in by_owner {
                notify(owner, reports);
            }
        }
        tracing::debug!("history writer stopped");
    }

    /// Store what can be stored; one report per pending record.
    fn commit(&mut self, batch: Vec<Pending>) -> Vec<(usize, Report)> {
        let mut reports = Vec::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());
        // First accepted seq of each room in this batch, to rewind on failure.
        let mut first: HashMap<Arc<str>, u64> = HashMap::new();

        // Keep only records that continue their room's sequence.
        for p in batch {
            let expected = match self.expected(&p.record.room) {
                Some(n) => n,
                None => {
                    // The store cannot even say where the room stands.
                    let outcome = Outcome::NotStored { expected: p.record.seq };
                    reports.push(report(&p, outcome));
                    continue;
                }
            };
            if p.record.seq != expected {
                reports.push(report(&p, Outcome::NotStored { expected }));
                continue;
            }
            first.entry(p.record.room.clone()).or_insert(expected);
            self.next.insert(p.record.room.clone(), expected + 1);
            accepted.push(p);
        }
        if accepted.is_empty() {
            return reports;
        }

        let records: Vec<Record> = accepted.iter().map(|p| p.record.clone()).collect();
        let stored = self.append_with_retry(&records);
        if stored {
            self.status.batches.fetch_add(1, Ordering::Relaxed);
            self.status.records.fetch_add(records.len() as u64, Ordering::Relaxed);
        } else {
            self.status.failed_records.fetch_add(records.len() as u64, Ordering::Relaxed);
            for (room, seq) in &first {
                self.next.insert(room.clone(), *seq);
            }
        }
        for p in accepted {
            let outcome = if stored {
                Outcome::Stored
            } else {
                Outcome::NotStored { expected: first[&p.record.room] }
            };
            reports.push(report(&p, outcome));
        }
        reports
    }

    fn expected(&mut self, room: &Arc<str>) -> Option<u64> {
        if let Some(n) = self.next.get(room) {
            return Some(*n);
        }
        match self.store.last_seq(room) {
            Ok(last) => {
                self.next.insert(room.clone(), last + 1);
                Some(last + 1)
            }
            Err(e) => {
                tracing::warn!(room = %room, err = %e, "history store cannot read last seq");
                None
            }
        }
    }

    /// Retry a failing commit with backoff for up to `retry_for`.
    fn append_with_retry(&self, records: &[Record]) -> bool {
        let deadline = Instant::now() + self.cfg.retry_for;
        let mut delay = Duration::from_millis(10);
        loop {
            match self.store.append(records) {
                Ok(()) => {
                    if !self.status.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(store = self.store.kind(), "history store recovered");
                    }
                    return true;
                }
                Err(e) => {
                    if self.status.healthy.swap(false, Ordering::Relaxed) {
                        tracing::warn!(store = self.store.kind(), err = %e, "history store failing");
                    }
                    if Instant::now() + delay > deadline {
                        return false;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

fn report(p: &Pending, outcome: Outcome) -> (usize, Report) {
    let r = Report { room: p.record.room.clone(), seq: p.record.seq, epoch: p.epoch, outcome };
    (p.owner, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use bytes::Bytes;
    use std::sync::Mutex;

    /// A store whose appends fail while `fail` is set; keeps rows in memory.
    #[derive(Default)]
    struct Flaky {
        fail: AtomicBool,
        rows: Mutex<Vec<(String, u64)>>,
    }

    impl HistoryStore for Flaky {
        fn append(&self, batch: &[Record]) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError("disk on fire".into()));
            }
            let mut rows = self.rows.lock().unwrap();
            rows.extend(batch.iter().map(|r| (r.room.to_string(), r.seq)));
            Ok(())
        }
        fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
            let rows = self.rows.lock().unwrap();
            Ok(rows.iter().filter(|(r, _)| r == room).map(|(_, s)| *s).max().unwrap_or(0))
        }
        fn page(&self, _: &str, _: Option<u64>, _: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
            Ok(vec![])
        }
        fn after(&self, _: &str, _: u64, _: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
            Ok(vec![])
        }
        fn kind(&self) -> &'static str {
            "flaky"
        }
    }

    fn pending(room: &str, seq: u64, epoch: u32) -> Pending {
        Pending { owner: 0, epoch, record: Record { room: room.into(), seq, json: Bytes::new() } }
    }

    fn writer(store: Arc<Flaky>) -> Writer {
        let cfg = WriterConfig {
            max_batch: 100,
            queue: 100,
            retry_for: Duration::from_millis(30),
        };
        Writer { store, cfg, status: Arc::default(), next: HashMap::new() }
    }

    #[test]
    fn contiguous_records_are_stored_and_gaps_refused() {
        let store = Arc::new(Flaky::default());
        let mut w = writer(store.clone());
        let out = w.commit(vec![pending("r", 1, 0), pending("r", 2, 0), pending("r", 4, 0)]);
        let outcomes: Vec<_> = out.iter().map(|(_, r)| (r.seq, r.outcome)).collect();
        assert!(outcomes.contains(&(1, Outcome::Stored)));
        assert!(outcomes.contains(&(2, Outcome::Stored)));
        assert!(outcomes.contains(&(4, Outcome::NotStored { expected: 3 })));
        assert_eq!(store.rows.lock().unwrap().len(), 2);
    }

    #[test]
    fn failed_batch_rewinds_the_room_and_later_seqs_are_refused() {
        let store = Arc::new(Flaky::default());
        let mut w = writer(store.clone());
        w.commit(vec![pending("r", 1, 0)]);

        store.fail.store(true, Ordering::SeqCst);
        let out = w.commit(vec![pending("r", 2, 0), pending("r", 3, 0)]);
        assert!(out.iter().all(|(_, r)| r.outcome == Outcome::NotStored { expected: 2 }));

        // A record assigned before the owner heard of the failure.
        store.fail.store(false, Ordering::SeqCst);
        let out = w.commit(vec![pending("r", 4, 0)]);
        assert_eq!(out[0].1.outcome, Outcome::NotStored { expected: 2 });

        // After the rewind the owner starts again at 2, in a new epoch.
        let out = w.commit(vec![pending("r", 2, 1)]);
        assert_eq!(out[0].1.outcome, Outcome::Stored);
        assert_eq!(out[0].1.epoch, 1);
        assert_eq!(store.last_seq("r").unwrap(), 2);
    }

    #[test]
    fn the_thread_reports_to_owners_and_stops_after_draining() {
        let store = Arc::new(Flaky::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let cfg = WriterConfig { max_batch: 4, queue: 64, retry_for: Duration::from_millis(10) };
        let (handle, thread) = spawn(store.clone(), cfg, move |owner, reports| {
            sink.lock().unwrap().extend(reports.into_iter().map(|r| (owner, r.seq, r.outcome)));
        })
        .unwrap();
        for seq in 1..=10 {
            handle.try_submit(pending("r", seq, 0)).unwrap();
        }
        handle.stop();
        thread.join().unwrap();

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 10);
        assert!(seen.iter().all(|(o, _, out)| *o == 0 && *out == Outcome::Stored));
        assert_eq!(store.last_seq("r").unwrap(), 10);
    }
}
