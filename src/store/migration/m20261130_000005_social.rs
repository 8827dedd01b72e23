//! The social half: `trophies`, one row per (account, trophy) — the key that makes an award
//! happen once, however often the events behind it are delivered or replayed; indexes for
//! the trophy measures (connections by citizen — by officer is the core index's first
//! column — and donations by account) and for the public feed (newest first); and each
//! account's consent to share (`accounts.share_connections`, off until it says so).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("trophies")
                .if_not_exists()
                .col(string("account_id"))
                .col(string("trophy_id"))
                .col(string("name"))
                .col(timestamp_with_time_zone("awarded_at"))
                .primary_key(Index::create().col("account_id").col("trophy_id"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("accounts")
                .add_column(boolean("share_connections").default(false))
                .to_owned(),
        )
        .await?;
        for (name, table, col) in [
            ("connections_citizen", "connections", "citizen_id"),
            ("connections_created", "connections", "created_at"),
            ("donations_account", "donations", "account_id"),
            ("trophies_awarded", "trophies", "awarded_at"),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(table)
                    .col(col)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("connections_citizen", "connections"),
            ("connections_created", "connections"),
            ("donations_account", "donations"),
            ("trophies_awarded", "trophies"),
        ] {
            m.drop_index(Index::drop().name(name).table(table).to_owned())
                .await?;
        }
        m.drop_table(Table::drop().table("trophies").if_exists().to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table("accounts")
                .drop_column("share_connections")
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
