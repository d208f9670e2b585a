//! The end-of-run summary: one `Summary` computed from the run's outcome, printed as a
//! table on stdout and written as JSON for scripts that compare runs.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::run::{fmt_us, si, Outcome};
use crate::stats::{Percentiles, Tally};

/// The numbers of one run, as reported.
pub struct Summary<'a> {
    pub scenario: &'static str,
    pub url: &'a str,
    pub clients: usize,
    pub params: Value,
    pub outcome: &'a Outcome,
    /// Length of the steady window over which the per-second rates are averaged.
    pub steady_secs: f64,
    pub delivered_per_sec: f64,
    pub sent_per_sec: f64,
    /// The server's advertised per-user rate limit, when it sent one.
    pub server_rate_limit: Option<u64>,
}

impl<'a> Summary<'a> {
    /// Averages rates over the steady seconds: complete one-second intervals after every
    /// client joined and before sending stopped. Falls back to the whole sending time when
    /// the run had no such second (a ramp as long as the run).
    pub fn new(
        scenario: &'static str,
        url: &'a str,
        clients: usize,
        params: Value,
        outcome: &'a Outcome,
        server_rate_limit: Option<u64>,
    ) -> Self {
        let steady: Vec<_> = outcome
            .seconds
            .iter()
            .filter(|s| {
                s.t - s.len >= outcome.ramp_secs - 1e-6 && s.t <= outcome.duration_secs + 0.05
            })
            .collect();
        let steady_secs: f64 = steady.iter().map(|s| s.len).sum();
        let (delivered_per_sec, sent_per_sec, steady_secs) = if steady_secs >= 0.5 {
            let d: u64 = steady.iter().map(|s| s.delivered).sum();
            let n: u64 = steady.iter().map(|s| s.sent).sum();
            (d as f64 / steady_secs, n as f64 / steady_secs, steady_secs)
        } else {
            let secs = outcome.duration_secs.max(1e-3);
            let t = &outcome.totals;
            (t.delivered as f64 / secs, t.sent as f64 / secs, 0.0)
        };
        Summary {
            scenario,
            url,
            clients,
            params,
            outcome,
            steady_secs,
            delivered_per_sec,
            sent_per_sec,
            server_rate_limit,
        }
    }

    pub fn to_json(&self) -> Value {
        let o = self.outcome;
        let t = &o.totals;
        let timeline: Vec<Value> = o
            .seconds
            .iter()
            .map(|s| {
                json!({
                    "t": round3(s.t),
                    "sent_per_sec": round3(s.sent as f64 / s.len.max(1e-3)),
                    "delivered_per_sec": round3(s.delivered as f64 / s.len.max(1e-3)),
                    "errors": s.errors,
                    "lost": s.lost,
                    "open": s.open,
                    "latency_us": pct_json(s.delivery),
                    "send_lag_p99_us": s.lag_p99,
                })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "url": self.url,
            "params": self.params,
            "clients": self.clients,
            "started": o.started,
            "connected": t.connected,
            "reconnects": t.reconnects,
            "held": o.held,
            "duration_s": round3(o.duration_secs),
            "ramp_s": round3(o.ramp_secs),
            "steady_s": round3(self.steady_secs),
            "sent": t.sent,
            "acked": t.acked,
            "delivered": t.delivered,
            "typing_received": t.typing,
            "sent_per_sec": round3(self.sent_per_sec),
            "delivered_per_sec": round3(self.delivered_per_sec),
            "latency_us": pct_json(Percentiles::of(&t.delivery)),
            "echo_latency_us": pct_json(Percentiles::of(&t.echo)),
            "ack_latency_us": pct_json(Percentiles::of(&t.ack)),
            "connect_us": pct_json(Percentiles::of(&t.connect)),
            "send_lag_us": pct_json(Percentiles::of(&t.lag)),
            "errors": tally_json(&t.errors),
            "lost": t.lost,
            "out_of_order": t.out_of_order,
            "resume_missed": t.resume_missed,
            "replayed": t.replayed,
            "connect_failures": tally_json(&t.connect_failures),
            "disconnects": tally_json(&t.disconnects),
            "server_rate_limit": self.server_rate_limit,
            "timeline": timeline,
        })
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let o = self.outcome;
        let t = &o.totals;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "scenario     {}  {}", self.scenario, self.params);
        let _ = writeln!(w, "target       {}", self.url);
        let _ = writeln!(
            w,
            "clients      {} asked, {} started, {} connected ({} reconnects), {} held at stop",
            self.clients, o.started, t.connected, t.reconnects, o.held
        );
        let _ = writeln!(
            w,
            "time         {:.1} s run, {:.1} s ramp, {:.1} s steady, {:.1} s until all closed",
            o.duration_secs, o.ramp_secs, self.steady_secs, o.elapsed_secs
        );
        let _ = writeln!(
            w,
            "messages     {} sent, {} acked, {} delivered, {} typing received",
            t.sent, t.acked, t.delivered, t.typing
        );
        let _ = writeln!(
            w,
            "throughput   {} sent/s, {} delivered/s (steady)",
            si(self.sent_per_sec),
            si(self.delivered_per_sec)
        );
        let _ = writeln!(
            w,
            "order        {} lost, {} out of order, {} missed on resume ({} replayed)",
            t.lost, t.out_of_order, t.resume_missed, t.replayed
        );
        let _ = writeln!(w, "errors       {}", tally_text(&t.errors));
        let _ = writeln!(w, "conn fails   {}", tally_text(&t.connect_failures));
        let _ = writeln!(w, "disconnects  {}", tally_text(&t.disconnects));
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "{:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}",
            "latency", "p50", "p90", "p99", "p99.9", "max", "samples"
        );
        for (name, h) in [
            ("delivery (recipients)", &t.delivery),
            ("echo (sender)", &t.echo),
            ("ack (sender)", &t.ack),
            ("send lag", &t.lag),
            ("connect", &t.connect),
        ] {
            let _ = match Percentiles::of(h) {
                Some(p) => writeln!(
                    w,
                    "{name:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}",
                    fmt_us(p.p50),
                    fmt_us(p.p90),
                    fmt_us(p.p99),
                    fmt_us(p.p999),
                    fmt_us(p.max),
                    p.count
                ),
                None => writeln!(w, "{name:<22}{:>9}{:>50}", "-", 0),
            };
        }
        out
    }
}

fn pct_json(p: Option<Percentiles>) -> Value {
    match p {
        Some(p) => json!({
            "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max,
            "count": p.count,
        }),
        None => json!({
            "p50": null, "p90": null, "p99": null, "p999": null, "max": null, "count": 0,
        }),
    }
}

fn tally_json(t: &Tally) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.to_owned(), json!(v))).collect())
}

fn tally_text(t: &Tally) -> String {
    if t.total() == 0 {
        return "none".to_owned();
    }
    t.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Second;
    use crate::stats::{record_us, Interval};

    fn second(t: f64, delivered: u64) -> Second {
        Second {
            t,
            len: 1.0,
            sent: delivered / 10,
            delivered,
            errors: 0,
            lost: 0,
            open: 10,
            delivery: None,
            lag_p99: None,
        }
    }

    fn outcome() -> Outcome {
        let mut totals = Interval {
            sent: 60,
            delivered: 600,
            ..Interval::default()
        };
        totals.errors.add("rate_limited", 2);
        record_us(&mut totals.delivery, 1500);
        Outcome {
            totals,
            // Ramp until 2 s, steady 2..5 s at 150/s, then the drain.
            seconds: vec![
                second(1.0, 10),
                second(2.0, 40),
                second(3.0, 150),
                second(4.0, 150),
                second(5.0, 150),
                second(6.0, 100),
            ],
            started: 10,
            ramp_secs: 2.0,
            duration_secs: 5.0,
            held: 10,
            elapsed_secs: 6.2,
        }
    }

    #[test]
    fn rates_average_over_the_steady_seconds() {
        let o = outcome();
        let s = Summary::new("classroom", "ws://x", 10, json!({}), &o, None);
        assert_eq!(s.steady_secs, 3.0);
        assert_eq!(s.delivered_per_sec, 150.0);
        assert_eq!(s.sent_per_sec, 15.0);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let o = outcome();
        let v = Summary::new("classroom", "ws://x", 10, json!({"rate": 1}), &o, Some(10)).to_json();
        for key in [
            "scenario",
            "clients",
            "sent",
            "delivered",
            "delivered_per_sec",
            "errors",
            "lost",
            "out_of_order",
            "connect_failures",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["latency_us"]["p50"], 1500);
        assert!(v["send_lag_us"]["p99"].is_null());
        assert_eq!(v["errors"]["rate_limited"], 2);
        assert_eq!(v["timeline"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn table_mentions_errors_and_latency() {
        let o = outcome();
        let table = Summary::new("classroom", "ws://x", 10, json!({}), &o, None).table();
        assert!(table.contains("rate_limited=2"));
        assert!(table.contains("1.5ms"));
    }
}
