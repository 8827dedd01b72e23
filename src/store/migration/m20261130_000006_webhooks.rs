//! Partner webhooks: `webhooks` (what a partner subscribed to, and where), and
//! `webhook_deliveries`, one row per (webhook, event) written in the transaction that
//! folds the event — so a delivery is never lost or queued twice — with its state, its
//! next attempt and a lease that lets one node at a time attempt it; `webhook_attempts`
//! keeps every attempt's outcome for the admin's view.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("webhooks")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(text("url"))
                .col(text("events"))
                .col(text("secret"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("webhook_deliveries")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string("webhook_id"))
                .col(string("event_id"))
                .col(string("event_type"))
                .col(text("body"))
                .col(string("status"))
                .col(integer("attempts").default(0))
                .col(timestamp_with_time_zone("next_attempt_at"))
                .col(timestamp_with_time_zone_null("lease_until"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone_null("finished_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("webhook_deliveries_once")
                .table("webhook_deliveries")
                .col("webhook_id")
                .col("event_id")
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("webhook_deliveries_due")
                .table("webhook_deliveries")
                .col("status")
                .col("webhook_id")
                .col("id")
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("webhook_attempts")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(big_integer("delivery_id"))
                .col(string("webhook_id"))
                .col(timestamp_with_time_zone("at"))
                .col(integer_null("status"))
                .col(big_integer("latency_ms"))
                .col(text_null("error"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("webhook_attempts_delivery")
                .table("webhook_attempts")
                .col("delivery_id")
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["webhook_attempts", "webhook_deliveries", "webhooks"] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
