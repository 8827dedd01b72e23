//! `webhook_deliveries.retried_at`: when an administrator last put a given-up delivery back
//! in the queue; its age (`webhooks.max_age_s`) counts from then instead of from when the
//! event was queued.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("webhook_deliveries")
                .add_column(timestamp_with_time_zone_null("retried_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("webhook_deliveries")
                .drop_column("retried_at")
                .to_owned(),
        )
        .await
    }
}
