//! Schema migrations, one file per migration (named after the file).

use sea_orm_migration::prelude::*;

mod m20261128_000001_core;
mod m20261128_000002_rewards;
mod m20261128_000003_account_stats;
mod m20261130_000004_processed_events;
mod m20261130_000005_social;
mod m20261130_000006_webhooks;
mod m20261130_000007_webhook_requeue;

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
            Box::new(m20261130_000007_webhook_requeue::Migration),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

    use super::*;

    /// Connections recorded before the social migration: (officer, citizen, zip).
    const BEFORE: [(&str, &str, &str); 5] = [
        ("o1", "c1", "10001"),
        ("o1", "c2", "10002"),
        ("o1", "c1", "10001"),
        ("o2", "c1", "10003"),
        ("o1", "c1", "10118"),
    ];

    async fn pairs(db: &DatabaseConnection, sql: &str) -> BTreeSet<(String, String)> {
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (
                    r.try_get_by_index(0).unwrap(),
                    r.try_get_by_index(1).unwrap(),
                )
            })
            .collect()
    }

    /// Migrates `db` to just before the social migration, records `BEFORE`, migrates the
    /// rest: each account's counterparts and zips are what the connections say.
    async fn backfills(db: DatabaseConnection) {
        Migrator::up(&db, Some(4)).await.unwrap();
        for (i, (officer, citizen, zip)) in BEFORE.iter().enumerate() {
            db.execute_unprepared(&format!(
                "INSERT INTO connections (id, request_id, officer_id, citizen_id, mode, zip, \
                 points_awarded, created_at) VALUES ('k{i}', 'r{i}', '{officer}', '{citizen}', \
                 'in_person', '{zip}', 10, '2026-11-30T10:00:0{i}Z')"
            ))
            .await
            .unwrap();
        }
        Migrator::up(&db, None).await.unwrap();
        let mut counterparts = BTreeSet::new();
        let mut zips = BTreeSet::new();
        for (o, c, z) in BEFORE {
            counterparts.insert((o.to_owned(), c.to_owned()));
            counterparts.insert((c.to_owned(), o.to_owned()));
            zips.insert((o.to_owned(), z.to_owned()));
            zips.insert((c.to_owned(), z.to_owned()));
        }
        assert_eq!(
            pairs(&db, "SELECT account_id, other_id FROM account_counterparts").await,
            counterparts
        );
        assert_eq!(
            pairs(&db, "SELECT account_id, zip FROM account_zips").await,
            zips
        );
    }

    #[tokio::test]
    async fn the_social_migration_fills_the_sets_from_earlier_connections() {
        let dir = std::env::temp_dir().join(format!("heyblue-mig-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/heyblue.db?mode=rwc", dir.display());
        backfills(Database::connect(&url).await.unwrap()).await;
        let _ = std::fs::remove_dir_all(dir);

        let admin = std::env::var("HEYBLUE_TEST_POSTGRES_URL").expect(
            "HEYBLUE_TEST_POSTGRES_URL must name a PostgreSQL server (scripts/test starts one)",
        );
        let name = format!("hb_{}", uuid::Uuid::new_v4().simple());
        let db = Database::connect(&admin).await.unwrap();
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        db.close().await.unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        backfills(Database::connect(&format!("{base}/{name}")).await.unwrap()).await;
    }
}
