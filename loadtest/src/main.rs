//! `heyblue-loadtest`: drives a running server exactly as phones do — orchestrator ticket,
//! then a real WebSocket — and measures it.
//!
//! Modes:
//! * `--officers N --citizens M [--rate HZ] [--metro nyc] [--duration 60s]`: the phone
//!   scenario (see `scenario`); `--against echo` runs the same sockets against a built-in
//!   echo endpoint for the ceiling.
//! * `--idle N`: open N idle sessions and report the server's RSS growth per session
//!   (from `/proc/PID/status` with `--server-pid`).
//! * `--accepts PAIRS`: accepted connections per second end to end, and the citizen's
//!   request → established latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod accepts;
mod client;
mod echo;
mod frame;
mod metro;
mod peer;
mod scenario;
mod stats;
use clap::Parser;
use futures_util::StreamExt;
use heyblue::http::auth::Auth;
use heyblue::protocol::Role;
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(
    name = "heyblue-loadtest",
    about = "Load generator for the Hey Blue! server"
)]
struct Args {
    /// Server base URL; in a cluster, several nodes' URLs separated by commas (sessions ask
    /// their orchestrators in turn; each session goes to the node its answer names).
    #[arg(long, alias = "targets", default_value = "http://127.0.0.1:8080")]
    target: String,
    /// HS256 secret the server verifies tokens with.
    #[arg(
        long,
        env = "HEYBLUE__AUTH__JWT_SECRET",
        default_value = "heyblue-dev-secret-change-me"
    )]
    jwt_secret: String,
    /// Open this many idle sessions, hold them, report memory per session.
    #[arg(long)]
    idle: Option<usize>,
    /// Role of the idle sessions.
    #[arg(long, default_value = "citizen")]
    idle_role: String,
    /// Server process id, for RSS from /proc (without it: the server's
    /// `process_resident_memory_bytes` metric, read with an admin token).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sessions opened concurrently.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Seconds to hold idle sessions before measuring.
    #[arg(long, default_value_t = 3)]
    settle_s: u64,
    /// Measure accepted connections per second with this many officer–citizen pairs.
    #[arg(long)]
    accepts: Option<usize>,
    /// How long a measurement runs: `60s`, `2m` or seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Scenario: officer sessions.
    #[arg(long, default_value_t = 0)]
    officers: usize,
    /// Scenario: citizen sessions.
    #[arg(long, default_value_t = 0)]
    citizens: usize,
    /// Scenario: location updates per session per second (0: citizens closed-loop).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Scenario: metro to walk in (nyc, la, chicago, houston, sf, dc).
    #[arg(long, default_value = "nyc")]
    metro: String,
    /// Scenario: share of citizens that ask for connections (officers accept).
    #[arg(long, default_value_t = 0.05)]
    connect_share: f64,
    /// Scenario: sessions opened per second at most.
    #[arg(long, default_value_t = 500.0)]
    open_rate: f64,
    /// Scenario: run the same sockets against `echo`, a built-in echo endpoint.
    #[arg(long)]
    against: Option<String>,
    /// Compare the nearby workload with a peer: `redis` (Redis GEO, --redis-url) or
    /// `postgis` (PostgreSQL with PostGIS, --postgis-url).
    #[arg(long)]
    peer: Option<String>,
    /// Redis for `--peer redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// PostgreSQL (PostGIS installed) for `--peer postgis`; `scripts/with-postgres` exports
    /// one as HEYBLUE_TEST_POSTGRES_URL.
    #[arg(long, env = "HEYBLUE_TEST_POSTGRES_URL")]
    postgis_url: Option<String>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Exit with status 2 if any protocol error frame or failed session was seen.
    #[arg(long)]
    fail_on_errors: bool,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

impl Args {
    /// The first of the `--target` URLs (the modes that talk to one node).
    fn first_target(&self) -> String {
        self.target
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    }
}

/// `process_resident_memory_bytes` from the server's /metrics, in kB (None if absent).
async fn metric_rss_kb(
    http: &reqwest::Client,
    auth: &Auth,
    target: &str,
) -> anyhow::Result<Option<u64>> {
    let token = auth.mint(Role::Admin, "loadtest", None, Duration::from_secs(60));
    let body = http
        .get(format!("{target}/metrics"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(body
        .lines()
        .find(|l| l.starts_with("process_resident_memory_bytes "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|b| (b / 1024.0) as u64))
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

async fn idle(args: Args, n: usize) -> anyhow::Result<()> {
    let role = match args.idle_role.as_str() {
        "officer" => Role::Officer,
        _ => Role::Citizen,
    };
    let auth = Arc::new(Auth::new(&args.jwt_secret));
    let http = reqwest::Client::new();
    // RSS from /proc with --server-pid, else from the server's own metric (admin token).
    let rss = {
        let (http, auth, target, pid) = (
            http.clone(),
            auth.clone(),
            args.first_target(),
            args.server_pid,
        );
        move || {
            let (http, auth, target) = (http.clone(), auth.clone(), target.clone());
            async move {
                match pid {
                    Some(pid) => rss_kb(pid).map(Some),
                    None => metric_rss_kb(&http, &auth, &target).await,
                }
            }
        }
    };
    let before = rss().await?;
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(args.open_concurrency));
    let failed = Arc::new(AtomicUsize::new(0));
    let args = Arc::new(args);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (http, args, auth, failed) = (http.clone(), args.clone(), auth.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let sub = format!("lt-{}-{i}", role.as_str());
            // Spread over Manhattan.
            let lat = 40.70 + (i % 100) as f64 * 0.001;
            let lon = -74.01 + (i / 100 % 100) as f64 * 0.0005;
            let who = client::Who {
                role,
                sub: &sub,
                lat,
                lon,
                i,
            };
            let r = client::open(&http, &args.first_target(), &auth, who).await;
            drop(permit);
            match r {
                Ok(mut ws) => {
                    // Read the welcome (and a citizen's first nearby), then sit idle.
                    let _ = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
                    Some(ws)
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("session {i}: {e:#}");
                    }
                    None
                }
            }
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        if let Some(ws) = t.await? {
            held.push(ws);
        }
    }
    let opened = held.len();
    println!(
        "opened {opened} {} sessions in {:.1} s ({} failed)",
        role.as_str(),
        started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    if let (Some(b), Some(after)) = (before, rss().await?) {
        let per = (after.saturating_sub(b)) as f64 * 1024.0 / opened.max(1) as f64;
        println!(
            "server RSS {b} kB -> {after} kB: {:.0} bytes per idle session",
            per
        );
    }
    drop(held);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        let want = hard.max(soft);
        if rlimit::Resource::NOFILE.set(want, hard).is_err() {
            eprintln!("cannot raise the fd limit above {soft}");
        }
    }
    if let Some(n) = args.idle {
        return idle(args, n).await;
    }
    if let Some(pairs) = args.accepts {
        let auth = Auth::new(&args.jwt_secret);
        let out = accepts::run(&args.first_target(), &auth, pairs, args.duration).await?;
        if let Some(f) = &args.json {
            std::fs::write(f, serde_json::to_string_pretty(&out)?)?;
        }
        return Ok(());
    }
    if let Some(peer) = args.peer.as_deref() {
        let peer = match peer {
            "redis" => peer::Peer::Redis(args.redis_url.clone()),
            "postgis" => peer::Peer::Postgis(
                args.postgis_url
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("--peer postgis needs --postgis-url"))?,
            ),
            other => bail!("--peer {other}: redis or postgis"),
        };
        let out = peer::run(peer::Config {
            officers: args.officers,
            citizens: args.citizens.max(1),
            rate_hz: args.rate,
            duration: args.duration,
            metro: args.metro.clone(),
            peer,
        })
        .await?;
        if let Some(f) = &args.json {
            std::fs::write(f, serde_json::to_string_pretty(&out)?)?;
        }
        return Ok(());
    }
    if args.officers + args.citizens > 0 {
        let target = match args.against.as_deref() {
            None => scenario::Target::Server(
                args.target
                    .split(',')
                    .map(|t| t.trim().to_owned())
                    .collect(),
            ),
            Some("echo") => scenario::Target::Echo(echo::start()?),
            Some(other) => bail!("--against {other}: only echo is built in"),
        };
        let cfg = scenario::Config {
            target,
            officers: args.officers,
            citizens: args.citizens,
            duration: args.duration,
            rate_hz: args.rate,
            metro: args.metro.clone(),
            connect_share: args.connect_share,
            open_rate: args.open_rate,
            progress: !args.no_progress,
        };
        let out = scenario::run(cfg, Arc::new(Auth::new(&args.jwt_secret))).await?;
        if let Some(f) = &args.json {
            std::fs::write(f, serde_json::to_string_pretty(&out)?)?;
        }
        if args.fail_on_errors
            && (out["protocol_errors"].as_u64() != Some(0)
                || out["open_failures"].as_u64() != Some(0))
        {
            std::process::exit(2);
        }
        return Ok(());
    }
    bail!("choose a mode: --officers N --citizens M, --idle N or --accepts PAIRS")
}

/// `60s`, `2m`, `500ms` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unit of {s} is ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}
