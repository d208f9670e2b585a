//! Cluster mode: several hubbub nodes share rooms, DMs and presence through
//! one Redis server (`--redis-url`).
//!
//! What goes through Redis, and why:
//! - **seq reservation.** A room's owner shard reserves seqs from a per-room
//!   counter with a Lua script (`max(counter, floor) + n`, one call per batch
//!   of messages waiting in that room, pipelined across rooms), so every node
//!   draws from one order.
//! - **fan-out after commit.** The node that accepted a message stores it,
//!   acks it, and only then publishes it on the room's channel (a DM: on both
//!   users' channels). Publishing at reservation time, as an engine whose
//!   history lives in Redis can do atomically, would let other nodes show a
//!   message that a crash before the commit then loses; hubbub keeps its rule
//!   that anything seen or acked is in the history.
//! - **ordering on receipt.** Reservation and publication are therefore two
//!   steps, and two nodes can publish seqs out of order. Each node's owner
//!   shard puts a room's messages back in seq order (see `shard::room`): it
//!   holds a message whose predecessor is missing for `--cluster-gap-wait`,
//!   then reads the gap from the shared history store, and skips seqs that
//!   are in neither (reserved by a node that died, or refused by the store;
//!   a refused seq is announced at once so nobody waits for it).
//! - **presence.** Per-room member hashes and per-node membership sets, kept
//!   by Lua scripts that publish join and leave events when a user's first
//!   node joins or last node leaves. Each node refreshes a heartbeat key; a
//!   node whose key expired is reaped by the others, who publish its users'
//!   leaves.
//!
//! The Redis side (the `link`) runs on the tokio side runtime and a thread
//! of its own; shards reach it through a bounded crossbeam queue and hear
//! back through their inboxes. It supervises the connection itself: after an
//! outage it resubscribes every channel it holds, makes Redis's presence
//! agree with this node's own (joins or leaves lost in the outage included),
//! publishes again the messages it could not publish, and asks every shard
//! to fill gaps from the history store and re-read the member lists. A node
//! that finds itself reaped while alive (stalled past `--node-ttl`) does the
//! same.
//!
//! # Limits
//!
//! - One Redis server at one address (a managed primary whose failover keeps
//!   the address works); no Sentinel discovery, no TLS (`rediss://`), and no
//!   Redis Cluster, since the scripts touch keys of several rooms.
//! - A Redis that restarts **without its data** loses the seq counters. A
//!   lost counter resumes 10,000 above the highest seq the reserving node
//!   knows, so that seqs other nodes reserved before the restart and have
//!   not stored yet are not handed out again; clients see a jump in `seq`.
//!   More than 10,000 messages of one room in flight at that moment would
//!   collide (the unique `(room, seq)` index keeps the first). Run Redis
//!   with persistence (`appendonly yes`, as `docker-compose.yml` does).
//! - Resend detection (`id`) is per node: a client that resends through
//!   another node before the room reloads there may store the message twice,
//!   under two seqs.

pub mod link;
mod scripts;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::auth::User;

/// Commands queued before the shards see `unavailable` for reservations.
const QUEUE: usize = 65_536;

/// The shards' handle on the cluster link.
pub struct Cluster {
    /// This node's id in Redis (presence, heartbeats).
    pub node: Arc<str>,
    pub status: Arc<Status>,
    pub gap_wait: Duration,
    cmds: Sender<Cmd>,
}

/// Shown by `/health`; `up` also gates `/ready`.
#[derive(Default)]
pub struct Status {
    pub up: AtomicBool,
    pub reconnects: AtomicU64,
    /// Channels subscribed (rooms with local members, users with local
    /// connections).
    pub subscriptions: AtomicU64,
    pub published: AtomicU64,
    pub received: AtomicU64,
    /// Seqs skipped by receivers because no node stored them.
    pub skipped: AtomicU64,
    /// Gaps filled from the history store.
    pub gap_fills: AtomicU64,
    /// Messages answered `unavailable` because Redis gave them no seq.
    pub refused: AtomicU64,
    /// Set when the node stops: the supervisor stops heartbeating.
    pub stopping: AtomicBool,
}

/// A channel a node listens on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A room's messages and presence events.
    Room(Arc<str>),
    /// A user's DMs.
    User(Arc<str>),
}

/// What shards ask of the link.
pub enum Cmd {
    /// Reserve `count` seqs of `room`, at least `floor + 1`; the answer goes
    /// to `owner` as [`crate::shard::ShardMsg::Reserved`].
    Reserve {
        room: Arc<str>,
        count: u32,
        floor: u64,
        owner: usize,
    },
    /// A committed message (or a skipped seq) for the other nodes.
    Publish {
        topics: Vec<Topic>,
        payload: Bytes,
    },
    /// Count one more (or one fewer) local interest in a topic; the link
    /// subscribes on the first and unsubscribes after the last. A room's
    /// owner hears [`Remote::Subscribed`] once the subscription is active.
    Subscribe(Topic, usize),
    Unsubscribe(Topic),
    /// A user's first connection on this node joined `room`.
    PresenceJoin {
        room: Arc<str>,
        user: Arc<User>,
    },
    /// A user's last connection on this node left `room`.
    PresenceLeave {
        room: Arc<str>,
        user: Arc<User>,
    },
    /// Read the cluster's member list of `room`; answered to `owner` as
    /// [`Remote::Members`], with `full` passed on.
    Members {
        room: Arc<str>,
        owner: usize,
        full: bool,
        asked: std::time::Instant,
    },
}

/// What the link tells a room's owner shard.
pub enum Remote {
    /// A message committed by some node (this one included).
    Message {
        room: Arc<str>,
        seq: u64,
        json: Bytes,
    },
    /// A seq that no node will store.
    Skip { room: Arc<str>, seq: u64 },
    /// Someone is typing (not for `user`'s own connections).
    Typing {
        room: Arc<str>,
        user: Arc<str>,
        json: Bytes,
    },
    /// Someone is typing to `to` (a DM); goes to `to`'s connections here.
    UserTyping { to: Arc<str>, json: Bytes },
    /// A user's first node joined, or last node left, the room.
    Presence {
        room: Arc<str>,
        user: Arc<User>,
        online: bool,
    },
    /// The cluster's member list of a room. Only `full` lists (after an
    /// outage) remove members: a list read as a room is subscribed can be
    /// older than a join event that overtook it.
    Members {
        room: Arc<str>,
        users: Vec<Arc<User>>,
        full: bool,
        /// When it was asked for: events since then are newer than it.
        asked: std::time::Instant,
    },
    /// The room's channel is subscribed: fill what was missed meanwhile.
    Subscribed { room: Arc<str> },
}

impl Remote {
    pub fn room(&self) -> &Arc<str> {
        match self {
            Remote::Message { room, .. }
            | Remote::Skip { room, .. }
            | Remote::Typing { room, .. }
            | Remote::UserTyping { to: room, .. }
            | Remote::Presence { room, .. }
            | Remote::Members { room, .. }
            | Remote::Subscribed { room } => room,
        }
    }
}

impl Cluster {
    /// A handle and the queue the link will drain.
    pub fn new(node: Arc<str>, gap_wait: Duration) -> (Cluster, Receiver<Cmd>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let cluster = Cluster {
            node,
            status: Arc::new(Status::default()),
            gap_wait,
            cmds: tx,
        };
        (cluster, rx)
    }

    /// Queue a command without blocking. False when the queue is full or the
    /// link is gone; what that means depends on the command (a reservation
    /// is refused, a publish is left to the receivers' gap filling).
    pub fn send(&self, cmd: Cmd) -> bool {
        match self.cmds.try_send(cmd) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::debug!("cluster queue full");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    pub fn up(&self) -> bool {
        self.status.up.load(Ordering::Relaxed)
    }
}

/// A node id that differs between restarts of the same host: the old id's
/// presence entries expire with its heartbeat instead of being taken over.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{:08x}", std::process::id(), nanos)
}
