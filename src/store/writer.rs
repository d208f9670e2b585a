//! The history writers: threads that commit queued records in batches.
//!
//! Group commit: a writer takes everything queued (up to `max_batch`, waiting
//! up to `batch_age` for more when that is set) into one write, so the cost of
//! a commit (an fsync, or a round trip to MongoDB) is shared by every message
//! that arrived meanwhile. Rooms are spread over `lanes` writers by hash, so
//! several batches can be in flight while each room's records stay in order.
//!
//! A batch that fails is retried until it is stored: once sent, a record may
//! have been stored, so it is never reported as "not stored". What is reported
//! as not stored is certain: records that waited in the queue longer than
//! `max_wait` without being sent, and records whose seq does not follow the
//! last one stored for their room. The owner shard then rewinds its counter to
//! the seq the writer expects, so seqs stay gap-free and are never reused.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

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
    /// When it was queued, for `max_wait`.
    pub queued: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// Certainly not stored; the writer will accept `expected` next for this
    /// room.
    NotStored {
        expected: u64,
    },
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
    /// False while a commit is failing.
    pub healthy: AtomicBool,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    /// Records reported as not stored.
    pub refused: AtomicU64,
    /// Size of the last batch committed.
    pub last_batch: AtomicU64,
    /// Records in the batch being written (retried while the store fails).
    pub sending: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_batch: usize,
    /// Records queued per lane before submissions are refused.
    pub queue: usize,
    /// How long a queued record may wait before it is refused unsent.
    pub max_wait: Duration,
    /// How long to wait for a batch to fill; zero commits whatever is there.
    pub batch_age: Duration,
    /// Writer threads; rooms are spread over them by hash.
    pub lanes: usize,
    /// Refuse a record whose seq does not follow its room's last one. Off
    /// in cluster mode, where seqs come from Redis and several nodes write
    /// one room: the unique `(room, seq)` index keeps them apart there.
    pub contiguous: bool,
}

/// The shards' side of the writers.
#[derive(Clone)]
pub struct WriterHandle {
    lanes: Vec<Sender<Msg>>,
    hasher: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
    pub status: Arc<WriterStatus>,
}

impl WriterHandle {
    /// Queue a record without blocking; hands it back when its lane is full.
    pub fn try_submit(&self, p: Pending) -> Result<(), Pending> {
        let mut h = self.hasher.build_hasher();
        h.write(p.record.room.as_bytes());
        let lane = &self.lanes[(h.finish() % self.lanes.len() as u64) as usize];
        match lane.try_send(Msg::Write(p)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Msg::Write(p)) | TrySendError::Disconnected(Msg::Write(p))) => {
                Err(p)
            }
            Err(_) => unreachable!("only writes are submitted here"),
        }
    }

    /// Records waiting to be committed, over all lanes.
    pub fn queue_len(&self) -> usize {
        self.lanes.iter().map(|l| l.len()).sum()
    }

    /// Ask the writers to finish: everything queued before this call is
    /// committed (or reported) first. Waits for room in a full queue until
    /// `deadline`; false when a lane could not be told.
    pub fn stop(&self, deadline: Instant) -> bool {
        let mut told = true;
        for lane in &self.lanes {
            let left = deadline.saturating_duration_since(Instant::now());
            told &= lane.send_timeout(Msg::Stop, left).is_ok();
        }
        told
    }
}

/// Start the writer threads. `notify(owner, reports)` is called from them
/// after each batch, once per owner shard, with reports in seq order per room.
pub fn spawn<F>(
    store: Arc<dyn HistoryStore>,
    cfg: WriterConfig,
    notify: F,
) -> std::io::Result<(WriterHandle, Vec<JoinHandle<()>>)>
where
    F: Fn(usize, Vec<Report>) + Send + Sync + 'static,
{
    let status = Arc::new(WriterStatus::default());
    status.healthy.store(true, Ordering::Relaxed);
    let notify = Arc::new(notify);

    let mut lanes = Vec::new();
    let mut threads = Vec::new();
    for lane in 0..cfg.lanes.max(1) {
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue);
        let writer = Writer {
            store: store.clone(),
            cfg: cfg.clone(),
            status: status.clone(),
            next: HashMap::new(),
            carry: None,
        };
        let notify = notify.clone();
        let thread = std::thread::Builder::new()
            .name(format!("hubbub-history{lane}"))
            .spawn(move || writer.run(rx, &*notify))?;
        lanes.push(tx);
        threads.push(thread);
    }
    Ok((
        WriterHandle {
            lanes,
            hasher: Default::default(),
            status,
        },
        threads,
    ))
}

struct Writer {
    store: Arc<dyn HistoryStore>,
    cfg: WriterConfig,
    status: Arc<WriterStatus>,
    /// The seq each room must have next; loaded from the store on first use.
    next: HashMap<Arc<str>, u64>,
    /// A record taken off the queue while a batch was retrying, not expired:
    /// it starts the next batch.
    carry: Option<Pending>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>, notify: &dyn Fn(usize, Vec<Report>)) {
        let mut stopping = false;
        while !stopping {
            // 1. Wait for one record, then gather a batch.
            let first = match self.carry.take() {
                Some(p) => p,
                None => match rx.recv() {
                    Ok(Msg::Write(p)) => p,
                    Ok(Msg::Stop) | Err(_) => break,
                },
            };
            let deadline = first.queued + self.cfg.batch_age;
            let mut batch = vec![first];
            while batch.len() < self.cfg.max_batch {
                let next = match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => rx.recv_timeout(left),
                    _ => rx.try_recv().map_err(|_| RecvTimeoutError::Timeout),
                };
                match next {
                    Ok(Msg::Write(p)) => batch.push(p),
                    Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }

            // 2. Commit, and 3. tell each owner.
            let reports = self.commit(batch, &rx, &mut stopping, notify);
            tell(notify, reports);
        }
        tracing::debug!("history writer stopped");
    }

    /// Store what can be stored; one report per record.
    fn commit(
        &mut self,
        batch: Vec<Pending>,
        rx: &Receiver<Msg>,
        stopping: &mut bool,
        notify: &dyn Fn(usize, Vec<Report>),
    ) -> Vec<(usize, Report)> {
        let mut reports = Vec::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());

        // Keep records that continue their room's sequence and did not wait
        // too long; everything else is certainly not stored.
        for p in batch {
            if !self.cfg.contiguous {
                if p.queued.elapsed() > self.cfg.max_wait {
                    let expected = p.record.seq;
                    reports.push(report(&p, Outcome::NotStored { expected }));
                } else {
                    accepted.push(p);
                }
                continue;
            }
            let Some(expected) = self.expected(&p.record.room) else {
                reports.push(report(
                    &p,
                    Outcome::NotStored {
                        expected: p.record.seq,
                    },
                ));
                continue;
            };
            if p.record.seq != expected || p.queued.elapsed() > self.cfg.max_wait {
                reports.push(report(&p, Outcome::NotStored { expected }));
                continue;
            }
            self.next.insert(p.record.room.clone(), expected + 1);
            accepted.push(p);
        }
        if accepted.is_empty() {
            self.status
                .refused
                .fetch_add(reports.len() as u64, Ordering::Relaxed);
            return reports;
        }

        let records: Vec<Record> = accepted.iter().map(|p| p.record.clone()).collect();
        let status = self.status.clone();
        status
            .sending
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.append_until_stored(&records, rx, stopping, notify);
        status
            .sending
            .fetch_sub(records.len() as u64, Ordering::Relaxed);
        self.status.batches.fetch_add(1, Ordering::Relaxed);
        self.status
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.status
            .last_batch
            .store(records.len() as u64, Ordering::Relaxed);
        crate::metrics::get()
            .history_batch
            .observe(records.len() as f64);
        let refused = reports.len() as u64;
        self.status.refused.fetch_add(refused, Ordering::Relaxed);
        reports.extend(accepted.iter().map(|p| report(p, Outcome::Stored)));
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
                tracing::debug!(room = %room, err = %e, "history store cannot read last seq");
                None
            }
        }
    }

    /// Retry a failing write with backoff until it succeeds. Meanwhile, refuse
    /// queued records that have waited past `max_wait`, so that their senders
    /// hear `unavailable` instead of waiting for the outage to end.
    fn append_until_stored(
        &mut self,
        records: &[Record],
        rx: &Receiver<Msg>,
        stopping: &mut bool,
        notify: &dyn Fn(usize, Vec<Report>),
    ) {
        let mut delay = Duration::from_millis(10);
        loop {
            match self.store.append(records) {
                Ok(()) => {
                    if !self.status.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(store = self.store.kind(), "history store recovered");
                    }
                    return;
                }
                Err(e) => {
                    let backend = self.store.kind();
                    crate::metrics::get()
                        .backend_errors
                        .with_label_values(&[backend])
                        .inc();
                    if self.status.healthy.swap(false, Ordering::Relaxed) {
                        let store = self.store.kind();
                        tracing::warn!(store, err = %e, "history store failing; retrying");
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                    // Refusals go out now, not when the outage ends.
                    let mut refused = Vec::new();
                    self.expire_queued(rx, &mut refused, stopping);
                    let count = refused.len() as u64;
                    self.status.refused.fetch_add(count, Ordering::Relaxed);
                    tell(notify, refused);
                }
            }
        }
    }

    /// Take expired records off the head of the queue (FIFO: the oldest are
    /// first). The first one not expired is kept to start the next batch.
    fn expire_queued(
        &mut self,
        rx: &Receiver<Msg>,
        out: &mut Vec<(usize, Report)>,
        stopping: &mut bool,
    ) {
        // The record kept for the next batch expires like the rest.
        if let Some(p) = self.carry.take() {
            if p.queued.elapsed() <= self.cfg.max_wait {
                self.carry = Some(p);
                return;
            }
            out.push(self.never_sent(&p));
        }
        while let Ok(msg) = rx.try_recv() {
            let p = match msg {
                Msg::Write(p) => p,
                Msg::Stop => {
                    *stopping = true;
                    return;
                }
            };
            if p.queued.elapsed() <= self.cfg.max_wait {
                self.carry = Some(p);
                return;
            }
            out.push(self.never_sent(&p));
        }
    }

    /// Never sent: certainly not stored. Its room's expected seq is
    /// unchanged by it.
    fn never_sent(&self, p: &Pending) -> (usize, Report) {
        let expected = self
            .next
            .get(&p.record.room)
            .copied()
            .unwrap_or(p.record.seq);
        report(p, Outcome::NotStored { expected })
    }
}

/// Send reports to their owners, in the order given (seq order per room).
fn tell(notify: &dyn Fn(usize, Vec<Report>), reports: Vec<(usize, Report)>) {
    let mut by_owner: HashMap<usize, Vec<Report>> = HashMap::new();
    for (owner, report) in reports {
        by_owner.entry(owner).or_default().push(report);
    }
    for (owner, reports) in by_owner {
        notify(owner, reports);
    }
}

fn report(p: &Pending, outcome: Outcome) -> (usize, Report) {
    let r = Report {
        room: p.record.room.clone(),
        seq: p.record.seq,
        epoch: p.epoch,
        outcome,
    };
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
        attempts: AtomicU64,
        rows: Mutex<Vec<(String, u64)>>,
    }

    impl HistoryStore for Flaky {
        fn append(&self, batch: &[Record]) -> Result<(), StoreError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError("disk on fire".into()));
            }
            let mut rows = self.rows.lock().unwrap();
            rows.extend(batch.iter().map(|r| (r.room.to_string(), r.seq)));
            Ok(())
        }
        fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
            let rows = self.rows.lock().unwrap();
            Ok(rows
                .iter()
                .filter(|(r, _)| r == room)
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0))
        }
        fn page(&self, _: &str, _: Option<u64>, _: usize) -> crate::store::ReadFuture {
            Box::pin(std::future::ready(Ok(vec![])))
        }
        fn after(&self, _: &str, _: u64, _: usize) -> crate::store::ReadFuture {
            Box::pin(std::future::ready(Ok(vec![])))
        }
        fn kind(&self) -> &'static str {
            "flaky"
        }
    }

    fn pending(room: &str, seq: u64, epoch: u32) -> Pending {
        let record = Record {
            room: room.into(),
            seq,
            json: Bytes::new(),
        };
        Pending {
            owner: 0,
            epoch,
            record,
            queued: Instant::now(),
        }
    }

    fn cfg() -> WriterConfig {
        WriterConfig {
            max_batch: 100,
            queue: 100,
            max_wait: Duration::from_millis(50),
            batch_age: Duration::ZERO,
            lanes: 1,
            contiguous: true,
        }
    }

    fn writer(store: Arc<Flaky>) -> Writer {
        Writer {
            store,
            cfg: cfg(),
            status: Arc::default(),
            next: HashMap::new(),
            carry: None,
        }
    }

    #[test]
    fn contiguous_records_are_stored_and_gaps_refused() {
        let store = Arc::new(Flaky::default());
        let mut w = writer(store.clone());
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let batch = vec![pending("r", 1, 0), pending("r", 2, 0), pending("r", 4, 0)];
        let out = w.commit(batch, &rx, &mut false, &|_, _| {});
        let outcomes: Vec<_> = out.iter().map(|(_, r)| (r.seq, r.outcome)).collect();
        assert!(outcomes.contains(&(1, Outcome::Stored)));
        assert!(outcomes.contains(&(2, Outcome::Stored)));
        assert!(outcomes.contains(&(4, Outcome::NotStored { expected: 3 })));
        assert_eq!(store.rows.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_failing_batch_is_retried_and_expired_queued_records_are_refused() {
        let store = Arc::new(Flaky::default());
        store.fail.store(true, Ordering::SeqCst);
        let mut w = writer(store.clone());
        let (tx, rx) = crossbeam_channel::bounded(10);
        let mut old = pending("other", 1, 0);
        old.queued -= Duration::from_secs(1);
        tx.send(Msg::Write(old)).unwrap();
        let mut fresh = pending("other", 2, 0);
        fresh.queued += Duration::from_secs(60);
        tx.send(Msg::Write(fresh)).unwrap();

        // Heal the store after a few failed attempts.
        let healer = {
            let store = store.clone();
            std::thread::spawn(move || {
                while store.attempts.load(Ordering::SeqCst) < 3 {
                    std::thread::yield_now();
                }
                store.fail.store(false, Ordering::SeqCst);
            })
        };
        // Refusals are told before the batch is stored, not afterwards.
        let told = Mutex::new(Vec::new());
        let notify = |_owner: usize, reports: Vec<Report>| {
            let failing = store.rows.lock().unwrap().is_empty();
            told.lock()
                .unwrap()
                .extend(reports.into_iter().map(|r| (r, failing)));
        };
        let mut out = w.commit(vec![pending("r", 1, 0)], &rx, &mut false, &notify);
        healer.join().unwrap();
        let told = told.into_inner().unwrap();
        assert!(
            told.iter().all(|(_, failing)| *failing),
            "told during the outage"
        );
        out.extend(told.into_iter().map(|(r, _)| (0, r)));

        let stored: Vec<_> = out
            .iter()
            .filter(|(_, r)| r.outcome == Outcome::Stored)
            .collect();
        assert_eq!(stored.len(), 1, "the sent batch is never given up");
        let refused: Vec<_> = out
            .iter()
            .filter(|(_, r)| r.room.as_ref() == "other")
            .collect();
        assert_eq!(
            refused.len(),
            1,
            "only the expired queued record is refused"
        );
        assert_eq!(refused[0].1.outcome, Outcome::NotStored { expected: 1 });
        assert_eq!(
            w.carry.as_ref().map(|p| p.record.seq),
            Some(2),
            "the fresh one is kept"
        );
    }

    #[test]
    fn the_record_kept_for_the_next_batch_expires_too() {
        let mut w = writer(Arc::new(Flaky::default()));
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let mut old = pending("r", 1, 0);
        old.queued -= Duration::from_secs(1);
        w.carry = Some(old);
        let mut out = Vec::new();
        w.expire_queued(&rx, &mut out, &mut false);
        assert!(w.carry.is_none());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.outcome, Outcome::NotStored { expected: 1 });
    }

    #[test]
    fn the_threads_report_to_owners_and_stop_after_draining() {
        let store = Arc::new(Flaky::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let cfg = WriterConfig {
            max_batch: 4,
            lanes: 3,
            contiguous: true,
            ..cfg()
        };
        let (handle, threads) = spawn(store.clone(), cfg, move |owner, reports| {
            sink.lock().unwrap().extend(
                reports
                    .into_iter()
                    .map(|r| (owner, r.room, r.seq, r.outcome)),
            );
        })
        .unwrap();
        for room in ["a", "b", "c", "d"] {
            for seq in 1..=10 {
                handle.try_submit(pending(room, seq, 0)).unwrap();
            }
        }
        assert!(handle.stop(Instant::now() + Duration::from_secs(10)));
        for t in threads {
            t.join().unwrap();
        }

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 40);
        assert!(seen
            .iter()
            .all(|(o, _, _, out)| *o == 0 && *out == Outcome::Stored));
        for room in ["a", "b", "c", "d"] {
            let seqs: Vec<u64> = seen.iter().filter(|r| &*r.1 == room).map(|r| r.2).collect();
            assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "in order per room");
            assert_eq!(store.last_seq(room).unwrap(), 10);
        }
    }
}
