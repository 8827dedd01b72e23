//! `vouchers`: one per redemption; the code is signed (see `store::rewards`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "vouchers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub code: String,
    pub offer_id: String,
    pub account_id: String,
    pub points_spent: i64,
    pub issued_at: ChronoDateTimeUtc,
    pub redeemed_at: Option<ChronoDateTimeUtc>,
    pub redeemed_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
