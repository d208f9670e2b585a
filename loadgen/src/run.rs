//! Runs a scenario's clients: ramps them up, collects the stats once a second while showing
//! a progress line, stops at the deadline and waits for every client to close.
//!
//! The run has three phases on one timeline: ramp (clients start at `--ramp` per second and
//! begin their traffic as soon as they have joined), steady (everyone who made it in is
//! active) until `--duration` from the start, and drain (no new sends; messages in flight
//! are still read and counted) for `--drain`. Clients close after the drain.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::stats::{self, Interval, Percentiles, JOINED, OPEN};

/// Extra time past the drain for close handshakes before stragglers are aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The run's fixed points in time.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub start: Instant,
    /// End of sending: `--duration` after the start.
    pub stop_at: Instant,
    /// End of the drain: clients close.
    pub close_at: Instant,
    /// New clients per second.
    pub ramp: f64,
}

impl Timing {
    pub fn new(duration: Duration, drain: Duration, ramp: f64) -> Self {
        let start = Instant::now();
        Timing {
            start,
            stop_at: start + duration,
            close_at: start + duration + drain,
            ramp,
        }
    }

    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }
}

/// One second of the run (the last one may be shorter).
#[derive(Clone, Debug)]
pub struct Second {
    /// End of the interval, in seconds since the start.
    pub t: f64,
    /// Length of the interval in seconds.
    pub len: f64,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    /// Sequence numbers skipped in live streams (see `order`).
    pub lost: u64,
    /// Connections open at the end of the interval.
    pub open: i64,
    /// Delivery latency of the interval, if any was sampled.
    pub delivery: Option<Percentiles>,
    /// Send lag p99 of the interval, µs.
    pub lag_p99: Option<u64>,
}

/// What a run produced.
pub struct Outcome {
    pub totals: Interval,
    pub seconds: Vec<Second>,
    /// Clients started (fewer than asked when the ramp outlasts the duration).
    pub started: usize,
    /// Seconds from the start until every started client had joined (or the ramp ended,
    /// if some never did): where the steady phase begins.
    pub ramp_secs: f64,
    /// `--duration` in seconds.
    pub duration_secs: f64,
    /// Connections open and joined when sending stopped.
    pub held: i64,
    /// Seconds from the start until the last client closed.
    pub elapsed_secs: f64,
}

/// Starts `clients` clients at the ramp rate, each running `client(i)` to completion, and
/// collects the stats until they have all finished.
pub async fn execute<F, Fut>(timing: Timing, clients: usize, client: F) -> Outcome
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let started = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = oneshot::channel();
    let (held_tx, held_rx) = oneshot::channel();
    let collector = tokio::spawn(collect(
        timing,
        clients,
        done_rx,
        held_rx,
        Arc::clone(&started),
    ));

    // Ramp: client i starts at i / ramp seconds; none start after sending has stopped.
    let mut set = JoinSet::new();
    for i in 0..clients {
        let due = timing.start + Duration::from_secs_f64(i as f64 / timing.ramp);
        if due >= timing.stop_at {
            break;
        }
        sleep_until(due).await;
        set.spawn(client(i));
        started.store(i + 1, Ordering::Relaxed);
    }
    let ramp_end = Instant::now();

    sleep_until(timing.stop_at).await;
    let _ = held_tx.send(stats::gauge(&JOINED));

    // Clients close themselves after the drain; give the close handshakes a little time.
    let hard_stop = timing.close_at + CLOSE_GRACE;
    while let Ok(Some(_)) = tokio::time::timeout_at(hard_stop, set.join_next()).await {}
    set.shutdown().await;

    let _ = done_tx.send(());
    let mut out = collector.await.expect("the collector does not panic");
    out.started = started.load(Ordering::Relaxed);
    if out.ramp_secs == 0.0 {
        out.ramp_secs = timing.secs(ramp_end);
    }
    out.elapsed_secs = timing.secs(Instant::now());
    out
}

/// Once a second: gather every thread's stats into a `Second` and the totals, and redraw the
/// progress line. Finishes with one last partial interval when `done` fires.
async fn collect(
    timing: Timing,
    clients: usize,
    mut done: oneshot::Receiver<()>,
    held: oneshot::Receiver<i64>,
    started: Arc<AtomicUsize>,
) -> Outcome {
    let duration_secs = timing.secs(timing.stop_at);
    let bar = progress_bar(duration_secs);
    let mut totals = Interval::default();
    let mut current = Interval::default();
    let mut seconds: Vec<Second> = Vec::new();
    let mut ramp_secs = 0.0;
    let mut last_t = 0.0;

    for tick in 1u64.. {
        let finished = tokio::select! {
            () = sleep_until(timing.start + Duration::from_secs(tick)) => false,
            _ = &mut done => true,
        };
        let t = timing.secs(Instant::now());
        stats::collect(&mut current);
        let second = Second {
            t,
            len: t - last_t,
            sent: current.sent,
            delivered: current.delivered,
            errors: current.errors.total(),
            lost: current.lost,
            open: stats::gauge(&OPEN),
            delivery: Percentiles::of(&current.delivery),
            lag_p99: Percentiles::of(&current.lag).map(|p| p.p99),
        };
        last_t = t;
        totals.absorb(&mut current);

        // The steady phase starts once every started client has joined or given up.
        let joined = stats::gauge(&JOINED).max(0) as u64;
        let failed = totals.connect_failures.total();
        let all_started = started.load(Ordering::Relaxed);
        let ramp_over = all_started == clients || t >= duration_secs;
        if ramp_secs == 0.0 && ramp_over && joined + failed >= all_started as u64 {
            ramp_secs = t;
            bar.suspend(|| {
                eprintln!(
                    "{joined} of {all_started} clients joined ({failed} failed) after {t:.1} s"
                )
            });
        }

        bar.set_position((t * 10.0) as u64);
        bar.set_message(progress_text(&second, &totals, all_started));
        seconds.push(second);
        if finished {
            break;
        }
    }
    bar.finish_and_clear();

    Outcome {
        totals,
        seconds,
        started: 0,
        ramp_secs,
        duration_secs,
        held: held.await.unwrap_or(0),
        elapsed_secs: 0.0,
    }
}

/// A bar over `--duration` (it stays full through the drain), drawn on stderr and hidden
/// when stderr is not a terminal.
fn progress_bar(duration_secs: f64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some((duration_secs * 10.0) as u64),
        ProgressDrawTarget::stderr(),
    );
    let style = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:24}] {msg}")
        .expect("static template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn progress_text(s: &Second, totals: &Interval, started: usize) -> String {
    let per_sec = |n: u64| n as f64 / s.len.max(1e-3);
    let p99 = s.delivery.map_or("-".to_owned(), |p| fmt_us(p.p99));
    let lag = s.lag_p99.map_or("-".to_owned(), fmt_us);
    format!(
        "open {}/{} | sent {}/s | delivered {}/s | p99 {} | lag p99 {} | errors {} | lost {} \
         | out of order {}",
        s.open,
        started,
        si(per_sec(s.sent)),
        si(per_sec(s.delivered)),
        p99,
        lag,
        totals.errors.total(),
        totals.lost,
        totals.out_of_order,
    )
}

/// A count with a k/M suffix, for tight spaces.
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A duration given in µs, in the unit that suits it.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}
