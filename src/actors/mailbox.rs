//! A session's mailbox: a bounded queue of messages from elsewhere in the node (region
//! signals, connection messages, kick, replacement), read by the one task that owns the
//! session.
//!
//! Why not a `tokio::sync::mpsc` channel: it allocates its first block of 32 slots when
//! made, ~2.5 KB per session for a queue an idle session never uses. This one is a
//! `VecDeque` behind a short lock that allocates only while messages wait, and wakes the
//! session's task through an `AtomicWaker`.
//!
//! At the limit a send fails with [`SendError::Full`] and the message comes back to the
//! sender, which decides (and counts) what that means; a send to a session that ended fails
//! with [`SendError::Closed`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    waker: AtomicWaker,
    capacity: usize,
    closed: AtomicBool,
}

/// The sending side; cheap to clone.
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The receiving side, owned by the session's task. Dropping it closes the mailbox and
/// drops what was still queued.
pub struct Receiver<T>(Arc<Shared<T>>);

/// Why a message was not queued; the message comes back.
#[derive(Debug)]
pub enum SendError<T> {
    /// The mailbox holds its limit of messages.
    Full(T),
    /// The session has ended.
    Closed(T),
}

impl<T> SendError<T> {
    /// The message that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(m) | Self::Closed(m) => m,
        }
    }
}

/// A mailbox holding at most `capacity` messages (at least one).
pub fn mailbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        waker: AtomicWaker::new(),
        capacity: capacity.max(1),
        closed: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

fn lock<T>(m: &Mutex<VecDeque<T>>) -> std::sync::MutexGuard<'_, VecDeque<T>> {
    // Nothing is left half-done under this lock: a poisoned queue is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Sender<T> {
    /// Queues `msg` and wakes the receiver's task.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        {
            let mut q = lock(&self.0.queue);
            // Checked under the lock: the receiver's drop sets it under the same lock.
            if self.0.closed.load(Ordering::Acquire) {
                return Err(SendError::Closed(msg));
            }
            if q.len() >= self.0.capacity {
                return Err(SendError::Full(msg));
            }
            q.push_back(msg);
        }
        self.0.waker.wake();
        Ok(())
    }

    /// Whether the receiving session has ended.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// Whether both handles reach the same mailbox.
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Receiver<T> {
    /// The next message; Pending (and the task woken on the next send) while none waits.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        // Registered before the check, so a message queued after the check wakes the task.
        self.0.waker.register(cx.waker());
        let mut q = lock(&self.0.queue);
        match q.pop_front() {
            Some(m) => Poll::Ready(m),
            None => {
                // Give a burst's memory back once drained.
                if q.capacity() > 4 {
                    *q = VecDeque::new();
                }
                Poll::Pending
            }
        }
    }

    /// The next message, waiting for one.
    pub async fn recv(&mut self) -> T {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let drained = {
            let mut q = lock(&self.0.queue);
            self.0.closed.store(true, Ordering::Release);
            std::mem::take(&mut *q)
        };
        // Dropped outside the lock: a message's drop may send elsewhere.
        drop(drained);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_up_to_the_limit() {
        let (tx, mut rx) = mailbox(2);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert!(matches!(tx.send(3), Err(SendError::Full(3))));
        assert_eq!(rx.recv().await, 1);
        tx.send(4).unwrap();
        assert_eq!(rx.recv().await, 2);
        assert_eq!(rx.recv().await, 4);
    }

    #[tokio::test]
    async fn a_send_wakes_a_waiting_receiver() {
        let (tx, mut rx) = mailbox(4);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send("hello").unwrap();
        assert_eq!(waiting.await.unwrap(), "hello");
    }

    #[test]
    fn sends_after_the_receiver_is_gone_fail_and_queued_messages_are_dropped() {
        let (tx, rx) = mailbox(4);
        let witness = Arc::new(());
        tx.send(witness.clone()).unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(Arc::strong_count(&witness), 1, "queued message dropped");
        assert!(matches!(tx.send(witness), Err(SendError::Closed(_))));
    }
}
