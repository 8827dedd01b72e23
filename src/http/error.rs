//! The one table from errors to HTTP: status, `code`, and the JSON error body
//! `{"error":{"code","message"}}`. Internal causes are logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::actors::directory::RegionError;
use crate::geo::zips::LocateError;
use crate::store::StoreError;
use crate::store::rewards::Refusal;

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// snake_case code.
    pub code: &'static str,
    /// Human text.
    pub message: String,
}

impl ApiError {
    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    /// 503 for a failure inside the server; the cause is logged here.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!("request failed: {cause}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable, try again",
        )
    }
}

// The table: every error a handler can meet, and what the client is told.

impl From<RegionError> for ApiError {
    fn from(e: RegionError) -> Self {
        Self::unavailable(&e)
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        tracing::warn!("cluster read failed: {e}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            "another node of the cluster did not answer; try again",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::unavailable(&e)
    }
}

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

impl From<LocateError> for ApiError {
    fn from(e: LocateError) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "outside_service_area",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("http_errors_total", "code" => self.code).increment(1);
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// A request body read whole within the route's `DefaultBodyLimit`: over it is
/// `413 payload_too_large`, an unreadable body `400 invalid_body`.
pub struct Body(pub bytes::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| body_rejected(e.status(), e.body_text()))
    }
}

/// A JSON request body within the route's `DefaultBodyLimit`, refused with the contract's
/// errors: over the limit `413 payload_too_large`, anything else (not JSON, a wrong field,
/// no JSON content type) `400 invalid_body`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(b)| JsonBody(b))
            .map_err(|e| body_rejected(e.status(), e.body_text()))
    }
}

/// The error for a body axum refused.
pub fn body_rejected(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            "the request body is larger than this endpoint accepts",
        )
    } else {
        ApiError::bad_request("invalid_body", text)
    }
}

/// The JSON error body of every non-2xx answer (for the OpenAPI description).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
}

/// `error` inside [`ErrorBody`].
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// snake_case code.
    code: String,
    /// Human text.
    message: String,
}
