//! Supervision and shutdown: a panicking region is rebuilt from its sessions; shutdown
//! closes every socket with 1001.

use std::time::Duration;

use heyblue::protocol::Role;
use serde_json::json;

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);

#[tokio::test]
async fn a_crashed_region_is_rebuilt_from_live_sessions() {
    let app = spawn_app().await;
    let mut officers = Vec::new();
    for i in 0..5 {
        officers.push(
            app.officer(&format!("o{i}"), HERE.0 + 0.0002 * i as f64, HERE.1)
                .await,
        );
    }
    let (mut c, n) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(n["officers"].as_array().unwrap().len(), 5);

    let ctx = app.running.ctx().clone();
    let zip = ctx.zips.by_code("10001").unwrap();
    assert_eq!(ctx.regions.restarts(zip), 0);
    let ids = |s: &heyblue::actors::region::RegionSnapshot| {
        let mut v: Vec<String> = s.officers.iter().map(|o| o.officer_id.clone()).collect();
        v.sort();
        v
    };
    let before = ctx.regions.snapshot(zip).await.unwrap();
    assert!(before.officers.len() >= 2, "{before:?}");
    assert!(ctx.regions.crash(zip));

    // Calls during the restart may find the old actor gone: retried until rebuilt.
    eventually("the region rebuilt from its sessions", || async {
        let snap = ctx.regions.snapshot(zip).await.ok()?;
        (snap.restarts == 1 && ids(&snap) == ids(&before) && snap.citizens_watching == 1)
            .then_some(())
    })
    .await;
    // Live sessions keep working against the new region: a move is pushed to the citizen.
    officers[0]
        .send(json!({"type":"location","lat":HERE.0 + 0.001,"lon":HERE.1}))
        .await;
    let p = loop {
        let p = c.recv_type("nearby").await;
        if p["officers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["lat"].as_f64() == Some(HERE.0 + 0.001))
        {
            break p;
        }
    };
    assert_eq!(p["officers"].as_array().unwrap().len(), 5);
    c.send(json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
        .await;
    let n = c.recv_type("nearby").await;
    assert_eq!(
        n["officers"].as_array().unwrap().len(),
        5,
        "no officer lost: {n}"
    );
    app.running.shutdown().await;
}

#[tokio::test]
async fn an_administrator_restarts_a_region_and_it_is_rebuilt() {
    let app = spawn_app().await;
    let _o1 = app.officer("o1", HERE.0, HERE.1).await;
    let _o2 = app.officer("o2", HERE.0 + 0.0003, HERE.1).await;
    let (_c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let admin = app.token(Role::Admin, "ops");

    let (s, b) = app
        .post("/admin/v1/regions/10001/restart", &admin, json!({}))
        .await;
    assert_eq!((s, b["zip"].as_str()), (202, Some("10001")), "{b}");
    eventually("the region rebuilt with both officers", || async {
        let (_, r) = app.get("/admin/v1/regions/10001", Some(&admin)).await;
        (r["restarts"] == 1 && r["officers"].as_array()?.len() == 2 && r["citizens_watching"] == 1)
            .then_some(())
    })
    .await;

    // A zip that exists but has no actor here, a zip that does not exist, a non-admin.
    let (s, b) = app
        .post("/admin/v1/regions/99501/restart", &admin, json!({}))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("region_not_running")),
        "{b}"
    );
    let (s, b) = app
        .post("/admin/v1/regions/00000/restart", &admin, json!({}))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("unknown_zip")),
        "{b}"
    );
    let (s, _) = app
        .post(
            "/admin/v1/regions/10001/restart",
            &app.token(Role::Citizen, "c1"),
            json!({}),
        )
        .await;
    assert_eq!(s, 403);
    app.running.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", HERE.0, HERE.1).await;
    let mut c = app.connect(Role::Citizen, "c1", HERE.0, HERE.1).await;
    c.recv_type("nearby").await;
    let ctx = app.running.ctx().clone();
    let stopping = tokio::spawn(app.running.shutdown());
    let (_, oc) = o.closed().await;
    let (_, cc) = c.closed().await;
    assert_eq!(oc, Some(1001));
    assert_eq!(cc, Some(1001));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ctx.sessions.sockets(), 0);
}

/// A closing socket has `server.shutdown_grace_ms` (1 s in tests) to finish: a client that
/// never answers the close frame is dropped when it ends, measured on tokio's clock.
#[tokio::test]
async fn a_client_that_never_answers_the_close_is_dropped_after_the_grace_period() {
    let app = spawn_app_for_paused_time().await;
    let url = app.ticket(Role::Citizen, "c1", HERE.0, HERE.1).await;
    // A client that reads nothing: tungstenite answers a close frame only when reading.
    let (_silent, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .unwrap();
    let ctx = app.running.ctx().clone();
    let session = eventually("the session is registered", || async {
        ctx.sessions.get("c1")
    })
    .await;
    tokio::time::pause();
    let t0 = tokio::time::Instant::now();
    session
        .handle
        .send(heyblue::actors::session::SessionMsg::Close {
            code: 4002,
            error: None,
            reason: "test".into(),
        })
        .unwrap();
    eventually("the silent socket is dropped", || async {
        (ctx.sessions.sockets() == 0).then_some(())
    })
    .await;
    let held = t0.elapsed();
    let grace = Duration::from_millis(ctx.settings.server.shutdown_grace_ms);
    assert!(
        held >= grace && held < grace * 2,
        "held {held:?} for a grace of {grace:?}"
    );
    tokio::time::resume();
    app.running.shutdown().await;
}
