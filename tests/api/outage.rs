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

/// A TCP proxy to `upstream` that stops passing bytes while `paused` is true (a store that
/// hangs rather than refuses).
async fn pausable_proxy(upstream: String) -> (String, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (pause, paused) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(ri) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(ro), Box::new(wi)),
            ] {
                let mut paused = paused.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if paused.wait_for(|p| !p).await.is_err() {
                            return;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, pause)
}

#[tokio::test]
async fn readiness_answers_within_its_timeout_while_the_store_hangs() {
    let url = postgres_database().await;
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let (upstream, db) = rest.split_once('/').unwrap();
    let (proxy, pause) = pausable_proxy(upstream.to_owned()).await;
    let app = spawn_app_with(|s| {
        s.database.url = format!("{scheme_user}@{proxy}/{db}");
        s.database.ready_timeout_ms = 300;
    })
    .await;
    let (s, _) = app.get("/readyz", None).await;
    assert_eq!(s, 200);

    pause.send(true).unwrap();
    let (s, b) = app.get("/readyz", None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("not_ready")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("store: no answer within 300 ms"),
        "{b}"
    );

    pause.send(false).unwrap();
    eventually("ready again once the store answers", || async {
        (app.get("/readyz", None).await.0 == 200).then_some(())
    })
    .await;
    app.running.shutdown().await;
}
