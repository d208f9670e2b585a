//! The frames of chat protocol v1 (`PROTOCOL.md`): client requests parsed
//! with simd-json in place, server frames written as JSON text, and the error
//! codes. Nothing else: routing and state live in `shard`.

use std::borrow::Cow;

use serde::Deserialize;

use crate::auth::User;

/// Longest request `id` a client may choose, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// Default and largest `limit` of a history page.
pub const DEFAULT_PAGE: usize = 50;

/// The error codes of `PROTOCOL.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotJoined,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotJoined => "not_joined",
            Code::TooLarge => "too_large",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }
}

/// An error answered to one request; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: Code,
    pub message: Cow<'static, str>,
    pub retry_after_ms: Option<u64>,
}

impl ClientError {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> ClientError {
        ClientError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// What a `typing` or `history` request is about: a room, or a DM partner.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Room(&'a str),
    User(&'a str),
}

/// A parsed client request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Join {
        room: &'a str,
        since: Option<u64>,
    },
    Leave {
        room: &'a str,
    },
    Message {
        room: &'a str,
        content: &'a str,
    },
    Dm {
        to: &'a str,
        content: &'a str,
    },
    Typing {
        target: Target<'a>,
        state: bool,
    },
    History {
        target: Target<'a>,
        before: Option<u64>,
        limit: usize,
    },
    Presence {
        room: &'a str,
    },
    Ping,
}

/// A request and the client's `id` for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub id: Option<&'a str>,
    pub request: Request<'a>,
}

/// The union of every request's fields. simd-json unescapes strings in place,
/// so borrowed `&str` works even for content with escapes.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(borrow)]
    room: Option<&'a str>,
    #[serde(borrow)]
    to: Option<&'a str>,
    #[serde(borrow)]
    with: Option<&'a str>,
    #[serde(borrow)]
    content: Option<&'a str>,
    since: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
    state: Option<bool>,
}

/// Parse one client text frame, in place. On error, the `id` is returned too
/// when it could be read, so that the error can repeat it.
pub fn parse<'a>(
    buf: &'a mut [u8],
    scratch: &mut simd_json::Buffers,
) -> Result<Frame<'a>, (Option<String>, ClientError)> {
    let raw: Raw<'a> = simd_json::serde::from_slice_with_buffers(buf, scratch).map_err(|e| {
        let msg = if e.to_string().contains("expected") || e.to_string().contains("invalid type") {
            "a field has the wrong type"
        } else {
            "invalid JSON"
        };
        (None, ClientError::new(Code::BadRequest, msg))
    })?;

    let id = raw.id;
    let fail = |code, msg: &'static str| (id.map(str::to_owned), ClientError::new(code, msg));
    if id.is_some_and(|id| id.len() > MAX_ID_BYTES) {
        return Err((
            None,
            ClientError::new(Code::BadRequest, "id longer than 64 bytes"),
        ));
    }

    let need = |v: Option<&'a str>, msg| v.ok_or_else(|| fail(Code::BadRequest, msg));
    let request = match raw.kind {
        Some("join") => Request::Join {
            room: need(raw.room, "missing room")?,
            since: raw.since,
        },
        Some("leave") => Request::Leave {
            room: need(raw.room, "missing room")?,
        },
        Some("message") => Request::Message {
            room: need(raw.room, "missing room")?,
            content: need(raw.content, "missing content")?,
        },
        Some("dm") => Request::Dm {
            to: need(raw.to, "missing to")?,
            content: need(raw.content, "missing content")?,
        },
        Some("typing") => {
            let target = match (raw.room, raw.to) {
                (Some(room), None) => Target::Room(room),
                (None, Some(to)) => Target::User(to),
                _ => return Err(fail(Code::BadRequest, "typing needs room or to")),
            };
            let state = raw
                .state
                .ok_or_else(|| fail(Code::BadRequest, "missing state"))?;
            Request::Typing { target, state }
        }
        Some("history") => {
            let target = match (raw.room, raw.with) {
                (Some(room), None) => Target::Room(room),
                (None, Some(with)) => Target::User(with),
                _ => return Err(fail(Code::BadRequest, "history needs room or with")),
            };
            let limit = match raw.limit {
                None => DEFAULT_PAGE,
                Some(n @ 1..=100) => n as usize,
                Some(_) => return Err(fail(Code::BadRequest, "limit must be 1..100")),
            };
            Request::History {
                target,
                before: raw.before,
                limit,
            }
        }
        Some("presence") => Request::Presence {
            room: need(raw.room, "missing room")?,
        },
        Some("ping") => Request::Ping,
        Some(_) => return Err(fail(Code::BadRequest, "unknown type")),
        None => return Err(fail(Code::BadRequest, "missing type")),
    };
    Ok(Frame { id, request })
}

// ---- Server frames -------------------------------------------------------
//
// Written by hand into a byte buffer: each frame is small and flat, and the
// broadcast frame is built once per message, so a serializer's generic
// machinery buys nothing. Strings go through serde_json for correct escaping.

/// Append `s` as a JSON string literal.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's writer never fails on a Vec.
    serde_json::to_writer(&mut *out, s).expect("write to Vec");
}

/// A user as presence shows it: `{"id","name","role"}`.
pub fn user_json(user: &User) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    push_user(&mut out, user);
    out
}

fn push_user(out: &mut Vec<u8>, user: &User) {
    out.extend_from_slice(b"{\"id\":");
    push_str(out, &user.id);
    out.extend_from_slice(b",\"name\":");
    push_str(out, &user.name);
    out.extend_from_slice(b",\"role\":\"");
    out.extend_from_slice(user.role.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_id(out: &mut Vec<u8>, id: Option<&str>) {
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        push_str(out, id);
    }
}

/// `{"type":"welcome",...}`
pub fn welcome(conn: &str, user: &User, now_ms: u64, limits: &crate::config::Limits) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":\"welcome\",\"conn\":");
    push_str(&mut out, conn);
    out.extend_from_slice(b",\"user\":");
    push_user(&mut out, user);
    out.extend_from_slice(b",\"server_time\":");
    push_u64(&mut out, now_ms);
    out.extend_from_slice(b",\"limits\":{\"max_message_bytes\":");
    push_u64(&mut out, limits.max_message_bytes as u64);
    out.extend_from_slice(b",\"messages_per_sec\":");
    push_u64(&mut out, limits.messages_per_sec as u64);
    out.extend_from_slice(b",\"message_burst\":");
    push_u64(&mut out, limits.message_burst as u64);
    out.extend_from_slice(b",\"max_rooms\":");
    push_u64(&mut out, limits.max_rooms_per_conn as u64);
    out.extend_from_slice(b"}}");
    out
}

/// What a stored chat message is: a room `message` or a direct `dm`.
pub enum Posted<'a> {
    Room(&'a str),
    Dm { to: &'a str },
}

/// The broadcast frame of a message or DM. It is also what the history
/// store keeps, byte for byte, and what history pages return.
pub fn posted(
    kind: &Posted<'_>,
    seq: u64,
    ts: u64,
    from: &User,
    content: &str,
    id: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + content.len());
    match kind {
        Posted::Room(room) => {
            out.extend_from_slice(b"{\"type\":\"message\",\"room\":");
            push_str(&mut out, room);
        }
        Posted::Dm { .. } => out.extend_from_slice(b"{\"type\":\"dm\""),
    }
    out.extend_from_slice(b",\"seq\":");
    push_u64(&mut out, seq);
    out.extend_from_slice(b",\"ts\":");
    push_u64(&mut out, ts);
    out.extend_from_slice(b",\"from\":");
    push_user(&mut out, from);
    if let Posted::Dm { to } = kind {
        out.extend_from_slice(b",\"to\":");
        push_str(&mut out, to);
    }
    out.extend_from_slice(b",\"content\":");
    push_str(&mut out, content);
    push_id(&mut out, id);
    out.push(b'}');
    out
}

/// `{"type":"ack","id":..,"room":..,"seq":..,"ts":..}` for a stored message.
pub fn ack_posted(id: Option<&str>, room: &str, seq: u64, ts: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"ack\"");
    push_id(&mut out, id);
    out.extend_from_slice(b",\"room\":");
    push_str(&mut out, room);
    out.extend_from_slice(b",\"seq\":");
    push_u64(&mut out, seq);
    out.extend_from_slice(b",\"ts\":");
    push_u64(&mut out, ts);
    out.push(b'}');
    out
}

/// A plain ack (leave): `{"type":"ack","id":..,"room":..}`.
pub fn ack_room(id: Option<&str>, room: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"type\":\"ack\"");
    push_id(&mut out, id);
    out.extend_from_slice(b",\"room\":");
    push_str(&mut out, room);
    out.push(b'}');
    out
}

/// The ack of a join or a presence request: members and, for a join, the
/// room's last seq.
pub fn ack_members<'u>(
    id: Option<&str>,
    room: &str,
    members: impl Iterator<Item = &'u User>,
    last_seq: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":\"ack\"");
    push_id(&mut out, id);
    out.extend_from_slice(b",\"room\":");
    push_str(&mut out, room);
    out.extend_from_slice(b",\"members\":[");
    for (i, user) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_user(&mut out, user);
    }
    out.push(b']');
    if let Some(seq) = last_seq {
        out.extend_from_slice(b",\"last_seq\":");
        push_u64(&mut out, seq);
    }
    out.push(b'}');
    out
}

/// `{"type":"presence","room":..,"user":{..},"status":"online"|"offline"}`
pub fn presence_event(room: &str, user: &User, online: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"type\":\"presence\",\"room\":");
    push_str(&mut out, room);
    out.extend_from_slice(b",\"user\":");
    push_user(&mut out, user);
    out.extend_from_slice(if online {
        b",\"status\":\"online\"}"
    } else {
        b",\"status\":\"offline\"}"
    });
    out
}

/// A typing event, in a room or towards one user.
pub fn typing(target: &Target<'_>, user: &str, state: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"typing\",");
    match target {
        Target::Room(room) => {
            out.extend_from_slice(b"\"room\":");
            push_str(&mut out, room);
        }
        Target::User(to) => {
            out.extend_from_slice(b"\"to\":");
            push_str(&mut out, to);
        }
    }
    out.extend_from_slice(b",\"user\":");
    push_str(&mut out, user);
    out.extend_from_slice(if state {
        b",\"state\":true}"
    } else {
        b",\"state\":false}"
    });
    out
}

/// A history page: `messages` are stored frames, newest first.
pub fn history<'m>(
    id: Option<&str>,
    target: &Target<'_>,
    messages: impl Iterator<Item = &'m [u8]>,
    has_more: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"type\":\"history\"");
    push_id(&mut out, id);
    match target {
        Target::Room(room) => {
            out.extend_from_slice(b",\"room\":");
            push_str(&mut out, room);
        }
        Target::User(with) => {
            out.extend_from_slice(b",\"with\":");
            push_str(&mut out, with);
        }
    }
    out.extend_from_slice(b",\"messages\":[");
    for (i, m) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.extend_from_slice(if has_more {
        b"],\"has_more\":true}"
    } else {
        b"],\"has_more\":false}"
    });
    out
}

/// `{"type":"pong"}`, repeating the id when there was one.
pub fn pong(id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"{\"type\":\"pong\"");
    push_id(&mut out, id);
    out.push(b'}');
    out
}

/// `{"type":"error","id":..,"code":..,"message":..}`
pub fn error(id: Option<&str>, err: &ClientError) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"error\"");
    push_id(&mut out, id);
    out.extend_from_slice(b",\"code\":\"");
    out.extend_from_slice(err.code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    push_str(&mut out, &err.message);
    if let Some(ms) = err.retry_after_ms {
        out.extend_from_slice(b",\"retry_after_ms\":");
        push_u64(&mut out, ms);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn parse_str(s: &str) -> Result<String, (Option<String>, ClientError)> {
        let mut buf = s.as_bytes().to_vec();
        let mut scratch = simd_json::Buffers::default();
        parse(&mut buf, &mut scratch).map(|f| format!("{:?}", f))
    }

    #[test]
    fn parses_each_request() {
        let mut scratch = simd_json::Buffers::default();
        let mut b = br#"{"type":"join","room":"r1","since":5,"id":"c1","extra":[1]}"#.to_vec();
        let f = parse(&mut b, &mut scratch).unwrap();
        assert_eq!(f.id, Some("c1"));
        assert_eq!(
            f.request,
            Request::Join {
                room: "r1",
                since: Some(5)
            }
        );

        let mut b = br#"{"type":"message","room":"r","content":"a\"b\n\u00e9"}"#.to_vec();
        let f = parse(&mut b, &mut scratch).unwrap();
        assert_eq!(
            f.request,
            Request::Message {
                room: "r",
                content: "a\"b\n\u{e9}"
            }
        );

        let mut b = br#"{"type":"history","with":"u2","before":9}"#.to_vec();
        let f = parse(&mut b, &mut scratch).unwrap();
        assert_eq!(
            f.request,
            Request::History {
                target: Target::User("u2"),
                before: Some(9),
                limit: DEFAULT_PAGE
            }
        );

        let mut b = br#"{"type":"typing","to":"u2","state":true}"#.to_vec();
        let f = parse(&mut b, &mut scratch).unwrap();
        assert_eq!(
            f.request,
            Request::Typing {
                target: Target::User("u2"),
                state: true
            }
        );
    }

    #[test]
    fn bad_frames_are_bad_requests_with_id_when_readable() {
        let (id, err) = parse_str("{not json").unwrap_err();
        assert_eq!((id, err.code), (None, Code::BadRequest));

        let (id, err) = parse_str(r#"{"type":"nope","id":"x"}"#).unwrap_err();
        assert_eq!((id.as_deref(), err.code), (Some("x"), Code::BadRequest));
        assert_eq!(err.message, "unknown type");

        let (id, err) = parse_str(r#"{"type":"message","room":"r","id":"m"}"#).unwrap_err();
        assert_eq!(
            (id.as_deref(), &*err.message),
            (Some("m"), "missing content")
        );

        let (_, err) = parse_str(r#"{"type":"history","room":"r","limit":0}"#).unwrap_err();
        assert_eq!(err.message, "limit must be 1..100");

        let (_, err) = parse_str(r#"{"type":"join","room":5}"#).unwrap_err();
        assert_eq!(err.code, Code::BadRequest);

        let long = "x".repeat(MAX_ID_BYTES + 1);
        let (id, _) = parse_str(&format!(r#"{{"type":"ping","id":"{long}"}}"#)).unwrap_err();
        assert_eq!(id, None);
    }

    #[test]
    fn server_frames_are_valid_json() {
        let user = User {
            id: "u\"1".into(),
            name: "A<b>".into(),
            role: Role::Teacher,
            rooms: None,
        };
        let frames = [
            posted(
                &Posted::Room("r"),
                3,
                7,
                &user,
                "hi \"there\"\n",
                Some("c1"),
            ),
            posted(&Posted::Dm { to: "u2" }, 1, 7, &user, "x", None),
            ack_posted(Some("c1"), "r", 3, 7),
            ack_members(None, "r", [&user, &user].into_iter(), Some(3)),
            presence_event("r", &user, false),
            typing(&Target::Room("r"), "u1", true),
            history(
                Some("h"),
                &Target::Room("r"),
                [&b"{}"[..], &b"{}"[..]].into_iter(),
                true,
            ),
            error(
                Some("e"),
                &ClientError {
                    retry_after_ms: Some(5),
                    ..ClientError::new(Code::RateLimited, "slow down")
                },
            ),
            pong(None),
        ];
        for f in frames {
            let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
            assert!(v["type"].is_string(), "{v}");
        }
        let v: serde_json::Value =
            serde_json::from_slice(&posted(&Posted::Room("r"), 3, 7, &user, "c", Some("i")))
                .unwrap();
        assert_eq!(v["from"]["id"], "u\"1");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["id"], "i");
    }
}
