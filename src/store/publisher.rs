//! The outbox publisher: moves committed outbox rows onto the in-process
//! [`EventBus`] (and, in a cluster, the durable [`EventStream`] first); see
//! [`crate::events`].

use std::sync::Arc;
use std::time::Duration;

use super::{Store, StoreError};
use crate::events::{Event, EventBus, EventStream};

/// Moves committed outbox rows onto the bus (and, in a cluster, the durable stream).
pub struct Publisher {
    store: Store,
    bus: EventBus,
    batch: u64,
    stream: Option<Arc<dyn EventStream>>,
}

impl Publisher {
    /// A publisher reading at most `batch` rows per round.
    pub fn new(store: Store, bus: EventBus, batch: u64) -> Self {
        Self {
            store,
            bus,
            batch: batch.max(1),
            stream: None,
        }
    }

    /// A publisher whose events go to `stream` first (cluster mode): a row is marked
    /// published only once the stream stored it, and the projection is folded by the
    /// stream's consumer.
    pub fn with_stream(mut self, stream: Arc<dyn EventStream>) -> Self {
        self.stream = Some(stream);
        self
    }

    /// Publishes what is pending now; returns how many events went out.
    pub async fn publish_pending(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let rows = match &self.stream {
                None => self.store.publish_batch(self.batch).await?,
                Some(stream) => {
                    let sent = self
                        .store
                        .publish_batch_with(self.batch, async |evs: &[Event]| {
                            stream.send(evs).await
                        })
                        .await?;
                    match sent {
                        Ok(rows) => rows,
                        Err(e) => {
                            metrics::counter!("event_publish_failures_total").increment(1);
                            tracing::warn!("events not stored by the stream (will retry): {e}");
                            return Ok(total);
                        }
                    }
                }
            };
            if rows.is_empty() {
                return Ok(total);
            }
            total += rows.len();
            for e in rows {
                self.bus.publish(e);
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
