//! The bounded write side of one socket: written by its session's task (and by shutdown,
//! which closes every socket through it), drained by the same task between reads.
//!
//! Frames are serialised once and queued (at most `limits.outbound_queue`); the socket's
//! task drains the queue between reads (see `actors::socket`). A client too slow to drain it is
//! closed with 4008 at once — the queue never grows. Error frames are counted here: after
//! `limits.max_consecutive_errors` in a row the socket is closed with 1008.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;

use serde::Serialize;

use crate::protocol::ServerMsg;

/// Close codes used by the server.
pub mod close {
    /// Normal closure (window expired).
    pub const NORMAL: u16 = 1000;
    /// Server going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: an unmasked frame, a reserved opcode, a broken frame header.
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (too many consecutive errors).
    pub const POLICY: u16 = 1008;
    /// A frame or message over `limits.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// The node stopped serving this session's region (cluster lease lost): reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The session's region is served by another node now (after a `handoff`).
    pub const HANDOFF: u16 = 4003;
    /// A newer session of the same account replaced this one.
    pub const REPLACED: u16 = 4001;
    /// Ended by an admin.
    pub const KICKED: u16 = 4002;
    /// The client did not drain its outbound queue.
    pub const SLOW_CLIENT: u16 = 4008;
}

/// A queued item.
#[derive(Debug)]
enum Outbound {
    /// A serialised text frame.
    Frame(Utf8Bytes),
    /// Send a close frame with this code and reason, then stop.
    Close(u16, String),
    /// A ping (the server's heartbeat).
    Ping,
}

#[derive(Default)]
struct Queue {
    /// Allocated on first use and only as deep as the client lags: an idle socket's
    /// queue costs nothing.
    frames: VecDeque<Outbound>,
    /// An immediate close, overtaking whatever is queued.
    abort: Option<(u16, String)>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The socket task, waiting for something to write.
    writer: AtomicWaker,
    capacity: usize,
    closing: AtomicBool,
    errors: AtomicU32,
    max_errors: u32,
}

/// Handle to a socket's outbound queue.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

/// What the writer gets next.
pub enum Next {
    /// Write this frame.
    Frame(Utf8Bytes),
    /// Send a close frame after the frames written so far, then stop.
    Close(u16, String),
    /// Write a ping.
    Ping,
}

impl Outbox {
    /// A queue of at most `capacity` frames.
    pub fn new(capacity: usize, max_errors: u32) -> Self {
        Self(Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            writer: AtomicWaker::new(),
            capacity: capacity.max(1),
            closing: AtomicBool::new(false),
            errors: AtomicU32::new(0),
            max_errors: max_errors.max(1),
        }))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.0.closing.load(Ordering::Relaxed)
    }

    /// Queues a frame. Returns false if the socket is closing or was just closed as slow.
    pub fn send(&self, msg: &ServerMsg) -> bool {
        self.send_as(msg.kind(), msg, 128)
    }

    /// Queues `msg`, a frame of wire type `kind`, serialised into a buffer of `size_hint`
    /// bytes (it grows if needed, and is held until the frame is written); as
    /// [`Outbox::send`].
    pub fn send_as(&self, kind: &'static str, msg: &impl Serialize, size_hint: usize) -> bool {
        if self.is_closing() {
            return false;
        }
        let mut text = Vec::with_capacity(size_hint);
        if let Err(e) = serde_json::to_writer(&mut text, msg) {
            tracing::error!("cannot serialise a server frame: {e}");
            return false;
        }
        self.send_json(kind, text)
    }

    /// Queues a frame of wire type `kind` already written as JSON; as [`Outbox::send`].
    pub fn send_json(&self, kind: &'static str, text: Vec<u8>) -> bool {
        if self.is_closing() {
            return false;
        }
        // Written from strs and serde_json: checking costs less than an unsafe block is worth.
        let Ok(text) = String::from_utf8(text) else {
            tracing::error!("a server frame was written as invalid UTF-8");
            return false;
        };
        let full = {
            let mut q = self.queue();
            let full = q.frames.len() >= self.0.capacity;
            if !full {
                q.frames.push_back(Outbound::Frame(text.into()));
            }
            full
        };
        if full {
            metrics::counter!("ws_slow_client_closes_total").increment(1);
            tracing::info!("outbound queue full: closing slow client");
            self.abort(close::SLOW_CLIENT, "slow client");
            return false;
        }
        self.0.writer.wake();
        crate::telemetry::count("ws_messages_out_total", "type", kind);
        true
    }

    /// Queues a ping after the frames already queued (none if the queue is full: a client
    /// that far behind is closed as slow anyway).
    pub fn ping(&self) {
        if self.is_closing() {
            return;
        }
        let mut q = self.queue();
        if q.frames.len() < self.0.capacity {
            q.frames.push_back(Outbound::Ping);
        }
        drop(q);
        self.0.writer.wake();
    }

    /// Closes after the frames already queued (at once if the queue is full).
    pub fn close(&self, code: u16, reason: &str) {
        if self.0.closing.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut q = self.queue();
        if q.frames.len() >= self.0.capacity {
            q.abort.get_or_insert((code, reason.to_owned()));
        } else {
            q.frames.push_back(Outbound::Close(code, reason.to_owned()));
        }
        drop(q);
        self.0.writer.wake();
    }

    /// Closes now, dropping whatever is queued.
    pub fn abort(&self, code: u16, reason: &str) {
        self.0.closing.store(true, Ordering::Relaxed);
        self.queue().abort.get_or_insert((code, reason.to_owned()));
        self.0.writer.wake();
    }

    /// The writer's next item: an abort first, then queued frames in order. Pending (and
    /// the task woken later) while there is nothing to write.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        // Registered before the check, so a frame queued after the check wakes the task.
        self.0.writer.register(cx.waker());
        let mut q = self.queue();
        if let Some((code, reason)) = q.abort.take() {
            q.frames = VecDeque::new();
            return Poll::Ready(Next::Close(code, reason));
        }
        match q.frames.pop_front() {
            Some(Outbound::Frame(t)) => Poll::Ready(Next::Frame(t)),
            Some(Outbound::Close(code, reason)) => Poll::Ready(Next::Close(code, reason)),
            Some(Outbound::Ping) => Poll::Ready(Next::Ping),
            None => {
                // Give the memory of a burst back once drained.
                if q.frames.capacity() > 8 {
                    q.frames = VecDeque::new();
                }
                Poll::Pending
            }
        }
    }

    /// Wakes the task of `cx` on the next frame, close or abort (while the writer is stuck
    /// on a socket the client does not read).
    pub fn register(&self, cx: &mut Context<'_>) {
        self.0.writer.register(cx.waker());
    }

    /// The session is over: nothing more is queued (an abort still closes the socket).
    pub fn retire(&self) {
        self.0.closing.store(true, Ordering::Relaxed);
    }

    /// Sends an error frame and counts it. Returns true when this error reaches the
    /// consecutive-error limit: the caller then closes with 1008 (in order with the frames
    /// it still owes, which is why the outbox does not close by itself).
    #[must_use = "at the limit the caller must close the socket"]
    pub fn refuse(&self, code: &str, message: &str, reference: Option<&str>) -> bool {
        metrics::counter!("ws_errors_total", "code" => code.to_owned()).increment(1);
        self.send(&ServerMsg::error(code, message, reference));
        let n = self.0.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.0.max_errors {
            tracing::info!(errors = n, "closing after consecutive errors");
        }
        n >= self.0.max_errors
    }

    /// A frame was accepted: the consecutive error count starts again.
    pub fn accepted(&self) {
        self.0.errors.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(out: &Outbox) -> Next {
        std::future::poll_fn(|cx| out.poll_next(cx)).await
    }

    fn text(n: &Next) -> String {
        match n {
            Next::Frame(t) => t.to_string(),
            Next::Close(c, r) => format!("close {c} {r}"),
            Next::Ping => "ping".to_owned(),
        }
    }

    #[tokio::test]
    async fn frames_then_ordered_close() {
        let out = Outbox::new(4, 10);
        assert!(out.send(&ServerMsg::Pong));
        out.close(close::NORMAL, "bye");
        assert!(!out.send(&ServerMsg::Pong), "nothing after close");
        assert_eq!(text(&next(&out).await), r#"{"type":"pong"}"#);
        assert_eq!(text(&next(&out).await), "close 1000 bye");
    }

    #[tokio::test]
    async fn a_full_queue_aborts_with_4008_and_drops_the_backlog() {
        let out = Outbox::new(2, 10);
        assert!(out.send(&ServerMsg::Pong));
        assert!(out.send(&ServerMsg::Pong));
        assert!(!out.send(&ServerMsg::Pong), "third frame does not fit");
        assert!(out.is_closing());
        assert_eq!(text(&next(&out).await), "close 4008 slow client");
    }

    #[tokio::test]
    async fn tenth_consecutive_error_reaches_the_limit() {
        let out = Outbox::new(64, 10);
        for _ in 0..9 {
            assert!(!out.refuse("invalid_json", "x", None));
        }
        out.accepted();
        for _ in 0..9 {
            assert!(!out.refuse("invalid_json", "x", None));
        }
        assert!(out.refuse("invalid_json", "x", None));
    }

    #[tokio::test]
    async fn writer_wakes_for_a_frame_sent_later() {
        let out = Outbox::new(4, 10);
        let o2 = out.clone();
        let w = tokio::spawn(async move { text(&next(&o2).await) });
        tokio::task::yield_now().await;
        out.send(&ServerMsg::Pong);
        assert_eq!(w.await.unwrap(), r#"{"type":"pong"}"#);
    }
}
