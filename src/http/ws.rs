//! The WebSocket bridge: upgrades a ticket to a socket, decodes every text frame once
//! (size, rate limit, JSON, validation) into a typed [`Command`] for the session actor, and
//! writes the session's bounded outbound queue to the socket.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use governor::{Quota, RateLimiter};
use ractor::Actor;
use tokio::sync::oneshot;

use super::AppState;
use super::auth::Ticket;
use super::error::ApiError;
use super::error::ErrorBody;
use crate::actors::outbox::{Next, Outbox, close};
use crate::actors::session::{SessionActor, SessionArgs, SessionMsg};
use crate::protocol::{DecodeLimits, Role, decode};

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

/// Releases the socket slot however the session ends.
struct SocketSlot(AppState);
impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.ctx.sessions.close_socket();
    }
}

async fn run(state: AppState, t: Ticket, socket: WebSocket) {
    let _slot = SocketSlot(state.clone());
    let ctx = state.ctx.clone();
    let lim = &ctx.settings.limits;
    let (sink, mut stream) = socket.split();
    let out = Outbox::new(lim.outbound_queue, lim.max_consecutive_errors);
    let (done_tx, mut writer_done) = oneshot::channel::<()>();
    let grace = Duration::from_millis(ctx.settings.server.shutdown_grace_ms);
    tokio::spawn(write_loop(sink, out.clone(), done_tx, grace));

    let session_id = ctx.next_session_id();
    let last_zip = Arc::new(AtomicU32::new(t.zip));
    let args = SessionArgs {
        ctx: ctx.clone(),
        session_id,
        ticket: t.clone(),
        out: out.clone(),
        last_zip: last_zip.clone(),
    };
    // Boxed: the spawn future is large and short-lived; inline it would stay part of this
    // task's state (and memory) for the whole life of the socket.
    let (actor, mut join) = match Box::pin(Actor::spawn(None, SessionActor, args)).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("cannot start session: {e}");
            out.close(close::INTERNAL, "internal error");
            return;
        }
    };
    tracing::debug!(session_id, account = %t.account, role = t.role.as_str(), "session open");

    let per_s = NonZeroU32::new(lim.messages_per_s.max(1)).expect("max(1) is non-zero");
    let burst = NonZeroU32::new(lim.messages_burst.max(1)).expect("max(1) is non-zero");
    let limiter = RateLimiter::direct(Quota::per_second(per_s).allow_burst(burst));
    let dl = DecodeLimits {
        max_frame_bytes: lim.max_frame_bytes,
        max_window_s: ctx.settings.officer.max_window_s,
        min_radius_m: ctx.settings.citizen.min_radius_m,
        max_radius_m: ctx.settings.citizen.max_radius_m,
        max_limit: ctx.settings.citizen.max_limit,
    };
    let mut shutdown = ctx.shutdown_signal();
    // At the error limit the actor closes the socket after the replies it still owes;
    // until then further frames are read but not answered.
    let mut draining = false;

    loop {
        let frame = tokio::select! {
            _ = &mut writer_done => break,
            // The actor ended on its own (a bug made it panic, or it was killed): the
            // socket cannot be served any more.
            _ = &mut join => {
                tracing::error!(session_id, "session actor ended unexpectedly; closing its socket");
                out.abort(close::INTERNAL, "internal error");
                let _ = tokio::time::timeout(grace, &mut writer_done).await;
                break;
            }
            _ = shutting_down(&mut shutdown) => {
                out.close(close::GOING_AWAY, "server shutting down");
                // Keep the reader alive until the writer has sent the close frame.
                let _ = tokio::time::timeout(grace, &mut writer_done).await;
                break;
            }
            f = stream.next() => f,
        };
        let verdict = match frame {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ if draining => continue,
            Some(Ok(_)) if limiter.check().is_err() => {
                metrics::counter!("ws_rate_limited_total").increment(1);
                Err(("rate_limited", "too many messages".to_owned(), None))
            }
            Some(Ok(Message::Binary(_))) => Err((
                "unsupported_frame",
                "binary frames are not supported; send JSON text".to_owned(),
                None,
            )),
            Some(Ok(Message::Text(text))) => {
                decode(text.as_str(), t.role, &dl).map_err(|e| (e.code, e.message, e.reference))
            }
        };
        match verdict {
            Ok(cmd) => {
                if actor.cast(SessionMsg::Command(cmd)).is_err() {
                    break;
                }
            }
            Err((code, message, reference)) => {
                if out.refuse(code, &message, reference.as_deref()) {
                    draining = true;
                    // If the actor is gone the socket is closing anyway.
                    let _ = actor.cast(SessionMsg::Close {
                        code: close::POLICY,
                        error: None,
                        reason: "too many errors".into(),
                    });
                }
            }
        }
    }

    // The socket is done: stop the actor (post_stop withdraws the officer and unwatches).
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
    out.abort(close::NORMAL, "bye");
    tracing::debug!(session_id, "session closed");
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    out: Outbox,
    done: oneshot::Sender<()>,
    grace: Duration,
) {
    let closing = loop {
        match out.next().await {
            Next::Frame(text) => {
                let sent = tokio::select! {
                    biased;
                    a = out.aborted() => break Some(a),
                    r = sink.send(Message::Text(text)) => r,
                };
                if sent.is_err() {
                    break None;
                }
            }
            Next::Close(code, reason) => break Some((code, reason)),
        }
    };
    if let Some((code, reason)) = closing {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // A client that does not read may never take the close frame; bounded wait.
        let _ = tokio::time::timeout(grace, sink.send(Message::Close(Some(frame)))).await;
    }
    // The reader may be gone already; then there is nobody to tell.
    let _ = done.send(());
}

/// Resolves once shutdown has begun (at once if it already has).
async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the context is gone, which is a shutdown too.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
