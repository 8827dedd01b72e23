//! The HTTP edge over raw TCP: every refusal has the JSON error body, slow or idle
//! connections are closed after `limits.header_timeout_ms`, a slow request gets 408, and
//! connections past `limits.max_connections` are told 503 and closed.

use heyblue::protocol::Role;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn raw(app: &TestApp) -> TcpStream {
    let addr = app.base.strip_prefix("http://").unwrap();
    TcpStream::connect(addr).await.unwrap()
}

/// Everything the server sends until it closes the connection (panics after 5 s).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection within 5 s")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and the JSON body of a raw answer.
fn answer(raw: &str) -> (u16, Value) {
    let status = raw[9..12].parse().unwrap();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn code(b: &Value) -> &str {
    b["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn refusals_at_the_edge_have_the_json_error_body() {
    let app = spawn_app().await;
    let (s, b) = app
        .send(reqwest::Method::DELETE, "/healthz", None, None, &[])
        .await;
    assert_eq!((s, code(&b)), (405, "method_not_allowed"), "{b}");
    let (s, b) = app.get("/v1/ws", None).await;
    assert_eq!((s, code(&b)), (400, "websocket_upgrade_required"), "{b}");
    let http = reqwest::Client::new();
    let mut many = reqwest::header::HeaderMap::new();
    for i in 0..150 {
        many.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    for req in [
        http.get(format!("{}/healthz", app.base)).headers(many),
        http.get(format!("{}/healthz", app.base))
            .header("x-big", "a".repeat(20_000)),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 431);
        let b: Value = r.json().await.unwrap();
        assert_eq!(code(&b), "headers_too_large", "{b}");
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    let app = spawn_app_with(|s| {
        s.limits.header_timeout_ms = 300;
        s.limits.request_timeout_ms = 300;
    })
    .await;
    // A request head that never ends.
    let mut slow = raw(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_to_close(&mut slow).await,
        "",
        "closed without an answer"
    );
    // A keep-alive connection left idle after its answer.
    let mut idle = raw(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut idle).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // A body that stops coming: 408.
    let admin = app.token(Role::Admin, "admin");
    let mut body = raw(&app).await;
    body.write_all(
        format!(
            "POST /admin/v1/import/charities HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: text/csv\r\nContent-Length: 1000\r\n\r\ncharity_id,name,website\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let got = read_to_close(&mut body).await;
    let (status, b) = answer(&got);
    assert_eq!((status, code(&b)), (408, "request_timeout"), "{got}");
    assert!(app.metric("http_refused_total").await >= 1.0);
}

#[tokio::test]
async fn connections_past_the_cap_are_told_503_and_closed() {
    let app = spawn_app_with(|s| s.limits.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = raw(&app).await;
        // Each is served (so it was accepted and counted) and kept open.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut fourth = raw(&app).await;
    let got = read_to_close(&mut fourth).await;
    let (status, b) = answer(&got);
    assert_eq!((status, code(&b)), (503, "too_many_connections"), "{got}");
    drop(held);
    eventually("a slot frees when a connection closes", || async {
        let mut s = raw(&app).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        read_to_close(&mut s)
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_full_node_answers_the_orchestrator_with_503_node_full() {
    let app = spawn_app_with(|s| s.limits.max_sessions = 1).await;
    let _c = app.connect(Role::Citizen, "c1", 40.7506, -73.9972).await;
    let (s, b) = app
        .get(
            "/v1/citizens/session?lat=40.75&lon=-73.99",
            Some(&app.token(Role::Citizen, "c2")),
        )
        .await;
    assert_eq!((s, code(&b)), (503, "node_full"), "{b}");
    assert!(app.metric("sessions_refused_total").await >= 1.0);
}
