//! HTTP: the router, health, zip lookup, the orchestrator (session tickets), metrics and
//! the live admin views. Handlers parse and check input, then call handles; they hold no
//! domain state.

pub mod admin;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod feed;
pub mod live;
pub mod oidc;
pub mod rewards;
pub mod serve;
pub mod tls;
pub mod web;
pub mod webhooks;
pub mod ws;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use self::auth::{Auth, Caller, Ticket, Tickets};
use self::error::{ApiError, ErrorBody};
use crate::context::Context;
use crate::geo::LatLon;
use crate::protocol::Role;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// `/openapi.json`, set when the router is built.
    pub openapi: OnceLock<Value>,
    /// The dashboard's live feed.
    pub live: Arc<live::LiveFeed>,
    /// The public feed's first pages.
    pub feed: feed::FeedCache,
}

impl HttpState {
    /// Builds the route state from a context.
    pub fn new(ctx: Arc<Context>) -> AppState {
        let auth = Auth::from_settings(&ctx.settings.auth);
        let tickets = Tickets::new(ctx.settings.auth.max_outstanding_tickets);
        let live = live::LiveFeed::new(ctx.settings.admin.live_queue);
        let feed = feed::FeedCache::new(ctx.settings.feed.cache_ms);
        Arc::new(Self {
            ctx,
            auth,
            tickets,
            openapi: OnceLock::new(),
            live,
            feed,
        })
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

/// OpenAPI document metadata; the paths are collected from the annotated handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Hey Blue! server",
        description = "HTTP endpoints of the client contract (docs/protocol.md). WebSocket frames are described there."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The router of every endpoint and the OpenAPI description generated from the same
/// registrations, so a route cannot be served without being described.
pub fn router_and_openapi(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let import = OpenApiRouter::new()
        .routes(routes!(admin::import))
        .layer(DefaultBodyLimit::max(
            state.ctx.settings.limits.import_max_bytes,
        ));
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi))
        .routes(routes!(zip_lookup))
        .routes(routes!(officer_session))
        .routes(routes!(citizen_session))
        .routes(routes!(ws::upgrade))
        .routes(routes!(api::get_me, api::patch_me))
        .routes(routes!(api::my_points))
        .routes(routes!(api::my_connections))
        .routes(routes!(feed::feed))
        .routes(routes!(rewards::offers))
        .routes(routes!(rewards::redeem))
        .routes(routes!(rewards::voucher))
        .routes(routes!(rewards::use_voucher))
        .routes(routes!(rewards::charities))
        .routes(routes!(rewards::donate))
        .routes(routes!(admin::metrics))
        .routes(routes!(admin::region))
        .routes(routes!(admin::restart_region))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::update, webhooks::remove))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::requeue))
        .routes(routes!(admin::stats))
        .routes(routes!(admin::officers))
        .routes(routes!(admin::citizens_by_zip))
        .routes(routes!(live::live))
        .routes(routes!(admin::end_session))
        .routes(routes!(admin::connections_report))
        .layer(DefaultBodyLimit::max(
            state.ctx.settings.limits.max_body_bytes,
        ))
        .merge(import)
        .split_for_parts();
    let _ = state
        .openapi
        .set(serde_json::to_value(&doc).expect("the OpenAPI document serialises"));
    let router = router
        .merge(web::routes())
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state);
    (router, doc)
}

/// What every request is held to before and around its handler: its headers' count and
/// size (431 `headers_too_large`) and the time to answer it (408 `request_timeout`).
async fn edge(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let lim = &st.ctx.settings.limits;
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > lim.max_headers || bytes > lim.max_header_bytes {
        metrics::counter!("http_refused_total", "reason" => "headers").increment(1);
        return ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "at most {} header lines of {} bytes in all (limits.max_headers, limits.max_header_bytes)",
                lim.max_headers, lim.max_header_bytes
            ),
        )
        .into_response();
    }
    let limit = Duration::from_millis(lim.request_timeout_ms);
    // Every line logged while the request is handled names it.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let span = tracing::info_span!(
        "request",
        request = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        method = %req.method(),
        path = req.uri().path(),
    );
    use tracing::Instrument as _;
    match tokio::time::timeout(limit, next.run(req).instrument(span)).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("http_refused_total", "reason" => "timeout").increment(1);
            ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request was not completed within limits.request_timeout_ms",
            )
            .into_response()
        }
    }
}

/// The router of every endpoint.
pub fn router(state: AppState) -> Router {
    router_and_openapi(state).0
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses(
        (status = 200, description = "This document"),
    )
)]
async fn openapi(State(st): State<AppState>) -> Json<Value> {
    Json(st.openapi.get().cloned().unwrap_or(Value::Null))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "The server accepts sessions", body = Health),
    )
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The store (and, in a cluster, the cluster link) answers", body = Ready),
        (status = 503, description = "not_ready: the message names what is down", body = ErrorBody),
    )
)]
async fn readyz(State(st): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let mut down = Vec::new();
    let wait = std::time::Duration::from_millis(st.ctx.settings.database.ready_timeout_ms);
    match tokio::time::timeout(wait, st.ctx.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => down.push(format!("store: {e}")),
        Err(_) => down.push(format!("store: no answer within {} ms", wait.as_millis())),
    }
    if let Some(c) = &st.ctx.cluster
        && !c.ready()
    {
        down.push("cluster: not linked to NATS, or the membership lease is not fresh".into());
    }
    if down.is_empty() {
        return Ok(Json(Ready { status: "ready" }));
    }
    metrics::counter!("readyz_not_ready_total").increment(1);
    Err(ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        down.join("; "),
    ))
}

/// The `limit` query parameter of a list: `default` when absent, else 1..=`max` or
/// `400 invalid_limit`.
pub(crate) fn limit_param(
    q: &HashMap<String, String>,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", format!("limit must be 1..={max}"))
            }),
    }
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

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /v1/zips/lookup`: the zip whose cell holds a position.
#[derive(Serialize, ToSchema)]
pub struct ZipLookup {
    /// 5-digit zip code.
    pub zip: String,
    /// City.
    pub city: String,
    /// State (two letters).
    pub state: String,
    /// The zip's centroid, latitude.
    pub lat: f64,
    /// The zip's centroid, longitude.
    pub lon: f64,
    /// In a cluster, the node that owns the region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The orchestrator's answer: a single-use ticket in the `ws_url` to open.
#[derive(Serialize, ToSchema)]
pub struct SessionGrant {
    /// The WebSocket URL, ticket included.
    pub ws_url: String,
    /// Seconds the ticket stays valid.
    pub ticket_expires_in_s: u64,
    /// The zip whose cell holds the position.
    pub zip: String,
    /// The `zip` parameter as given, if any (never overrides the position).
    pub reported_zip: Option<String>,
    /// The node that holds the session.
    pub node: String,
}

#[utoipa::path(
    get,
    path = "/v1/zips/lookup",
    tag = "regions",
    params(
        ("lat" = f64, Query, description = "Latitude, -90..=90", minimum = -90, maximum = 90),
        ("lon" = f64, Query, description = "Longitude, -180..=180", minimum = -180, maximum = 180),
    ),
    responses(
        (status = 200, description = "The zip whose cell holds the position, with its centroid", body = ZipLookup),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 422, description = "Outside the service area", body = ErrorBody),
    )
)]
async fn zip_lookup(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ZipLookup>, ApiError> {
    let p = coordinates(&q)?;
    let (id, _) = st
        .ctx
        .zips
        .locate(p, st.ctx.settings.regions.max_distance_m)?;
    let z = st.ctx.zips.get(id);
    Ok(Json(ZipLookup {
        zip: z.code.to_string(),
        city: z.city.to_string(),
        state: z.state.to_string(),
        lat: z.centroid.lat,
        lon: z.centroid.lon,
        node: st
            .ctx
            .cluster
            .as_ref()
            .and_then(|c| c.owner_of(id))
            .map(|m| m.record.node_id),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/officers/session",
    tag = "sessions",
    params(
        ("lat" = f64, Query, description = "Latitude, -90..=90", minimum = -90, maximum = 90),
        ("lon" = f64, Query, description = "Longitude, -180..=180", minimum = -180, maximum = 180),
        ("zip" = Option<String>, Query, description = "Reported 5-digit zip (recorded, never overrides the position); an unknown one is 400 unknown_zip", pattern = r"^[0-9]{5}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A single-use ticket and the ws_url to open", body = SessionGrant),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 422, description = "Outside the service area", body = ErrorBody),
        (status = 429, description = "Too many outstanding tickets", body = ErrorBody),
        (status = 503, description = "node_full: the node holds limits.max_sessions sessions; cluster_unavailable: in a cluster, no node can take the session now", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
async fn officer_session(
    st: State<AppState>,
    caller: Caller,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Result<Json<SessionGrant>, ApiError> {
    open_session(st, caller, Role::Officer, q, h).await
}

#[utoipa::path(
    get,
    path = "/v1/citizens/session",
    tag = "sessions",
    params(
        ("lat" = f64, Query, description = "Latitude, -90..=90", minimum = -90, maximum = 90),
        ("lon" = f64, Query, description = "Longitude, -180..=180", minimum = -180, maximum = 180),
        ("zip" = Option<String>, Query, description = "Reported 5-digit zip (recorded, never overrides the position); an unknown one is 400 unknown_zip", pattern = r"^[0-9]{5}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A single-use ticket and the ws_url to open", body = SessionGrant),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 422, description = "Outside the service area", body = ErrorBody),
        (status = 429, description = "Too many outstanding tickets", body = ErrorBody),
        (status = 503, description = "node_full: the node holds limits.max_sessions sessions; cluster_unavailable: in a cluster, no node can take the session now", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
async fn citizen_session(
    st: State<AppState>,
    caller: Caller,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Result<Json<SessionGrant>, ApiError> {
    open_session(st, caller, Role::Citizen, q, h).await
}

/// 503 `node_full`: this node holds `limits.max_sessions` sessions.
fn node_full(message: String) -> ApiError {
    metrics::counter!("sessions_refused_total", "reason" => "node_full").increment(1);
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "node_full",
        message,
    )
}

/// A ticket for a session on this node, unless the node is full (`503 node_full`) or has
/// too many tickets outstanding (`429 too_many_tickets`).
fn issue_here(st: &HttpState, t: Ticket) -> Result<String, ApiError> {
    let max = st.ctx.settings.limits.max_sessions;
    if st.ctx.sessions.sockets() >= max {
        return Err(node_full(format!(
            "this node holds its most sessions ({max}, limits.max_sessions); try again later"
        )));
    }
    st.tickets.issue(t)
}

/// The orchestrator: checks the caller and position, issues a single-use ticket bound to
/// account, role and node, and answers with the `ws_url` of this node.
async fn open_session(
    State(st): State<AppState>,
    caller: Caller,
    role: Role,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<SessionGrant>, ApiError> {
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
    let (zip, d0) = ctx.zips.locate(pos, ctx.settings.regions.max_distance_m)?;
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
    let ticket = Ticket::new(
        claims.sub.as_str().into(),
        name.into(),
        role,
        pos,
        zip,
        d0,
        ctx.settings.server.node_id.clone(),
        ttl,
    );
    let (base, ticket, node) = if let Some(c) = &ctx.cluster {
        let r = cluster::route(&st, c, ticket).await?;
        (r.base, r.ticket, r.node)
    } else {
        let base = if ctx.settings.server.public_url.is_empty() {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(&ctx.settings.server.bind);
            let scheme = if ctx.settings.server.tls_cert.is_empty() {
                "ws"
            } else {
                "wss"
            };
            format!("{scheme}://{host}")
        } else {
            ctx.settings
                .server
                .public_url
                .trim_end_matches('/')
                .to_owned()
        };
        let ticket = issue_here(&st, ticket)?;
        (base, ticket, ctx.settings.server.node_id.clone())
    };
    Ok(Json(SessionGrant {
        ws_url: format!("{base}/v1/ws?ticket={ticket}"),
        ticket_expires_in_s: ttl.as_secs(),
        zip: code,
        reported_zip: reported,
        node,
    }))
}
