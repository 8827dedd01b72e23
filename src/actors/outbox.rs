//! The bounded write side of one socket, shared by its reader and its session actor.
//!
//! Frames are serialised once and queued (at most `limits.outbound_queue`); the socket's
//! writer task drains the queue. A client too slow to drain it is closed with 4008 at once
//! — the queue never grows. Error frames are counted here: after
//! `limits.max_consecutive_errors` in a row the socket is closed with 1008.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::ServerMsg;

/// Close codes used by the server.
pub mod close {
    /// Normal closure (window expired).
    pub const NORMAL: u16 = 1000;
    /// Server going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation (too many consecutive errors).
    pub const POLICY: u16 = 1008;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// A newer session of the same account replaced this one.
    pub const REPLACED: u16 = 4001;
    /// Ended by an admin.
    pub const KICKED: u16 = 4002;
    /// The client did not drain its outbound queue.
    pub const SLOW_CLIENT: u16 = 4008;
}

/// What the writer task receives.
#[derive(Debug)]
pub enum Outbound {
    /// A serialised text frame.
    Frame(Utf8Bytes),
    /// Send a close frame with this code and reason, then stop.
    Close(u16, String),
}

struct Shared {
    tx: mpsc::Sender<Outbound>,
    abort: Mutex<Option<oneshot::Sender<(u16, String)>>>,
    closing: AtomicBool,
    errors: AtomicU32,
    max_errors: u32,
}

/// Handle to a socket's outbound queue.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

impl Outbox {
    /// A queue of `capacity` frames; returns the writer's ends.
    pub fn new(
        capacity: usize,
        max_errors: u32,
    ) -> (
        Self,
        mpsc::Receiver<Outbound>,
        oneshot::Receiver<(u16, String)>,
    ) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (abort_tx, abort_rx) = oneshot::channel();
        let shared = Shared {
            tx,
            abort: Mutex::new(Some(abort_tx)),
            closing: AtomicBool::new(false),
            errors: AtomicU32::new(0),
            max_errors: max_errors.max(1),
        };
        (Self(Arc::new(shared)), rx, abort_rx)
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.0.closing.load(Ordering::Relaxed)
    }

    /// Queues a frame. Returns false if the socket is closing or was just closed as slow.
    pub fn send(&self, msg: &ServerMsg) -> bool {
        if self.is_closing() {
            return false;
        }
        let text = match serde_json::to_string(msg) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot serialise a server frame: {e}");
                return false;
            }
        };
        match self.0.tx.try_send(Outbound::Frame(text.into())) {
            Ok(()) => {
                metrics::counter!("ws_messages_out_total", "type" => msg.kind()).increment(1);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("ws_slow_client_closes_total").increment(1);
                tracing::info!("outbound queue full: closing slow client");
                self.abort(close::SLOW_CLIENT, "slow client");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Closes after the frames already queued (falls back to an immediate close if full).
    pub fn close(&self, code: u16, reason: &str) {
        if self.0.closing.swap(true, Ordering::Relaxed) {
            return;
        }
        if self
            .0
            .tx
            .try_send(Outbound::Close(code, reason.to_owned()))
            .is_err()
        {
            self.abort(code, reason);
        }
    }

    /// Closes now, dropping whatever is queued.
    pub fn abort(&self, code: u16, reason: &str) {
        self.0.closing.store(true, Ordering::Relaxed);
        let tx = self
            .0
            .abort
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(tx) = tx {
            // The writer may already be gone; then the socket is closed anyway.
            let _ = tx.send((code, reason.to_owned()));
        }
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
