//! Health, zip lookup and the orchestrator's answers and refusals.

use std::time::Duration;

use heyblue::protocol::Role;

use crate::helpers::*;

#[tokio::test]
async fn health_and_zip_lookup() {
    let app = spawn_app().await;
    let (s, b) = app.get("/healthz", None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ok")));
    let (s, b) = app.get("/readyz", None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ready")));

    let z = zips();
    let id = z.by_code("10001").unwrap();
    let c = z.get(id).centroid;
    let (s, b) = app
        .get(
            &format!("/v1/zips/lookup?lat={}&lon={}", c.lat, c.lon),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["zip"], "10001");
    assert_eq!(b["state"], "NY");
    assert_eq!(b["city"], "New York");
    assert_eq!(b["lat"].as_f64().unwrap(), c.lat);

    let (s, b) = app.get("/v1/zips/lookup?lat=abc&lon=1", None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_coordinates"))
    );
    let (s, b) = app.get("/v1/zips/lookup?lat=95&lon=1", None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_coordinates"))
    );
    let (s, b) = app.get("/v1/zips/lookup?lat=35&lon=-45", None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("outside_service_area"))
    );
    app.running.shutdown().await;
}

#[tokio::test]
async fn orchestrator_answers_with_ticket_and_zip() {
    let app = spawn_app().await;
    let t = app.token(Role::Officer, "off-1");
    let (s, b) = app
        .get(
            "/v1/officers/session?lat=40.7506&lon=-73.9972&zip=10001",
            Some(&t),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["zip"], "10001");
    assert_eq!(b["node"], "node-1");
    assert_eq!(b["ticket_expires_in_s"], 30);
    let url = b["ws_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("ws://{}/v1/ws?ticket=", app.running.addr)),
        "{url}"
    );
    app.running.shutdown().await;
}

#[tokio::test]
async fn orchestrator_refuses_bad_callers_and_input() {
    let app = spawn_app().await;
    let path = "/v1/citizens/session?lat=40.75&lon=-73.99";
    let (s, b) = app.get(path, None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("missing_token"))
    );
    let (s, _) = app.get(path, Some("not.a.jwt")).await;
    assert_eq!(s, 401);
    let forged = heyblue::http::auth::Auth::new("another-secret").mint(
        Role::Citizen,
        "c",
        None,
        Duration::from_secs(60),
    );
    let (s, _) = app.get(path, Some(&forged)).await;
    assert_eq!(s, 401);
    // A token that expired long ago (beyond the 5 s leeway).
    let old = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub":"c","role":"citizen","exp": 1_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"heyblue-dev-secret-change-me"),
    )
    .unwrap();
    let (s, b) = app.get(path, Some(&old)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("token_expired"))
    );

    let officer = app.token(Role::Officer, "o");
    let (s, b) = app.get(path, Some(&officer)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")));

    let citizen = app.token(Role::Citizen, "c");
    for (q, status, code) in [
        ("lat=x&lon=1", 400, "invalid_coordinates"),
        ("lat=40.75", 400, "invalid_coordinates"),
        ("lat=40.75&lon=-200", 400, "invalid_coordinates"),
        ("lat=40.75&lon=-73.99&zip=99999", 400, "unknown_zip"),
        ("lat=40.75&lon=-73.99&zip=1001", 400, "unknown_zip"),
        ("lat=35&lon=-45", 422, "outside_service_area"),
    ] {
        let (s, b) = app
            .get(&format!("/v1/citizens/session?{q}"), Some(&citizen))
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{q}: {b}"
        );
        assert!(b["error"]["message"].is_string());
    }
    app.running.shutdown().await;
}

#[tokio::test]
async fn tickets_are_single_use_and_unforgeable() {
    let app = spawn_app().await;
    let url = app.ticket(Role::Citizen, "c1", 40.75, -73.99).await;
    let (_ws, _) = tokio_tungstenite::connect_async(url.clone())
        .await
        .expect("first use");
    let again = tokio_tungstenite::connect_async(url.clone()).await;
    match again {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("reused ticket accepted: {:?}", other.map(|_| ())),
    }
    let forged = format!(
        "ws://{}/v1/ws?ticket=00000000000000000000000000000000",
        app.running.addr
    );
    match tokio_tungstenite::connect_async(forged).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("forged ticket accepted: {:?}", other.map(|_| ())),
    }
    app.running.shutdown().await;
}

#[tokio::test]
async fn expired_ticket_is_refused() {
    let app = spawn_app_with(|s| s.auth.ticket_ttl_s = 1).await;
    let url = app.ticket(Role::Citizen, "c1", 40.75, -73.99).await;
    // Tickets live on tokio's clock: a second passes without waiting for it.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(1001)).await;
    tokio::time::resume();
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expired ticket accepted: {:?}", other.map(|_| ())),
    }
    app.running.shutdown().await;
}

#[tokio::test]
async fn admin_views_need_admin() {
    let app = spawn_app().await;
    let (s, _) = app.get("/admin/v1/stats", None).await;
    assert_eq!(s, 401);
    let (s, _) = app
        .get("/admin/v1/stats", Some(&app.token(Role::Citizen, "c")))
        .await;
    assert_eq!(s, 403);
    let _o = app.officer("o1", 40.7506, -73.9972).await;
    let (s, b) = app
        .get("/admin/v1/stats", Some(&app.token(Role::Admin, "a")))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["officers_online"], 1);
    assert_eq!(b["nodes"][0]["node_id"], "node-1");
    let (s, b) = app
        .get(
            "/admin/v1/regions/10001",
            Some(&app.token(Role::Admin, "a")),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["officers"][0]["officer_id"], "o1");
    app.running.shutdown().await;
}

/// Every endpoint the server serves is described in /openapi.json (the router and the
/// description come from the same registrations; this list is the contract's).
#[tokio::test]
async fn openapi_describes_every_route() {
    let app = spawn_app().await;
    let (s, doc) = app.get("/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let routes = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/admin/v1/officers"),
        ("get", "/admin/v1/citizens/zips"),
        ("get", "/admin/v1/live"),
        ("get", "/openapi.json"),
        ("get", "/v1/zips/lookup"),
        ("get", "/v1/officers/session"),
        ("get", "/v1/citizens/session"),
        ("get", "/v1/ws"),
        ("get", "/v1/me"),
        ("patch", "/v1/me"),
        ("get", "/v1/me/points"),
        ("get", "/v1/me/connections"),
        ("get", "/v1/offers"),
        ("post", "/v1/redemptions"),
        ("get", "/v1/vouchers/{code}"),
        ("post", "/v1/vouchers/{code}/redeem"),
        ("get", "/v1/charities"),
        ("post", "/v1/donations"),
        ("get", "/metrics"),
        ("get", "/admin/v1/stats"),
        ("get", "/admin/v1/regions/{zip}"),
        ("delete", "/admin/v1/sessions/{account_id}"),
        ("get", "/admin/v1/reports/connections"),
        ("post", "/admin/v1/import/{kind}"),
        ("post", "/admin/v1/regions/{zip}/restart"),
        ("get", "/v1/feed"),
        ("post", "/admin/v1/webhooks"),
        ("get", "/admin/v1/webhooks"),
        ("patch", "/admin/v1/webhooks/{id}"),
        ("delete", "/admin/v1/webhooks/{id}"),
        ("get", "/admin/v1/webhooks/{id}/deliveries"),
        ("post", "/admin/v1/webhooks/{id}/requeue"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let described: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    for (method, path) in routes {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}"
        );
        // Described means served: the route answers something other than the fallback 404.
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let concrete = path
            .replace("{code}", "X")
            .replace("{zip}", "10001")
            .replace("{account_id}", "a")
            .replace("{kind}", "offers")
            .replace("{id}", "wh_unknown");
        let (_, b) = app.send(m, &concrete, None, None, &[]).await;
        assert_ne!(
            b["error"]["code"], "not_found",
            "{method} {path} not served"
        );
    }
    assert_eq!(
        described,
        routes.len(),
        "an operation this test does not know"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
