//! Accounts, connections, the append-only points ledger and the event outbox.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("accounts")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(string("role"))
                .col(string("display_name"))
                .col(string_null("badge"))
                .col(string_null("precinct"))
                .col(string_null("email"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await?;
        // Connections keep the zip and the time, never coordinates.
        m.create_table(
            Table::create()
                .table("connections")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(string_uniq("request_id"))
                .col(string("officer_id"))
                .col(string("citizen_id"))
                .col(string("mode"))
                .col(string("zip"))
                .col(big_integer("points_awarded"))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("connections_pair_time")
                .table("connections")
                .col("officer_id")
                .col("citizen_id")
                .col("created_at")
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        // Append-only; one entry per (account, kind, ref) so a retry cannot pay twice.
        m.create_table(
            Table::create()
                .table("ledger")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string("account_id"))
                .col(string("kind"))
                .col(big_integer("delta"))
                .col(string("ref"))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ledger_once")
                .table("ledger")
                .col("account_id")
                .col("kind")
                .col("ref")
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("events")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string("kind"))
                .col(text("payload"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone_null("published_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["events", "ledger", "connections", "accounts"] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
