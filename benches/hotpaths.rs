//! Micro-benchmarks of hubbub's per-message hot paths, through the library's
//! public API only.
//!
//! One chat message costs, in order: decoding the client's masked WebSocket
//! frame, parsing its JSON, sanitising the content, building the broadcast
//! JSON, framing it once, appending it to history in a group-commit batch,
//! and pushing the same `Bytes` onto every recipient's outbox. Each group
//! below times one of those steps:
//!
//! - `ws_decode`:  client frame -> `Message` (unmask + UTF-8 check)
//! - `parse`:      client JSON -> request, simd-json (what the server runs)
//!                 against serde_json on the same field set
//! - `sanitize`:   content cleaning under the default `escape` policy
//! - `rate_limit`: the per-message limiter check, and building a governor
//!                 clock (which `Chat::rate_limit` does for every request)
//! - `posted`:     the broadcast/stored JSON of a message
//! - `ws_encode`:  one server frame (header + payload copy) by payload size
//! - `fanout`:     one broadcast pushed to N local outboxes (writers parked)
//! - `history_append`: one redb batch commit (fsync included) by batch size
//!
//! Run (about two minutes in all):
//!
//! ```sh
//! CARGO_TARGET_DIR=/tmp/target-bench cargo bench --bench hotpaths -- \
//!     --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `history_append` writes under the system temp dir unless
//! `HUBBUB_BENCH_DATA_DIR` names another directory (use the disk the server's
//! `--data-dir` will live on: the fsync dominates).

use std::borrow::Cow;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use serde::Deserialize;

use hubbub::auth::{Role, User};
use hubbub::config::ContentPolicy;
use hubbub::conn::outbox::Outbox;
use hubbub::protocol::{self, Posted};
use hubbub::store::{EmbeddedStore, HistoryStore, Record};
use hubbub::ws::{self, Decoder, Message, OpCode};

// ---- inputs ----------------------------------------------------------------

/// Content the way the load generator writes it: a timing mark, then filler
/// up to `len` bytes.
fn content(len: usize) -> String {
    let mut s = String::from("t=1767225600123456;c=u-0042;");
    let filler = b"the quick brown fox jumps over the lazy dog ";
    let mut i = 0;
    while s.len() < len {
        s.push(filler[i % filler.len()] as char);
        i += 1;
    }
    s.truncate(len);
    s
}

/// A `message` request as a client sends it.
fn message_request(content: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 80);
    out.extend_from_slice(
        br#"{"type":"message","id":"m-000123","room":"bench-class-07","content":"#,
    );
    protocol::push_str(&mut out, content);
    out.push(b'}');
    out
}

/// The request payloads `parse` is timed on: (name, JSON).
fn parse_inputs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("message_64B", message_request(&content(64))),
        ("message_1KiB", message_request(&content(1024))),
        // Quotes, a newline, a tab and non-ASCII: every string unescapes.
        (
            "message_escaped",
            message_request("he said \"hi\"\nand then\tleft — à bientôt, 😀 <b>bold</b> & more"),
        ),
        (
            "join",
            br#"{"type":"join","id":"j-1","room":"bench-class-07","since":1234}"#.to_vec(),
        ),
        (
            "typing",
            br#"{"type":"typing","room":"bench-class-07","state":true}"#.to_vec(),
        ),
    ]
}

fn user() -> User {
    User {
        id: Arc::from("u-0042-bench"),
        name: "Student 42".to_owned(),
        role: Role::Student,
        rooms: None,
    }
}

/// The broadcast JSON of one message with `len` bytes of content.
fn posted_json(seq: u64, len: usize) -> Vec<u8> {
    protocol::posted(
        &Posted::Room("bench-class-07"),
        seq,
        1_767_225_600_123,
        &user(),
        &content(len),
        Some("m-000123"),
    )
}

/// A masked client frame with the shortest length form.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | 0x1);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.push(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    ws::apply_mask(&mut out[start..], key, 0);
    out
}

// ---- ws_decode -------------------------------------------------------------

fn bench_ws_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_decode");
    for (name, json) in [
        ("message_64B", message_request(&content(64))),
        ("message_1KiB", message_request(&content(1024))),
    ] {
        let wire = masked_text_frame(&json);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        let mut decoder = Decoder::new(64 * 1024, 4096 + 1024);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| match decoder.decode(buf) {
                    Ok(Some(Message::Text(t))) => black_box(t),
                    other => panic!("unexpected decode result {other:?}"),
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

// ---- parse -----------------------------------------------------------------

/// The same fields the server's request struct has, for serde_json. `Cow`
/// so that strings without escapes are borrowed, as simd-json's are.
#[allow(dead_code)]
#[derive(Deserialize)]
struct SerdeRequest<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    with: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    since: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
    state: Option<bool>,
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, json) in parse_inputs() {
        g.throughput(Throughput::Bytes(json.len() as u64));
        // simd-json parses in place, so every iteration gets a fresh copy
        // (made outside the timing); serde_json gets the same treatment.
        let mut scratch = simd_json::Buffers::default();
        g.bench_with_input(BenchmarkId::new("simd_json", name), &json, |b, json| {
            b.iter_batched_ref(
                || json.clone(),
                |buf| {
                    let frame = protocol::parse(buf, &mut scratch).expect("valid request");
                    black_box(&frame);
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("serde_json", name), &json, |b, json| {
            b.iter_batched_ref(
                || json.clone(),
                |buf| {
                    let req: SerdeRequest<'_> = serde_json::from_slice(buf).expect("valid request");
                    black_box(&req);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

// ---- sanitize --------------------------------------------------------------

fn bench_sanitize(c: &mut Criterion) {
    let mut g = c.benchmark_group("sanitize");
    let inputs = [
        ("plain_64B", content(64)),
        ("plain_1KiB", content(1024)),
        (
            "markup",
            "<b>look</b> at this: a < b && c > d, \"quoted\" it's /here/\r\n".repeat(4),
        ),
    ];
    for (name, text) in inputs {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(BenchmarkId::new("escape", name), |b| {
            b.iter(|| {
                black_box(hubbub::content::sanitize(
                    black_box(&text),
                    ContentPolicy::Escape,
                    4096,
                ))
            })
        });
    }
    g.finish();
}

// ---- rate_limit ------------------------------------------------------------

fn bench_rate_limit(c: &mut Criterion) {
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;

    let mut g = c.benchmark_group("rate_limit");
    // A quota that never refuses, so every check takes the allow path.
    let limiter = RateLimiter::direct(Quota::per_second(NonZeroU32::MAX));
    g.bench_function("direct_check", |b| b.iter(|| black_box(limiter.check())));
    // What the server pays per request on top of the check: a new quanta
    // clock, whose construction probes the CPU (CPUID) every time.
    g.bench_function("new_default_clock", |b| {
        b.iter(|| black_box(governor::clock::DefaultClock::default()))
    });
    g.finish();
}

// ---- posted + ws_encode ----------------------------------------------------

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("posted");
    let u = user();
    for len in [64usize, 1024] {
        let text = content(len);
        g.bench_function(
            BenchmarkId::new("message_json", format!("{len}B_content")),
            |b| {
                let mut seq = 0u64;
                b.iter(|| {
                    seq += 1;
                    black_box(protocol::posted(
                        &Posted::Room("bench-class-07"),
                        seq,
                        1_767_225_600_123,
                        &u,
                        black_box(&text),
                        Some("m-000123"),
                    ))
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("ws_encode");
    // 125 and below: 2-byte header; up to 64 KiB: 4 bytes; above: 10 bytes.
    let sizes = [
        ("64B", 64usize),
        ("posted_64B", posted_json(1, 64).len()),
        ("4KiB", 4096),
        ("70KiB", 70 * 1024),
    ];
    for (name, size) in sizes {
        let payload = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(ws::encode(OpCode::Text, black_box(&payload))))
        });
    }
    g.finish();
}

// ---- fanout ----------------------------------------------------------------

/// Park a "writer" on every outbox: after this, the next push to each one
/// wakes it, as in the server, where every idle connection's writer task
/// waits on its outbox.
fn drain_and_park(outboxes: &[Rc<Outbox>], sink: &mut Vec<Bytes>) {
    for ob in outboxes {
        // Takes what is queued (ready at once), then polls again on the
        // empty queue, which stores the (no-op) waker and stays pending.
        let _ = ob.take(sink).now_or_never();
        assert!(
            ob.take(sink).now_or_never().is_none(),
            "outbox should be empty"
        );
        sink.clear();
    }
}

fn bench_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let frame = ws::encode(OpCode::Text, &posted_json(1, 64));
    for n in [31usize, 300, 3000] {
        // Outbound cap as the server's default order of magnitude; the
        // queues are drained after every broadcast, so it is never reached.
        let outboxes: Vec<Rc<Outbox>> = (0..n).map(|_| Rc::new(Outbox::new(4 << 20))).collect();
        let mut sink = Vec::new();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("push_to_outboxes", n), |b| {
            // Only the pushes are timed; draining and re-parking the writers
            // between broadcasts is not.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    drain_and_park(&outboxes, &mut sink);
                    let start = Instant::now();
                    for ob in &outboxes {
                        black_box(ob.push(frame.clone()));
                    }
                    total += start.elapsed();
                }
                drain_and_park(&outboxes, &mut sink);
                total
            })
        });
    }
    g.finish();
}

// ---- history_append ----------------------------------------------------------

fn bench_history(c: &mut Criterion) {
    let base = std::env::var_os("HUBBUB_BENCH_DATA_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .expect("temp dir for the bench store");
    let store = EmbeddedStore::open(dir.path()).expect("open redb store");

    // 20 rooms, as in a classroom run of 600 clients; seqs keep growing over
    // the whole bench so every append is a fresh key, as in the server.
    let rooms: Vec<Arc<str>> = (0..20)
        .map(|i| Arc::from(format!("bench-class-{i:02}").as_str()))
        .collect();
    let json = Bytes::from(posted_json(1, 64));
    let mut seqs = vec![0u64; rooms.len()];
    let mut next_batch = |n: usize| -> Vec<Record> {
        (0..n)
            .map(|i| {
                let r = i % rooms.len();
                seqs[r] += 1;
                Record {
                    room: rooms[r].clone(),
                    seq: seqs[r],
                    json: json.clone(),
                }
            })
            .collect()
    };

    let mut g = c.benchmark_group("history_append");
    for n in [1usize, 16, 128, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("redb_commit", n), |b| {
            b.iter_batched(
                || next_batch(n),
                |batch| store.append(&batch).expect("append"),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_ws_decode,
    bench_parse,
    bench_sanitize,
    bench_rate_limit,
    bench_encode,
    bench_fanout,
    bench_history
);
criterion_main!(benches);
