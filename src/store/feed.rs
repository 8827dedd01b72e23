//! The public feed: recent shareable connections (both sides consented) and trophies (their
//! account consented), newest first, for the apps' animations. What it carries is display
//! names, account ids of consenting accounts, zip, city and time — the store keeps no
//! position, so none can leak.
//!
//! Order: by time, then kind (`trophy` before `connection`), then key (a connection's id;
//! a trophy's account and trophy id), all descending. The cursor is the last item's
//! `<time>|<kind>|<key>`, and each table is read strictly after it in that order, so pages
//! neither repeat nor skip items that share a time.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Condition, Expr, ExprTrait, Order, Query, SelectStatement};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Store, StoreError};

/// A consenting account as the feed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Person {
    /// Account id.
    pub account_id: String,
    /// Display name.
    pub display_name: String,
}

/// One item of the feed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedItem {
    /// A connection both sides agreed to share.
    Connection {
        /// When it was recorded (RFC 3339).
        at: String,
        /// The connection.
        connection_id: String,
        /// `in_person` or `virtual`.
        mode: String,
        /// The officer's zip when it was made.
        zip: String,
        /// That zip's city and state (`""` for a zip the table does not know).
        city: String,
        /// The officer.
        officer: Person,
        /// The citizen.
        citizen: Person,
    },
    /// A trophy its account agreed to share.
    Trophy {
        /// When it was awarded (RFC 3339).
        at: String,
        /// The trophy.
        trophy_id: String,
        /// Its name.
        name: String,
        /// Who earned it.
        account: Person,
    },
}

/// Where a feed page starts: strictly after this item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedCursor {
    /// After the connection recorded at `.0` with id `.1`.
    Connection(DateTime<Utc>, String),
    /// After account `.1`'s trophy `.2`, awarded at `.0`.
    Trophy(DateTime<Utc>, String, String),
}

impl FeedCursor {
    /// Parses `<time>|connection|<id>` or `<time>|trophy|<trophy id>|<account id>`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        let at = DateTime::parse_from_rfc3339(parts.next()?)
            .ok()?
            .with_timezone(&Utc);
        match (parts.next()?, parts.next()?) {
            ("connection", id) => Some(Self::Connection(at, id.to_owned())),
            ("trophy", rest) => {
                let (trophy, account) = rest.split_once('|')?;
                Some(Self::Trophy(at, account.to_owned(), trophy.to_owned()))
            }
            _ => None,
        }
    }

    fn render(&self) -> String {
        let t = |at: &DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        match self {
            Self::Connection(at, id) => format!("{}|connection|{id}", t(at)),
            Self::Trophy(at, account, trophy) => format!("{}|trophy|{trophy}|{account}", t(at)),
        }
    }

    /// The merge order's key, largest first: (time, kind, key, key).
    fn key(&self) -> (DateTime<Utc>, u8, &str, &str) {
        match self {
            Self::Connection(at, id) => (*at, 0, id, ""),
            Self::Trophy(at, account, trophy) => (*at, 1, account, trophy),
        }
    }
}

impl Store {
    /// Up to `limit` feed items after `before`, newest first, and the cursor of the next
    /// page (`None` on the last).
    pub async fn feed_page(
        &self,
        limit: u64,
        before: Option<&FeedCursor>,
    ) -> Result<(Vec<FeedItem>, Option<String>), StoreError> {
        let city = &*self.city_names;
        let _timed = super::timed("feed_page");
        let mut items: Vec<(FeedCursor, FeedItem)> = Vec::new();
        for r in self.db.query_all(&connections(limit + 1, before)).await? {
            let (at, id): (DateTime<Utc>, String) =
                (r.try_get("", "created_at")?, r.try_get("", "id")?);
            let zip: String = r.try_get("", "zip")?;
            items.push((
                FeedCursor::Connection(at, id.clone()),
                FeedItem::Connection {
                    at: super::profiles::rfc3339(at),
                    connection_id: id,
                    mode: r.try_get("", "mode")?,
                    city: city(&zip),
                    zip,
                    officer: Person {
                        account_id: r.try_get("", "officer_id")?,
                        display_name: r.try_get("", "officer_name")?,
                    },
                    citizen: Person {
                        account_id: r.try_get("", "citizen_id")?,
                        display_name: r.try_get("", "citizen_name")?,
                    },
                },
            ));
        }
        for r in self.db.query_all(&trophies(limit + 1, before)).await? {
            let at: DateTime<Utc> = r.try_get("", "awarded_at")?;
            let (account, trophy): (String, String) =
                (r.try_get("", "account_id")?, r.try_get("", "trophy_id")?);
            items.push((
                FeedCursor::Trophy(at, account.clone(), trophy.clone()),
                FeedItem::Trophy {
                    at: super::profiles::rfc3339(at),
                    trophy_id: trophy,
                    name: r.try_get("", "name")?,
                    account: Person {
                        account_id: account,
                        display_name: r.try_get("", "display_name")?,
                    },
                },
            ));
        }
        items.sort_by(|a, b| b.0.key().cmp(&a.0.key()));
        let more = items.len() as u64 > limit;
        items.truncate(limit as usize);
        let next = more
            .then(|| items.last().map(|(c, _)| c.render()))
            .flatten();
        Ok((items.into_iter().map(|(_, i)| i).collect(), next))
    }
}

/// Connections both sides consented to share, after `before`, newest first.
fn connections(limit: u64, before: Option<&FeedCursor>) -> SelectStatement {
    let (o, z) = (Alias::new("o"), Alias::new("z"));
    let mut q = Query::select();
    q.columns(
        [
            "id",
            "mode",
            "zip",
            "created_at",
            "officer_id",
            "citizen_id",
        ]
        .map(|c| ("connections", c)),
    )
    .expr_as(Expr::col((o.clone(), "display_name")), "officer_name")
    .expr_as(Expr::col((z.clone(), "display_name")), "citizen_name")
    .from("connections")
    .join_as(
        sea_orm::JoinType::InnerJoin,
        "accounts",
        o.clone(),
        Expr::col((o.clone(), "id")).equals(("connections", "officer_id")),
    )
    .join_as(
        sea_orm::JoinType::InnerJoin,
        "accounts",
        z.clone(),
        Expr::col((z.clone(), "id")).equals(("connections", "citizen_id")),
    )
    .and_where(Expr::col((o, "share_connections")).eq(true))
    .and_where(Expr::col((z, "share_connections")).eq(true))
    .order_by(("connections", "created_at"), Order::Desc)
    .order_by(("connections", "id"), Order::Desc)
    .limit(limit);
    let at = Expr::col(("connections", "created_at"));
    match before {
        None => {}
        // Every connection of the trophy's time comes after it.
        Some(FeedCursor::Trophy(t, ..)) => {
            q.and_where(at.lte(*t));
        }
        Some(FeedCursor::Connection(t, id)) => {
            q.cond_where(
                Condition::any().add(at.clone().lt(*t)).add(
                    Condition::all()
                        .add(at.eq(*t))
                        .add(Expr::col(("connections", "id")).lt(id.as_str())),
                ),
            );
        }
    }
    q.to_owned()
}

/// Trophies whose account consented to share, after `before`, newest first.
fn trophies(limit: u64, before: Option<&FeedCursor>) -> SelectStatement {
    let mut q = Query::select();
    q.columns(["account_id", "trophy_id", "name", "awarded_at"].map(|c| ("trophies", c)))
        .column(("accounts", "display_name"))
        .from("trophies")
        .inner_join(
            "accounts",
            Expr::col(("accounts", "id")).equals(("trophies", "account_id")),
        )
        .and_where(Expr::col(("accounts", "share_connections")).eq(true))
        .order_by(("trophies", "awarded_at"), Order::Desc)
        .order_by(("trophies", "account_id"), Order::Desc)
        .order_by(("trophies", "trophy_id"), Order::Desc)
        .limit(limit);
    let at = Expr::col(("trophies", "awarded_at"));
    match before {
        None => {}
        // No trophy of the connection's time comes after it.
        Some(FeedCursor::Connection(t, _)) => {
            q.and_where(at.lt(*t));
        }
        Some(FeedCursor::Trophy(t, account, trophy)) => {
            let acc = Expr::col(("trophies", "account_id"));
            q.cond_where(
                Condition::any().add(at.clone().lt(*t)).add(
                    Condition::all().add(at.eq(*t)).add(
                        Condition::any().add(acc.clone().lt(account.as_str())).add(
                            Condition::all()
                                .add(acc.eq(account.as_str()))
                                .add(Expr::col(("trophies", "trophy_id")).lt(trophy.as_str())),
                        ),
                    ),
                ),
            );
        }
    }
    q.to_owned()
}
