//! Test harness: runs the real `hubbub` binary on a free port with a
//! temporary data directory, and talks to it with real WebSocket clients.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-secret";

/// Rate limits high enough that the tests, not the limiter, set the pace.
pub const FAST: [&str; 6] = [
    "--messages-per-sec",
    "100000",
    "--message-burst",
    "100000",
    "--user-messages-per-sec",
    "100000",
];

/// The `seq` of each frame.
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect()
}

/// How long any single expectation waits before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub port: u16,
    pub data: PathBuf,
    args: Vec<String>,
    /// Where stderr goes when the test reads the log.
    log: Option<PathBuf>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Start with extra flags on top of the test defaults.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut server = Server {
            port: free_port(),
            data,
            args: extra.iter().map(|s| s.to_string()).collect(),
            log: None,
            child: None,
            _dir: Some(dir),
        };
        server.spawn();
        server
    }

    /// Like [`Server::start`], with stderr captured for [`Server::log`].
    pub fn start_logged(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server {
            port: free_port(),
            data: dir.path().join("data"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            log: Some(dir.path().join("stderr.log")),
            child: None,
            _dir: Some(dir),
        };
        server.spawn();
        server
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.as_ref().expect("started with start_logged"))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hubbub"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .stdin(Stdio::null());
        if !self.args.iter().any(|a| a == "--log") {
            cmd.arg("--log")
                .arg(std::env::var("HUBBUB_TEST_LOG").unwrap_or_else(|_| "warn".into()));
        }
        if !self
            .args
            .iter()
            .any(|a| a == "--jwt-secret" || a == "--jwt-public-key")
        {
            cmd.arg("--jwt-secret").arg(SECRET);
        }
        if let Some(path) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            cmd.stderr(file);
        }
        if let Ok(driver) = std::env::var("HUBBUB_TEST_DRIVER") {
            cmd.arg("--driver").arg(driver);
        }
        self.child = Some(cmd.spawn().expect("spawn hubbub"));
        wait_until("server answers /health", || {
            http_get(self.port, "/health", None).is_ok()
        });
    }

    /// SIGTERM, wait for a clean exit, and return the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait")
    }

    /// Wait for an exit that was already signalled.
    pub fn stop_wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().expect("wait")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// Start again on the same port and data directory.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws/chat", self.port)
    }

    pub async fn connect(&self, sub: &str) -> Client {
        self.connect_token(&token(sub, json!({}))).await
    }

    pub async fn connect_token(&self, token: &str) -> Client {
        let url = format!("{}?token={}", self.url(), token);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut client = Client {
            ws,
            frames: Vec::new(),
        };
        let welcome = client.next_of("welcome").await;
        assert_eq!(welcome["type"], "welcome");
        client
    }

    /// The HTTP status of an upgrade attempt that should be refused.
    pub async fn upgrade_status(&self, url: &str) -> u16 {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected upgrade error: {e}"),
        }
    }

    pub async fn upgrade_request_status(&self, req: impl IntoClientRequest + Unpin) -> u16 {
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected upgrade error: {e}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A token for `sub`, with extra claims merged in.
pub fn token(sub: &str, extra: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"sub": sub, "exp": now + 3600, "name": format!("User {sub}")});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    sign(SECRET, &claims)
}

pub fn sign(secret: &str, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames received but not yet taken by an expectation.
    pub frames: Vec<Value>,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The first (buffered or new) frame matching `pred`; fails the test
    /// after [`WAIT`].
    pub async fn next_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.next_within(what, WAIT, pred).await
    }

    /// [`Client::next_where`] with its own deadline.
    pub async fn next_within(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.frames.iter().position(&pred) {
            return self.frames.remove(i);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    let tail = &self.frames[self.frames.len().saturating_sub(3)..];
                    panic!(
                        "timed out waiting for {what}; {} buffered, last: {tail:?}",
                        self.frames.len()
                    )
                });
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                    if pred(&v) {
                        return v;
                    }
                    self.frames.push(v);
                }
                Some(Ok(Message::Close(c))) => panic!("closed while waiting for {what}: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("error while waiting for {what}: {e}"),
                None => panic!("stream ended while waiting for {what}"),
            }
        }
    }

    pub async fn next_of(&mut self, kind: &str) -> Value {
        let kind_owned = kind.to_owned();
        self.next_where(kind, move |v| v["type"] == kind_owned.as_str())
            .await
    }

    /// The answer (ack, error, history or pong) to the request with `id`.
    pub async fn reply(&mut self, id: &str) -> Value {
        self.reply_within(id, WAIT).await
    }

    pub async fn reply_within(&mut self, id: &str, wait: Duration) -> Value {
        let id_owned = id.to_owned();
        self.next_within(&format!("reply to {id}"), wait, move |v| {
            v["id"] == id_owned.as_str() && v["type"] != "message" && v["type"] != "dm"
        })
        .await
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let id = format!("join-{room}");
        self.send(json!({"type": "join", "room": room, "id": id}))
            .await;
        let ack = self.reply(&id).await;
        assert_eq!(ack["type"], "ack", "join {room}: {ack}");
        ack
    }

    /// Post and wait for the ack; returns it.
    pub async fn post(&mut self, room: &str, id: &str, content: &str) -> Value {
        self.send(json!({"type": "message", "room": room, "id": id, "content": content}))
            .await;
        let ack = self.reply(id).await;
        assert_eq!(ack["type"], "ack", "post {id}: {ack}");
        ack
    }

    /// The `n` next room messages of `room`, in arrival order.
    pub async fn messages(&mut self, room: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let r = room.to_owned();
            out.push(
                self.next_where("room message", move |v| {
                    v["type"] == "message" && v["room"] == r.as_str()
                })
                .await,
            );
        }
        out
    }

    /// Nothing matching `pred` arrives before the server answers a ping.
    /// The ping is the synchronisation point: everything the server queued
    /// for this connection before the pong is seen first.
    pub async fn assert_none_before_pong(&mut self, what: &str, pred: impl Fn(&Value) -> bool) {
        let id = format!("sync-{}", rand_suffix());
        self.send(json!({"type": "ping", "id": id})).await;
        let _ = self.reply(&id).await;
        if let Some(v) = self.frames.iter().find(|v| pred(v)) {
            panic!("unexpected {what}: {v}");
        }
    }

    /// Wait for the close frame and return its code.
    pub async fn close_code(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next())
                .await
                .expect("timed out waiting for close")
            {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return 1006,
            }
        }
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `cond` every 20 ms until it holds; fail after [`WAIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking HTTP GET; returns (status, body).
pub fn http_get(port: u16, path: &str, bearer: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(WAIT))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A WebSocket client on a plain socket, for behaviour a well-behaved client
/// library will not show (never reading, never answering pings).
pub struct RawClient {
    pub stream: tokio::net::TcpStream,
    /// Bytes read after the upgrade response.
    pub buf: Vec<u8>,
}

impl RawClient {
    /// Upgrade with `token`; `recv_buf` shrinks the socket's receive buffer
    /// (before connecting) so that a client that does not read pushes back
    /// on the server quickly.
    pub async fn connect(port: u16, token: &str, recv_buf: Option<u32>) -> RawClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let head = format!(
            "GET /ws/chat?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        assert!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        let rest = buf.split_off(end);
        RawClient { stream, buf: rest }
    }

    /// Send one masked client frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mask = [7u8, 1, 9, 3];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Read until the server closes the socket (or `WAIT` passes); return
    /// every server frame as (opcode, payload).
    pub async fn read_to_end(&mut self) -> Vec<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 65536];
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("server did not close the connection"),
            }
        }
        parse_frames(&self.buf)
    }

    /// Read frames until one with `opcode` arrives; returns it.
    pub async fn wait_frame(&mut self, opcode: u8) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 65536];
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((_, p)) = parse_frames(&self.buf)
                .into_iter()
                .find(|(op, _)| *op == opcode)
            {
                return p;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .expect("timed out waiting for a frame")
                .unwrap();
            assert!(n > 0, "closed before opcode {opcode}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Split unmasked server frames (complete ones only).
pub fn parse_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let op = b[0] & 0x0f;
        let (len, hdr) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if b.len() < hdr + len {
            break;
        }
        out.push((op, b[hdr..hdr + len].to_vec()));
        b = &b[hdr + len..];
    }
    out
}

/// The close code of a close frame's payload.
pub fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A MongoDB-wire server (SecantusDB) as a child process, with its data in a
/// directory that survives a kill and restart.
pub struct Mongo {
    pub port: u16,
    dir: tempfile::TempDir,
    python: String,
    child: Option<Child>,
}

impl Mongo {
    /// Start one, or None (with a note on stderr) when the test command has
    /// not provided it: `HUBBUB_TEST_MONGO_PYTHON` names a Python that has
    /// `secantusdb` installed; scripts/test.sh sets it.
    pub fn start() -> Option<Mongo> {
        let Ok(python) = std::env::var("HUBBUB_TEST_MONGO_PYTHON") else {
            eprintln!(
                "SKIPPED: HUBBUB_TEST_MONGO_PYTHON is not set, so there is no MongoDB-wire server \
                 for this test; run scripts/test.sh, which installs and starts one"
            );
            return None;
        };
        let mut mongo = Mongo {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            python,
            child: None,
        };
        mongo.spawn();
        Some(mongo)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.python)
            .args([
                "-m",
                "secantus",
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
            ])
            .arg("--storage-path")
            .arg(self.dir.path())
            // Durable commits, as a production MongoDB journals them.
            .args(["--log-level", "WARNING", "--sync-on-commit"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start secantus");
        self.child = Some(child);
        // Python start-up is slow on a busy machine: allow a minute, but stop
        // at once if the server exits.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the MongoDB-wire server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the MongoDB-wire server did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// SIGKILL: an outage.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL a backend server started by a test, and reap it, if it runs.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A Redis server as a child process, without persistence: a restart loses
/// every key, the worst case for cluster mode.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Start one, or None (with a note on stderr) when `redis-server` is not
    /// installed; scripts/test.sh installs it.
    pub fn start() -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            eprintln!(
                "SKIPPED: redis-server is not installed; run scripts/test.sh, which installs it"
            );
            return None;
        }
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_until("redis-server accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: an outage that loses every key.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every stored message of a room, oldest first, by paging `history`.
pub async fn all_history(c: &mut Client, room: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let id = format!("all-{}-{}-{}", room, before.unwrap_or(0), rand_suffix());
        let mut req = json!({"type": "history", "room": room, "limit": 100, "id": id});
        if let Some(b) = before {
            req["before"] = b.into();
        }
        c.send(req).await;
        let page = c.reply(&id).await;
        assert_eq!(page["type"], "history", "{page}");
        let got = page["messages"].as_array().unwrap().clone();
        let last = got.last().and_then(|m| m["seq"].as_u64());
        out.extend(got);
        match (page["has_more"].as_bool(), last) {
            (Some(true), Some(last)) => before = Some(last),
            _ => break,
        }
    }
    out.reverse();
    out
}
