//! The admin API over HTTP: who may call it, live stats, ending sessions, reports (on
//! SQLite and PostgreSQL), CSV export that never yields a formula.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use heyblue::protocol::Role;
use heyblue::store::NewConnection;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);
const NEAR: (f64, f64) = (40.7510, -73.9972);

#[tokio::test]
async fn every_admin_route_refuses_other_roles_and_no_token() {
    on_both_stores(|app| async move {
        let routes = [
            (Method::GET, "/admin/v1/stats"),
            (Method::GET, "/admin/v1/regions/10001"),
            (Method::GET, "/admin/v1/reports/connections"),
            (Method::DELETE, "/admin/v1/sessions/c1"),
            (Method::POST, "/admin/v1/import/officers"),
            (Method::POST, "/admin/v1/import/retailers"),
            (Method::POST, "/admin/v1/import/offers"),
            (Method::POST, "/admin/v1/import/charities"),
            (Method::GET, "/metrics"),
        ];
        for (m, path) in routes {
            let body = Some(("application/json", b"[]".to_vec()));
            let (s, b) = app.send(m.clone(), path, None, body.clone(), &[]).await;
            assert_eq!(s, 401, "{m} {path} without a token: {b}");
            for role in [Role::Citizen, Role::Officer, Role::Retailer] {
                let t = app.token(role, "x");
                let (s, b) = app.send(m.clone(), path, Some(&t), body.clone(), &[]).await;
                assert_eq!(s, 403, "{m} {path} as {role:?}: {b}");
                assert_eq!(b["error"]["code"], "forbidden");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn stats_count_what_is_live() {
    on_both_stores(|app| async move {
        let admin = app.token(Role::Admin, "admin");
        let stats = || async { app.get("/admin/v1/stats", Some(&admin)).await.1 };
        let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
        let _idle = app.connect(Role::Officer, "o2", NEAR.0, NEAR.1).await;
        let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
        let s = stats().await;
        assert_eq!(
            (
                &s["officers_online"],
                &s["officers_available"],
                &s["citizens_online"],
                &s["pending_requests"]
            ),
            (&json!(2), &json!(1), &json!(1), &json!(0)),
            "{s}"
        );
        assert!(s["regions_active"].as_u64().unwrap() >= 1);
        assert_eq!(s["nodes"][0]["node_id"], "node-1");
        assert_eq!(s["nodes"][0]["alive"], true);
        let id = ask(&mut o, &mut c, "o1", "virtual").await;
        assert_eq!(stats().await["pending_requests"], 1);
        o.send(json!({"type":"respond","request_id":id,"accept":false}))
            .await;
        c.recv_type("connection_response").await;
        assert_eq!(stats().await["pending_requests"], 0);
        o.send(json!({"type":"unavailable"})).await;
        o.recv_type("availability").await;
        assert_eq!(stats().await["officers_available"], 0);
        o.send(json!({"type":"available","window_s":60})).await;
        o.recv_type("availability").await;
        assert_eq!(stats().await["officers_available"], 1);
        drop(o);
        // A closed socket takes its officer out at once.
        eventually("the closed officer is no longer counted", || async {
            (stats().await["officers_available"] == 0).then_some(())
        })
        .await;
        let (s, r) = app.get("/admin/v1/regions/10001", Some(&admin)).await;
        assert_eq!(s, 200);
        assert_eq!(r["officers"], json!([]), "{r}");
        assert_eq!(r["citizens"], 1, "the one citizen watches its own zip: {r}");
        let (s, b) = app.get("/admin/v1/regions/99999", Some(&admin)).await;
        assert_eq!((s, &b["error"]["code"]), (404, &json!("unknown_zip")));
    })
    .await;
}

#[tokio::test]
async fn an_admin_ends_a_session_with_4002() {
    on_both_stores(|app| async move {
        let admin = app.token(Role::Admin, "admin");
        let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
        let end_o1 = || {
            app.send(
                Method::DELETE,
                "/admin/v1/sessions/o1",
                Some(&admin),
                None,
                &[],
            )
        };
        let (s, b) = end_o1().await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["ended"], true);
        let (frames, code) = o.closed().await;
        assert_eq!(code, Some(4002));
        assert_eq!(
            frames.last().unwrap()["code"],
            "session_ended",
            "{frames:?}"
        );
        // Gone from the index at once, and from the registry.
        let (_, r) = app.get("/admin/v1/regions/10001", Some(&admin)).await;
        assert_eq!(r["officers"], json!([]), "{r}");
        let (s, b) = end_o1().await;
        assert_eq!((s, &b["error"]["code"]), (404, &json!("no_session")));
    })
    .await;
}

async fn record(
    app: &TestApp,
    n: usize,
    officer: &str,
    zip: &str,
    day: (i32, u32, u32),
    points: i64,
) {
    for i in 0..n {
        let at = Utc
            .with_ymd_and_hms(day.0, day.1, day.2, 12, 0, i as u32)
            .unwrap();
        app.running
            .ctx()
            .store
            .record_accepted(&NewConnection {
                request_id: uuid::Uuid::new_v4().to_string(),
                officer_id: officer.into(),
                citizen_id: format!("c-{}", uuid::Uuid::new_v4()),
                mode: "in_person".into(),
                zip: zip.into(),
                per_connection: points,
                pair_cooldown: Duration::from_secs(86_400),
                at,
            })
            .await
            .unwrap();
    }
}

fn rows(b: &Value) -> Vec<(String, i64, i64)> {
    b["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{b}"))
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["connections"].as_i64().unwrap(),
                r["points"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn reports_group_connections_in_the_store() {
    on_both_stores(|app| async move {
        let formula = "=cmd|' /C calc'!A0";
        record(&app, 3, "o1", "10001", (2026, 3, 1), 10).await;
        record(&app, 2, "o2", "90210", (2026, 3, 2), 5).await;
        record(&app, 1, formula, "10002", (2026, 3, 2), 10).await;
        record(&app, 4, "o1", "60601", (2026, 4, 9), 10).await; // outside the range
        let admin = app.token(Role::Admin, "admin");
        let report = |q: String| {
            let (app, admin) = (&app, admin.clone());
            async move {
                app.get(&format!("/admin/v1/reports/connections?from=2026-03-01&to=2026-03-31&{q}"), Some(&admin))
                    .await
            }
        };
        let (s, b) = report("group_by=day".into()).await;
        assert_eq!(s, 200, "{b}");
        let day = |d: &str, n, p| (d.to_owned(), n, p);
        assert_eq!(rows(&b), vec![day("2026-03-01", 3, 30), day("2026-03-02", 3, 20)]);
        assert_eq!(b["totals"], json!({"connections": 6, "points": 50}));
        let (_, b) = report("group_by=zip".into()).await;
        assert_eq!(
            rows(&b),
            vec![day("10001", 3, 30), day("10002", 1, 10), day("90210", 2, 10)]
        );
        let (_, b) = report("group_by=state".into()).await;
        assert_eq!(rows(&b), vec![day("CA", 2, 10), day("NY", 4, 40)]);
        let (_, b) = report("group_by=officer".into()).await;
        assert_eq!(
            rows(&b),
            vec![day(formula, 1, 10), day("o1", 3, 30), day("o2", 2, 10)],
            "text, as given"
        );
        let (_, b) = report("group_by=officer&limit=2".into()).await;
        assert_eq!(rows(&b).len(), 2);
        assert_eq!(b["truncated"], true);
        // CSV export: the formula-like id is made inert.
        let resp = app
            .http
            .get(format!(
                "{}/admin/v1/reports/connections?from=2026-03-01&to=2026-03-31&group_by=officer&format=csv",
                app.base
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
        let text = resp.text().await.unwrap();
        assert_eq!(
            text,
            "key,connections,points\r\n'=cmd|' /C calc'!A0,1,10\r\no1,3,30\r\no2,2,10\r\n"
        );
        // Trophies awarded once those connections' events were folded (today, whatever the
        // connections' own dates): every account's first, and o1's seven different citizens.
        app.running.ctx().publisher.publish_pending().await.unwrap();
        let today = chrono::Utc::now().date_naive();
        let (s, b) = app
            .get(
                &format!(
                    "/admin/v1/reports/connections?from={}&to={}&group_by=trophy",
                    today - chrono::Days::new(1),
                    today + chrono::Days::new(1)
                ),
                Some(&admin),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let awarded: Vec<(&str, i64)> = b["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].as_str().unwrap(), r["awarded"].as_i64().unwrap()))
            .collect();
        assert_eq!(awarded, [("first_connection", 13), ("five_distinct", 1)], "{b}");
        assert_eq!(b["totals"]["awarded"], 14);
        // A range with nothing, and bad parameters.
        let (s, b) = app
            .get("/admin/v1/reports/connections?from=2020-01-01&to=2020-01-02", Some(&admin))
            .await;
        assert_eq!((s, rows(&b).len()), (200, 0));
        for (q, code) in [
            ("from=2026-13-01", "invalid_date"),
            ("from=2026-03-02&to=2026-03-01", "invalid_range"),
            ("group_by=week", "invalid_group_by"),
            ("format=xml", "invalid_format"),
            ("limit=0", "invalid_limit"),
        ] {
            let (s, b) = app.get(&format!("/admin/v1/reports/connections?{q}"), Some(&admin)).await;
            assert_eq!((s, b["error"]["code"].as_str()), (400, Some(code)), "{q}");
        }
    })
    .await;
}

#[tokio::test]
async fn imports_work_on_both_stores_and_never_half_apply() {
    on_both_stores(|app| async move {
        let (s, b) = app
            .import(
                "retailers",
                "text/csv",
                "retailer_id,name,website\r\nr1,\"Shop, Inc.\",\r\n",
            )
            .await;
        assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
        // 1,200 rows (three INSERT chunks) with one bad row: the good ones all land.
        let mut csv = String::from("offer_id,retailer,title,points_cost,valid_until,remaining\n");
        for i in 0..1200 {
            let cost = if i == 777 {
                "x".to_owned()
            } else {
                (i % 50 + 1).to_string()
            };
            csv.push_str(&format!("o{i:04},r1,Offer ñ {i},{cost},2099-12-31,\n"));
        }
        let (s, b) = app.import("offers", "text/csv", &csv).await;
        assert_eq!(s, 200);
        assert_eq!(b["accepted"], 1199);
        assert_eq!(b["rejected"][0]["row"], 778);
        // Re-importing is harmless.
        let (_, b) = app.import("offers", "text/csv", &csv).await;
        assert_eq!(b["accepted"], 1199);
        let (_, page) = app
            .get(
                "/v1/offers?limit=500&after=o1100",
                Some(&app.token(Role::Citizen, "c")),
            )
            .await;
        assert_eq!(page["offers"].as_array().unwrap().len(), 99);
        assert_eq!(page["offers"][0]["retailer"], "Shop, Inc.");
    })
    .await;
}

#[tokio::test]
async fn metrics_cover_what_operators_watch() {
    let url = postgres_database().await;
    for pg in [false, true] {
        let app = spawn_app_with(|s| {
            s.metrics.bind = "127.0.0.1:0".into();
            if pg {
                s.database.url = url.clone();
            }
        })
        .await;
        let counters = [
            "ws_messages_in_total{type=\"location\"}",
            "ws_messages_out_total{type=\"nearby\"}",
            "ws_errors_total{code=\"unknown_type\"}",
            "nearby_query_seconds_count",
            "nearby_push_latency_seconds_count",
            "region_restarts_total",
            "import_rows_total{result=\"accepted\"}",
            "http_errors_total",
        ];
        // The recorder is the process's, shared with tests running beside this one:
        // each counter must have grown by this test's own work, whatever others add.
        let before = app.metrics().await;
        let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
        let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
        // A move the citizen is pushed; a bad frame; a region restart; a store call; an import.
        o.send(json!({"type":"location","lat":NEAR.0 + 0.0002,"lon":NEAR.1}))
            .await;
        c.recv_type("nearby").await;
        c.send(json!({"type":"dance"})).await;
        c.recv_type("error").await;
        let ctx = app.running.ctx();
        assert!(ctx.regions.crash(ctx.zips.by_code("10001").unwrap()));
        app.get("/v1/me", Some(&app.token(Role::Citizen, "c1")))
            .await;
        app.get("/v1/me", None).await;
        app.import("charities", "text/csv", "charity_id,name,website\nch,C,\n")
            .await;
        let m = eventually("every counter moved by this test's work", || async {
            let m = app.metrics().await;
            counters
                .iter()
                .all(|n| metric_sum(&m, n) > metric_sum(&before, n))
                .then_some(m)
        })
        .await;
        // Gauges and histograms that exist once anything was recorded (the upkeep
        // publishes process and live counts every 5 s; the first round runs at start).
        for name in [
            "ws_sessions{role=\"officer\"}",
            "ws_sessions{role=\"citizen\"}",
            "region_actors_alive",
            "store_query_seconds_bucket{op=\"profile\"",
            "process_resident_memory_bytes",
            "officers_available",
        ] {
            assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
        }
        // The process as an operator watches it: CPU, files, threads, peak memory.
        for name in [
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_threads",
            "process_resident_memory_max_bytes",
        ] {
            assert!(
                metric_sum(&m, name) > 0.0,
                "{name} missing or 0 in /metrics:\n{m}"
            );
        }
        // Without a token on its own listener.
        let addr = app.running.metrics_addr.expect("metrics listener");
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("ws_sessions"));
    }
}

#[tokio::test]
async fn an_import_key_used_for_another_file_is_refused_not_a_crash() {
    let app = spawn_app().await;
    let admin = app.token(Role::Admin, "admin");
    let import = |body: &'static str| {
        app.send(
            Method::POST,
            "/admin/v1/import/charities",
            Some(&admin),
            Some(("text/csv", body.as_bytes().to_vec())),
            &[("Idempotency-Key", "same-key")],
        )
    };
    let (s, b) = import("charity_id,name,website\nc1,Food Bank,\n").await;
    assert_eq!((s, &b["accepted"]), (200, &json!(1)), "{b}");
    // The same key and file: the same answer, nothing written twice.
    let (s, again) = import("charity_id,name,website\nc1,Food Bank,\n").await;
    assert_eq!((s, &again), (200, &b));
    // The same key for another file: refused with the contract's error body (this once
    // reached an unreachable!() and dropped the connection).
    let (s, b) = import("charity_id,name,website\nc2,Shelter,\n").await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (422, &json!("idempotency_key_reused")),
        "{b}"
    );
    app.running.shutdown().await;
}
