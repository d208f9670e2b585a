//! A connection's outbound queue: frames waiting for its writer task.
//!
//! Frames are shared `Bytes` (a broadcast is encoded once and the same bytes
//! are queued for every recipient). The queue is bounded in bytes: a client
//! that reads slower than its rooms talk is cut off rather than allowed to
//! grow the server's memory, and it resumes with `join`+`since` on reconnect.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ws;

/// Close code sent to a slow consumer: 1013 "try again later", because the
/// client did nothing wrong that a reconnect would not fix.
pub const SLOW_CONSUMER_CODE: u16 = 1013;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Open,
    /// A close frame is queued; nothing else will be accepted.
    Closing,
    /// The reader is gone and the queue is empty: the writer may stop.
    Finished,
}

pub struct Outbox {
    queue: RefCell<VecDeque<Bytes>>,
    bytes: Cell<usize>,
    max_bytes: usize,
    state: Cell<State>,
    /// Set by the reader when it returns; the writer then stops once done.
    finished: Cell<bool>,
    /// The writer task's waker (the only task that waits on an outbox).
    waker: RefCell<Option<Waker>>,
    /// When the peer last sent anything.
    last_seen: Cell<Instant>,
    /// When the keepalive pinged the quiet peer, if it has.
    pinged: Cell<Option<Instant>>,
}

/// What the keepalive should do about a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Idle {
    Fine,
    Ping,
    Dead,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Outbox {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            max_bytes,
            state: Cell::new(State::Open),
            finished: Cell::new(false),
            waker: RefCell::new(None),
            last_seen: Cell::new(Instant::now()),
            pinged: Cell::new(None),
        }
    }

    /// The peer sent something: it is alive.
    pub fn touch(&self) {
        self.last_seen.set(Instant::now());
        self.pinged.set(None);
    }

    /// Ping after `interval` of silence; dead after `timeout` more.
    pub fn idle_check(&self, interval: Duration, timeout: Duration) -> Idle {
        if self.state.get() != State::Open {
            return Idle::Fine;
        }
        match self.pinged.get() {
            Some(at) if at.elapsed() >= timeout => Idle::Dead,
            Some(_) => Idle::Fine,
            None if self.last_seen.get().elapsed() >= interval => {
                self.pinged.set(Some(Instant::now()));
                Idle::Ping
            }
            None => Idle::Fine,
        }
    }

    pub fn state(&self) -> State {
        self.state.get()
    }

    /// Queue a frame. Returns false when the connection is closing or has
    /// just been closed for exceeding its byte cap (the frame is dropped).
    pub fn push(&self, frame: Bytes) -> bool {
        if self.state.get() != State::Open {
            return false;
        }
        let queued = self.bytes.get() + frame.len();
        if queued > self.max_bytes {
            // Drop what is queued: the client will resume from its last seq.
            self.queue.borrow_mut().clear();
            self.bytes.set(0);
            self.close(SLOW_CONSUMER_CODE, "slow consumer");
            return false;
        }
        self.bytes.set(queued);
        self.queue.borrow_mut().push_back(frame);
        self.wake();
        true
    }

    /// Queue a close frame after whatever is queued; later pushes are ignored.
    pub fn close(&self, code: u16, reason: &str) {
        if self.state.get() != State::Open {
            return;
        }
        self.queue
            .borrow_mut()
            .push_back(ws::encode_close(code, reason));
        self.state.set(State::Closing);
        self.wake();
    }

    /// Queue a control frame (pong) even above the byte cap: it is tiny, and
    /// refusing it would make a healthy peer look dead.
    pub fn push_control(&self, frame: Bytes) {
        if self.state.get() == State::Open {
            self.bytes.set(self.bytes.get() + frame.len());
            self.queue.borrow_mut().push_back(frame);
            self.wake();
        }
    }

    /// Wait for frames and move them all into `out`. Returns the state at the
    /// time: after `Closing` has been drained, the writer sends nothing more;
    /// `Finished` comes with nothing to write.
    pub async fn take(&self, out: &mut Vec<Bytes>) -> State {
        poll_fn(|cx| {
            let mut queue = self.queue.borrow_mut();
            if queue.is_empty() {
                if self.finished.get() {
                    return Poll::Ready(State::Finished);
                }
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            out.extend(queue.drain(..));
            self.bytes.set(0);
            Poll::Ready(self.state.get())
        })
        .await
    }

    /// The reader is done with the connection.
    pub fn finish(&self) {
        self.finished.set(true);
        self.wake();
    }

    /// Resolves once [`Outbox::finish`] has been called.
    pub async fn finished(&self) {
        poll_fn(|cx| {
            if self.finished.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_with_1013_and_drops_the_queue() {
        let out = Outbox::new(10);
        assert!(out.push(Bytes::from_static(b"12345")));
        assert!(!out.push(Bytes::from_static(b"123456")));
        assert_eq!(out.state(), State::Closing);
        let queue = out.queue.borrow();
        assert_eq!(queue.len(), 1, "only the close frame is left");
        assert_eq!(&queue[0][2..4], &SLOW_CONSUMER_CODE.to_be_bytes());
    }

    #[test]
    fn nothing_is_queued_after_close() {
        let out = Outbox::new(100);
        out.close(1001, "going away");
        assert!(!out.push(Bytes::from_static(b"x")));
        out.push_control(Bytes::from_static(b"pong"));
        assert_eq!(out.queue.borrow().len(), 1);
    }
}
