//! Accepted connections per second through the store: one `record_accepted` (connection,
//! two ledger entries, event, in one transaction) per accept, serial and 8 at a time.
//!
//! Run: `scripts/with-postgres cargo bench --bench store` (SQLite always; PostgreSQL when
//! `HEYBLUE_TEST_POSTGRES_URL` is set, which that script does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use heyblue::store::{NewConnection, Store};
use sea_orm::{ConnectionTrait, Database};

static N: AtomicU64 = AtomicU64::new(0);

fn accept() -> NewConnection {
    let n = N.fetch_add(1, Ordering::Relaxed);
    NewConnection {
        request_id: format!("bench-{n}"),
        officer_id: format!("o{}", n % 100),
        citizen_id: format!("c{n}"),
        mode: "virtual".into(),
        zip: "10001".into(),
        per_connection: 10,
        pair_cooldown: Duration::from_secs(86_400),
        at: Utc::now(),
    }
}

async fn stores() -> Vec<(&'static str, Store)> {
    let dir = std::env::temp_dir().join(format!("heyblue-bench-{}", uuid::Uuid::new_v4()));
    let sqlite = Store::connect(&format!("sqlite://{}/bench.db?mode=rwc", dir.display()))
        .await
        .unwrap();
    sqlite.migrate().await.unwrap();
    let mut v = vec![("sqlite", sqlite)];
    if let Ok(admin) = std::env::var("HEYBLUE_TEST_POSTGRES_URL") {
        let name = format!("hb_bench_{}", uuid::Uuid::new_v4().simple());
        let db = Database::connect(&admin).await.unwrap();
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let pg = Store::connect(&format!("{base}/{name}")).await.unwrap();
        pg.migrate().await.unwrap();
        v.push(("postgres", pg));
    } else {
        eprintln!("HEYBLUE_TEST_POSTGRES_URL not set: PostgreSQL not measured");
    }
    v
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stores = rt.block_on(stores());
    let mut g = c.benchmark_group("record_accepted");
    for (name, store) in &stores {
        g.bench_function(format!("{name}/serial"), |b| {
            b.to_async(&rt)
                .iter(|| async { store.record_accepted(&accept()).await.unwrap() })
        });
        g.bench_function(format!("{name}/8_concurrent"), |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let start = Instant::now();
                let per = iters.div_ceil(8);
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let s = store.clone();
                        tokio::spawn(async move {
                            for _ in 0..per {
                                s.record_accepted(&accept()).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                // Time per accept, so criterion's figure is comparable with the serial one.
                start.elapsed() * iters as u32 / (per * 8) as u32
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
