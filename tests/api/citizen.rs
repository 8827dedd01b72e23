//! Citizen sessions: exact nearby across zip borders, coalesced pushes, proximity.

use std::collections::HashSet;
use std::time::Duration;

// Tokio's clock: the push tests pause it, and the intervals they measure are the server's.
use tokio::time::Instant;

use heyblue::geo::{LatLon, haversine_m};
use heyblue::protocol::Role;
use serde_json::{Value, json};

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);

/// Deterministic pseudo-random offsets (no shared RNG state between tests).
fn scatter(n: usize, seed: u64, spread_deg: f64) -> Vec<(f64, f64)> {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    (0..n)
        .map(|_| {
            (
                HERE.0 + next() * spread_deg,
                HERE.1 + next() * spread_deg * 1.3,
            )
        })
        .collect()
}

fn ids(n: &Value) -> Vec<String> {
    n["officers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["officer_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Moves officer `o` `n` times, `every` apart, north of `HERE` by `step` degrees times
/// `i % cycle`; gives the officer's client back when done.
fn keep_moving(
    mut o: Client,
    n: usize,
    (step, cycle): (f64, usize),
    every: Duration,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        for i in 0..n {
            o.send(
                json!({"type":"location","lat":HERE.0 + step * (i % cycle) as f64,"lon":HERE.1}),
            )
            .await;
            tokio::time::sleep(every).await;
        }
        o
    })
}

#[tokio::test]
async fn nearby_across_zip_borders_equals_brute_force() {
    let app = spawn_app().await;
    let spots = scatter(40, 7, 0.03);
    let mut officers = Vec::new();
    for (i, (lat, lon)) in spots.iter().enumerate() {
        officers.push(app.officer(&format!("o{i:02}"), *lat, *lon).await);
    }
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    c.send(json!({"type":"watch","radius_m":3000,"limit":20}))
        .await;
    for (qlat, qlon) in [
        HERE,
        (HERE.0 + 0.01, HERE.1 - 0.01),
        (HERE.0 - 0.012, HERE.1 + 0.008),
    ] {
        c.send(json!({"type":"location","lat":qlat,"lon":qlon}))
            .await;
        let n = c.recv_type("nearby").await;
        let n = if n["radius_m"] == 3000.0 {
            n
        } else {
            c.recv_type("nearby").await
        };
        let q = LatLon::new(qlat, qlon).unwrap();
        let mut want: Vec<(String, f64)> = spots
            .iter()
            .enumerate()
            .map(|(i, (la, lo))| {
                (
                    format!("o{i:02}"),
                    haversine_m(q, LatLon { lat: *la, lon: *lo }),
                )
            })
            .filter(|(_, d)| *d <= 3000.0)
            .collect();
        want.sort_by(|a, b| a.1.total_cmp(&b.1));
        want.truncate(20);
        let got = n["officers"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{n}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g["distance_m"].as_f64().unwrap() - w.1).abs() < 1e-6,
                "got {g} want {w:?}"
            );
        }
        let zips: HashSet<&str> = got.iter().map(|o| o["zip"].as_str().unwrap()).collect();
        assert!(zips.len() >= 3, "the circle spans several zips: {zips:?}");
        // Each officer's zip is the one its position maps to.
        for o in got {
            let p = LatLon::new(o["lat"].as_f64().unwrap(), o["lon"].as_f64().unwrap()).unwrap();
            let (z, _) = crate::helpers::zips().nearest(p);
            assert_eq!(o["zip"], &*crate::helpers::zips().get(z).code);
        }
    }
    app.running.shutdown().await;
}

#[tokio::test]
async fn pushes_follow_officer_moves_coalesced() {
    let app = spawn_app_for_paused_time().await; // push interval 200 ms
    let mut o = app.officer("o1", HERE.0 + 0.002, HERE.1).await;
    let (mut c, n) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(ids(&n), ["o1"]);
    // From here tokio's clock moves only when the server waits for a timer: the intervals
    // below are the server's own, exactly (timers fire on whole milliseconds, rounding up).
    tokio::time::pause();

    // One move: pushed within the interval.
    let t0 = Instant::now();
    o.send(json!({"type":"location","lat":HERE.0 + 0.003,"lon":HERE.1}))
        .await;
    let p = c.recv_type("nearby").await;
    assert!(
        t0.elapsed() <= Duration::from_millis(201),
        "{:?}",
        t0.elapsed()
    );
    assert!((p["officers"][0]["lat"].as_f64().unwrap() - (HERE.0 + 0.003)).abs() < 1e-9);

    // Many moves in a burst: pushes are coalesced to at most one per interval.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let start = Instant::now();
    let mover = keep_moving(o, 15, (0.001, 5), Duration::from_millis(40));
    let mut pushes = Vec::new();
    while let Some(f) = c.try_recv(Duration::from_millis(500)).await {
        if f["type"] == "nearby" {
            pushes.push((start.elapsed(), f));
        }
    }
    let _o = mover.await.unwrap();
    let window = start.elapsed().as_millis() as usize;
    assert!(!pushes.is_empty());
    assert!(
        pushes.len() <= window / 200 + 1,
        "{} pushes in {window} ms",
        pushes.len()
    );
    for w in pushes.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_millis(200),
            "pushes closer than the interval: {:?}",
            w[1].0 - w[0].0
        );
    }
    // The last push shows the last position.
    let last = &pushes.last().unwrap().1;
    assert!(
        (last["officers"][0]["lat"].as_f64().unwrap() - (HERE.0 + 0.004)).abs() < 1e-9,
        "{last}"
    );
    app.running.shutdown().await;
}

/// A citizen that keeps sending locations gets each answered, and the pushes between them
/// still at most one per interval: a reply does not restart the push timer's count.
#[tokio::test]
async fn pushes_stay_coalesced_while_the_citizen_moves() {
    let app = spawn_app_for_paused_time().await; // push interval 200 ms
    let o = app.officer("o1", HERE.0 + 0.002, HERE.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    tokio::time::pause();
    let start = Instant::now();
    let mover = keep_moving(o, 60, (0.0001, 7), Duration::from_millis(20));
    let locations = 40;
    let mut nearby = 0;
    for i in 0..locations {
        c.send(json!({"type":"location","lat":HERE.0 - 0.00001 * i as f64,"lon":HERE.1}))
            .await;
        let pause = tokio::time::sleep(Duration::from_millis(30));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                f = c.recv() => if f["type"] == "nearby" { nearby += 1 },
            }
        }
    }
    while let Some(f) = c.try_recv(Duration::from_millis(500)).await {
        if f["type"] == "nearby" {
            nearby += 1;
        }
    }
    let _o = mover.await.unwrap();
    let window = start.elapsed().as_millis() as usize;
    assert!(nearby >= locations, "every location is answered: {nearby}");
    let pushes = nearby - locations;
    assert!(
        pushes <= window / 200 + 1,
        "{pushes} pushes besides {locations} replies in {window} ms"
    );
    app.running.shutdown().await;
}

#[tokio::test]
async fn location_is_answered_at_once_even_without_change() {
    let app = spawn_app_with(|s| {
        s.citizen.push_interval_ms = 5_000;
        s.events.publish_interval_ms = 3_600_000;
    })
    .await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    tokio::time::pause();
    for _ in 0..3 {
        let t0 = Instant::now();
        c.send(json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
            .await;
        let n = c.recv().await;
        assert_eq!(n["type"], "nearby");
        // Answered, not held for the 5 s push interval.
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
    app.running.shutdown().await;
}

#[tokio::test]
async fn officer_nearby_once_per_approach() {
    let app = spawn_app_for_paused_time().await;
    let far = (HERE.0 + 0.005, HERE.1); // ~555 m
    let close = (HERE.0 + 0.0005, HERE.1); // ~55 m
    let mut o = app.officer("o1", far.0, far.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    tokio::time::pause();
    let step = |lat: f64, lon: f64| json!({"type":"location","lat":lat,"lon":lon});
    o.send(step(close.0, close.1)).await;
    let f = c.recv_type("officer_nearby").await;
    assert_eq!(f["officer_id"], "o1");
    assert!(f["distance_m"].as_f64().unwrap() < 100.0);
    // Moving about inside the distance: no second notice.
    o.send(step(close.0 + 0.0001, close.1)).await;
    while let Some(f) = c.try_recv(Duration::from_millis(500)).await {
        assert_ne!(f["type"], "officer_nearby", "again while still close");
    }
    // Leave and come back: a new notice.
    o.send(step(far.0, far.1)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    o.send(step(close.0, close.1)).await;
    let again = c.recv_type("officer_nearby").await;
    assert_eq!(again["officer_id"], "o1");
    app.running.shutdown().await;
}

#[tokio::test]
async fn watch_changes_radius_and_limit() {
    let app = spawn_app().await;
    let _a = app.officer("o1", HERE.0 + 0.0027, HERE.1).await; // ~300 m
    let _b = app.officer("o2", HERE.0 + 0.009, HERE.1).await; // ~1 km
    let (mut c, n) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(ids(&n), ["o1", "o2"]);
    c.send(json!({"type":"watch","radius_m":500})).await;
    let p = c.recv_type("nearby").await;
    assert_eq!(p["radius_m"], 500.0);
    assert_eq!(ids(&p), ["o1"]);
    c.send(json!({"type":"watch","radius_m":5000,"limit":1}))
        .await;
    let p = c.recv_type("nearby").await;
    assert_eq!(ids(&p), ["o1"]);
    assert_eq!(p["radius_m"], 5000.0);
    c.send(json!({"type":"location","lat":HERE.0 + 0.0095,"lon":HERE.1}))
        .await;
    let p = c.recv_type("nearby").await;
    assert_eq!(ids(&p), ["o2"], "limit 1 keeps only the nearest");
    app.running.shutdown().await;
}

#[tokio::test]
async fn officer_nearby_is_not_hidden_by_the_limit() {
    let app = spawn_app().await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    c.send(json!({"type":"watch","limit":1})).await;
    c.ping().await;
    let _a = app.officer("o1", HERE.0 + 0.0003, HERE.1).await; // ~33 m
    let _b = app.officer("o2", HERE.0 + 0.0006, HERE.1).await; // ~67 m
    c.send(json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
        .await;
    let mut seen = Vec::new();
    while let Some(f) = c.try_recv(Duration::from_millis(800)).await {
        if f["type"] == "officer_nearby" {
            seen.push(f["officer_id"].as_str().unwrap().to_owned());
        }
        if f["type"] == "nearby" {
            assert!(f["officers"].as_array().unwrap().len() <= 1, "limit 1: {f}");
        }
    }
    seen.sort();
    assert_eq!(seen, ["o1", "o2"], "each close officer announced once");
    app.running.shutdown().await;
}

/// The answer is computed from the own region's k-th nearest first, and only the regions
/// inside that smaller circle are watched: pushes must still follow every change that
/// matters — the nearest leaving (an officer farther away, in another zip, takes its
/// place) and a nearer officer arriving in a neighbouring zip.
#[tokio::test]
async fn pushes_follow_changes_outside_the_first_answer() {
    let app = spawn_app().await;
    let zips = zips();
    let here = heyblue::geo::LatLon::new(HERE.0, HERE.1).unwrap();
    let (own, _) = zips.nearest(here);
    // A point ~600 m away in another zip.
    let far = (0..360)
        .step_by(10)
        .map(|deg| {
            let b = f64::from(deg).to_radians();
            heyblue::geo::LatLon::new(HERE.0 + 0.0054 * b.cos(), HERE.1 + 0.0071 * b.sin()).unwrap()
        })
        .find(|p| zips.nearest(*p).0 != own)
        .expect("a neighbouring zip within 600 m");
    let mut a = app.officer("near", HERE.0 + 0.0001, HERE.1).await;
    let _b = app.officer("far", far.lat, far.lon).await;
    let (mut c, first) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(first["officers"][0]["officer_id"], "near", "{first}");
    c.send(serde_json::json!({"type":"watch","limit":1})).await;
    c.send(serde_json::json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
        .await;
    let n = c.recv_type("nearby").await;
    assert_eq!(n["officers"].as_array().unwrap().len(), 1, "{n}");
    // The nearest leaves: the farther officer in the other zip is pushed.
    a.send(serde_json::json!({"type":"unavailable"})).await;
    let p = c.recv_type("nearby").await;
    assert_eq!(p["officers"][0]["officer_id"], "far", "{p}");
    // A nearer officer arrives in the other zip (just across the border): pushed too.
    let (_, d_far) = (zips.nearest(far).0, heyblue::geo::haversine_m(here, far));
    let mut mid = far;
    for step in 1..100 {
        let t = f64::from(step) / 100.0;
        let q = heyblue::geo::LatLon::new(
            here.lat + (far.lat - here.lat) * t,
            here.lon + (far.lon - here.lon) * t,
        )
        .unwrap();
        if zips.nearest(q).0 != own {
            mid = q;
            break;
        }
    }
    assert!(heyblue::geo::haversine_m(here, mid) < d_far);
    let _m = app.officer("mid", mid.lat, mid.lon).await;
    let p = c.recv_type("nearby").await;
    assert_eq!(p["officers"][0]["officer_id"], "mid", "{p}");
}

/// A citizen that moves keeps watching the regions it watched already without telling
/// them (its circle is shared with them): a change near its new position must be pushed
/// even though it is far from where the citizen was when it registered.
#[tokio::test]
async fn pushes_follow_changes_near_a_moved_citizen_in_the_same_regions() {
    let app = spawn_app().await; // radius 2 km
    let zips = zips();
    // A large rural zip, so that every point below is in it (asserted).
    let (own, _) = zips.nearest(LatLon::new(44.0, -101.0).unwrap());
    let x = zips.get(own).centroid;
    let at = |dlat: f64| LatLon::new(x.lat + dlat, x.lon).unwrap();
    // 2.5 km north of the citizen's first position, beyond its first 2 km circle.
    let (a_pos, y, b_pos, b_moved) = (at(0.0005), at(0.0225), at(0.0228), at(0.0229));
    for p in [a_pos, y, b_pos, b_moved] {
        assert_eq!(zips.nearest(p).0, own, "{p:?} left the zip");
    }
    let _a = app.officer("a", a_pos.lat, a_pos.lon).await;
    let mut b = app.officer("b", b_pos.lat, b_pos.lon).await;
    let (mut c, first) = app.citizen("c1", x.lat, x.lon).await;
    assert_eq!(ids(&first), ["a"], "{first}");
    c.send(json!({"type":"location","lat":y.lat,"lon":y.lon}))
        .await;
    assert_eq!(ids(&c.recv_type("nearby").await), ["b"]);
    // "b" moves 11 m, 2.5 km from where the citizen registered its watch: pushed.
    b.send(json!({"type":"location","lat":b_moved.lat,"lon":b_moved.lon}))
        .await;
    let p = c.recv_type("nearby").await;
    assert!(
        (p["officers"][0]["lat"].as_f64().unwrap() - b_moved.lat).abs() < 1e-9,
        "{p}"
    );
    app.running.shutdown().await;
}

/// A `location` may be handled by the socket's own task when the session actor has
/// nothing of the socket's left to do; frames are still answered in the order sent.
#[tokio::test]
async fn frames_are_answered_in_order_whichever_task_takes_them() {
    let app = spawn_app_unlimited(1_000).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let rounds = 200;
    for _ in 0..rounds {
        // The ping goes through the actor; the location right behind it must wait for it.
        c.send(json!({"type":"ping"})).await;
        c.send(json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
            .await;
    }
    for i in 0..rounds {
        assert_eq!(c.recv().await["type"], "pong", "round {i}");
        assert_eq!(c.recv().await["type"], "nearby", "round {i}");
    }
    app.running.shutdown().await;
}

/// A location sent before the session has started (before `welcome` arrives) is answered
/// after `welcome` and the first `nearby`, whichever task of the server takes it. Many
/// sessions open at once on two worker threads, so that some session actors start late.
/// (The race is narrow: with 20 ms slept at the top of `post_start`, a socket task that did
/// not wait for the actor's start answered `nearby` before `welcome` here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_sent_at_once_is_answered_after_welcome() {
    let app = spawn_app().await;
    let sessions = (0..64).map(|i| {
        let app = &app;
        async move {
            let mut c = app
                .open(Role::Citizen, &format!("c{i}"), HERE.0, HERE.1)
                .await;
            c.send(json!({"type":"location","lat":HERE.0,"lon":HERE.1}))
                .await;
            let mut types = Vec::new();
            for _ in 0..3 {
                types.push(c.recv().await["type"].as_str().unwrap_or("").to_owned());
            }
            types
        }
    });
    for (i, types) in futures_util::future::join_all(sessions)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(types, &["welcome", "nearby", "nearby"], "session {i}");
    }
    app.running.shutdown().await;
}
