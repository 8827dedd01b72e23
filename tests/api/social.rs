//! Sharing consent and the public feed: a connection is shared only when both sides
//! consented, a trophy only when its account did; nothing shared carries a position or the
//! id of an account that did not consent.

use heyblue::protocol::Role;
use serde_json::{Value, json};

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);
const NEAR: (f64, f64) = (40.7510, -73.9972);

/// The whole feed, a page of `limit` at a time.
async fn whole_feed(app: &TestApp, token: &str, limit: u64) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = format!("/v1/feed?limit={limit}");
    loop {
        let (s, page) = app.get(&path, Some(token)).await;
        assert_eq!(s, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            None => return items,
            Some(next) => path = format!("/v1/feed?limit={limit}&before={}", urlencode(next)),
        }
    }
}

#[tokio::test]
async fn the_feed_shares_what_both_or_its_own_account_consented_to() {
    on_both_stores(|app| async move {
        let mut o1 = app.officer("o1", NEAR.0, NEAR.1).await;
        let mut o2 = app.officer("o2", NEAR.0, NEAR.1 + 0.0002).await;
        let (mut c1, _) = app.citizen("c1", HERE.0, HERE.1).await;
        let (mut c2, _) = app.citizen("c2", HERE.0, HERE.1).await;
        // Consent: o1 and c1 share; o2 and c2 do not (the default).
        let me = app.consent(Role::Officer, "o1", true).await;
        assert_eq!(me["display_name"], "Name o1", "the name is kept");
        app.consent(Role::Citizen, "c1", true).await;
        let (_, me) = app
            .get("/v1/me", Some(&app.token(Role::Citizen, "c2")))
            .await;
        assert_eq!(me["share_connections"], false, "off until it says so");

        // Both / one (officer) / one (citizen) / neither.
        ask_and_accept(&mut o1, &mut c1, "o1", "in_person").await;
        ask_and_accept(&mut o1, &mut c2, "o1", "virtual").await;
        ask_and_accept(&mut o2, &mut c1, "o2", "virtual").await;
        ask_and_accept(&mut o2, &mut c2, "o2", "virtual").await;

        let reader = app.token(Role::Citizen, "c2");
        let items = whole_feed(&app, &reader, 100).await;
        let connections: Vec<&Value> = items.iter().filter(|i| i["type"] == "connection").collect();
        assert_eq!(connections.len(), 1, "{items:?}");
        let c = connections[0];
        assert_eq!(
            (
                c["officer"]["account_id"].as_str(),
                c["citizen"]["account_id"].as_str()
            ),
            (Some("o1"), Some("c1"))
        );
        assert_eq!(c["officer"]["display_name"], "Name o1");
        assert_eq!(c["mode"], "in_person");
        assert_eq!(c["zip"], "10001");
        assert_eq!(c["city"], "New York, NY");
        let mut trophies: Vec<(String, String)> = items
            .iter()
            .filter(|i| i["type"] == "trophy")
            .map(|i| {
                (
                    i["account"]["account_id"].as_str().unwrap().to_owned(),
                    i["trophy_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        trophies.sort();
        assert_eq!(
            trophies,
            [
                ("c1".to_owned(), "first_connection".to_owned()),
                ("o1".to_owned(), "first_connection".to_owned())
            ]
        );
        // Newest first; no position and no one who did not consent, anywhere.
        let ats: Vec<&str> = items.iter().map(|i| i["at"].as_str().unwrap()).collect();
        assert!(ats.windows(2).all(|w| w[0] >= w[1]), "{ats:?}");
        let text = serde_json::to_string(&items).unwrap();
        assert!(
            !text.contains("\"o2\"") && !text.contains("\"c2\""),
            "{text}"
        );
        let mut all = Vec::new();
        keys(&Value::Array(items.clone()), &mut all);
        assert!(
            !all.iter()
                .any(|k| k == "lat" || k == "lon" || k.contains("position")),
            "{all:?}"
        );
        // One item a page walks the same items, none twice.
        assert_eq!(whole_feed(&app, &reader, 1).await, items);

        // c1 withdraws: its connection and its trophy leave the feed.
        app.consent(Role::Citizen, "c1", false).await;
        let items = whole_feed(&app, &reader, 100).await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0]["account"]["account_id"], "o1");

        let (s, b) = app.get("/v1/feed?before=nonsense", Some(&reader)).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("invalid_cursor"))
        );
        let (s, _) = app.get("/v1/feed", None).await;
        assert_eq!(s, 401);
        app.running.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_patch_needs_something_to_change() {
    let app = spawn_app().await;
    let patch = |body: Value| app.patch_me(Role::Citizen, "c1", body);
    let (s, b) = patch(json!({})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{b}"
    );
    for bad in [
        json!({"share_connections": "yes"}),
        json!({"share_connections": null}),
        json!({"display_name": null}),
    ] {
        let (s, b) = patch(bad.clone()).await;
        assert!((400..500).contains(&s), "{bad} → {s} {b}");
    }
    let (s, b) = patch(json!({"display_name": "Ada", "share_connections": true})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["display_name"].as_str(), b["share_connections"].as_bool()),
        (Some("Ada"), Some(true))
    );
    app.running.shutdown().await;
}

/// The first page of each size is served from the node's cache for `feed.cache_ms` (here
/// longer than the test): a new shareable connection does not show on it while pages after
/// a cursor are read each time, and a change of consent on this node shows at once.
#[tokio::test]
async fn the_first_page_is_cached_until_a_consent_changes_on_the_node() {
    let app = spawn_app_with(|s| s.feed.cache_ms = 600_000).await;
    let reader = app.token(Role::Citizen, "reader");
    let mut o1 = app.officer("o1", NEAR.0, NEAR.1).await;
    let mut o2 = app.officer("o2", NEAR.0, NEAR.1 + 0.0002).await;
    let (mut c1, _) = app.citizen("c1", HERE.0, HERE.1).await;
    let (mut c2, _) = app.citizen("c2", HERE.0, HERE.1).await;
    for (role, who) in [
        (Role::Officer, "o1"),
        (Role::Officer, "o2"),
        (Role::Citizen, "c1"),
        (Role::Citizen, "c2"),
    ] {
        app.consent(role, who, true).await;
    }
    ask_and_accept(&mut o1, &mut c1, "o1", "virtual").await;
    c1.recv_type("trophy_awarded").await;
    let kinds = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = whole_feed(&app, &reader, 20).await;
    assert_eq!(
        kinds(&first),
        ["trophy", "trophy", "connection"],
        "{first:?}"
    );

    let hits = app.metric("feed_cache_total").await;
    ask_and_accept(&mut o2, &mut c2, "o2", "virtual").await;
    c2.recv_type("trophy_awarded").await;
    assert_eq!(
        whole_feed(&app, &reader, 20).await,
        first,
        "the cached page"
    );
    assert!(app.metric("feed_cache_total").await > hits);
    // Another page size is read afresh, and so is every page after a cursor.
    assert_eq!(whole_feed(&app, &reader, 1).await.len(), 6);

    // c1 withdraws: this node's cache is emptied; its connection and trophy go.
    app.consent(Role::Citizen, "c1", false).await;
    let now = whole_feed(&app, &reader, 20).await;
    assert_eq!(now.len(), 4, "{now:?}");
    assert!(
        !now.to_vec()
            .iter()
            .any(|i| i.to_string().contains("\"c1\"")),
        "{now:?}"
    );
    app.running.shutdown().await;
}
