//! The load generator against a real server for a few seconds: it completes, sees no
//! protocol error, and measures non-zero throughput. (Real runs are benchmarks.)

use std::process::Command;
use std::sync::Arc;

use heyblue::config::Settings;
use heyblue::geo::ZipTable;
use serde_json::Value;

fn run(args: &[&str]) -> Value {
    let json = std::env::temp_dir().join(format!(
        "heyblue-smoke-{}-{}.json",
        std::process::id(),
        args.join("").len()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_heyblue-loadtest"))
        .args(args)
        .args(["--no-progress", "--fail-on-errors", "--json"])
        .arg(&json)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run heyblue-loadtest");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_completes_without_protocol_errors() {
    let mut s = Settings::defaults();
    s.server.bind = "127.0.0.1:0".into();
    let dir = std::env::temp_dir().join(format!("heyblue-smoke-{}", std::process::id()));
    s.database.url = format!("sqlite://{}/smoke.db?mode=rwc", dir.display());
    s.citizen.push_interval_ms = 200;
    let server = heyblue::server::start(s, Arc::new(ZipTable::embedded()))
        .await
        .expect("server starts");
    let target = format!("http://{}", server.addr);
    let args: Vec<String> = [
        "--target",
        &target,
        // Every citizen may ask: with 10 officers and a 30 % share over the whole metro, a
        // run once had no asking citizen with an officer inside its 2 km circle.
        "--officers",
        "20",
        "--citizens",
        "30",
        "--rate",
        "4",
        "--duration",
        "4s",
        "--connect-share",
        "1.0",
    ]
    .map(String::from)
    .to_vec();
    let v = tokio::task::spawn_blocking(move || {
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(v["protocol_errors"], 0, "{v}");
    assert_eq!(v["open_failures"], 0, "{v}");
    // Every citizen's location was answered before its socket closed.
    assert_eq!(v["unanswered_locations"], 0, "{v}");
    assert!(v["updates_sent_per_s"].as_f64().unwrap() > 50.0, "{v}");
    assert!(v["nearby_replies_per_s"].as_f64().unwrap() > 50.0, "{v}");
    assert!(
        v["location_to_nearby"]["count"].as_u64().unwrap() > 100,
        "{v}"
    );
    assert!(v["pushes_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["connections_per_s"].as_f64().unwrap() > 0.0, "{v}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);

    // The same sockets against the built-in echo ceiling.
    let v = tokio::task::spawn_blocking(|| {
        run(&[
            "--against",
            "echo",
            "--officers",
            "5",
            "--citizens",
            "20",
            "--rate",
            "0",
            "--duration",
            "2s",
        ])
    })
    .await
    .unwrap();
    assert!(v["nearby_replies_per_s"].as_f64().unwrap() > 100.0, "{v}");
    assert_eq!(v["unanswered_locations"], 0, "{v}");
}
