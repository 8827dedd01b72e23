//! Rewards over HTTP: the storefront, redemptions, voucher checks and use, charities and
//! donations. POSTs honour `Idempotency-Key`: the store records the outcome with the
//! effect, so the same key and request answer the same and act once.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::Caller;
use super::error::ErrorBody;
use super::error::{ApiError, Body};
use crate::protocol::Role;
use crate::store::rewards::{IdempotencyKey, Refusal};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let (status, code) = match r {
            Refusal::UnknownOffer => (StatusCode::NOT_FOUND, "unknown_offer"),
            Refusal::OfferExpired => (StatusCode::CONFLICT, "offer_expired"),
            Refusal::OfferExhausted => (StatusCode::CONFLICT, "offer_exhausted"),
            Refusal::InsufficientPoints => (StatusCode::CONFLICT, "insufficient_points"),
            Refusal::UnknownCharity => (StatusCode::NOT_FOUND, "unknown_charity"),
            Refusal::UnknownVoucher => (StatusCode::NOT_FOUND, "unknown_voucher"),
            Refusal::VoucherAlreadyRedeemed => (StatusCode::CONFLICT, "voucher_already_redeemed"),
            Refusal::WrongRetailer => (StatusCode::FORBIDDEN, "forbidden"),
            Refusal::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
        };
        ApiError::new(status, code, r.to_string())
    }
}

/// The request's `Idempotency-Key`, bound to the caller and to a hash of what was asked.
pub fn idempotency_key(
    headers: &HeaderMap,
    caller: &Caller,
    route: &str,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!(
                    "Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(body);
    Ok(Some(IdempotencyKey {
        account: caller.0.sub.clone(),
        key: key.to_owned(),
        fingerprint: data_encoding::HEXLOWER.encode(&h.finalize()),
    }))
}

/// Parses a JSON body, with the 400 every endpoint gives for a bad one.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// `limit` (1..=max) and `after` (an id) of a listing.
fn listing(q: &HashMap<String, String>) -> Result<(u64, Option<&str>), ApiError> {
    const MAX: u64 = 500;
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", format!("limit must be 1..={MAX}"))
            })?,
    };
    Ok((limit, q.get("after").map(String::as_str)))
}

fn next_after<T>(page: &[T], limit: u64, id: impl Fn(&T) -> &str) -> Value {
    match page.last() {
        Some(last) if page.len() as u64 == limit => json!(id(last)),
        _ => Value::Null,
    }
}

/// `GET /v1/offers?limit=&after=`: offers still valid, by id.
#[utoipa::path(
    get,
    path = "/v1/offers",
    tag = "rewards",
    params(
        ("limit" = Option<u64>, Query, description = "Page size"),
        ("after" = Option<String>, Query, description = "Cursor: the previous page's `next` (an id)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Offers still valid"),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn offers(
    State(st): State<AppState>,
    _caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (limit, after) = listing(&q)?;
    let page = st.ctx.store.offers_page(limit, after).await?;
    let next = next_after(&page, limit, |o| &o.offer_id);
    Ok(Json(json!({"offers": page, "next": next})))
}

/// `GET /v1/charities?limit=&after=`
#[utoipa::path(
    get,
    path = "/v1/charities",
    tag = "rewards",
    params(
        ("limit" = Option<u64>, Query, description = "Page size"),
        ("after" = Option<String>, Query, description = "Cursor: the previous page's `next` (an id)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Charities"),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn charities(
    State(st): State<AppState>,
    _caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (limit, after) = listing(&q)?;
    let page = st.ctx.store.charities_page(limit, after).await?;
    let next = next_after(&page, limit, |c| &c.charity_id);
    Ok(Json(json!({"charities": page, "next": next})))
}

/// Body of `POST /v1/redemptions`.
#[derive(Deserialize)]
struct RedeemBody {
    offer_id: String,
    /// Optional; must be the caller (a citizen redeems only for itself).
    #[serde(default, alias = "account_id")]
    citizen_id: Option<String>,
}

/// `POST /v1/redemptions` (citizens) → 201 with the voucher.
#[utoipa::path(
    post,
    path = "/v1/redemptions",
    tag = "rewards",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and request: same answer, one effect"),
    ),
    request_body = inline(Object),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Points debited, voucher issued"),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "unknown_offer", body = ErrorBody),
        (status = 409, description = "insufficient_points, offer_exhausted or offer_expired", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn redeem(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let me = caller.require(Role::Citizen)?;
    let b: RedeemBody = json_body(&body)?;
    if b.citizen_id.as_ref().is_some_and(|c| *c != me.sub) {
        return Err(ApiError::forbidden("a citizen redeems only for itself"));
    }
    if b.offer_id.is_empty() || b.offer_id.len() > 128 {
        return Err(ApiError::bad_request(
            "invalid_offer_id",
            "offer_id must be 1..=128 bytes",
        ));
    }
    let key = idempotency_key(&headers, &caller, "POST /v1/redemptions", &body)?;
    let r = st
        .ctx
        .store
        .redeem_offer(&me.sub, &b.offer_id, &st.ctx.vouchers, key.as_ref())
        .await??;
    st.ctx.events_wake.notify_one();
    metrics::counter!("redemptions_total").increment(1);
    Ok((StatusCode::CREATED, Json(json!(r))))
}

/// Body of `POST /v1/donations`.
#[derive(Deserialize)]
struct DonateBody {
    charity_id: String,
    points: i64,
}

/// `POST /v1/donations` (officers) → 201 `{"donation_id","balance"}`.
#[utoipa::path(
    post,
    path = "/v1/donations",
    tag = "rewards",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and request: same answer, one effect"),
    ),
    request_body = inline(Object),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Points given"),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "unknown_charity", body = ErrorBody),
        (status = 409, description = "insufficient_points", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn donate(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let me = caller.require(Role::Officer)?;
    let b: DonateBody = json_body(&body)?;
    if b.points <= 0 {
        return Err(ApiError::bad_request(
            "invalid_points",
            "points must be a positive whole number",
        ));
    }
    let key = idempotency_key(&headers, &caller, "POST /v1/donations", &body)?;
    let d = st
        .ctx
        .store
        .donate(&me.sub, &b.charity_id, b.points, key.as_ref())
        .await??;
    st.ctx.events_wake.notify_one();
    metrics::counter!("donations_total").increment(1);
    Ok((StatusCode::CREATED, Json(json!(d))))
}

/// A code's canonical form if its signature holds; 404 otherwise (without a lookup).
fn signed_code(st: &AppState, code: &str) -> Result<String, ApiError> {
    st.ctx
        .vouchers
        .check(code)
        .ok_or_else(|| Refusal::UnknownVoucher.into())
}

/// `GET /v1/vouchers/{code}` (any role) → `{"valid":true,"offer_id","issued_at","redeemed"}`.
#[utoipa::path(
    get,
    path = "/v1/vouchers/{code}",
    tag = "rewards",
    params(
        ("code" = String, Path, description = "Voucher code"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A valid voucher and whether it was used"),
        (status = 404, description = "unknown_voucher (also for a code that is not validly signed)", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn voucher(
    State(st): State<AppState>,
    _caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let code = signed_code(&st, &code)?;
    let v = st
        .ctx
        .store
        .voucher(&code)
        .await?
        .ok_or(Refusal::UnknownVoucher)?;
    Ok(Json(json!(v)))
}

/// `POST /v1/vouchers/{code}/redeem` (admins, or the retailer of the offer): once.
#[utoipa::path(
    post,
    path = "/v1/vouchers/{code}/redeem",
    tag = "rewards",
    params(
        ("code" = String, Path, description = "Voucher code"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and request: same answer, one effect"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Marked used"),
        (status = 404, description = "unknown_voucher", body = ErrorBody),
        (status = 409, description = "voucher_already_redeemed", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn use_voucher(
    State(st): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let retailer = match caller.0.role {
        Role::Admin => None,
        Role::Retailer => Some(caller.0.sub.as_str()),
        _ => {
            return Err(ApiError::forbidden(
                "vouchers are redeemed by admins and retailers",
            ));
        }
    };
    let code = signed_code(&st, &code)?;
    let route = format!("POST /v1/vouchers/{code}/redeem");
    let key = idempotency_key(&headers, &caller, &route, &body)?;
    let v = st
        .ctx
        .store
        .redeem_voucher(&code, &caller.0.sub, retailer, key.as_ref())
        .await??;
    metrics::counter!("vouchers_redeemed_total").increment(1);
    Ok(Json(json!(v)))
}
