//! The owner side of a room: seq assignment, members and presence, recent
//! messages, resend de-duplication, and fan-out after commit.
//!
//! Every function here runs on the room's owner shard.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;

use super::cluster::Clustered;
use super::ShardMsg;
use super::{frame_payload, now_ms, ConnId, HistoryReq, JoinReq, PublishReq, ReplyTo, Shard};
use crate::auth::User;
use crate::protocol::{self, ClientError, Code, Posted, Target};
use crate::store::writer::{Outcome, Pending, Report};
use crate::store::{ReadFuture, Record, Rows, StoreError};
use crate::ws::{encode, OpCode};

/// How long a resent `message` or `dm` id is recognised (PROTOCOL.md).
const DEDUPE_WINDOW: Duration = Duration::from_secs(600);

/// An owned room's place in memory: being read from the store (with the
/// requests that arrived meanwhile, replayed in order once it is loaded), or
/// ready.
pub(super) enum Slot {
    Loading(Vec<ShardMsg>),
    Ready(Box<Room>),
}

/// A room (or DM pair) owned by this shard.
pub(super) struct Room {
    /// For a DM pair room, the two users; their connections get its frames.
    pub(super) dm: Option<[Arc<str>; 2]>,
    /// The seq the next message gets.
    pub(super) next_seq: u64,
    /// The last seq known committed (what a join reports as `last_seq`).
    pub(super) last_seq: u64,
    /// Bumped when the counter is rewound after a failed write, so that
    /// outcomes of writes from before the rewind are recognised as stale.
    pub(super) epoch: u32,
    /// The newest committed frames, oldest first.
    pub(super) recent: VecDeque<(u64, Bytes)>,
    /// Member connections per shard: fan-out goes to shards with a count.
    pub(super) shards: Vec<u32>,
    pub(super) members: HashMap<Arc<str>, Member>,
    /// Messages waiting for their commit, by (epoch, seq).
    pub(super) inflight: HashMap<(u32, u64), InFlight>,
    /// Resend detection: (user, request id) → what happened to it.
    pub(super) seen: HashMap<(Arc<str>, Box<str>), Seen>,
    /// Expiry order of `seen`.
    pub(super) seen_order: VecDeque<(Instant, (Arc<str>, Box<str>))>,
    /// Joins waiting for a store read of their backlog; a leave meanwhile
    /// removes the entry, and the join then completes without membership.
    pub(super) pending_joins: HashSet<ConnId>,
    /// When the room last had members or traffic.
    pub(super) touched: Instant,
    /// Cluster mode: reservations, ordering and the cluster's members.
    pub(super) cluster: Option<Box<Clustered>>,
}

pub(super) struct Member {
    pub(super) user: Arc<User>,
    pub(super) conns: Vec<ConnId>,
}

pub(super) struct InFlight {
    pub(super) frame: Bytes,
    pub(super) ts: u64,
    /// When the owner accepted it, for the ack latency metric.
    pub(super) accepted: Instant,
    /// The sending connection (none for the admin API): a DM is not echoed
    /// to it.
    pub(super) origin: Option<ConnId>,
    /// Who waits for the ack: the sender, and any resend of the same id.
    pub(super) waiters: Vec<ReplyTo>,
    pub(super) seen_key: Option<(Arc<str>, Box<str>)>,
}

pub(super) enum Seen {
    /// Cluster mode: waiting for its seq from Redis.
    Reserving,
    InFlight(u32, u64),
    Done {
        seq: u64,
        ts: u64,
    },
}

impl Room {
    /// Build a room from its newest stored messages (newest first).
    fn from_store(id: &str, mut page: Rows, shards: usize, clustered: bool) -> Room {
        let last_seq = page.first().map_or(0, |(seq, _)| *seq);
        page.reverse();

        // Rebuild resend detection from recent messages, so that a client
        // resending across a server restart still gets its original ack.
        let mut seen = HashMap::new();
        let mut seen_order = VecDeque::new();
        let horizon = now_ms().saturating_sub(DEDUPE_WINDOW.as_millis() as u64);
        for (seq, json) in &page {
            if let Some((user, req_id, ts)) = resend_key(json) {
                if ts >= horizon {
                    let key: (Arc<str>, Box<str>) = (user.into(), req_id.into());
                    seen_order.push_back((Instant::now(), key.clone()));
                    seen.insert(key, Seen::Done { seq: *seq, ts });
                }
            }
        }

        let dm = crate::auth::dm_pair(id).map(|(a, b)| [Arc::from(a), Arc::from(b)]);
        let mut recent: VecDeque<(u64, Bytes)> = page
            .into_iter()
            .map(|(seq, json)| (seq, encode(OpCode::Text, &json)))
            .collect();

        // Cluster mode: a recent hole may be a message another node is
        // still writing. Deliver from just below it, holding the newer rows
        // until the hole is filled or skipped (see `cluster`).
        let mut cluster: Option<Box<Clustered>> = clustered.then(|| Box::new(Clustered::loaded()));
        let mut last_seq = last_seq;
        if let (Some(c), Some(_)) = (cluster.as_mut(), &dm) {
            // A pair room has no channel of its own to fall behind on.
            c.stale = false;
        }
        if let (Some(c), None) = (cluster.as_mut(), &dm) {
            if let Some(below) = recent_hole(&recent) {
                last_seq = below;
                let at = recent.partition_point(|(s, _)| *s <= below);
                for (seq, frame) in recent.drain(at..) {
                    c.hold(seq, frame);
                }
            }
        }
        Room {
            dm,
            next_seq: last_seq + 1,
            last_seq,
            epoch: 0,
            recent,
            shards: vec![0; shards],
            members: HashMap::new(),
            inflight: HashMap::new(),
            seen,
            seen_order,
            pending_joins: HashSet::new(),
            touched: Instant::now(),
            cluster,
        }
    }

    /// Kept in memory while anything depends on it.
    pub(super) fn busy(&self) -> bool {
        !self.members.is_empty()
            || !self.inflight.is_empty()
            || !self.pending_joins.is_empty()
            || self.cluster.as_ref().is_some_and(|c| c.busy())
    }

    /// Committed frames with seq in `(after, upto]`, oldest first.
    fn recent_between(&self, after: u64, upto: u64) -> impl Iterator<Item = &Bytes> {
        self.recent
            .iter()
            .filter(move |(s, _)| *s > after && *s <= upto)
            .map(|(_, f)| f)
    }

    /// Does the cache hold every message after `since`?
    fn covers(&self, since: u64) -> bool {
        match self.recent.front() {
            Some((oldest, _)) => *oldest <= since + 1,
            None => true,
        }
    }
}

/// Poll a store read once; the embedded store answers at once, so its reads
/// need no task.
pub(super) fn read_now(fut: ReadFuture) -> Result<Result<Rows, StoreError>, ReadFuture> {
    let mut fut = fut;
    match (&mut fut).now_or_never() {
        Some(result) => Ok(result),
        None => Err(fut),
    }
}

impl Shard {
    /// Route a request to its owned room, loading the room first when it is
    /// not in memory. Requests for a room being loaded wait in order.
    pub(super) fn to_room(self: &Rc<Self>, room: Arc<str>, msg: ShardMsg) {
        let mut rooms = self.rooms.borrow_mut();
        // Cluster mode: a room that lost its subscription missed messages;
        // reload it before anyone joins or reads it again.
        let stale = match (rooms.get(&room), &msg) {
            (Some(Slot::Ready(r)), ShardMsg::Join(_) | ShardMsg::History(_)) => {
                r.cluster.as_ref().is_some_and(|c| c.stale) && !r.busy()
            }
            _ => false,
        };
        if stale {
            rooms.remove(&room);
        }
        match rooms.get_mut(&room) {
            Some(Slot::Ready(_)) => {
                drop(rooms);
                self.run(msg);
            }
            Some(Slot::Loading(queue)) => queue.push(msg),
            None => {
                // Nothing to undo or tell in a room nobody is in.
                if matches!(msg, ShardMsg::Leave { .. } | ShardMsg::Typing { .. }) {
                    return;
                }
                // From the cluster, only a DM needs its room loaded here: a
                // room's traffic comes only while it has local members.
                if let ShardMsg::Remote(remote) = &msg {
                    let dm = crate::auth::dm_pair(&room).is_some();
                    if !(dm && matches!(**remote, crate::cluster::Remote::Message { .. })) {
                        return;
                    }
                }
                rooms.insert(room.clone(), Slot::Loading(vec![msg]));
                drop(rooms);
                let read = self
                    .shared
                    .store
                    .page(&room, None, self.shared.config.history_cache);
                match read_now(read) {
                    Ok(result) => self.on_loaded(room, result),
                    Err(pending) => {
                        let me = self.clone();
                        monoio::spawn(async move {
                            let result = pending.await;
                            me.on_loaded(room, result);
                        });
                    }
                }
            }
        }
    }

    fn on_loaded(self: &Rc<Self>, id: Arc<str>, result: Result<Rows, StoreError>) {
        let removed = self.rooms.borrow_mut().remove(&id);
        let queued = match removed {
            Some(Slot::Loading(queued)) => queued,
            other => {
                // Cannot happen: only a load replaces a Loading slot.
                if let Some(slot) = other {
                    self.rooms.borrow_mut().insert(id, slot);
                }
                return;
            }
        };
        match result {
            Ok(page) => {
                let clustered = self.shared.cluster.is_some();
                let room = Room::from_store(&id, page, self.shared.mailboxes.len(), clustered);
                let (last_seq, shard) = (room.last_seq, self.id);
                tracing::debug!(room = %id, last_seq, shard, "room loaded");
                self.rooms
                    .borrow_mut()
                    .insert(id.clone(), Slot::Ready(Box::new(room)));
                if clustered {
                    self.with_room(&id, |me, room| me.note_gap(room, &id));
                }
                for msg in queued {
                    self.run(msg);
                }
                // Outside the inbox loop when the read was asynchronous.
                self.schedule_due_gaps();
            }
            Err(e) => {
                tracing::warn!(room = %id, err = %e, "history store read failed");
                for msg in queued {
                    self.refuse(msg);
                }
            }
        }
    }

    /// Handle a request whose room is ready.
    fn run(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Join(req) => self.on_join(*req),
            ShardMsg::Leave { room, conn, user } => self.on_leave(&room, conn, &user),
            ShardMsg::Publish(req) => self.on_publish(*req),
            ShardMsg::Typing { room, user, frame } => self.on_typing(&room, user, frame),
            ShardMsg::History(req) => self.on_history(*req),
            ShardMsg::Presence { room, reply } => self.on_presence(&room, reply),
            ShardMsg::RoomInfo { room, reply } => self.on_room_info(&room, reply),
            ShardMsg::Remote(remote) => self.on_remote(*remote),
            _ => unreachable!("only room requests are routed to rooms"),
        }
    }

    /// Answer a request that cannot be served because its room could not be
    /// loaded.
    fn refuse(&self, msg: ShardMsg) {
        let err = ClientError::new(Code::Unavailable, "history store unavailable");
        let reply = match msg {
            ShardMsg::Join(req) => ReplyTo::Conn {
                conn: req.conn,
                id: req.id,
            },
            ShardMsg::Publish(req) => req.reply,
            ShardMsg::History(req) => req.reply,
            ShardMsg::Presence { reply, .. } => reply,
            ShardMsg::RoomInfo { reply, .. } => reply,
            _ => return,
        };
        self.reply(reply, Err(err));
    }

    /// The ready room `id`, if it is in memory.
    pub(super) fn ready<R>(&self, id: &str, f: impl FnOnce(&mut Room) -> R) -> Option<R> {
        let mut rooms = self.rooms.borrow_mut();
        match rooms.get_mut(id) {
            Some(Slot::Ready(room)) => {
                room.touched = Instant::now();
                Some(f(room))
            }
            _ => None,
        }
    }

    fn on_join(self: &Rc<Self>, req: JoinReq) {
        // A resume from further back than the cache reaches reads the store
        // first; the join itself happens once the rows are here.
        let since = req.since;
        let need_store = self
            .ready(&req.room, |room| match since {
                Some(s) if s < room.last_seq && !room.covers(s) => {
                    room.pending_joins.insert(req.conn);
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if !need_store {
            return self.complete_join(req, None);
        }

        let read = self.shared.store.after(
            &req.room,
            since.unwrap_or(0),
            self.shared.config.limits.max_resume,
        );
        match read_now(read) {
            Ok(rows) => self.complete_join(req, Some(rows)),
            Err(pending) => {
                let me = self.clone();
                monoio::spawn(async move {
                    let rows = pending.await;
                    me.complete_join(req, Some(rows));
                });
            }
        }
    }

    /// Add the member and answer: the ack, then every committed message after
    /// `since` (`fetched` from the store, then the cache), atomically with
    /// respect to live fan-out, which follows on the same queue.
    fn complete_join(&self, req: JoinReq, fetched: Option<Result<Rows, StoreError>>) {
        self.metrics.joins.inc();
        let max_listed = self.shared.config.limits.max_members_listed;
        let max_resume = self.shared.config.limits.max_resume;
        let fetched = match fetched {
            Some(Err(e)) => {
                self.ready(&req.room, |room| room.pending_joins.remove(&req.conn));
                return self.store_unavailable(&req.room, req.conn, req.id, e);
            }
            Some(Ok(rows)) => Some(rows),
            None => None,
        };

        let answer = self.ready(&req.room, |room| {
            // A leave came while the store was read: answer, but do not join.
            let cancelled = fetched.is_some() && !room.pending_joins.remove(&req.conn);

            if !cancelled {
                // Presence first, so that existing members hear of the
                // newcomer while the newcomer itself is not yet receiving.
                let member = room
                    .members
                    .entry(req.user.id.clone())
                    .or_insert_with(|| Member {
                        user: req.user.clone(),
                        conns: Vec::new(),
                    });
                let first = member.conns.is_empty();
                if !member.conns.contains(&req.conn) {
                    member.conns.push(req.conn);
                    room.shards[req.conn.shard as usize] += 1;
                }
                if first {
                    self.announce(room, &req.room, &req.user, true);
                }
                self.listen(room, &req.room);
            }

            let users = room.listed(max_listed);
            let ack = protocol::ack_members(
                req.id.as_deref(),
                &req.room,
                users.into_iter(),
                Some(room.last_seq),
            );
            let ack = encode(OpCode::Text, &ack);

            let mut backlog = Vec::new();
            if let (Some(since), false) = (req.since, cancelled) {
                // A store read cut at --max-resume replays a contiguous
                // prefix only; the ack's last_seq tells the client how much
                // to page with `history`.
                let cut = fetched
                    .as_ref()
                    .is_some_and(|rows| rows.len() >= max_resume);
                let mut after = since;
                for (seq, json) in fetched.into_iter().flatten() {
                    if seq > after && seq <= room.last_seq {
                        backlog.push(encode(OpCode::Text, &json));
                        after = seq;
                    }
                }
                if !cut {
                    backlog.extend(room.recent_between(after, room.last_seq).cloned());
                }
            }
            (ack, backlog)
        });

        match answer {
            Some((ack, backlog)) => {
                let msg = ShardMsg::Joined {
                    conn: req.conn.local,
                    room: req.room,
                    ack,
                    backlog,
                };
                self.shared.send(req.conn.shard as usize, msg);
            }
            None => {
                let e = StoreError("room no longer loaded".into());
                self.store_unavailable(&req.room, req.conn, req.id, e)
            }
        }
    }

    fn on_leave(&self, room_id: &Arc<str>, conn: ConnId, user: &User) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(Slot::Ready(room)) = rooms.get_mut(room_id) else {
            return;
        };
        room.pending_joins.remove(&conn);
        let Some(member) = room.members.get_mut(&user.id) else {
            return;
        };
        let before = member.conns.len();
        member.conns.retain(|c| *c != conn);
        if member.conns.len() == before {
            return;
        }
        room.shards[conn.shard as usize] -= 1;

        if member.conns.is_empty() {
            let member = room.members.remove(&user.id).expect("present");
            self.announce(room, room_id, &member.user, false);
            if room.members.is_empty() {
                self.stop_listening(room, room_id);
            }
        }
    }

    /// A user's first connection joined, or last one left: tell the room
    /// (in cluster mode, Redis tells every node, this one included).
    fn announce(&self, room: &Room, id: &Arc<str>, user: &Arc<User>, online: bool) {
        if let Some(cluster) = &self.shared.cluster {
            let (room, user) = (id.clone(), user.clone());
            let cmd = match online {
                true => crate::cluster::Cmd::PresenceJoin { room, user },
                false => crate::cluster::Cmd::PresenceLeave { room, user },
            };
            cluster.send(cmd);
            return;
        }
        let frame = encode(OpCode::Text, &protocol::presence_event(id, user, online));
        let skip = online.then(|| user.id.clone());
        self.fan_out_room(room, id, frame, skip);
    }

    fn on_publish(&self, req: PublishReq) {
        let mut req = req;
        let room_id = req.room.clone();
        let result = self.ready(&room_id, |room| -> Result<Option<Vec<u8>>, ClientError> {
            expire_seen(room);

            // A resend of a request we already have: answer with the original.
            let key = req.id.as_ref().map(|id| (req.user.id.clone(), id.clone()));
            if let Some(answer) = resent(room, &mut req, key.as_ref()) {
                return Ok(answer);
            }

            // Cluster mode: the seq comes from Redis, asynchronously.
            if room.cluster.is_some() {
                self.await_seq(room, &mut req, key);
                return Ok(None);
            }

            let seq = room.next_seq;
            self.start_write(room, &mut req, key, seq)?;
            room.next_seq += 1;
            Ok(None)
        });

        let answer = match result {
            Some(Ok(None)) => return,
            Some(Ok(Some(ack))) => Ok(ack),
            Some(Err(err)) => Err(err),
            None => Err(ClientError::new(Code::Unavailable, "room not available")),
        };
        self.reply(req.reply, answer);
    }

    /// Give a message its `seq`: encode the frame once, queue the write, and
    /// wait for its commit. Takes the reply target out of `req`.
    pub(super) fn start_write(
        &self,
        room: &mut Room,
        req: &mut PublishReq,
        key: Option<(Arc<str>, Box<str>)>,
        seq: u64,
    ) -> Result<(), ClientError> {
        let ts = now_ms();
        let posted = match &req.to {
            Some(to) => Posted::Dm { to },
            None => Posted::Room(&req.room),
        };
        let json = protocol::posted(&posted, seq, ts, &req.user, &req.content, req.id.as_deref());
        let frame = encode(OpCode::Text, &json);
        let record = Record {
            room: req.room.clone(),
            seq,
            json: frame_payload(&frame),
        };
        let pending = Pending {
            owner: self.id,
            epoch: room.epoch,
            record,
            queued: Instant::now(),
        };
        if self.shared.writer.try_submit(pending).is_err() {
            if let Some(key) = &key {
                room.seen.remove(key);
            }
            return Err(ClientError::new(
                Code::Unavailable,
                "history queue full, not stored",
            ));
        }

        if let Some(key) = &key {
            room.seen
                .insert(key.clone(), Seen::InFlight(room.epoch, seq));
            room.seen_order.push_back((Instant::now(), key.clone()));
        }
        let flight = InFlight {
            frame,
            ts,
            accepted: Instant::now(),
            origin: req.origin,
            waiters: vec![req.reply.take()],
            seen_key: key,
        };
        room.inflight.insert((room.epoch, seq), flight);
        Ok(())
    }

    /// Outcomes from the history writer, in seq order per room.
    pub(super) fn on_stored(&self, reports: Vec<Report>) {
        let cache = self.shared.config.history_cache;
        let mut rooms = self.rooms.borrow_mut();
        for r in reports {
            let Some(Slot::Ready(room)) = rooms.get_mut(&r.room) else {
                continue;
            };
            let Some(flight) = room.inflight.remove(&(r.epoch, r.seq)) else {
                continue;
            };

            match r.outcome {
                Outcome::Stored => {
                    crate::metrics::get()
                        .ack_seconds
                        .observe(flight.accepted.elapsed().as_secs_f64());
                    // In cluster mode the cache follows delivery order.
                    if room.cluster.is_none() {
                        room.last_seq = r.seq;
                        if room.recent.len() == cache {
                            room.recent.pop_front();
                        }
                        room.recent.push_back((r.seq, flight.frame.clone()));
                    }
                    if let Some(key) = flight.seen_key {
                        room.seen.insert(
                            key,
                            Seen::Done {
                                seq: r.seq,
                                ts: flight.ts,
                            },
                        );
                    }

                    // Cluster mode: hand it to Redis before the ack, which
                    // narrows the window in which a node that dies has acked
                    // what the others never hear of (they catch up from the
                    // store when it is reaped).
                    if room.cluster.is_some() {
                        self.publish(room, &r.room, r.seq, Some(&flight.frame));
                    }

                    // Acks first, then the message: both go through the same
                    // FIFO inboxes, so the sender sees them in this order.
                    for waiter in flight.waiters {
                        let ack = protocol::ack_posted(waiter.id(), &r.room, r.seq, flight.ts);
                        self.reply(waiter, Ok(ack));
                    }
                    if room.cluster.is_some() {
                        let entry = Some((flight.frame, flight.origin));
                        self.sequence(room, &r.room, r.seq, entry);
                        continue;
                    }
                    match &room.dm {
                        Some(pair) => self.fan_out_users(pair, flight.frame, flight.origin),
                        None => self.fan_out_room(room, &r.room, flight.frame, None),
                    }
                }
                Outcome::NotStored { expected } => {
                    if let Some(key) = flight.seen_key {
                        room.seen.remove(&key);
                    }
                    if room.cluster.is_some() {
                        self.publish(room, &r.room, r.seq, None);
                        self.sequence(room, &r.room, r.seq, None);
                    } else if r.epoch == room.epoch {
                        let (room_id, seq) = (&r.room, r.seq);
                        tracing::warn!(room = %room_id, seq, expected, "history write refused");
                        room.epoch += 1;
                        room.next_seq = expected;
                    }
                    let err = ClientError::new(
                        Code::Unavailable,
                        "history store unavailable, not stored",
                    );
                    for waiter in flight.waiters {
                        self.reply(waiter, Err(err.clone()));
                    }
                }
            }
        }
    }

    fn on_typing(&self, room_id: &Arc<str>, user: Arc<str>, frame: Bytes) {
        // In cluster mode every node, this one included, delivers it when it
        // comes back from Redis.
        if let Some(cluster) = &self.shared.cluster {
            let payload = crate::cluster::wire::typing(room_id, &user, &frame_payload(&frame));
            let topics = vec![crate::cluster::Topic::Room(room_id.clone())];
            cluster.send(crate::cluster::Cmd::Publish { topics, payload });
            return;
        }
        self.ready(room_id, |room| {
            self.fan_out_room(room, room_id, frame, Some(user))
        });
    }

    fn on_history(self: &Rc<Self>, req: HistoryReq) {
        // From memory when the cache holds a full page below `before`, or
        // holds the room's whole history.
        let cached = self.ready(&req.room, |room| {
            // In cluster mode the cache is complete only while the room's
            // channel is subscribed and nothing is missing.
            if room
                .cluster
                .as_ref()
                .is_some_and(|c| !c.current(room.dm.is_some()))
            {
                return None;
            }
            let before = req.before.unwrap_or(u64::MAX);
            let below: Vec<&(u64, Bytes)> = room
                .recent
                .iter()
                .rev()
                .filter(|(s, _)| *s < before)
                .take(req.limit)
                .collect();
            let complete = room.recent.front().is_none_or(|(s, _)| *s == 1);
            (below.len() == req.limit || complete).then(|| {
                below
                    .into_iter()
                    .map(|(s, f)| (*s, frame_payload(f)))
                    .collect::<Rows>()
            })
        });
        if let Some(Some(page)) = cached {
            return self.answer_history(req, Ok(page));
        }

        let read = self.shared.store.page(&req.room, req.before, req.limit);
        match read_now(read) {
            Ok(page) => self.answer_history(req, page),
            Err(pending) => {
                let me = self.clone();
                monoio::spawn(async move {
                    let page = pending.await;
                    me.answer_history(req, page);
                });
            }
        }
    }

    fn answer_history(&self, req: HistoryReq, page: Result<Rows, StoreError>) {
        let body = match page {
            Ok(page) => {
                let has_more = page.last().is_some_and(|(s, _)| *s > 1);
                let target = match &req.with {
                    Some(with) => Target::User(with),
                    None => Target::Room(&req.room),
                };
                let id = req.reply.id();
                Ok(protocol::history(
                    id,
                    &target,
                    page.iter().map(|(_, j)| &j[..]),
                    has_more,
                ))
            }
            Err(e) => {
                tracing::warn!(room = %req.room, err = %e, "history read failed");
                Err(ClientError::new(
                    Code::Unavailable,
                    "history store unavailable",
                ))
            }
        };
        self.reply(req.reply, body);
    }

    fn on_presence(&self, room_id: &Arc<str>, reply: ReplyTo) {
        let max_listed = self.shared.config.limits.max_members_listed;
        let id = reply.id();
        let json = self
            .ready(room_id, |room| {
                let users = room.listed(max_listed);
                protocol::ack_members(id, room_id, users.into_iter(), None)
            })
            .unwrap_or_else(|| protocol::ack_members(id, room_id, std::iter::empty(), None));
        self.reply(reply, Ok(json));
    }

    fn on_room_info(&self, room_id: &Arc<str>, reply: ReplyTo) {
        let info = self.ready(room_id, |room| {
            let members: Vec<serde_json::Value> = room
                .members
                .values()
                .map(|m| {
                    serde_json::json!({
                        "id": &*m.user.id,
                        "name": m.user.name,
                        "role": m.user.role.as_str(),
                        "connections": m.conns.len(),
                    })
                })
                .collect();
            serde_json::json!({
                "room": &**room_id,
                "last_seq": room.last_seq,
                "in_flight": room.inflight.len(),
                "cached": room.recent.len(),
                "members": members,
                "owner_shard": self.id,
            })
        });
        let body = info.map(|v| v.to_string().into_bytes());
        self.reply(
            reply,
            body.ok_or_else(|| ClientError::new(Code::Unavailable, "room not loaded")),
        );
    }

    /// Send a frame to every shard with members of the room.
    pub(super) fn fan_out_room(
        &self,
        room: &Room,
        id: &Arc<str>,
        frame: Bytes,
        skip: Option<Arc<str>>,
    ) {
        for (shard, count) in room.shards.iter().enumerate() {
            if *count > 0 {
                let msg = ShardMsg::Deliver {
                    room: id.clone(),
                    frame: frame.clone(),
                    skip_user: skip.clone(),
                    at: Instant::now(),
                };
                self.shared.send(shard, msg);
            }
        }
    }

    /// A DM reaches every connection of both users, wherever they are,
    /// except the one it was sent from.
    ///
    /// # Limits
    ///
    /// This asks every shard, since no shard knows where a user's
    /// connections are; the cost per DM grows with the number of workers.
    pub(super) fn fan_out_users(&self, pair: &[Arc<str>; 2], frame: Bytes, origin: Option<ConnId>) {
        for shard in 0..self.shared.mailboxes.len() {
            let msg = ShardMsg::DeliverUsers {
                users: pair.to_vec(),
                frame: frame.clone(),
                skip: origin,
            };
            self.shared.send(shard, msg);
        }
    }

    fn store_unavailable(&self, room: &str, conn: ConnId, id: Option<Box<str>>, e: StoreError) {
        tracing::warn!(room, err = %e, "history store read failed");
        let err = ClientError::new(Code::Unavailable, "history store unavailable");
        self.reply(ReplyTo::Conn { conn, id }, Err(err));
    }

    /// Drop idle rooms from memory; they reload from the store on next use.
    pub(super) fn sweep_rooms(&self) {
        let now = Instant::now();
        self.rooms.borrow_mut().retain(|_, slot| match slot {
            Slot::Loading(_) => true,
            Slot::Ready(room) => {
                expire_seen(room);
                room.busy() || now - room.touched < super::ROOM_IDLE
            }
        });
    }
}

/// A resend of a `message` or `dm` this room already has: the original ack,
/// or None (`Some(None)`) when the reply will come with the original's.
fn resent(
    room: &mut Room,
    req: &mut PublishReq,
    key: Option<&(Arc<str>, Box<str>)>,
) -> Option<Option<Vec<u8>>> {
    let key = key?;
    match room.seen.get(key)? {
        Seen::Done { seq, ts } => Some(Some(protocol::ack_posted(
            req.id.as_deref(),
            &req.room,
            *seq,
            *ts,
        ))),
        Seen::InFlight(epoch, seq) => {
            let flight = room.inflight.get_mut(&(*epoch, *seq))?;
            flight.waiters.push(req.reply.take());
            Some(None)
        }
        Seen::Reserving => {
            let waiting = room.cluster.as_mut()?.awaiting.iter_mut();
            let first = waiting.into_iter().find(|w| w.key.as_ref() == Some(key))?;
            first.also.push(req.reply.take());
            Some(None)
        }
    }
}

fn expire_seen(room: &mut Room) {
    while let Some((at, _)) = room.seen_order.front() {
        if at.elapsed() < DEDUPE_WINDOW {
            break;
        }
        let (_, key) = room.seen_order.pop_front().expect("checked");
        // Only forget a finished entry; an in-flight one is still needed.
        if let Some(Seen::Done { .. }) = room.seen.get(&key) {
            room.seen.remove(&key);
        }
    }
}

/// How recent a hole in a loaded room's history must be to count as a
/// message possibly still being written by another node: longer than any
/// write waits in a queue (`--history-max-wait`, 10 s by default).
const RECENT_HOLE_MS: u64 = 60_000;

/// The seq just below the oldest hole among the newest rows whose next row
/// was written within [`RECENT_HOLE_MS`]; None when there is none.
fn recent_hole(rows: &VecDeque<(u64, Bytes)>) -> Option<u64> {
    let horizon = now_ms().saturating_sub(RECENT_HOLE_MS);
    let mut hole = None;
    for i in (1..rows.len()).rev() {
        let (below, above) = (rows[i - 1].0, &rows[i]);
        if frame_ts(&above.1).is_none_or(|ts| ts < horizon) {
            break;
        }
        if above.0 > below + 1 {
            hole = Some(below);
        }
    }
    hole
}

/// The `ts` of an encoded message frame.
fn frame_ts(frame: &Bytes) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(&frame_payload(frame)).ok()?;
    v.get("ts")?.as_u64()
}

/// `(from.id, id, ts)` of a stored frame, when it carries a request id.
fn resend_key(json: &[u8]) -> Option<(String, String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let id = v.get("id")?.as_str()?.to_owned();
    let user = v.get("from")?.get("id")?.as_str()?.to_owned();
    Some((user, id, v.get("ts")?.as_u64()?))
}
