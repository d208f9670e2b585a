//! One WebSocket connection of a simulated user: dial, join, chat on a schedule, leave,
//! close. Everything a frame means is decided by `session`; this module does the I/O and
//! records how connections start and end.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::session::Session;
use crate::stats::{self, record_us, JOINED, OPEN};

/// Per-connection read buffer. tungstenite allocates it eagerly, and its 128 KiB default
/// would cost the generator over a gigabyte at 10k connections; 8 KiB still takes dozens of
/// chat frames per read.
const READ_BUFFER: usize = 8 * 1024;

/// How long a leave or a close handshake may take before the generator moves on.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to connect; shared by every connection of a run.
pub struct Dialer {
    /// Each `--url`: its resolved address, and the URL with the separator for one more query
    /// parameter appended. Connection `i` goes to target `i % len`.
    pub targets: Vec<(SocketAddr, String)>,
    /// Source addresses to spread over (127.0.0.1 ..= 127.0.0.N).
    pub source_ips: u8,
    pub connect_timeout: Duration,
}

/// Why a connection ended early, already recorded in the stats.
#[derive(Debug)]
pub struct Gone;

/// A sending schedule: `rate` messages per second, each optionally preceded by a `typing`
/// frame half a period earlier, as a person would type before sending.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rate: f64,
    pub typing: bool,
    /// Content bytes per message.
    pub size: usize,
}

/// The timing of one connection's sends.
struct Schedule {
    plan: Plan,
    period: Duration,
    next_send: Instant,
    next_typing: Option<Instant>,
}

impl Schedule {
    /// Starts at a random phase within one period, so a ramp's connections do not send in
    /// lockstep.
    fn start(plan: Plan) -> Self {
        let now = Instant::now();
        let period = Duration::from_secs_f64(1.0 / plan.rate);
        let next_send = now + period.mul_f64(fastrand::f64());

        // When the first message comes too soon for its typing frame, start typing ahead
        // of the second one.
        let next_typing = plan.typing.then(|| {
            let t = next_send.checked_sub(period / 2).unwrap_or(now);
            if t < now {
                t + period
            } else {
                t
            }
        });
        Schedule {
            plan,
            period,
            next_send,
            next_typing,
        }
    }

    fn due(&self) -> Instant {
        self.next_typing
            .map_or(self.next_send, |t| t.min(self.next_send))
    }
}

/// An open connection.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    /// Whether this connection counts in the `JOINED` gauge.
    joined: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        stats::bump(&OPEN, -1);
        if self.joined {
            stats::bump(&JOINED, -1);
        }
    }
}

impl Dialer {
    /// Opens a connection for `s`, recording its connect time or why it failed.
    pub async fn open(&self, s: &mut Session) -> Option<Conn> {
        let started = Instant::now();
        let attempt = timeout(self.connect_timeout, self.dial(s)).await;
        let result = attempt.unwrap_or_else(|_| Err("timeout".to_owned()));
        match result {
            Ok(ws) => {
                let took = started.elapsed().as_micros() as u64;
                let reconnect = std::mem::replace(&mut s.connected_before, true);
                stats::record(|iv| {
                    iv.connected += 1;
                    iv.reconnects += u64::from(reconnect);
                    record_us(&mut iv.connect, took);
                });
                stats::bump(&OPEN, 1);
                Some(Conn { ws, joined: false })
            }
            Err(cause) => {
                stats::record(|iv| iv.connect_failures.add(&cause, 1));
                None
            }
        }
    }

    async fn dial(&self, s: &Session) -> Result<WebSocketStream<TcpStream>, String> {
        let (addr, url_prefix) = &self.targets[s.index as usize % self.targets.len()];
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| io_cause(&e))?;

        // Binding a chosen loopback source address before connecting multiplies the
        // ephemeral ports available towards one server port.
        if self.source_ips > 1 {
            defer_port_choice(&socket);
            let host = 1 + (s.index % u32::from(self.source_ips)) as u8;
            let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0);
            socket.bind(src).map_err(|e| io_cause(&e))?;
        }
        let stream = socket.connect(*addr).await.map_err(|e| io_cause(&e))?;
        stream.set_nodelay(true).map_err(|e| io_cause(&e))?;

        let url = format!("{url_prefix}token={}", s.token);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config))
                .await
                .map_err(|e| ws_cause(&e))?;
        Ok(ws)
    }
}

/// Asks Linux to pick the source port at connect time rather than at bind time, so ports
/// are shared across destinations instead of reserved per bound socket.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a correctly sized int option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &TcpSocket) {}

impl Conn {
    /// Joins every room of `s` (resuming from the last `seq` seen if `resume`) and waits
    /// for the acks. A refused or unanswered join counts as a connect failure.
    pub async fn join(&mut self, s: &mut Session, resume: bool, wait: Duration) -> bool {
        for frame in s.join_frames(resume) {
            if self.send(frame).await.is_err() {
                return false;
            }
        }
        let deadline = Instant::now() + wait;
        if self
            .pump(s, None, deadline, |s| s.pending_joins == 0)
            .await
            .is_err()
        {
            return false;
        }
        let cause = if s.pending_joins > 0 {
            "join_timeout"
        } else if s.join_failed {
            "join_refused"
        } else {
            self.joined = true;
            stats::bump(&JOINED, 1);
            return true;
        };
        stats::record(|iv| iv.connect_failures.add(cause, 1));
        false
    }

    /// Reads frames, and sends on `plan`'s schedule if given, until `until`.
    pub async fn run(
        &mut self,
        s: &mut Session,
        plan: Option<Plan>,
        until: Instant,
    ) -> Result<(), Gone> {
        let mut schedule = plan.filter(|p| p.rate > 0.0).map(Schedule::start);
        self.pump(s, schedule.as_mut(), until, |_| false).await
    }

    /// Leaves every room and waits (briefly) for the acks.
    pub async fn leave(&mut self, s: &mut Session) -> Result<(), Gone> {
        for frame in s.leave_frames() {
            self.send(frame).await?;
        }
        let deadline = Instant::now() + GOODBYE_TIMEOUT;
        self.pump(s, None, deadline, |s| s.pending_leaves == 0)
            .await
    }

    /// Closes with a close frame and waits for the server's reply, still counting what
    /// arrives meanwhile.
    pub async fn close(mut self, s: &mut Session) {
        if self.ws.close(None).await.is_err() {
            return;
        }
        let _ = timeout(GOODBYE_TIMEOUT, async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if let Message::Text(text) = msg {
                    stats::record(|iv| s.on_text(text.as_bytes(), iv));
                }
            }
        })
        .await;
    }

    /// The receive loop: handles frames until `until` or until `done` holds, and sends
    /// when `schedule` says so. The send timer is checked first so that a flood of
    /// incoming frames shows up as send lag instead of silently thinning the sends.
    async fn pump(
        &mut self,
        s: &mut Session,
        mut schedule: Option<&mut Schedule>,
        until: Instant,
        done: impl Fn(&Session) -> bool,
    ) -> Result<(), Gone> {
        let first = schedule.as_ref().map_or(until, |sc| sc.due().min(until));
        let mut timer = pin!(sleep_until(first));
        loop {
            if done(s) {
                return Ok(());
            }
            tokio::select! {
                biased;
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= until {
                        return Ok(());
                    }
                    if let Some(sc) = schedule.as_deref_mut() {
                        self.send_due(s, sc, now).await?;
                        timer.as_mut().reset(sc.due().min(until));
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        stats::record(|iv| s.on_text(text.as_bytes(), iv));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        return Err(gone(&format!("close_{code}")));
                    }
                    // Pings are answered by tungstenite itself; binary frames are not ours.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(gone(&ws_cause(&e))),
                    None => return Err(gone("eof")),
                },
            }
        }
    }

    /// Sends whatever the schedule has due at `now`.
    async fn send_due(
        &mut self,
        s: &mut Session,
        sc: &mut Schedule,
        now: Instant,
    ) -> Result<(), Gone> {
        if let Some(t) = sc.next_typing.filter(|t| *t <= now) {
            sc.next_typing = Some(t + sc.period);
            if let Some(frame) = s.typing_frame() {
                self.send(frame).await?;
            }
        }
        if sc.next_send <= now {
            let lag = now.duration_since(sc.next_send).as_micros() as u64;
            sc.next_send += sc.period;
            let frame = s.chat_frame(sc.plan.size);
            self.send(frame).await?;
            stats::record(|iv| {
                iv.sent += 1;
                record_us(&mut iv.lag, lag);
            });
        }
        Ok(())
    }

    async fn send(&mut self, frame: String) -> Result<(), Gone> {
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| gone(&ws_cause(&e)))
    }
}

/// Records a connection lost before the generator closed it.
fn gone(cause: &str) -> Gone {
    stats::record(|iv| iv.disconnects.add(cause, 1));
    Gone
}

/// A short, stable name for an I/O failure.
fn io_cause(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::ConnectionAborted => "aborted",
        io::ErrorKind::BrokenPipe => "broken_pipe",
        io::ErrorKind::AddrNotAvailable => "addr_unavailable",
        io::ErrorKind::UnexpectedEof => "eof",
        _ if e.raw_os_error() == Some(libc::EMFILE) => "fd_limit",
        _ => "other_io",
    }
    .to_owned()
}

/// A short, stable name for a WebSocket failure; HTTP refusals keep their status.
fn ws_cause(e: &WsError) -> String {
    match e {
        WsError::Http(response) => format!("http_{}", response.status().as_u16()),
        WsError::Io(io) => io_cause(io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_owned(),
        WsError::Protocol(p) => {
            use tokio_tungstenite::tungstenite::error::ProtocolError as P;
            match p {
                P::ResetWithoutClosingHandshake => "reset".to_owned(),
                _ => "protocol".to_owned(),
            }
        }
        WsError::Capacity(_) => "too_large".to_owned(),
        _ => "other".to_owned(),
    }
}
