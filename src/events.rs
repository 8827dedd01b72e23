//! Domain events, published after commit. The store writes every event into its outbox
//! table in the same transaction as the change it describes; the [`Publisher`] claims
//! committed, unpublished rows, folds them into the profile statistics projection and marks
//! them published in one transaction, then hands them to the in-process [`EventBus`]. So
//! an event is never published for a change that did not commit, a crash between commit
//! and publication only delays it, and the projection counts each event once. (A cluster backend, Redis Streams, can take the
//! bus's place behind the same handle.)

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::store::Store;

/// One published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Outbox id: increasing in commit order on one store.
    pub id: i64,
    /// `connection_established`, `points_awarded`, `voucher_issued`, `donation_made`.
    pub kind: String,
    /// The event's fields as JSON.
    pub payload: serde_json::Value,
}

/// The in-process bus: a bounded broadcast; a subscriber that falls behind by more than
/// its capacity loses the oldest events and is told how many (counted in a metric).
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl EventBus {
    /// A bus keeping at most `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// A new subscriber, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    fn publish(&self, e: Event) {
        metrics::counter!("events_published_total", "kind" => e.kind.clone()).increment(1);
        // No subscriber is fine: the outbox row stays as the record.
        let _ = self.tx.send(Arc::new(e));
    }
}

/// Moves committed outbox rows onto the bus.
pub struct Publisher {
    store: Store,
    bus: EventBus,
    batch: u64,
}

impl Publisher {
    /// A publisher reading at most `batch` rows per round.
    pub fn new(store: Store, bus: EventBus, batch: u64) -> Self {
        Self {
            store,
            bus,
            batch: batch.max(1),
        }
    }

    /// Publishes what is pending now; returns how many events went out.
    pub async fn publish_pending(&self) -> Result<usize, crate::store::StoreError> {
        let mut total = 0;
        loop {
            let rows = self.store.publish_batch(self.batch).await?;
            if rows.is_empty() {
                return Ok(total);
            }
            total += rows.len();
            for (id, kind, payload) in rows {
                let payload =
                    serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
                self.bus.publish(Event { id, kind, payload });
            }
        }
    }

    /// Runs until the task is aborted: publishes every `every`, and at once when `wake`
    /// is notified (after a commit).
    pub async fn run(self: Arc<Self>, every: Duration, wake: Arc<tokio::sync::Notify>) {
        loop {
            if let Err(e) = self.publish_pending().await {
                metrics::counter!("event_publish_failures_total").increment(1);
                tracing::warn!("publishing events failed (will retry): {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = wake.notified() => {}
            }
        }
    }
}
