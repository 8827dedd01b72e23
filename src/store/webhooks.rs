//! Partner webhooks in the store: the subscriptions, and their deliveries. A delivery is
//! queued in the transaction that folds its event (the publisher's, or the cluster stream
//! consumer's), one per (webhook, event) by a unique key, with its body rendered then —
//! what the accounts had consented to at that moment. Attempts are made by
//! [`crate::webhooks`]: oldest first per webhook, one node at a time (a lease), each
//! recorded.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::profiles::rfc3339;
use super::{Store, StoreError};
use crate::events::DomainEvent;

/// The event types a webhook can subscribe to.
pub const EVENT_TYPES: [&str; 3] = ["connection.shared", "trophy.awarded", "donation.made"];

/// Attempts listed per delivery at most (the newest).
const ATTEMPTS_LISTED: u64 = 20;

/// A webhook as the admin API shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Webhook {
    /// Its id.
    pub webhook_id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AttemptView {
    /// When it started (RFC 3339).
    pub at: String,
    /// The receiver's HTTP status, `null` when none came (timeout, refused, …).
    pub status: Option<i32>,
    /// How long it took.
    pub latency_ms: i64,
    /// What went wrong, `null` on success.
    pub error: Option<String>,
}

/// A delivery as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Its id (also the cursor).
    pub delivery_id: i64,
    /// The event delivered (`X-HeyBlue-Event-Id`).
    pub event_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `delivered`, or `dead` (given up after `webhooks.max_age_s`).
    pub status: String,
    /// Attempts made since it was queued, or last put back in the queue
    /// (`POST /admin/v1/webhooks/{id}/requeue`).
    pub attempts: i32,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    /// When it was delivered or given up.
    pub finished_at: Option<String>,
    /// The newest attempts (up to 20), newest first.
    pub attempt_log: Vec<AttemptView>,
}

/// A delivery due now, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Due {
    /// The delivery.
    pub id: i64,
    /// Its webhook.
    pub webhook_id: String,
    /// Where to.
    pub url: String,
    /// The webhook's secret, for the signature.
    pub secret: String,
    /// The event id.
    pub event_id: String,
    /// The JSON body.
    pub body: String,
    /// Attempts made before this one (since it was queued, or put back).
    pub attempts: i32,
    /// When it was queued, or put back in the queue: it is given up
    /// `webhooks.max_age_s` after this.
    pub since: DateTime<Utc>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The receiver's status, if one came.
    pub status: Option<u16>,
    /// How long it took.
    pub latency_ms: i64,
    /// What went wrong (`None`: delivered).
    pub error: Option<String>,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Delivered.
    Delivered,
    /// Tried again at this time.
    Retry(DateTime<Utc>),
    /// Given up.
    Dead,
}

fn webhook_of(r: &sea_orm::QueryResult) -> Result<Webhook, DbErr> {
    let events: String = r.try_get("", "events")?;
    Ok(Webhook {
        webhook_id: r.try_get("", "id")?,
        url: r.try_get("", "url")?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        created_at: rfc3339(r.try_get("", "created_at")?),
        updated_at: rfc3339(r.try_get("", "updated_at")?),
    })
}

impl Store {
    /// Webhooks, oldest first, `limit` at most.
    pub async fn webhooks(&self, limit: u64) -> Result<Vec<Webhook>, StoreError> {
        let q = Query::select()
            .columns(["id", "url", "events", "created_at", "updated_at"])
            .from("webhooks")
            .order_by("created_at", Order::Asc)
            .order_by("id", Order::Asc)
            .limit(limit)
            .to_owned();
        let rows = self.db.query_all(&q).await?;
        Ok(rows.iter().map(webhook_of).collect::<Result<_, _>>()?)
    }

    /// One webhook.
    pub async fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let q = Query::select()
            .columns(["id", "url", "events", "created_at", "updated_at"])
            .from("webhooks")
            .and_where(Expr::col("id").eq(id))
            .to_owned();
        Ok(self
            .db
            .query_one(&q)
            .await?
            .as_ref()
            .map(webhook_of)
            .transpose()?)
    }

    /// Adds a webhook (callers validated it) unless `max` exist already (`Ok(None)`).
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
        max: u64,
    ) -> Result<Option<Webhook>, StoreError> {
        let txn = self.db.begin().await?;
        // Two creations at `max - 1` must not both pass the count. PostgreSQL: a lock on
        // the table that only its writers wait for (`FOR UPDATE` is not allowed with
        // `COUNT`). SQLite writes one transaction at a time: of two that counted, the
        // second to insert fails (busy) instead of passing.
        if self.backend() == sea_orm::DbBackend::Postgres {
            txn.execute_unprepared("LOCK TABLE webhooks IN SHARE ROW EXCLUSIVE MODE")
                .await?;
        }
        let count = txn
            .query_one(
                &Query::select()
                    .expr_as(Expr::cust("COUNT(*)"), "n")
                    .from("webhooks")
                    .to_owned(),
            )
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if count as u64 >= max {
            return Ok(None);
        }
        let id = format!("wh_{}", uuid::Uuid::new_v4().simple());
        let now = Utc::now();
        txn.execute(
            &Query::insert()
                .into_table("webhooks")
                .columns(["id", "url", "events", "secret", "created_at", "updated_at"])
                .values_panic([
                    id.clone().into(),
                    url.into(),
                    serde_json::to_string(events).expect("strings").into(),
                    secret.into(),
                    now.into(),
                    now.into(),
                ])
                .to_owned(),
        )
        .await?;
        txn.commit().await?;
        self.webhook(&id).await
    }

    /// Changes what is given; `Ok(None)` for an unknown id.
    pub async fn update_webhook(
        &self,
        id: &str,
        url: Option<&str>,
        events: Option<&[String]>,
        secret: Option<&str>,
    ) -> Result<Option<Webhook>, StoreError> {
        let mut q = Query::update();
        q.table("webhooks")
            .value("updated_at", Utc::now())
            .and_where(Expr::col("id").eq(id));
        if let Some(u) = url {
            q.value("url", u);
        }
        if let Some(e) = events {
            q.value("events", serde_json::to_string(e).expect("strings"));
        }
        if let Some(s) = secret {
            q.value("secret", s);
        }
        if self.db.execute(&q).await?.rows_affected() == 0 {
            return Ok(None);
        }
        self.webhook(id).await
    }

    /// Removes a webhook with its deliveries and their attempts; false for an unknown id.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        // Deliveries first: an attempt being recorded holds its delivery's row, so this
        // waits for it and then removes its attempt too (see `record_attempt`).
        for table in ["webhook_deliveries", "webhook_attempts"] {
            txn.execute(
                &Query::delete()
                    .from_table(table)
                    .and_where(Expr::col("webhook_id").eq(id))
                    .to_owned(),
            )
            .await?;
        }
        let gone = txn
            .execute(
                &Query::delete()
                    .from_table("webhooks")
                    .and_where(Expr::col("id").eq(id))
                    .to_owned(),
            )
            .await?
            .rows_affected();
        txn.commit().await?;
        Ok(gone == 1)
    }

    /// A webhook's deliveries newest first, `limit` at most, older than the cursor
    /// `before` (a delivery id), with the next page's cursor.
    pub async fn deliveries(
        &self,
        webhook_id: &str,
        limit: u64,
        before: Option<i64>,
    ) -> Result<(Vec<DeliveryView>, Option<String>), StoreError> {
        let mut q = Query::select();
        q.columns([
            "id",
            "event_id",
            "event_type",
            "status",
            "attempts",
            "created_at",
            "next_attempt_at",
            "finished_at",
        ])
        .from("webhook_deliveries")
        .and_where(Expr::col("webhook_id").eq(webhook_id))
        .order_by("id", Order::Desc)
        .limit(limit + 1);
        if let Some(b) = before {
            q.and_where(Expr::col("id").lt(b));
        }
        let rows = self.db.query_all(&q).await?;
        let more = rows.len() as u64 > limit;
        let mut out = Vec::new();
        for r in rows.iter().take(limit as usize) {
            let id: i64 = r.try_get("", "id")?;
            let status: String = r.try_get("", "status")?;
            let log = self
                .db
                .query_all(
                    &Query::select()
                        .columns(["at", "status", "latency_ms", "error"])
                        .from("webhook_attempts")
                        .and_where(Expr::col("delivery_id").eq(id))
                        .order_by("id", Order::Desc)
                        .limit(ATTEMPTS_LISTED)
                        .to_owned(),
                )
                .await?
                .iter()
                .map(|a| {
                    Ok(AttemptView {
                        at: rfc3339(a.try_get("", "at")?),
                        status: a.try_get("", "status")?,
                        latency_ms: a.try_get("", "latency_ms")?,
                        error: a.try_get("", "error")?,
                    })
                })
                .collect::<Result<_, DbErr>>()?;
            out.push(DeliveryView {
                delivery_id: id,
                event_id: r.try_get("", "event_id")?,
                event_type: r.try_get("", "event_type")?,
                attempts: r.try_get("", "attempts")?,
                created_at: rfc3339(r.try_get("", "created_at")?),
                next_attempt_at: (status == "pending")
                    .then(|| r.try_get("", "next_attempt_at").map(rfc3339))
                    .transpose()?,
                finished_at: r
                    .try_get::<Option<DateTime<Utc>>>("", "finished_at")?
                    .map(rfc3339),
                status,
                attempt_log: log,
            });
        }
        let next = more
            .then(|| out.last().map(|d| d.delivery_id.to_string()))
            .flatten();
        Ok((out, next))
    }

    /// Up to `limit` deliveries due at `now`: of each webhook only its oldest pending one
    /// (deliveries go out in order per webhook), and none another node holds the lease of.
    pub async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<Due>, StoreError> {
        let heads = Query::select()
            .expr(Expr::cust("MIN(id)"))
            .from("webhook_deliveries")
            .and_where(Expr::col("status").eq("pending"))
            .group_by_col("webhook_id")
            .to_owned();
        let q = Query::select()
            .columns(
                [
                    "id",
                    "webhook_id",
                    "event_id",
                    "body",
                    "attempts",
                    "created_at",
                    "retried_at",
                ]
                .map(|c| ("webhook_deliveries", c)),
            )
            .columns([("webhooks", "url"), ("webhooks", "secret")])
            .from("webhook_deliveries")
            .inner_join(
                "webhooks",
                Expr::col(("webhooks", "id")).equals(("webhook_deliveries", "webhook_id")),
            )
            .and_where(Expr::col(("webhook_deliveries", "id")).in_subquery(heads))
            .and_where(Expr::col(("webhook_deliveries", "next_attempt_at")).lte(now))
            .and_where(
                Expr::col(("webhook_deliveries", "lease_until"))
                    .is_null()
                    .or(Expr::col(("webhook_deliveries", "lease_until")).lt(now)),
            )
            .order_by(("webhook_deliveries", "next_attempt_at"), Order::Asc)
            .limit(limit)
            .to_owned();
        let rows = self.db.query_all(&q).await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(Due {
                    id: r.try_get("", "id")?,
                    webhook_id: r.try_get("", "webhook_id")?,
                    url: r.try_get("", "url")?,
                    secret: r.try_get("", "secret")?,
                    event_id: r.try_get("", "event_id")?,
                    body: r.try_get("", "body")?,
                    attempts: r.try_get("", "attempts")?,
                    since: match r.try_get::<Option<DateTime<Utc>>>("", "retried_at")? {
                        Some(t) => t,
                        None => r.try_get("", "created_at")?,
                    },
                })
            })
            .collect::<Result<_, DbErr>>()?)
    }

    /// Takes the lease of a delivery until `until`; false when another node holds it.
    pub async fn lease_delivery(
        &self,
        id: i64,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let q = Query::update()
            .table("webhook_deliveries")
            .value("lease_until", until)
            .and_where(Expr::col("id").eq(id))
            .and_where(Expr::col("status").eq("pending"))
            .and_where(
                Expr::col("lease_until")
                    .is_null()
                    .or(Expr::col("lease_until").lt(now)),
            )
            .to_owned();
        Ok(self.db.execute(&q).await?.rows_affected() == 1)
    }

    /// Puts a webhook's given-up (`dead`) deliveries back in the queue, due now, with
    /// their attempts counted afresh and `webhooks.max_age_s` counted from `now`; returns
    /// how many. They go out oldest first, before the webhook's later pending ones.
    pub async fn requeue_dead(
        &self,
        webhook_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let q = Query::update()
            .table("webhook_deliveries")
            .value("status", "pending")
            .value("attempts", 0)
            .value("next_attempt_at", now)
            .value("retried_at", now)
            .value("finished_at", Option::<DateTime<Utc>>::None)
            .value("lease_until", Option::<DateTime<Utc>>::None)
            .and_where(Expr::col("webhook_id").eq(webhook_id))
            .and_where(Expr::col("status").eq("dead"))
            .to_owned();
        Ok(self.db.execute(&q).await?.rows_affected())
    }

    /// Records an attempt and what becomes of the delivery, and releases its lease. A
    /// delivery gone meanwhile (its webhook removed) records nothing.
    pub async fn record_attempt(
        &self,
        due: &Due,
        at: DateTime<Utc>,
        attempt: &Attempt,
        after: After,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let mut q = Query::update();
        q.table("webhook_deliveries")
            .value("attempts", due.attempts + 1)
            .value("lease_until", Option::<DateTime<Utc>>::None)
            .and_where(Expr::col("id").eq(due.id));
        match after {
            After::Delivered => {
                q.value("status", "delivered")
                    .value("finished_at", Utc::now());
            }
            After::Dead => {
                q.value("status", "dead").value("finished_at", Utc::now());
            }
            After::Retry(t) => {
                q.value("next_attempt_at", t);
            }
        }
        // The update holds the delivery's row until the commit, so a removal of its
        // webhook (deliveries first, then attempts) either ran before it — nothing is
        // updated, nothing recorded — or waits, then removes this attempt too.
        if txn.execute(&q).await?.rows_affected() == 0 {
            return Ok(());
        }
        txn.execute(
            &Query::insert()
                .into_table("webhook_attempts")
                .columns([
                    "delivery_id",
                    "webhook_id",
                    "at",
                    "status",
                    "latency_ms",
                    "error",
                ])
                .values_panic([
                    due.id.into(),
                    due.webhook_id.clone().into(),
                    at.into(),
                    attempt.status.map(i32::from).into(),
                    attempt.latency_ms.into(),
                    attempt.error.clone().into(),
                ])
                .to_owned(),
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }
}

/// An account as a payload shows it: id and display name, and whether it consented.
struct Who {
    name: String,
    shares: bool,
}

async fn accounts<C: ConnectionTrait>(
    txn: &C,
    ids: Vec<&str>,
) -> Result<HashMap<String, Who>, StoreError> {
    let rows = txn
        .query_all(
            &Query::select()
                .columns(["id", "display_name", "share_connections"])
                .from("accounts")
                .and_where(Expr::col("id").is_in(ids))
                .to_owned(),
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        out.insert(
            r.try_get("", "id")?,
            Who {
                name: r.try_get("", "display_name")?,
                shares: r.try_get("", "share_connections")?,
            },
        );
    }
    Ok(out)
}

/// Queues, in `txn`, a delivery of each shareable event to every webhook subscribed to its
/// type (once per webhook and event: a repeated fold queues nothing). `city` names a
/// zip's city. Returns how many were queued.
pub(super) async fn enqueue<C: ConnectionTrait>(
    txn: &C,
    events: &[(String, &DomainEvent)],
    city: &(dyn Fn(&str) -> String + Send + Sync),
) -> Result<usize, StoreError> {
    if !events.iter().any(|(_, e)| shareable_kind(e).is_some()) {
        return Ok(0);
    }
    let hooks: Vec<(String, Vec<String>)> = txn
        .query_all(
            &Query::select()
                .columns(["id", "events"])
                .from("webhooks")
                .to_owned(),
        )
        .await?
        .iter()
        .map(|r| {
            let events: String = r.try_get("", "events")?;
            Ok((
                r.try_get("", "id")?,
                serde_json::from_str(&events).unwrap_or_default(),
            ))
        })
        .collect::<Result<_, DbErr>>()?;
    if hooks.is_empty() {
        return Ok(0);
    }
    let mut queued = 0;
    let now = Utc::now();
    for (event_id, e) in events {
        let Some(kind) = shareable_kind(e) else {
            continue;
        };
        let subscribed: Vec<&String> = hooks
            .iter()
            .filter(|(_, ev)| ev.iter().any(|t| t == kind))
            .map(|(id, _)| id)
            .collect();
        if subscribed.is_empty() {
            continue;
        }
        let Some((at, data)) = render(txn, e, city).await? else {
            continue;
        };
        let body = json!({"event_id": event_id, "type": kind, "at": at, "data": data}).to_string();
        for hook in subscribed {
            let insert = Query::insert()
                .into_table("webhook_deliveries")
                .columns([
                    "webhook_id",
                    "event_id",
                    "event_type",
                    "body",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "created_at",
                ])
                .values_panic([
                    hook.clone().into(),
                    event_id.clone().into(),
                    kind.into(),
                    body.clone().into(),
                    "pending".into(),
                    0i32.into(),
                    now.into(),
                    now.into(),
                ])
                .on_conflict(
                    OnConflict::columns(["webhook_id", "event_id"])
                        .do_nothing()
                        .to_owned(),
                )
                .to_owned();
            queued += txn.execute(&insert).await?.rows_affected() as usize;
        }
    }
    if queued > 0 {
        metrics::counter!("webhook_deliveries_queued_total").increment(queued as u64);
    }
    Ok(queued)
}

/// The webhook event type of a domain event that can be shared.
fn shareable_kind(e: &DomainEvent) -> Option<&'static str> {
    match e {
        DomainEvent::ConnectionEstablished { .. } => Some("connection.shared"),
        DomainEvent::TrophyAwarded { .. } => Some("trophy.awarded"),
        DomainEvent::DonationMade { .. } => Some("donation.made"),
        _ => None,
    }
}

/// The event's time and `data`, when its accounts consented to share it (`None`
/// otherwise): display names, zip, city, time — never a position, never the id of an
/// account that did not consent.
async fn render<C: ConnectionTrait>(
    txn: &C,
    e: &DomainEvent,
    city: &(dyn Fn(&str) -> String + Send + Sync),
) -> Result<Option<(String, Value)>, StoreError> {
    let person = |id: &str, w: &Who| json!({"account_id": id, "display_name": w.name});
    Ok(match e {
        DomainEvent::ConnectionEstablished {
            connection_id,
            officer_id,
            citizen_id,
            mode,
            zip,
            ..
        } => {
            let who = accounts(txn, vec![officer_id, citizen_id]).await?;
            let (Some(o), Some(c)) = (who.get(officer_id), who.get(citizen_id)) else {
                return Ok(None);
            };
            if !(o.shares && c.shares) {
                return Ok(None);
            }
            let at: Option<DateTime<Utc>> = txn
                .query_one(
                    &Query::select()
                        .column("created_at")
                        .from("connections")
                        .and_where(Expr::col("id").eq(connection_id.as_str()))
                        .to_owned(),
                )
                .await?
                .map(|r| r.try_get("", "created_at"))
                .transpose()?;
            Some((
                rfc3339(at.unwrap_or_else(Utc::now)),
                json!({
                    "connection_id": connection_id, "mode": mode, "zip": zip, "city": city(zip),
                    "officer": person(officer_id, o), "citizen": person(citizen_id, c),
                }),
            ))
        }
        DomainEvent::TrophyAwarded {
            account_id,
            trophy_id,
            name,
            awarded_at,
        } => {
            let who = accounts(txn, vec![account_id]).await?;
            let Some(a) = who.get(account_id).filter(|a| a.shares) else {
                return Ok(None);
            };
            Some((
                rfc3339(*awarded_at),
                json!({"trophy_id": trophy_id, "name": name, "account": person(account_id, a)}),
            ))
        }
        DomainEvent::DonationMade {
            donation_id,
            charity_id,
            account_id,
            points,
        } => {
            let who = accounts(txn, vec![account_id]).await?;
            let Some(a) = who.get(account_id).filter(|a| a.shares) else {
                return Ok(None);
            };
            let row = txn
                .query_one(
                    &Query::select()
                        .column(("donations", "created_at"))
                        .column(("charities", "name"))
                        .from("donations")
                        .left_join(
                            "charities",
                            Expr::col(("charities", "id")).equals(("donations", "charity_id")),
                        )
                        .and_where(Expr::col(("donations", "id")).eq(donation_id.as_str()))
                        .to_owned(),
                )
                .await?;
            let (at, charity): (Option<DateTime<Utc>>, Option<String>) = match row {
                Some(r) => (Some(r.try_get("", "created_at")?), r.try_get("", "name")?),
                None => (None, None),
            };
            Some((
                rfc3339(at.unwrap_or_else(Utc::now)),
                json!({
                    "donation_id": donation_id, "charity_id": charity_id, "charity_name": charity,
                    "points": points, "account": person(account_id, a),
                }),
            ))
        }
        _ => None,
    })
}
