//! Counters and latency histograms: recorded per thread, collected once a second.
//!
//! Each runtime worker thread owns one `Interval` behind a mutex that only it and the
//! once-a-second collector ever take, so the hot path pays an uncontended lock and never
//! bounces a cache line between cores. The collector folds every thread's interval into a
//! per-second snapshot (for the timeline and the chart) and into the run's totals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;

/// Highest latency a histogram tells apart, in µs; above it values are clamped. A minute is
/// far past anything a chat message should take and keeps each histogram near 190 KiB.
const HIGHEST_US: u64 = 60_000_000;

/// Significant figures per histogram: 0.1% resolution.
const SIGFIGS: u8 = 3;

/// A string-keyed count (error codes, failure causes). Keys are few, so a sorted map that
/// allocates only on a key's first use is enough, and it prints in a stable order.
#[derive(Clone, Debug, Default)]
pub struct Tally(BTreeMap<String, u64>);

impl Tally {
    pub fn add(&mut self, key: &str, n: u64) {
        match self.0.get_mut(key) {
            Some(v) => *v += n,
            None => {
                self.0.insert(key.to_owned(), n);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    fn absorb(&mut self, other: &mut Tally) {
        for (k, v) in std::mem::take(&mut other.0) {
            self.add(&k, v);
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIGS).expect("static bounds are valid")
}

/// Moves `from`'s samples into `into`, leaving `from` empty.
fn absorb_hist(into: &mut Histogram<u64>, from: &mut Histogram<u64>) {
    if !from.is_empty() {
        into.add(&*from).expect("same bounds");
        from.reset();
    }
}

/// Everything recorded over some span of time: one thread's second, one second of the
/// whole run, or the whole run.
#[derive(Clone, Debug)]
pub struct Interval {
    /// `message` and `dm` requests written.
    pub sent: u64,
    /// Acks of those requests.
    pub acked: u64,
    /// `message` and `dm` frames received, a sender's own echo included.
    pub delivered: u64,
    /// `typing` frames received.
    pub typing: u64,
    /// Sequence numbers skipped in a live stream (see `order`).
    pub lost: u64,
    /// Sequence numbers at or below one already seen.
    pub out_of_order: u64,
    /// History a resuming join should have replayed but did not.
    pub resume_missed: u64,
    /// Messages received as replayed history after a resuming join; counted in
    /// `delivered` but kept out of the latency histograms.
    pub replayed: u64,
    /// Successful WebSocket upgrades.
    pub connected: u64,
    /// Upgrades after the first one of the same user (churn).
    pub reconnects: u64,
    /// Join acks received.
    pub joins: u64,
    /// `error` frames by protocol `code`.
    pub errors: Tally,
    /// Failed connection attempts by cause (refused, timeout, http_401, ...).
    pub connect_failures: Tally,
    /// Connections lost before the generator closed them, by cause.
    pub disconnects: Tally,
    /// Send to receipt of a message by another member (sampled connections only), µs.
    pub delivery: Histogram<u64>,
    /// Send to receipt of the sender's own copy of its message, µs.
    pub echo: Histogram<u64>,
    /// Send to ack, µs.
    pub ack: Histogram<u64>,
    /// How late each send ran against its schedule, µs.
    pub lag: Histogram<u64>,
    /// TCP connect plus WebSocket upgrade, µs.
    pub connect: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            sent: 0,
            acked: 0,
            delivered: 0,
            typing: 0,
            lost: 0,
            out_of_order: 0,
            resume_missed: 0,
            replayed: 0,
            connected: 0,
            reconnects: 0,
            joins: 0,
            errors: Tally::default(),
            connect_failures: Tally::default(),
            disconnects: Tally::default(),
            delivery: histogram(),
            echo: histogram(),
            ack: histogram(),
            lag: histogram(),
            connect: histogram(),
        }
    }
}

impl Interval {
    /// Adds `other` into `self` and empties `other`.
    pub fn absorb(&mut self, other: &mut Interval) {
        self.sent += std::mem::take(&mut other.sent);
        self.acked += std::mem::take(&mut other.acked);
        self.delivered += std::mem::take(&mut other.delivered);
        self.typing += std::mem::take(&mut other.typing);
        self.lost += std::mem::take(&mut other.lost);
        self.out_of_order += std::mem::take(&mut other.out_of_order);
        self.resume_missed += std::mem::take(&mut other.resume_missed);
        self.replayed += std::mem::take(&mut other.replayed);
        self.connected += std::mem::take(&mut other.connected);
        self.reconnects += std::mem::take(&mut other.reconnects);
        self.joins += std::mem::take(&mut other.joins);
        self.errors.absorb(&mut other.errors);
        self.connect_failures.absorb(&mut other.connect_failures);
        self.disconnects.absorb(&mut other.disconnects);
        absorb_hist(&mut self.delivery, &mut other.delivery);
        absorb_hist(&mut self.echo, &mut other.echo);
        absorb_hist(&mut self.ack, &mut other.ack);
        absorb_hist(&mut self.lag, &mut other.lag);
        absorb_hist(&mut self.connect, &mut other.connect);
    }
}

/// Percentiles of one histogram, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

impl Percentiles {
    /// `None` for an empty histogram, so reports can tell "no samples" from zero.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        })
    }
}

/// Records a latency in µs; zero is clamped to 1, the histogram's lowest value.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// Every thread's interval, for the collector.
static THREADS: Mutex<Vec<Arc<Mutex<Interval>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Mutex<Interval>> = {
        let mine = Arc::new(Mutex::new(Interval::default()));
        lock(&THREADS).push(Arc::clone(&mine));
        mine
    };
}

/// Locks, ignoring poisoning: a panicked recorder leaves counts that are still worth reading.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the calling thread's interval. Keep `f` short: the collector waits on it.
pub fn record<R>(f: impl FnOnce(&mut Interval) -> R) -> R {
    LOCAL.with(|mine| f(&mut lock(mine)))
}

/// Moves everything every thread recorded since the last call into `into`.
pub fn collect(into: &mut Interval) {
    let threads = lock(&THREADS).clone();
    for t in threads {
        into.absorb(&mut lock(&t));
    }
}

/// Connections currently open.
pub static OPEN: AtomicI64 = AtomicI64::new(0);

/// Connections currently open whose joins were all acked.
pub static JOINED: AtomicI64 = AtomicI64::new(0);

/// Reads a gauge.
pub fn gauge(g: &AtomicI64) -> i64 {
    g.load(Ordering::Relaxed)
}

/// Moves a gauge by `delta`.
pub fn bump(g: &AtomicI64, delta: i64) {
    g.fetch_add(delta, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorb_moves_everything() {
        let mut a = Interval::default();
        let mut b = Interval {
            sent: 3,
            delivered: 90,
            lost: 2,
            ..Interval::default()
        };
        b.errors.add("rate_limited", 4);
        b.errors.add("rate_limited", 1);
        b.connect_failures.add("refused", 1);
        for us in [100, 200, 300] {
            record_us(&mut b.delivery, us);
        }
        a.errors.add("internal", 1);

        a.absorb(&mut b);
        assert_eq!((a.sent, a.delivered, a.lost), (3, 90, 2));
        assert_eq!(
            a.errors.iter().collect::<Vec<_>>(),
            [("internal", 1), ("rate_limited", 5)]
        );
        assert_eq!(a.connect_failures.total(), 1);
        assert_eq!(a.delivery.len(), 3);

        // The source is left empty, ready for the next second.
        assert_eq!((b.sent, b.delivered, b.errors.total()), (0, 0, 0));
        assert!(b.delivery.is_empty());
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for us in 1..=1000 {
            record_us(&mut h, us);
        }
        let p = Percentiles::of(&h).unwrap();
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert_eq!(p.max, 1000);
        assert!(Percentiles::of(&histogram()).is_none());
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut h = histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= HIGHEST_US);
    }

    #[test]
    fn collect_gathers_other_threads() {
        std::thread::spawn(|| record(|i| i.sent += 5))
            .join()
            .unwrap();
        record(|i| i.sent += 2);
        let mut all = Interval::default();
        collect(&mut all);
        // Other tests in this binary may record too; ours are at least there.
        assert!(all.sent >= 7);
    }
}
