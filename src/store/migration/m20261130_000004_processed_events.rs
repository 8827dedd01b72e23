//! `processed_events`: the ids of the events the profile projection folded from the
//! cluster's event stream (delivered at least once), so a redelivered event counts once.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("processed_events")
                .if_not_exists()
                .col(string("event_id").primary_key())
                .col(timestamp_with_time_zone("processed_at"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("processed_events")
                .if_exists()
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
