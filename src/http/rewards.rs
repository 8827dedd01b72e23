//! Rewards over HTTP: the storefront, redemptions, voucher checks and use, charities and
//! donations. POSTs honour `Idempotency-Key`: the store records the outcome with the
//! effect, so the same key and request answer the same and act once.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::ErrorBody;
use super::error::{ApiError, Body};
use crate::protocol::Role;
use crate::store::rewards::{
    CharityView, Donation, IdempotencyKey, OfferView, Redemption, Refusal, VoucherView,
};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

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
    // Visible ASCII without spaces, as the OpenAPI description's pattern says.
    let key = v
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()))
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
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
    let limit = super::limit_param(q, 100, 500)?;
    Ok((limit, q.get("after").map(String::as_str)))
}

fn next_after<T>(page: &[T], limit: u64, id: impl Fn(&T) -> &str) -> Option<String> {
    match page.last() {
        Some(last) if page.len() as u64 == limit => Some(id(last).to_owned()),
        _ => None,
    }
}

/// `GET /v1/offers`: a page of the storefront.
#[derive(Serialize, ToSchema)]
pub struct OffersPage {
    /// Offers still valid, by id.
    pub offers: Vec<OfferView>,
    /// Cursor of the next page (`after`), null on the last.
    pub next: Option<String>,
}

/// `GET /v1/charities`: a page of charities.
#[derive(Serialize, ToSchema)]
pub struct CharitiesPage {
    /// Charities, by id.
    pub charities: Vec<CharityView>,
    /// Cursor of the next page (`after`), null on the last.
    pub next: Option<String>,
}

/// Body of `POST /v1/redemptions`.
#[derive(Deserialize, ToSchema)]
pub struct RedeemBody {
    /// The offer, 1..=128 bytes.
    #[schema(min_length = 1, max_length = 128)]
    offer_id: String,
    /// The caller's own id, if given (another account's is 403).
    #[serde(default, alias = "account_id")]
    citizen_id: Option<String>,
}

/// Body of `POST /v1/donations`.
#[derive(Deserialize, ToSchema)]
pub struct DonateBody {
    /// The charity.
    charity_id: String,
    /// Points to give: a positive whole number (`5` or `5.0`; `5.5` or `"5"` is refused).
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole_number")]
    points: i64,
}

/// A JSON number that is a whole number, written as an integer or not (`491.0`): JSON
/// Schema's `integer` is a value, not a spelling.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(serde::de::Error::custom("points must be a whole number")),
    }
}

/// `GET /v1/offers?limit=&after=`: offers still valid, by id.
#[utoipa::path(
    get,
    path = "/v1/offers",
    tag = "rewards",
    params(
        ("limit" = Option<u64>, Query, description = "Page size (default 100)", minimum = 1, maximum = 500),
        ("after" = Option<String>, Query, description = "Cursor: the previous page's `next` (an id)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Offers still valid", body = OffersPage),
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
) -> Result<Json<OffersPage>, ApiError> {
    let (limit, after) = listing(&q)?;
    let offers = st.ctx.store.offers_page(limit, after).await?;
    let next = next_after(&offers, limit, |o| &o.offer_id);
    Ok(Json(OffersPage { offers, next }))
}

/// `GET /v1/charities?limit=&after=`
#[utoipa::path(
    get,
    path = "/v1/charities",
    tag = "rewards",
    params(
        ("limit" = Option<u64>, Query, description = "Page size (default 100)", minimum = 1, maximum = 500),
        ("after" = Option<String>, Query, description = "Cursor: the previous page's `next` (an id)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Charities", body = CharitiesPage),
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
) -> Result<Json<CharitiesPage>, ApiError> {
    let (limit, after) = listing(&q)?;
    let charities = st.ctx.store.charities_page(limit, after).await?;
    let next = next_after(&charities, limit, |c| &c.charity_id);
    Ok(Json(CharitiesPage { charities, next }))
}

/// `POST /v1/redemptions` (citizens) → 201 with the voucher.
#[utoipa::path(
    post,
    path = "/v1/redemptions",
    tag = "rewards",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and request: same answer, one effect", pattern = r"^[!-~]{1,255}$"),
    ),
    request_body = RedeemBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Points debited, voucher issued", body = Redemption),
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
) -> Result<(StatusCode, Json<Redemption>), ApiError> {
    let me = caller.require(Role::Citizen)?;
    let b: RedeemBody = json_body(&body)?;
    if b.citizen_id.as_ref().is_some_and(|c| *c != me.sub) {
        return Err(ApiError::forbidden("a citizen redeems only for itself"));
    }
    if !(1..=128).contains(&b.offer_id.chars().count()) {
        return Err(ApiError::bad_request(
            "invalid_offer_id",
            "offer_id must be 1..=128 characters",
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
    Ok((StatusCode::CREATED, Json(r)))
}

/// Body of `POST /v1/donations`.
/// `POST /v1/donations` (officers) → 201 `{"donation_id","balance"}`.
#[utoipa::path(
    post,
    path = "/v1/donations",
    tag = "rewards",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and request: same answer, one effect", pattern = r"^[!-~]{1,255}$"),
    ),
    request_body = DonateBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Points given", body = Donation),
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
) -> Result<(StatusCode, Json<Donation>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(d)))
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
        (status = 200, description = "A valid voucher and whether it was used", body = VoucherView),
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
) -> Result<Json<VoucherView>, ApiError> {
    let code = signed_code(&st, &code)?;
    let v = st
        .ctx
        .store
        .voucher(&code)
        .await?
        .ok_or(Refusal::UnknownVoucher)?;
    Ok(Json(v))
}

/// `POST /v1/vouchers/{code}/redeem` (admins, or the retailer of the offer): once.
#[utoipa::path(
    post,
    path = "/v1/vouchers/{code}/redeem",
    tag = "rewards",
    params(
        ("code" = String, Path, description = "Voucher code"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and request: same answer, one effect", pattern = r"^[!-~]{1,255}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Marked used", body = VoucherView),
        (status = 400, description = "Bad Idempotency-Key", body = ErrorBody),
        (status = 404, description = "unknown_voucher", body = ErrorBody),
        (status = 409, description = "voucher_already_redeemed", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody),
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
) -> Result<Json<VoucherView>, ApiError> {
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
    Ok(Json(v))
}
