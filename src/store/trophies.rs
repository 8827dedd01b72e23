//! Trophies: awarded by the rules of `[trophies]` from what the store holds — an account's
//! connections as the projection counts them (each event folded once, in this same
//! transaction, just before), its distinct counterparts and zips and its donations read
//! from the recorded rows — never from what one event says. So an event delivered twice,
//! late or out of order finds the same answer, and the `(account, trophy)` key of
//! `trophies` makes the award itself happen once. The award and its `trophy_awarded`
//! outbox event are written in the transaction that folds the event (the publisher's, or
//! the cluster stream consumer's), so an award is never lost or told twice. A replay
//! evaluates every account against the rules of now.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Order, Query};
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
            let ids: Vec<&str> = page.iter().map(String::as_str).collect();
            let known = known(&txn, &ids).await?;
            for a in &page {
                events.extend(award(&txn, a, &known, rules, |_| true, Utc::now()).await?);
            }
            super::append_events(&txn, &events, Utc::now()).await?;
            txn.commit().await?;
            accounts += page.len() as u64;
            awarded += events.len() as u64;
        }
    }
}

/// Adds the connections of `events` to their accounts' counterpart and zip sets (whatever
/// the rules: a rule set later and replayed counts them), then awards, in `txn`, what
/// `rules` give the accounts `events` touch, and appends a `trophy_awarded` event per award
/// to the outbox. Accounts are taken in order, so two transactions awarding to the same
/// accounts lock them in the same order.
pub(super) async fn award_touched<'a, C: ConnectionTrait>(
    txn: &C,
    events: impl IntoIterator<Item = &'a DomainEvent>,
    rules: &[TrophyRule],
) -> Result<usize, StoreError> {
    let events: Vec<&DomainEvent> = events.into_iter().collect();
    add_to_sets(txn, &events).await?;
    if rules.is_empty() {
        return Ok(0);
    }
    // Per account (in order): whether a connection, a donation touched it.
    let mut accounts: std::collections::BTreeMap<&str, (bool, bool)> = Default::default();
    for (a, connection) in events.iter().copied().flat_map(touched) {
        let kinds = accounts.entry(a).or_default();
        if connection {
            kinds.0 = true;
        } else {
            kinds.1 = true;
        }
    }
    let now = Utc::now();
    let ids: Vec<&str> = accounts.keys().copied().collect();
    let known = known(txn, &ids).await?;
    let mut out = Vec::new();
    for (a, (connections, donations)) in accounts {
        let changed = |m: TrophyMeasure| {
            if of_connections(m) {
                connections
            } else {
                donations
            }
        };
        out.extend(award(txn, a, &known, rules, changed, now).await?);
    }
    super::append_events(txn, &out, now).await?;
    Ok(out.len())
}

/// What is known of some accounts before any measure is read: the trophies each holds and
/// its connections as the projection counts them (folded exactly once, in this same
/// transaction before the awards).
#[derive(Default)]
struct Known {
    held: HashMap<String, HashSet<String>>,
    connections: HashMap<String, i64>,
}

/// Accounts read per query of [`known`].
const KNOWN_CHUNK: usize = 500;

async fn known<C: ConnectionTrait>(txn: &C, accounts: &[&str]) -> Result<Known, StoreError> {
    let mut k = Known::default();
    for chunk in accounts.chunks(KNOWN_CHUNK) {
        let ids: Vec<&str> = chunk.to_vec();
        let held = Query::select()
            .columns(["account_id", "trophy_id"])
            .from("trophies")
            .and_where(Expr::col("account_id").is_in(ids.clone()))
            .to_owned();
        for r in txn.query_all(&held).await? {
            k.held
                .entry(r.try_get("", "account_id")?)
                .or_default()
                .insert(r.try_get("", "trophy_id")?);
        }
        let stats = Query::select()
            .columns(["account_id", "connections"])
            .from("account_stats")
            .and_where(Expr::col("account_id").is_in(ids))
            .to_owned();
        for r in txn.query_all(&stats).await? {
            k.connections
                .insert(r.try_get("", "account_id")?, r.try_get("", "connections")?);
        }
    }
    Ok(k)
}

/// Awards `account` what `rules` give it and it does not hold yet, reading only the
/// measures `changed` says may have moved; the events of the new awards.
async fn award<C: ConnectionTrait>(
    txn: &C,
    account: &str,
    known: &Known,
    rules: &[TrophyRule],
    changed: impl Fn(TrophyMeasure) -> bool,
    at: DateTime<Utc>,
) -> Result<Vec<DomainEvent>, StoreError> {
    let none = HashSet::new();
    let held = known.held.get(account).unwrap_or(&none);
    let pending: Vec<&TrophyRule> = rules
        .iter()
        .filter(|r| changed(r.measure) && !held.contains(&r.id))
        .collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let connections = known.connections.get(account).copied().unwrap_or(0);
    // Each measure is read once, counting no further than its highest pending rule needs;
    // distinct counterparts or zips are never more than the connections, so they are not
    // read while the connections are below the lowest pending threshold.
    let mut needed: HashMap<TrophyMeasure, (i64, i64)> = HashMap::new();
    for r in &pending {
        let (lo, hi) = needed.entry(r.measure).or_insert((i64::MAX, 0));
        *lo = Ord::min(*lo, r.at_least);
        *hi = Ord::max(*hi, r.at_least);
    }
    let mut value = HashMap::with_capacity(needed.len());
    for (m, (lo, hi)) in needed {
        let v = match m {
            TrophyMeasure::Connections => connections,
            TrophyMeasure::DistinctCounterparts | TrophyMeasure::DistinctZips
                if connections < lo =>
            {
                0
            }
            _ => measure(txn, account, m, hi).await?,
        };
        value.insert(m, v);
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

/// Rows a set insert writes at most.
const SET_CHUNK: usize = 500;

/// Adds each connection's other side and zip to both accounts' sets (`account_counterparts`,
/// `account_zips`): a member already there is kept, so an event folded twice adds nothing.
async fn add_to_sets<C: ConnectionTrait>(
    txn: &C,
    events: &[&DomainEvent],
) -> Result<(), StoreError> {
    let mut others = BTreeSet::new();
    let mut zips = BTreeSet::new();
    for e in events {
        if let DomainEvent::ConnectionEstablished {
            officer_id,
            citizen_id,
            zip,
            ..
        } = e
        {
            others.insert((officer_id.as_str(), citizen_id.as_str()));
            others.insert((citizen_id.as_str(), officer_id.as_str()));
            zips.insert((officer_id.as_str(), zip.as_str()));
            zips.insert((citizen_id.as_str(), zip.as_str()));
        }
    }
    for (table, col, rows) in [
        ("account_counterparts", "other_id", others),
        ("account_zips", "zip", zips),
    ] {
        let rows: Vec<_> = rows.into_iter().collect();
        for chunk in rows.chunks(SET_CHUNK) {
            let mut insert = Query::insert();
            insert.into_table(table).columns(["account_id", col]);
            for (a, v) in chunk {
                insert.values_panic([(*a).into(), (*v).into()]);
            }
            insert.on_conflict(
                OnConflict::columns(["account_id", col])
                    .do_nothing()
                    .to_owned(),
            );
            txn.execute(&insert).await?;
        }
    }
    Ok(())
}

/// `account`'s value of `m`, counted up to `cap` at most (what the rules need to know).
async fn measure<C: ConnectionTrait>(
    txn: &C,
    account: &str,
    m: TrophyMeasure,
    cap: i64,
) -> Result<i64, StoreError> {
    let cap = Ord::max(cap, 1) as u64;
    // A set's members, `cap` at most: a few rows read, however many connections made it.
    let members = |table: &'static str| {
        Query::select()
            .column("account_id")
            .from(table)
            .and_where(Expr::col("account_id").eq(account))
            .limit(cap)
            .to_owned()
    };
    Ok(match m {
        TrophyMeasure::Connections => unreachable!("award reads connections from the projection"),
        TrophyMeasure::DistinctCounterparts => {
            txn.query_all(&members("account_counterparts")).await?.len() as i64
        }
        TrophyMeasure::DistinctZips => txn.query_all(&members("account_zips")).await?.len() as i64,
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
