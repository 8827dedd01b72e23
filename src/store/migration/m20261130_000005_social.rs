//! The social half: `trophies`, one row per (account, trophy) — the key that makes an award
//! happen once, however often the events behind it are delivered or replayed; indexes for
//! the trophy measures (connections by citizen — by officer is the core index's first
//! column — and donations by account) and for the public feed (newest first); and each
//! account's consent to share (`accounts.share_connections`, off until it says so); and
//! each account's distinct counterparts and zips (`account_counterparts`, `account_zips`).

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
        // Each account's distinct counterparts and zips, so a trophy that counts them reads
        // a few rows however many connections the account has; filled from the connections
        // recorded so far, then by the fold.
        for (table, col) in [
            ("account_counterparts", "other_id"),
            ("account_zips", "zip"),
        ] {
            m.create_table(
                Table::create()
                    .table(table)
                    .if_not_exists()
                    .col(string("account_id"))
                    .col(string(col))
                    .primary_key(Index::create().col("account_id").col(col))
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        for sql in [
            "INSERT INTO account_counterparts (account_id, other_id) \
             SELECT DISTINCT officer_id, citizen_id FROM connections \
             UNION SELECT DISTINCT citizen_id, officer_id FROM connections",
            "INSERT INTO account_zips (account_id, zip) \
             SELECT DISTINCT officer_id, zip FROM connections \
             UNION SELECT DISTINCT citizen_id, zip FROM connections",
        ] {
            db.execute_unprepared(sql).await?;
        }
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
        for t in ["trophies", "account_counterparts", "account_zips"] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
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
