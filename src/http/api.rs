//! The authenticated profile API: `/v1/me`, its points ledger and connection history.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Caller, Claims};
use super::error::ApiError;
use super::error::ErrorBody;
use crate::store::profiles::{ConnectionView, Entry, Profile};

/// Largest page of the profile's lists (`limit`).
pub const MAX_PAGE: u64 = 100;

/// `GET /v1/me/points`: ledger entries, newest first.
#[derive(Serialize, ToSchema)]
pub struct PointsPage {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Cursor of the next page (`before`), null on the last.
    pub next: Option<String>,
}

/// `GET /v1/me/connections`: connections, newest first.
#[derive(Serialize, ToSchema)]
pub struct ConnectionsPage {
    /// The connections (zip and time; never coordinates).
    pub connections: Vec<ConnectionView>,
    /// Cursor of the next page (`before`), null on the last.
    pub next: Option<String>,
}

pub(super) fn invalid_cursor() -> ApiError {
    ApiError::bad_request(
        "invalid_cursor",
        "before must be a cursor from a previous page",
    )
}

/// The caller's account, created on first use with the token's role and name.
async fn me_account(st: &AppState, caller: &Caller) -> Result<Claims, ApiError> {
    let c = caller.0.clone();
    let name = c.name.clone().unwrap_or_else(|| c.sub.clone());
    st.ctx
        .store
        .ensure_account(&c.sub, c.role.as_str(), &name)
        .await?;
    Ok(c)
}

/// `GET /v1/me`
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "profile",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Profile, points and connection count", body = Profile),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn get_me(State(st): State<AppState>, caller: Caller) -> Result<Json<Profile>, ApiError> {
    let c = me_account(&st, &caller).await?;
    // Read your writes: what committed before this request is projected before it is read.
    st.ctx.publisher.publish_pending().await?;
    let p = st
        .ctx
        .store
        .profile(&c.sub)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_account", "no such account"))?;
    Ok(Json(p))
}

/// An optional field that, when present, is not null (`null` is refused like a wrong type).
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Body of `PATCH /v1/me`: at least one of the fields (`400 invalid_body` otherwise).
#[derive(Deserialize, ToSchema)]
pub struct PatchMe {
    /// The new display name: 1..=60 characters once trimmed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 60,
        nullable = false,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    #[serde(default, deserialize_with = "present")]
    display_name: Option<String>,
    /// Consent to share this account's connections (with another consenting account),
    /// trophies and donations: display names, zip, city and time, never a position.
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "present")]
    share_connections: Option<bool>,
}

/// `PATCH /v1/me`
#[utoipa::path(
    patch,
    path = "/v1/me",
    tag = "profile",
    request_body = PatchMe,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated profile", body = Profile),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn patch_me(
    State(st): State<AppState>,
    caller: Caller,
    super::error::JsonBody(body): super::error::JsonBody<PatchMe>,
) -> Result<Json<Profile>, ApiError> {
    if body.display_name.is_none() && body.share_connections.is_none() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "give display_name, share_connections or both",
        ));
    }
    let name = match &body.display_name {
        None => None,
        Some(n) => Some(super::auth::display_name(n).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_display_name",
                "display_name must be 1..=60 characters without control characters",
            )
        })?),
    };
    let c = me_account(&st, &caller).await?;
    st.ctx
        .store
        .update_profile(&c.sub, name, body.share_connections)
        .await?;
    // A name or a consent changed: this node's feed shows it from the next read.
    st.feed.forget();
    get_me(State(st), caller).await
}

/// `GET /v1/me/points?limit=50&before=<cursor>`
#[utoipa::path(
    get,
    path = "/v1/me/points",
    tag = "profile",
    params(
        ("limit" = Option<u64>, Query, description = "Page size (default 50)", minimum = 1, maximum = 100),
        ("before" = Option<String>, Query, description = "Cursor: the previous page's `next` (an entry id)", pattern = r"^[0-9]{1,18}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ledger entries, newest first", body = PointsPage),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn my_points(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<PointsPage>, ApiError> {
    let limit = super::limit_param(&q, 50, MAX_PAGE)?;
    let before = match q.get("before") {
        None => None,
        Some(b) => Some(b.parse::<i64>().map_err(|_| invalid_cursor())?),
    };
    let c = me_account(&st, &caller).await?;
    let (entries, next) = st.ctx.store.ledger_page(&c.sub, limit, before).await?;
    Ok(Json(PointsPage { entries, next }))
}

/// `GET /v1/me/connections?limit=..&before=..`
#[utoipa::path(
    get,
    path = "/v1/me/connections",
    tag = "profile",
    params(
        ("limit" = Option<u64>, Query, description = "Page size (default 50)", minimum = 1, maximum = 100),
        ("before" = Option<String>, Query, description = "Cursor: the previous page's `next` (`<created_at>|<connection_id>`)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Connections, newest first (zip and time only)", body = ConnectionsPage),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn my_connections(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ConnectionsPage>, ApiError> {
    let limit = super::limit_param(&q, 50, MAX_PAGE)?;
    let before = match q.get("before") {
        None => None,
        Some(b) => {
            let (at, id) = b.split_once('|').ok_or_else(invalid_cursor)?;
            let at = chrono::DateTime::parse_from_rfc3339(at).map_err(|_| invalid_cursor())?;
            Some((at.with_timezone(&chrono::Utc), id.to_owned()))
        }
    };
    let c = me_account(&st, &caller).await?;
    let (connections, next) = st.ctx.store.connections_page(&c.sub, limit, before).await?;
    Ok(Json(ConnectionsPage { connections, next }))
}
