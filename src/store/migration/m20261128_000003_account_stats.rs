//! `account_stats`: the profile statistics projection (earned, spent, connections per
//! account), fed by the publisher from the event outbox. Every existing event is queued
//! again so the projection is built from the whole history.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("account_stats")
                .if_not_exists()
                .col(string("account_id").primary_key())
                .col(big_integer("earned").default(0))
                .col(big_integer("spent").default(0))
                .col(big_integer("connections").default(0))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("events_unpublished")
                .table("events")
                .col("published_at")
                .col("id")
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        let requeue = Query::update()
            .table("events")
            .value("published_at", Expr::cust("NULL"))
            .to_owned();
        m.get_connection().execute(&requeue).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("events_unpublished")
                .table("events")
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table("account_stats").if_exists().to_owned())
            .await?;
        Ok(())
    }
}
