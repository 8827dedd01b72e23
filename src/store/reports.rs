//! Reports computed in the database: accepted connections grouped by day, zip, state or
//! officer (or trophies awarded, by trophy) over a date range, with the points they awarded — one SQL GROUP BY that runs
//! on SQLite and PostgreSQL (state: grouped by zip in SQL, folded by the caller's zip →
//! state table, since the zip table ships in the binary rather than the database).

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveTime};
use sea_orm::sea_query::{Expr, ExprTrait, Func, Order, Query};
use sea_orm::{ConnectionTrait, DbBackend};
use serde::Serialize;

use super::{Store, StoreError};

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// UTC day, `YYYY-MM-DD`.
    Day,
    /// Zip code.
    Zip,
    /// Two-letter state.
    State,
    /// Officer account id.
    Officer,
    /// Trophy id: trophies awarded (`awarded`) rather than connections.
    Trophy,
}

impl GroupBy {
    /// From the query parameter.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "day" => GroupBy::Day,
            "zip" => GroupBy::Zip,
            "state" => GroupBy::State,
            "officer" => GroupBy::Officer,
            "trophy" => GroupBy::Trophy,
            _ => return None,
        })
    }
}

/// One report row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReportRow {
    /// The group.
    pub key: String,
    /// Connections recorded.
    pub connections: i64,
    /// Points each side earned from them (the officer's and the citizen's are equal).
    pub points: i64,
    /// `group_by=trophy` only: trophies awarded (`connections` and `points` are 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awarded: Option<i64>,
}

impl Store {
    /// Connections accepted on days `from..=to` (UTC), grouped, ordered by key; at most
    /// `limit` rows (the second value says whether more were cut).
    pub async fn connections_report(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        group: GroupBy,
        state_of: impl Fn(&str) -> Option<String>,
        limit: u64,
    ) -> Result<(Vec<ReportRow>, bool), StoreError> {
        let _timed = super::timed("connections_report");
        let start = from.and_time(NaiveTime::MIN).and_utc();
        let end = to
            .succ_opt()
            .unwrap_or(NaiveDate::MAX)
            .and_time(NaiveTime::MIN)
            .and_utc();
        if group == GroupBy::Trophy {
            return self.trophies_report(start, end, limit).await;
        }
        let key = match (group, self.backend()) {
            (GroupBy::Day, DbBackend::Postgres) => {
                "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            }
            // SQLite keeps times as UTC text that starts with the date.
            (GroupBy::Day, _) => "substr(created_at, 1, 10)",
            (GroupBy::Zip | GroupBy::State, _) => "zip",
            (GroupBy::Officer, _) => "officer_id",
            (GroupBy::Trophy, _) => unreachable!("answered above"),
        };
        let mut q = Query::select();
        q.expr_as(Expr::cust(key), "key")
            .expr_as(Func::count(Expr::col("id")), "n")
            .expr_as(
                Func::cast_as(
                    Func::coalesce([
                        Expr::from(Func::sum(Expr::col("points_awarded"))),
                        Expr::val(0i64),
                    ]),
                    "BIGINT",
                ),
                "points",
            )
            .from("connections")
            .and_where(Expr::col("created_at").gte(start))
            .and_where(Expr::col("created_at").lt(end))
            .add_group_by([Expr::cust(key)])
            .order_by_expr(Expr::cust(key), Order::Asc);
        // State rows are folded from zip rows, so only the others are cut in SQL.
        if group != GroupBy::State {
            q.limit(limit + 1);
        }
        let rows = self.db.query_all(&q).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(ReportRow {
                key: r.try_get("", "key")?,
                connections: r.try_get("", "n")?,
                points: r.try_get("", "points")?,
                awarded: None,
            });
        }
        if group == GroupBy::State {
            let mut by_state: BTreeMap<String, ReportRow> = BTreeMap::new();
            for r in out {
                let state = state_of(&r.key).unwrap_or_else(|| "unknown".into());
                let e = by_state.entry(state.clone()).or_insert(ReportRow {
                    key: state,
                    connections: 0,
                    points: 0,
                    awarded: None,
                });
                e.connections += r.connections;
                e.points += r.points;
            }
            out = by_state.into_values().collect();
        }
        let truncated = out.len() as u64 > limit;
        out.truncate(limit as usize);
        Ok((out, truncated))
    }

    /// Trophies awarded in `start..end`, per trophy id, ordered by id.
    async fn trophies_report(
        &self,
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        limit: u64,
    ) -> Result<(Vec<ReportRow>, bool), StoreError> {
        let q = Query::select()
            .expr_as(Expr::col("trophy_id"), "key")
            .expr_as(Func::count(Expr::col("account_id")), "n")
            .from("trophies")
            .and_where(Expr::col("awarded_at").gte(start))
            .and_where(Expr::col("awarded_at").lt(end))
            .group_by_col("trophy_id")
            .order_by("trophy_id", Order::Asc)
            .limit(limit + 1)
            .to_owned();
        let mut out = Vec::new();
        for r in self.db.query_all(&q).await? {
            out.push(ReportRow {
                key: r.try_get("", "key")?,
                connections: 0,
                points: 0,
                awarded: Some(r.try_get("", "n")?),
            });
        }
        let truncated = out.len() as u64 > limit;
        out.truncate(limit as usize);
        Ok((out, truncated))
    }
}
