//! A shard's inbox: a lock-free crossbeam queue plus a waker, so that any
//! thread (another shard, the history writer, a signal handler) can hand a
//! shard work and wake its event loop.
//!
//! The queue is unbounded on purpose: shards send to each other, and a bound
//! would let two busy shards block on each other. What bounds the traffic is
//! upstream: per-connection rate limits, the history queue, and each
//! connection's outbound byte cap.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// The sending side, cloned to every thread that talks to the shard.
pub struct Mailbox<T> {
    tx: Sender<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

/// The receiving side, owned by the shard's dispatcher task.
pub struct Inbox<T> {
    rx: Receiver<T>,
    waker: Arc<AtomicWaker>,
}

pub fn channel<T>() -> (Mailbox<T>, Inbox<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (
        Mailbox {
            tx,
            waker: waker.clone(),
        },
        Inbox { rx, waker },
    )
}

impl<T> Mailbox<T> {
    /// Queue `msg` and wake the shard. Wake-ups coalesce: many sends before
    /// the shard runs cost one wake.
    pub fn send(&self, msg: T) {
        // The receiver lives as long as its shard; after that, dropping the
        // message is the right outcome.
        let _ = self.tx.send(msg);
        self.waker.wake();
    }

    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

impl<T> Inbox<T> {
    /// Wait until at least one message is queued, then move up to `max` of
    /// them into `out`. Returns false when every sender is gone.
    pub async fn recv_batch(&self, out: &mut Vec<T>, max: usize) -> bool {
        poll_fn(|cx| {
            if self.drain(out, max) {
                return Poll::Ready(true);
            }
            // Register first, then look again, so a send between the two
            // checks cannot be missed.
            self.waker.register(cx.waker());
            if self.drain(out, max) {
                return Poll::Ready(true);
            }
            match self.rx.try_recv() {
                Err(TryRecvError::Disconnected) => Poll::Ready(false),
                Ok(msg) => {
                    out.push(msg);
                    Poll::Ready(true)
                }
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }

    fn drain(&self, out: &mut Vec<T>, max: usize) -> bool {
        let before = out.len();
        while out.len() - before < max {
            match self.rx.try_recv() {
                Ok(msg) => out.push(msg),
                Err(_) => break,
            }
        }
        out.len() > before
    }
}
