//! The dashboard's pages and assets as HTTP serves them (the browser-driven tests are the
//! dashboard's own suite): embedded, same-origin only, cached and compressed; and the map's
//! data endpoint.

use heyblue::protocol::Role;
use serde_json::Value;

use crate::helpers::*;

/// Every `src="…"` / `href="…"` of a page.
fn references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

#[tokio::test]
async fn the_pages_load_only_their_own_embedded_assets() {
    let app = spawn_app().await;
    // reqwest here has no gzip feature: bodies arrive as the server sent them.
    let http = reqwest::Client::new();
    for page in ["/admin/", "/docs"] {
        let r = http
            .get(format!("{}{page}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{page}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        let html = r.text().await.unwrap();
        let refs = references(&html);
        assert!(!refs.is_empty(), "{page} loads nothing?");
        for src in refs {
            assert!(
                src.starts_with("/admin/assets/"),
                "{page} loads {src} from elsewhere"
            );
            let a = http
                .get(format!("{}{src}", app.base))
                .header("accept-encoding", "gzip")
                .send()
                .await
                .unwrap();
            assert_eq!(a.status(), 200, "{src}");
            assert_eq!(a.headers()["content-encoding"], "gzip", "{src}");
            assert!(
                a.headers()["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("max-age"),
                "{src}"
            );
        }
    }
    let html = http
        .get(format!("{}/admin/", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The contract's names: the token input, the zip input, one element per counter.
    for needle in [
        r#"name="token""#,
        r#"name="zip""#,
        r#"id="officers-available""#,
        r#"id="officers-online""#,
        r#"id="citizens-online""#,
        r#"id="regions-active""#,
        r#"id="pending-requests""#,
    ] {
        assert!(html.contains(needle), "the page lacks {needle}");
    }
    let missing = http
        .get(format!("{}/admin/assets/vendor/nothing.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn the_map_lists_every_available_officer_and_no_citizen() {
    let app = spawn_app().await;
    let _o1 = app.officer("o1", 40.7506, -73.9972).await;
    let _o2 = app.officer("o2", 34.0522, -118.2437).await;
    let _c = app.citizen("c1", 40.7510, -73.9972).await;
    let admin = app.token(Role::Admin, "admin");
    let (s, b) = app.get("/admin/v1/officers", Some(&admin)).await;
    assert_eq!(s, 200, "{b}");
    let mut ids: Vec<&str> = b["officers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["officer_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["o1", "o2"], "{b}");
    assert_eq!(b["truncated"], false);
    let o1 = b["officers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["officer_id"] == "o1")
        .unwrap();
    assert_eq!(
        (o1["lat"].as_f64(), o1["zip"].as_str()),
        (Some(40.7506), Some("10001"))
    );
    // Citizens only as counts per zip, at the zip's centroid.
    let (s, z) = app.get("/admin/v1/citizens/zips", Some(&admin)).await;
    assert_eq!(s, 200, "{z}");
    assert_eq!(z["zips"].as_array().unwrap().len(), 1, "{z}");
    assert_eq!(
        (
            z["zips"][0]["zip"].as_str(),
            z["zips"][0]["citizens"].as_u64()
        ),
        (Some("10001"), Some(1))
    );
    assert_ne!(
        z["zips"][0]["lat"].as_f64(),
        Some(40.7510),
        "a citizen's position is never served"
    );
    let (s, b) = app.get("/admin/v1/officers?limit=1", Some(&admin)).await;
    assert_eq!((s, b["truncated"].clone()), (200, Value::Bool(true)), "{b}");
    let (s, _) = app
        .get("/admin/v1/officers", Some(&app.token(Role::Citizen, "c1")))
        .await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn citizens_per_zip_follow_moves_and_departures() {
    let app = spawn_app().await;
    let admin = app.token(Role::Admin, "admin");
    let counts = || async {
        let (_, z) = app.get("/admin/v1/citizens/zips", Some(&admin)).await;
        z["zips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| {
                (
                    z["zip"].as_str().unwrap().to_owned(),
                    z["citizens"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (mut c, _) = app.citizen("c1", 40.7506, -73.9972).await;
    assert_eq!(counts().await, [("10001".to_owned(), 1)]);
    c.send(serde_json::json!({"type":"location","lat":34.0522,"lon":-118.2437}))
        .await;
    c.recv_type("nearby").await;
    let now = counts().await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0].0, "10001");
    drop(c);
    eventually("the citizen leaves the counts", || async {
        counts().await.is_empty().then_some(())
    })
    .await;
}
