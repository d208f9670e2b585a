//! The owner side of a room in cluster mode (`crate::cluster`): seqs
//! reserved in Redis, delivery in seq order whichever node committed a
//! message, gap filling from the shared history store, and the cluster's
//! member list.
//!
//! Rooms and DMs differ in one way. A room's messages reach a node only
//! while it subscribes the room's channel (while it has local members), so
//! its owner can hold a message until its predecessor arrives and deliver
//! the room in strict seq order. A DM reaches a node through its users'
//! channels, and a pair room may be loaded only when its first DM arrives,
//! so DMs are delivered on arrival, once each: two DMs of one pair
//! committed by two nodes at the same moment may show out of seq order
//! (`history` returns them in order).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::room::{read_now, Room, Seen, Slot};
use super::{ConnId, PublishReq, ReplyTo, Shard};
use crate::auth::User;
use crate::cluster::{wire, Cmd, Remote, Topic};
use crate::protocol::{self, ClientError, Code};
use crate::store::{Rows, StoreError};
use crate::ws::{encode, OpCode};

/// Rows read per gap fill or catch-up round.
const FILL_BATCH: usize = 1000;

/// How long presence events are remembered, to check member lists read
/// from Redis against (a list is asked for and answered within this).
const PRESENCE_EVENT_TRUST: Duration = Duration::from_secs(10);

/// DM seqs remembered per pair room to deliver each once.
const DM_SEEN: usize = 1024;

/// A frame to deliver, and the connection it came from (not echoed a DM).
type Entry = Option<(Bytes, Option<ConnId>)>;

/// A room's cluster-mode state.
#[derive(Default)]
pub(crate) struct Clustered {
    /// Messages waiting for a seq from Redis, oldest first.
    pub(super) awaiting: VecDeque<Awaiting>,
    /// A reservation is on its way.
    reserving: bool,
    /// The highest seq reserved by this node.
    reserved: u64,
    /// Rooms: frames that arrived ahead of a missing seq (None: a seq that
    /// will never be stored).
    ahead: BTreeMap<u64, Entry>,
    /// Seqs given up on after a gap check; delivered late if they come.
    skipped: BTreeSet<u64>,
    /// A gap check is scheduled.
    gap_check: bool,
    /// The first missing seq while frames wait behind it, and since when it
    /// has been missing: a check skips it only after the full gap wait.
    gap_since: Option<(u64, Instant)>,
    /// DMs: recently delivered seqs.
    dm_seen: VecDeque<u64>,
    /// The cluster's members, as Redis lists them and presence events
    /// update them.
    members: HashMap<Arc<str>, Arc<User>>,
    /// The room's channel is subscribed (or asked for).
    pub(super) subscribed: bool,
    /// Not subscribed at some time since it was loaded: what it holds may be
    /// behind. A room starts stale until its channel is subscribed.
    pub(super) stale: bool,
    /// The catch-up after a subscription or an outage has finished.
    caught_up: bool,
    /// Recent presence events by user (online?, when): a member list read
    /// from Redis may be older than an event that overtook it.
    events: HashMap<Arc<str>, (bool, Instant)>,
}

/// A message waiting for its seq.
pub(crate) struct Awaiting {
    pub(super) req: PublishReq,
    pub(super) key: Option<(Arc<str>, Box<str>)>,
    /// Resends of the same request, answered with it.
    pub(super) also: Vec<ReplyTo>,
}

impl Clustered {
    /// The state of a room just read from the store: stale until its
    /// channel is subscribed.
    pub(super) fn loaded() -> Clustered {
        Clustered {
            stale: true,
            ..Clustered::default()
        }
    }

    /// Hold a stored frame until the seqs below it are delivered or skipped.
    pub(super) fn hold(&mut self, seq: u64, frame: Bytes) {
        self.ahead.insert(seq, Some((frame, None)));
    }

    pub(super) fn busy(&self) -> bool {
        !self.awaiting.is_empty() || self.reserving || !self.ahead.is_empty()
    }

    /// Does the room's cache hold everything up to its `last_seq`?
    pub(super) fn current(&self, dm: bool) -> bool {
        !dm && self.subscribed && !self.stale && self.caught_up && self.ahead.is_empty()
    }
}

impl Room {
    /// Members to list: this node's, then the rest of the cluster's.
    pub(super) fn listed(&self, max: usize) -> Vec<&User> {
        let local = self.members.values().map(|m| &*m.user);
        let mut out: Vec<&User> = local.take(max).collect();
        if let Some(c) = &self.cluster {
            for (id, user) in &c.members {
                if out.len() >= max {
                    break;
                }
                if !self.members.contains_key(id) {
                    out.push(user);
                }
            }
        }
        out
    }

    /// The highest seq this node knows of: the floor of a reservation.
    fn known_seq(&self) -> u64 {
        let c = self.cluster.as_ref().expect("cluster mode");
        let ahead = c.ahead.keys().next_back().copied().unwrap_or(0);
        self.last_seq.max(c.reserved).max(ahead)
    }
}

impl Shard {
    fn cluster(&self) -> &crate::cluster::Cluster {
        self.shared.cluster.as_ref().expect("cluster mode")
    }

    /// Queue a message for a seq, and ask Redis for seqs unless a request
    /// is already on its way (its answer asks for the rest).
    pub(super) fn await_seq(
        &self,
        room: &mut Room,
        req: &mut PublishReq,
        key: Option<(Arc<str>, Box<str>)>,
    ) {
        if let Some(key) = &key {
            room.seen.insert(key.clone(), Seen::Reserving);
            room.seen_order
                .push_back((std::time::Instant::now(), key.clone()));
        }
        // Without Redis no node can order it: say so at once.
        if !self.cluster().up() {
            if let Some(key) = &key {
                room.seen.remove(key);
            }
            self.cluster()
                .status
                .refused
                .fetch_add(1, Ordering::Relaxed);
            let err =
                ClientError::new(Code::Unavailable, "cluster unavailable (Redis), not stored");
            self.reply(req.reply.take(), Err(err));
            return;
        }
        let moved = PublishReq {
            room: req.room.clone(),
            to: req.to.take(),
            user: req.user.clone(),
            origin: req.origin,
            id: req.id.take(),
            content: std::mem::take(&mut req.content),
            reply: req.reply.take(),
        };
        let c = room.cluster.as_mut().expect("cluster mode");
        c.awaiting.push_back(Awaiting {
            req: moved,
            key,
            also: Vec::new(),
        });
        if !c.reserving {
            self.reserve(room);
        }
    }

    fn reserve(&self, room: &mut Room) {
        let floor = room.known_seq();
        let c = room.cluster.as_mut().expect("cluster mode");
        let count = c.awaiting.len() as u32;
        let Some(first) = c.awaiting.front() else {
            return;
        };
        let cmd = Cmd::Reserve {
            room: first.req.room.clone(),
            count,
            floor,
            owner: self.id,
        };
        if self.cluster().send(cmd) {
            c.reserving = true;
        } else {
            let waiting: Vec<Awaiting> = c.awaiting.drain(..).collect();
            self.refuse_awaiting(room, waiting, "cluster queue full, not stored");
        }
    }

    /// Seqs from Redis for the oldest `count` waiting messages.
    pub(super) fn on_reserved(&self, id: &Arc<str>, first: Option<u64>, count: u32) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(Slot::Ready(room)) = rooms.get_mut(id) else {
            return;
        };
        let Some(c) = room.cluster.as_mut() else {
            return;
        };
        c.reserving = false;
        let take = (count as usize).min(c.awaiting.len());
        let batch: Vec<Awaiting> = c.awaiting.drain(..take).collect();
        let Some(first) = first else {
            self.refuse_awaiting(room, batch, "cluster unavailable (Redis), not stored");
            if !room.cluster.as_ref().is_some_and(|c| c.awaiting.is_empty()) {
                self.reserve(room);
            }
            return;
        };

        let last = first + count as u64 - 1;
        let c = room.cluster.as_mut().expect("checked");
        c.reserved = c.reserved.max(last);
        for (i, waiting) in batch.into_iter().enumerate() {
            let seq = first + i as u64;
            let Awaiting { mut req, key, also } = waiting;
            match self.start_write(room, &mut req, key, seq) {
                Ok(()) => {
                    if let Some(flight) = room.inflight.get_mut(&(room.epoch, seq)) {
                        flight.waiters.extend(also);
                    }
                }
                Err(err) => {
                    self.reply(req.reply, Err(err.clone()));
                    for r in also {
                        self.reply(r, Err(err.clone()));
                    }
                    // Nobody will store it: say so at once.
                    self.publish_skip(room, id, seq);
                }
            }
        }
        // Seqs reserved for messages that went meanwhile (none today: the
        // queue only grows) would be skipped here.
        if !room.cluster.as_ref().is_some_and(|c| c.awaiting.is_empty()) {
            self.reserve(room);
        }
    }

    fn refuse_awaiting(&self, room: &mut Room, batch: Vec<Awaiting>, why: &'static str) {
        let refused = &self.cluster().status.refused;
        refused.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let err = ClientError::new(Code::Unavailable, why);
        for waiting in batch {
            if let Some(key) = &waiting.key {
                room.seen.remove(key);
            }
            self.reply(waiting.req.reply, Err(err.clone()));
            for r in waiting.also {
                self.reply(r, Err(err.clone()));
            }
        }
    }

    fn publish_skip(&self, room: &mut Room, id: &Arc<str>, seq: u64) {
        self.publish(room, id, seq, None);
        self.sequence(room, id, seq, None);
    }

    /// Tell the other nodes of a message this node committed (`frame`), or
    /// of a seq it will never store (None).
    pub(super) fn publish(&self, room: &Room, id: &Arc<str>, seq: u64, frame: Option<&Bytes>) {
        let payload = match frame {
            Some(frame) => wire::message(id, seq, &super::frame_payload(frame)),
            None => wire::skip(id, seq),
        };
        let topics = topics(room, id);
        // A publish that cannot be queued is found by the receivers' gap
        // checks, from the history store.
        self.cluster().send(Cmd::Publish { topics, payload });
    }

    /// Deliver what is next in seq order (a message from any node, this one
    /// included after [`Shard::publish`], or a seq nobody will store); a
    /// room whose frames wait behind a gap gets a check scheduled (by
    /// [`Shard::schedule_due_gaps`]).
    pub(super) fn sequence(&self, room: &mut Room, id: &Arc<str>, seq: u64, entry: Entry) {
        if let Some(pair) = room.dm.clone() {
            self.deliver_dm(room, &pair, seq, entry);
            return;
        }
        let c = room.cluster.as_mut().expect("cluster mode");
        if seq <= room.last_seq {
            // Given up on by a gap check, yet stored after all: late, but
            // never lost.
            if c.skipped.remove(&seq) {
                if let Some((frame, _)) = entry {
                    tracing::warn!(room = %id, seq, "message arrived after its gap was skipped");
                    let at = room.recent.partition_point(|(s, _)| *s < seq);
                    if at > 0 {
                        room.recent.insert(at, (seq, frame.clone()));
                    }
                    self.fan_out_room(room, id, frame, None);
                }
            }
            return;
        }
        c.ahead.entry(seq).or_insert(entry);
        self.drain_ahead(room, id);
        self.note_gap(room, id);
    }

    /// Note whether frames wait behind a missing seq, and since when that
    /// seq is missing; queue a gap check when none is scheduled.
    pub(super) fn note_gap(&self, room: &mut Room, id: &Arc<str>) {
        let missing = room.last_seq + 1;
        let c = room.cluster.as_mut().expect("cluster mode");
        if c.ahead.is_empty() {
            c.gap_since = None;
            return;
        }
        if c.gap_since.map(|(seq, _)| seq) != Some(missing) {
            c.gap_since = Some((missing, Instant::now()));
        }
        if !c.gap_check {
            c.gap_check = true;
            self.gaps_due.borrow_mut().push(id.clone());
        }
    }

    /// Schedule the gap checks queued by `note_gap`. Called after every
    /// inbox batch and after every store read that fed a room.
    pub(super) fn schedule_due_gaps(self: &Rc<Self>) {
        let due = std::mem::take(&mut *self.gaps_due.borrow_mut());
        for id in due {
            self.schedule_gap_check(id);
        }
    }

    fn drain_ahead(&self, room: &mut Room, id: &Arc<str>) {
        let cache = self.shared.config.history_cache;
        loop {
            let next = room.last_seq + 1;
            let c = room.cluster.as_mut().expect("cluster mode");
            let Some(entry) = c.ahead.remove(&next) else {
                return;
            };
            room.last_seq = next;
            let Some((frame, _)) = entry else {
                continue;
            };
            if room.recent.len() >= cache {
                room.recent.pop_front();
            }
            room.recent.push_back((next, frame.clone()));
            self.fan_out_room(room, id, frame, None);
        }
    }

    fn deliver_dm(&self, room: &mut Room, pair: &[Arc<str>; 2], seq: u64, entry: Entry) {
        let c = room.cluster.as_mut().expect("cluster mode");
        if c.dm_seen.contains(&seq) {
            return;
        }
        if c.dm_seen.len() == DM_SEEN {
            c.dm_seen.pop_front();
        }
        c.dm_seen.push_back(seq);
        room.last_seq = room.last_seq.max(seq);
        if let Some((frame, origin)) = entry {
            self.fan_out_users(pair, frame, origin);
        }
    }

    /// Check a room's gap once its first missing seq has been missing for
    /// `--cluster-gap-wait-ms`.
    pub(super) fn schedule_gap_check(self: &Rc<Self>, id: Arc<str>) {
        self.check_gap_in(id, self.cluster().gap_wait);
    }

    fn check_gap_in(self: &Rc<Self>, id: Arc<str>, wait: Duration) {
        let me = self.clone();
        monoio::spawn(async move {
            monoio::time::sleep(wait).await;
            me.check_gap(id);
        });
    }

    /// The frames after a gap still wait: read the gap from the store. A
    /// gap that opened after this check was scheduled (the one it was for
    /// closed meanwhile) gets the rest of its own wait first.
    fn check_gap(self: &Rc<Self>, id: Arc<str>) {
        let wait = self.cluster().gap_wait;
        let span = self.ready(&id, |room| {
            let last_seq = room.last_seq;
            let c = room.cluster.as_mut()?;
            let Some((_, since)) = c.gap_since else {
                c.gap_check = false;
                return None;
            };
            let left = wait.saturating_sub(since.elapsed());
            if !left.is_zero() {
                return Some(Err(left));
            }
            c.gap_check = false;
            let first_ahead = *c.ahead.keys().next()?;
            (first_ahead > last_seq + 1).then_some(Ok((last_seq, first_ahead)))
        });
        let (from, upto) = match span {
            Some(Some(Ok(span))) => span,
            Some(Some(Err(left))) => return self.check_gap_in(id, left),
            _ => return,
        };
        let limit = ((upto - from - 1) as usize).min(FILL_BATCH);
        let read = self.shared.store.after(&id, from, limit);
        match read_now(read) {
            Ok(rows) => self.fill_gap(&id, upto, limit, rows),
            Err(pending) => {
                let me = self.clone();
                monoio::spawn(async move {
                    let rows = pending.await;
                    me.fill_gap(&id, upto, limit, rows);
                });
            }
        }
    }

    /// Deliver the gap's rows found in the store, and skip the seqs the read
    /// covered that are not there (reserved by a node that died before
    /// storing, or lost with a Redis counter). A gap wider than one read is
    /// worked through one read at a time.
    fn fill_gap(
        self: &Rc<Self>,
        id: &Arc<str>,
        upto: u64,
        limit: usize,
        rows: Result<Rows, StoreError>,
    ) {
        self.ready(id, |room| {
            match rows {
                Ok(rows) => {
                    // The store holds nothing else up to `covered`: a short
                    // read saw the whole gap, a full one up to its last row.
                    let covered = match rows.last() {
                        Some((last, _)) if rows.len() >= limit => (*last).min(upto - 1),
                        _ => upto - 1,
                    };
                    let c = room.cluster.as_mut().expect("cluster mode");
                    for (seq, json) in rows {
                        if seq <= covered && seq > room.last_seq {
                            let frame = encode(OpCode::Text, &json);
                            c.ahead.entry(seq).or_insert(Some((frame, None)));
                        }
                    }
                    // Remember the lowest seqs of the hole as skipped (a late
                    // arrival is a seq reserved just before the hole opened;
                    // after a lost Redis counter the rest were never used),
                    // and across holes the newest.
                    let mut missing = 0;
                    for seq in room.last_seq + 1..=covered {
                        if let std::collections::btree_map::Entry::Vacant(e) = c.ahead.entry(seq) {
                            e.insert(None);
                            if missing < DM_SEEN as u64 {
                                c.skipped.insert(seq);
                            }
                            missing += 1;
                        }
                    }
                    while c.skipped.len() > DM_SEEN {
                        c.skipped.pop_first();
                    }
                    if missing > 0 {
                        let status = &self.cluster().status;
                        status.skipped.fetch_add(missing, Ordering::Relaxed);
                        tracing::info!(room = %id, missing, "skipped seqs no node stored");
                    }
                    self.drain_ahead(room, id);
                    self.cluster()
                        .status
                        .gap_fills
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // Try again after a full wait, not in a loop.
                    tracing::warn!(room = %id, err = %e, "gap fill read failed");
                    let c = room.cluster.as_mut().expect("cluster mode");
                    c.gap_since = Some((room.last_seq + 1, Instant::now()));
                }
            }
            // What is still missing has waited since this check began.
            let c = room.cluster.as_mut().expect("cluster mode");
            let since = c.gap_since.map(|(_, at)| at);
            self.note_gap(room, id);
            let c = room.cluster.as_mut().expect("cluster mode");
            if let (Some(at), Some((seq, _))) = (since, c.gap_since) {
                c.gap_since = Some((seq, at));
            }
        });
        self.schedule_due_gaps();
    }

    /// Read everything after the room's `last_seq` from the store and
    /// deliver it: after a subscription starts, and after an outage.
    fn catch_up(self: &Rc<Self>, id: Arc<str>, after: Option<u64>) {
        let Some(from) = self.ready(&id, |room| after.unwrap_or(room.last_seq)) else {
            return;
        };
        let read = self.shared.store.after(&id, from, FILL_BATCH);
        let me = self.clone();
        let done = move |rows: Result<Rows, StoreError>| {
            // A full read continues after its last row (not after the
            // room's last_seq, which a hole may hold back).
            let more = me.ready(&id, |room| match rows {
                Ok(rows) => {
                    let next = (rows.len() == FILL_BATCH).then(|| rows.last().map(|r| r.0));
                    for (seq, json) in rows {
                        let frame = encode(OpCode::Text, &json);
                        me.sequence(room, &id, seq, Some((frame, None)));
                    }
                    let next = next.flatten();
                    if let (None, Some(c)) = (next, room.cluster.as_mut()) {
                        c.caught_up = true;
                    }
                    next
                }
                Err(e) => {
                    tracing::warn!(room = %id, err = %e, "catch-up read failed");
                    None
                }
            });
            me.schedule_due_gaps();
            if let Some(Some(next)) = more {
                me.catch_up(id, Some(next));
            }
        };
        match read_now(read) {
            Ok(rows) => done(rows),
            Err(pending) => {
                monoio::spawn(async move { done(pending.await) });
            }
        }
    }

    /// Something published through Redis, for a room this shard owns.
    pub(super) fn on_remote(self: &Rc<Self>, remote: Remote) {
        match remote {
            Remote::Message { room, seq, json } => {
                let frame = encode(OpCode::Text, &json);
                self.with_room(&room, |me, r| {
                    me.sequence(r, &room, seq, Some((frame, None)))
                });
            }
            Remote::Skip { room, seq } => {
                self.with_room(&room, |me, r| me.sequence(r, &room, seq, None));
            }
            Remote::Typing { room, user, json } => {
                let frame = encode(OpCode::Text, &json);
                self.with_room(&room, |me, r| me.fan_out_room(r, &room, frame, Some(user)));
            }
            // Delivered by the link directly; never routed to a room.
            Remote::UserTyping { .. } => {}
            Remote::Presence { room, user, online } => {
                self.with_room(&room, |me, r| {
                    let Some(c) = r.cluster.as_mut() else {
                        return;
                    };
                    c.events
                        .retain(|_, (_, at)| at.elapsed() < PRESENCE_EVENT_TRUST);
                    c.events.insert(user.id.clone(), (online, Instant::now()));
                    let changed = match online {
                        true => c.members.insert(user.id.clone(), user.clone()).is_none(),
                        false => c.members.remove(&user.id).is_some(),
                    };
                    if changed {
                        let event = protocol::presence_event(&room, &user, online);
                        let skip = online.then(|| user.id.clone());
                        me.fan_out_room(r, &room, encode(OpCode::Text, &event), skip);
                    }
                });
            }
            Remote::Members {
                room,
                users,
                full,
                asked,
            } => {
                // Apply the differences as events, so that local members'
                // views converge too (after an outage, or a first join).
                self.with_room(&room, |me, r| {
                    let Some(c) = r.cluster.as_mut() else {
                        return;
                    };
                    // An event that came after the list was asked for wins.
                    c.events
                        .retain(|_, (_, at)| at.elapsed() < PRESENCE_EVENT_TRUST);
                    let events = c.events.iter().filter(|(_, (_, at))| *at >= asked);
                    let mut now: HashMap<Arc<str>, Arc<User>> =
                        users.into_iter().map(|u| (u.id.clone(), u)).collect();
                    for (id, (online, _)) in events {
                        match (online, c.members.get(id)) {
                            (true, Some(user)) => {
                                now.entry(id.clone()).or_insert_with(|| user.clone());
                            }
                            (false, _) => {
                                now.remove(id);
                            }
                            (true, None) => {}
                        }
                    }
                    let gone: Vec<Arc<User>> = (c.members.values())
                        .filter(|u| full && !now.contains_key(&u.id))
                        .cloned()
                        .collect();
                    let came: Vec<Arc<User>> = (now.values())
                        .filter(|u| !c.members.contains_key(&u.id))
                        .cloned()
                        .collect();
                    if full {
                        c.members = now;
                    } else {
                        c.members
                            .extend(came.iter().map(|u| (u.id.clone(), u.clone())));
                    }
                    for (user, online) in gone
                        .iter()
                        .map(|u| (u, false))
                        .chain(came.iter().map(|u| (u, true)))
                    {
                        let event = protocol::presence_event(&room, user, online);
                        let skip = online.then(|| user.id.clone());
                        me.fan_out_room(r, &room, encode(OpCode::Text, &event), skip);
                    }
                });
            }
            Remote::Subscribed { room } => {
                self.catch_up(room.clone(), None);
                self.cluster().send(Cmd::Members {
                    room,
                    owner: self.id,
                    full: false,
                    asked: Instant::now(),
                });
            }
        }
    }

    pub(super) fn with_room<R>(
        &self,
        id: &str,
        f: impl FnOnce(&Self, &mut Room) -> R,
    ) -> Option<R> {
        let mut rooms = self.rooms.borrow_mut();
        match rooms.get_mut(id) {
            Some(Slot::Ready(room)) => Some(f(self, room)),
            _ => None,
        }
    }

    /// The room has local members: subscribe its channel if not yet.
    pub(super) fn listen(&self, room: &mut Room, id: &Arc<str>) {
        let Some(c) = room.cluster.as_mut() else {
            return;
        };
        if room.dm.is_some() || c.subscribed {
            return;
        }
        c.subscribed = true;
        c.stale = false;
        c.caught_up = false;
        self.cluster()
            .send(Cmd::Subscribe(Topic::Room(id.clone()), self.id));
    }

    /// The room's last local member left.
    pub(super) fn stop_listening(&self, room: &mut Room, id: &Arc<str>) {
        let Some(c) = room.cluster.as_mut() else {
            return;
        };
        if !c.subscribed {
            return;
        }
        c.subscribed = false;
        c.stale = true;
        c.members.clear();
        self.cluster()
            .send(Cmd::Unsubscribe(Topic::Room(id.clone())));
    }

    /// Redis is back: for every room in memory here, fill what was missed
    /// and re-read the cluster's members (the link has made Redis agree with
    /// this node's own presence first).
    pub(super) fn resync(self: &Rc<Self>) {
        let mut catch_up = Vec::new();
        {
            let mut rooms = self.rooms.borrow_mut();
            for (id, slot) in rooms.iter_mut() {
                let Slot::Ready(room) = slot else { continue };
                let Some(c) = &mut room.cluster else { continue };
                if room.dm.is_none() && !c.subscribed {
                    continue;
                }
                c.caught_up = false;
                catch_up.push(id.clone());
                if room.dm.is_none() {
                    self.cluster().send(Cmd::Members {
                        room: id.clone(),
                        owner: self.id,
                        full: true,
                        asked: Instant::now(),
                    });
                }
            }
        }
        for id in catch_up {
            self.catch_up(id, None);
        }
    }
}

/// Where a room's messages are published: its channel, or for a DM both
/// users' channels.
fn topics(room: &Room, id: &Arc<str>) -> Vec<Topic> {
    match &room.dm {
        Some([a, b]) if a == b => vec![Topic::User(a.clone())],
        Some([a, b]) => vec![Topic::User(a.clone()), Topic::User(b.clone())],
        None => vec![Topic::Room(id.clone())],
    }
}
