//! Every refusal of the WebSocket preamble of docs/protocol.md: error frame, state unchanged,
//! socket open; rate limiting; close 1008 after consecutive errors; slow clients closed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use heyblue::protocol::Role;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let mut o = app.officer("o1", HERE.0, HERE.1).await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "invalid_json"),
        (Message::binary(vec![1u8, 2, 3]), "unsupported_frame"),
        (
            Message::text(json!({"type":"teleport"}).to_string()),
            "unknown_type",
        ),
        (
            Message::text(json!({"lat":1}).to_string()),
            "invalid_message",
        ),
        (
            Message::text(json!({"type":"location","lat":40.7}).to_string()),
            "invalid_message",
        ),
        (
            Message::text(json!({"type":"location","lat":"n","lon":1}).to_string()),
            "invalid_message",
        ),
        (
            Message::text(json!({"type":"location","lat":120,"lon":1}).to_string()),
            "invalid_coordinates",
        ),
        (
            Message::text(json!({"type":"location","lat":35,"lon":-45}).to_string()),
            "outside_service_area",
        ),
        (
            Message::text(json!({"type":"available","window_s":0}).to_string()),
            "invalid_value",
        ),
        (
            Message::text(json!({"type":"available","window_s":901}).to_string()),
            "invalid_value",
        ),
        (
            Message::text(json!({"type":"watch","radius_m":500}).to_string()),
            "forbidden_for_role",
        ),
        (
            Message::text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4100))),
            "frame_too_large",
        ),
    ];
    for (i, (m, code)) in cases.into_iter().enumerate() {
        o.send_raw(m).await;
        let e = o.recv().await;
        assert_eq!(e["type"], "error", "case {i}");
        assert_eq!(e["code"], code, "case {i}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        // Below ten in a row: a ping resets the count and proves the socket is open.
        if i % 5 == 4 {
            o.ping().await;
        }
    }
    o.ping().await;
    // State unchanged: still available at the original place.
    let (_c, n) = app.citizen("c1", HERE.0, HERE.1).await;
    assert_eq!(n["officers"][0]["officer_id"], "o1");
    assert!((n["officers"][0]["lat"].as_f64().unwrap() - HERE.0).abs() < 1e-9);
    app.running.shutdown().await;
}

#[tokio::test]
async fn error_names_the_offending_type() {
    let app = spawn_app().await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    c.send(json!({"type":"available","window_s":60})).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "forbidden_for_role");
    assert_eq!(e["ref"], "available");
    app.running.shutdown().await;
}

#[tokio::test]
async fn ten_consecutive_errors_close_with_1008() {
    let app = spawn_app().await;
    let mut c = app.connect(Role::Citizen, "c1", HERE.0, HERE.1).await;
    c.recv_type("nearby").await;
    for _ in 0..10 {
        c.send_raw(Message::text("nope")).await;
    }
    // Read after the tenth refusal: the session will close, so they never reach it.
    for _ in 0..20 {
        c.send(json!({"type":"ping"})).await;
    }
    let (frames, code) = c.closed().await;
    assert_eq!(frames.iter().filter(|f| f["type"] == "error").count(), 10);
    assert_eq!(frames.iter().filter(|f| f["type"] == "pong").count(), 0);
    assert_eq!(code, Some(1008));
    let m = app.metrics().await;
    assert!(metric_sum(&m, "ws_frames_ignored_total") >= 20.0, "{m}");
    app.running.shutdown().await;
}

#[tokio::test]
async fn nine_errors_then_a_good_frame_keep_the_socket() {
    let app = spawn_app().await;
    let mut c = app.connect(Role::Citizen, "c1", HERE.0, HERE.1).await;
    c.recv_type("nearby").await;
    for _ in 0..2 {
        for _ in 0..9 {
            c.send_raw(Message::text("nope")).await;
            assert_eq!(c.recv().await["code"], "invalid_json");
        }
        c.ping().await;
    }
    app.running.shutdown().await;
}

#[tokio::test]
async fn flooding_is_rate_limited_then_closed() {
    let app = spawn_app_with(|s| {
        s.limits.messages_per_s = 5;
        s.limits.messages_burst = 5;
    })
    .await;
    let mut c = app.connect(Role::Citizen, "c1", HERE.0, HERE.1).await;
    c.recv_type("nearby").await;
    for _ in 0..30 {
        c.send(json!({"type":"ping"})).await;
    }
    let (frames, code) = c.closed().await;
    let pongs = frames.iter().filter(|f| f["type"] == "pong").count();
    let limited = frames
        .iter()
        .filter(|f| f["code"] == "rate_limited")
        .count();
    assert!((5..=7).contains(&pongs), "{pongs} pongs");
    assert_eq!(limited, 10, "closed after ten rate_limited in a row");
    assert_eq!(code, Some(1008));
    // Counted where operators look.
    let m = app.metrics().await;
    let count = |name: &str| metric_sum(&m, name);
    assert!(count("ws_rate_limited_total") >= 10.0, "{m}");
    assert!(count("ws_errors_total{code=\"rate_limited\"}") >= 10.0);
    let (s, _) = app
        .get("/metrics", Some(&app.token(Role::Citizen, "c")))
        .await;
    assert_eq!(s, 403, "metrics need an admin token on the main listener");
    app.running.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_4008() {
    let app = spawn_app_unlimited(8).await;
    let url = app.ticket(Role::Citizen, "c1", HERE.0, HERE.1).await;
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    // Each unknown type of ~3.9 KB comes back as an ~8 KB error frame; a ping every nine
    // keeps the error count below the close limit. Nothing is read meanwhile.
    // The flood stops once the server has given up on the session (it then leaves the
    // registry): a client that went on sending would fill the server's receive buffer and
    // could not be sent the close frame within the grace period.
    let big = json!({"type": "x".repeat(3900)}).to_string();
    let ctx = app.running.ctx().clone();
    let flood = tokio::spawn(async move {
        let mut registered = false;
        for i in 0..20_000 {
            if i % 9 == 0 {
                let live = ctx.sessions.get("c1").is_some();
                if registered && !live {
                    break;
                }
                registered |= live;
            }
            let m = if i % 9 == 8 {
                json!({"type":"ping"}).to_string()
            } else {
                big.clone()
            };
            if tx.send(Message::text(m)).await.is_err() {
                break;
            }
        }
        tx
    });
    let _tx = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("flood ends")
        .unwrap();
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
        match m {
            Ok(Message::Close(c)) => {
                code = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(4008));
    let body = app.metrics().await;
    assert!(body.contains("ws_slow_client_closes_total"), "counted");
    // The server forgot the socket.
    eventually("the server forgets the slow socket", || async {
        (app.running.ctx().sessions.sockets() == 0).then_some(())
    })
    .await;
    app.running.shutdown().await;
}
