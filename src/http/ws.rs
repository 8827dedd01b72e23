//! The WebSocket bridge: upgrades a ticket to a socket, decodes every text frame once
//! (size, rate limit, JSON, validation) into a typed [`Command`] for the session actor, and
//! writes the session's bounded outbound queue to the socket.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use ractor::Actor;

use super::AppState;
use super::auth::Ticket;
use super::error::ApiError;
use super::error::ErrorBody;
use crate::actors::outbox::{Next, Outbox, close};
use crate::actors::session::{Handed, SessionActor, SessionArgs, SessionHandle, SessionMsg};
use crate::protocol::{DecodeLimits, Role, WireError, decode};

/// `GET /v1/ws?ticket=...`
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "sessions",
    params(
        ("ticket" = String, Query, description = "Ticket from the orchestrator"),
    ),
    responses(
        (status = 101, description = "WebSocket upgrade; the frames are in PROTOCOL.md"),
        (status = 401, description = "Unknown, used, expired or other-node ticket", body = ErrorBody),
        (status = 503, description = "Node full", body = ErrorBody),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ctx = &state.ctx;
    let ticket = q
        .get("ticket")
        .and_then(|t| state.tickets.redeem(t, &ctx.settings.server.node_id));
    let Some(ticket) = ticket else {
        metrics::counter!("ws_upgrades_refused_total", "reason" => "ticket").increment(1);
        return ApiError::unauthorized("invalid_ticket", "the ticket is unknown, used or expired")
            .into_response();
    };
    let lim = &ctx.settings.limits;
    if !ctx.sessions.try_open_socket(lim.max_sessions) {
        metrics::counter!("ws_upgrades_refused_total", "reason" => "full").increment(1);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            "this node holds its maximum of sessions",
        )
        .into_response();
    }
    ws.read_buffer_size(lim.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(lim.max_message_bytes)
        .max_frame_size(lim.max_message_bytes)
        .on_failed_upgrade({
            let ctx = ctx.clone();
            move |e| {
                tracing::info!("websocket upgrade failed: {e}");
                ctx.sessions.close_socket();
            }
        })
        .on_upgrade(move |socket| run(state, ticket, socket))
}

/// Releases the socket slot and unlists the outbox however the session ends.
struct SocketSlot(AppState, u64);
impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.ctx.sessions.detach(self.1);
        self.0.ctx.sessions.close_socket();
    }
}

/// What the socket task's pump turns up.
enum Event {
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
struct Writer {
    out: Outbox,
    /// A frame was handed to the socket and is not flushed yet.
    flushing: bool,
    /// The close frame was handed to the socket.
    closing: bool,
    /// Whether the run loop was told [`Event::Closing`].
    told_closing: bool,
    done: bool,
}

impl Writer {
    fn new(out: Outbox) -> Self {
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
    async fn finish_on(&mut self, socket: &mut WebSocket) {
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
    fn poll_event(&mut self, cx: &mut Context<'_>, socket: &mut WebSocket) -> Poll<Event> {
        if let Poll::Ready(e) = self.poll_write(cx, socket) {
            return Poll::Ready(e);
        }
        socket.poll_next_unpin(cx).map(Event::Frame)
    }
}

async fn run(state: AppState, t: Ticket, mut socket: WebSocket) {
    let ctx = state.ctx.clone();
    let session_id = ctx.next_session_id();
    let _slot = SocketSlot(state.clone(), session_id);
    let lim = &ctx.settings.limits;
    let out = Outbox::new(lim.outbound_queue, lim.max_consecutive_errors);
    // Listed for shutdown, which closes the socket through its outbox (1001).
    ctx.sessions.attach(session_id, out.clone());
    let mut writer = Writer::new(out.clone());
    let grace = Duration::from_millis(ctx.settings.server.shutdown_grace_ms);

    let last_zip = Arc::new(AtomicU32::new(t.zip));
    let args = SessionArgs {
        ctx: ctx.clone(),
        session_id,
        ticket: t.clone(),
        out: out.clone(),
        last_zip: last_zip.clone(),
        shared: Arc::default(),
    };
    let slot = args.shared.clone();
    // Boxed: the spawn future is large and short-lived; inline it would stay part of this
    // task's state (and memory) for the whole life of the socket.
    let (actor, mut join) = match Box::pin(Actor::spawn(None, SessionActor, args)).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("cannot start session: {e}");
            out.close(close::INTERNAL, "internal error");
            let _ = tokio::time::timeout(grace, writer.finish_on(&mut socket)).await;
            return;
        }
    };
    tracing::debug!(session_id, account = %t.account, role = t.role.as_str(), "session open");
    let mut session = SessionHandle::new(actor.clone(), &slot, out.clone());
    drop(slot);

    let per_s = NonZeroU32::new(lim.messages_per_s.max(1)).expect("max(1) is non-zero");
    let burst = NonZeroU32::new(lim.messages_burst.max(1)).expect("max(1) is non-zero");
    let limiter = RateLimiter::direct(Quota::per_second(per_s).allow_burst(burst));
    let dl = DecodeLimits::from_settings(&ctx.settings);
    // Refusals cast since the last command: at the error limit the session will close
    // with 1008 once it has answered them, so later frames are not forwarded (this also
    // bounds what a flooding client can queue in the session's mailbox).
    let mut refused_in_row = 0u32;
    let max_refused = lim.max_consecutive_errors.max(1);
    // Once the socket is closing it has `grace` to finish: boxed, as most sockets never
    // close this way.
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;

    // Everything that ends a socket reaches it through its outbox — the session actor's
    // closes, shutdown (`Sessions::close_all`), and the actor's own end if it panics or is
    // killed (`SessionCell`'s drop aborts with 1011; a location handled here that panics
    // does the same) — so a frame costs one poll of the outbox and the socket, nothing else.
    loop {
        let frame = tokio::select! {
            biased;
            _ = async { deadline.as_mut().expect("guarded").await }, if deadline.is_some() => break,
            e = std::future::poll_fn(|cx| writer.poll_event(cx, &mut socket)) => match e {
                Event::WriterDone => break,
                Event::Closing => {
                    arm(&mut deadline, grace);
                    continue;
                }
                Event::Frame(f) => f,
            },
        };
        let msg = match frame {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            // At the error limit (or any other close) the actor closes the socket after
            // the replies it still owes; until then further frames are read, not answered.
            _ if out.is_closing() || refused_in_row >= max_refused => {
                metrics::counter!("ws_frames_ignored_total").increment(1);
                continue;
            }
            Some(Ok(_)) if limiter.check().is_err() => {
                metrics::counter!("ws_rate_limited_total").increment(1);
                SessionMsg::Refused(WireError::new("rate_limited", "too many messages", None))
            }
            Some(Ok(Message::Binary(_))) => SessionMsg::Refused(WireError::new(
                "unsupported_frame",
                "binary frames are not supported; send JSON text",
                None,
            )),
            Some(Ok(Message::Text(text))) => match decode(text.as_str(), t.role, &dl) {
                Ok(cmd) => {
                    // Counted here, whichever task then handles it.
                    crate::telemetry::count("ws_messages_in_total", "type", cmd.type_name());
                    SessionMsg::Command(cmd)
                }
                // Refused by the actor, so that replies and the consecutive-error count
                // follow the order of the frames.
                Err(e) => SessionMsg::Refused(e),
            },
        };
        if matches!(msg, SessionMsg::Refused(_)) {
            refused_in_row += 1;
        } else {
            refused_in_row = 0;
        }
        let handed = match session.send(msg) {
            Ok(Handed::Cast) => Ok(()),
            Ok(Handed::Here(location)) => location.await,
            Err(gone) => Err(gone),
        };
        if handed.is_err() {
            break;
        }
    }

    // The socket is done: stop the actor (post_stop withdraws the officer and unwatches).
    // Retired first, so that the actor's end is not taken for a failure.
    out.retire();
    actor.stop(None);
    if !join.is_finished()
        && Box::pin(tokio::time::timeout(Duration::from_secs(5), &mut join))
            .await
            .is_err()
    {
        tracing::warn!(session_id, "session actor did not stop in time");
    }
    // If the actor died without post_stop, make sure nothing it published outlives it:
    // the registry entry and (officers) the index entry in its last region.
    ctx.sessions.unregister(&t.account, session_id);
    if t.role == Role::Officer {
        ctx.regions.remove(
            last_zip.load(Ordering::Relaxed),
            t.account.clone(),
            session_id,
        );
    }
    // Close the socket if nobody has (the client went first: this flushes the reply to
    // its close frame); a client that does not read gets the grace period.
    if !writer.done {
        out.abort(close::NORMAL, "bye");
        let _ = tokio::time::timeout(grace, writer.finish_on(&mut socket)).await;
    }
    // A client that closed first gets the reply tungstenite queued when it read the close.
    let _ = tokio::time::timeout(grace, socket.flush()).await;
    tracing::debug!(session_id, "session closed");
}

/// Starts the grace period of a closing socket (once: a later close does not extend it).
fn arm(deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>, grace: Duration) {
    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
}
