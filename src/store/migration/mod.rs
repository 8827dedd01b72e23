//! Schema migrations, one file per migration (named after the file).

use sea_orm_migration::prelude::*;

mod m20261128_000001_core;
mod m20261128_000002_rewards;
mod m20261128_000003_account_stats;
mod m20261130_000004_processed_events;
mod m20261130_000005_social;
mod m20261130_000006_webhooks;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_core::Migration),
            Box::new(m20261128_000002_rewards::Migration),
            Box::new(m20261128_000003_account_stats::Migration),
            Box::new(m20261130_000004_processed_events::Migration),
            Box::new(m20261130_000005_social::Migration),
            Box::new(m20261130_000006_webhooks::Migration),
        ]
    }
}
