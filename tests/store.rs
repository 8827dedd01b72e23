//! The store against real SQLite and real PostgreSQL (the URL of a server the test command
//! started: `HEYBLUE_TEST_POSTGRES_URL`; without it these tests fail, they do not skip).

use std::time::Duration;

use chrono::Utc;
use heyblue::store::{NewConnection, Store};
use sea_orm::{ConnectionTrait, Database};

async fn sqlite() -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("heyblue-store-{}", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}/heyblue.db?mode=rwc", dir.display());
    let s = Store::connect(&url).await.expect("sqlite connects");
    s.migrate().await.expect("migrates");
    (s, dir)
}

async fn postgres() -> Store {
    let admin = std::env::var("HEYBLUE_TEST_POSTGRES_URL").expect(
        "HEYBLUE_TEST_POSTGRES_URL must name a PostgreSQL server (scripts/test starts one)",
    );
    let name = format!("hb_{}", uuid::Uuid::new_v4().simple());
    let db = Database::connect(&admin).await.expect("postgres reachable");
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    db.close().await.unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let s = Store::connect(&format!("{base}/{name}"))
        .await
        .expect("postgres connects");
    s.migrate().await.expect("migrates");
    s
}

/// Runs `f` against both stores.
async fn both<F, Fut>(f: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (s, dir) = sqlite().await;
    f(s).await;
    let _ = std::fs::remove_dir_all(dir);
    f(postgres().await).await;
}

fn accepted(request: &str, officer: &str, citizen: &str) -> NewConnection {
    NewConnection {
        request_id: request.into(),
        officer_id: officer.into(),
        citizen_id: citizen.into(),
        mode: "in_person".into(),
        zip: "10001".into(),
        per_connection: 10,
        pair_cooldown: Duration::from_secs(86_400),
        at: Utc::now(),
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    both(|s| async move {
        s.migrate().await.unwrap();
        assert_eq!(s.balance("nobody").await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn an_accept_pays_both_sides_once_even_when_replayed() {
    both(|s| async move {
        let first = s
            .record_accepted(&accepted("r1", "o1", "c1"))
            .await
            .unwrap();
        assert_eq!(first.points_awarded, 10);
        assert_eq!((first.officer_balance, first.citizen_balance), (10, 10));
        assert!(!first.replayed);
        let again = s
            .record_accepted(&accepted("r1", "o1", "c1"))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(again.connection_id, first.connection_id);
        assert_eq!((again.officer_balance, again.citizen_balance), (10, 10));
        assert_eq!(s.connections_for_request("r1").await.unwrap(), 1);
        assert_eq!(s.events_of_kind("connection_established").await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn the_pair_cooldown_records_with_zero_points() {
    both(|s| async move {
        s.record_accepted(&accepted("r1", "o1", "c1"))
            .await
            .unwrap();
        let second = s
            .record_accepted(&accepted("r2", "o1", "c1"))
            .await
            .unwrap();
        assert_eq!(second.points_awarded, 0);
        assert_eq!((second.officer_balance, second.citizen_balance), (10, 10));
        assert_eq!(s.connections_for_request("r2").await.unwrap(), 1);
        let other = s
            .record_accepted(&accepted("r3", "o1", "c2"))
            .await
            .unwrap();
        assert_eq!(other.points_awarded, 10);
        assert_eq!(other.officer_balance, 20);
        // Past the cooldown the pair earns again.
        let mut later = accepted("r4", "o1", "c1");
        later.at = Utc::now() + chrono::Duration::seconds(86_401);
        assert_eq!(s.record_accepted(&later).await.unwrap().points_awarded, 10);
        assert_eq!(s.balance("c1").await.unwrap(), 20);
    })
    .await;
}

#[tokio::test]
async fn racing_accepts_of_one_request_pay_once() {
    both(|s| async move {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.record_accepted(&accepted("race", "o9", "c9")).await })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            ids.insert(
                t.await
                    .unwrap()
                    .expect("every racer gets an answer")
                    .connection_id,
            );
        }
        assert_eq!(ids.len(), 1, "one connection for all racers");
        assert_eq!(s.connections_for_request("race").await.unwrap(), 1);
        assert_eq!(s.balance("o9").await.unwrap(), 10);
        assert_eq!(s.balance("c9").await.unwrap(), 10);
    })
    .await;
}

mod interleavings {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// Accept request `r` between officer `o` and citizen `c` (replays included).
        Accept { r: u8, o: u8, c: u8 },
        /// The same accept from a second node at the same time.
        Race { r: u8, o: u8, c: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, 0u8..2, 0u8..3).prop_map(|(r, o, c)| Step::Accept { r, o, c }),
            (0u8..6, 0u8..2, 0u8..3).prop_map(|(r, o, c)| Step::Race { r, o, c }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Any sequence of accepts, replays and races: at most one connection per request,
        /// every ledger balance equals the points its connections awarded, and a request
        /// keeps the pair it was first recorded with.
        #[test]
        fn at_most_once_and_ledger_matches(steps in prop::collection::vec(step(), 1..25)) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let (s, dir) = sqlite().await;
                let mut first: std::collections::HashMap<u8, (u8, u8)> = Default::default();
                let mut awarded: std::collections::HashMap<String, i64> = Default::default();
                for st in steps {
                    let (r, o, c, racers) = match st {
                        Step::Accept { r, o, c } => (r, o, c, 1),
                        Step::Race { r, o, c } => (r, o, c, 2),
                    };
                    // A request id always belongs to one pair; replays reuse the first.
                    let (o, c) = *first.entry(r).or_insert((o, c));
                    let req = accepted(&format!("r{r}"), &format!("o{o}"), &format!("c{c}"));
                    let results = futures_util::future::join_all(
                        (0..racers).map(|_| s.record_accepted(&req)),
                    )
                    .await;
                    let fresh: Vec<_> = results
                        .into_iter()
                        .map(|x| x.expect("recorded"))
                        .filter(|x| !x.replayed)
                        .collect();
                    assert!(fresh.len() <= 1, "two racers both wrote");
                    for f in fresh {
                        *awarded.entry(req.officer_id.clone()).or_default() += f.points_awarded;
                        *awarded.entry(req.citizen_id.clone()).or_default() += f.points_awarded;
                    }
                    assert_eq!(s.connections_for_request(&req.request_id).await.unwrap(), 1);
                }
                for (account, points) in &awarded {
                    assert_eq!(s.balance(account).await.unwrap(), *points, "{account}");
                }
                let _ = std::fs::remove_dir_all(dir);
            });
        }
    }
}
