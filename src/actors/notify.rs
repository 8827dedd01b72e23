//! Frames for phones that follow from published domain events: `trophy_awarded` to the
//! account's live session. Events this node published come from its bus; when the session
//! is held by another node of a cluster, a notice on `{ns}.sessions.notice` reaches it
//! (at most once, like the frame itself: the trophy is kept in the store and listed by
//! `GET /v1/me`).

use std::sync::Arc;

use tokio::sync::broadcast;

use super::session::{SessionMsg, tell};
use crate::cluster::wire::TrophyNotice;
use crate::context::Context;
use crate::events::{DomainEvent, Event};
use crate::protocol::ServerMsg;

/// Runs until the bus closes: tells sessions of the trophies in the events published.
pub async fn run(ctx: Arc<Context>, mut rx: broadcast::Receiver<Arc<Event>>) {
    loop {
        let e = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics::counter!("notices_lost_total").increment(n);
                tracing::warn!(lost = n, "the notifier fell behind the event bus");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let DomainEvent::TrophyAwarded {
            account_id,
            trophy_id,
            name,
            ..
        } = &e.event
        {
            let notice = TrophyNotice {
                account: account_id.clone(),
                trophy_id: trophy_id.clone(),
                name: name.clone(),
            };
            if !deliver_here(&ctx, &notice)
                && let Some(cluster) = &ctx.cluster
            {
                super::relay::notify_elsewhere(cluster, &notice);
            }
        }
    }
}

/// Gives the notice to the account's session on this node; false when it has none here.
pub fn deliver_here(ctx: &Context, n: &TrophyNotice) -> bool {
    let Some(entry) = ctx.sessions.get(&n.account) else {
        return false;
    };
    let frame = ServerMsg::TrophyAwarded {
        trophy_id: n.trophy_id.clone(),
        name: n.name.clone(),
    };
    tell(&entry.handle, SessionMsg::Notify(Box::new(frame)), "notice")
}
