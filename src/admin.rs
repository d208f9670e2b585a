//! The admin HTTP API, for the application's backend (`--admin-key`):
//!
//! - `POST /admin/rooms/{room}/messages` `{"content", "from"?: {"id","name"}, "id"?}`
//!   publishes into a room as a system user and answers with the ack;
//! - `POST /admin/users/{user}/disconnect` closes every connection of a user
//!   (close code 4001);
//! - `GET /admin/rooms/{room}` answers with the room's last seq and members.
//!
//! Documented in `docs/API.md`. Requests carry `Authorization: Bearer <key>`;
//! without `--admin-key` every admin path is a 404.

use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use serde::Deserialize;

use crate::auth::{self, Role, User};
use crate::http::{respond, send, Head};
use crate::protocol::Code;
use crate::shard::{PublishReq, ReplyTo, Shard, ShardMsg};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
struct Publish {
    content: String,
    #[serde(default)]
    from: Option<From>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct From {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

/// Serve `/admin/...`.
pub async fn serve(shard: Rc<Shard>, stream: &mut TcpStream, head: &Head, rest: BytesMut) {
    let Some(key) = &shard.shared.config.admin_key else {
        return respond(stream, 404, "not found", "").await;
    };
    let given = head.bearer().unwrap_or("");
    if !constant_time_eq(given.as_bytes(), key.0.as_bytes()) {
        shard.note_refused(crate::admission::Refusal::Auth, "bad admin key");
        return respond(stream, 401, "bad admin key", "").await;
    }

    let path: Vec<String> = head.path["/admin/".len()..]
        .split('/')
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match (head.method.as_str(), parts.as_slice()) {
        ("POST", ["rooms", room, "messages"]) => {
            let body = match read_body(stream, head, rest).await {
                Ok(b) => b,
                Err((status, why)) => return respond(stream, status, why, "").await,
            };
            publish(&shard, stream, room, &body).await
        }
        ("POST", ["users", user, "disconnect"]) => {
            let user: Arc<str> = Arc::from(&**user);
            for shard_id in 0..shard.shared.mailboxes.len() {
                shard
                    .shared
                    .send(shard_id, ShardMsg::Disconnect { user: user.clone() });
            }
            tracing::info!(user = %user, "admin: user disconnected");
            send(
                stream,
                202,
                "application/json",
                br#"{"disconnecting":true}"#,
                "",
            )
            .await
        }
        ("GET", ["rooms", room]) => {
            if !auth::valid_room_id(room) {
                return respond(stream, 400, "invalid room id", "").await;
            }
            let (tx, rx) = futures_channel::oneshot::channel();
            let room: Arc<str> = Arc::from(&**room);
            let msg = ShardMsg::RoomInfo {
                room: room.clone(),
                reply: ReplyTo::Http(tx),
            };
            shard.shared.send(shard.shared.owner(&room), msg);
            answer(stream, rx.await).await
        }
        _ => respond(stream, 404, "not found", "").await,
    }
}

async fn publish(shard: &Shard, stream: &mut TcpStream, room: &str, body: &[u8]) {
    let req: Publish = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return respond(stream, 400, &format!("invalid body: {e}"), "").await,
    };
    if !auth::valid_room_id(room) {
        return respond(stream, 400, "invalid room id", "").await;
    }
    let config = &shard.shared.config;
    let content = match crate::content::sanitize(
        &req.content,
        config.content_policy,
        config.limits.max_message_bytes,
    ) {
        Ok(c) => c,
        Err(e) => return respond(stream, 400, &e.message, "").await,
    };
    if req
        .id
        .as_ref()
        .is_some_and(|id| id.len() > crate::protocol::MAX_ID_BYTES)
    {
        return respond(stream, 400, "id longer than 64 bytes", "").await;
    }

    // The sender is the application itself, shown as an admin user.
    let from = req.from.unwrap_or(From {
        id: "system".into(),
        name: Some("System".into()),
    });
    let name = from.name.unwrap_or_else(|| from.id.clone());
    let user = Arc::new(User {
        id: Arc::from(from.id),
        name,
        role: Role::Admin,
        rooms: None,
    });

    let (tx, rx) = futures_channel::oneshot::channel();
    let room: Arc<str> = Arc::from(room);
    let publish = PublishReq {
        room: room.clone(),
        to: None,
        user,
        origin: None,
        id: req.id.map(Box::from),
        content,
        reply: ReplyTo::Http(tx),
    };
    shard.shared.send(
        shard.shared.owner(&room),
        ShardMsg::Publish(Box::new(publish)),
    );
    answer(stream, rx.await).await
}

async fn answer(
    stream: &mut TcpStream,
    result: Result<
        Result<Vec<u8>, crate::protocol::ClientError>,
        futures_channel::oneshot::Canceled,
    >,
) {
    match result {
        Ok(Ok(body)) => send(stream, 200, "application/json", &body, "").await,
        Ok(Err(e)) if e.code == Code::Unavailable => respond(stream, 503, &e.message, "").await,
        Ok(Err(e)) => respond(stream, 400, &e.message, "").await,
        Err(_) => respond(stream, 503, "server shutting down", "").await,
    }
}

/// Read a `Content-Length` body (the admin API's bodies are small JSON).
async fn read_body(
    stream: &mut TcpStream,
    head: &Head,
    mut buf: BytesMut,
) -> Result<Vec<u8>, (u16, &'static str)> {
    let len: usize = head
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or((411, "Content-Length required"))?;
    if len > MAX_BODY {
        return Err((413, "body too large"));
    }
    while buf.len() < len {
        buf.reserve(len - buf.len());
        let (n, cap) = (buf.len(), buf.capacity());
        let (res, slice) = stream.read(buf.slice_mut(n..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Err((400, "body ended early")),
            Ok(_) => {}
        }
    }
    buf.truncate(len);
    Ok(buf.to_vec())
}

/// Compare secrets without an early exit, so timing does not reveal how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn secrets_compare_exactly() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
