//! One client connection after its upgrade: the chat session (requests in,
//! frames out) and the echo endpoint used for WebSocket conformance tests.

pub mod outbox;
pub mod socket;

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use governor::{Quota, RateLimiter};
use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::auth::{self, User};
use crate::content;
use crate::protocol::{self, ClientError, Code, Frame, Request, Target};
use crate::shard::{now_ms, ConnId, HistoryReq, JoinReq, PublishReq, ReplyTo, Shard, ShardMsg};
use crate::ws::{self, Decoder, Message, OpCode};
use outbox::Outbox;

/// Consecutive rate-limited requests after which a connection is closed with
/// 1008: a client that ignores `retry_after_ms` this often is flooding.
const FLOOD_STRIKES: u32 = 20;

type Limiter = governor::DefaultDirectRateLimiter;

/// Serve an upgraded chat connection until it closes. `response` is the
/// `101 Switching Protocols` head; `buf` holds any bytes read past it.
pub async fn run_chat(
    shard: Rc<Shard>,
    stream: TcpStream,
    user: Arc<User>,
    response: Vec<u8>,
    buf: BytesMut,
) {
    let limits = shard.shared.config.limits;
    let fd = stream.as_raw_fd();
    let (mut rd, wr) = stream.into_split();

    // The upgrade response and the welcome are the first bytes out.
    let outbox = Rc::new(Outbox::new(limits.max_outbound_bytes));
    outbox.push_control(Bytes::from(response));
    let local = shard.register(user.clone(), outbox.clone());
    let id = shard.conn_id(local);
    let welcome = protocol::welcome(&id.to_string(), &user, now_ms(), &limits);
    outbox.push(ws::encode(OpCode::Text, &welcome));
    tracing::debug!(conn = %id, user = %user.id, "connected");

    let writer = monoio::spawn(socket::write_loop(wr, outbox.clone(), fd));
    let guard = Registered {
        shard: shard.clone(),
        local,
        user: user.clone(),
        outbox: outbox.clone(),
    };
    let mut chat = Chat {
        shard: shard.clone(),
        id,
        user,
        outbox: outbox.clone(),
        messages: limiter(limits.messages_per_sec, limits.message_burst),
        typing: limiter(
            limits.typing_per_sec,
            limits.typing_per_sec.saturating_mul(2),
        ),
        joins: limiter(limits.joins_per_sec, limits.joins_per_sec.saturating_mul(5)),
        reads: limiter(
            limits.history_per_sec,
            limits.history_per_sec.saturating_mul(4),
        ),
        strikes: 0,
    };

    // Nothing past the upgrade request yet (the usual case): let go of the
    // head's 2 KiB buffer; reads start small and grow as frames need.
    let buf = if buf.is_empty() { BytesMut::new() } else { buf };
    let mut decoder = Decoder::new(limits.max_frame_bytes, limits.max_frame_bytes);
    socket::read_loop(&mut rd, buf, &mut decoder, &outbox, |msg| {
        chat.on_message(msg)
    })
    .await;

    drop(guard);
    drop(rd);
    writer.await;
    tracing::debug!(conn = %id, "disconnected");
}

/// Undoes a connection's registration when its task ends, also when it ends
/// by a panic: leaves its rooms, frees the user's connection slot, and lets
/// the writer finish.
struct Registered {
    shard: Rc<Shard>,
    local: u32,
    user: Arc<User>,
    outbox: Rc<Outbox>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shard.unregister(self.local);
        self.shard.shared.admission.release(&self.user.id);
        self.outbox.finish();
    }
}

fn limiter(per_sec: u32, burst: u32) -> Limiter {
    let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate));
    RateLimiter::direct_with_clock(quota, crate::admission::clock())
}

/// Echo every data message back unchanged (`--echo-endpoint`, for the
/// Autobahn|Testsuite). No auth, no rooms.
pub async fn run_echo(shard: Rc<Shard>, stream: TcpStream, response: Vec<u8>, buf: BytesMut) {
    let limits = shard.shared.config.limits;
    let fd = stream.as_raw_fd();
    let (mut rd, wr) = stream.into_split();
    let outbox = Rc::new(Outbox::new(usize::MAX));
    outbox.push_control(Bytes::from(response));
    let writer = monoio::spawn(socket::write_loop(wr, outbox.clone(), fd));

    // Autobahn's 9.* cases send messages of up to 16 MiB.
    let max = limits.max_frame_bytes.max(16 << 20);
    let mut decoder = Decoder::new(max, max);
    socket::read_loop(&mut rd, buf, &mut decoder, &outbox, |msg| {
        let frame = match msg {
            Message::Text(data) => ws::encode(OpCode::Text, &data),
            Message::Binary(data) => ws::encode(OpCode::Binary, &data),
            _ => return,
        };
        outbox.push(frame);
    })
    .await;

    outbox.finish();
    drop(rd);
    writer.await;
}

/// The request side of one chat connection.
struct Chat {
    shard: Rc<Shard>,
    id: ConnId,
    user: Arc<User>,
    outbox: Rc<Outbox>,
    /// Chat messages and DMs from this connection.
    messages: Limiter,
    /// Typing events; extra ones are dropped silently (they are ephemeral).
    typing: Limiter,
    joins: Limiter,
    /// History and presence requests.
    reads: Limiter,
    /// Rate-limited requests in a row.
    strikes: u32,
}

/// Which limit a request counts against.
#[derive(Clone, Copy)]
enum Budget {
    Messages,
    Joins,
    Reads,
}

impl Chat {
    fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Text(mut data) => {
                #[cfg(feature = "fault-injection")]
                if &data[..] == br#"{"type":"__panic"}"# {
                    panic!("fault injection: panic requested by the client");
                }
                let mut scratch = self.shard.json_scratch.borrow_mut();
                let parsed = protocol::parse(&mut data, &mut scratch);
                drop(scratch);
                match parsed {
                    Ok(frame) => {
                        let id = frame.id;
                        if let Err(err) = self.handle(frame) {
                            self.send_error(id, &err);
                        }
                    }
                    Err((id, err)) => self.send_error(id.as_deref(), &err),
                }
            }
            Message::Binary(_) => {
                let err = ClientError::new(Code::BadRequest, "binary frames are not supported");
                self.send_error(None, &err);
            }
            _ => {}
        }
    }

    fn handle(&mut self, frame: Frame<'_>) -> Result<(), ClientError> {
        let shared = self.shard.shared.clone();
        let id = frame.id.map(Box::<str>::from);
        match frame.request {
            Request::Ping => self.send(&protocol::pong(frame.id)),

            Request::Join { room, since } => {
                self.rate_limit(Budget::Joins)?;
                self.check_access(room)?;
                let room: Arc<str> = Arc::from(room);
                let max_rooms = shared.config.limits.max_rooms_per_conn;
                let admitted = self.shard.with_conn(self.id.local, |c| {
                    if c.rooms.len() >= max_rooms && !c.rooms.contains(&room) {
                        return false;
                    }
                    c.rooms.insert(room.clone());
                    true
                });
                if admitted != Some(true) {
                    return Err(ClientError::new(Code::BadRequest, "too many rooms joined"));
                }
                let req = JoinReq {
                    room: room.clone(),
                    conn: self.id,
                    user: self.user.clone(),
                    since,
                    id,
                };
                shared.send(shared.owner(&room), ShardMsg::Join(Box::new(req)));
            }

            Request::Leave { room } => {
                let room = self.joined(room)?;
                self.shard
                    .with_conn(self.id.local, |c| c.rooms.remove(&room));
                self.shard.remove_member(&room, self.id.local);
                self.send(&protocol::ack_room(frame.id, &room));
                let msg = ShardMsg::Leave {
                    room: room.clone(),
                    conn: self.id,
                    user: self.user.clone(),
                };
                shared.send(shared.owner(&room), msg);
            }

            Request::Message { room, content } => {
                self.rate_limit(Budget::Messages)?;
                let room = self.joined(room)?;
                let content = self.sanitize(content)?;
                self.publish(room, None, id, content);
            }

            Request::Dm { to, content } => {
                self.rate_limit(Budget::Messages)?;
                check_user_id(to)?;
                let content = self.sanitize(content)?;
                let room: Arc<str> = auth::dm_room(&self.user.id, to).into();
                self.publish(room, Some(Arc::from(to)), id, content);
            }

            Request::Typing { target, state } => {
                if self.typing.check().is_err() {
                    crate::metrics::get()
                        .rate_limited
                        .with_label_values(&["typing"])
                        .inc();
                    return Ok(());
                }
                let json = protocol::typing(&target, &self.user.id, state);
                let frame = ws::encode(OpCode::Text, &json);
                match target {
                    Target::Room(room) => {
                        let room = self.joined(room)?;
                        let msg = ShardMsg::Typing {
                            room: room.clone(),
                            user: self.user.id.clone(),
                            frame,
                        };
                        shared.send(shared.owner(&room), msg);
                    }
                    Target::User(to) => {
                        check_user_id(to)?;
                        // In cluster mode it reaches every node, this one
                        // included, through the user's channel.
                        if let Some(cluster) = &shared.cluster {
                            let topics = vec![crate::cluster::Topic::User(Arc::from(to))];
                            let payload = crate::cluster::wire::user_typing(to, &json);
                            cluster.send(crate::cluster::Cmd::Publish { topics, payload });
                            return Ok(());
                        }
                        let users = vec![Arc::from(to)];
                        for shard in 0..shared.mailboxes.len() {
                            let msg = ShardMsg::DeliverUsers {
                                users: users.clone(),
                                frame: frame.clone(),
                                skip: None,
                            };
                            shared.send(shard, msg);
                        }
                    }
                }
            }

            Request::History {
                target,
                before,
                limit,
            } => {
                self.rate_limit(Budget::Reads)?;
                let limit = limit.min(shared.config.limits.max_history_page);
                let (room, with): (Arc<str>, Option<Box<str>>) = match target {
                    Target::Room(room) => {
                        self.check_access(room)?;
                        (Arc::from(room), None)
                    }
                    Target::User(with) => {
                        check_user_id(with)?;
                        (
                            auth::dm_room(&self.user.id, with).into(),
                            Some(Box::from(with)),
                        )
                    }
                };
                let reply = ReplyTo::Conn { conn: self.id, id };
                let req = HistoryReq {
                    room: room.clone(),
                    with,
                    before,
                    limit,
                    reply,
                };
                shared.send(shared.owner(&room), ShardMsg::History(Box::new(req)));
            }

            Request::Presence { room } => {
                self.rate_limit(Budget::Reads)?;
                self.check_access(room)?;
                let room: Arc<str> = Arc::from(room);
                let reply = ReplyTo::Conn { conn: self.id, id };
                shared.send(shared.owner(&room), ShardMsg::Presence { room, reply });
            }
        }
        Ok(())
    }

    /// Hand a message or DM to its room's owner, which stores it and acks.
    fn publish(&self, room: Arc<str>, to: Option<Arc<str>>, id: Option<Box<str>>, content: String) {
        let shared = &self.shard.shared;
        shared.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        self.shard.metrics.messages_in.inc();
        let reply = ReplyTo::Conn {
            conn: self.id,
            id: id.clone(),
        };
        let owner = shared.owner(&room);
        let req = PublishReq {
            room,
            to,
            user: self.user.clone(),
            origin: Some(self.id),
            id,
            content,
            reply,
        };
        shared.send(owner, ShardMsg::Publish(Box::new(req)));
    }

    /// A room id this user may use.
    fn check_access(&self, room: &str) -> Result<(), ClientError> {
        if !auth::valid_room_id(room) {
            return Err(ClientError::new(Code::BadRequest, "invalid room id"));
        }
        if !self.shard.shared.verifier.may_join(&self.user, room) {
            return Err(ClientError::new(
                Code::Forbidden,
                "not allowed in this room",
            ));
        }
        Ok(())
    }

    /// The connection's own handle of a room it has joined.
    fn joined(&self, room: &str) -> Result<Arc<str>, ClientError> {
        self.shard
            .with_conn(self.id.local, |c| c.rooms.get(room).cloned())
            .flatten()
            .ok_or_else(|| ClientError::new(Code::NotJoined, "join the room first"))
    }

    fn sanitize(&self, raw: &str) -> Result<String, ClientError> {
        let config = &self.shard.shared.config;
        content::sanitize(raw, config.content_policy, config.limits.max_message_bytes)
    }

    /// Count a request against its budget (and, for chat messages, against
    /// the user's budget across connections).
    fn rate_limit(&mut self, budget: Budget) -> Result<(), ClientError> {
        let limiter = match budget {
            Budget::Messages => &self.messages,
            Budget::Joins => &self.joins,
            Budget::Reads => &self.reads,
        };
        // Read the limiter's own clock, and only on a refusal: building a
        // clock costs ~19 µs (it calibrates the TSC), which per message was a
        // measurable share of the server's CPU.
        let mut wait = limiter.check().err().map(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()))
        });
        if wait.is_none() && matches!(budget, Budget::Messages) {
            wait = self
                .shard
                .shared
                .admission
                .user_message(&self.user.id)
                .err();
        }

        let Some(wait) = wait else {
            self.strikes = 0;
            return Ok(());
        };
        let label = match budget {
            Budget::Messages => "messages",
            Budget::Joins => "joins",
            Budget::Reads => "reads",
        };
        crate::metrics::get()
            .rate_limited
            .with_label_values(&[label])
            .inc();
        self.strikes += 1;
        if self.strikes > FLOOD_STRIKES {
            tracing::info!(conn = %self.id, user = %self.user.id, "flooding client closed");
            self.outbox.close(1008, "rate limit exceeded");
        }
        let mut err = ClientError::new(Code::RateLimited, "too many requests");
        err.retry_after_ms = Some(wait.as_millis().max(1) as u64);
        Err(err)
    }

    fn send(&self, json: &[u8]) {
        self.outbox.push(ws::encode(OpCode::Text, json));
    }

    fn send_error(&self, id: Option<&str>, err: &ClientError) {
        tracing::trace!(conn = %self.id, code = err.code.as_str(), "request refused");
        self.send(&protocol::error(id, err));
    }
}

fn check_user_id(user: &str) -> Result<(), ClientError> {
    if user.is_empty() || user.len() > auth::MAX_USER_ID_BYTES {
        return Err(ClientError::new(Code::BadRequest, "invalid user id"));
    }
    Ok(())
}
