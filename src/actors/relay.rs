//! Connection messages between sessions on different nodes of a cluster. A citizen here
//! asking an officer there sends an offer to the officer's node, which hands the officer's
//! session an `Offer` whose citizen handle is a *proxy*: a mailbox here whose one message
//! (how the request ended) a task forwards to the citizen's node. The citizen keeps a proxy
//! of the officer the same way, for its one possible `CancelRequest`. A proxy lives until it
//! forwarded its message or the request could no longer end (its timeout and a margin).
//! The award is recorded by the officer's node in the one store, exactly once as on one
//! node.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::mailbox;
use super::session::{OfferedRequest, Outcome, SessionHandle, SessionMsg, tell};
use crate::cluster::Cluster;
use crate::cluster::wire::{
    KickReply, KickRequest, OfferReply, OfferRequest, RelayMsg, TrophyNotice,
};
use crate::context::{Context, Kick};
use crate::protocol::Role;

/// How long a proxy waits for its message: the request's timeout and a margin.
fn proxy_life(ctx: &Context) -> Duration {
    Duration::from_secs(ctx.settings.connections.request_timeout_s + 10)
}

/// A handle whose first message (within `life`) is given to `forward`.
fn proxy(life: Duration, forward: impl FnOnce(SessionMsg) + Send + 'static) -> SessionHandle {
    let (tx, mut rx) = mailbox::mailbox(1);
    tokio::spawn(async move {
        if let Ok(m) = tokio::time::timeout(life, rx.recv()).await {
            forward(m);
        }
    });
    tx
}

fn publish(cluster: &Arc<Cluster>, node: &str, msg: &RelayMsg) {
    if let Some(link) = cluster.link() {
        link.publish(link.subject(node, "relay"), msg, "connection message");
    }
}

/// The citizen's side: offers `req` to the officer's session on `node`. On `Ok` the
/// returned handle reaches that session (for a cancel).
pub async fn offer(
    ctx: &Arc<Context>,
    cluster: &Arc<Cluster>,
    node: &str,
    req: OfferRequest,
) -> Result<SessionHandle, &'static str> {
    let reply: Result<OfferReply, _> = match cluster.link() {
        Some(link) => link.request(node, "offer", &req).await,
        None => return Err("officer_unavailable"),
    };
    match reply {
        Ok(OfferReply { refused: None }) => {}
        Ok(OfferReply {
            refused: Some(code),
        }) => {
            return Err(if code == "officer_busy" {
                "officer_busy"
            } else {
                "officer_unavailable"
            });
        }
        Err(e) => {
            tracing::warn!(%node, "cluster: offer not delivered: {e}");
            return Err("officer_unavailable");
        }
    }
    let (cluster, node, officer_id) = (cluster.clone(), node.to_owned(), req.officer_id);
    Ok(proxy(proxy_life(ctx), move |m| {
        if let SessionMsg::CancelRequest(request_id) = m {
            publish(
                &cluster,
                &node,
                &RelayMsg::Cancel {
                    officer_id,
                    request_id,
                },
            );
        }
    }))
}

/// Asks every other node to end the account's session (the one holding it answers);
/// `NoSession` when none answers within the request timeout.
pub async fn kick_elsewhere(cluster: &Arc<Cluster>, account: &str) -> Kick {
    let Some(link) = cluster.link() else {
        return Kick::NoSession;
    };
    let subject = link.kick_subject();
    let body = serde_json::to_vec(&KickRequest {
        account: account.to_owned(),
    })
    .expect("serialises");
    match link.client().request(subject, body.into()).await {
        Ok(msg) => match serde_json::from_slice::<KickReply>(&msg.payload) {
            Ok(KickReply { role: Some(r) }) => Kick::Ended(r),
            Ok(KickReply { role: None }) => Kick::Busy,
            Err(_) => Kick::NoSession,
        },
        Err(_) => Kick::NoSession,
    }
}

/// Tells every other node of a trophy for `account`'s session (at most once: the trophy
/// itself is kept in the store).
pub fn notify_elsewhere(cluster: &Arc<Cluster>, notice: &TrophyNotice) {
    if let Some(link) = cluster.link() {
        link.publish(link.notice_subject(), notice, "trophy notice");
    }
}

/// Answers other nodes' offers and delivers their connection messages and notices to this
/// node's sessions, until the process ends.
pub async fn serve(ctx: Arc<Context>, cluster: Arc<Cluster>) {
    let link = cluster.wait_link().await;
    let subscribed = async {
        anyhow::Ok((
            link.serve(cluster.node_id(), "offer").await?,
            link.serve(cluster.node_id(), "relay").await?,
            link.client().subscribe(link.kick_subject()).await?,
            link.client().subscribe(link.notice_subject()).await?,
        ))
    };
    let (mut offers, mut relayed, mut kicks, mut notices) = match subscribed.await {
        Ok(subs) => subs,
        Err(e) => {
            tracing::error!("cluster: cannot take connection messages: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(msg) = offers.next() => {
                let refused = match serde_json::from_slice::<OfferRequest>(&msg.payload) {
                    Ok(req) => take_offer(&ctx, &cluster, req).await.err(),
                    Err(_) => Some("bad_request"),
                };
                let reply = OfferReply { refused: refused.map(str::to_owned) };
                link.reply(&msg, &reply).await;
            }
            Some(msg) = kicks.next() => {
                let Ok(req) = serde_json::from_slice::<KickRequest>(&msg.payload) else {
                    continue;
                };
                // Only the node holding the session answers.
                let reply = match ctx.sessions.kick(&req.account) {
                    Kick::Ended(role) => KickReply { role: Some(role) },
                    Kick::Busy => KickReply { role: None },
                    Kick::NoSession => continue,
                };
                link.reply(&msg, &reply).await;
            }
            Some(msg) = relayed.next() => {
                if let Ok(m) = serde_json::from_slice::<RelayMsg>(&msg.payload) {
                    deliver(&ctx, m);
                }
            }
            Some(msg) = notices.next() => {
                if let Ok(n) = serde_json::from_slice::<TrophyNotice>(&msg.payload) {
                    super::notify::deliver_here(&ctx, &n);
                }
            }
            else => return,
        }
    }
}

/// The officer's side of [`offer`].
async fn take_offer(
    ctx: &Arc<Context>,
    cluster: &Arc<Cluster>,
    req: OfferRequest,
) -> Result<(), &'static str> {
    let officer = ctx
        .sessions
        .get(&req.officer_id)
        .filter(|e| e.role == Role::Officer)
        .ok_or("officer_unavailable")?;
    let (cl, node, citizen_id) = (cluster.clone(), req.citizen_node, req.citizen_id.clone());
    let citizen = proxy(proxy_life(ctx), move |m| {
        if let SessionMsg::Decided(request_id, outcome) = m {
            let (status, established) = match outcome {
                Outcome::Status(s) => (s.to_owned(), None),
                Outcome::Established(e) => ("accepted".to_owned(), Some(e)),
            };
            let msg = RelayMsg::Decided {
                citizen_id,
                request_id,
                status,
                established,
            };
            publish(&cl, &node, &msg);
        }
    });
    let offered = OfferedRequest {
        request_id: req.request_id,
        citizen_id: req.citizen_id.into(),
        citizen_name: req.citizen_name.into(),
        citizen,
        distance_m: req.distance_m,
        mode: req.mode,
    };
    let (tx, rx) = oneshot::channel();
    if !tell(&officer.handle, SessionMsg::Offer(offered, tx), "offer") {
        return Err("officer_busy");
    }
    let timeout = Duration::from_millis(ctx.settings.regions.call_timeout_ms);
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        _ => Err("officer_unavailable"),
    }
}

/// Hands a relayed message to the session it is for (if it is still here).
fn deliver(ctx: &Context, m: RelayMsg) {
    match m {
        RelayMsg::Cancel {
            officer_id,
            request_id,
        } => {
            if let Some(e) = ctx.sessions.get(&officer_id) {
                tell(
                    &e.handle,
                    SessionMsg::CancelRequest(request_id),
                    "connection",
                );
            }
        }
        RelayMsg::Decided {
            citizen_id,
            request_id,
            status,
            established,
        } => {
            let Some(e) = ctx.sessions.get(&citizen_id) else {
                return;
            };
            let outcome = match (status.as_str(), established) {
                ("accepted", Some(e)) => Outcome::Established(e),
                ("declined", _) => Outcome::Status("declined"),
                ("expired", _) => Outcome::Status("expired"),
                _ => Outcome::Status("cancelled"),
            };
            tell(
                &e.handle,
                SessionMsg::Decided(request_id, outcome),
                "connection",
            );
        }
    }
}
