//! The real binary: `heyblue serve` answers health, and SIGTERM closes sockets with 1001
//! and exits 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heyblue::protocol::Role;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sigterm_closes_sessions_with_1001_and_exits_0() {
    let port = free_port();
    let dir = tempdir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_heyblue"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start heyblue");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auth = heyblue::http::auth::Auth::new("heyblue-dev-secret-change-me");
    let token = auth.mint(Role::Citizen, "c1", None, Duration::from_secs(60));
    let body: Value = http
        .get(format!("{base}/v1/citizens/session?lat=40.75&lon=-73.99"))
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

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (_, code) = c.closed().await;
    assert_eq!(code, Some(1001));
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
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
