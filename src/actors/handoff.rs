//! Handoff (cluster mode): a session whose region is served by another node is told to
//! connect there, and its socket here is closed with 4003 once the phone is there or after
//! `cluster.handoff_grace_s`.

use std::time::Duration;

use super::outbox::close;
use super::session::{Common, SessionMsg, tell};
use crate::protocol::{Role, ServerMsg};

impl Common {
    /// Cluster: when this session's region is served by another node, tells the client
    /// to connect there (`handoff` with a ticket of that node) and closes this socket
    /// with 4003 after `cluster.handoff_grace_s` unless the client went first. Nothing
    /// happens alone, when the region is served here, or when the client was already
    /// sent to that node; a failed ticket request is logged and tried on the next move.
    pub async fn hand_off_if_elsewhere(&mut self, role: Role) {
        let Some(cl) = self.ctx.cluster.clone() else {
            return;
        };
        if cl.serving(cl.unit(self.zip)).is_some() || !(cl.ready() || cl.is_leaving()) {
            return;
        }
        let Some(owner) = cl.owner_of(self.zip) else {
            return;
        };
        let node = owner.record.node_id;
        if node == cl.node_id() || self.handed_to.as_deref() == Some(node.as_str()) {
            return;
        }
        let req = crate::cluster::wire::TicketRequest {
            account: self.account.to_string(),
            display_name: self.name.to_string(),
            role,
            lat: self.pos.lat,
            lon: self.pos.lon,
            zip: self.code(self.zip),
            d0: self.d0,
        };
        let ticket = match cl.ticket_at(&node, &req).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(session = self.id, %node, "handoff postponed: {e}");
                return;
            }
        };
        let base = crate::http::cluster::ws_base(&owner.record.advertise_url);
        self.out.send(&ServerMsg::Handoff {
            ws_url: format!("{base}/v1/ws?ticket={ticket}"),
            node: node.clone(),
        });
        metrics::counter!("cluster_handoffs_total").increment(1);
        tracing::info!(session = self.id, account = %self.account, %node, "handed off");
        self.handed_to = Some(node);
        let (me, grace) = (
            self.me.clone(),
            Duration::from_secs(cl.settings().handoff_grace_s),
        );
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let close = SessionMsg::Close {
                code: close::HANDOFF,
                error: None,
                reason: "handed off to another node".into(),
            };
            tell(&me, close, "handoff");
        });
    }
}
