//! Rewards: retailers, their offers, the vouchers issued for them, charities, donations,
//! and the idempotency keys of POST requests.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in ["retailers", "charities"] {
            m.create_table(
                Table::create()
                    .table(table)
                    .if_not_exists()
                    .col(string("id").primary_key())
                    .col(string("name"))
                    .col(string_null("website"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .to_owned(),
            )
            .await?;
        }
        // `remaining` NULL means unlimited stock; `valid_until` is the last valid day (UTC).
        m.create_table(
            Table::create()
                .table("offers")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(string("retailer_id"))
                .col(string("title"))
                .col(big_integer("points_cost"))
                .col(date("valid_until"))
                .col(big_integer_null("remaining"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("vouchers")
                .if_not_exists()
                .col(string("code").primary_key())
                .col(string("offer_id"))
                .col(string("account_id"))
                .col(big_integer("points_spent"))
                .col(timestamp_with_time_zone("issued_at"))
                .col(timestamp_with_time_zone_null("redeemed_at"))
                .col(string_null("redeemed_by"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("donations")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(string("account_id"))
                .col(string("charity_id"))
                .col(big_integer("points"))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;
        // One row per (account, key): the request's fingerprint and its recorded outcome,
        // written in the same transaction as the effect.
        m.create_table(
            Table::create()
                .table("idempotency_keys")
                .if_not_exists()
                .col(string("account_id"))
                .col(string("key"))
                .col(string("fingerprint"))
                .col(text_null("outcome"))
                .col(timestamp_with_time_zone("created_at"))
                .primary_key(Index::create().col("account_id").col("key"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "idempotency_keys",
            "donations",
            "vouchers",
            "offers",
            "charities",
            "retailers",
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
