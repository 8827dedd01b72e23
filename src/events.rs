//! Domain events, published after commit. The store writes every event into its outbox
//! table in the same transaction as the change it describes; the
//! [`Publisher`](crate::store::publisher::Publisher) claims
//! committed, unpublished rows, folds them into the profile statistics projection and marks
//! them published in one transaction, then hands them to the in-process [`EventBus`]. So
//! an event is never published for a change that did not commit, a crash between commit
//! and publication only delays it, and the projection counts each event once. Events are
//! typed ([`DomainEvent`]) from the store's write to every consumer.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What happened, as the store records it in its outbox (in the transaction of the change)
/// and as every consumer reads it. Stored as the variant's name (`kind`) and its fields as
/// a JSON object (`payload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum DomainEvent {
    /// An officer accepted a citizen's request; recorded once per request.
    ConnectionEstablished {
        /// The connection.
        connection_id: String,
        /// The request it answered.
        request_id: String,
        /// The officer.
        officer_id: String,
        /// The citizen.
        citizen_id: String,
        /// `in_person` or `virtual`.
        mode: String,
        /// The officer's zip when it accepted.
        zip: String,
        /// Points each side earned (0 within the pair's cooldown).
        points_awarded: i64,
    },
    /// Points credited to an account.
    PointsAwarded {
        /// The account.
        account_id: String,
        /// Points (positive).
        delta: i64,
        /// What earned them (a connection id).
        #[serde(rename = "ref")]
        reference: String,
        /// The ledger entry's kind (`connection`).
        kind: String,
    },
    /// A citizen redeemed points for a voucher.
    VoucherIssued {
        /// The voucher code.
        voucher_code: String,
        /// The offer.
        offer_id: String,
        /// Its retailer.
        retailer_id: String,
        /// The citizen.
        account_id: String,
        /// Points debited.
        points_spent: i64,
    },
    /// An officer donated points to a charity.
    DonationMade {
        /// The donation.
        donation_id: String,
        /// The charity.
        charity_id: String,
        /// The officer.
        account_id: String,
        /// Points debited.
        points: i64,
    },
    /// An account earned a trophy (once per account and trophy).
    TrophyAwarded {
        /// The account.
        account_id: String,
        /// The trophy's rule id.
        trophy_id: String,
        /// Its shown name.
        name: String,
        /// When it was awarded.
        awarded_at: chrono::DateTime<chrono::Utc>,
    },
}

/// An outbox row that is not a [`DomainEvent`] (unknown kind, or fields missing or
/// mistyped): skipped by consumers and counted, never folded as zeros.
#[derive(Debug, thiserror::Error)]
#[error("malformed event {kind}: {cause}")]
pub struct MalformedEvent {
    /// The row's kind.
    pub kind: String,
    /// What did not fit.
    pub cause: String,
}

impl DomainEvent {
    /// The event's kind, as stored and as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConnectionEstablished { .. } => "connection_established",
            Self::PointsAwarded { .. } => "points_awarded",
            Self::VoucherIssued { .. } => "voucher_issued",
            Self::DonationMade { .. } => "donation_made",
            Self::TrophyAwarded { .. } => "trophy_awarded",
        }
    }

    /// The outbox columns: kind and payload JSON.
    pub fn to_row(&self) -> (&'static str, String) {
        let payload = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut m)) => m.remove("payload").unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
        (self.kind(), payload.to_string())
    }

    /// The event of an outbox row.
    pub fn from_row(kind: &str, payload: &str) -> Result<Self, MalformedEvent> {
        let malformed = |cause: String| MalformedEvent {
            kind: kind.to_owned(),
            cause,
        };
        let payload: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| malformed(e.to_string()))?;
        serde_json::from_value(serde_json::json!({"kind": kind, "payload": payload}))
            .map_err(|e| malformed(e.to_string()))
    }
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Outbox id: unique, increasing in commit order on one store.
    pub id: i64,
    /// What happened.
    pub event: DomainEvent,
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

    /// Hands `e` to every subscriber (the publisher does, once `e` committed).
    pub(crate) fn publish(&self, e: Event) {
        metrics::counter!("events_published_total", "kind" => e.event.kind()).increment(1);
        // No subscriber is fine: the outbox row stays as the record.
        let _ = self.tx.send(Arc::new(e));
    }
}

/// Logs and counts an outbox row no consumer can read.
pub fn skip_malformed(id: i64, e: &MalformedEvent) {
    metrics::counter!("events_malformed_total").increment(1);
    tracing::error!(event = id, "skipping an outbox row: {e}");
}

/// A durable stream the events go to in a cluster (JetStream): at least once, each with
/// its unique `event_id`; the profile projection is then fed from the stream, not here.
pub trait EventStream: Send + Sync {
    /// Sends `events`, returning once the stream has stored every one.
    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), String>>;
}

/// An event as the cluster's stream carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// Unique over the cluster (the outbox id in the one shared store); consumers
    /// deduplicate by it.
    pub event_id: String,
    /// What happened.
    pub event: DomainEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_outbox_row() {
        let events = [
            DomainEvent::ConnectionEstablished {
                connection_id: "c".into(),
                request_id: "r".into(),
                officer_id: "o".into(),
                citizen_id: "z".into(),
                mode: "virtual".into(),
                zip: "10001".into(),
                points_awarded: 10,
            },
            DomainEvent::PointsAwarded {
                account_id: "o".into(),
                delta: 10,
                reference: "c".into(),
                kind: "connection".into(),
            },
            DomainEvent::VoucherIssued {
                voucher_code: "v".into(),
                offer_id: "f".into(),
                retailer_id: "t".into(),
                account_id: "z".into(),
                points_spent: 30,
            },
            DomainEvent::DonationMade {
                donation_id: "d".into(),
                charity_id: "h".into(),
                account_id: "o".into(),
                points: 5,
            },
        ];
        for e in events {
            let (kind, payload) = e.to_row();
            assert!(
                !payload.contains("\"kind\":\"points_awarded\""),
                "{payload}"
            );
            assert_eq!(DomainEvent::from_row(kind, &payload).unwrap(), e);
        }
        // The stored form is the fields alone (what earlier rows hold too).
        let (_, payload) = DomainEvent::PointsAwarded {
            account_id: "o".into(),
            delta: 10,
            reference: "c".into(),
            kind: "connection".into(),
        }
        .to_row();
        assert_eq!(
            payload,
            r#"{"account_id":"o","delta":10,"kind":"connection","ref":"c"}"#
        );
    }

    #[test]
    fn unknown_kinds_and_missing_fields_are_malformed_not_zero() {
        assert!(DomainEvent::from_row("dance", "{}").is_err());
        assert!(DomainEvent::from_row("points_awarded", r#"{"account_id":"o"}"#).is_err());
        assert!(DomainEvent::from_row("donation_made", "not json").is_err());
    }
}
