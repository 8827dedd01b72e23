//! The orchestrator in a cluster: a session's ticket is issued by the node that owns its
//! region (asked over NATS when that is another node), and its `ws_url` is that node's.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::AppState;
use super::auth::Ticket;
use super::error::ApiError;
use crate::cluster::Cluster;
use crate::cluster::wire::{TicketReply, TicketRequest};
use crate::geo::{LatLon, ZipId};

/// Where a session goes: the ws base URL, the ticket and the node.
pub struct Route {
    /// `ws://host:port` of the node.
    pub base: String,
    /// The ticket id.
    pub ticket: String,
    /// The node's id.
    pub node: String,
}

/// `http(s)://` → `ws(s)://`.
pub fn ws_base(advertise_url: &str) -> String {
    let u = advertise_url.trim_end_matches('/');
    if let Some(rest) = u.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = u.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        u.to_owned()
    }
}

/// 503 `cluster_unavailable`: no node can be named for the session now (this node has not
/// joined, or the owner did not answer); the client retries.
fn not_ready(why: &str) -> ApiError {
    metrics::counter!("cluster_routing_refused_total").increment(1);
    tracing::warn!("session not placed: {why}");
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "cluster_unavailable",
        "the cluster cannot place a session now; try again",
    )
}

/// Issues `t` at the owner of its region.
pub async fn route(st: &AppState, cluster: &Cluster, t: Ticket) -> Result<Route, ApiError> {
    if !cluster.ready() {
        return Err(not_ready("this node has not joined"));
    }
    let owner = cluster
        .owner_of(t.zip)
        .ok_or_else(|| not_ready("no live member"))?;
    let node = owner.record.node_id;
    let base = ws_base(&owner.record.advertise_url);
    if node == cluster.node_id() {
        let ticket = super::issue_here(st, t)?;
        return Ok(Route { base, ticket, node });
    }
    let req = TicketRequest {
        account: t.account.to_string(),
        display_name: t.display_name.to_string(),
        role: t.role,
        lat: t.pos.lat,
        lon: t.pos.lon,
        zip: st.ctx.zips.get(t.zip).code.to_string(),
        d0: t.d0,
    };
    let ticket = cluster.ticket_at(&node, &req).await.map_err(|e| match e {
        // The owner's own refusal, as it worded it: a session must be at its region's
        // owner, so there is nowhere else to send it.
        crate::cluster::ClusterError::Refused(code, message) => match code.as_str() {
            "node_full" => super::node_full(message),
            _ => ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_tickets",
                message,
            ),
        },
        e => not_ready(&e.to_string()),
    })?;
    Ok(Route { base, ticket, node })
}

/// Answers other nodes' ticket requests for sessions of this node, until the process ends.
pub async fn serve_tickets(st: AppState, cluster: Arc<Cluster>) {
    let link = cluster.wait_link().await;
    let mut sub = match link.serve(cluster.node_id(), "ticket").await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cluster: cannot issue tickets for other nodes: {e}");
            return;
        }
    };
    let ttl = Duration::from_secs(st.ctx.settings.auth.ticket_ttl_s);
    while let Some(msg) = sub.next().await {
        let reply = match serde_json::from_slice::<TicketRequest>(&msg.payload) {
            Ok(r) => issue(&st, r, ttl),
            Err(e) => TicketReply {
                ticket: None,
                error: Some(format!("bad request: {e}")),
                code: None,
            },
        };
        link.reply(&msg, &reply).await;
    }
}

fn issue(st: &AppState, r: TicketRequest, ttl: Duration) -> TicketReply {
    let placed = LatLon::new(r.lat, r.lon).zip(st.ctx.zips.by_code(&r.zip));
    let Some((pos, zip)) = placed else {
        return TicketReply {
            ticket: None,
            error: Some("bad position or zip".into()),
            code: None,
        };
    };
    let zip: ZipId = zip;
    let t = Ticket::new(
        r.account.into(),
        r.display_name.into(),
        r.role,
        pos,
        zip,
        r.d0,
        st.ctx.settings.server.node_id.clone(),
        ttl,
    );
    match super::issue_here(st, t) {
        Ok(ticket) => TicketReply {
            ticket: Some(ticket),
            error: None,
            code: None,
        },
        Err(e) => TicketReply {
            ticket: None,
            error: Some(e.message),
            code: Some(e.code.to_owned()),
        },
    }
}
