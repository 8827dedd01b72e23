//! The store against real SQLite and real PostgreSQL (the URL of a server the test command
//! started: `HEYBLUE_TEST_POSTGRES_URL`; without it these tests fail, they do not skip).

use std::time::Duration;

use chrono::Utc;
use heyblue::store::{NewConnection, Store};
use sea_orm::{ConnectionTrait, Database};

/// A fresh SQLite database: its URL and directory.
fn sqlite_url() -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("heyblue-store-{}", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}/heyblue.db?mode=rwc", dir.display());
    (url, dir)
}

/// A fresh database on the test PostgreSQL server: its URL.
async fn postgres_url() -> String {
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
    format!("{base}/{name}")
}

/// The store at `url`, migrated.
async fn open(url: &str) -> Store {
    let s = Store::connect(url).await.expect("store connects");
    s.migrate().await.expect("migrates");
    s
}

async fn sqlite() -> (Store, std::path::PathBuf) {
    let (url, dir) = sqlite_url();
    (open(&url).await, dir)
}

async fn postgres() -> Store {
    open(&postgres_url().await).await
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

/// `both`, with a connection of the test's own to the same database, to look at tables the
/// store shows nobody.
async fn both_with_sql<F, Fut>(f: F)
where
    F: Fn(Store, sea_orm::DatabaseConnection) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (url, dir) = sqlite_url();
    f(open(&url).await, Database::connect(&url).await.unwrap()).await;
    let _ = std::fs::remove_dir_all(dir);
    let url = postgres_url().await;
    f(open(&url).await, Database::connect(&url).await.unwrap()).await;
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
async fn postgres_over_tls_with_sslmode_require() {
    let url = std::env::var("HEYBLUE_TEST_POSTGRES_URL").expect(
        "HEYBLUE_TEST_POSTGRES_URL must name a PostgreSQL server (scripts/test starts one)",
    );
    let tls = Store::connect(&format!("{url}?sslmode=require"))
        .await
        .expect("connects over TLS");
    assert!(
        tls.encrypted().await.unwrap(),
        "sslmode=require is encrypted"
    );
    tls.migrate().await.expect("migrates over TLS");
    let plain = Store::connect(&format!("{url}?sslmode=disable"))
        .await
        .unwrap();
    assert!(!plain.encrypted().await.unwrap(), "the check can tell");
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
                // The profile projection, fed from the outbox, agrees with the ledger.
                while !s.publish_batch(7).await.unwrap().is_empty() {}
                for (account, points) in &awarded {
                    assert_eq!(s.balance(account).await.unwrap(), *points, "{account}");
                    let st = s.stats(account).await.unwrap();
                    assert_eq!((st.earned, st.spent), (*points, 0), "{account}");
                }
                let _ = std::fs::remove_dir_all(dir);
            });
        }
    }
}

// ---- rewards: redemptions, donations, idempotency, imports -------------------------------

use heyblue::import::Kind;
use heyblue::store::rewards::{IdempotencyKey, Refusal, VoucherSigner};

async fn import(s: &Store, kind: Kind, body: &str) -> heyblue::import::Report {
    let limits =
        heyblue::import::ImportLimits::from_settings(&heyblue::config::Settings::defaults().limits);
    s.import_file(kind, body.as_bytes().to_vec().into(), None, limits, None)
        .await
        .expect("store up")
        .expect("structurally fine")
}

/// One retailer `r1`, offer `o10` (10 points, unlimited) and `o-last2` (10 points, 2 left),
/// charity `ch1`.
async fn storefront(s: &Store) {
    let r = import(
        s,
        Kind::Retailers,
        "retailer_id,name,website\nr1,Corner Café,https://cafe.example\n",
    )
    .await;
    assert_eq!(r.accepted, 1);
    let r = import(
        s,
        Kind::Offers,
        "offer_id,retailer,title,points_cost,valid_until,remaining\n\
         o10,r1,Coffee,10,2099-12-31,\n\
         o-last2,Corner Café,Muffin,10,2099-12-31,2\n\
         o-old,r1,Stale,10,2001-01-01,\n\
         o-bad,nobody,X,10,2099-12-31,\n",
    )
    .await;
    assert_eq!(r.accepted, 3, "{r:?}");
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].row, 4);
    import(
        s,
        Kind::Charities,
        r#"[{"charity_id":"ch1","name":"Food Bank"}]"#,
    )
    .await;
}

/// Gives `account` `n`×10 points through real connections with distinct officers.
async fn earn(s: &Store, account: &str, n: usize) {
    for i in 0..n {
        let officer = format!("earn-{account}-{i}");
        s.record_accepted(&accepted(&format!("req-{officer}"), &officer, account))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn concurrent_redemptions_never_overspend() {
    both(|s| async move {
        storefront(&s).await;
        earn(&s, "c1", 3).await;
        let signer = VoucherSigner::new("k");
        let tries = (0..8).map(|_| s.redeem_offer("c1", "o10", &signer, None));
        let results = futures_util::future::join_all(tries).await;
        let ok: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().unwrap().as_ref().ok())
            .collect();
        assert_eq!(ok.len(), 3, "{results:?}");
        assert!(results.iter().all(|r| matches!(
            r.as_ref().unwrap(),
            Ok(_) | Err(Refusal::InsufficientPoints)
        )));
        assert_eq!(s.balance("c1").await.unwrap(), 0);
        for v in &ok {
            assert!(signer.check(&v.voucher_code).is_some());
            assert!(s.voucher(&v.voucher_code).await.unwrap().is_some());
        }
        assert_eq!(s.events_of_kind("voucher_issued").await.unwrap(), 3);
    })
    .await;
}

#[tokio::test]
async fn stock_runs_out_exactly() {
    both(|s| async move {
        storefront(&s).await;
        let signer = VoucherSigner::new("k");
        for c in 0..5 {
            earn(&s, &format!("c{c}"), 1).await;
        }
        let accounts: Vec<String> = (0..5).map(|c| format!("c{c}")).collect();
        let tries = accounts
            .iter()
            .map(|a| s.redeem_offer(a, "o-last2", &signer, None));
        let results = futures_util::future::join_all(tries).await;
        let ok = results
            .iter()
            .filter(|r| r.as_ref().unwrap().is_ok())
            .count();
        let out = results
            .iter()
            .filter(|r| matches!(r.as_ref().unwrap(), Err(Refusal::OfferExhausted)))
            .count();
        assert_eq!((ok, out), (2, 3), "{results:?}");
        // The refused kept their points.
        let total: i64 = futures_util::future::join_all(accounts.iter().map(|a| s.balance(a)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .sum();
        assert_eq!(total, 30);
        let expired = s.redeem_offer("c0", "o-old", &signer, None).await.unwrap();
        assert_eq!(expired, Err(Refusal::OfferExpired));
        let unknown = s.redeem_offer("c0", "o-bad", &signer, None).await.unwrap();
        assert_eq!(unknown, Err(Refusal::UnknownOffer));
    })
    .await;
}

#[tokio::test]
async fn a_keyed_request_acts_once_even_when_raced() {
    both(|s| async move {
        storefront(&s).await;
        earn(&s, "c1", 5).await;
        let signer = VoucherSigner::new("k");
        let key = IdempotencyKey {
            account: "c1".into(),
            key: "k-1".into(),
            fingerprint: "f".into(),
        };
        let tries = (0..6).map(|_| s.redeem_offer("c1", "o10", &signer, Some(&key)));
        let results: Vec<_> = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
        assert_eq!(s.balance("c1").await.unwrap(), 40);
        // The same key for another request is refused, and changes nothing.
        let other = IdempotencyKey {
            fingerprint: "g".into(),
            ..key.clone()
        };
        assert_eq!(
            s.redeem_offer("c1", "o10", &signer, Some(&other))
                .await
                .unwrap(),
            Err(Refusal::IdempotencyKeyReused)
        );
        // A refusal is an outcome too: replayed, even after the balance changed.
        let key2 = IdempotencyKey {
            key: "k-2".into(),
            ..key.clone()
        };
        let d = s.donate("c1", "ch-unknown", 5, Some(&key2)).await.unwrap();
        assert_eq!(d, Err(Refusal::UnknownCharity));
        assert_eq!(
            s.donate("c1", "ch-unknown", 5, Some(&key2)).await.unwrap(),
            d
        );
        assert_eq!(s.balance("c1").await.unwrap(), 40);
    })
    .await;
}

#[tokio::test]
async fn donations_debit_once_and_never_below_zero() {
    both(|s| async move {
        storefront(&s).await;
        earn(&s, "o1", 2).await;
        let tries = (0..4).map(|_| s.donate("o1", "ch1", 8, None));
        let results = futures_util::future::join_all(tries).await;
        let ok = results
            .iter()
            .filter(|r| r.as_ref().unwrap().is_ok())
            .count();
        assert_eq!(ok, 2, "{results:?}");
        assert_eq!(s.balance("o1").await.unwrap(), 4);
        assert_eq!(s.events_of_kind("donation_made").await.unwrap(), 2);
        assert_eq!(
            s.donate("o1", "ch1", 5, None).await.unwrap(),
            Err(Refusal::InsufficientPoints)
        );
    })
    .await;
}

#[tokio::test]
async fn vouchers_are_used_once_and_only_by_their_retailer() {
    both(|s| async move {
        storefront(&s).await;
        earn(&s, "c1", 1).await;
        let signer = VoucherSigner::new("k");
        let v = s
            .redeem_offer("c1", "o10", &signer, None)
            .await
            .unwrap()
            .unwrap();
        let code = &v.voucher_code;
        assert_eq!(
            s.redeem_voucher(code, "r2", Some("r2"), None)
                .await
                .unwrap(),
            Err(Refusal::WrongRetailer)
        );
        let used = s
            .redeem_voucher(code, "r1", Some("r1"), None)
            .await
            .unwrap()
            .unwrap();
        assert!(used.redeemed);
        assert_eq!(
            s.redeem_voucher(code, "admin", None, None).await.unwrap(),
            Err(Refusal::VoucherAlreadyRedeemed)
        );
        assert!(s.voucher(code).await.unwrap().unwrap().redeemed);
        assert_eq!(
            s.redeem_voucher("NOPE", "admin", None, None).await.unwrap(),
            Err(Refusal::UnknownVoucher)
        );
    })
    .await;
}

#[tokio::test]
async fn reimporting_a_file_changes_nothing_and_updates_in_place() {
    both(|s| async move {
        storefront(&s).await;
        storefront(&s).await;
        let page = s.offers_page(100, None).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|o| o.offer_id.as_str()).collect();
        assert_eq!(ids, vec!["o-last2", "o10"], "expired offers are not listed");
        assert_eq!(page[1].retailer, "Corner Café");
        let r = import(&s, Kind::Offers, "offer_id,retailer,title,points_cost,valid_until,remaining\no10,r1,Tea,12,2099-12-31,7\n").await;
        assert_eq!(r.accepted, 1);
        let page = s.offers_page(100, Some("o-last2")).await.unwrap();
        assert_eq!((page[0].title.as_str(), page[0].points_cost, page[0].remaining), ("Tea", 12, Some(7)));
        assert_eq!(s.charities_page(10, None).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn racing_publishers_project_each_event_once() {
    both(|s| async move {
        storefront(&s).await;
        earn(&s, "c1", 6).await;
        let signer = VoucherSigner::new("k");
        s.redeem_offer("c1", "o10", &signer, None)
            .await
            .unwrap()
            .unwrap();
        earn(&s, "o1", 2).await;
        s.donate("o1", "ch1", 5, None).await.unwrap().unwrap();
        // Four publishers drain the outbox at once, in small batches.
        let drain = |s: Store| async move {
            let mut n = 0;
            loop {
                let b = s.publish_batch(3).await.unwrap();
                if b.is_empty() {
                    return n;
                }
                n += b.len();
            }
        };
        let counts = futures_util::future::join_all((0..4).map(|_| drain(s.clone()))).await;
        // The accepts', the redemption's and the donation's events, then the trophies they
        // earned, each awarded once however the publishers raced: c1's first connection
        // and five different officers, the eight officers' first connections, o1's first
        // connection and first donation.
        let trophies = s.events_of_kind("trophy_awarded").await.unwrap() as usize;
        assert_eq!(trophies, 2 + 8 + 2);
        let events = 6 * 3 + 1 + 2 * 3 + 1 + trophies;
        assert_eq!(counts.iter().sum::<usize>(), events, "{counts:?}");
        let c1 = s.stats("c1").await.unwrap();
        assert_eq!((c1.earned, c1.spent, c1.connections), (60, 10, 6));
        assert_eq!(c1.earned - c1.spent, s.balance("c1").await.unwrap());
        let o1 = s.stats("o1").await.unwrap();
        assert_eq!((o1.earned, o1.spent, o1.connections), (20, 5, 2));
        assert_eq!(s.stats("nobody").await.unwrap(), Default::default());
    })
    .await;
}

/// The cluster's projection path: events read from the stream (at least once) are folded
/// once each, however often one is delivered; events sent to the stream are marked
/// published only when the stream stored them.
#[tokio::test]
async fn stream_events_fold_once_and_publish_only_when_stored() {
    use heyblue::events::{DomainEvent, Event};
    both(|s| async move {
        let e = |account: &str| DomainEvent::PointsAwarded {
            account_id: account.into(),
            delta: 10,
            reference: "c1".into(),
            kind: "connection".into(),
        };
        let batch = vec![("7".to_owned(), e("a")), ("8".to_owned(), e("a"))];
        assert_eq!(s.apply_events(&batch).await.unwrap(), 2);
        // Delivered again, with one new event: only the new one counts.
        let again = vec![("8".to_owned(), e("a")), ("9".to_owned(), e("b"))];
        assert_eq!(s.apply_events(&again).await.unwrap(), 1);
        assert_eq!(s.stats("a").await.unwrap().earned, 20);
        assert_eq!(s.stats("b").await.unwrap().earned, 10);

        // An accept writes an outbox event; a failing stream leaves it unpublished and
        // unfolded, a working one marks it published (and still does not fold it: the
        // stream's consumer does).
        s.record_accepted(&accepted("r1", "o1", "c1"))
            .await
            .unwrap();
        let failed = s
            .publish_batch_with(10, async |_: &[Event]| Err("down".to_owned()))
            .await
            .unwrap();
        assert!(failed.is_err());
        let sent = s
            .publish_batch_with(10, async |evs: &[Event]| {
                assert!(!evs.is_empty());
                Ok(())
            })
            .await
            .unwrap()
            .unwrap();
        assert!(
            !sent.is_empty(),
            "the events left after the failure are sent"
        );
        let none = s
            .publish_batch_with(10, async |_: &[Event]| Ok(()))
            .await
            .unwrap()
            .unwrap();
        assert!(none.is_empty(), "published once");
        assert_eq!(s.stats("o1").await.unwrap().connections, 0);
    })
    .await;
}

// ---- trophies ----------------------------------------------------------------------------

mod trophies {
    use super::*;
    use heyblue::config::{TrophyMeasure, TrophyRule};
    use heyblue::events::DomainEvent;

    fn rule(id: &str, measure: TrophyMeasure, at_least: i64) -> TrophyRule {
        TrophyRule {
            id: id.into(),
            name: format!("the {id}"),
            measure,
            at_least,
        }
    }

    fn rules() -> Vec<TrophyRule> {
        vec![
            rule("first", TrophyMeasure::Connections, 1),
            rule("two_people", TrophyMeasure::DistinctCounterparts, 2),
            rule("two_zips", TrophyMeasure::DistinctZips, 2),
            rule("first_donation", TrophyMeasure::Donations, 1),
            rule("donated_15", TrophyMeasure::PointsDonated, 15),
        ]
    }

    async fn held(s: &Store, account: &str) -> Vec<String> {
        let mut v: Vec<String> = s
            .trophies(account)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.trophy_id)
            .collect();
        v.sort();
        v
    }

    fn in_zip(request: &str, officer: &str, citizen: &str, zip: &str) -> NewConnection {
        NewConnection {
            zip: zip.into(),
            ..accepted(request, officer, citizen)
        }
    }

    #[tokio::test]
    async fn awarded_once_by_the_rules_and_again_by_new_rules_on_replay() {
        both(|s| async move {
            let s = s.with_trophy_rules(rules());
            storefront(&s).await;
            s.record_accepted(&in_zip("r1", "o1", "c1", "10001"))
                .await
                .unwrap();
            s.record_accepted(&in_zip("r2", "o1", "c2", "10002"))
                .await
                .unwrap();
            while !s.publish_batch(2).await.unwrap().is_empty() {}
            assert_eq!(held(&s, "o1").await, ["first", "two_people", "two_zips"]);
            assert_eq!(held(&s, "c1").await, ["first"]);
            assert_eq!(held(&s, "c2").await, ["first"]);
            // Each award is an event, published like the rest.
            assert_eq!(s.events_of_kind("trophy_awarded").await.unwrap(), 5);
            assert!(s.unpublished_events(10).await.unwrap().is_empty());

            // Donations: 10 points earns the first, 15 in all the second.
            s.donate("o1", "ch1", 10, None).await.unwrap().unwrap();
            while !s.publish_batch(10).await.unwrap().is_empty() {}
            assert!(held(&s, "o1").await.contains(&"first_donation".to_owned()));
            assert!(!held(&s, "o1").await.contains(&"donated_15".to_owned()));
            s.donate("o1", "ch1", 5, None).await.unwrap().unwrap();
            while !s.publish_batch(10).await.unwrap().is_empty() {}
            assert!(held(&s, "o1").await.contains(&"donated_15".to_owned()));

            // Replaying with the same rules awards nothing; with a new rule, just it.
            assert_eq!(s.replay_trophies(&rules()).await.unwrap(), (3, 0));
            let mut more = rules();
            more.push(rule("two_connections", TrophyMeasure::Connections, 2));
            assert_eq!(s.replay_trophies(&more).await.unwrap(), (3, 1));
            assert_eq!(s.replay_trophies(&more).await.unwrap(), (3, 0));
            assert!(held(&s, "o1").await.contains(&"two_connections".to_owned()));
            assert_eq!(held(&s, "c1").await, ["first"]);
            assert_eq!(s.events_of_kind("trophy_awarded").await.unwrap(), 8);
        })
        .await;
    }

    /// Connections folded while no rule counted anything still count when rules are
    /// set later and replayed: distinct counterparts and zips are kept whatever the rules.
    #[tokio::test]
    async fn rules_set_after_the_connections_award_them_on_replay() {
        both(|s| async move {
            let s = s.with_trophy_rules(Vec::new());
            s.record_accepted(&in_zip("r1", "o1", "c1", "10001"))
                .await
                .unwrap();
            s.record_accepted(&in_zip("r2", "o1", "c2", "10002"))
                .await
                .unwrap();
            while !s.publish_batch(2).await.unwrap().is_empty() {}
            assert!(held(&s, "o1").await.is_empty());
            assert_eq!(s.replay_trophies(&rules()).await.unwrap(), (3, 5));
            assert_eq!(held(&s, "o1").await, ["first", "two_people", "two_zips"]);
        })
        .await;
    }

    mod deliveries {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(16))]

            /// Connections' events delivered by the cluster's stream any number of times,
            /// in any order, batched anyhow: every account ends with exactly the trophies
            /// the rules give its recorded connections (a brute-force count), each once,
            /// with one `trophy_awarded` event per trophy.
            #[test]
            fn exactly_once_under_duplicated_and_reordered_events(
                pairs in prop::collection::vec((0u8..3, 0u8..4, 0u8..3), 1..12),
                deliveries in prop::collection::vec((any::<prop::sample::Index>(), 1usize..4), 1..30),
            ) {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async move {
                    let (s, dir) = sqlite().await;
                    let s = s.with_trophy_rules(rules());
                    let mut events = Vec::new();
                    for (i, (o, c, z)) in pairs.iter().enumerate() {
                        let zip = format!("1000{z}");
                        let req = in_zip(&format!("r{i}"), &format!("o{o}"), &format!("c{c}"), &zip);
                        let r = s.record_accepted(&req).await.unwrap();
                        events.push((format!("e{i}"), DomainEvent::ConnectionEstablished {
                            connection_id: r.connection_id,
                            request_id: req.request_id.clone(),
                            officer_id: req.officer_id.clone(),
                            citizen_id: req.citizen_id.clone(),
                            mode: req.mode.clone(),
                            zip,
                            points_awarded: r.points_awarded,
                        }));
                    }
                    // Random batches of random events (repeats included), then every event
                    // once more so each was delivered at least once.
                    for (pick, n) in &deliveries {
                        let at = pick.index(events.len());
                        let batch: Vec<_> = events.iter().cycle().skip(at).take(*n).cloned().collect();
                        s.apply_events(&batch).await.unwrap();
                    }
                    let mut all = events.clone();
                    all.reverse();
                    s.apply_events(&all).await.unwrap();

                    let mut expected_total = 0;
                    for a in (0..3).map(|o| format!("o{o}")).chain((0..4).map(|c| format!("c{c}"))) {
                        let mine: Vec<_> = pairs.iter().filter(|(o, c, _)| {
                            a == format!("o{o}") || a == format!("c{c}")
                        }).collect();
                        let others: std::collections::HashSet<String> = mine.iter().map(|(o, c, _)| {
                            if a.starts_with('o') { format!("c{c}") } else { format!("o{o}") }
                        }).collect();
                        let zips: std::collections::HashSet<u8> = mine.iter().map(|(_, _, z)| *z).collect();
                        let mut want = Vec::new();
                        if !mine.is_empty() { want.push("first".to_owned()); }
                        if others.len() >= 2 { want.push("two_people".to_owned()); }
                        if zips.len() >= 2 { want.push("two_zips".to_owned()); }
                        want.sort();
                        expected_total += want.len() as u64;
                        prop_assert_eq!(held(&s, &a).await, want, "{}", a);
                    }
                    prop_assert_eq!(s.events_of_kind("trophy_awarded").await.unwrap(), expected_total);
                    let _ = std::fs::remove_dir_all(dir);
                    Ok(())
                })?;
            }
        }
    }
}

/// A webhook removed while one of its deliveries is attempted: the attempt's record finds
/// the delivery gone and leaves nothing behind; a webhook removed after an attempt was
/// recorded takes the attempt with it.
#[tokio::test]
async fn a_webhook_removed_mid_attempt_leaves_no_attempt_behind() {
    use heyblue::store::webhooks::{After, Attempt};
    both_with_sql(|s, sql| async move {
        let events = ["trophy.awarded".to_owned()];
        let url = "https://93.184.215.14/h";
        let first = s
            .create_webhook(url, &events, "secret", 10)
            .await
            .unwrap()
            .unwrap();
        let second = s
            .create_webhook(url, &events, "secret", 10)
            .await
            .unwrap()
            .unwrap();
        s.ensure_account("c1", "citizen", "C One").await.unwrap();
        s.update_profile("c1", None, Some(true)).await.unwrap();
        earn(&s, "c1", 1).await;
        // The connection's round, then its trophies' (queued for both webhooks).
        while !s.publish_batch(100).await.unwrap().is_empty() {}
        let now = Utc::now();
        let due = s.due_deliveries(now, 10).await.unwrap();
        assert_eq!(due.len(), 2, "{due:?}");
        let attempt = Attempt {
            status: Some(200),
            latency_ms: 3,
            error: None,
        };
        let later = now + chrono::Duration::minutes(1);
        for d in &due {
            assert!(s.lease_delivery(d.id, now, later).await.unwrap());
        }
        let of = |w: &str| due.iter().find(|d| d.webhook_id == w).unwrap().clone();
        // The first is removed before its attempt is recorded; the second after.
        assert!(s.delete_webhook(&first.webhook_id).await.unwrap());
        s.record_attempt(&of(&first.webhook_id), now, &attempt, After::Delivered)
            .await
            .unwrap();
        s.record_attempt(&of(&second.webhook_id), now, &attempt, After::Delivered)
            .await
            .unwrap();
        let count = |table: &'static str| {
            let sql = sql.clone();
            async move {
                let row = sql
                    .query_one_raw(sea_orm::Statement::from_string(
                        sql.get_database_backend(),
                        format!("SELECT COUNT(*) AS n FROM {table}"),
                    ))
                    .await
                    .unwrap()
                    .unwrap();
                row.try_get::<i64>("", "n").unwrap()
            }
        };
        assert_eq!(count("webhook_attempts").await, 1, "the second's only");
        assert!(s.delete_webhook(&second.webhook_id).await.unwrap());
        assert_eq!(count("webhook_attempts").await, 0);
        assert_eq!(count("webhook_deliveries").await, 0);
    })
    .await;
}
