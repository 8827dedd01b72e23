//! HTTP: the router, health, zip lookup, the orchestrator (session tickets), metrics and
//! the live admin views. Handlers parse and check input, then call handles; they hold no
//! domain state.

pub mod admin;
pub mod api;
pub mod auth;
pub mod error;
pub mod rewards;
pub mod ws;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};

use self::auth::{Auth, Caller, Ticket, Tickets};
use self::error::ApiError;
use crate::context::Context;
use crate::geo::LatLon;
use crate::geo::zips::LocateError;
use crate::protocol::Role;

/// What every handler gets.
pub type AppState = Arc<HttpState>;

/// Shared by the routes.
pub struct HttpState {
    /// The node.
    pub ctx: Arc<Context>,
    /// Token keys.
    pub auth: Auth,
    /// Outstanding tickets.
    pub tickets: Tickets,
}

impl HttpState {
    /// Builds the route state from a context.
    pub fn new(ctx: Arc<Context>) -> AppState {
        let auth = Auth::new(ctx.settings.auth.jwt_secret.expose());
        let tickets = Tickets::new(ctx.settings.auth.max_outstanding_tickets);
        Arc::new(Self { ctx, auth, tickets })
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        let buckets = [
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ];
        PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("non-empty buckets")
            .install_recorder()
            .expect("the only Prometheus recorder of the process")
    })
}

/// The router of every endpoint.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/zips/lookup", get(zip_lookup))
        .route("/v1/officers/session", get(officer_session))
        .route("/v1/citizens/session", get(citizen_session))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/me", get(api::get_me).patch(api::patch_me))
        .route("/v1/me/points", get(api::my_points))
        .route("/v1/me/connections", get(api::my_connections))
        .route("/v1/offers", get(rewards::offers))
        .route("/v1/redemptions", post(rewards::redeem))
        .route("/v1/vouchers/{code}", get(rewards::voucher))
        .route("/v1/vouchers/{code}/redeem", post(rewards::use_voucher))
        .route("/v1/charities", get(rewards::charities))
        .route("/v1/donations", post(rewards::donate))
        .route("/metrics", get(admin::metrics))
        .route("/admin/v1/regions/{zip}", get(admin::region))
        .route("/admin/v1/stats", get(admin::stats))
        .route(
            "/admin/v1/sessions/{account_id}",
            delete(admin::end_session),
        )
        .route(
            "/admin/v1/reports/connections",
            get(admin::connections_report),
        )
        .route(
            "/admin/v1/import/{kind}",
            post(admin::import).layer(DefaultBodyLimit::max(
                state.ctx.settings.limits.import_max_bytes,
            )),
        )
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(
            state.ctx.settings.limits.max_body_bytes,
        ))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn coordinates(q: &HashMap<String, String>) -> Result<LatLon, ApiError> {
    let num = |k: &str| q.get(k).and_then(|v| v.trim().parse::<f64>().ok());
    num("lat")
        .zip(num("lon"))
        .and_then(|(lat, lon)| LatLon::new(lat, lon))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_coordinates",
                "lat must be a number in [-90, 90] and lon in [-180, 180]",
            )
        })
}

fn outside(e: LocateError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "outside_service_area",
        e.to_string(),
    )
}

async fn zip_lookup(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let p = coordinates(&q)?;
    let (id, _) = st
        .ctx
        .zips
        .locate(p, st.ctx.settings.regions.max_distance_m)
        .map_err(outside)?;
    let z = st.ctx.zips.get(id);
    Ok(Json(json!({
        "zip": &*z.code, "city": &*z.city, "state": &*z.state,
        "lat": z.centroid.lat, "lon": z.centroid.lon,
    })))
}

async fn officer_session(
    st: State<AppState>,
    caller: Caller,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    open_session(st, caller, Role::Officer, q, h).await
}

async fn citizen_session(
    st: State<AppState>,
    caller: Caller,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    open_session(st, caller, Role::Citizen, q, h).await
}

/// The orchestrator: checks the caller and position, issues a single-use ticket bound to
/// account, role and node, and answers with the `ws_url` of this node.
async fn open_session(
    State(st): State<AppState>,
    caller: Caller,
    role: Role,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let claims = caller.require(role)?;
    let ctx = &st.ctx;
    let pos = coordinates(&q)?;
    let reported = match q.get("zip") {
        Some(z)
            if z.len() == 5
                && z.bytes().all(|b| b.is_ascii_digit())
                && ctx.zips.by_code(z).is_some() =>
        {
            Some(z.clone())
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "unknown_zip",
                "zip must be a known 5-digit zip code",
            ));
        }
        None => None,
    };
    let (zip, d0) = ctx
        .zips
        .locate(pos, ctx.settings.regions.max_distance_m)
        .map_err(outside)?;
    let code = ctx.zips.get(zip).code.to_string();
    if let Some(r) = &reported
        && *r != code
    {
        tracing::info!(account = %claims.sub, reported = %r, zip = %code, "reported zip differs from position");
    }
    let ttl = Duration::from_secs(ctx.settings.auth.ticket_ttl_s);
    let name = claims.name.clone().unwrap_or_else(|| claims.sub.clone());
    // Best effort: the real-time core keeps serving while the store is down; the profile
    // is created on its first use then.
    if let Err(e) = ctx
        .store
        .ensure_account(&claims.sub, role.as_str(), &name)
        .await
    {
        tracing::warn!(account = %claims.sub, "account not recorded at session open: {e}");
    }
    let ticket = st.tickets.issue(Ticket::new(
        claims.sub.as_str().into(),
        name.into(),
        role,
        pos,
        zip,
        d0,
        ctx.settings.server.node_id.clone(),
        ttl,
    ))?;
    let base = if ctx.settings.server.public_url.is_empty() {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(&ctx.settings.server.bind);
        format!("ws://{host}")
    } else {
        ctx.settings
            .server
            .public_url
            .trim_end_matches('/')
            .to_owned()
    };
    Ok(Json(json!({
        "ws_url": format!("{base}/v1/ws?ticket={ticket}"),
        "ticket_expires_in_s": ttl.as_secs(),
        "zip": code,
        "reported_zip": reported,
        "node": ctx.settings.server.node_id,
    })))
}
