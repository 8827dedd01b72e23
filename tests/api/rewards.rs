//! Rewards over HTTP: imports feed the storefront; citizens redeem points for signed
//! vouchers, admins and retailers use them once; officers donate. Idempotency-Key on POST.

use heyblue::protocol::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn storefront(app: &TestApp) {
    let (s, b) = app
        .import(
            "retailers",
            "text/csv",
            "retailer_id,name,website\r\nr1,\"Corner Café, Inc.\",https://cafe.example\r\nr2,Books,\r\n",
        )
        .await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(2)), "{b}");
    let (s, b) = app
        .import(
            "offers",
            "text/csv",
            "\u{feff}offer_id,retailer,title,points_cost,valid_until,remaining\n\
             coffee,r1,=HYPERLINK(\"x\"),30,2099-12-31,\n\
             last,Books,Bookmark,10,2099-12-31,1\n\
             free,r1,Nothing,0,2099-12-31,\n",
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], 2, "{b}");
    assert_eq!(b["rejected"][0]["row"], 3, "{b}");
    let (s, b) = app
        .import(
            "charities",
            "application/json",
            r#"[{"charity_id":"ch1","name":"Food Bank","website":"https://food.example"}]"#,
        )
        .await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
}

fn code(b: &Value) -> &str {
    b["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn citizens_redeem_points_for_signed_vouchers_used_once() {
    let app = spawn_app().await;
    storefront(&app).await;
    let citizen = app.token(Role::Citizen, "c1");
    let (s, b) = app.get("/v1/offers", Some(&citizen)).await;
    assert_eq!(s, 200);
    let offers = b["offers"].as_array().unwrap();
    assert_eq!(offers.len(), 2);
    assert_eq!(offers[0]["offer_id"], "coffee");
    assert_eq!(offers[0]["retailer"], "Corner Café, Inc.");
    assert_eq!(
        offers[0]["title"], "=HYPERLINK(\"x\")",
        "text, never a formula"
    );
    assert_eq!(offers[0]["remaining"], Value::Null);
    assert_eq!(offers[1]["remaining"], 1);

    // 20 points: not enough for coffee.
    app.earn("c1", 2).await;
    let (s, b) = app
        .post("/v1/redemptions", &citizen, json!({"offer_id":"coffee"}))
        .await;
    assert_eq!((s, code(&b)), (409, "insufficient_points"), "{b}");
    app.earn("c1", 2).await;
    let (s, b) = app
        .post("/v1/redemptions", &citizen, json!({"offer_id":"coffee"}))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        (b["points_spent"].as_i64(), b["balance"].as_i64()),
        (Some(30), Some(10))
    );
    let voucher = b["voucher_code"].as_str().unwrap().to_owned();

    let (s, me) = app.get("/v1/me", Some(&citizen)).await;
    assert_eq!(s, 200);
    assert_eq!(me["points"], json!({"balance":10,"earned":40,"spent":30}));
    let (_, pts) = app.get("/v1/me/points", Some(&citizen)).await;
    assert_eq!(pts["entries"][0]["kind"], "redemption");
    assert_eq!(pts["entries"][0]["delta"], -30);
    assert_eq!(pts["entries"][0]["ref"], voucher.as_str());

    // Verifiable by anyone with a token; a tampered code is unknown.
    let (s, v) = app
        .get(&format!("/v1/vouchers/{voucher}"), Some(&citizen))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["valid"].as_bool(), v["redeemed"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(v["offer_id"], "coffee");
    assert!(v["issued_at"].is_string());
    let mut forged = voucher.clone().into_bytes();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (s, b) = app
        .get(&format!("/v1/vouchers/{forged}"), Some(&citizen))
        .await;
    assert_eq!((s, code(&b)), (404, "unknown_voucher"));

    // Used once: by its retailer or an admin; citizens and other retailers may not.
    let use_it = |token: String| {
        let app = &app;
        let path = format!("/v1/vouchers/{voucher}/redeem");
        async move { app.send(Method::POST, &path, Some(&token), None, &[]).await }
    };
    let (s, _) = use_it(citizen.clone()).await;
    assert_eq!(s, 403);
    let (s, _) = use_it(app.token(Role::Retailer, "r2")).await;
    assert_eq!(s, 403);
    let (s, b) = use_it(app.token(Role::Retailer, "r1")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["redeemed"], true);
    let (s, b) = use_it(app.token(Role::Admin, "admin")).await;
    assert_eq!((s, code(&b)), (409, "voucher_already_redeemed"));
    let (_, v) = app
        .get(&format!("/v1/vouchers/{voucher}"), Some(&citizen))
        .await;
    assert_eq!(v["redeemed"], true);

    // Nothing changed by the refusals.
    let (_, me) = app.get("/v1/me", Some(&citizen)).await;
    assert_eq!(me["points"]["balance"], 10);
}

#[tokio::test]
async fn redemption_refusals_change_nothing() {
    let app = spawn_app().await;
    storefront(&app).await;
    app.earn("c1", 5).await;
    app.earn("c2", 5).await;
    let c1 = app.token(Role::Citizen, "c1");
    let c2 = app.token(Role::Citizen, "c2");
    for (body, status, err) in [
        (json!({"offer_id":"nope"}), 404, "unknown_offer"),
        (
            json!({"offer_id":"coffee","citizen_id":"c2"}),
            403,
            "forbidden",
        ),
        (json!({"offer":"coffee"}), 400, "invalid_body"),
        (json!({"offer_id":""}), 400, "invalid_offer_id"),
        (json!({"offer_id":7}), 400, "invalid_body"),
    ] {
        let (s, b) = app.post("/v1/redemptions", &c1, body.clone()).await;
        assert_eq!((s, code(&b)), (status, err), "{body} → {b}");
    }
    let (s, b) = app
        .send(
            Method::POST,
            "/v1/redemptions",
            Some(&c1),
            Some(("application/json", b"{".to_vec())),
            &[],
        )
        .await;
    assert_eq!((s, code(&b)), (400, "invalid_body"));
    // Officers do not redeem citizen offers; no token is 401.
    let (s, _) = app
        .post(
            "/v1/redemptions",
            &app.token(Role::Officer, "o1"),
            json!({"offer_id":"coffee"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .send(
            Method::POST,
            "/v1/redemptions",
            None,
            Some(("application/json", b"{}".to_vec())),
            &[],
        )
        .await;
    assert_eq!(s, 401);
    // The last one in stock goes to one citizen.
    let (s, _) = app
        .post("/v1/redemptions", &c1, json!({"offer_id":"last"}))
        .await;
    assert_eq!(s, 201);
    let (s, b) = app
        .post("/v1/redemptions", &c2, json!({"offer_id":"last"}))
        .await;
    assert_eq!((s, code(&b)), (409, "offer_exhausted"));
    let (_, me) = app.get("/v1/me", Some(&c2)).await;
    assert_eq!(me["points"]["balance"], 50);
    let (_, me) = app.get("/v1/me", Some(&c1)).await;
    assert_eq!(me["points"]["balance"], 40);
    // An oversized body is 413 with the JSON error body.
    let big = json!({"offer_id": "x".repeat(70_000)});
    let (s, b) = app.post("/v1/redemptions", &c1, big).await;
    assert_eq!((s, code(&b)), (413, "payload_too_large"));
}

#[tokio::test]
async fn officers_donate_points_to_charities() {
    let app = spawn_app().await;
    storefront(&app).await;
    app.earn("o1", 2).await;
    let officer = app.token(Role::Officer, "o1");
    let (s, b) = app.get("/v1/charities", Some(&officer)).await;
    assert_eq!(s, 200);
    assert_eq!(b["charities"][0]["charity_id"], "ch1");
    assert_eq!(b["charities"][0]["name"], "Food Bank");
    for (body, status, err) in [
        (
            json!({"charity_id":"ch1","points":0}),
            400,
            "invalid_points",
        ),
        (
            json!({"charity_id":"ch1","points":-5}),
            400,
            "invalid_points",
        ),
        (
            json!({"charity_id":"ch1","points":"5"}),
            400,
            "invalid_body",
        ),
        (
            json!({"charity_id":"ch1","points":2.5}),
            400,
            "invalid_body",
        ),
        (
            json!({"charity_id":"nope","points":5}),
            404,
            "unknown_charity",
        ),
        (
            json!({"charity_id":"ch1","points":21}),
            409,
            "insufficient_points",
        ),
    ] {
        let (s, b) = app.post("/v1/donations", &officer, body.clone()).await;
        assert_eq!((s, code(&b)), (status, err), "{body} → {b}");
    }
    let (s, b) = app
        .post(
            "/v1/donations",
            &officer,
            json!({"charity_id":"ch1","points":15}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["balance"], 5);
    assert!(b["donation_id"].is_string());
    let (s, _) = app
        .post(
            "/v1/donations",
            &app.token(Role::Citizen, "c1"),
            json!({"charity_id":"ch1","points":1}),
        )
        .await;
    assert_eq!(s, 403);
    let (_, pts) = app.get("/v1/me/points", Some(&officer)).await;
    assert_eq!(pts["entries"][0]["kind"], "donation");
    assert_eq!(pts["entries"][0]["delta"], -15);
}

#[tokio::test]
async fn idempotency_key_gives_the_same_answer_and_one_effect() {
    let app = spawn_app().await;
    storefront(&app).await;
    app.earn("c1", 10).await;
    let citizen = app.token(Role::Citizen, "c1");
    let body = |offer: &str| {
        Some((
            "application/json",
            json!({"offer_id": offer}).to_string().into_bytes(),
        ))
    };
    let keyed = |offer: &'static str, key: &'static str| {
        let (app, citizen) = (&app, citizen.clone());
        async move {
            app.send(
                Method::POST,
                "/v1/redemptions",
                Some(&citizen),
                body(offer),
                &[("Idempotency-Key", key)],
            )
            .await
        }
    };
    let answers = futures_util::future::join_all((0..5).map(|_| keyed("coffee", "k1"))).await;
    assert_eq!(answers[0].0, 201, "{:?}", answers[0]);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    let (_, me) = app.get("/v1/me", Some(&citizen)).await;
    assert_eq!(me["points"]["balance"], 70, "debited once");
    let (s, b) = keyed("last", "k1").await;
    assert_eq!((s, code(&b)), (422, "idempotency_key_reused"));
    // Refusals are answers too; another key is another request.
    let (s, _) = keyed("nope", "k2").await;
    assert_eq!(s, 404);
    assert_eq!(keyed("nope", "k2").await.0, 404);
    let (s, b) = keyed("coffee", "k3").await;
    assert_eq!(s, 201);
    assert_ne!(b["voucher_code"], answers[0].1["voucher_code"]);
    let long = "k".repeat(300);
    let (s, b) = app
        .send(
            Method::POST,
            "/v1/redemptions",
            Some(&citizen),
            body("coffee"),
            &[("Idempotency-Key", &long)],
        )
        .await;
    assert_eq!((s, code(&b)), (400, "invalid_idempotency_key"));
}

#[tokio::test]
async fn imports_validate_rows_and_refuse_broken_files_whole() {
    let app = spawn_app_with(|s| s.limits.import_max_bytes = 4096).await;
    storefront(&app).await;
    // Structural errors: nothing changes.
    for (ct, body) in [
        ("text/csv", "offer_id,title\nx,y\n"),
        ("application/json", "{\"offer_id\":\"x\"}"),
        ("application/json", "[{"),
        ("text/csv", ""),
    ] {
        let (s, b) = app.import("offers", ct, body).await;
        assert_eq!((s, code(&b)), (400, "invalid_import"), "{body:?} → {b}");
    }
    let (s, b) = app.import("offers", "text/csv", &"x".repeat(5000)).await;
    assert_eq!((s, code(&b)), (413, "payload_too_large"), "{b}");
    let (s, b) = app.import("vehicles", "text/csv", "a\n1\n").await;
    assert_eq!((s, code(&b)), (404, "unknown_import_kind"), "{b}");
    // Row errors are listed; the rest goes in, and the same id twice is refused.
    let (s, b) = app
        .import(
            "offers",
            "text/csv",
            "offer_id,retailer,title,points_cost,valid_until,remaining\n\
             a1,r1,A,5,2099-01-01,\n\
             a2,ghost,B,5,2099-01-01,\n\
             a1,r1,C,5,2099-01-01,\n\
             a3,r1,D,-5,2099-01-01,\n",
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], 1);
    let rows: Vec<u64> = b["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![2, 3, 4], "{b}");
    let (_, offers) = app
        .get("/v1/offers", Some(&app.token(Role::Citizen, "c")))
        .await;
    let ids: Vec<&str> = offers["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offer_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["a1", "coffee", "last"]);
    // Admins only.
    for token in [
        Some(app.token(Role::Citizen, "c")),
        Some(app.token(Role::Officer, "o")),
        None,
    ] {
        let (s, _) = app
            .send(
                Method::POST,
                "/admin/v1/import/offers",
                token.as_deref(),
                Some(("text/csv", b"offer_id\n".to_vec())),
                &[],
            )
            .await;
        assert_eq!(s, if token.is_some() { 403 } else { 401 });
    }
}

#[tokio::test]
async fn imported_officers_are_matched_to_their_token_on_first_login() {
    let app = spawn_app().await;
    let (s, b) = app
        .import(
            "officers",
            "text/csv",
            "officer_id,display_name,badge,precinct,email\nof-7,Sgt. Ana Ríos,4471,14th,ana@pd.example\n",
        )
        .await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    // The token's own name does not overwrite the imported profile.
    let _o = app.officer("of-7", 40.7506, -73.9972).await;
    let (s, me) = app
        .get("/v1/me", Some(&app.token(Role::Officer, "of-7")))
        .await;
    assert_eq!(s, 200);
    assert_eq!(me["display_name"], "Sgt. Ana Ríos");
    assert_eq!(me["role"], "officer");
}

#[tokio::test]
async fn imports_have_their_own_body_limit() {
    let app = spawn_app_with(|s| {
        s.limits.max_body_bytes = 1024;
        s.limits.import_max_bytes = 64 * 1024;
    })
    .await;
    let mut csv = String::from("charity_id,name,website\n");
    for i in 0..500 {
        csv.push_str(&format!("ch{i},Charity {i},\n"));
    }
    assert!(csv.len() > 1024);
    let (s, b) = app.import("charities", "text/csv", &csv).await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(500)), "{b}");
    let big = json!({"offer_id": "x".repeat(2000)});
    let (s, b) = app
        .post("/v1/redemptions", &app.token(Role::Citizen, "c"), big)
        .await;
    assert_eq!((s, code(&b)), (413, "payload_too_large"));
}

#[tokio::test]
async fn a_file_of_many_tiny_rows_is_refused_or_answered_small() {
    // A megabyte-sized JSON array of empty objects: 300,000 rows, each invalid.
    let n = 300_000;
    let mut body = String::with_capacity(3 * n + 2);
    body.push('[');
    for i in 0..n {
        body.push_str(if i == 0 { "{}" } else { ",{}" });
    }
    body.push(']');
    let app = spawn_app().await;
    let (s, b) = app.import("charities", "application/json", &body).await;
    assert_eq!((s, code(&b)), (413, "too_many_rows"), "{b}");
    assert!(app.metric("import_refused_total").await >= 1.0);

    // Allowed that many rows, the answer lists the first thousand rejections and counts all.
    let app = spawn_app_with(|s| s.limits.import_max_rows = 1_000_000).await;
    let (s, b) = app.import("charities", "application/json", &body).await;
    assert_eq!(s, 200, "{}", &b.to_string()[..200]);
    let listed = b["rejected"].as_array().unwrap();
    assert_eq!(listed.len(), 1000);
    assert_eq!(
        (listed[0]["row"].as_u64(), listed[999]["row"].as_u64()),
        (Some(1), Some(1000))
    );
    assert_eq!(b["rejected_count"].as_u64(), Some(n as u64));
    assert!(b.to_string().len() < 100_000, "the answer stays small");
}

#[tokio::test]
async fn a_csv_with_an_unclosed_quote_is_refused_whole() {
    let app = spawn_app().await;
    let csv = "charity_id,name,website\nc1,Food Bank,\nc2,\"Shelter,\nc3,Clinic,\n";
    let (s, b) = app.import("charities", "text/csv", csv).await;
    assert_eq!((s, code(&b)), (400, "invalid_import"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not closed"),
        "{b}"
    );
    let (_, list) = app
        .get("/v1/charities", Some(&app.token(Role::Officer, "o")))
        .await;
    assert!(
        !list.to_string().contains("Food Bank"),
        "nothing was applied: {list}"
    );
}
