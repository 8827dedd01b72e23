//! Accounts and what they see of themselves: profile, ledger and connection history.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::ExprTrait;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde::Serialize;

use super::entities::{account, connection, ledger};
use super::{Store, StoreError};

/// A profile as `GET /v1/me` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Profile {
    /// Account id.
    pub account_id: String,
    /// officer or citizen.
    pub role: String,
    /// Display name.
    pub display_name: String,
    /// Points.
    pub points: Points,
    /// Connections recorded.
    pub connections: u64,
    /// Whether the account consents to its connections, trophies and donations being
    /// shared (the public feed, partners).
    pub share_connections: bool,
    /// Trophies held, oldest first.
    pub trophies: Vec<super::trophies::Trophy>,
}

/// Balance, earned and spent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Points {
    /// Earned minus spent.
    pub balance: i64,
    /// Sum of positive entries.
    pub earned: i64,
    /// Sum of negative entries, as a positive number.
    pub spent: i64,
}

/// One ledger entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Entry {
    /// Entry id (also the cursor).
    pub id: String,
    /// connection, redemption, donation or adjustment.
    pub kind: String,
    /// Points added (negative when spent).
    pub delta: i64,
    /// What it belongs to (connection id, voucher code, donation id).
    #[serde(rename = "ref")]
    pub reference: String,
    /// When.
    pub at: String,
}

/// One connection in a history.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ConnectionView {
    /// Connection id.
    pub connection_id: String,
    /// Officer.
    pub officer_id: String,
    /// Citizen.
    pub citizen_id: String,
    /// in_person or virtual.
    pub mode: String,
    /// The zip where it happened (never coordinates).
    pub zip: String,
    /// Points each side earned.
    pub points_awarded: i64,
    /// When.
    pub at: String,
}

pub(super) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Creates the account on first use (an imported officer profile is kept as it is).
    pub async fn ensure_account(
        &self,
        id: &str,
        role: &str,
        display_name: &str,
    ) -> Result<(), StoreError> {
        let _timed = super::timed("ensure_account");
        let now = Utc::now();
        let row = account::ActiveModel {
            id: Set(id.to_owned()),
            role: Set(role.to_owned()),
            display_name: Set(display_name.to_owned()),
            badge: Set(None),
            precinct: Set(None),
            email: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            share_connections: sea_orm::ActiveValue::NotSet,
        };
        account::Entity::insert(row)
            .on_conflict_do_nothing_on([account::Column::Id])
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Changes the display name and/or the consent to share (`None`: kept).
    pub async fn update_profile(
        &self,
        id: &str,
        name: Option<&str>,
        share_connections: Option<bool>,
    ) -> Result<(), StoreError> {
        let _timed = super::timed("update_profile");
        if let Some(a) = account::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
        {
            let mut a: account::ActiveModel = a.into();
            if let Some(name) = name {
                a.display_name = Set(name.to_owned());
            }
            if let Some(share) = share_connections {
                a.share_connections = Set(share);
            }
            a.updated_at = Set(Utc::now());
            a.update(&self.db).await?;
        }
        Ok(())
    }

    /// The profile of an account, if it exists: its statistics come from the projection
    /// (`account_stats`), current up to the last published event.
    pub async fn profile(&self, id: &str) -> Result<Option<Profile>, StoreError> {
        let _timed = super::timed("profile");
        let Some(a) = account::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let st = self.stats(id).await?;
        Ok(Some(Profile {
            account_id: a.id,
            role: a.role,
            display_name: a.display_name,
            points: Points {
                balance: st.earned - st.spent,
                earned: st.earned,
                spent: st.spent,
            },
            connections: u64::try_from(st.connections).unwrap_or(0),
            share_connections: a.share_connections,
            trophies: self.trophies(id).await?,
        }))
    }

    /// Ledger entries newest first, `limit` at most, older than the cursor `before`.
    pub async fn ledger_page(
        &self,
        id: &str,
        limit: u64,
        before: Option<i64>,
    ) -> Result<(Vec<Entry>, Option<String>), StoreError> {
        let _timed = super::timed("ledger_page");
        let mut q = ledger::Entity::find().filter(ledger::Column::AccountId.eq(id));
        if let Some(b) = before {
            q = q.filter(ledger::Column::Id.lt(b));
        }
        let rows = q
            .order_by_desc(ledger::Column::Id)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        let more = rows.len() as u64 > limit;
        let entries: Vec<Entry> = rows
            .into_iter()
            .take(limit as usize)
            .map(|r| Entry {
                id: r.id.to_string(),
                kind: r.kind,
                delta: r.delta,
                reference: r.reference,
                at: rfc3339(r.created_at),
            })
            .collect();
        let next = more.then(|| entries.last().map(|e| e.id.clone())).flatten();
        Ok((entries, next))
    }

    /// Connections of an account newest first; the cursor is `<created_at>|<id>`.
    pub async fn connections_page(
        &self,
        id: &str,
        limit: u64,
        before: Option<(DateTime<Utc>, String)>,
    ) -> Result<(Vec<ConnectionView>, Option<String>), StoreError> {
        let _timed = super::timed("connections_page");
        let mut q = connection::Entity::find().filter(
            connection::Column::OfficerId
                .eq(id)
                .or(connection::Column::CitizenId.eq(id)),
        );
        if let Some((at, cid)) = before {
            q = q.filter(
                connection::Column::CreatedAt
                    .lt(at)
                    .or(connection::Column::CreatedAt
                        .eq(at)
                        .and(connection::Column::Id.lt(cid))),
            );
        }
        let rows = q
            .order_by_desc(connection::Column::CreatedAt)
            .order_by_desc(connection::Column::Id)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        let more = rows.len() as u64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = more
            .then(|| {
                rows.last().map(|r| {
                    format!(
                        "{}|{}",
                        r.created_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                        r.id
                    )
                })
            })
            .flatten();
        let items = rows
            .into_iter()
            .map(|r| ConnectionView {
                connection_id: r.id,
                officer_id: r.officer_id,
                citizen_id: r.citizen_id,
                mode: r.mode,
                zip: r.zip,
                points_awarded: r.points_awarded,
                at: rfc3339(r.created_at),
            })
            .collect();
        Ok((items, next))
    }
}
