//! A store that goes down: store-backed requests answer 503, the real-time core keeps
//! serving, an accept that could not be recorded stays pending and succeeds once the
//! store is back — recorded once. Runs on the PostgreSQL the test command provides.

use heyblue::protocol::Role;
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);
const NEAR: (f64, f64) = (40.7510, -73.9972);

#[tokio::test]
async fn store_outage_fails_store_requests_only() {
    let url = postgres_database().await;
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin = Database::connect(format!("{base}/postgres")).await.unwrap();
    let app = spawn_app_with(|s| s.database.url = url.clone()).await;

    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let id = ask(&mut o, &mut c, "o1", "virtual").await;

    // The database goes away: no new connections, existing ones cut.
    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();

    let (s, b) = app
        .get("/v1/me", Some(&app.token(Role::Citizen, "c1")))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{b}"
    );

    // Readiness names what is down.
    let (s, b) = app.get("/readyz", None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("not_ready")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("store"),
        "{b}"
    );

    // The real-time core keeps serving nearby.
    c.send(json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
        .await;
    let n = c.recv_type("nearby").await;
    assert_eq!(n["officers"][0]["officer_id"], "o1");

    // Accepting cannot be recorded: an error, and the request stays pending.
    o.send(json!({"type":"respond","request_id":id,"accept":true}))
        .await;
    let e = o.recv_type("error").await;
    assert_eq!(e["code"], "unavailable");

    // The store is back: the same respond now records it, once.
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    o.send(json!({"type":"respond","request_id":id,"accept":true}))
        .await;
    let est = o.recv_type("connection_established").await;
    assert_eq!(est["points_awarded"], 10);
    assert_eq!(c.recv_type("connection_established").await["balance"], 10);
    assert_eq!(app.recorded(&id).await, 1);
    let (s, _) = app.get("/readyz", None).await;
    assert_eq!(s, 200);
    app.running.shutdown().await;
}
