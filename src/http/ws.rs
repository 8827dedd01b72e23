//! The WebSocket upgrade: redeems the ticket, reserves a socket slot (`503 server_full` at
//! `limits.max_sessions`), sets the socket's size limits, and hands the socket to its
//! session task ([`crate::actors::session::run`]), which owns it from then on.

use std::collections::HashMap;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::error::ErrorBody;

/// `GET /v1/ws?ticket=...`
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "sessions",
    params(
        ("ticket" = String, Query, description = "Ticket from the orchestrator"),
    ),
    responses(
        (status = 101, description = "WebSocket upgrade; the frames are in docs/protocol.md"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "Unknown, used, expired or other-node ticket", body = ErrorBody),
        (status = 503, description = "Node full", body = ErrorBody),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Checked before the ticket is redeemed: a request that cannot become a WebSocket
    // leaves the ticket usable.
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            metrics::counter!("ws_upgrades_refused_total", "reason" => "not_websocket")
                .increment(1);
            return ApiError::bad_request("websocket_upgrade_required", e.body_text())
                .into_response();
        }
    };
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
        .on_upgrade(move |socket| crate::actors::session::run(state.ctx.clone(), ticket, socket))
}
