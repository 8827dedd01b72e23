//! The dashboard's live feed over a real socket: the whole map first, then what changed,
//! following officers as they come, move and go, and citizens as counts per zip.

use heyblue::protocol::Role;
use serde_json::json;

use crate::helpers::*;

fn position(w: &LiveWatch, id: &str) -> Option<(f64, f64)> {
    w.officers
        .get(id)
        .map(|o| (o["lat"].as_f64().unwrap(), o["lon"].as_f64().unwrap()))
}

#[tokio::test]
async fn the_feed_sends_the_map_then_what_changed() {
    let app = spawn_app_with(|s| s.admin.live_interval_ms = 50).await;
    let admin = app.token(Role::Admin, "admin");
    let mut o1 = app.officer("o1", 40.7506, -73.9972).await;
    let mut w = LiveWatch::open(&app.base, &admin).await.unwrap();
    // The first event is the whole map, sampled for this watcher (the feed was idle).
    let (name, first) = w.next().await;
    assert_eq!(name, "snapshot", "{first}");
    w.fold(&name, first);
    assert_eq!(position(&w, "o1"), Some((40.7506, -73.9972)));
    assert_eq!(w.officers["o1"]["zip"], "10001");
    assert_eq!(w.stats["officers_available"], 1);

    let mut o2 = app.officer("o2", 34.0522, -118.2437).await;
    w.until("o2 comes", |w| w.officers.len() == 2).await;
    o1.send(json!({"type":"location","lat":40.7540,"lon":-73.9920}))
        .await;
    w.until("o1 moves", |w| {
        position(w, "o1") == Some((40.7540, -73.9920))
    })
    .await;
    o2.send(json!({"type":"unavailable"})).await;
    w.until("o2 goes", |w| !w.officers.contains_key("o2")).await;

    let (c, _) = app.citizen("c1", 40.7506, -73.9972).await;
    w.until("a citizen counted in 10001", |w| {
        w.citizens.get("10001") == Some(&1) && w.stats["citizens_online"] == 1
    })
    .await;
    drop(c);
    w.until("the citizen leaves", |w| w.citizens.is_empty())
        .await;
    assert_eq!(
        w.snapshots, 1,
        "a watcher that keeps up is never sent the map again"
    );

    // A second watcher starts from the map as it is.
    let mut late = LiveWatch::open(&app.base, &admin).await.unwrap();
    late.until("the map as it is", |w| w.snapshots == 1).await;
    let ids: Vec<&String> = late.officers.keys().collect();
    assert_eq!(ids, ["o1"]);
}

#[tokio::test]
async fn feeds_are_capped_and_admin_only() {
    let app = spawn_app_with(|s| {
        s.admin.live_interval_ms = 50;
        s.admin.live_max_watchers = 1;
    })
    .await;
    let admin = app.token(Role::Admin, "admin");
    let (status, body) = LiveWatch::open(&app.base, &app.token(Role::Officer, "o1"))
        .await
        .err()
        .expect("an officer cannot watch");
    assert_eq!(status, 403, "{body}");
    let mut first = LiveWatch::open(&app.base, &admin).await.unwrap();
    first.until("the first feed runs", |w| w.seq >= 2).await;
    let (status, body) = LiveWatch::open(&app.base, &admin)
        .await
        .err()
        .expect("one feed at most");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("too_many_watchers")),
        "{body}"
    );
    assert!(app.metric("admin_live_refused_total").await >= 1.0);
    drop(first);
    eventually("the slot is released when the watcher goes", || async {
        LiveWatch::open(&app.base, &admin).await.ok()
    })
    .await;
}
