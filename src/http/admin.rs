//! The admin API (role `admin`): bulk imports, live state, ending sessions, metrics.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::ErrorBody;
use super::error::{ApiError, Body};
use super::rewards::idempotency_key;
use crate::actors::region::RegionSnapshot;
use crate::cluster::wire::NodeCounts;
use crate::context::{Context, Kick};
use crate::geo::{ZipId, ZipTable};
use crate::import::{Kind, Rejected, StructureError};
use crate::protocol::Role;
use crate::store::imports::ImportRefused;
use crate::store::reports::{GroupBy, ReportRow};

/// The answer to an import.
#[derive(Serialize, ToSchema)]
pub struct ImportAnswer {
    /// What was imported.
    pub kind: Kind,
    /// Rows upserted.
    pub accepted: usize,
    /// Rows refused, each with its number (from 1, the header not counted) and why: the
    /// first `limits.import_max_rejected` (default 1,000).
    pub rejected: Vec<Rejected>,
    /// Every row refused (more than `rejected` lists when the limit cut it).
    pub rejected_count: usize,
}

/// One zip of `GET /admin/v1/citizens/zips`.
#[derive(Clone, Serialize, ToSchema)]
pub struct ZipCitizens {
    /// The zip code.
    pub zip: String,
    /// Its centroid (never a citizen's position).
    pub lat: f64,
    /// Its centroid.
    pub lon: f64,
    /// Citizen sessions whose position is in the zip.
    pub citizens: u32,
}

/// `GET /admin/v1/citizens/zips`.
#[derive(Serialize, ToSchema)]
pub struct CitizensByZip {
    /// The zips with at least one citizen (in a cluster: summed over the live nodes).
    pub zips: Vec<ZipCitizens>,
}

/// `GET /admin/v1/citizens/zips`: citizens counted per zip, for the dashboard's map.
#[utoipa::path(
    get,
    path = "/admin/v1/citizens/zips",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Citizen sessions per zip", body = CitizensByZip),
        (status = 503, description = "cluster_unavailable: another node did not answer", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn citizens_by_zip(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<CitizensByZip>, ApiError> {
    caller.require(Role::Admin)?;
    let map = st.ctx.map(0).await?;
    Ok(Json(CitizensByZip {
        zips: zip_counts(&st.ctx.zips, &map.citizens),
    }))
}

/// Citizen counts per zip with the zips' centroids.
pub fn zip_counts(zips: &ZipTable, counts: &[(ZipId, u32)]) -> Vec<ZipCitizens> {
    counts
        .iter()
        .map(|&(z, n)| {
            let zip = zips.get(z);
            ZipCitizens {
                zip: zip.code.to_string(),
                lat: zip.centroid.lat,
                lon: zip.centroid.lon,
                citizens: n,
            }
        })
        .collect()
}

/// `GET /admin/v1/stats`: live counts over this node.
#[derive(Clone, Serialize, ToSchema)]
pub struct Stats {
    /// Officers with a running availability window.
    pub officers_available: usize,
    /// Officer sessions open.
    pub officers_online: usize,
    /// Citizen sessions open.
    pub citizens_online: usize,
    /// Region actors alive.
    pub regions_active: usize,
    /// Connection requests waiting for an officer's answer.
    pub pending_requests: usize,
    /// WebSockets open.
    pub sockets: usize,
    /// WebSocket messages received since the nodes started (a rate is the difference of
    /// two readings over their interval).
    pub messages_in: u64,
    /// The nodes counted: this one alone, or every live member of the cluster.
    pub nodes: Vec<NodeStats>,
}

/// One node of [`Stats`].
#[derive(Clone, Serialize, ToSchema)]
pub struct NodeStats {
    /// The node's id.
    pub node_id: String,
    /// The URL phones and nodes reach it at (empty on a node that runs alone without
    /// `server.public_url`).
    pub advertise_url: String,
    /// WebSockets open there.
    pub sessions: usize,
    /// Regions it serves (alone: every region alive).
    pub regions_owned: usize,
    /// Ownership units it still has to take or give up to match the placement over the
    /// live members (0 once the cluster has converged; always 0 alone).
    pub units_moving: usize,
    /// Always true: only live members are listed.
    pub alive: bool,
}

/// `DELETE /admin/v1/sessions/{account_id}`.
#[derive(Serialize, ToSchema)]
pub struct EndedSession {
    /// The account.
    pub account_id: String,
    /// Always true: the session was told to close.
    pub ended: bool,
    /// Its role.
    pub role: String,
}

/// `format` of a report.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    /// JSON (the default).
    Json,
    /// CSV, `key,connections,points`.
    Csv,
}

/// Sums over a report's rows.
#[derive(Serialize, ToSchema)]
pub struct ReportTotals {
    /// Connections.
    pub connections: i64,
    /// Points.
    pub points: i64,
    /// `group_by=trophy` only: trophies awarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awarded: Option<i64>,
}

/// `GET /admin/v1/reports/connections` as JSON.
#[derive(Serialize, ToSchema)]
pub struct ConnectionsReport {
    /// First day.
    pub from: String,
    /// Last day.
    pub to: String,
    /// The grouping.
    pub group_by: GroupBy,
    /// Rows by key.
    pub rows: Vec<ReportRow>,
    /// Sums over the rows.
    pub totals: ReportTotals,
    /// Whether `limit` cut the rows.
    pub truncated: bool,
}

/// `POST /admin/v1/import/{officers|retailers|offers|charities}`: CSV (`text/csv`) or a
/// JSON array → `{"kind","accepted","rejected":[{"row","error"}],"rejected_count"}`; 400 for a
/// file that is not importable at all, 413 over `limits.import_max_bytes` or
/// `limits.import_max_rows`.
#[utoipa::path(
    post,
    path = "/admin/v1/import/{kind}",
    tag = "admin",
    params(
        ("kind" = Kind, Path, description = "officers, retailers, offers or charities"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and request: same answer, one effect", pattern = r"^[!-~]{1,255}$"),
    ),
    request_body = inline(String),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Accepted count and rejected rows", body = ImportAnswer),
        (status = 400, description = "Not importable at all (nothing changed)", body = ErrorBody),
        (status = 404, description = "Unknown kind", body = ErrorBody),
        (status = 413, description = "payload_too_large: over limits.import_max_bytes; too_many_rows: over limits.import_max_rows", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn import(
    State(st): State<AppState>,
    caller: Caller,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<ImportAnswer>, ApiError> {
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
    let limits = crate::import::ImportLimits::from_settings(&st.ctx.settings.limits);
    let route = format!("POST /admin/v1/import/{}", kind.name());
    let key = idempotency_key(&headers, &caller, &route, &body)?;
    let report = st
        .ctx
        .store
        .import_file(kind, body, csv, limits, key.as_ref())
        .await?
        .map_err(|e| match e {
            ImportRefused::Structure(StructureError::Invalid(m)) => {
                ApiError::bad_request("invalid_import", m)
            }
            ImportRefused::Structure(e @ StructureError::TooManyRows(_)) => {
                metrics::counter!("import_refused_total", "reason" => "too_many_rows").increment(1);
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_rows",
                    e.to_string(),
                )
            }
            ImportRefused::Refusal(r) => r.into(),
        })?;
    Ok(Json(ImportAnswer {
        kind,
        accepted: report.accepted,
        rejected: report.rejected,
        rejected_count: report.rejected_count,
    }))
}

/// `GET /metrics` on the main listener (admins; `metrics.bind` serves it without a token).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn metrics(State(st): State<AppState>, caller: Caller) -> Result<String, ApiError> {
    caller.require(Role::Admin)?;
    crate::server::record_process_metrics(&st.ctx);
    Ok(super::metrics_handle().render())
}

/// `GET /admin/v1/regions/{zip}`: the region actor's own snapshot.
#[utoipa::path(
    get,
    path = "/admin/v1/regions/{zip}",
    tag = "admin",
    params(
        ("zip" = String, Path, description = "5-digit zip (an unknown one is 404 unknown_zip)", pattern = r"^[0-9]{5}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The region actor's live snapshot", body = RegionSnapshot),
        (status = 404, description = "unknown_zip", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn region(
    State(st): State<AppState>,
    caller: Caller,
    Path(zip): Path<String>,
) -> Result<Json<RegionSnapshot>, ApiError> {
    caller.require(Role::Admin)?;
    let id = known_zip(&st.ctx, &zip)?;
    Ok(Json(st.ctx.regions.snapshot(id).await?))
}

/// The region of a zip code, or `404 unknown_zip`.
fn known_zip(ctx: &Context, zip: &str) -> Result<ZipId, ApiError> {
    ctx.zips
        .by_code(zip)
        .ok_or_else(|| ApiError::not_found("unknown_zip", "no such zip code"))
}

/// `POST /admin/v1/regions/{zip}/restart`.
#[derive(Serialize, ToSchema)]
pub struct RestartedRegion {
    /// The region's zip.
    pub zip: String,
    /// The node whose region actor was stopped.
    pub node: String,
}

/// `POST /admin/v1/regions/{zip}/restart`: stops the region actor running on this node as a
/// failure; its supervisor starts it again at once and rebuilds the index from the live
/// sessions (what a crash does, counted in `region_restarts_total`). 404 `region_not_running`
/// when this node runs no actor for the zip (in a cluster: ask the node that owns it).
#[utoipa::path(
    post,
    path = "/admin/v1/regions/{zip}/restart",
    tag = "admin",
    params(
        ("zip" = String, Path, description = "5-digit zip", pattern = r"^[0-9]{5}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The region actor was stopped; its supervisor rebuilds it", body = RestartedRegion),
        (status = 404, description = "unknown_zip, or region_not_running on this node", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn restart_region(
    State(st): State<AppState>,
    caller: Caller,
    Path(zip): Path<String>,
) -> Result<(StatusCode, Json<RestartedRegion>), ApiError> {
    caller.require(Role::Admin)?;
    let id = known_zip(&st.ctx, &zip)?;
    if !st.ctx.regions.crash(id) {
        return Err(ApiError::not_found(
            "region_not_running",
            format!("no actor for {zip} runs on this node"),
        ));
    }
    tracing::warn!(zip = %zip, by = %caller.0.sub, "region restarted by an administrator");
    Ok((
        StatusCode::ACCEPTED,
        Json(RestartedRegion {
            zip,
            node: st.ctx.settings.server.node_id.clone(),
        }),
    ))
}

/// Officers a `GET /admin/v1/officers` returns at most (`limit`, default and maximum).
const OFFICER_ROWS: (u64, u64) = (10_000, 100_000);

/// `GET /admin/v1/officers`.
#[derive(Serialize, ToSchema)]
pub struct Officers {
    /// The available officers (in a cluster: on every live node).
    pub officers: Vec<crate::actors::directory::AvailableOfficer>,
    /// Whether `limit` cut the list.
    pub truncated: bool,
}

/// `GET /admin/v1/officers?limit=N`: every available officer with position, zip and window
/// end, for the dashboard's map (never a citizen's position).
#[utoipa::path(
    get,
    path = "/admin/v1/officers",
    tag = "admin",
    params(
        ("limit" = Option<u64>, Query, description = "Most officers returned, 1..=100000 (default 10000); more is 400 invalid_limit", minimum = 1, maximum = 100000),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The available officers", body = Officers),
        (status = 503, description = "cluster_unavailable: another node did not answer", body = ErrorBody),
        (status = 400, description = "invalid_limit", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn officers(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Officers>, ApiError> {
    caller.require(Role::Admin)?;
    let limit = super::limit_param(&q, OFFICER_ROWS.0, OFFICER_ROWS.1)?;
    let map = st.ctx.map(limit as usize).await?;
    Ok(Json(Officers {
        officers: map.officers,
        truncated: map.truncated,
    }))
}

/// `GET /admin/v1/stats`: live counts over this node.
#[utoipa::path(
    get,
    path = "/admin/v1/stats",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Live counts over this node", body = Stats),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn stats(State(st): State<AppState>, caller: Caller) -> Result<Json<Stats>, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(stats_of(&st.ctx)))
}

/// The live counts: this node's, or in a cluster every live member's as of its last
/// renewal (at most a renewal interval old) with this node's read now.
pub fn stats_of(ctx: &Context) -> Stats {
    let mut stats = Stats {
        officers_available: 0,
        officers_online: 0,
        citizens_online: 0,
        regions_active: 0,
        pending_requests: 0,
        sockets: 0,
        messages_in: 0,
        nodes: Vec::new(),
    };
    let mut add = |node_id: String, advertise_url: String, c: NodeCounts, owned: (usize, usize)| {
        stats.officers_available += c.officers_available;
        stats.officers_online += c.officers_online;
        stats.citizens_online += c.citizens_online;
        stats.regions_active += c.regions_active;
        stats.pending_requests += c.pending_requests;
        stats.sockets += c.sessions;
        stats.messages_in += c.messages_in;
        stats.nodes.push(NodeStats {
            node_id,
            advertise_url,
            sessions: c.sessions,
            regions_owned: owned.0,
            units_moving: owned.1,
            alive: true,
        });
    };
    let Some(cluster) = &ctx.cluster else {
        let c = ctx.counts();
        add(
            ctx.settings.server.node_id.clone(),
            ctx.settings.server.public_url.clone(),
            c,
            (c.regions_active, 0),
        );
        return stats;
    };
    for m in cluster.members() {
        if m.record.node_id == cluster.node_id() {
            add(
                m.record.node_id,
                m.record.advertise_url,
                ctx.counts(),
                cluster.ownership(),
            );
        } else {
            let owned = (m.record.regions_owned, m.record.units_moving);
            add(
                m.record.node_id,
                m.record.advertise_url,
                m.record.counts,
                owned,
            );
        }
    }
    stats
}

/// `DELETE /admin/v1/sessions/{account_id}`: the live session gets an `error` frame
/// `session_ended` and close 4002; 404 `no_session` if the account has none (in a cluster:
/// on any node).
#[utoipa::path(
    delete,
    path = "/admin/v1/sessions/{account_id}",
    tag = "admin",
    params(
        ("account_id" = String, Path, description = "Account"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The session was told to close (4002)", body = EndedSession),
        (status = 503, description = "The session takes no messages now", body = ErrorBody),
        (status = 404, description = "no_session", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn end_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<EndedSession>, ApiError> {
    let admin = caller.require(Role::Admin)?;
    let ctx = &st.ctx;
    let mut kicked = ctx.sessions.kick(&account);
    if kicked == Kick::NoSession
        && let Some(cluster) = &ctx.cluster
    {
        // Not here: whichever node holds it ends it.
        kicked = crate::actors::relay::kick_elsewhere(cluster, &account).await;
    }
    let role = match kicked {
        Kick::Ended(role) => role,
        Kick::NoSession => {
            return Err(ApiError::not_found(
                "no_session",
                "that account has no live session",
            ));
        }
        Kick::Busy => {
            return Err(ApiError::unavailable(
                &"the session is not taking messages; try again",
            ));
        }
    };
    tracing::info!(account = %account, by = %admin.sub, "session ended by an admin");
    Ok(Json(EndedSession {
        account_id: account,
        ended: true,
        role: role.as_str().to_owned(),
    }))
}

/// Rows a report returns at most (`limit`, default and maximum).
const REPORT_ROWS: (u64, u64) = (10_000, 100_000);

/// `GET /admin/v1/reports/connections?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=day|zip|state|officer|trophy`
/// → `{"rows":[{"key","connections","points"}],…}`; `format=csv` exports the same rows as
/// CSV with every text cell that a spreadsheet would take for a formula quoted as text.
#[utoipa::path(
    get,
    path = "/admin/v1/reports/connections",
    tag = "admin",
    params(
        ("from" = Option<String>, Query, description = "First day (default: 30 days before to); after `to` is 400 invalid_range", format = Date),
        ("to" = Option<String>, Query, description = "Last day (default: today, UTC)", format = Date),
        ("group_by" = Option<GroupBy>, Query, description = "Grouping (default day)"),
        ("format" = Option<ReportFormat>, Query, description = "json (default) or csv"),
        ("limit" = Option<u64>, Query, description = "Most rows (default 10,000)", minimum = 1, maximum = 100000),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rows of key, connections, points (or CSV with format=csv)",
            content((ConnectionsReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "Store or actors unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
    )
)]
pub async fn connections_report(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let date = |k: &str, default: NaiveDate| -> Result<NaiveDate, ApiError> {
        q.get(k).map_or(Ok(default), |v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                ApiError::bad_request("invalid_date", format!("{k} must be a date YYYY-MM-DD"))
            })
        })
    };
    let today = chrono::Utc::now().date_naive();
    let to = date("to", today)?;
    let from = date("from", to - chrono::Days::new(30))?;
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from must not be after to",
        ));
    }
    let group = match q.get("group_by") {
        None => GroupBy::Day,
        Some(g) => GroupBy::parse(g).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_group_by",
                "group_by is day, zip, state, officer or trophy",
            )
        })?,
    };
    let limit = super::limit_param(&q, REPORT_ROWS.0, REPORT_ROWS.1)?;
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                "format is json or csv",
            ));
        }
    };
    let zips = st.ctx.zips.clone();
    let state_of = move |zip: &str| zips.by_code(zip).map(|id| zips.get(id).state.to_string());
    let (rows, truncated) = st
        .ctx
        .store
        .connections_report(from, to, group, state_of, limit)
        .await?;
    if csv {
        let mut out = String::from(if group == GroupBy::Trophy {
            "key,awarded\r\n"
        } else {
            "key,connections,points\r\n"
        });
        for r in &rows {
            let line = match r.awarded {
                Some(n) => format!("{},{n}\r\n", csv_cell(&r.key)),
                None => format!("{},{},{}\r\n", csv_cell(&r.key), r.connections, r.points),
            };
            out.push_str(&line);
        }
        let headers = [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"connections-report.csv\"",
            ),
        ];
        return Ok((headers, out).into_response());
    }
    let totals = ReportTotals {
        connections: rows.iter().map(|r| r.connections).sum(),
        points: rows.iter().map(|r| r.points).sum(),
        awarded: (group == GroupBy::Trophy).then(|| rows.iter().filter_map(|r| r.awarded).sum()),
    };
    Ok(Json(ConnectionsReport {
        from: from.to_string(),
        to: to.to_string(),
        group_by: group,
        rows,
        totals,
        truncated,
    })
    .into_response())
}

/// One CSV cell: quoted when needed, and a leading `=`, `+`, `-`, `@`, tab or CR made
/// inert with a `'` so spreadsheets show it as text instead of evaluating it.
pub fn csv_cell(s: &str) -> String {
    let inert = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if inert.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", inert.replace('"', "\"\""))
    } else {
        inert
    }
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("10001"), "10001");
        assert_eq!(csv_cell("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0");
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(
            csv_cell("=HYPERLINK(\"x\",\"y\")"),
            "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_cell("Café"), "Café");
    }
}
