//! The socket side of a session: one WebSocket read and written by the session's own
//! task. [`Writer`] moves the session's bounded outbound queue ([`Outbox`]) into the socket
//! between reads, so a socket costs one task and one wake-up per event, not a reader, a
//! writer and a hand-over between them.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{Sink, StreamExt};
use tokio::time::{Instant, Sleep};

use super::outbox::{Next, Outbox};

/// What the socket task's pump turns up.
pub enum Event {
    /// A frame from the client (`None` when the stream ended).
    Frame(Option<Result<Message, axum::Error>>),
    /// The socket is closing (a close or abort was requested): finish within the grace
    /// period.
    Closing,
    /// The writer is finished: close frame flushed, or the socket failed.
    WriterDone,
}

/// The write half of a socket, driven by the same task that reads it: one task and one
/// wake-up per socket event instead of a reader, a writer and a hand-over between them.
pub struct Writer {
    out: Outbox,
    /// A frame was handed to the socket and is not flushed yet.
    flushing: bool,
    /// The close frame was handed to the socket.
    closing: bool,
    /// Whether the run loop was told [`Event::Closing`].
    told_closing: bool,
    /// The writer is finished: the close frame flushed, or the socket failed.
    pub done: bool,
}

impl Writer {
    /// The writer of `out`'s frames.
    pub fn new(out: Outbox) -> Self {
        Self {
            out,
            flushing: false,
            closing: false,
            told_closing: false,
            done: false,
        }
    }

    /// Moves queued frames into the socket until the queue is empty or the socket is
    /// full. Ready with an event for the run loop; Pending otherwise.
    fn poll_write(&mut self, cx: &mut Context<'_>, socket: &mut WebSocket) -> Poll<Event> {
        loop {
            if self.done {
                return Poll::Pending;
            }
            if self.closing_news() {
                return Poll::Ready(Event::Closing);
            }
            if self.flushing {
                match Pin::new(&mut *socket).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flushing = false,
                    Poll::Ready(Err(_)) => return self.finish(),
                    Poll::Pending => return self.stuck(cx),
                }
                if self.closing {
                    return self.finish();
                }
            }
            match Pin::new(&mut *socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return self.finish(),
                Poll::Pending => return self.stuck(cx),
            }
            let msg = match ready!(self.out.poll_next(cx)) {
                Next::Frame(text) => Message::Text(text),
                Next::Ping => Message::Ping(axum::body::Bytes::new()),
                Next::Close(code, reason) => {
                    self.closing = true;
                    Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    }))
                }
            };
            if Pin::new(&mut *socket).start_send(msg).is_err() {
                return self.finish();
            }
            self.flushing = true;
        }
    }

    /// The socket takes nothing more for now (a client that does not read). A close
    /// (4008, shutdown, ...) must still end it within the grace period, so the outbox
    /// wakes this task too.
    fn stuck(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if !self.told_closing {
            self.out.register(cx);
            if self.closing_news() {
                return Poll::Ready(Event::Closing);
            }
        }
        Poll::Pending
    }

    /// Whether the outbox began closing since the run loop was last told: once only.
    fn closing_news(&mut self) -> bool {
        let news = !self.told_closing && self.out.is_closing();
        self.told_closing |= news;
        news
    }

    /// Writes until the writer is done (the close frame flushed or the socket failed).
    pub async fn finish_on(&mut self, socket: &mut WebSocket) {
        std::future::poll_fn(|cx| {
            loop {
                match self.poll_write(cx, socket) {
                    Poll::Ready(Event::WriterDone) => return Poll::Ready(()),
                    Poll::Ready(_) => continue,
                    Poll::Pending if self.done => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    fn finish(&mut self) -> Poll<Event> {
        self.done = true;
        Poll::Ready(Event::WriterDone)
    }

    /// Writes what can be written, then reads the next frame.
    pub fn poll_event(&mut self, cx: &mut Context<'_>, socket: &mut WebSocket) -> Poll<Event> {
        if let Poll::Ready(e) = self.poll_write(cx, socket) {
            return Poll::Ready(e);
        }
        socket.poll_next_unpin(cx).map(Event::Frame)
    }
}

/// The close code and reason RFC 6455 gives a read error, counted in
/// `ws_protocol_closes_total{code}`; `None` when the connection itself failed (no close
/// frame can be sent).
pub fn close_for(e: axum::Error) -> Option<(u16, &'static str)> {
    use super::outbox::close;
    let e = e.into_inner().downcast::<tungstenite::Error>().ok()?;
    let (code, reason, label) = match *e {
        tungstenite::Error::Capacity(_) => (close::TOO_BIG, "message too big", "1009"),
        tungstenite::Error::Utf8(_) => (close::INVALID_DATA, "text is not UTF-8", "1007"),
        tungstenite::Error::Protocol(_) => (close::PROTOCOL, "protocol error", "1002"),
        _ => return None,
    };
    metrics::counter!("ws_protocol_closes_total", "code" => label).increment(1);
    Some((code, reason))
}

/// Starts the grace period of a closing socket (once: a later close does not extend it).
pub fn arm(deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>, grace: Duration) {
    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
}

/// The server's heartbeat of one socket: after `every` without a frame from the client it
/// sends a ping; if nothing (a pong or any frame) comes within `patience` the client is
/// gone. Its times move only when it fires, never per frame.
pub struct Heartbeat {
    every: Duration,
    patience: Duration,
    /// When it fires next.
    pub next: Instant,
    heard: bool,
    waiting: bool,
}

/// What the heartbeat says when it fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// The client was heard: nothing to do.
    Quiet,
    /// Send a ping.
    Ping,
    /// No answer to the ping: close.
    Dead,
}

impl Heartbeat {
    /// A heartbeat starting now.
    pub fn new(every: Duration, patience: Duration) -> Self {
        Self {
            every,
            patience,
            next: Instant::now() + every,
            heard: false,
            waiting: false,
        }
    }

    /// A frame came from the client.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// What to do at `now`, if it is due.
    pub fn due(&mut self, now: Instant) -> Option<Beat> {
        if now < self.next {
            return None;
        }
        Some(if std::mem::take(&mut self.heard) {
            self.waiting = false;
            self.next = now + self.every;
            Beat::Quiet
        } else if self.waiting {
            Beat::Dead
        } else {
            self.waiting = true;
            self.next = now + self.patience;
            Beat::Ping
        })
    }
}

/// The one timer of a session: the role's earliest deadline, re-armed only when it moves.
#[derive(Default)]
pub struct Timer(Option<(Instant, Pin<Box<Sleep>>)>);

impl Timer {
    /// Aims the timer at `want` (none: it never fires).
    pub fn set(&mut self, want: Option<Instant>) {
        if self.0.as_ref().map(|(t, _)| *t) == want {
            return;
        }
        self.0 = match (want, self.0.take()) {
            (None, _) => None,
            (Some(t), Some((_, mut s))) => {
                s.as_mut().reset(t);
                Some((t, s))
            }
            (Some(t), None) => Some((t, Box::pin(tokio::time::sleep_until(t)))),
        };
    }

    /// Waits for the timer to fire.
    pub async fn fired(&mut self) {
        match &mut self.0 {
            Some((_, s)) => s.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_pings_the_silent_and_gives_up_on_the_dumb() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(s(30), s(10));
        assert_eq!(hb.due(t0 + s(29)), None);
        // Heard from within the interval: quiet, next look an interval later.
        hb.heard();
        assert_eq!(hb.due(t0 + s(30)), Some(Beat::Quiet));
        assert_eq!(hb.next, t0 + s(60));
        // Silent for an interval: a ping; an answer in time keeps it.
        assert_eq!(hb.due(t0 + s(60)), Some(Beat::Ping));
        assert_eq!(hb.next, t0 + s(70));
        hb.heard();
        assert_eq!(hb.due(t0 + s(70)), Some(Beat::Quiet));
        // A ping unanswered for the patience: dead.
        assert_eq!(hb.due(t0 + s(100)), Some(Beat::Ping));
        assert_eq!(hb.due(t0 + s(110)), Some(Beat::Dead));
    }
}
