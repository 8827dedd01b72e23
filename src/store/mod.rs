//! The durable store (sea-orm): SQLite (WAL) under `./data/` by default, PostgreSQL by URL.
//! Operations are named after the domain; sea-orm models never leave this module.
//!
//! Invariants: the points ledger is append-only and balances are sums over it; an accepted
//! connection, its two ledger entries and its event are written in one transaction, and a
//! unique request id plus a unique (account, kind, ref) per ledger entry make a replayed or
//! racing accept pay at most once.

mod entities;
pub mod feed;
pub mod imports;
mod migration;
pub mod profiles;
pub mod projection;
pub mod publisher;
pub mod reports;
pub mod rewards;
pub mod trophies;
pub mod webhooks;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter, Set, SqlErr, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use self::entities::{connection, ledger};
use self::migration::Migrator;
use crate::events::DomainEvent;

/// Store failures. Callers answer 503 for `Unavailable`; the cause is logged, not returned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("store unavailable: {0}")]
    Unavailable(#[from] DbErr),
    /// The URL names no supported database.
    #[error("unsupported database URL (sqlite:// or postgres://)")]
    UnsupportedUrl,
}

/// Records how long a store operation took, in `store_query_seconds{op}`, when dropped.
pub(crate) struct Timed(&'static str, std::time::Instant);

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!("store_query_seconds", "op" => self.0)
            .record(self.1.elapsed().as_secs_f64());
    }
}

pub(crate) fn timed(op: &'static str) -> Timed {
    Timed(op, std::time::Instant::now())
}

/// Handle to the store.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// The trophy rules events are folded with (the shipped table until set).
    trophy_rules: std::sync::Arc<[crate::config::TrophyRule]>,
    /// A zip's city as shared payloads name it (none until set).
    city_names: CityNames,
}

/// Names a zip's city (`""` when unknown).
pub type CityNames = std::sync::Arc<dyn Fn(&str) -> String + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.db.get_database_backend())
            .finish_non_exhaustive()
    }
}

/// An accepted connection to record.
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// The request it answers (unique: the idempotency key of the accept).
    pub request_id: String,
    /// Officer account.
    pub officer_id: String,
    /// Citizen account.
    pub citizen_id: String,
    /// `in_person` or `virtual`.
    pub mode: String,
    /// The officer's zip at accept time (never coordinates).
    pub zip: String,
    /// Points per side.
    pub per_connection: i64,
    /// Cooldown per officer–citizen pair.
    pub pair_cooldown: Duration,
    /// When it was accepted.
    pub at: DateTime<Utc>,
}

/// What recording a connection produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The connection's id.
    pub connection_id: String,
    /// Points each side earned (0 within the pair cooldown).
    pub points_awarded: i64,
    /// The officer's balance after it.
    pub officer_balance: i64,
    /// The citizen's balance after it.
    pub citizen_balance: i64,
    /// True when the request had been recorded before (a replay): nothing new was written.
    pub replayed: bool,
}

impl Store {
    /// The same store, folding events with these trophy rules.
    pub fn with_trophy_rules(mut self, rules: Vec<crate::config::TrophyRule>) -> Self {
        self.trophy_rules = rules.into();
        self
    }

    /// The same store, naming cities in shared payloads with `names`.
    pub fn with_city_names(mut self, names: CityNames) -> Self {
        self.city_names = names;
        self
    }

    /// The trophy rules events are folded with.
    pub fn trophy_rules(&self) -> &[crate::config::TrophyRule] {
        &self.trophy_rules
    }

    /// Connects; a `sqlite://` file's directory is created, and WAL is switched on.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(StoreError::UnsupportedUrl);
        }
        if sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DbErr::Custom(format!("creating {}: {e}", dir.display())))?;
            }
        }
        let mut opt = ConnectOptions::new(url.to_owned());
        opt.sqlx_logging(false)
            .acquire_timeout(Duration::from_secs(5));
        // SQLite has one writer: one pooled connection serialises transactions instead of
        // failing them with SQLITE_BUSY on lock upgrade.
        if sqlite {
            opt.max_connections(1);
        } else {
            opt.max_connections(16);
        }
        let db = Database::connect(opt).await?;
        if sqlite {
            db.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
                .await?;
        }
        Ok(Self {
            db,
            trophy_rules: crate::config::Settings::defaults().trophies.rules.into(),
            city_names: std::sync::Arc::new(|_: &str| String::new()),
        })
    }

    /// Applies pending migrations (idempotent).
    ///
    /// On PostgreSQL the migration runs under a session advisory lock, so the nodes of a
    /// cluster starting together on a fresh database migrate one after the other (the
    /// others then find nothing pending) instead of racing to create the same tables.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.backend() != DbBackend::Postgres {
            Migrator::up(&self.db, None).await?;
            return Ok(());
        }
        use sea_orm::sqlx;
        let lock_err = |e: sqlx::Error| DbErr::Custom(format!("migration lock: {e}"));
        // Any fixed key: "heyblue migrate".
        const LOCK: i64 = 0x6865_7962_6c75_6501;
        let pool = self.db.get_postgres_connection_pool();
        let mut held = pool.acquire().await.map_err(lock_err)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK)
            .execute(&mut *held)
            .await
            .map_err(lock_err)?;
        let result = Migrator::up(&self.db, None).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK)
            .execute(&mut *held)
            .await;
        result?;
        unlocked.map_err(lock_err)?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await?;
        Ok(())
    }

    /// Whether the connection to the database is encrypted (PostgreSQL over TLS; SQLite is
    /// a local file and says false).
    pub async fn encrypted(&self) -> Result<bool, StoreError> {
        if self.backend() != DbBackend::Postgres {
            return Ok(false);
        }
        use sea_orm::sqlx;
        let pool = self.db.get_postgres_connection_pool();
        let ssl: Option<bool> =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_optional(pool)
                .await
                .map_err(|e| DbErr::Custom(format!("reading pg_stat_ssl: {e}")))?;
        Ok(ssl.unwrap_or(false))
    }

    /// Which database this is.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Closes the pool, flushing SQLite's WAL.
    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await?;
        Ok(())
    }

    /// An account's balance: the sum of its ledger entries.
    pub async fn balance(&self, account: &str) -> Result<i64, StoreError> {
        let _timed = timed("balance");
        balance_in(&self.db, account).await
    }

    /// Records an accepted connection exactly once: the connection, both ledger entries
    /// and the `connection_established` event in one transaction. A replay of the same
    /// request returns what was recorded the first time and writes nothing.
    pub async fn record_accepted(&self, c: &NewConnection) -> Result<Recorded, StoreError> {
        let _timed = timed("record_accepted");
        let mut last_err = None;
        // A racing writer with the same request id makes our insert fail on the unique
        // key; the retry then finds its row.
        for _ in 0..3 {
            match self.try_record(c).await {
                Ok(r) => return Ok(r),
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    last_err = Some(e)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err
            .map(StoreError::from)
            .unwrap_or(StoreError::UnsupportedUrl))
    }

    async fn try_record(&self, c: &NewConnection) -> Result<Recorded, DbErr> {
        let txn = self.db.begin().await?;
        if let Some(existing) = connection::Entity::find()
            .filter(connection::Column::RequestId.eq(&c.request_id))
            .one(&txn)
            .await?
        {
            let r = Recorded {
                officer_balance: balance_in(&txn, &existing.officer_id)
                    .await
                    .map_err(db_err)?,
                citizen_balance: balance_in(&txn, &existing.citizen_id)
                    .await
                    .map_err(db_err)?,
                connection_id: existing.id,
                points_awarded: existing.points_awarded,
                replayed: true,
            };
            txn.commit().await?;
            return Ok(r);
        }
        let since =
            c.at - chrono::Duration::from_std(c.pair_cooldown).unwrap_or(chrono::Duration::MAX);
        let paid_recently = connection::Entity::find()
            .filter(connection::Column::OfficerId.eq(&c.officer_id))
            .filter(connection::Column::CitizenId.eq(&c.citizen_id))
            .filter(connection::Column::PointsAwarded.gt(0))
            .filter(connection::Column::CreatedAt.gt(since))
            .count(&txn)
            .await?
            > 0;
        let points = if paid_recently {
            0
        } else {
            Ord::max(c.per_connection, 0)
        };
        let id = uuid::Uuid::new_v4().to_string();
        connection::ActiveModel {
            id: Set(id.clone()),
            request_id: Set(c.request_id.clone()),
            officer_id: Set(c.officer_id.clone()),
            citizen_id: Set(c.citizen_id.clone()),
            mode: Set(c.mode.clone()),
            zip: Set(c.zip.clone()),
            points_awarded: Set(points),
            created_at: Set(c.at),
        }
        .insert(&txn)
        .await?;
        if points > 0 {
            for account in [&c.officer_id, &c.citizen_id] {
                ledger::ActiveModel {
                    account_id: Set(account.clone()),
                    kind: Set("connection".into()),
                    delta: Set(points),
                    reference: Set(id.clone()),
                    created_at: Set(c.at),
                    ..Default::default()
                }
                .insert(&txn)
                .await?;
            }
        }
        let mut events = vec![DomainEvent::ConnectionEstablished {
            connection_id: id.clone(),
            request_id: c.request_id.clone(),
            officer_id: c.officer_id.clone(),
            citizen_id: c.citizen_id.clone(),
            mode: c.mode.clone(),
            zip: c.zip.clone(),
            points_awarded: points,
        }];
        if points > 0 {
            for account in [&c.officer_id, &c.citizen_id] {
                events.push(DomainEvent::PointsAwarded {
                    account_id: account.clone(),
                    delta: points,
                    reference: id.clone(),
                    kind: "connection".into(),
                });
            }
        }
        append_events(&txn, &events, c.at).await?;
        let r = Recorded {
            officer_balance: balance_in(&txn, &c.officer_id).await.map_err(db_err)?,
            citizen_balance: balance_in(&txn, &c.citizen_id).await.map_err(db_err)?,
            connection_id: id,
            points_awarded: points,
            replayed: false,
        };
        txn.commit().await?;
        Ok(r)
    }

    /// Connections recorded for a request id (tests and audits: never more than one).
    pub async fn connections_for_request(&self, request_id: &str) -> Result<u64, StoreError> {
        let _timed = timed("connections_for_request");
        Ok(connection::Entity::find()
            .filter(connection::Column::RequestId.eq(request_id))
            .count(&self.db)
            .await?)
    }

    /// Events of a kind in the outbox (tests and the publisher).
    pub async fn events_of_kind(&self, kind: &str) -> Result<u64, StoreError> {
        let _timed = timed("events_of_kind");
        let q = Query::select()
            .expr_as(Func::count(Expr::col("id")), "n")
            .from("events")
            .and_where(Expr::col("kind").eq(kind))
            .to_owned();
        let row = self.db.query_one(&q).await?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0) as u64)
    }
}

fn db_err(e: StoreError) -> DbErr {
    match e {
        StoreError::Unavailable(e) => e,
        other => DbErr::Custom(other.to_string()),
    }
}

/// Appends `events` to the outbox in `txn` (published once it commits).
async fn append_events<C: ConnectionTrait>(
    txn: &C,
    events: &[DomainEvent],
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    let mut insert = Query::insert();
    insert
        .into_table("events")
        .columns(["kind", "payload", "created_at"]);
    for e in events {
        let (kind, payload) = e.to_row();
        insert.values_panic([kind.into(), payload.into(), at.into()]);
    }
    txn.execute(&insert).await?;
    Ok(())
}

/// An account's balance: the sum of its ledger deltas (the truth the projection follows).
async fn balance_in(db: &impl ConnectionTrait, account: &str) -> Result<i64, StoreError> {
    let mut q = Query::select();
    q.expr_as(
        Func::cast_as(
            Func::coalesce([Expr::from(Func::sum(Expr::col("delta"))), Expr::val(0i64)]),
            "BIGINT",
        ),
        "total",
    )
    .from("ledger")
    .and_where(Expr::col("account_id").eq(account));
    let row = db.query_one(&q).await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "total"))
        .transpose()?
        .unwrap_or(0))
}

impl Store {
    /// Committed events not yet published, oldest first: (id, kind, payload JSON).
    pub async fn unpublished_events(
        &self,
        limit: u64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let _timed = timed("unpublished_events");
        let q = Query::select()
            .columns(["id", "kind", "payload"])
            .from("events")
            .and_where(Expr::col("published_at").is_null())
            .order_by("id", sea_orm::sea_query::Order::Asc)
            .limit(limit)
            .to_owned();
        let rows = self.db.query_all(&q).await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get("", "id")?,
                    r.try_get("", "kind")?,
                    r.try_get("", "payload")?,
                ))
            })
            .collect::<Result<_, DbErr>>()
            .map_err(StoreError::from)
    }
}
