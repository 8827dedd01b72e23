//! Domain events on JetStream: this node's side of the stream (publishing what the
//! outbox claimed) and the projection's durable consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use super::Cluster;

impl Cluster {
    /// Folds the domain events of the cluster's stream into the profile projection: one
    /// durable consumer shared by every node (each event goes to one of them), acked after
    /// the store committed; an event delivered again is skipped by its id.
    pub(super) async fn project_events(self: Arc<Self>, store: crate::store::Store) {
        use jetstream::consumer::{AckPolicy, pull};
        let link = self.link.get().expect("linked");
        let consumer = loop {
            let made = link
                .events
                .get_or_create_consumer(
                    "projection",
                    pull::Config {
                        durable_name: Some("projection".into()),
                        ack_policy: AckPolicy::Explicit,
                        max_ack_pending: 1024,
                        ack_wait: Duration::from_secs(30),
                        ..Default::default()
                    },
                )
                .await;
            match made {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!("cluster: events consumer: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut rounds = 0u64;
        loop {
            rounds += 1;
            if rounds.is_multiple_of(3600) {
                let age = Duration::from_secs(self.cfg.events_max_age_s);
                if let Err(e) = store.forget_processed_events(age).await {
                    tracing::warn!("forgetting processed event ids: {e}");
                }
            }
            let batch = consumer
                .fetch()
                .max_messages(256)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut messages = match batch {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("cluster: fetching events: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut got = Vec::new();
            while let Some(Ok(m)) = messages.next().await {
                got.push(m);
            }
            if got.is_empty() {
                continue;
            }
            let events: Vec<(String, crate::events::DomainEvent)> = got
                .iter()
                .filter_map(|m| {
                    let e = serde_json::from_slice::<crate::events::StreamEvent>(&m.payload);
                    match e {
                        Ok(e) => Some((e.event_id, e.event)),
                        Err(err) => {
                            metrics::counter!("events_malformed_total").increment(1);
                            tracing::error!("cluster: skipping an unreadable event: {err}");
                            None
                        }
                    }
                })
                .collect();
            match store.apply_events(&events).await {
                Ok(n) => {
                    metrics::counter!("events_projected_total").increment(n as u64);
                    for m in &got {
                        if let Err(e) = m.ack().await {
                            tracing::debug!("cluster: event ack: {e}");
                        }
                    }
                }
                // Not acked: redelivered after ack_wait.
                Err(e) => tracing::warn!("cluster: projecting events (will retry): {e}"),
            }
        }
    }
}

impl crate::events::EventStream for Cluster {
    fn send<'a>(
        &'a self,
        events: &'a [crate::events::Event],
    ) -> futures_util::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let link = self.link.get().ok_or("the cluster link is not up")?;
            let mut acks = Vec::with_capacity(events.len());
            for e in events {
                let body = serde_json::to_vec(&crate::events::StreamEvent {
                    event_id: e.id.to_string(),
                    event: e.event.clone(),
                })
                .expect("events serialise");
                let subject = format!("{}.events.{}", self.cfg.namespace, e.event.kind());
                let msg = async_nats::jetstream::message::PublishMessage::build()
                    .payload(body.into())
                    .message_id(e.id.to_string());
                let ack = link
                    .js
                    .send_publish(subject, msg)
                    .await
                    .map_err(|e| e.to_string())?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}
