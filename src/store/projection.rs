//! The profile statistics projection: `account_stats` (earned, spent, connections) folded
//! from the event outbox, the trophies those events earn (`trophies`) and the partner
//! webhook deliveries they make (`webhook_deliveries`). A batch of events is claimed, folded and marked published in one
//! transaction, so each event counts exactly once however many publishers run (PostgreSQL
//! row locks make a concurrent publisher wait and then skip the claimed rows; SQLite runs
//! one write transaction at a time).

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, ExprTrait, LockType, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};

use crate::events::{DomainEvent, Event};

use super::{Store, StoreError};

/// An event claimed from the outbox: (id, kind, payload JSON).
pub type OutboxRow = (i64, String, String);

/// Per-account change of the statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsDelta {
    /// Points earned.
    pub earned: i64,
    /// Points spent.
    pub spent: i64,
    /// Connections.
    pub connections: i64,
}

/// What one event changes, per account.
pub fn fold(event: &DomainEvent, into: &mut HashMap<String, StatsDelta>) {
    match event {
        DomainEvent::ConnectionEstablished {
            officer_id,
            citizen_id,
            ..
        } => {
            for a in [officer_id, citizen_id] {
                into.entry(a.clone()).or_default().connections += 1;
            }
        }
        DomainEvent::PointsAwarded {
            account_id, delta, ..
        } => into.entry(account_id.clone()).or_default().earned += delta,
        DomainEvent::VoucherIssued {
            account_id,
            points_spent,
            ..
        } => into.entry(account_id.clone()).or_default().spent += points_spent,
        DomainEvent::DonationMade {
            account_id, points, ..
        } => into.entry(account_id.clone()).or_default().spent += points,
        DomainEvent::TrophyAwarded { .. } => {}
    }
}

impl Store {
    /// Claims up to `limit` unpublished events oldest first, applies them to the
    /// projection and marks them published, in one transaction; returns them for the bus.
    pub async fn publish_batch(&self, limit: u64) -> Result<Vec<Event>, StoreError> {
        let _timed = super::timed("publish_batch");
        let txn = self.db.begin().await?;
        let events = claim(&txn, limit).await?;
        if !events.is_empty() {
            add_stats(&txn, &events).await?;
            super::trophies::award_touched(
                &txn,
                events.iter().map(|e| &e.event),
                &self.trophy_rules,
            )
            .await?;
            let ids: Vec<(String, &DomainEvent)> = events
                .iter()
                .map(|e| (e.id.to_string(), &e.event))
                .collect();
            super::webhooks::enqueue(&txn, &ids, &*self.city_names).await?;
            mark_published(&txn, &events).await?;
        }
        txn.commit().await?;
        Ok(events)
    }

    /// Claims up to `limit` unpublished events oldest first and hands them to `send` (the
    /// cluster's durable stream) without folding them; marks them published only when
    /// `send` succeeded, in the claim's transaction. A failed `send` leaves them for the
    /// next round; a crash after `send` publishes them again (with the same ids, which the
    /// stream and its consumers deduplicate).
    pub async fn publish_batch_with<F>(
        &self,
        limit: u64,
        send: F,
    ) -> Result<Result<Vec<Event>, String>, StoreError>
    where
        F: AsyncFnOnce(&[Event]) -> Result<(), String>,
    {
        let _timed = super::timed("publish_batch");
        let txn = self.db.begin().await?;
        let events = claim(&txn, limit).await?;
        if events.is_empty() {
            txn.commit().await?;
            return Ok(Ok(events));
        }
        if let Err(e) = send(&events).await {
            txn.rollback().await?;
            return Ok(Err(e));
        }
        mark_published(&txn, &events).await?;
        txn.commit().await?;
        Ok(Ok(events))
    }

    /// Folds events read from the cluster's stream into the projection, each once: an
    /// event id already recorded in `processed_events` is skipped. Returns how many were
    /// new.
    pub async fn apply_events(
        &self,
        events: &[(String, DomainEvent)],
    ) -> Result<usize, StoreError> {
        let _timed = super::timed("apply_events");
        let txn = self.db.begin().await?;
        let mut fresh = Vec::new();
        let mut fresh_ids = Vec::new();
        for (id, event) in events {
            let insert = Query::insert()
                .into_table("processed_events")
                .columns(["event_id", "processed_at"])
                .values_panic([id.clone().into(), chrono::Utc::now().into()])
                .on_conflict(OnConflict::column("event_id").do_nothing().to_owned())
                .to_owned();
            if txn.execute(&insert).await?.rows_affected() == 1 {
                fresh.push(Event {
                    id: 0,
                    event: event.clone(),
                });
                fresh_ids.push((id.clone(), event));
            }
        }
        add_stats(&txn, &fresh).await?;
        super::trophies::award_touched(&txn, fresh.iter().map(|e| &e.event), &self.trophy_rules)
            .await?;
        super::webhooks::enqueue(&txn, &fresh_ids, &*self.city_names).await?;
        txn.commit().await?;
        Ok(fresh.len())
    }

    /// Forgets processed ids older than `age` (the stream cannot redeliver them any more).
    pub async fn forget_processed_events(
        &self,
        age: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let before = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
        let q = Query::delete()
            .from_table("processed_events")
            .and_where(Expr::col("processed_at").lt(before))
            .to_owned();
        Ok(self.db.execute(&q).await?.rows_affected())
    }

    /// The projected statistics of an account (zeros before its first event).
    pub async fn stats(&self, account: &str) -> Result<StatsDelta, StoreError> {
        let _timed = super::timed("stats");
        let q = Query::select()
            .columns(["earned", "spent", "connections"])
            .from("account_stats")
            .and_where(Expr::col("account_id").eq(account))
            .to_owned();
        Ok(match self.db.query_one(&q).await? {
            Some(r) => StatsDelta {
                earned: r.try_get("", "earned")?,
                spent: r.try_get("", "spent")?,
                connections: r.try_get("", "connections")?,
            },
            None => StatsDelta::default(),
        })
    }
}

/// Claims up to `limit` unpublished events, oldest first (rows locked until the
/// transaction ends; a concurrent publisher waits, then skips them). Malformed rows are
/// logged, counted and claimed with the rest: a row no consumer can read is not retried.
async fn claim<C: ConnectionTrait>(txn: &C, limit: u64) -> Result<Vec<Event>, StoreError> {
    let q = Query::select()
        .columns(["id", "kind", "payload"])
        .from("events")
        .and_where(Expr::col("published_at").is_null())
        .order_by("id", Order::Asc)
        .limit(limit)
        .lock(LockType::Update)
        .to_owned();
    let rows: Vec<OutboxRow> = txn
        .query_all(&q)
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get("", "id")?,
                r.try_get("", "kind")?,
                r.try_get("", "payload")?,
            ))
        })
        .collect::<Result<_, DbErr>>()?;
    let mut events = Vec::with_capacity(rows.len());
    let mut malformed = Vec::new();
    for (id, kind, payload) in &rows {
        match DomainEvent::from_row(kind, payload) {
            Ok(event) => events.push(Event { id: *id, event }),
            Err(e) => {
                crate::events::skip_malformed(*id, &e);
                malformed.push(*id);
            }
        }
    }
    if !malformed.is_empty() {
        mark_ids(txn, malformed).await?;
    }
    Ok(events)
}

async fn mark_published<C: ConnectionTrait>(txn: &C, events: &[Event]) -> Result<(), StoreError> {
    mark_ids(txn, events.iter().map(|e| e.id).collect()).await
}

async fn mark_ids<C: ConnectionTrait>(txn: &C, ids: Vec<i64>) -> Result<(), StoreError> {
    let mark = Query::update()
        .table("events")
        .value("published_at", chrono::Utc::now())
        .and_where(Expr::col("id").is_in(ids))
        .to_owned();
    txn.execute(&mark).await?;
    Ok(())
}

/// Adds what `events` change to `account_stats`.
async fn add_stats<C: ConnectionTrait>(txn: &C, events: &[Event]) -> Result<(), StoreError> {
    let mut deltas = HashMap::new();
    for e in events {
        fold(&e.event, &mut deltas);
    }
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    // A fixed order: concurrent publishers lock stats rows without deadlocking.
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for chunk in deltas.chunks(500) {
        let mut insert = Query::insert();
        insert.into_table("account_stats").columns([
            "account_id",
            "earned",
            "spent",
            "connections",
        ]);
        for (account, d) in chunk {
            insert.values_panic([
                account.clone().into(),
                d.earned.into(),
                d.spent.into(),
                d.connections.into(),
            ]);
        }
        insert.on_conflict(
            OnConflict::column("account_id")
                .values([
                    (
                        "earned",
                        Expr::cust("account_stats.earned + excluded.earned"),
                    ),
                    ("spent", Expr::cust("account_stats.spent + excluded.spent")),
                    (
                        "connections",
                        Expr::cust("account_stats.connections + excluded.connections"),
                    ),
                ])
                .to_owned(),
        );
        txn.execute(&insert).await?;
    }
    Ok(())
}
