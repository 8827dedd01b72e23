//! Connection requests over sockets: request → offer → accept | decline | timeout | cancel,
//! recorded once with points for both sides.

use heyblue::actors::session::SessionMsg;
use serde_json::json;

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);
const NEAR: (f64, f64) = (40.7510, -73.9972); // ~45 m north

#[tokio::test]
async fn accept_records_once_and_pays_both_sides() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let pending = c.request("o1", "in_person").await;
    assert_eq!(pending["type"], "connection_pending", "{pending}");
    assert_eq!(pending["officer_id"], "o1");
    let request_id = pending["request_id"].as_str().unwrap().to_owned();

    let asked = o.recv_type("connection_requested").await;
    assert_eq!(asked["request_id"], request_id.as_str());
    assert_eq!(asked["citizen"]["citizen_id"], "c1");
    assert_eq!(asked["citizen"]["display_name"], "Name c1");
    assert_eq!(asked["mode"], "in_person");
    assert!((asked["distance_m"].as_f64().unwrap() - 44.5).abs() < 1.0);

    o.send(json!({"type":"respond","request_id":request_id,"accept":true}))
        .await;
    let est = o.recv_type("connection_established").await;
    assert_eq!(est["officer_id"], "o1");
    assert_eq!(est["citizen_id"], "c1");
    assert_eq!(est["points_awarded"], 10);
    assert_eq!(est["balance"], 10);
    let resp = c.recv_type("connection_response").await;
    assert_eq!(resp["status"], "accepted");
    let cest = c.recv_type("connection_established").await;
    assert_eq!(cest["connection_id"], est["connection_id"]);
    assert_eq!(cest["balance"], 10);

    // The same respond again: the same answer, nothing recorded twice.
    o.send(json!({"type":"respond","request_id":request_id,"accept":true}))
        .await;
    let again = o.recv_type("connection_established").await;
    assert_eq!(again, est);
    let store = &app.running.ctx().store;
    assert_eq!(store.connections_for_request(&request_id).await.unwrap(), 1);
    assert_eq!(store.balance("o1").await.unwrap(), 10);
    assert_eq!(store.balance("c1").await.unwrap(), 10);

    // Within the pair cooldown a new connection is recorded with 0 points.
    let p = c.request("o1", "virtual").await;
    let id2 = p["request_id"].as_str().unwrap().to_owned();
    o.recv_type("connection_requested").await;
    o.send(json!({"type":"respond","request_id":id2,"accept":true}))
        .await;
    let est2 = o.recv_type("connection_established").await;
    assert_eq!(est2["points_awarded"], 0);
    assert_eq!(est2["balance"], 10);
    app.running.shutdown().await;
}

#[tokio::test]
async fn refusals_name_the_reason() {
    let app = spawn_app().await;
    let _far = app.officer("far", HERE.0 + 0.0027, HERE.1).await; // ~300 m
    let mut near = app.officer("near", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let (mut c2, _) = app.citizen("c2", HERE.0, HERE.1).await;

    assert_eq!(
        c.request("ghost", "virtual").await["code"],
        "officer_unavailable"
    );
    assert_eq!(c.request("far", "in_person").await["code"], "too_far");
    assert_eq!(
        c.request("near", "in_person").await["type"],
        "connection_pending"
    );
    near.recv_type("connection_requested").await;
    assert_eq!(c.request("far", "virtual").await["code"], "request_pending");
    assert_eq!(c2.request("near", "virtual").await["code"], "officer_busy");
    let bad = json!({"type":"respond","request_id":"nope","accept":true});
    near.send(bad).await;
    assert_eq!(near.recv().await["code"], "unknown_request");
    app.running.shutdown().await;
}

#[tokio::test]
async fn decline_tells_the_citizen_only() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let id = ask(&mut o, &mut c, "o1", "virtual").await;
    o.send(json!({"type":"respond","request_id":id,"accept":false}))
        .await;
    let r = c.recv_type("connection_response").await;
    assert_eq!(
        (r["request_id"].as_str(), r["status"].as_str()),
        (Some(id.as_str()), Some("declined"))
    );
    // Nothing more for the officer; it is free for the next request.
    o.ping().await;
    assert_eq!(
        c.request("o1", "virtual").await["type"],
        "connection_pending"
    );
    assert_eq!(app.recorded(&id).await, 0);
    app.running.shutdown().await;
}

#[tokio::test]
async fn unanswered_requests_expire_for_both() {
    let app = spawn_app_with(|s| s.connections.request_timeout_s = 1).await;
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let id = ask(&mut o, &mut c, "o1", "virtual").await;
    let ro = o.recv_type("connection_response").await;
    let rc = c.recv_type("connection_response").await;
    assert_eq!(ro["status"], "expired");
    assert_eq!(rc["status"], "expired");
    assert_eq!(rc["request_id"], id.as_str());
    app.running.shutdown().await;
}

#[tokio::test]
async fn a_citizen_who_leaves_cancels_its_request() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let id = ask(&mut o, &mut c, "o1", "virtual").await;
    drop(c);
    let r = o.recv_type("connection_response").await;
    assert_eq!(
        (r["request_id"].as_str(), r["status"].as_str()),
        (Some(id.as_str()), Some("cancelled"))
    );
    // Responding now finds nothing pending.
    o.send(json!({"type":"respond","request_id":id,"accept":true}))
        .await;
    // Refused before anything reached the store.
    assert_eq!(o.recv().await["code"], "unknown_request");
    assert_eq!(app.recorded(&id).await, 0);
    app.running.shutdown().await;
}

#[tokio::test]
async fn a_panic_in_the_officer_session_closes_it_with_1011_and_ends_the_request() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let id = ask(&mut o, &mut c, "o1", "virtual").await;
    let panics = app.metric("session_panics_total").await;
    // A handler of the officer's session panics.
    let entry = app.running.ctx().sessions.get("o1").unwrap();
    entry.handle.send(SessionMsg::Crash).unwrap();
    let (_, code) = o.closed().await;
    assert_eq!(code, Some(1011));
    // The session still left everything: the citizen's request ended ...
    let r = c.recv_type("connection_response").await;
    assert_eq!(
        (r["request_id"].as_str(), r["status"].as_str()),
        (Some(id.as_str()), Some("cancelled"))
    );
    // ... the officer left the index, and the server lives on.
    c.send(json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
        .await;
    let n = c.recv_type("nearby").await;
    assert_eq!(
        n["officers"].as_array().unwrap().len(),
        0,
        "ghost officer: {n}"
    );
    assert_eq!(
        c.request("o1", "virtual").await["code"],
        "officer_unavailable"
    );
    assert_eq!(app.metric("session_panics_total").await, panics + 1.0);
    let mut o2 = app.officer("o1", NEAR.0, NEAR.1).await;
    o2.send(json!({"type":"ping"})).await;
    assert_eq!(o2.recv().await["type"], "pong");
    app.running.shutdown().await;
}

mod interleavings {
    //! Any interleaving of requests, accepts, declines, duplicate responds, citizens
    //! leaving (cancel) and timeouts, over real sockets: at most one connection per request,
    //! and every ledger sum equals the points its recorded connections awarded.

    use std::collections::HashSet;
    use std::time::Duration;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{HERE, NEAR};
    use crate::helpers::*;

    #[derive(Debug, Clone)]
    enum Step {
        Request(usize),
        Respond { accept: bool },
        Duplicate,
        Leave(usize),
        Timeout,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0usize..2).prop_map(Step::Request),
            3 => any::<bool>().prop_map(|accept| Step::Respond { accept }),
            2 => Just(Step::Duplicate),
            2 => (0usize..2).prop_map(Step::Leave),
            1 => Just(Step::Timeout),
        ]
    }

    /// Reads what has arrived, noting request ids.
    async fn drain(c: &mut Client, ids: &mut HashSet<String>) -> Vec<Value> {
        let mut got = Vec::new();
        while let Some(v) = c.try_recv(Duration::from_millis(40)).await {
            if let Some(id) = v["request_id"].as_str() {
                ids.insert(id.to_owned());
            }
            got.push(v);
        }
        got
    }

    async fn run(steps: Vec<Step>) {
        let app = spawn_app_with(|s| s.connections.request_timeout_s = 1).await;
        let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
        let subs = ["c0", "c1"];
        let mut cs = Vec::new();
        for s in subs {
            cs.push(app.citizen(s, HERE.0, HERE.1).await.0);
        }
        let mut ids = HashSet::new();
        let mut last_asked: Option<String> = None;
        let mut last_respond: Option<Value> = None;
        for st in steps {
            match st {
                Step::Request(i) => {
                    cs[i]
                        .send(
                            json!({"type":"request_connection","officer_id":"o1","mode":"virtual"}),
                        )
                        .await;
                }
                Step::Respond { accept } => {
                    if let Some(id) = &last_asked {
                        let m = json!({"type":"respond","request_id":id,"accept":accept});
                        o.send(m.clone()).await;
                        last_respond = Some(m);
                    }
                }
                Step::Duplicate => {
                    if let Some(m) = &last_respond {
                        o.send(m.clone()).await;
                    }
                }
                Step::Leave(i) => {
                    let _ = cs[i].ws.close(None).await;
                    cs[i] = app.citizen(subs[i], HERE.0, HERE.1).await.0;
                }
                Step::Timeout => {
                    // The officer's request timeout passes on tokio's clock, not the wall's.
                    tokio::time::pause();
                    tokio::time::advance(Duration::from_millis(1001)).await;
                    tokio::time::resume();
                }
            }
            for v in drain(&mut o, &mut ids).await {
                if v["type"] == "connection_requested" {
                    last_asked = v["request_id"].as_str().map(str::to_owned);
                }
            }
            for c in cs.iter_mut() {
                drain(c, &mut ids).await;
            }
        }
        let store = &app.running.ctx().store;
        for id in &ids {
            assert!(
                store.connections_for_request(id).await.unwrap() <= 1,
                "{id}"
            );
        }
        for account in ["o1", "c0", "c1"] {
            let (conns, _) = store.connections_page(account, 100, None).await.unwrap();
            let awarded: i64 = conns.iter().map(|c| c.points_awarded).sum();
            assert_eq!(store.balance(account).await.unwrap(), awarded, "{account}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn at_most_one_connection_per_request(steps in prop::collection::vec(step(), 1..14)) {
            // One thread: the test pauses and advances tokio's clock for timeouts.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(run(steps));
        }
    }
}
