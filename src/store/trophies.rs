//! Trophies: awarded by the rules of `[trophies]` from what the store records — connections
//! and donations — never from counters an event carries. An account's measures are read
//! from its rows, so an event delivered twice, late or out of order finds the same answer,
//! and the `(account, trophy)` key of `trophies` makes the award itself happen once. The
//! award and its `trophy_awarded` outbox event are written in the transaction that folds
//! the event (the publisher's, or the cluster stream consumer's), so an award is never
//! lost or told twice. A replay evaluates every account against the rules of now.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Order, Query, SelectStatement};
use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Store, StoreError};
use crate::config::{TrophyMeasure, TrophyRule};
use crate::events::DomainEvent;

/// A trophy an account holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Trophy {
    /// The rule's id.
    pub trophy_id: String,
    /// Its name when it was awarded.
    pub name: String,
    /// When (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub awarded_at: DateTime<Utc>,
}

/// Accounts a replay evaluates per transaction.
const REPLAY_PAGE: u64 = 500;

/// The accounts whose trophies `event` can change, and whether it is a connection (else a
/// donation): only the measures of its kind can have changed.
pub fn touched(event: &DomainEvent) -> impl Iterator<Item = (&str, bool)> {
    let (a, b, connection) = match event {
        DomainEvent::ConnectionEstablished {
            officer_id,
            citizen_id,
            ..
        } => (Some(officer_id), Some(citizen_id), true),
        DomainEvent::DonationMade { account_id, .. } => (Some(account_id), None, false),
        _ => (None, None, false),
    };
    a.into_iter()
        .chain(b)
        .map(move |id| (id.as_str(), connection))
}

/// Whether `m` is counted from connections (else from donations).
fn of_connections(m: TrophyMeasure) -> bool {
    matches!(
        m,
        TrophyMeasure::Connections
            | TrophyMeasure::DistinctCounterparts
            | TrophyMeasure::DistinctZips
    )
}

impl Store {
    /// The trophies an account holds, oldest first.
    pub async fn trophies(&self, account: &str) -> Result<Vec<Trophy>, StoreError> {
        let _timed = super::timed("trophies");
        let q = Query::select()
            .columns(["trophy_id", "name", "awarded_at"])
            .from("trophies")
            .and_where(Expr::col("account_id").eq(account))
            .order_by("awarded_at", Order::Asc)
            .order_by("trophy_id", Order::Asc)
            .to_owned();
        self.db
            .query_all(&q)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Trophy {
                    trophy_id: r.try_get("", "trophy_id")?,
                    name: r.try_get("", "name")?,
                    awarded_at: r.try_get("", "awarded_at")?,
                })
            })
            .collect::<Result<_, DbErr>>()
            .map_err(Into::into)
    }

    /// Evaluates every account that has a connection or a donation against `rules`, a page
    /// of accounts per transaction; awards what is due and not held (each with its
    /// `trophy_awarded` event). Returns (accounts evaluated, trophies awarded).
    pub async fn replay_trophies(&self, rules: &[TrophyRule]) -> Result<(u64, u64), StoreError> {
        let _timed = super::timed("replay_trophies");
        let (mut accounts, mut awarded) = (0, 0);
        let mut after = String::new();
        loop {
            let page = accounts_after(&self.db, &after, REPLAY_PAGE).await?;
            let Some(last) = page.last() else {
                return Ok((accounts, awarded));
            };
            after = last.clone();
            let txn = self.db.begin().await?;
            let mut events = Vec::new();
            for a in &page {
                events.extend(award(&txn, a, rules, |_| true, Utc::now()).await?);
            }
            super::append_events(&txn, &events, Utc::now()).await?;
            txn.commit().await?;
            accounts += page.len() as u64;
            awarded += events.len() as u64;
        }
    }
}

/// Awards, in `txn`, what `rules` give the accounts `events` touch, and appends a
/// `trophy_awarded` event per award to the outbox. Accounts are taken in order, so two
/// transactions awarding to the same accounts lock them in the same order.
pub(super) async fn award_touched<'a, C: ConnectionTrait>(
    txn: &C,
    events: impl IntoIterator<Item = &'a DomainEvent>,
    rules: &[TrophyRule],
) -> Result<usize, StoreError> {
    if rules.is_empty() {
        return Ok(0);
    }
    // Per account (in order): whether a connection, a donation touched it.
    let mut accounts: std::collections::BTreeMap<&str, (bool, bool)> = Default::default();
    for (a, connection) in events.into_iter().flat_map(touched) {
        let kinds = accounts.entry(a).or_default();
        if connection {
            kinds.0 = true;
        } else {
            kinds.1 = true;
        }
    }
    let now = Utc::now();
    let mut out = Vec::new();
    for (a, (connections, donations)) in accounts {
        let changed = |m: TrophyMeasure| {
            if of_connections(m) {
                connections
            } else {
                donations
            }
        };
        out.extend(award(txn, a, rules, changed, now).await?);
    }
    super::append_events(txn, &out, now).await?;
    Ok(out.len())
}

/// Awards `account` what `rules` give it and it does not hold yet, reading only the
/// measures `changed` says may have moved; the events of the new awards.
async fn award<C: ConnectionTrait>(
    txn: &C,
    account: &str,
    rules: &[TrophyRule],
    changed: impl Fn(TrophyMeasure) -> bool,
    at: DateTime<Utc>,
) -> Result<Vec<DomainEvent>, StoreError> {
    if !rules.iter().any(|r| changed(r.measure)) {
        return Ok(Vec::new());
    }
    let held: HashSet<String> = txn
        .query_all(
            &Query::select()
                .column("trophy_id")
                .from("trophies")
                .and_where(Expr::col("account_id").eq(account))
                .to_owned(),
        )
        .await?
        .into_iter()
        .map(|r| r.try_get("", "trophy_id"))
        .collect::<Result<_, DbErr>>()?;
    let pending: Vec<&TrophyRule> = rules
        .iter()
        .filter(|r| changed(r.measure) && !held.contains(&r.id))
        .collect();
    // Each measure is read once, counting no further than its highest pending rule needs.
    let mut needed: HashMap<TrophyMeasure, i64> = HashMap::new();
    for r in &pending {
        let n = needed.entry(r.measure).or_default();
        *n = Ord::max(*n, r.at_least);
    }
    let mut value = HashMap::with_capacity(needed.len());
    for (m, cap) in needed {
        value.insert(m, measure(txn, account, m, cap).await?);
    }
    let mut events = Vec::new();
    for r in pending {
        if value[&r.measure] < r.at_least {
            continue;
        }
        let insert = Query::insert()
            .into_table("trophies")
            .columns(["account_id", "trophy_id", "name", "awarded_at"])
            .values_panic([
                account.into(),
                r.id.clone().into(),
                r.name.clone().into(),
                at.into(),
            ])
            .on_conflict(
                OnConflict::columns(["account_id", "trophy_id"])
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        if txn.execute(&insert).await?.rows_affected() == 1 {
            metrics::counter!("trophies_awarded_total", "trophy" => r.id.clone()).increment(1);
            events.push(DomainEvent::TrophyAwarded {
                account_id: account.to_owned(),
                trophy_id: r.id.clone(),
                name: r.name.clone(),
                awarded_at: at,
            });
        }
    }
    Ok(events)
}

/// `account`'s value of `m`, counted up to `cap` at most (what the rules need to know).
async fn measure<C: ConnectionTrait>(
    txn: &C,
    account: &str,
    m: TrophyMeasure,
    cap: i64,
) -> Result<i64, StoreError> {
    let cap = Ord::max(cap, 1) as u64;
    // Rows of connections on either side: (the column to read, the side's column).
    let sides = |read: &'static str, distinct: bool| {
        [("officer_id", "citizen_id"), ("citizen_id", "officer_id")].map(|(side, other)| {
            let col = match read {
                "other" => other,
                c => c,
            };
            let mut q = Query::select();
            q.column(col)
                .from("connections")
                .and_where(Expr::col(side).eq(account))
                .limit(cap);
            if distinct {
                q.distinct();
            }
            (q.to_owned(), col)
        })
    };
    Ok(match m {
        TrophyMeasure::Connections => {
            let mut n = 0;
            for (q, _) in sides("id", false) {
                n += txn.query_all(&q).await?.len() as i64;
            }
            n
        }
        TrophyMeasure::DistinctCounterparts => distinct(txn, sides("other", true)).await?,
        TrophyMeasure::DistinctZips => distinct(txn, sides("zip", true)).await?,
        TrophyMeasure::Donations => txn
            .query_all(
                &Query::select()
                    .column("id")
                    .from("donations")
                    .and_where(Expr::col("account_id").eq(account))
                    .limit(cap)
                    .to_owned(),
            )
            .await?
            .len() as i64,
        TrophyMeasure::PointsDonated => {
            let q = Query::select()
                .expr_as(
                    Expr::cust("CAST(COALESCE(SUM(points), 0) AS BIGINT)"),
                    "total",
                )
                .from("donations")
                .and_where(Expr::col("account_id").eq(account))
                .to_owned();
            match txn.query_one(&q).await? {
                Some(r) => r.try_get("", "total")?,
                None => 0,
            }
        }
    })
}

/// The number of distinct values the queries read together.
async fn distinct<C: ConnectionTrait>(
    txn: &C,
    queries: [(SelectStatement, &'static str); 2],
) -> Result<i64, StoreError> {
    let mut seen = HashSet::new();
    for (q, col) in queries {
        for r in txn.query_all(&q).await? {
            seen.insert(r.try_get::<String>("", col)?);
        }
    }
    Ok(seen.len() as i64)
}

/// Up to `limit` accounts after `after` (in id order) that have a connection or a donation.
async fn accounts_after<C: ConnectionTrait>(
    db: &C,
    after: &str,
    limit: u64,
) -> Result<Vec<String>, StoreError> {
    let mut ids = BTreeSet::new();
    for (table, col) in [
        ("connections", "officer_id"),
        ("connections", "citizen_id"),
        ("donations", "account_id"),
    ] {
        let q = Query::select()
            .distinct()
            .expr_as(Expr::col(col), "account")
            .from(table)
            .and_where(Expr::col(col).gt(after))
            .order_by(col, Order::Asc)
            .limit(limit)
            .to_owned();
        for r in db.query_all(&q).await? {
            ids.insert(r.try_get::<String>("", "account")?);
        }
    }
    Ok(ids.into_iter().take(limit as usize).collect())
}
