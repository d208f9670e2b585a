//! A shard is everything one worker core owns: its connections, the local
//! membership of rooms, and the rooms that hash to it.
//!
//! Ownership (see also `docs/architecture.md`):
//! - a **connection** lives on the shard that accepted it, for its whole life;
//! - a **room** (and a DM pair room) is owned by the shard `hash(room) % N`.
//!   The owner assigns `seq`, keeps the member list and the recent messages,
//!   queues history writes, and fans committed messages out to every shard
//!   that has members of the room;
//! - shards talk only through [`ShardMsg`]s on their [`inbox`]es, never by
//!   sharing state, so all state here is single-threaded (`RefCell`).

mod cluster;
pub mod inbox;
mod local;
mod room;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::auth::{User, Verifier};
use crate::config::Config;
use crate::conn::outbox::Outbox;
use crate::protocol::ClientError;
use crate::store::writer::{Report, WriterHandle};
use crate::store::HistoryStore;

pub use inbox::{Inbox, Mailbox};
use room::Slot;

/// A connection's address: the shard it lives on and its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub shard: u16,
    pub local: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.shard, self.local)
    }
}

/// Where the answer to a request goes.
pub enum ReplyTo {
    /// A WebSocket connection, repeating the request's `id`.
    Conn { conn: ConnId, id: Option<Box<str>> },
    /// An HTTP request waiting on its shard: gets the JSON body or an error.
    Http(futures_channel::oneshot::Sender<Result<Vec<u8>, ClientError>>),
    /// Nobody (already answered).
    Nobody,
}

impl ReplyTo {
    /// The request id to repeat in the answer.
    pub fn id(&self) -> Option<&str> {
        match self {
            ReplyTo::Conn { id, .. } => id.as_deref(),
            _ => None,
        }
    }

    /// Move the reply target out, leaving `Nobody`.
    pub fn take(&mut self) -> ReplyTo {
        std::mem::replace(self, ReplyTo::Nobody)
    }
}

pub struct JoinReq {
    pub room: Arc<str>,
    pub conn: ConnId,
    pub user: Arc<User>,
    pub since: Option<u64>,
    pub id: Option<Box<str>>,
}

pub struct PublishReq {
    pub room: Arc<str>,
    /// For a DM: the recipient's user id.
    pub to: Option<Arc<str>>,
    pub user: Arc<User>,
    /// The sending connection; None for the admin API.
    pub origin: Option<ConnId>,
    /// The client's request id, kept in the frame and used to spot resends.
    pub id: Option<Box<str>>,
    pub content: String,
    /// Where the ack goes.
    pub reply: ReplyTo,
}

pub struct HistoryReq {
    pub room: Arc<str>,
    /// For a DM history: the other user, echoed in the answer as `with`.
    pub with: Option<Box<str>>,
    pub before: Option<u64>,
    pub limit: usize,
    pub reply: ReplyTo,
}

/// Everything shards say to each other.
pub enum ShardMsg {
    // ---- to a room's owner
    Join(Box<JoinReq>),
    /// `quiet`: the connection closed, so nobody waits for an answer.
    Leave {
        room: Arc<str>,
        conn: ConnId,
        user: Arc<User>,
    },
    Publish(Box<PublishReq>),
    Typing {
        room: Arc<str>,
        user: Arc<str>,
        frame: Bytes,
    },
    History(Box<HistoryReq>),
    Presence {
        room: Arc<str>,
        reply: ReplyTo,
    },
    /// Outcomes of history writes, from the writer thread.
    Stored(Vec<Report>),

    // ---- to the shard of a connection
    /// A room frame for every local member, except those of `skip_user`.
    /// `at` is when the owner sent it, for the fan-out latency metric.
    Deliver {
        room: Arc<str>,
        frame: Bytes,
        skip_user: Option<Arc<str>>,
        at: std::time::Instant,
    },
    /// A frame for every local connection of these users (DMs), except
    /// `skip` (the sending connection).
    DeliverUsers {
        users: Vec<Arc<str>>,
        frame: Bytes,
        skip: Option<ConnId>,
    },
    /// One frame for one connection (acks, errors, history pages).
    ToConn {
        conn: u32,
        frame: Bytes,
    },
    /// The owner accepted a join: send the ack, then the backlog, and start
    /// delivering the room's live messages.
    Joined {
        conn: u32,
        room: Arc<str>,
        ack: Bytes,
        backlog: Vec<Bytes>,
    },

    /// Close every local connection of a user (admin API), with 4001.
    Disconnect {
        user: Arc<str>,
    },
    /// Room facts for the admin API, from the owner.
    RoomInfo {
        room: Arc<str>,
        reply: ReplyTo,
    },

    // ---- cluster mode (`crate::cluster`)
    /// Seqs reserved in Redis for a room's waiting messages, from `first`;
    /// None when Redis did not answer.
    Reserved {
        room: Arc<str>,
        first: Option<u64>,
        count: u32,
    },
    /// Something another node (or this one) published through Redis.
    Remote(Box<crate::cluster::Remote>),
    /// Redis is back after an outage: fill gaps from the history store,
    /// re-register presence and re-read member lists.
    Resync,

    // ---- lifecycle
    /// Stop accepting, close every connection with 1001, then stop.
    Shutdown,
}

/// Process-wide counters, shown by `/health`.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub slow_consumers: AtomicU64,
}

/// What every shard shares, built once at start.
pub struct Shared {
    pub config: Config,
    pub admission: Arc<crate::admission::Admission>,
    pub verifier: Verifier,
    pub store: Arc<dyn HistoryStore>,
    pub writer: WriterHandle,
    pub mailboxes: Vec<Mailbox<ShardMsg>>,
    /// Cluster mode: the link to Redis.
    pub cluster: Option<crate::cluster::Cluster>,
    pub stats: Stats,
    /// "io_uring" or "epoll", set by the first shard that starts.
    pub driver: OnceLock<&'static str>,
    pub shutting_down: AtomicBool,
    /// Hashes room ids to owners; fixed seed so every shard agrees.
    hasher: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
}

impl Shared {
    pub fn new(
        config: Config,
        verifier: Verifier,
        store: Arc<dyn HistoryStore>,
        writer: WriterHandle,
        mailboxes: Vec<Mailbox<ShardMsg>>,
        cluster: Option<crate::cluster::Cluster>,
    ) -> Shared {
        Shared {
            cluster,
            admission: Arc::new(crate::admission::Admission::new(&config.limits)),
            config,
            verifier,
            store,
            writer,
            mailboxes,
            stats: Stats::default(),
            driver: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            hasher: Default::default(),
        }
    }

    /// The shard that owns `room`.
    pub fn owner(&self, room: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write(room.as_bytes());
        (h.finish() % self.mailboxes.len() as u64) as usize
    }

    pub fn send(&self, shard: usize, msg: ShardMsg) {
        self.mailboxes[shard].send(msg);
    }

    /// Ready to take messages: not shutting down, the store is healthy, and
    /// in cluster mode Redis answers.
    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed) && self.store_ok() && self.cluster_ok()
    }

    /// Standalone, or connected to Redis.
    pub fn cluster_ok(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.up())
    }

    /// The history store answers and the last write went through.
    pub fn store_ok(&self) -> bool {
        self.writer.status.healthy.load(Ordering::Relaxed) && self.store.reachable()
    }
}

/// A connection as its shard sees it.
pub struct LocalConn {
    pub user: Arc<User>,
    pub outbox: Rc<Outbox>,
    /// Rooms joined, or asked to join and not yet answered.
    pub rooms: HashSet<Arc<str>>,
}

/// One core's state. Lives in an `Rc` on its own thread.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    next_conn: Cell<u32>,
    conns: RefCell<HashMap<u32, LocalConn>>,
    /// Local connections in each room (those whose join was answered).
    members: RefCell<HashMap<Arc<str>, Vec<u32>>>,
    /// Local connections of each user.
    users: RefCell<HashMap<Arc<str>, Vec<u32>>>,
    /// Rooms this shard owns that are in memory.
    rooms: RefCell<HashMap<Arc<str>, Slot>>,
    /// Cluster mode: rooms whose frames wait behind a missing seq, for which
    /// a gap check is to be scheduled (see `cluster::note_gap`).
    gaps_due: RefCell<Vec<Arc<str>>>,
    /// Set once shutdown begins, so that the accept loop stops.
    pub stopping: Cell<bool>,
    /// Parse scratch for simd-json, reused by every frame on this core.
    pub json_scratch: RefCell<simd_json::Buffers>,
    /// Refused upgrades since the last log line, and when that line was.
    refused: Cell<(u64, Option<std::time::Instant>)>,
    /// The accept loop's waker, woken when shutdown begins.
    stop_waker: RefCell<Option<std::task::Waker>>,
    /// This shard's metric handles.
    pub metrics: crate::metrics::ShardMetrics,
}

/// How long an owned room with no members and nothing in flight stays in
/// memory; it is reloaded from the store on next use.
const ROOM_IDLE: Duration = Duration::from_secs(300);

/// Most inbox messages handled per wake before yielding to connection tasks,
/// so that a burst of cross-shard traffic cannot starve local sockets.
const INBOX_BATCH: usize = 256;

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Shard {
        Shard {
            id,
            shared,
            next_conn: Cell::new(1),
            conns: RefCell::default(),
            members: RefCell::default(),
            users: RefCell::default(),
            rooms: RefCell::default(),
            gaps_due: RefCell::default(),
            stopping: Cell::new(false),
            json_scratch: RefCell::new(simd_json::Buffers::default()),
            refused: Cell::new((0, None)),
            stop_waker: RefCell::new(None),
            metrics: crate::metrics::get().shard(id),
        }
    }

    /// Count a refused connection; log at most one line per 10 s per shard,
    /// so that a burst of bad tokens or a flood cannot flood the log.
    pub fn note_refused(&self, why: crate::admission::Refusal, detail: &'static str) {
        self.shared.admission.count(why);
        let (count, last) = self.refused.get();
        let now = std::time::Instant::now();
        if last.is_none_or(|t| now - t >= Duration::from_secs(10)) {
            let reason = why.label();
            tracing::info!(
                shard = self.id,
                refused = count + 1,
                reason,
                detail,
                "refusing connections"
            );
            self.refused.set((0, Some(now)));
        } else {
            self.refused.set((count + 1, last));
        }
    }

    pub fn conn_id(&self, local: u32) -> ConnId {
        ConnId {
            shard: self.id as u16,
            local,
        }
    }

    /// Number of connections on this shard.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Run the inbox until shutdown. Returns when asked to stop.
    pub async fn dispatch(self: Rc<Self>, inbox: Inbox<ShardMsg>) {
        let mut batch = Vec::with_capacity(INBOX_BATCH);
        let mut last_sweep = std::time::Instant::now();
        loop {
            if !inbox.recv_batch(&mut batch, INBOX_BATCH).await {
                return;
            }
            for msg in batch.drain(..) {
                if let ShardMsg::Shutdown = msg {
                    self.begin_shutdown();
                    continue;
                }
                self.handle(msg);
            }
            self.schedule_due_gaps();
            self.metrics.rooms.set(self.rooms.borrow().len() as i64);
            if last_sweep.elapsed() > Duration::from_secs(30) {
                self.sweep_rooms();
                if self.id == 0 {
                    self.shared.admission.sweep();
                }
                last_sweep = std::time::Instant::now();
            }
            // Let connection tasks run between batches.
            yield_now().await;
        }
    }

    fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            // Requests for rooms this shard owns.
            ShardMsg::Join(ref req) => self.to_room(req.room.clone(), msg),
            ShardMsg::Leave { ref room, .. } => self.to_room(room.clone(), msg),
            ShardMsg::Publish(ref req) => self.to_room(req.room.clone(), msg),
            ShardMsg::Typing { ref room, .. } => self.to_room(room.clone(), msg),
            ShardMsg::History(ref req) => self.to_room(req.room.clone(), msg),
            ShardMsg::Presence { ref room, .. } => self.to_room(room.clone(), msg),
            ShardMsg::RoomInfo { ref room, .. } => self.to_room(room.clone(), msg),
            ShardMsg::Disconnect { user } => self.disconnect_user(&user),
            ShardMsg::Stored(reports) => self.on_stored(reports),
            ShardMsg::Reserved { room, first, count } => self.on_reserved(&room, first, count),
            ShardMsg::Remote(ref remote) => self.to_room(remote.room().clone(), msg),
            ShardMsg::Resync => self.resync(),

            // Frames for connections on this shard.
            ShardMsg::Deliver {
                room,
                frame,
                skip_user,
                at,
            } => {
                self.deliver_room(&room, &frame, skip_user.as_deref());
                self.metrics
                    .fanout_seconds
                    .observe(at.elapsed().as_secs_f64());
            }
            ShardMsg::DeliverUsers { users, frame, skip } => {
                self.deliver_users(&users, &frame, skip)
            }
            ShardMsg::ToConn { conn, frame } => self.deliver_conn(conn, frame),
            ShardMsg::Joined {
                conn,
                room,
                ack,
                backlog,
            } => self.on_joined(conn, room, ack, backlog),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    /// Answer a request, wherever it came from.
    fn reply(&self, to: ReplyTo, result: Result<Vec<u8>, ClientError>) {
        match to {
            ReplyTo::Conn { conn, id } => {
                let json = match result {
                    Ok(json) => json,
                    Err(err) => crate::protocol::error(id.as_deref(), &err),
                };
                let frame = crate::ws::encode(crate::ws::OpCode::Text, &json);
                self.shared.send(
                    conn.shard as usize,
                    ShardMsg::ToConn {
                        conn: conn.local,
                        frame,
                    },
                );
            }
            ReplyTo::Http(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Nobody => {}
        }
    }

    fn begin_shutdown(&self) {
        self.stopping.set(true);
        if let Some(w) = self.stop_waker.borrow_mut().take() {
            w.wake();
        }
        for conn in self.conns.borrow().values() {
            conn.outbox.close(1001, "server shutting down");
        }
    }

    /// Ping connections that went quiet, and drop those that do not answer
    /// (half-open TCP: a peer that vanished without a FIN). Runs until
    /// shutdown.
    pub async fn keepalive(self: Rc<Self>) {
        let interval = self.shared.config.ping_interval;
        let timeout = self.shared.config.pong_timeout;
        // Check often enough to honour short settings, at most once a second.
        let tick =
            (interval.min(timeout) / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let ping = crate::ws::encode(crate::ws::OpCode::Ping, b"");
        while !self.stopping.get() {
            monoio::time::sleep(tick).await;
            for conn in self.conns.borrow().values() {
                match conn.outbox.idle_check(interval, timeout) {
                    crate::conn::outbox::Idle::Fine => {}
                    crate::conn::outbox::Idle::Ping => conn.outbox.push_control(ping.clone()),
                    crate::conn::outbox::Idle::Dead => {
                        tracing::debug!(user = %conn.user.id, shard = self.id, "ping timeout");
                        conn.outbox.close(1001, "ping timeout");
                    }
                }
            }
        }
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        std::future::poll_fn(|cx| {
            if self.stopping.get() {
                return std::task::Poll::Ready(());
            }
            *self.stop_waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

/// Give other tasks on this core a turn (monoio 0.2 has no `yield_now`).
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The JSON payload of a server frame we encoded: the bytes after the
/// WebSocket header (2, 4 or 10 bytes, depending on the 7-bit length field).
pub fn frame_payload(frame: &Bytes) -> Bytes {
    let header = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.slice(header..)
}
