//! What a bearer token must be, over real HTTP: its `nbf`, its `name` (the rule of
//! `PATCH /v1/me`, since the name is sent to every nearby citizen), and the scheme's case.

use heyblue::protocol::Role;
use serde_json::{Value, json};

use crate::helpers::*;

/// A token signed with the server's development secret, with any claims.
fn signed(claims: Value) -> String {
    let secret = heyblue::config::Settings::defaults().auth.jwt_secret;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused_everywhere() {
    let app = spawn_app().await;
    let later = signed(json!({"sub":"a1","role":"admin","exp": now() + 7200, "nbf": now() + 3600}));
    for path in [
        "/v1/me",
        "/admin/v1/stats",
        "/v1/citizens/session?lat=40.75&lon=-73.99",
    ] {
        let (s, b) = app.get(path, Some(&later)).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (401, Some("token_not_yet_valid")),
            "{path}: {b}"
        );
    }
    let now_valid =
        signed(json!({"sub":"a1","role":"admin","exp": now() + 7200, "nbf": now() - 10}));
    let (s, b) = app.get("/admin/v1/stats", Some(&now_valid)).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_token_name_follows_the_display_name_rule() {
    let app = spawn_app().await;
    let exp = now() + 600;
    for bad in [
        "x".repeat(5_000),
        "x".repeat(61),
        "   ".to_owned(),
        "bad\u{7}name".to_owned(),
    ] {
        let t = signed(json!({"sub":"o1","role":"officer","exp":exp,"name":bad}));
        let (s, b) = app.get("/v1/me", Some(&t)).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (401, Some("invalid_token")),
            "{b}"
        );
    }
    // A 100,000-character name does not even get past the header limit.
    let huge = signed(json!({"sub":"o1","role":"officer","exp":exp,"name":"x".repeat(100_000)}));
    let (s, b) = app.get("/v1/me", Some(&huge)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (431, Some("headers_too_large")),
        "{b}"
    );
    // Sixty characters, with spaces around: kept, trimmed.
    let name = format!("  {}  ", "é".repeat(60));
    let t = signed(json!({"sub":"o1","role":"officer","exp":exp,"name":name}));
    let (s, b) = app.get("/v1/me", Some(&t)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["display_name"], "é".repeat(60));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let t = app.token(Role::Admin, "admin");
    let http = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = http
            .get(format!("{}/admin/v1/stats", app.base))
            .header("authorization", format!("{scheme} {t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    let r = http
        .get(format!("{}/admin/v1/stats", app.base))
        .header("authorization", format!("Basic {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
