//! Events reach the bus after commit, once each, from the store's outbox.

use std::time::Duration;

use heyblue::events::{DomainEvent, Event};
use serde_json::{Value, json};

use crate::helpers::*;

/// An event's fields as JSON (its stored payload), for comparing with wire answers.
fn fields(e: &Event) -> Value {
    serde_json::to_value(&e.event).unwrap()["payload"].clone()
}

#[tokio::test]
async fn an_accept_publishes_connection_and_points_events_once() {
    let app = spawn_app().await;
    let mut bus = app.running.ctx().events.subscribe();
    let mut o = app.officer("o1", 40.7510, -73.9972).await;
    let (mut c, _) = app.citizen("c1", 40.7506, -73.9972).await;
    let (id, est) = ask_and_accept(&mut o, &mut c, "o1", "virtual").await;
    // A replayed respond publishes nothing new.
    o.send(json!({"type":"respond","request_id":id,"accept":true}))
        .await;
    o.recv_type("connection_established").await;

    let mut got = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(1500), bus.recv()).await {
        got.push(e);
    }
    let kinds: Vec<&str> = got.iter().map(|e| e.event.kind()).collect();
    // The accept's three events, then the first-connection trophy each side earned by them.
    assert_eq!(
        kinds,
        [
            "connection_established",
            "points_awarded",
            "points_awarded",
            "trophy_awarded",
            "trophy_awarded"
        ],
        "{got:?}"
    );
    assert_eq!(fields(&got[0])["connection_id"], est["connection_id"]);
    assert_eq!(fields(&got[0])["request_id"], id.as_str());
    let accounts: Vec<&str> = got[1..3]
        .iter()
        .map(|e| match &e.event {
            DomainEvent::PointsAwarded { account_id, .. } => account_id.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(accounts, ["o1", "c1"]);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "in commit order");
    assert!(
        app.running
            .ctx()
            .store
            .unpublished_events(10)
            .await
            .unwrap()
            .is_empty()
    );
    app.running.shutdown().await;
}

#[tokio::test]
async fn redemptions_and_donations_publish_their_events() {
    let app = spawn_app().await;
    let admin = app.token(heyblue::protocol::Role::Admin, "admin");
    let (s, _) = app
        .post(
            "/admin/v1/import/retailers",
            &admin,
            json!([{"retailer_id":"r1","name":"Shop"}]),
        )
        .await;
    assert_eq!(s, 200);
    let offers = json!([{"offer_id":"o","retailer":"r1","title":"T","points_cost":10,"valid_until":"2099-01-01"}]);
    assert_eq!(
        app.post("/admin/v1/import/offers", &admin, offers).await.0,
        200
    );
    let charities = json!([{"charity_id":"ch","name":"C"}]);
    assert_eq!(
        app.post("/admin/v1/import/charities", &admin, charities)
            .await
            .0,
        200
    );
    app.earn("c1", 1).await;
    app.earn("o1", 1).await;
    let mut bus = app.running.ctx().events.subscribe();
    let citizen = app.token(heyblue::protocol::Role::Citizen, "c1");
    let (s, v) = app
        .post("/v1/redemptions", &citizen, json!({"offer_id":"o"}))
        .await;
    assert_eq!(s, 201);
    let officer = app.token(heyblue::protocol::Role::Officer, "o1");
    let (s, d) = app
        .post(
            "/v1/donations",
            &officer,
            json!({"charity_id":"ch","points":4}),
        )
        .await;
    assert_eq!(s, 201);
    let mut got = Vec::new();
    while got.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(3), bus.recv())
            .await
            .expect("event in time")
            .unwrap();
        if matches!(
            e.event,
            DomainEvent::VoucherIssued { .. } | DomainEvent::DonationMade { .. }
        ) {
            got.push(e);
        }
    }
    assert_eq!(got[0].event.kind(), "voucher_issued");
    assert_eq!(fields(&got[0])["voucher_code"], v["voucher_code"]);
    assert_eq!(fields(&got[0])["points_spent"], 10);
    assert_eq!(got[1].event.kind(), "donation_made");
    assert_eq!(fields(&got[1])["donation_id"], d["donation_id"]);
    assert_eq!(fields(&got[1])["points"], 4);
}
