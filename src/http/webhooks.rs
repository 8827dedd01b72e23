//! `/admin/v1/webhooks`: partners' subscriptions (create, list, update, remove) and each
//! one's deliveries with every attempt. Delivery itself is [`crate::webhooks`].

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, JsonBody};
use crate::protocol::Role;
use crate::store::webhooks::{DeliveryView, EVENT_TYPES, Webhook};

/// A secret's length bounds (characters).
const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// An event type a webhook subscribes to (the schema of `events`' items).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes the strings `events` holds; never built
pub enum WebhookEventType {
    /// A connection both sides consented to share.
    #[serde(rename = "connection.shared")]
    ConnectionShared,
    /// A trophy its account consented to share.
    #[serde(rename = "trophy.awarded")]
    TrophyAwarded,
    /// A donation its officer consented to share.
    #[serde(rename = "donation.made")]
    DonationMade,
}

/// Body of `POST /admin/v1/webhooks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where to POST: http(s), not a loopback, private or link-local address.
    #[schema(max_length = 2048)]
    url: String,
    /// Event types: `connection.shared`, `trophy.awarded`, `donation.made` (at least one).
    #[schema(value_type = Vec<WebhookEventType>, min_items = 1, max_items = 3)]
    events: Vec<String>,
    /// The key of the deliveries' `X-HeyBlue-Signature` (16..=256 characters).
    #[schema(min_length = 16, max_length = 256)]
    secret: String,
}

/// Body of `PATCH /admin/v1/webhooks/{id}`: what changes (at least one field, `400
/// invalid_body` otherwise).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchWebhook {
    /// A new receiver URL.
    #[schema(max_length = 2048, nullable = false)]
    #[serde(default, deserialize_with = "super::api::present")]
    url: Option<String>,
    /// New event types.
    #[schema(value_type = Option<Vec<WebhookEventType>>, min_items = 1, max_items = 3, nullable = false)]
    #[serde(default, deserialize_with = "super::api::present")]
    events: Option<Vec<String>>,
    /// A new secret (later attempts are signed with it).
    #[schema(min_length = 16, max_length = 256, nullable = false)]
    #[serde(default, deserialize_with = "super::api::present")]
    secret: Option<String>,
}

/// `201` of `POST /admin/v1/webhooks`.
#[derive(Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The new webhook's id.
    pub webhook_id: String,
    /// The webhook.
    pub webhook: Webhook,
}

/// `GET /admin/v1/webhooks`.
#[derive(Serialize, ToSchema)]
pub struct Webhooks {
    /// Every webhook, oldest first.
    pub webhooks: Vec<Webhook>,
}

/// `GET /admin/v1/webhooks/{id}/deliveries`.
#[derive(Serialize, ToSchema)]
pub struct Deliveries {
    /// Deliveries, newest first, each with its attempts.
    pub deliveries: Vec<DeliveryView>,
    /// Cursor of the next page (`before`), null on the last.
    pub next: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(bad("invalid_events", "events must name at least one type"));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(bad(
                "invalid_events",
                format!("unknown event type {e:?}; one of {EVENT_TYPES:?}"),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

fn check_secret(secret: &str) -> Result<(), ApiError> {
    if SECRET_LEN.contains(&secret.chars().count()) {
        Ok(())
    } else {
        Err(bad("invalid_secret", "secret must be 16..=256 characters"))
    }
}

async fn check_url(st: &AppState, url: &str) -> Result<(), ApiError> {
    crate::webhooks::check_url(url, st.ctx.settings.webhooks.allow_private)
        .await
        .map(drop)
        .map_err(|e| bad("invalid_url", e.to_string()))
}

fn unknown() -> ApiError {
    ApiError::not_found("unknown_webhook", "no such webhook")
}

/// `POST /admin/v1/webhooks`
#[utoipa::path(
    post,
    path = "/admin/v1/webhooks",
    tag = "admin",
    request_body = NewWebhook,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CreatedWebhook),
        (status = 400, description = "invalid_url, invalid_events, invalid_secret or a malformed body", body = ErrorBody),
        (status = 409, description = "too_many_webhooks (`webhooks.max_webhooks`)", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(b): JsonBody<NewWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let admin = caller.require(Role::Admin)?;
    let events = check_events(&b.events)?;
    check_secret(&b.secret)?;
    check_url(&st, &b.url).await?;
    let max = st.ctx.settings.webhooks.max_webhooks;
    let Some(w) = st
        .ctx
        .store
        .create_webhook(&b.url, &events, &b.secret, max)
        .await?
    else {
        metrics::counter!("webhooks_refused_total").increment(1);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_webhooks",
            format!("at most {max} webhooks (webhooks.max_webhooks)"),
        ));
    };
    tracing::info!(webhook = %w.webhook_id, url = %w.url, by = %admin.sub, "webhook created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook_id: w.webhook_id.clone(),
            webhook: w,
        }),
    ))
}

/// `GET /admin/v1/webhooks`
#[utoipa::path(
    get,
    path = "/admin/v1/webhooks",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every webhook (never its secret)", body = Webhooks),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn list(State(st): State<AppState>, caller: Caller) -> Result<Json<Webhooks>, ApiError> {
    caller.require(Role::Admin)?;
    let max = st.ctx.settings.webhooks.max_webhooks;
    Ok(Json(Webhooks {
        webhooks: st.ctx.store.webhooks(max).await?,
    }))
}

/// `PATCH /admin/v1/webhooks/{id}`
#[utoipa::path(
    patch,
    path = "/admin/v1/webhooks/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "Webhook id")),
    request_body = PatchWebhook,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The webhook as changed", body = Webhook),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "unknown_webhook", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PatchWebhook>,
) -> Result<Json<Webhook>, ApiError> {
    caller.require(Role::Admin)?;
    if b.url.is_none() && b.events.is_none() && b.secret.is_none() {
        return Err(bad("invalid_body", "give url, events, secret or several"));
    }
    let events = b.events.as_deref().map(check_events).transpose()?;
    if let Some(s) = &b.secret {
        check_secret(s)?;
    }
    if let Some(u) = &b.url {
        check_url(&st, u).await?;
    }
    st.ctx
        .store
        .update_webhook(
            &id,
            b.url.as_deref(),
            events.as_deref(),
            b.secret.as_deref(),
        )
        .await?
        .map(Json)
        .ok_or_else(unknown)
}

/// `DELETE /admin/v1/webhooks/{id}`
#[utoipa::path(
    delete,
    path = "/admin/v1/webhooks/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "Webhook id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed, with its deliveries"),
        (status = 404, description = "unknown_webhook", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let admin = caller.require(Role::Admin)?;
    if !st.ctx.store.delete_webhook(&id).await? {
        return Err(unknown());
    }
    tracing::info!(webhook = %id, by = %admin.sub, "webhook removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/v1/webhooks/{id}/deliveries?limit=..&before=..`
#[utoipa::path(
    get,
    path = "/admin/v1/webhooks/{id}/deliveries",
    tag = "admin",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("limit" = Option<u64>, Query, description = "Page size (default 50)", minimum = 1, maximum = 100),
        ("before" = Option<String>, Query, description = "Cursor: the previous page's `next` (a delivery id)", pattern = r"^[0-9]{1,18}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deliveries, newest first, each with its attempts", body = Deliveries),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "unknown_webhook", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn deliveries(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Deliveries>, ApiError> {
    caller.require(Role::Admin)?;
    let limit = super::limit_param(&q, 50, 100)?;
    let before = match q.get("before") {
        None => None,
        Some(b) => Some(b.parse::<i64>().map_err(|_| {
            bad(
                "invalid_cursor",
                "before must be a cursor from a previous page",
            )
        })?),
    };
    if st.ctx.store.webhook(&id).await?.is_none() {
        return Err(unknown());
    }
    let (deliveries, next) = st.ctx.store.deliveries(&id, limit, before).await?;
    Ok(Json(Deliveries { deliveries, next }))
}

/// Answer of `POST /admin/v1/webhooks/{id}/requeue`.
#[derive(Serialize, ToSchema)]
pub struct Requeued {
    /// Given-up deliveries put back in the queue.
    pub requeued: u64,
}

/// `POST /admin/v1/webhooks/{id}/requeue`: the webhook's given-up (`dead`) deliveries go back
/// in the queue — due now, attempts counted afresh, `webhooks.max_age_s` from now — and
/// out oldest first, before its later pending ones (after a partner's long outage).
#[utoipa::path(
    post,
    path = "/admin/v1/webhooks/{id}/requeue",
    tag = "admin",
    params(("id" = String, Path, description = "Webhook id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Put back; delivered from now on", body = Requeued),
        (status = 404, description = "unknown_webhook", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn requeue(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Requeued>), ApiError> {
    let admin = caller.require(Role::Admin)?;
    if st.ctx.store.webhook(&id).await?.is_none() {
        return Err(unknown());
    }
    let requeued = st.ctx.store.requeue_dead(&id, chrono::Utc::now()).await?;
    tracing::info!(webhook = %id, by = %admin.sub, requeued, "given-up deliveries requeued");
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued })))
}
