//! Admin workloads at size: importing a 100k-row offers file, and the connections report
//! over 1M connections grouped by day, zip, state and officer. Prints wall times.
//!
//! Run: `scripts/with-postgres cargo bench --bench admin` (SQLite always; PostgreSQL when
//! `HEYBLUE_TEST_POSTGRES_URL` is set, which that script does).

use std::time::Instant;

use chrono::NaiveDate;
use heyblue::geo::ZipTable;
use heyblue::import::Kind;
use heyblue::store::Store;
use heyblue::store::reports::GroupBy;
use sea_orm::{ConnectionTrait, Database, TransactionTrait};

const OFFERS: usize = 100_000;
const CONNECTIONS: usize = 1_000_000;

async fn databases() -> Vec<(&'static str, String)> {
    let dir = std::env::temp_dir().join(format!("heyblue-bench-{}", uuid::Uuid::new_v4()));
    let mut v = vec![(
        "sqlite",
        format!("sqlite://{}/bench.db?mode=rwc", dir.display()),
    )];
    if let Ok(admin) = std::env::var("HEYBLUE_TEST_POSTGRES_URL") {
        let name = format!("hb_bench_{}", uuid::Uuid::new_v4().simple());
        let db = Database::connect(&admin).await.unwrap();
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        v.push(("postgres", format!("{base}/{name}")));
    } else {
        eprintln!("HEYBLUE_TEST_POSTGRES_URL not set: PostgreSQL not measured");
    }
    v
}

fn offers_csv() -> String {
    let mut csv = String::from("offer_id,retailer,title,points_cost,valid_until,remaining\n");
    for i in 0..OFFERS {
        csv.push_str(&format!(
            "offer-{i:06},r{},\"Offer {i}, large\",{},2099-12-31,{}\n",
            i % 100,
            i % 500 + 1,
            if i % 3 == 0 {
                String::new()
            } else {
                (i % 1000).to_string()
            }
        ));
    }
    csv
}

/// 1M connections over 365 days, 2,000 zips and 5,000 officers, inserted in bulk.
async fn seed_connections(url: &str, zips: &[String]) {
    let db = Database::connect(url).await.unwrap();
    let txn = db.begin().await.unwrap();
    let day0 = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let mut sql = String::new();
    for chunk in 0..CONNECTIONS / 1000 {
        sql.clear();
        sql.push_str("INSERT INTO connections (id, request_id, officer_id, citizen_id, mode, zip, points_awarded, created_at) VALUES ");
        for j in 0..1000 {
            let i = chunk * 1000 + j;
            let day = day0 + chrono::Days::new((i % 365) as u64);
            let at = format!("{day}T{:02}:{:02}:00+00:00", i % 24, i % 60);
            if j > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('c{i}','r{i}','officer-{}','citizen-{}','in_person','{}',{},'{at}')",
                i % 5000,
                i % 200_000,
                zips[i % zips.len()],
                if i % 7 == 0 { 0 } else { 10 }
            ));
        }
        txn.execute_unprepared(&sql).await.unwrap();
    }
    txn.commit().await.unwrap();
    db.close().await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let zips = ZipTable::embedded();
    let codes: Vec<String> = (0..2000u32)
        .map(|i| zips.get(i * 15).code.to_string())
        .collect();
    let limits =
        heyblue::import::ImportLimits::from_settings(&heyblue::config::Settings::defaults().limits);
    rt.block_on(async {
        for (name, url) in databases().await {
            let store = Store::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            let mut retailers = String::from("retailer_id,name,website\n");
            for r in 0..100 {
                retailers.push_str(&format!("r{r},Retailer {r},\n"));
            }
            store
                .import_file(Kind::Retailers, retailers.into_bytes().into(), Some(true), limits, None)
                .await
                .unwrap()
                .unwrap();
            let csv = offers_csv();
            let mb = csv.len() as f64 / 1_048_576.0;
            for pass in ["insert", "re-import (upsert)"] {
                let t = Instant::now();
                let r = store
                    .import_file(Kind::Offers, csv.clone().into_bytes().into(), Some(true), limits, None)
                    .await
                    .unwrap()
                    .unwrap();
                let s = t.elapsed().as_secs_f64();
                assert_eq!(r.accepted, OFFERS);
                println!(
                    "{name}: import {OFFERS} offers ({mb:.1} MiB), {pass}: {s:.2} s = {:.0} rows/s",
                    OFFERS as f64 / s
                );
            }
            let t = Instant::now();
            seed_connections(&url, &codes).await;
            println!("{name}: seeded {CONNECTIONS} connections in {:.1} s", t.elapsed().as_secs_f64());
            let from = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
            let to = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
            for (g, label) in [
                (GroupBy::Day, "day"),
                (GroupBy::Zip, "zip"),
                (GroupBy::State, "state"),
                (GroupBy::Officer, "officer"),
            ] {
                let mut times = Vec::new();
                let mut rows = 0;
                for _ in 0..3 {
                    let t = Instant::now();
                    let (r, _) = store
                        .connections_report(from, to, g, |z| {
                            zips.by_code(z).map(|id| zips.get(id).state.to_string())
                        }, 100_000)
                        .await
                        .unwrap();
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                    rows = r.len();
                }
                times.sort_by(f64::total_cmp);
                println!(
                    "{name}: report over {CONNECTIONS} connections, group_by={label}: {rows} rows, median {:.0} ms (min {:.0}, max {:.0})",
                    times[1], times[0], times[2]
                );
            }
            store.close().await.unwrap();
        }
    });
}
