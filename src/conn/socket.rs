//! The socket half of a WebSocket connection: a reader loop that decodes
//! frames and handles the control frames, and a writer task that drains the
//! connection's [`Outbox`] with vectored writes.
//!
//! Reads run in their own loop and are never raced against anything else:
//! dropping an in-flight io_uring read would lose the bytes it read.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;

use super::outbox::{Outbox, State};
use crate::ws::{self, Decoder, Message, OpCode};

/// How long the writer waits, after sending a close frame, for the peer to
/// finish the close handshake before it closes the socket anyway.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Most frames in one writev: the kernel's IOV_MAX.
const MAX_IOVECS: usize = 1024;

/// Smallest free space offered to a read. Chat frames are a few hundred
/// bytes, and an idle connection keeps its read buffer in the kernel's hands
/// (io_uring owns it while the read waits), so the buffer starts small and
/// doubles only when a frame needs it.
const MIN_READ: usize = 512;

/// A buffer grown past this for a large message is dropped once empty.
const SHRINK_ABOVE: usize = 16 * 1024;

/// Read and decode until the peer goes away or the close handshake ends.
/// Data messages go to `on_data`; ping, pong and close are handled here.
pub async fn read_loop<F>(
    rd: &mut OwnedReadHalf<TcpStream>,
    mut buf: BytesMut,
    decoder: &mut Decoder,
    outbox: &Outbox,
    mut on_data: F,
) where
    F: FnMut(Message),
{
    // After a protocol error the decoder is done; keep reading (and
    // discarding) until the peer closes, so that the socket ends cleanly.
    let mut broken = false;
    loop {
        while !broken {
            match decoder.decode(&mut buf) {
                Ok(Some(Message::Ping(payload))) => {
                    outbox.push_control(ws::encode(OpCode::Pong, &payload))
                }
                Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Close(frame))) => {
                    // Echo the peer's code (RFC 6455 §5.5.1); 1000 when it
                    // sent none. If we started the close, this ends it.
                    if outbox.state() == State::Open {
                        let code = frame.map_or(1000, |f| f.code);
                        outbox.close(code, "");
                    }
                    return;
                }
                Ok(Some(msg)) => {
                    if outbox.state() == State::Open {
                        on_data(msg);
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(err = %err, "websocket protocol error");
                    outbox.close(err.close_code(), &err.to_string());
                    broken = true;
                }
            }
        }
        if broken {
            buf.clear();
        }

        if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
            buf = BytesMut::new();
        }
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(buf.len().max(MIN_READ));
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = rd.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => outbox.touch(),
        }
    }
}

/// Drain the outbox into the socket until the connection ends.
pub async fn write_loop(mut wr: OwnedWriteHalf<TcpStream>, outbox: Rc<Outbox>, fd: RawFd) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let state = outbox.take(&mut batch).await;
        if !write_batch(&mut wr, &mut batch).await {
            break;
        }
        match state {
            State::Open => continue,
            State::Closing => {
                // Our close frame is out: half-close, then give the peer a
                // moment to answer before the socket goes.
                let _ = wr.shutdown().await;
                monoio::select! {
                    _ = outbox.finished() => {},
                    _ = monoio::time::sleep(CLOSE_WAIT) => {},
                }
                break;
            }
            State::Finished => break,
        }
    }
    // Wake a reader still blocked on this socket: it sees EOF and returns.
    // SAFETY: `fd` is owned by the stream whose write half we still hold.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Write every queued frame; false when the socket is gone.
async fn write_batch(wr: &mut OwnedWriteHalf<TcpStream>, batch: &mut Vec<Bytes>) -> bool {
    while !batch.is_empty() {
        let res = if batch.len() == 1 {
            let frame = batch.pop().expect("one frame");
            wr.write_all(frame).await.0
        } else {
            let rest = if batch.len() > MAX_IOVECS {
                batch.split_off(MAX_IOVECS)
            } else {
                Vec::new()
            };
            let chunk = std::mem::replace(batch, rest);
            writev_all(wr, IoVecs::new(chunk)).await
        };
        if res.is_err() {
            return false;
        }
    }
    true
}

/// Write every byte of `bufs`, continuing after partial writes.
///
/// monoio 0.2.4's `write_vectored_all` is not used: after a write that ends
/// inside an iovec it shortens that iovec without advancing its base, so the
/// next write repeats bytes and corrupts the stream (seen here under a slow
/// reader).
async fn writev_all(
    wr: &mut OwnedWriteHalf<TcpStream>,
    mut bufs: IoVecs,
) -> std::io::Result<usize> {
    let mut total = 0;
    while !bufs.is_empty() {
        let (res, back) = wr.writev(bufs).await;
        bufs = back;
        match res {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n;
                bufs.advance(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Frames for one writev. The iovecs point into the `Bytes`, which this
/// struct owns until the write completes.
struct IoVecs {
    _frames: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
    /// The first iovec not yet completely written.
    start: usize,
}

impl IoVecs {
    fn new(frames: Vec<Bytes>) -> IoVecs {
        let iovecs = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut _,
                iov_len: f.len(),
            })
            .collect();
        IoVecs {
            _frames: frames,
            iovecs,
            start: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.iovecs.len()
    }

    /// Skip `n` written bytes: whole iovecs, then part of the next one.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let iov = &mut self.iovecs[self.start];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                self.start += 1;
            } else {
                // SAFETY: n < iov_len, so the pointer stays inside the frame.
                iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(n) } as *mut _;
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
}

// SAFETY: the iovecs point at heap data of `Bytes` owned by the same struct;
// moving the struct does not move that data, and nothing mutates it.
unsafe impl monoio::buf::IoVecBuf for IoVecs {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs[self.start..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::buf::IoVecBuf;

    #[test]
    fn advance_moves_the_base_of_a_partly_written_iovec() {
        let frames = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")];
        let mut v = IoVecs::new(frames);
        v.advance(4);
        assert_eq!(v.read_iovec_len(), 1);
        let iov = unsafe { *v.read_iovec_ptr() };
        let rest = unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
        assert_eq!(rest, b"efgh");
        v.advance(4);
        assert!(v.is_empty());
    }
}
