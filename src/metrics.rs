//! Prometheus metrics (`GET /metrics`), with the `prometheus` crate.
//!
//! One process-wide set, created on first use. Counters touched on the hot
//! path are per shard (a `shard` label), so cores do not contend on one
//! atomic, and deliveries are counted once per fan-out message rather than
//! once per recipient.

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub rooms: IntGaugeVec,
    pub joins: IntCounterVec,
    pub messages_in: IntCounterVec,
    pub messages_out: IntCounterVec,
    pub fanout_seconds: HistogramVec,
    pub ack_seconds: Histogram,
    pub history_queue: IntGauge,
    pub history_batch: Histogram,
    pub backend_errors: IntCounterVec,
    pub refused: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub slow_consumers: IntCounterVec,
}

/// The handles one shard uses on its hot path.
pub struct ShardMetrics {
    pub connections: IntGauge,
    pub rooms: IntGauge,
    pub joins: IntCounter,
    pub messages_in: IntCounter,
    pub messages_out: IntCounter,
    pub fanout_seconds: Histogram,
    pub slow_consumers: IntCounter,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// Latency buckets from 20 µs to about 10 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.000_02, 2.5, 15).expect("valid buckets")
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            connections: gauge(
                "hubbub_connections",
                "Open WebSocket connections.",
                &["shard"],
            ),
            rooms: gauge(
                "hubbub_rooms",
                "Rooms owned and loaded in memory.",
                &["shard"],
            ),
            joins: counter(
                "hubbub_joins_total",
                "Joins handled by the room owner.",
                &["shard"],
            ),
            messages_in: counter(
                "hubbub_messages_in_total",
                "Chat messages and DMs accepted from clients.",
                &["shard"],
            ),
            messages_out: counter(
                "hubbub_messages_out_total",
                "Frames queued to client connections by fan-out.",
                &["shard"],
            ),
            fanout_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "hubbub_fanout_seconds",
                    "From the owner's fan-out to the frame queued on each shard.",
                )
                .buckets(latency_buckets()),
                &["shard"],
            )
            .expect("valid metric"),
            ack_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "hubbub_ack_seconds",
                    "From a message reaching its room's owner to its commit (the ack).",
                )
                .buckets(latency_buckets()),
            )
            .expect("valid metric"),
            history_queue: IntGauge::new(
                "hubbub_history_queue",
                "Messages waiting for the history store.",
            )
            .expect("valid metric"),
            history_batch: Histogram::with_opts(
                HistogramOpts::new("hubbub_history_batch_size", "Messages per history commit.")
                    .buckets(exponential_buckets(1.0, 2.0, 12).expect("valid buckets")),
            )
            .expect("valid metric"),
            backend_errors: counter(
                "hubbub_backend_errors_total",
                "Failed operations against a backend.",
                &["backend"],
            ),
            refused: counter(
                "hubbub_refused_connections_total",
                "Connections refused at the upgrade, by reason.",
                &["reason"],
            ),
            rate_limited: counter(
                "hubbub_rate_limited_total",
                "Requests refused by a rate limit, by limit.",
                &["limit"],
            ),
            slow_consumers: counter(
                "hubbub_slow_consumers_total",
                "Connections closed for falling behind (1013).",
                &["shard"],
            ),
        };
        for c in [
            Box::new(m.connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.rooms.clone()),
            Box::new(m.joins.clone()),
            Box::new(m.messages_in.clone()),
            Box::new(m.messages_out.clone()),
            Box::new(m.fanout_seconds.clone()),
            Box::new(m.ack_seconds.clone()),
            Box::new(m.history_queue.clone()),
            Box::new(m.history_batch.clone()),
            Box::new(m.backend_errors.clone()),
            Box::new(m.refused.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.slow_consumers.clone()),
        ] {
            m.registry.register(c).expect("unique metric names");
        }
        m
    }

    pub fn shard(&self, shard: usize) -> ShardMetrics {
        let label = shard.to_string();
        let l = [label.as_str()];
        ShardMetrics {
            connections: self.connections.with_label_values(&l),
            rooms: self.rooms.with_label_values(&l),
            joins: self.joins.with_label_values(&l),
            messages_in: self.messages_in.with_label_values(&l),
            messages_out: self.messages_out.with_label_values(&l),
            fanout_seconds: self.fanout_seconds.with_label_values(&l),
            slow_consumers: self.slow_consumers.with_label_values(&l),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
