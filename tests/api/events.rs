//! Events reach the bus after commit, once each, from the store's outbox.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

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
    let kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["connection_established", "points_awarded", "points_awarded"],
        "{got:?}"
    );
    assert_eq!(got[0].payload["connection_id"], est["connection_id"]);
    assert_eq!(got[0].payload["request_id"], id.as_str());
    let accounts: Vec<&str> = got[1..]
        .iter()
        .map(|e| e.payload["account_id"].as_str().unwrap())
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
