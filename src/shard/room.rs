//! The owner side of a room: seq assignment, members and presence, recent
//! messages, resend de-duplication, and fan-out after commit.
//!
//! Every function here runs on the room's owner shard.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{frame_payload, now_ms, ConnId, HistoryReq, JoinReq, PublishReq, ReplyTo, Shard};
use super::ShardMsg;
use crate::auth::User;
use crate::protocol::{self, ClientError, Code, Posted, Target};
use crate::store::writer::{Outcome, Pending, Report};
use crate::store::{Record, StoreError};
use crate::ws::{encode, OpCode};

/// How long a resent `message` or `dm` id is recognised (PROTOCOL.md).
const DEDUPE_WINDOW: Duration = Duration::from_secs(600);

/// A room (or DM pair) owned by this shard.
pub(super) struct Room {
    /// For a DM pair room, the two users; their connections get its frames.
    dm: Option<[Arc<str>; 2]>,
    /// The seq the next message gets.
    next_seq: u64,
    /// The last seq known committed (what a join reports as `last_seq`).
    last_seq: u64,
    /// Bumped when the counter is rewound after a failed write, so that
    /// outcomes of writes from before the rewind are recognised as stale.
    epoch: u32,
    /// The newest committed frames, oldest first.
    recent: VecDeque<(u64, Bytes)>,
    /// Member connections per shard: fan-out goes to shards with a count.
    shards: Vec<u32>,
    members: HashMap<Arc<str>, Member>,
    /// Messages waiting for their commit, by (epoch, seq).
    inflight: HashMap<(u32, u64), InFlight>,
    /// Resend detection: (user, request id) → what happened to it.
    seen: HashMap<(Arc<str>, Box<str>), Seen>,
    /// Expiry order of `seen`.
    seen_order: VecDeque<(Instant, (Arc<str>, Box<str>))>,
    /// When the room last had members or traffic.
    touched: Instant,
}

struct Member {
    user: Arc<User>,
    conns: Vec<ConnId>,
}

struct InFlight {
    frame: Bytes,
    ts: u64,
    /// Who waits for the ack: the sender, and any resend of the same id.
    waiters: Vec<(ConnId, Option<Box<str>>)>,
    seen_key: Option<(Arc<str>, Box<str>)>,
}

enum Seen {
    InFlight(u32, u64),
    Done { seq: u64, ts: u64 },
}

impl Room {
    fn has_members(&self) -> bool {
        !self.members.is_empty()
    }
}

impl Shard {
    /// The owned room, loaded from the store on first use.
    fn room_mut<R>(
        &self,
        id: &Arc<str>,
        f: impl FnOnce(&mut Room) -> R,
    ) -> Result<R, StoreError> {
        let mut rooms = self.rooms.borrow_mut();
        if !rooms.contains_key(id) {
            let room = self.load_room(id)?;
            rooms.insert(id.clone(), room);
        }
        let room = rooms.get_mut(id).expect("just inserted");
        room.touched = Instant::now();
        Ok(f(room))
    }

    fn load_room(&self, id: &str) -> Result<Room, StoreError> {
        let store = &self.shared.store;
        let cache = self.shared.config.history_cache;
        let last_seq = store.last_seq(id)?;
        let mut page = store.page(id, None, cache)?;
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
        let recent = page.into_iter().map(|(seq, json)| (seq, encode(OpCode::Text, &json))).collect();
        tracing::debug!(room = id, last_seq, shard = self.id, "room loaded");
        Ok(Room {
            dm,
            next_seq: last_seq + 1,
            last_seq,
            epoch: 0,
            recent,
            shards: vec![0; self.shared.mailboxes.len()],
            members: HashMap::new(),
            inflight: HashMap::new(),
            seen,
            seen_order,
            touched: Instant::now(),
        })
    }

    pub(super) fn on_join(&self, req: JoinReq) {
        let max_listed = self.shared.config.limits.max_members_listed;
        let max_resume = self.shared.config.limits.max_resume;
        let result = self.room_mut(&req.room, |room| {
            // Presence first, so that existing members hear of the newcomer
            // while the newcomer itself is not yet receiving.
            let member = room
                .members
                .entry(req.user.id.clone())
                .or_insert_with(|| Member { user: req.user.clone(), conns: Vec::new() });
            let first = member.conns.is_empty();
            if !member.conns.contains(&req.conn) {
                member.conns.push(req.conn);
                room.shards[req.conn.shard as usize] += 1;
            }
            if first {
                let frame = encode(OpCode::Text, &protocol::presence_event(&req.room, &req.user, true));
                self.fan_out_room(room, &req.room, frame, Some(req.user.id.clone()));
            }

            let users = room.members.values().map(|m| &*m.user).take(max_listed);
            let ack = protocol::ack_members(req.id.as_deref(), &req.room, users, Some(room.last_seq));
            (encode(OpCode::Text, &ack), room.last_seq, room.recent.front().map(|(s, _)| *s))
        });

        let (ack, last_seq, oldest_cached) = match result {
            Ok(r) => r,
            Err(e) => return self.store_unavailable(&req.room, req.conn, req.id, e),
        };

        // The backlog for a resume: committed messages after `since`, from
        // memory when the cache reaches back far enough.
        let mut backlog = Vec::new();
        if let Some(since) = req.since.filter(|s| *s < last_seq) {
            if oldest_cached.is_some_and(|oldest| oldest <= since + 1) {
                let rooms = self.rooms.borrow();
                let room = &rooms[&req.room];
                backlog.extend(
                    room.recent.iter().filter(|(s, _)| *s > since).map(|(_, f)| f.clone()),
                );
            } else {
                match self.shared.store.after(&req.room, since, max_resume) {
                    Ok(rows) => backlog.extend(
                        rows.into_iter()
                            .filter(|(s, _)| *s <= last_seq)
                            .map(|(_, json)| encode(OpCode::Text, &json)),
                    ),
                    Err(e) => return self.store_unavailable(&req.room, req.conn, req.id, e),
                }
            }
        }

        let msg = ShardMsg::Joined { conn: req.conn.local, room: req.room, ack, backlog };
        self.shared.send(req.conn.shard as usize, msg);
    }

    pub(super) fn on_leave(&self, room_id: &Arc<str>, conn: ConnId, user: &User) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(room) = rooms.get_mut(room_id) else { return };
        let Some(member) = room.members.get_mut(&user.id) else { return };
        let before = member.conns.len();
        member.conns.retain(|c| *c != conn);
        if member.conns.len() == before {
            return;
        }
        room.shards[conn.shard as usize] -= 1;

        if member.conns.is_empty() {
            let member = room.members.remove(&user.id).expect("present");
            let frame = encode(OpCode::Text, &protocol::presence_event(room_id, &member.user, false));
            self.fan_out_room(room, room_id, frame, None);
        }
    }

    pub(super) fn on_publish(&self, req: PublishReq) {
        let shard = self.id;
        let writer = &self.shared.writer;
        let result = self.room_mut(&req.room, |room| -> Result<(), ClientError> {
            expire_seen(room);

            // A resend of a request we already have: answer with the original.
            let key = req.id.as_ref().map(|id| (req.user.id.clone(), id.clone()));
            if let Some(key) = &key {
                match room.seen.get(key) {
                    Some(Seen::Done { seq, ts }) => {
                        let (seq, ts) = (*seq, *ts);
                        let ack = protocol::ack_posted(req.id.as_deref(), &req.room, seq, ts);
                        let frame = encode(OpCode::Text, &ack);
                        let msg = ShardMsg::ToConn { conn: req.origin.local, frame };
                        self.shared.send(req.origin.shard as usize, msg);
                        return Ok(());
                    }
                    Some(Seen::InFlight(epoch, seq)) => {
                        if let Some(f) = room.inflight.get_mut(&(*epoch, *seq)) {
                            f.waiters.push((req.origin, req.id.clone()));
                            return Ok(());
                        }
                    }
                    None => {}
                }
            }

            // Assign the seq, encode the frame once, and queue the write.
            let seq = room.next_seq;
            let ts = now_ms();
            let posted = match &req.to {
                Some(to) => Posted::Dm { to },
                None => Posted::Room(&req.room),
            };
            let json = protocol::posted(&posted, seq, ts, &req.user, &req.content, req.id.as_deref());
            let frame = encode(OpCode::Text, &json);
            let record = Record { room: req.room.clone(), seq, json: frame_payload(&frame) };
            let pending = Pending { owner: shard, epoch: room.epoch, record };
            if writer.try_submit(pending).is_err() {
                return Err(ClientError::new(Code::Unavailable, "history queue full, not stored"));
            }
            room.next_seq += 1;

            if let Some(key) = &key {
                room.seen.insert(key.clone(), Seen::InFlight(room.epoch, seq));
                room.seen_order.push_back((Instant::now(), key.clone()));
            }
            let waiters = vec![(req.origin, req.id.clone())];
            room.inflight.insert((room.epoch, seq), InFlight { frame, ts, waiters, seen_key: key });
            Ok(())
        });

        let err = match result {
            Ok(Ok(())) => return,
            Ok(Err(err)) => err,
            Err(e) => {
                tracing::warn!(room = %req.room, err = %e, "history store read failed");
                ClientError::new(Code::Unavailable, "history store unavailable")
            }
        };
        self.reply(ReplyTo::Conn { conn: req.origin, id: req.id }, Err(err));
    }

    /// Outcomes from the history writer, in seq order per room.
    pub(super) fn on_stored(&self, reports: Vec<Report>) {
        let cache = self.shared.config.history_cache;
        let mut rooms = self.rooms.borrow_mut();
        for r in reports {
            let Some(room) = rooms.get_mut(&r.room) else { continue };
            let Some(flight) = room.inflight.remove(&(r.epoch, r.seq)) else { continue };

            match r.outcome {
                Outcome::Stored => {
                    room.last_seq = r.seq;
                    if room.recent.len() == cache {
                        room.recent.pop_front();
                    }
                    room.recent.push_back((r.seq, flight.frame.clone()));
                    if let Some(key) = flight.seen_key {
                        room.seen.insert(key, Seen::Done { seq: r.seq, ts: flight.ts });
                    }

                    // Acks first, then the message: both go through the same
                    // FIFO inboxes, so the sender sees them in this order.
                    for (conn, id) in flight.waiters {
                        let ack = protocol::ack_posted(id.as_deref(), &r.room, r.seq, flight.ts);
                        let frame = encode(OpCode::Text, &ack);
                        self.shared.send(conn.shard as usize, ShardMsg::ToConn { conn: conn.local, frame });
                    }
                    match &room.dm {
                        Some(pair) => self.fan_out_users(pair, flight.frame),
                        None => self.fan_out_room(room, &r.room, flight.frame, None),
                    }
                }
                Outcome::NotStored { expected } => {
                    if let Some(key) = flight.seen_key {
                        room.seen.remove(&key);
                    }
                    if r.epoch == room.epoch {
                        tracing::warn!(room = %r.room, seq = r.seq, expected, "history write failed; seq rewound");
                        room.epoch += 1;
                        room.next_seq = expected;
                    }
                    let err = ClientError::new(Code::Unavailable, "history store failed, not stored");
                    for (conn, id) in flight.waiters {
                        let json = protocol::error(id.as_deref(), &err);
                        let frame = encode(OpCode::Text, &json);
                        self.shared.send(conn.shard as usize, ShardMsg::ToConn { conn: conn.local, frame });
                    }
                }
            }
        }
    }

    pub(super) fn on_typing(&self, room_id: &Arc<str>, user: Arc<str>, frame: Bytes) {
        // Typing is ephemeral: a room that is not in memory has no members.
        let rooms = self.rooms.borrow();
        if let Some(room) = rooms.get(room_id) {
            self.fan_out_room(room, room_id, frame, Some(user));
        }
    }

    pub(super) fn on_history(&self, req: HistoryReq) {
        let result = self.room_mut(&req.room, |room| {
            // From memory when the cache holds a full page below `before`,
            // or holds the room's whole history.
            let before = req.before.unwrap_or(u64::MAX);
            let below: Vec<&(u64, Bytes)> =
                room.recent.iter().rev().filter(|(s, _)| *s < before).take(req.limit).collect();
            let complete = room.recent.front().is_none_or(|(s, _)| *s == 1);
            if below.len() == req.limit || complete {
                Some(below.into_iter().map(|(s, f)| (*s, frame_payload(f))).collect::<Vec<_>>())
            } else {
                None
            }
        });
        let page = match result {
            Ok(Some(page)) => Ok(page),
            Ok(None) => self.shared.store.page(&req.room, req.before, req.limit),
            Err(e) => Err(e),
        };

        let body = match page {
            Ok(page) => {
                let has_more = page.last().is_some_and(|(s, _)| *s > 1);
                let target = match &req.with {
                    Some(with) => Target::User(with),
                    None => Target::Room(&req.room),
                };
                let id = match &req.reply {
                    ReplyTo::Conn { id, .. } => id.as_deref(),
                    ReplyTo::Http(_) => None,
                };
                Ok(protocol::history(id, &target, page.iter().map(|(_, j)| &j[..]), has_more))
            }
            Err(e) => {
                tracing::warn!(room = %req.room, err = %e, "history read failed");
                Err(ClientError::new(Code::Unavailable, "history store unavailable"))
            }
        };
        self.reply(req.reply, body);
    }

    pub(super) fn on_presence(&self, room_id: &Arc<str>, reply: ReplyTo) {
        let max_listed = self.shared.config.limits.max_members_listed;
        let id = match &reply {
            ReplyTo::Conn { id, .. } => id.as_deref(),
            ReplyTo::Http(_) => None,
        };
        let rooms = self.rooms.borrow();
        let users = rooms
            .get(room_id)
            .into_iter()
            .flat_map(|r| r.members.values().map(|m| &*m.user))
            .take(max_listed);
        let json = protocol::ack_members(id, room_id, users, None);
        drop(rooms);
        self.reply(reply, Ok(json));
    }

    /// Send a frame to every shard with members of the room.
    fn fan_out_room(&self, room: &Room, id: &Arc<str>, frame: Bytes, skip: Option<Arc<str>>) {
        for (shard, count) in room.shards.iter().enumerate() {
            if *count > 0 {
                let msg = ShardMsg::Deliver {
                    room: id.clone(),
                    frame: frame.clone(),
                    skip_user: skip.clone(),
                };
                self.shared.send(shard, msg);
            }
        }
    }

    /// A DM reaches every connection of both users, wherever they are.
    ///
    /// # Limits
    ///
    /// This asks every shard, since no shard knows where a user's
    /// connections are; the cost per DM grows with the number of workers.
    fn fan_out_users(&self, pair: &[Arc<str>; 2], frame: Bytes) {
        for shard in 0..self.shared.mailboxes.len() {
            let msg = ShardMsg::DeliverUsers { users: pair.to_vec(), frame: frame.clone() };
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
        self.rooms.borrow_mut().retain(|_, room| {
            expire_seen(room);
            room.has_members() || !room.inflight.is_empty() || now - room.touched < super::ROOM_IDLE
        });
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

/// `(from.id, id, ts)` of a stored frame, when it carries a request id.
fn resend_key(json: &[u8]) -> Option<(String, String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let id = v.get("id")?.as_str()?.to_owned();
    let user = v.get("from")?.get("id")?.as_str()?.to_owned();
    Some((user, id, v.get("ts")?.as_u64()?))
}
