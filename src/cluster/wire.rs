//! Redis key and channel names, and the payloads nodes publish to each
//! other. Payloads are bytes, not JSON, so that a message's frame JSON
//! travels as it is and is never parsed on the way:
//!
//! - `M<seq> <len> <room><frame json>`: a committed message or DM;
//! - `S<seq> <len> <room>`: a seq nobody will store;
//! - `T<len> <room><len> <user><frame json>`: a typing event in a room;
//! - `U<len> <user><frame json>`: a typing event for a user (DMs);
//! - `J<room>\n<user json>` and `L<room>\n<user json>`: presence, written by
//!   the Lua scripts (room ids never hold a newline: `auth::valid_room_id`).
//!
//! `<len>` is the room id's length in bytes: DM pair room ids carry user ids,
//! which may hold any character.

use std::sync::Arc;

use bytes::Bytes;

use super::{Remote, Topic};
use crate::auth::{Role, User};

/// Every key and channel starts with this, so that hubbub can share a
/// Redis with other users.
pub const PREFIX: &str = "hubbub:";

pub fn channel(topic: &Topic) -> Vec<u8> {
    match topic {
        Topic::Room(room) => key("r:", room),
        Topic::User(user) => key("u:", user),
    }
}

/// The topic a channel name belongs to.
pub fn topic(channel: &[u8]) -> Option<Topic> {
    let rest = channel.strip_prefix(PREFIX.as_bytes())?;
    let name = |b: &[u8]| std::str::from_utf8(b).ok().map(Arc::from);
    match rest {
        [b'r', b':', room @ ..] => Some(Topic::Room(name(room)?)),
        [b'u', b':', user @ ..] => Some(Topic::User(name(user)?)),
        _ => None,
    }
}

/// Where the reaper announces a dead node (`D<node>`): every node then
/// catches up its rooms from the store. (`PREFIX` + `n`, as the REAP script
/// spells it; a constant, since every push is compared with it.)
pub const NODES_CHANNEL: &[u8] = b"hubbub:n";

/// `hubbub:<kind><name>`.
pub fn key(kind: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + kind.len() + name.len());
    k.extend_from_slice(PREFIX.as_bytes());
    k.extend_from_slice(kind.as_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// The per-user node set of a room's presence: `hubbub:pn:<room>\n<user>`.
pub fn presence_nodes_key(room: &str, user: &str) -> Vec<u8> {
    let mut k = key("pn:", room);
    k.push(b'\n');
    k.extend_from_slice(user.as_bytes());
    k
}

/// A node's members of a room: `hubbub:nu:<node>\n<room>`.
pub fn node_users_key(node: &str, room: &str) -> Vec<u8> {
    let mut k = key("nu:", node);
    k.push(b'\n');
    k.extend_from_slice(room.as_bytes());
    k
}

pub fn message(room: &str, seq: u64, json: &[u8]) -> Bytes {
    let mut out = header(b'M', room, seq);
    out.extend_from_slice(json);
    out.into()
}

pub fn skip(room: &str, seq: u64) -> Bytes {
    header(b'S', room, seq).into()
}

fn header(kind: u8, room: &str, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + room.len());
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(room.len()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(room.as_bytes());
    out
}

pub fn typing(room: &str, user: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(16 + room.len() + user.len() + json.len());
    out.push(b'T');
    for name in [room, user] {
        out.extend_from_slice(itoa::Buffer::new().format(name.len()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(json);
    out.into()
}

pub fn user_typing(to: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(8 + to.len() + json.len());
    out.push(b'U');
    out.extend_from_slice(itoa::Buffer::new().format(to.len()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(json);
    out.into()
}

/// A presence event as the scripts publish it.
pub fn presence(online: bool, room: &str, user_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + room.len() + user_json.len());
    out.push(if online { b'J' } else { b'L' });
    out.extend_from_slice(room.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(user_json);
    out
}

/// Read a published payload; None for anything malformed (another program
/// publishing on our channels), which the caller drops.
pub fn decode(payload: Bytes) -> Option<Remote> {
    let kind = *payload.first()?;
    match kind {
        b'M' | b'S' => {
            let (seq, rest) = number(&payload[1..], b' ')?;
            let (len, rest) = number(rest, b' ')?;
            let len = usize::try_from(len).ok()?;
            let room = rest.get(..len)?;
            let room: Arc<str> = Arc::from(std::str::from_utf8(room).ok()?);
            if kind == b'S' {
                return Some(Remote::Skip { room, seq });
            }
            let start = payload.len() - (rest.len() - len);
            let json = payload.slice(start..);
            Some(Remote::Message { room, seq, json })
        }
        b'T' => {
            let (room, rest) = sized(&payload[1..])?;
            let (user, rest) = sized(rest)?;
            let json = payload.slice(payload.len() - rest.len()..);
            Some(Remote::Typing { room, user, json })
        }
        b'U' => {
            let (to, rest) = sized(&payload[1..])?;
            let json = payload.slice(payload.len() - rest.len()..);
            Some(Remote::UserTyping { to, json })
        }
        b'J' | b'L' => {
            let body = &payload[1..];
            let nl = body.iter().position(|b| *b == b'\n')?;
            let room = Arc::from(std::str::from_utf8(&body[..nl]).ok()?);
            let user = Arc::new(parse_user(&body[nl + 1..])?);
            let online = kind == b'J';
            Some(Remote::Presence { room, user, online })
        }
        _ => None,
    }
}

/// A user from its presence JSON (see `protocol::user_json`).
pub fn parse_user(json: &[u8]) -> Option<User> {
    #[derive(serde::Deserialize)]
    struct Wire {
        id: String,
        name: String,
        role: String,
    }
    let w: Wire = serde_json::from_slice(json).ok()?;
    Some(User {
        id: Arc::from(w.id),
        name: w.name,
        role: Role::parse(&w.role)?,
        rooms: None,
    })
}

/// A `<len> <name>` pair, and what follows it.
fn sized(b: &[u8]) -> Option<(Arc<str>, &[u8])> {
    let (len, rest) = number(b, b' ')?;
    let len = usize::try_from(len).ok()?;
    let name = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some((Arc::from(name), &rest[len..]))
}

/// A decimal number ending at `end`, and what follows the end byte.
fn number(b: &[u8], end: u8) -> Option<(u64, &[u8])> {
    let at = b.iter().position(|c| *c == end)?;
    let n = std::str::from_utf8(&b[..at]).ok()?.parse().ok()?;
    Some((n, &b[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_with_any_room_id() {
        let room = "dm:a b\n:c%3A";
        let payload = message(room, 42, br#"{"type":"dm"}"#);
        match decode(payload) {
            Some(Remote::Message { room: r, seq, json }) => {
                assert_eq!(&*r, room);
                assert_eq!(seq, 42);
                assert_eq!(&json[..], br#"{"type":"dm"}"#);
            }
            _ => panic!("not a message"),
        }
        match decode(skip("course:1", 7)) {
            Some(Remote::Skip { room, seq }) => assert_eq!((&*room, seq), ("course:1", 7)),
            _ => panic!("not a skip"),
        }
    }

    #[test]
    fn typing_names_room_and_user() {
        match decode(typing("course:1", "u 2", br#"{"type":"typing"}"#)) {
            Some(Remote::Typing { room, user, json }) => {
                assert_eq!((&*room, &*user), ("course:1", "u 2"));
                assert_eq!(&json[..], br#"{"type":"typing"}"#);
            }
            _ => panic!("not typing"),
        }
        match decode(user_typing("ben", b"{}")) {
            Some(Remote::UserTyping { to, json }) => {
                assert_eq!((&*to, &json[..]), ("ben", &b"{}"[..]))
            }
            _ => panic!("not user typing"),
        }
    }

    #[test]
    fn presence_carries_the_user() {
        let user = User {
            id: "u\"1".into(),
            name: "Ana".into(),
            role: Role::Teacher,
            rooms: None,
        };
        let payload = presence(false, "course:9", &crate::protocol::user_json(&user));
        match decode(payload.into()) {
            Some(Remote::Presence {
                room,
                user: u,
                online,
            }) => {
                assert_eq!(&*room, "course:9");
                assert_eq!(
                    (&*u.id, u.name.as_str(), u.role),
                    ("u\"1", "Ana", Role::Teacher)
                );
                assert!(!online);
            }
            _ => panic!("not presence"),
        }
    }

    #[test]
    fn malformed_payloads_are_dropped() {
        for bad in [
            &b""[..],
            b"M",
            b"M12 99 short",
            b"Mx 1 a",
            b"Jnoline",
            b"Q1 1 a",
            b"J1\n{}",
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_nodes_channel_uses_the_prefix() {
        assert_eq!(NODES_CHANNEL, &key("n", "")[..]);
    }

    #[test]
    fn channels_name_their_topic() {
        let t = Topic::User("ana".into());
        assert_eq!(topic(&channel(&t)), Some(t));
        assert_eq!(topic(b"other:r:x"), None);
    }
}
