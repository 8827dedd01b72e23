//! The real binary: `heyblue serve` answers health, and SIGTERM closes sockets with 1001
//! and exits 0.

use std::process::Command;
use std::time::Duration;

use heyblue::protocol::Role;
use serde_json::Value;

#[tokio::test]
async fn sigterm_closes_sessions_with_1001_and_exits_0() {
    let dir = tempdir();
    let (mut child, base) = serve(&dir, None).await;
    let mut c = open(&base, Role::Citizen, "c1", 40.75, -73.99).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (_, code) = c.closed().await;
    assert_eq!(code, Some(1001));
    let exit = crate::helpers::eventually("the server exits", || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert_eq!(exit.code(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unknown_setting_stops_serve_with_exit_2_naming_it() {
    let dir = tempdir();
    let err = crate::helpers::serve_refused(
        &dir,
        &["--bind", "127.0.0.1:0"],
        &[("HEYBLUE__CITIZEN__PUSH_INTERVL_MS", "250")],
    );
    assert!(err.contains("push_intervl_ms"), "{err}");

    std::fs::write(dir.join("over.toml"), "[limits]\nmax_sesions = 5\n").unwrap();
    let err = crate::helpers::serve_refused(&dir, &["--config", "over.toml"], &[]);
    assert!(err.contains("max_sesions"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts `heyblue serve` in `dir` (its default SQLite under `dir/data/` unless `db`).
async fn serve(dir: &std::path::Path, db: Option<&str>) -> (std::process::Child, String) {
    let args: Vec<&str> = db.map(|d| vec!["--database-url", d]).unwrap_or_default();
    crate::helpers::serve_process(dir, &args, &[]).await
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("heyblue-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `heyblue import KIND FILE` takes the same path as the admin endpoint.
#[tokio::test]
async fn the_import_command_upserts_files_and_refuses_broken_ones() {
    let dir = tempdir();
    let db = format!("sqlite://{}/cli.db?mode=rwc", dir.display());
    std::fs::write(
        dir.join("retailers.csv"),
        "retailer_id,name,website\nr1,Corner Café,\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("offers.json"),
        r#"[{"offer_id":"o1","retailer":"Corner Café","title":"Tea","points_cost":5,"valid_until":"2099-01-01"},
            {"offer_id":"o2","retailer":"r9","title":"Tea","points_cost":5,"valid_until":"2099-01-01"}]"#,
    )
    .unwrap();
    std::fs::write(dir.join("broken.csv"), "offer_id,title\no1,x\n").unwrap();
    let run = |kind: &str, file: &str| {
        Command::new(env!("CARGO_BIN_EXE_heyblue"))
            .args(["import", kind, file, "--database-url", &db])
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run heyblue import")
    };
    let out = run("retailers", "retailers.csv");
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["accepted"], 1);
    let out = run("offers", "offers.json");
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["accepted"], 1);
    assert_eq!(r["rejected"][0]["row"], 2);
    let out = run("offers", "broken.csv");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retailer"));
    let store = heyblue::store::Store::connect(&db).await.unwrap();
    let offers = store.offers_page(10, None).await.unwrap();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].retailer_id, "r1");
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Opens a session on a server started by `serve`.
async fn open(base: &str, role: Role, sub: &str, lat: f64, lon: f64) -> crate::helpers::Client {
    let auth = heyblue::http::auth::Auth::new("heyblue-dev-secret-change-me");
    let token = auth.mint(role, sub, None, Duration::from_secs(600));
    let path = if role == Role::Officer {
        "officers"
    } else {
        "citizens"
    };
    let body: Value = reqwest::Client::new()
        .get(format!("{base}/v1/{path}/session?lat={lat}&lon={lon}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(body["ws_url"].as_str().unwrap())
        .await
        .unwrap();
    let mut c = crate::helpers::Client {
        ws,
        welcome: Value::Null,
    };
    assert_eq!(c.recv().await["type"], "welcome");
    c
}

/// SIGKILL right after an accept commits — before the officer reads its reply and before
/// anything is flushed or published on purpose: after a restart the connection, both
/// ledger entries and the event exist exactly once, the event is published from the
/// outbox, and replaying the accept records nothing more.
#[tokio::test]
async fn a_kill_after_accept_leaves_the_connection_recorded_exactly_once() {
    let dir = tempdir();
    let db = format!("sqlite://{}/kill.db?mode=rwc", dir.display());
    let (mut child, base) = serve(&dir, Some(&db)).await;
    let mut o = open(&base, Role::Officer, "o-kill", 40.7510, -73.9972).await;
    o.send(serde_json::json!({"type":"available","window_s":900}))
        .await;
    o.recv_type("availability").await;
    let mut c = open(&base, Role::Citizen, "c-kill", 40.7506, -73.9972).await;
    c.recv_type("nearby").await;
    let id = crate::helpers::ask(&mut o, &mut c, "o-kill", "in_person").await;
    o.send(serde_json::json!({"type":"respond","request_id":id,"accept":true}))
        .await;
    // The citizen hears of the accept only after the commit: kill the server then,
    // without reading the officer's reply.
    let r = c.recv_type("connection_response").await;
    assert_eq!(r["status"], "accepted");
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, base) = serve(&dir, Some(&db)).await;
    let auth = heyblue::http::auth::Auth::new("heyblue-dev-secret-change-me");
    let http = reqwest::Client::new();
    for (role, sub) in [(Role::Officer, "o-kill"), (Role::Citizen, "c-kill")] {
        let me: Value = http
            .get(format!("{base}/v1/me"))
            .bearer_auth(auth.mint(role, sub, None, Duration::from_secs(60)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["connections"], 1, "{me}");
        assert_eq!(me["points"]["balance"], 10, "{me}");
        assert_eq!(me["points"]["earned"], 10, "{me}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = heyblue::store::Store::connect(&db).await.unwrap();
    assert_eq!(store.connections_for_request(&id).await.unwrap(), 1);
    assert_eq!(
        store
            .events_of_kind("connection_established")
            .await
            .unwrap(),
        1
    );
    assert!(store.unpublished_events(10).await.unwrap().is_empty());
    // The same accept again (a retry after the crash) pays nothing more.
    let replay = heyblue::store::NewConnection {
        request_id: id.clone(),
        officer_id: "o-kill".into(),
        citizen_id: "c-kill".into(),
        mode: "in_person".into(),
        zip: "10001".into(),
        per_connection: 10,
        pair_cooldown: Duration::from_secs(86_400),
        at: chrono::Utc::now(),
    };
    let again = store.record_accepted(&replay).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.officer_balance, again.citizen_balance), (10, 10));
    assert_eq!(store.connections_for_request(&id).await.unwrap(), 1);
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_public_listener_with_the_development_keys_stops_serve_with_exit_2() {
    let dir = tempdir();
    let err = crate::helpers::serve_refused(&dir, &["--bind", "0.0.0.0:0"], &[]);
    assert!(
        err.contains("HEYBLUE__AUTH__JWT_SECRET") && err.contains("HEYBLUE__REWARDS__VOUCHER_KEY"),
        "{err}"
    );
    // With both keys set, the same bind serves.
    let mut child = Command::new(env!("CARGO_BIN_EXE_heyblue"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .current_dir(&dir)
        .env("HEYBLUE__AUTH__JWT_SECRET", "a-real-secret")
        .env("HEYBLUE__REWARDS__VOUCHER_KEY", "a-real-key")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run heyblue");
    let base = crate::helpers::listening_line(&mut child).await;
    assert!(base.starts_with("listening on http://0.0.0.0:"), "{base}");
    let port = base.trim().rsplit(':').next().unwrap();
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

/// `log.format = "json"`: one JSON object per line on stderr, each line logged while a
/// request or a session is handled naming it.
#[tokio::test]
async fn json_logs_name_the_request_or_session_of_each_line() {
    let dir = tempdir();
    let (mut child, base) = crate::helpers::serve_process(
        &dir,
        &[],
        &[("HEYBLUE__LOG__FORMAT", "json"), ("RUST_LOG", "info")],
    )
    .await;
    // A request that logs (an import), and a session that logs (closed after ten errors).
    let admin = heyblue::http::auth::Auth::new("heyblue-dev-secret-change-me").mint(
        Role::Admin,
        "admin",
        None,
        Duration::from_secs(600),
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/v1/import/charities"))
        .bearer_auth(&admin)
        .header("content-type", "text/csv")
        .body("charity_id,name,website\nc1,Food Bank,\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut c = open(&base, Role::Citizen, "c1", 40.7506, -73.9972).await;
    for _ in 0..10 {
        c.send(serde_json::json!({"type":"nonsense"})).await;
    }
    let (_, code) = c.closed().await;
    assert_eq!(code, Some(1008));
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |msg: &str| {
        lines
            .iter()
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(msg))
            })
            .unwrap_or_else(|| panic!("no {msg:?} line in {log}"))
            .clone()
    };
    let import = find("import");
    assert!(import["span"]["request"].as_u64().is_some(), "{import}");
    assert_eq!(import["span"]["path"], "/admin/v1/import/charities");
    let errors = find("consecutive errors");
    assert!(errors["span"]["session"].as_u64().is_some(), "{errors}");
    assert_eq!(errors["span"]["account"], "c1");
    let _ = std::fs::remove_dir_all(dir);
}
