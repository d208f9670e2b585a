//! HTTP/1.1 on the WebSocket port: reading a request head, the upgrade routes
//! (`/ws/chat`, `/ws/echo`), `/health`, `/ready` and the REST history API.
//!
//! # Limits
//!
//! Plain HTTP requests are answered with `Connection: close` (no keep-alive)
//! and may not carry a body: the API here is a few small GETs, and the hot
//! path is the WebSocket.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::admission::Refusal;
use crate::auth::{self, AuthError};
use crate::conn;
use crate::protocol::{Code, DEFAULT_PAGE};
use crate::shard::{HistoryReq, ReplyTo, Shard, ShardMsg};
use crate::ws;

/// Largest request head accepted (431 above it).
const MAX_HEAD: usize = 16 * 1024;

/// Most headers parsed in one request.
const MAX_HEADERS: usize = 64;

/// A parsed request head, owned so the socket can be used afterwards.
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }

    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The bearer token of `Authorization`.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header_str("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    Malformed,
    Closed,
}

/// Parse a request head from the start of `buf`: `Ok(None)` when more bytes
/// are needed, else the head and its length in bytes. Pure, so that it can
/// be fuzzed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (target.to_owned(), None),
            };
            let head = Head {
                method: req.method.unwrap_or("").to_owned(),
                path,
                query,
                version: req.version.unwrap_or(0),
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
            };
            Ok(Some((head, n)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Read until the end of the head; returns it and any bytes read past it.
async fn read_head(stream: &mut TcpStream) -> Result<(Head, BytesMut), HeadError> {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(2048);
        }
        let (len, cap) = (buf.len(), buf.capacity().min(MAX_HEAD));
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(_) => {}
        }
        if let Some((head, n)) = parse_head(&buf)? {
            let rest = buf.split_off(n);
            return Ok((head, rest));
        }
    }
}

/// Turn a connection away before serving it: read its head briefly (closing
/// with unread input would reset the socket and lose the answer), then
/// answer with the refusal's status.
pub async fn refuse_early(mut stream: TcpStream, why: Refusal) {
    let wait = std::time::Duration::from_secs(1);
    if let Ok(Err(HeadError::Closed)) = monoio::time::timeout(wait, read_head(&mut stream)).await {
        return;
    }
    respond(
        &mut stream,
        why.status(),
        why.message(),
        "Retry-After: 1\r\n",
    )
    .await;
}

/// Serve one accepted TCP connection.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let timeout = shard.shared.config.handshake_timeout;
    let (head, rest) = match monoio::time::timeout(timeout, read_head(&mut stream)).await {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(HeadError::TooLarge)) => {
            return respond(&mut stream, 431, "request header fields too large", "").await;
        }
        Ok(Err(HeadError::Malformed)) => {
            return respond(&mut stream, 400, "malformed request", "").await
        }
        Ok(Err(HeadError::Closed)) => return,
        Err(_) => return respond(&mut stream, 408, "request timeout", "").await,
    };

    match (head.method.as_str(), head.path.as_str()) {
        (_, "/ws/chat") => upgrade_chat(shard, stream, head, rest).await,
        (_, "/ws/echo") if shard.shared.config.echo_endpoint => {
            upgrade_echo(shard, stream, head, rest).await
        }
        ("GET", "/health") => {
            let body = health(&shard);
            send(&mut stream, 200, "application/json", body.as_bytes(), "").await;
        }
        ("GET", "/ready") => {
            let (status, body) = if shard.shared.ready() {
                (200, r#"{"ready":true}"#)
            } else {
                (503, r#"{"ready":false}"#)
            };
            send(&mut stream, status, "application/json", body.as_bytes(), "").await;
        }
        ("GET", path) if is_api(path) => api_history(shard, &mut stream, &head).await,
        (_, path) if path.starts_with("/admin/") => {
            crate::admin::serve(shard, &mut stream, &head, rest).await
        }
        ("GET", "/metrics") => {
            let m = crate::metrics::get();
            m.history_queue.set(shard.shared.writer.queue_len() as i64);
            let body = m.render();
            send(&mut stream, 200, "text/plain; version=0.0.4", &body, "").await;
        }
        ("GET", "/hubbub.js") => {
            let js = include_str!("../clients/js/hubbub.js");
            send(
                &mut stream,
                200,
                "text/javascript; charset=utf-8",
                js.as_bytes(),
                "",
            )
            .await;
        }
        ("GET", "/") if shard.shared.config.demo => {
            let html = include_str!("demo/index.html");
            send(
                &mut stream,
                200,
                "text/html; charset=utf-8",
                html.as_bytes(),
                "",
            )
            .await;
        }
        ("GET", "/demo/token") if shard.shared.config.demo => {
            demo_token(&shard, &mut stream, &head).await
        }
        ("OPTIONS", path) if is_api(path) => preflight(&shard, &mut stream, &head).await,
        (_, "/health" | "/ready") => respond(&mut stream, 405, "method not allowed", "").await,
        _ => respond(&mut stream, 404, "not found", "").await,
    }
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/rooms/") && path.ends_with("/messages")
}

async fn upgrade_chat(shard: Rc<Shard>, mut stream: TcpStream, head: Head, rest: BytesMut) {
    let shared = shard.shared.clone();

    // 1. A valid RFC 6455 upgrade, from an allowed origin. (The header
    // scratch lives in a block so that it is not kept, 2 KiB per connection,
    // in the connection's future for its whole life.)
    let checked = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        check(&head, &mut headers)
    };
    let upgrade = match checked {
        Ok(u) => u,
        Err(err) => {
            shard.note_refused(Refusal::BadUpgrade, err.reason);
            let _ = stream.write_all(err.response()).await;
            return;
        }
    };
    if !shared
        .config
        .allowed_origins
        .allows(head.header_str("origin"))
    {
        shard.note_refused(Refusal::Origin, "origin not on --allowed-origins");
        return respond(&mut stream, 403, Refusal::Origin.message(), "").await;
    }

    // 2. The token: `?token=`, `Authorization: Bearer`, or the subprotocol
    // pair `bearer, <jwt>` (browsers cannot set headers on a WebSocket).
    let mut protocol = None;
    let token = head
        .param("token")
        .or_else(|| head.bearer().map(str::to_owned))
        .or_else(|| match upgrade.protocols.as_slice() {
            [scheme, token, ..] if scheme.eq_ignore_ascii_case("bearer") => {
                protocol = Some("bearer");
                Some(token.clone())
            }
            _ => None,
        });
    let user = match shared.verifier.verify(token.as_deref().unwrap_or("")) {
        Ok(user) => Arc::new(user),
        Err(err) => {
            shard.note_refused(Refusal::Auth, err.label());
            return refuse_auth(&mut stream, &err, "").await;
        }
    };

    // 3. Room for one more connection: process, memory and per-user caps.
    if shared.shutting_down.load(Ordering::Relaxed) {
        return respond(&mut stream, 503, Refusal::Stopping.message(), "").await;
    }
    let open = shared.stats.connections.load(Ordering::Relaxed).max(0) as usize;
    if let Err(why) = shared.admission.admit(&user.id, open) {
        shard.note_refused(why, "");
        let extra = if why.status() == 429 {
            "Retry-After: 5\r\n"
        } else {
            ""
        };
        return respond(&mut stream, why.status(), why.message(), extra).await;
    }

    let response = ws::response_101(&upgrade.accept, protocol);
    // The head and the token are not needed for the connection's life.
    drop((head, token, upgrade));
    conn::run_chat(shard, stream, user, response, rest).await;
}

async fn upgrade_echo(shard: Rc<Shard>, mut stream: TcpStream, head: Head, rest: BytesMut) {
    let checked = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        check(&head, &mut headers)
    };
    match checked {
        Ok(upgrade) => {
            let response = ws::response_101(&upgrade.accept, None);
            conn::run_echo(shard, stream, response, rest).await;
        }
        Err(err) => {
            let _ = stream.write_all(err.response()).await;
        }
    }
}

/// Run the RFC 6455 checks on an owned head.
fn check<'h>(
    head: &'h Head,
    scratch: &'h mut [httparse::Header<'h>; MAX_HEADERS],
) -> Result<ws::Upgrade, ws::UpgradeError> {
    let n = head.headers.len().min(MAX_HEADERS);
    for (slot, (name, value)) in scratch.iter_mut().zip(&head.headers) {
        *slot = httparse::Header { name, value };
    }
    ws::check_upgrade(&head.method, head.version, &scratch[..n])
}

/// `GET /api/rooms/{room}/messages?before=&limit=` with a Bearer token.
async fn api_history(shard: Rc<Shard>, stream: &mut TcpStream, head: &Head) {
    let shared = shard.shared.clone();
    let Some(cors) = cors_headers(&shard, head) else {
        return respond(stream, 403, Refusal::Origin.message(), "").await;
    };
    let user = match shared.verifier.verify(head.bearer().unwrap_or("")) {
        Ok(user) => user,
        Err(err) => return refuse_auth(stream, &err, &cors).await,
    };

    let raw = &head.path["/api/rooms/".len()..head.path.len() - "/messages".len()];
    let room = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    if !auth::valid_room_id(&room) {
        return respond(stream, 400, "invalid room id", &cors).await;
    }
    if !shared.verifier.may_join(&user, &room) {
        return respond(stream, 403, "not allowed in this room", &cors).await;
    }
    let before = match head.param("before").map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return respond(stream, 400, "before must be a seq number", &cors).await,
    };
    let limit = match head.param("limit").map(|v| v.parse::<usize>()) {
        None => DEFAULT_PAGE,
        Some(Ok(v)) if (1..=shared.config.limits.max_history_page).contains(&v) => v,
        Some(_) => return respond(stream, 400, "limit must be 1..100", &cors).await,
    };

    let (tx, rx) = futures_channel::oneshot::channel();
    let room: Arc<str> = room.into();
    let req = HistoryReq {
        room: room.clone(),
        with: None,
        before,
        limit,
        reply: ReplyTo::Http(tx),
    };
    shared.send(shared.owner(&room), ShardMsg::History(Box::new(req)));
    match rx.await {
        Ok(Ok(body)) => send(stream, 200, "application/json", &body, &cors).await,
        Ok(Err(err)) if err.code == Code::Unavailable => {
            respond(stream, 503, &err.message, &cors).await
        }
        Ok(Err(err)) => respond(stream, 400, &err.message, &cors).await,
        Err(_) => respond(stream, 503, "server shutting down", &cors).await,
    }
}

/// `GET /demo/token?name=Ana`: a one-hour student token for the demo page.
/// Only with the development secret: with a real secret this would let
/// anyone mint tokens, so the page then asks for one instead.
async fn demo_token(shard: &Shard, stream: &mut TcpStream, head: &Head) {
    let crate::config::JwtKey::Secret { secret, dev: true } = &shard.shared.config.jwt.key else {
        return respond(stream, 404, "demo tokens need the development secret", "").await;
    };
    let name = head.param("name").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(40)
        .collect();
    // The user id keeps letters and digits of any script, lower-cased, so
    // "Иван" and "José" work; names that differ only in case or punctuation
    // are the same demo user.
    let slug: String = name
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    if slug.is_empty() {
        return respond(
            stream,
            400,
            "the name needs at least one letter or digit",
            "",
        )
        .await;
    }
    let sub = format!("demo-{slug}");
    let req = auth::MintRequest {
        sub: &sub,
        name: Some(&name),
        role: "student",
        rooms: &[],
        ttl: std::time::Duration::from_secs(3600),
        issuer: shard.shared.config.jwt.issuer.as_deref(),
        audience: shard.shared.config.jwt.audience.as_deref(),
    };
    match auth::mint(secret, &req) {
        Ok(token) => {
            let body = serde_json::json!({ "token": token, "user": sub }).to_string();
            send(stream, 200, "application/json", body.as_bytes(), "").await
        }
        Err(e) => respond(stream, 500, &e.to_string(), "").await,
    }
}

/// CORS response headers for an API request, or None when its `Origin` is
/// not allowed. Requests without an Origin (not from a browser) get none.
fn cors_headers(shard: &Shard, head: &Head) -> Option<String> {
    let origin = head.header_str("origin");
    if !shard.shared.config.allowed_origins.allows(origin) {
        shard.note_refused(Refusal::Origin, "api origin not on --allowed-origins");
        return None;
    }
    Some(match origin {
        // Echo the one origin rather than `*`: the API takes credentials.
        Some(o) if !o.contains(['\r', '\n']) => {
            format!("Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n")
        }
        _ => String::new(),
    })
}

/// The CORS preflight of an API call.
async fn preflight(shard: &Shard, stream: &mut TcpStream, head: &Head) {
    let Some(cors) = cors_headers(shard, head) else {
        return respond(stream, 403, Refusal::Origin.message(), "").await;
    };
    let extra = format!(
        "{cors}Access-Control-Allow-Methods: GET, OPTIONS\r\n\
         Access-Control-Allow-Headers: Authorization\r\nAccess-Control-Max-Age: 600\r\n"
    );
    send(stream, 204, "text/plain", b"", &extra).await;
}

async fn refuse_auth(stream: &mut TcpStream, err: &AuthError, cors: &str) {
    tracing::debug!(reason = err.label(), "refused: bad token");
    let extra = format!("{cors}WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
    let body = error_body(&err.to_string());
    send(stream, 401, "application/json", body.as_bytes(), &extra).await;
}

fn health(shard: &Shard) -> String {
    let shared = &shard.shared;
    let writer = &shared.writer.status;
    let store_ok = shared.store_ok();
    let healthy = store_ok && shared.cluster_ok();
    let value = serde_json::json!({
        "status": if healthy { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "workers": shared.mailboxes.len(),
        "driver": shared.driver.get().copied().unwrap_or("unknown"),
        "connections": shared.stats.connections.load(Ordering::Relaxed),
        "backends": {
            "history": {
                "kind": shared.store.kind(),
                "state": if store_ok { "ok" } else { "failing" },
                "queue": shared.writer.queue_len(),
                "sending": writer.sending.load(Ordering::Relaxed),
                "stored": writer.records.load(Ordering::Relaxed),
                "batches": writer.batches.load(Ordering::Relaxed),
                "refused": writer.refused.load(Ordering::Relaxed),
                "last_batch": writer.last_batch.load(Ordering::Relaxed),
            },
            "cluster": cluster_health(shared),
        },
        "stats": {
            "connections_total": shared.stats.connections_total.load(Ordering::Relaxed),
            "messages_in": shared.stats.messages_in.load(Ordering::Relaxed),
            "slow_consumers": shared.stats.slow_consumers.load(Ordering::Relaxed),
        },
        "refused": Refusal::ALL
            .iter()
            .map(|r| (r.label().to_owned(), shared.admission.refused(*r).into()))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
    });
    value.to_string()
}

fn cluster_health(shared: &crate::shard::Shared) -> serde_json::Value {
    let Some(cluster) = &shared.cluster else {
        return serde_json::json!({ "kind": "none", "state": "standalone" });
    };
    let s = &cluster.status;
    serde_json::json!({
        "kind": "redis",
        "state": if cluster.up() { "ok" } else { "failing" },
        "node": &*cluster.node,
        "connects": s.reconnects.load(Ordering::Relaxed),
        "subscriptions": s.subscriptions.load(Ordering::Relaxed),
        "published": s.published.load(Ordering::Relaxed),
        "received": s.received.load(Ordering::Relaxed),
        "gap_fills": s.gap_fills.load(Ordering::Relaxed),
        "skipped": s.skipped.load(Ordering::Relaxed),
        "refused": s.refused.load(Ordering::Relaxed),
    })
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// A JSON error response: `{"error": reason}`, with extra header lines.
pub async fn respond(stream: &mut TcpStream, status: u16, reason: &str, extra: &str) {
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let extra = format!("{allow}{extra}");
    send(
        stream,
        status,
        "application/json",
        error_body(reason).as_bytes(),
        &extra,
    )
    .await;
}

pub async fn send(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &str,
) {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{extra}\r\n",
        status_text(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    let _ = stream.write_all(out).await;
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}
