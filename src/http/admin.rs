//! The admin API (role `admin`): bulk imports.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Body};
use super::rewards::idempotency_key;
use crate::import::Kind;
use crate::protocol::Role;

/// `POST /admin/v1/import/{officers|retailers|offers|charities}`: CSV (`text/csv`) or a
/// JSON array → `{"kind","accepted","rejected":[{"row","error"}]}`; 400 for a file that is
/// not importable at all, 413 over `limits.import_max_bytes`.
pub async fn import(
    State(st): State<AppState>,
    caller: Caller,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let kind = Kind::parse(&kind).ok_or_else(|| {
        ApiError::not_found(
            "unknown_import_kind",
            "import one of officers, retailers, offers, charities",
        )
    })?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let csv = match media.as_deref() {
        Some("text/csv") => Some(true),
        Some("application/json") => Some(false),
        _ => None,
    };
    let route = format!("POST /admin/v1/import/{}", kind.columns()[0]);
    let key = idempotency_key(&headers, &caller, &route, &body)?;
    let report = st
        .ctx
        .store
        .import_file(kind, body, csv, key.as_ref())
        .await?
        .map_err(|e| ApiError::bad_request("invalid_import", e.0))?;
    Ok(Json(json!({
        "kind": kind,
        "accepted": report.accepted,
        "rejected": report.rejected,
    })))
}
