//! Upserting validated import rows (see `crate::import`): the whole file in one
//! transaction, in multi-row statements, so an import never half-applies and re-importing
//! the same file changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, Condition, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, Set};

use super::entities::{account, charity, offer, retailer};
use super::rewards::{IdempotencyKey, Refusal};
use super::{Store, StoreError};
use crate::import::{
    ImportLimits, Kind, OfferRow, PartnerRow, Rejected, Rejections, Report, Rows, StructureError,
};
use bytes::Bytes;

/// Rows per INSERT statement (well under SQLite's 32,766 bound parameters).
const CHUNK: usize = 500;

/// Why an import was refused whole (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ImportRefused {
    /// The file is not importable at all (400).
    #[error("{0}")]
    Structure(#[from] StructureError),
    /// The store refused it: its Idempotency-Key was used for another request (422).
    #[error("{0}")]
    Refusal(#[from] Refusal),
}

impl Store {
    /// The one import path of the admin endpoint and `heyblue import`: parses and
    /// validates `body` (off the async threads), upserts the valid rows, and reports every
    /// refused row by number. `csv`: the format if known, else sniffed.
    pub async fn import_file(
        &self,
        kind: Kind,
        body: Bytes,
        csv: Option<bool>,
        limits: ImportLimits,
        key: Option<&IdempotencyKey>,
    ) -> Result<Result<Report, ImportRefused>, StoreError> {
        let parsed =
            tokio::task::spawn_blocking(move || crate::import::parse(kind, &body, csv, limits))
                .await
                .map_err(|e| {
                    StoreError::Unavailable(DbErr::Custom(format!("import parser: {e}")))
                })?;
        let (rows, mut rejected) = match parsed {
            Ok(p) => p,
            Err(e) => return Ok(Err(e.into())),
        };
        let report = match self.import(rows, key).await? {
            Ok(r) => r,
            Err(r) => return Ok(Err(r.into())),
        };
        // The store's own refusals (an offer's unknown retailer) join the parser's.
        let mut stored = Rejections::new(limits.max_rejected);
        for r in report.rejected {
            stored.push(r);
        }
        rejected.merge(stored);
        Ok(Ok(Report {
            accepted: report.accepted,
            rejected: rejected.listed,
            rejected_count: rejected.total,
        }))
    }

    /// Upserts the rows in one transaction. Offers whose retailer (id or name) is unknown
    /// are rejected; everything else is accepted. With a key, a replay answers the first
    /// report and writes nothing; a key used before for another import is refused.
    pub async fn import(
        &self,
        rows: Rows,
        key: Option<&IdempotencyKey>,
    ) -> Result<Result<Report, Refusal>, StoreError> {
        let _timed = super::timed("import");
        let started = std::time::Instant::now();
        let n = rows.len();
        let rows = Arc::new(rows);
        let report = self
            .once(key, |txn| {
                let rows = rows.clone();
                Box::pin(async move { Ok(Ok(import_in(txn, &rows).await?)) })
            })
            .await?;
        let report = match report {
            Ok(r) => r,
            Err(r) => return Ok(Err(r)),
        };
        metrics::counter!("import_rows_total", "result" => "accepted")
            .increment(report.accepted as u64);
        metrics::counter!("import_rows_total", "result" => "rejected")
            .increment(report.rejected.len() as u64);
        tracing::info!(
            rows = n,
            accepted = report.accepted,
            rejected = report.rejected.len(),
            ms = started.elapsed().as_millis() as u64,
            "import"
        );
        Ok(Ok(report))
    }
}

async fn import_in(txn: &DatabaseTransaction, rows: &Rows) -> Result<Report, DbErr> {
    let now = Utc::now();
    let mut rejected = Vec::new();
    let accepted = match rows {
        Rows::Officers(v) => {
            for chunk in v.chunks(CHUNK) {
                let models = chunk.iter().map(|(_, o)| account::ActiveModel {
                    id: Set(o.officer_id.clone()),
                    role: Set("officer".into()),
                    display_name: Set(o.display_name.clone()),
                    badge: Set(o.badge.clone()),
                    precinct: Set(o.precinct.clone()),
                    email: Set(o.email.clone()),
                    created_at: Set(now),
                    updated_at: Set(now),
                    share_connections: sea_orm::ActiveValue::NotSet,
                });
                account::Entity::insert_many(models)
                    .on_conflict(
                        OnConflict::column(account::Column::Id)
                            .update_columns([
                                account::Column::Role,
                                account::Column::DisplayName,
                                account::Column::Badge,
                                account::Column::Precinct,
                                account::Column::Email,
                                account::Column::UpdatedAt,
                            ])
                            .to_owned(),
                    )
                    .exec(txn)
                    .await?;
            }
            v.len()
        }
        Rows::Retailers(v) => {
            for chunk in v.chunks(CHUNK) {
                retailer::Entity::insert_many(chunk.iter().map(|(_, p)| retailer_model(p, now)))
                    .on_conflict(
                        OnConflict::column(retailer::Column::Id)
                            .update_columns([
                                retailer::Column::Name,
                                retailer::Column::Website,
                                retailer::Column::UpdatedAt,
                            ])
                            .to_owned(),
                    )
                    .exec(txn)
                    .await?;
            }
            v.len()
        }
        Rows::Charities(v) => {
            for chunk in v.chunks(CHUNK) {
                charity::Entity::insert_many(chunk.iter().map(|(_, p)| charity::ActiveModel {
                    id: Set(p.id.clone()),
                    name: Set(p.name.clone()),
                    website: Set(p.website.clone()),
                    created_at: Set(now),
                    updated_at: Set(now),
                }))
                .on_conflict(
                    OnConflict::column(charity::Column::Id)
                        .update_columns([
                            charity::Column::Name,
                            charity::Column::Website,
                            charity::Column::UpdatedAt,
                        ])
                        .to_owned(),
                )
                .exec(txn)
                .await?;
            }
            v.len()
        }
        Rows::Offers(v) => {
            let retailers = resolve_retailers(txn, v).await?;
            let mut ok = Vec::with_capacity(v.len());
            for (row, o) in v {
                match retailers.get(o.retailer.as_str()) {
                    Some(Ok(id)) => ok.push((o, id.clone())),
                    Some(Err(())) => rejected.push(Rejected {
                        row: *row,
                        error: format!(
                            "retailer name {:?} names several retailers; use the retailer_id",
                            o.retailer
                        ),
                    }),
                    None => rejected.push(Rejected {
                        row: *row,
                        error: format!("unknown retailer {:?}", o.retailer),
                    }),
                }
            }
            for chunk in ok.chunks(CHUNK) {
                offer::Entity::insert_many(chunk.iter().map(|(o, retailer_id)| {
                    offer::ActiveModel {
                        id: Set(o.offer_id.clone()),
                        retailer_id: Set(retailer_id.clone()),
                        title: Set(o.title.clone()),
                        points_cost: Set(o.points_cost),
                        valid_until: Set(o.valid_until),
                        remaining: Set(o.remaining),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                }))
                .on_conflict(
                    OnConflict::column(offer::Column::Id)
                        .update_columns([
                            offer::Column::RetailerId,
                            offer::Column::Title,
                            offer::Column::PointsCost,
                            offer::Column::ValidUntil,
                            offer::Column::Remaining,
                            offer::Column::UpdatedAt,
                        ])
                        .to_owned(),
                )
                .exec(txn)
                .await?;
            }
            ok.len()
        }
    };
    let rejected_count = rejected.len();
    Ok(Report {
        accepted,
        rejected,
        rejected_count,
    })
}

fn retailer_model(p: &PartnerRow, now: chrono::DateTime<Utc>) -> retailer::ActiveModel {
    retailer::ActiveModel {
        id: Set(p.id.clone()),
        name: Set(p.name.clone()),
        website: Set(p.website.clone()),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// Each distinct `retailer` reference → the retailer id it names (an id first, else a
/// unique name; `Err` for a name shared by several retailers).
async fn resolve_retailers(
    txn: &DatabaseTransaction,
    rows: &[(usize, OfferRow)],
) -> Result<HashMap<String, Result<String, ()>>, DbErr> {
    let mut refs: Vec<&str> = rows.iter().map(|(_, o)| o.retailer.as_str()).collect();
    refs.sort_unstable();
    refs.dedup();
    let mut by_id = HashMap::new();
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    for chunk in refs.chunks(CHUNK) {
        let found = retailer::Entity::find()
            .filter(
                Condition::any()
                    .add(retailer::Column::Id.is_in(chunk.iter().copied()))
                    .add(retailer::Column::Name.is_in(chunk.iter().copied())),
            )
            .all(txn)
            .await?;
        for r in found {
            by_id.insert(r.id.clone(), r.id.clone());
            by_name.entry(r.name).or_default().push(r.id);
        }
    }
    for ids in by_name.values_mut() {
        ids.sort_unstable();
        ids.dedup();
    }
    Ok(refs
        .into_iter()
        .filter_map(|r| {
            let resolved = match (by_id.get(r), by_name.get(r)) {
                (Some(id), _) => Ok(id.clone()),
                (None, Some(ids)) if ids.len() == 1 => Ok(ids[0].clone()),
                (None, Some(_)) => Err(()),
                (None, None) => return None,
            };
            Some((r.to_owned(), resolved))
        })
        .collect())
}
