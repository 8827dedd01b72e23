//! `/v1/me`, its points ledger and connection history, fed by real accepted connections.

use heyblue::protocol::Role;
use serde_json::{Value, json};

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);
const NEAR: (f64, f64) = (40.7510, -73.9972);

#[tokio::test]
async fn profile_points_and_history_follow_connections() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c1, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let (mut c2, _) = app.citizen("c2", HERE.0, HERE.1).await;
    let (_, est1) = ask_and_accept(&mut o, &mut c1, "o1", "virtual").await;
    let (_, est2) = ask_and_accept(&mut o, &mut c2, "o1", "virtual").await;
    let first = est1["connection_id"].as_str().unwrap().to_owned();
    let second = est2["connection_id"].as_str().unwrap().to_owned();

    let officer = app.token(Role::Officer, "o1");
    let (s, me) = app.get("/v1/me", Some(&officer)).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["account_id"], "o1");
    assert_eq!(me["role"], "officer");
    assert_eq!(me["display_name"], "Name o1");
    assert_eq!(
        me["points"],
        json!({"balance": 20, "earned": 20, "spent": 0})
    );
    assert_eq!(me["connections"], 2);

    // Ledger newest first, one per page, cursor to the end.
    let (s, p1) = app.get("/v1/me/points?limit=1", Some(&officer)).await;
    assert_eq!(s, 200);
    let e: &Value = &p1["entries"][0];
    assert_eq!(
        (e["kind"].as_str(), e["delta"].as_i64(), e["ref"].as_str()),
        (Some("connection"), Some(10), Some(second.as_str()))
    );
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = app
        .get(
            &format!("/v1/me/points?limit=1&before={next}"),
            Some(&officer),
        )
        .await;
    assert_eq!(p2["entries"][0]["ref"], first.as_str());
    assert!(p2["next"].is_null());

    let (_, h1) = app.get("/v1/me/connections?limit=1", Some(&officer)).await;
    assert_eq!(h1["connections"][0]["connection_id"], second.as_str());
    assert_eq!(h1["connections"][0]["zip"], "10001");
    assert!(
        h1["connections"][0].get("lat").is_none(),
        "no coordinates stored or returned"
    );
    let cursor = h1["next"].as_str().unwrap().to_owned();
    let (s, h2) = app
        .get(
            &format!("/v1/me/connections?limit=1&before={}", urlencode(&cursor)),
            Some(&officer),
        )
        .await;
    assert_eq!(s, 200, "{h2}");
    assert_eq!(h2["connections"][0]["connection_id"], first.as_str());
    assert!(h2["next"].is_null());

    let citizen = app.token(Role::Citizen, "c1");
    let (_, me) = app.get("/v1/me", Some(&citizen)).await;
    assert_eq!(me["points"]["balance"], 10);
    assert_eq!(me["connections"], 1);
    app.running.shutdown().await;
}

#[tokio::test]
async fn patch_me_validates_the_name() {
    let app = spawn_app().await;
    let t = app.token(Role::Citizen, "c1");
    let patch = |body: Value| {
        app.http
            .patch(format!("{}/v1/me", app.base))
            .bearer_auth(&t)
            .json(&body)
            .send()
    };
    let r = patch(json!({"display_name":"  Ana  "})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["display_name"], "Ana");
    for bad in [
        json!({"display_name":"   "}),
        json!({"display_name": "x".repeat(61)}),
        json!({"name":"Ana"}),
    ] {
        let r = patch(bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let b = r.json::<Value>().await.unwrap();
        assert!(b["error"]["code"].is_string());
    }
    let (_, me) = app.get("/v1/me", Some(&t)).await;
    assert_eq!(me["display_name"], "Ana", "refused patches changed nothing");
    let (s, _) = app.get("/v1/me", None).await;
    assert_eq!(s, 401);
    let (s, b) = app.get("/v1/me/points?limit=0", Some(&t)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_limit"))
    );
    let (s, b) = app.get("/v1/me/points?before=abc", Some(&t)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    app.running.shutdown().await;
}

#[tokio::test]
async fn a_first_connection_earns_a_trophy_told_live_and_listed_once() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    ask_and_accept(&mut o, &mut c, "o1", "virtual").await;
    for s in [&mut o, &mut c] {
        let t = s.recv_type("trophy_awarded").await;
        assert_eq!(
            (t["trophy_id"].as_str(), t["name"].as_str()),
            (Some("first_connection"), Some("First connection")),
            "{t}"
        );
    }
    let token = app.token(Role::Citizen, "c1");
    let (s, me) = app.get("/v1/me", Some(&token)).await;
    assert_eq!(s, 200, "{me}");
    let trophies = me["trophies"].as_array().unwrap();
    assert_eq!(trophies.len(), 1, "{me}");
    assert_eq!(trophies[0]["trophy_id"], "first_connection");
    assert!(trophies[0]["awarded_at"].as_str().unwrap().contains('T'));

    // A second connection (another citizen) earns the officer nothing it holds again.
    let (mut c2, _) = app.citizen("c2", HERE.0, HERE.1).await;
    ask_and_accept(&mut o, &mut c2, "o1", "virtual").await;
    c2.recv_type("trophy_awarded").await;
    let officer = app.token(Role::Officer, "o1");
    eventually("both connections projected", || async {
        let (_, me) = app.get("/v1/me", Some(&officer)).await;
        (me["connections"] == 2).then_some(())
    })
    .await;
    let (_, me) = app.get("/v1/me", Some(&officer)).await;
    assert_eq!(me["trophies"].as_array().unwrap().len(), 1, "{me}");
    app.running.shutdown().await;
}
