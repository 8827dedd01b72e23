//! Rewards: the storefront (offers), redemptions that debit points and issue a signed
//! voucher, voucher verification and one-time use, charities and donations. Every debit
//! is one transaction with the record it pays for, under a lock on the account row so two
//! concurrent spends cannot both pass the balance check. With an idempotency key the
//! outcome is recorded in that same transaction: a replay returns it and changes nothing.

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use rand::Rng;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, SqlErr, TransactionTrait,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::entities::{account, charity, donation, idempotency, ledger, offer, retailer, voucher};
use super::{Store, StoreError, balance_in, db_err};
use crate::events::DomainEvent;

/// Why a request was refused; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No such offer.
    #[error("no such offer")]
    UnknownOffer,
    /// The offer's last valid day has passed.
    #[error("the offer is no longer valid")]
    OfferExpired,
    /// No stock left.
    #[error("the offer has no vouchers left")]
    OfferExhausted,
    /// The balance does not cover it.
    #[error("the balance does not cover it")]
    InsufficientPoints,
    /// No such charity.
    #[error("no such charity")]
    UnknownCharity,
    /// No such voucher (or a code that is not validly signed).
    #[error("no such voucher")]
    UnknownVoucher,
    /// The voucher was used before.
    #[error("the voucher has already been redeemed")]
    VoucherAlreadyRedeemed,
    /// A retailer may only redeem vouchers of its own offers.
    #[error("the voucher belongs to another retailer's offer")]
    WrongRetailer,
    /// The idempotency key was used before for a different request.
    #[error("the Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
}

/// What a client sent with an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The caller.
    pub account: String,
    /// The header's value.
    pub key: String,
    /// A hash of the method, path and body: the same key with another request is refused.
    pub fingerprint: String,
}

/// The recorded outcome of a keyed request.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome<T> {
    Done(T),
    Refused(Refusal),
}

/// A voucher issued by a redemption.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Redemption {
    /// The signed code.
    pub voucher_code: String,
    /// The offer it is for.
    pub offer_id: String,
    /// Points debited.
    pub points_spent: i64,
    /// Balance after it.
    pub balance: i64,
}

/// A donation made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Donation {
    /// Its id.
    pub donation_id: String,
    /// The charity.
    pub charity_id: String,
    /// Points given.
    pub points: i64,
    /// Balance after it.
    pub balance: i64,
}

/// A voucher as verification shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct VoucherView {
    /// Always true (an invalid code has no view).
    pub valid: bool,
    /// The code.
    pub code: String,
    /// The offer.
    pub offer_id: String,
    /// The retailer of the offer.
    pub retailer_id: String,
    /// When it was issued.
    pub issued_at: String,
    /// Whether it has been used.
    pub redeemed: bool,
    /// When it was used.
    pub redeemed_at: Option<String>,
}

/// An offer in the storefront.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OfferView {
    /// Offer id.
    pub offer_id: String,
    /// The retailer's name.
    pub retailer: String,
    /// The retailer's id.
    pub retailer_id: String,
    /// Title.
    pub title: String,
    /// Price in points.
    pub points_cost: i64,
    /// Last valid day (UTC).
    pub valid_until: String,
    /// Vouchers left; null = unlimited.
    pub remaining: Option<i64>,
}

/// A charity.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CharityView {
    /// Charity id.
    pub charity_id: String,
    /// Name.
    pub name: String,
    /// Website.
    pub website: Option<String>,
}

/// Signs and checks voucher codes: 10 random bytes and the first 10 bytes of their
/// HMAC-SHA256, base32 (32 characters). Without the key a valid code can neither be
/// forged nor guessed (2^-80 per try).
#[derive(Clone)]
pub struct VoucherSigner {
    mac: Hmac<Sha256>,
}

const NONCE: usize = 10;
const TAG: usize = 10;

impl VoucherSigner {
    /// A signer with the configured key.
    pub fn new(key: &str) -> Self {
        Self {
            mac: Hmac::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length"),
        }
    }

    /// A fresh signed code.
    pub fn issue(&self) -> String {
        let nonce: [u8; NONCE] = rand::rng().random();
        let mut mac = self.mac.clone();
        mac.update(&nonce);
        let tag = mac.finalize().into_bytes();
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&tag[..TAG]);
        data_encoding::BASE32_NOPAD.encode(&raw)
    }

    /// The canonical form of a validly signed code (case-insensitive), or None.
    pub fn check(&self, code: &str) -> Option<String> {
        let upper = code.trim().to_ascii_uppercase();
        let raw = data_encoding::BASE32_NOPAD.decode(upper.as_bytes()).ok()?;
        if raw.len() != NONCE + TAG {
            return None;
        }
        let mut mac = self.mac.clone();
        mac.update(&raw[..NONCE]);
        mac.verify_truncated_left(&raw[NONCE..]).ok()?;
        Some(upper)
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// A transactional step: its result, or a refusal (after which nothing is written).
type Step<'a, T> = BoxFuture<'a, Result<Result<T, Refusal>, DbErr>>;

impl Store {
    /// Runs `op` in a transaction; with a key, records the outcome in the same
    /// transaction, and answers a replay with the recorded outcome without running `op`.
    pub(super) async fn once<T, F>(
        &self,
        key: Option<&IdempotencyKey>,
        op: F,
    ) -> Result<Result<T, Refusal>, StoreError>
    where
        T: Serialize + DeserializeOwned + Send,
        F: for<'a> Fn(&'a DatabaseTransaction) -> Step<'a, T>,
    {
        let mut last = None;
        // A concurrent request with the same key (or a racing unique insert) fails on the
        // unique key; the retry then finds the recorded outcome.
        for _ in 0..3 {
            match self.once_try(key, &op).await {
                Ok(r) => return Ok(r),
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    last = Some(e)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::from(last.expect("three failed attempts")))
    }

    async fn once_try<T, F>(
        &self,
        key: Option<&IdempotencyKey>,
        op: &F,
    ) -> Result<Result<T, Refusal>, DbErr>
    where
        T: Serialize + DeserializeOwned + Send,
        F: for<'a> Fn(&'a DatabaseTransaction) -> Step<'a, T>,
    {
        let txn = self.db.begin().await?;
        if let Some(k) = key {
            let found = idempotency::Entity::find_by_id((k.account.clone(), k.key.clone()))
                .one(&txn)
                .await?;
            if let Some(row) = found {
                txn.commit().await?;
                if row.fingerprint != k.fingerprint {
                    return Ok(Err(Refusal::IdempotencyKeyReused));
                }
                let recorded = row.outcome.unwrap_or_default();
                return match serde_json::from_str::<Outcome<T>>(&recorded) {
                    Ok(Outcome::Done(t)) => Ok(Ok(t)),
                    Ok(Outcome::Refused(r)) => Ok(Err(r)),
                    Err(e) => Err(DbErr::Custom(format!("recorded outcome unreadable: {e}"))),
                };
            }
            // Claim the key first: a concurrent twin blocks here until we commit.
            claim(&txn, k).await?;
        }
        let result = op(&txn).await?;
        let Some(k) = key else {
            txn.commit().await?;
            return Ok(result);
        };
        let txn = if result.is_err() {
            // A refusal keeps nothing but the recorded outcome.
            txn.rollback().await?;
            let txn = self.db.begin().await?;
            claim(&txn, k).await?;
            txn
        } else {
            txn
        };
        {
            let outcome = match &result {
                Ok(t) => serde_json::to_string(&Outcome::Done(t)),
                Err(r) => serde_json::to_string(&Outcome::<T>::Refused(*r)),
            }
            .map_err(|e| DbErr::Custom(e.to_string()))?;
            idempotency::Entity::update_many()
                .col_expr(idempotency::Column::Outcome, Expr::val(outcome))
                .filter(idempotency::Column::AccountId.eq(&k.account))
                .filter(idempotency::Column::Key.eq(&k.key))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(result)
    }

    /// Citizen `account` spends points on `offer_id`: checks validity, stock and balance,
    /// then debits the ledger, takes one from stock, issues a signed voucher and queues
    /// `voucher_issued`, all in one transaction.
    pub async fn redeem_offer(
        &self,
        account: &str,
        offer_id: &str,
        signer: &VoucherSigner,
        key: Option<&IdempotencyKey>,
    ) -> Result<Result<Redemption, Refusal>, StoreError> {
        let _timed = super::timed("redeem_offer");
        self.once(key, |txn| {
            let (account, offer_id, signer) =
                (account.to_owned(), offer_id.to_owned(), signer.clone());
            Box::pin(async move { redeem_in(txn, &account, &offer_id, &signer).await })
        })
        .await
    }

    /// Officer `account` gives `points` (> 0) to a charity, in one transaction with the
    /// ledger debit and the `donation_made` event.
    pub async fn donate(
        &self,
        account: &str,
        charity_id: &str,
        points: i64,
        key: Option<&IdempotencyKey>,
    ) -> Result<Result<Donation, Refusal>, StoreError> {
        let _timed = super::timed("donate");
        assert!(points > 0, "callers refuse non-positive donations");
        self.once(key, |txn| {
            let (account, charity_id) = (account.to_owned(), charity_id.to_owned());
            Box::pin(async move { donate_in(txn, &account, &charity_id, points).await })
        })
        .await
    }

    /// Marks a voucher used, once. `retailer`: the caller is that retailer and may only
    /// redeem vouchers of its own offers (admins pass None).
    pub async fn redeem_voucher(
        &self,
        code: &str,
        by: &str,
        retailer: Option<&str>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Result<VoucherView, Refusal>, StoreError> {
        let _timed = super::timed("redeem_voucher");
        self.once(key, |txn| {
            let (code, by, retailer) =
                (code.to_owned(), by.to_owned(), retailer.map(str::to_owned));
            Box::pin(async move {
                let Some(v) = voucher_in(txn, &code).await? else {
                    return Ok(Err(Refusal::UnknownVoucher));
                };
                if retailer.as_ref().is_some_and(|r| *r != v.retailer_id) {
                    return Ok(Err(Refusal::WrongRetailer));
                }
                let now = Utc::now();
                let done = voucher::Entity::update_many()
                    .col_expr(voucher::Column::RedeemedAt, Expr::val(now))
                    .col_expr(voucher::Column::RedeemedBy, Expr::val(by))
                    .filter(voucher::Column::Code.eq(&code))
                    .filter(voucher::Column::RedeemedAt.is_null())
                    .exec(txn)
                    .await?;
                if done.rows_affected == 0 {
                    return Ok(Err(Refusal::VoucherAlreadyRedeemed));
                }
                Ok(Ok(VoucherView {
                    redeemed: true,
                    redeemed_at: Some(rfc3339(now)),
                    ..v
                }))
            })
        })
        .await
    }

    /// A voucher by its (already signature-checked) code.
    pub async fn voucher(&self, code: &str) -> Result<Option<VoucherView>, StoreError> {
        let _timed = super::timed("voucher");
        let txn = self.db.begin().await?;
        let v = voucher_in(&txn, code).await?;
        txn.commit().await?;
        Ok(v)
    }

    /// Offers still valid today, by id, at most `limit` after the id `after`.
    pub async fn offers_page(
        &self,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Vec<OfferView>, StoreError> {
        let _timed = super::timed("offers_page");
        let mut q = offer::Entity::find()
            .filter(offer::Column::ValidUntil.gte(today()))
            .order_by_asc(offer::Column::Id)
            .limit(limit);
        if let Some(a) = after {
            q = q.filter(offer::Column::Id.gt(a));
        }
        let offers = q.all(&self.db).await?;
        let mut ids: Vec<&str> = offers.iter().map(|o| o.retailer_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let names: std::collections::HashMap<String, String> = retailer::Entity::find()
            .filter(retailer::Column::Id.is_in(ids))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.id, r.name))
            .collect();
        Ok(offers
            .into_iter()
            .map(|o| OfferView {
                retailer: names.get(&o.retailer_id).cloned().unwrap_or_default(),
                offer_id: o.id,
                retailer_id: o.retailer_id,
                title: o.title,
                points_cost: o.points_cost,
                valid_until: o.valid_until.to_string(),
                remaining: o.remaining,
            })
            .collect())
    }

    /// Charities by id, at most `limit` after the id `after`.
    pub async fn charities_page(
        &self,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Vec<CharityView>, StoreError> {
        let _timed = super::timed("charities_page");
        let mut q = charity::Entity::find()
            .order_by_asc(charity::Column::Id)
            .limit(limit);
        if let Some(a) = after {
            q = q.filter(charity::Column::Id.gt(a));
        }
        Ok(q.all(&self.db)
            .await?
            .into_iter()
            .map(|c| CharityView {
                charity_id: c.id,
                name: c.name,
                website: c.website,
            })
            .collect())
    }

    /// Forgets idempotency answers older than `ttl`.
    pub async fn expire_idempotency_keys(
        &self,
        ttl: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let _timed = super::timed("expire_idempotency_keys");
        let cutoff = Utc::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        Ok(idempotency::Entity::delete_many()
            .filter(idempotency::Column::CreatedAt.lt(cutoff))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

async fn claim(txn: &DatabaseTransaction, k: &IdempotencyKey) -> Result<(), DbErr> {
    idempotency::ActiveModel {
        account_id: Set(k.account.clone()),
        key: Set(k.key.clone()),
        fingerprint: Set(k.fingerprint.clone()),
        outcome: Set(None),
        created_at: Set(Utc::now()),
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// Creates the account if needed and locks its row until the transaction ends, so debits
/// of one account are serialised (SQLite serialises every write transaction anyway).
async fn lock_account(txn: &DatabaseTransaction, account: &str, role: &str) -> Result<(), DbErr> {
    let now = Utc::now();
    account::Entity::insert(account::ActiveModel {
        id: Set(account.to_owned()),
        role: Set(role.to_owned()),
        display_name: Set(account.to_owned()),
        badge: Set(None),
        precinct: Set(None),
        email: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        share_connections: sea_orm::ActiveValue::NotSet,
    })
    .on_conflict_do_nothing_on([account::Column::Id])
    .exec(txn)
    .await?;
    account::Entity::find_by_id(account.to_owned())
        .lock_exclusive()
        .one(txn)
        .await?;
    Ok(())
}

/// Appends a debit and its event.
async fn debit(
    txn: &DatabaseTransaction,
    account: &str,
    kind: &str,
    points: i64,
    reference: &str,
    event: DomainEvent,
    at: DateTime<Utc>,
) -> Result<i64, DbErr> {
    ledger::ActiveModel {
        account_id: Set(account.to_owned()),
        kind: Set(kind.to_owned()),
        delta: Set(-points),
        reference: Set(reference.to_owned()),
        created_at: Set(at),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    super::append_events(txn, std::slice::from_ref(&event), at).await?;
    balance_in(txn, account).await.map_err(db_err)
}

async fn redeem_in(
    txn: &DatabaseTransaction,
    account: &str,
    offer_id: &str,
    signer: &VoucherSigner,
) -> Result<Result<Redemption, Refusal>, DbErr> {
    lock_account(txn, account, "citizen").await?;
    let Some(o) = offer::Entity::find_by_id(offer_id.to_owned())
        .one(txn)
        .await?
    else {
        return Ok(Err(Refusal::UnknownOffer));
    };
    if o.valid_until < today() {
        return Ok(Err(Refusal::OfferExpired));
    }
    if o.remaining.is_some_and(|n| n <= 0) {
        return Ok(Err(Refusal::OfferExhausted));
    }
    if balance_in(txn, account).await.map_err(db_err)? < o.points_cost {
        return Ok(Err(Refusal::InsufficientPoints));
    }
    if o.remaining.is_some() {
        // Conditional: a concurrent redemption may have taken the last one.
        let took = offer::Entity::update_many()
            .col_expr(
                offer::Column::Remaining,
                Expr::col(offer::Column::Remaining).sub(1),
            )
            .filter(offer::Column::Id.eq(offer_id))
            .filter(offer::Column::Remaining.gt(0))
            .exec(txn)
            .await?;
        if took.rows_affected == 0 {
            return Ok(Err(Refusal::OfferExhausted));
        }
    }
    let code = signer.issue();
    let now = Utc::now();
    voucher::ActiveModel {
        code: Set(code.clone()),
        offer_id: Set(offer_id.to_owned()),
        account_id: Set(account.to_owned()),
        points_spent: Set(o.points_cost),
        issued_at: Set(now),
        redeemed_at: Set(None),
        redeemed_by: Set(None),
    }
    .insert(txn)
    .await?;
    let event = DomainEvent::VoucherIssued {
        voucher_code: code.clone(),
        offer_id: offer_id.to_owned(),
        retailer_id: o.retailer_id.clone(),
        account_id: account.to_owned(),
        points_spent: o.points_cost,
    };
    let balance = debit(txn, account, "redemption", o.points_cost, &code, event, now).await?;
    Ok(Ok(Redemption {
        voucher_code: code,
        offer_id: offer_id.to_owned(),
        points_spent: o.points_cost,
        balance,
    }))
}

async fn donate_in(
    txn: &DatabaseTransaction,
    account: &str,
    charity_id: &str,
    points: i64,
) -> Result<Result<Donation, Refusal>, DbErr> {
    lock_account(txn, account, "officer").await?;
    if charity::Entity::find_by_id(charity_id.to_owned())
        .one(txn)
        .await?
        .is_none()
    {
        return Ok(Err(Refusal::UnknownCharity));
    }
    if balance_in(txn, account).await.map_err(db_err)? < points {
        return Ok(Err(Refusal::InsufficientPoints));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = Utc::now();
    donation::ActiveModel {
        id: Set(id.clone()),
        account_id: Set(account.to_owned()),
        charity_id: Set(charity_id.to_owned()),
        points: Set(points),
        created_at: Set(now),
    }
    .insert(txn)
    .await?;
    let event = DomainEvent::DonationMade {
        donation_id: id.clone(),
        charity_id: charity_id.to_owned(),
        account_id: account.to_owned(),
        points,
    };
    let balance = debit(txn, account, "donation", points, &id, event, now).await?;
    Ok(Ok(Donation {
        donation_id: id,
        charity_id: charity_id.to_owned(),
        points,
        balance,
    }))
}

async fn voucher_in(txn: &DatabaseTransaction, code: &str) -> Result<Option<VoucherView>, DbErr> {
    let Some(v) = voucher::Entity::find_by_id(code.to_owned())
        .one(txn)
        .await?
    else {
        return Ok(None);
    };
    let retailer_id = offer::Entity::find_by_id(v.offer_id.clone())
        .one(txn)
        .await?
        .map(|o| o.retailer_id)
        .unwrap_or_default();
    Ok(Some(VoucherView {
        valid: true,
        code: v.code,
        offer_id: v.offer_id,
        retailer_id,
        issued_at: rfc3339(v.issued_at),
        redeemed: v.redeemed_at.is_some(),
        redeemed_at: v.redeemed_at.map(rfc3339),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_verify_and_resist_tampering() {
        let s = VoucherSigner::new("k1");
        let code = s.issue();
        assert_eq!(code.len(), 32);
        assert_eq!(s.check(&code).as_deref(), Some(code.as_str()));
        assert_eq!(
            s.check(&code.to_ascii_lowercase()).as_deref(),
            Some(code.as_str())
        );
        // Another key does not accept it.
        assert_eq!(VoucherSigner::new("k2").check(&code), None);
        // Every single-character change is refused.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        for i in 0..code.len() {
            for c in alphabet.chars() {
                let mut t: Vec<char> = code.chars().collect();
                if t[i] == c {
                    continue;
                }
                t[i] = c;
                let t: String = t.into_iter().collect();
                assert_eq!(s.check(&t), None, "{t} accepted");
            }
        }
        assert_eq!(s.check(""), None);
        assert_eq!(s.check("not a code"), None);
        assert_ne!(s.issue(), code);
    }
}
