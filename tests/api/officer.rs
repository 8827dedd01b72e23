//! Officer sessions: availability windows, visibility, replacement, region changes.

use std::time::Duration;

use heyblue::protocol::Role;
use serde_json::json;

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);

#[tokio::test]
async fn welcome_then_available_makes_officer_visible() {
    let app = spawn_app().await;
    let mut o = app.connect(Role::Officer, "o1", HERE.0, HERE.1).await;
    assert_eq!(o.welcome["role"], "officer");
    assert_eq!(o.welcome["account_id"], "o1");
    assert_eq!(o.welcome["zip"], "10001");
    assert!(o.welcome["session_id"].is_string());

    // Not yet available: invisible.
    let (_c, n) = app.citizen("c1", HERE.0, HERE.1 + 0.001).await;
    assert_eq!(n["officers"].as_array().unwrap().len(), 0);

    o.send(json!({"type":"available","window_s":600})).await;
    let a = o.recv_type("availability").await;
    assert_eq!(a["available"], true);
    let exp = chrono::DateTime::parse_from_rfc3339(a["expires_at"].as_str().unwrap()).unwrap();
    let left = exp.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((595..=600).contains(&left), "{left}");

    let (_c2, n) = app.citizen("c2", HERE.0, HERE.1 + 0.001).await;
    let offs = n["officers"].as_array().unwrap();
    assert_eq!(offs.len(), 1);
    assert_eq!(offs[0]["officer_id"], "o1");
    assert_eq!(offs[0]["display_name"], "Name o1");
    assert_eq!(offs[0]["zip"], "10001");
    assert_eq!(n["radius_m"], 2000.0);

    o.send(json!({"type":"unavailable"})).await;
    let a = o.recv_type("availability").await;
    assert_eq!(a["available"], false);
    let (_c3, n) = app.citizen("c3", HERE.0, HERE.1 + 0.001).await;
    assert_eq!(n["officers"].as_array().unwrap().len(), 0);
    app.running.shutdown().await;
}

#[tokio::test]
async fn window_warns_then_expires_and_closes() {
    let app = spawn_app_for_paused_time().await;
    let mut o = app.connect(Role::Officer, "o1", HERE.0, HERE.1).await;
    // From here on tokio's clock only moves when the server has nothing else to do: the
    // window's two timers decide when time jumps, and the test measures them exactly.
    tokio::time::pause();
    o.send(json!({"type":"available","window_s":2})).await;
    o.recv_type("availability").await;
    let t0 = tokio::time::Instant::now();
    let w = o.recv().await;
    assert_eq!(w["type"], "window_expiring", "{w}");
    // Tokio's timers fire on whole milliseconds, rounding up: at most 1 ms late.
    let warned = t0.elapsed();
    assert!(
        (Duration::from_secs(1)..=Duration::from_millis(1001)).contains(&warned),
        "half-time warning at {warned:?}"
    );
    let (frames, code) = o.closed().await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "window_expired",
        "{frames:?}"
    );
    assert_eq!(code, Some(1000));
    let ended = t0.elapsed();
    assert!(
        (Duration::from_secs(2)..=Duration::from_millis(2001)).contains(&ended),
        "the end of the window at {ended:?}"
    );
    tokio::time::resume();
    let (_c, n) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(
        n["officers"].as_array().unwrap().len(),
        0,
        "expired officer left the index"
    );
    app.running.shutdown().await;
}

#[tokio::test]
async fn restarting_a_window_moves_its_end() {
    let app = spawn_app().await;
    let mut o = app.connect(Role::Officer, "o1", HERE.0, HERE.1).await;
    o.send(json!({"type":"available","window_s":2})).await;
    o.recv_type("availability").await;
    o.send(json!({"type":"available","window_s":900})).await;
    let a = o.recv_type("availability").await;
    assert_eq!(a["available"], true);
    // The first window's timers are void: nothing arrives at its end.
    assert!(o.try_recv(Duration::from_millis(2500)).await.is_none());
    app.running.shutdown().await;
}

#[tokio::test]
async fn closing_the_socket_removes_the_officer_at_once() {
    let app = spawn_app().await;
    let o = app.officer("o1", HERE.0, HERE.1).await;
    let (mut c, n) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(n["officers"].as_array().unwrap().len(), 1);
    drop(o);
    let push = c.recv_type("nearby").await;
    assert_eq!(push["officers"].as_array().unwrap().len(), 0);
    app.running.shutdown().await;
}

#[tokio::test]
async fn a_second_session_replaces_the_first() {
    let app = spawn_app().await;
    let mut first = app.officer("o1", HERE.0, HERE.1).await;
    let mut second = app.connect(Role::Officer, "o1", HERE.0, HERE.1).await;
    let (frames, code) = first.closed().await;
    assert_eq!(code, Some(4001));
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "session_replaced"),
        "{frames:?}"
    );
    // The newer session works and becomes visible once available.
    second.send(json!({"type":"available","window_s":60})).await;
    second.recv_type("availability").await;
    let (_c, n) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(n["officers"][0]["officer_id"], "o1");
    assert_eq!(n["officers"].as_array().unwrap().len(), 1);
    app.running.shutdown().await;
}

#[tokio::test]
async fn moving_into_another_region_says_zip_changed() {
    let app = spawn_app().await;
    let z = zips();
    let other = z.get(z.by_code("10018").unwrap()).centroid;
    let mut o = app.officer("o1", HERE.0, HERE.1).await;
    o.send(json!({"type":"location","lat":other.lat,"lon":other.lon}))
        .await;
    let m = o.recv().await;
    assert_eq!(m, json!({"type":"zip_changed","zip":"10018"}));
    let (_c, n) = app.citizen("c1", other.lat, other.lon).await;
    assert_eq!(n["officers"][0]["zip"], "10018");
    let (s, b) = app
        .get(
            "/admin/v1/regions/10001",
            Some(&app.token(Role::Admin, "a")),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        b["officers"].as_array().unwrap().len(),
        0,
        "left the old region: {b}"
    );
    app.running.shutdown().await;
}

/// The window outlives the socket: a reconnect while it runs is welcomed as available with
/// the same end and is visible at once; after `unavailable` a reconnect starts unavailable.
#[tokio::test]
async fn a_reconnecting_officer_resumes_its_window_with_the_same_end() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", 40.7506, -73.9972).await;
    o.send(json!({"type":"available","window_s":300})).await;
    let a = o.recv_type("availability").await;
    let end = a["expires_at"].as_str().unwrap().to_owned();
    drop(o);
    let (mut c, _) = app.citizen("c1", 40.7510, -73.9972).await;
    // The officer leaves results when its socket drops (a push says so if the first
    // answer still had it).
    c.send(json!({"type":"location","lat":40.7510,"lon":-73.9972}))
        .await;
    let mut left = false;
    for _ in 0..20 {
        if c.recv_type("nearby").await["officers"] == json!([]) {
            left = true;
            break;
        }
    }
    assert!(
        left,
        "the officer stayed in results after its socket closed"
    );

    let mut o = app.connect(Role::Officer, "o1", 40.7506, -73.9972).await;
    assert_eq!(o.welcome["available"], true, "{}", o.welcome);
    assert_eq!(o.welcome["expires_at"], end.as_str(), "{}", o.welcome);
    c.send(json!({"type":"location","lat":40.7510,"lon":-73.9972}))
        .await;
    let n = c.recv_type("nearby").await;
    assert_eq!(
        n["officers"][0]["officer_id"], "o1",
        "visible without `available`: {n}"
    );

    o.send(json!({"type":"unavailable"})).await;
    o.recv_type("availability").await;
    drop(o);
    let o = app.connect(Role::Officer, "o1", 40.7506, -73.9972).await;
    assert!(o.welcome.get("available").is_none(), "{}", o.welcome);
}
