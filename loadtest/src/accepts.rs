//! `--accepts PAIRS`: connections accepted per second end to end. Each pair is an officer
//! (available) and a citizen standing 5 m from it, far enough from the other pairs that
//! the officer is the citizen's nearest; the citizen asks, the officer accepts, both wait
//! for `connection_established`, and the citizen asks again, for `--duration`. Every accept
//! is one store transaction (connection, two ledger entries, events): run the server with
//! `HEYBLUE__POINTS__PAIR_COOLDOWN_S=0` so every one pays.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use heyblue::http::auth::Auth;
use heyblue::protocol::Role;
use serde_json::json;

use crate::client::{self, Who};
use crate::stats;

const WAIT: Duration = Duration::from_secs(10);

/// Pair `i`'s officer position: a grid with 0.01° (≈ 1 km) spacing over Manhattan and
/// beyond.
fn spot(i: usize) -> (f64, f64) {
    (
        40.70 + (i % 20) as f64 * 0.01,
        -74.02 + (i / 20) as f64 * 0.01,
    )
}

/// Runs the measurement and prints (and returns) the figures.
pub async fn run(
    target: &str,
    auth: &Auth,
    pairs: usize,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let http = reqwest::Client::new();
    let run_id = std::process::id();
    let mut sockets = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (lat, lon) = spot(i);
        let officer = format!("acc-o-{run_id}-{i}");
        let citizen = format!("acc-c-{run_id}-{i}");
        let mut o = client::open(
            &http,
            target,
            auth,
            Who {
                role: Role::Officer,
                sub: &officer,
                lat,
                lon,
                i: 2 * i,
            },
        )
        .await?;
        client::send(&mut o, &json!({"type":"available","window_s":900})).await?;
        client::recv_until(&mut o, &["availability"], WAIT).await?;
        let mut c = client::open(
            &http,
            target,
            auth,
            Who {
                role: Role::Citizen,
                sub: &citizen,
                lat: lat + 0.000045,
                lon,
                i: 2 * i + 1,
            },
        )
        .await?;
        let n = client::recv_until(&mut c, &["nearby"], WAIT).await?;
        if n["officers"][0]["officer_id"] != officer.as_str() {
            bail!("pair {i}: the citizen's nearest is not its officer: {n}");
        }
        sockets.push((officer, o, c));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|(officer, mut o, mut c)| {
            tokio::spawn(async move {
                let mut h = stats::histogram();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    client::send(
                        &mut c,
                        &json!({"type":"request_connection","officer_id":officer,"mode":"virtual"}),
                    )
                    .await?;
                    let p = client::recv_until(&mut c, &["connection_pending"], WAIT).await?;
                    if p["type"] == "error" {
                        errors += 1;
                        continue;
                    }
                    let r = client::recv_until(&mut o, &["connection_requested"], WAIT).await?;
                    let id = r["request_id"].as_str().context("request_id")?.to_owned();
                    client::send(
                        &mut o,
                        &json!({"type":"respond","request_id":id,"accept":true}),
                    )
                    .await?;
                    let e = client::recv_until(&mut o, &["connection_established"], WAIT).await?;
                    if e["type"] == "error" {
                        errors += 1;
                        continue;
                    }
                    client::recv_until(&mut c, &["connection_established"], WAIT).await?;
                    h.record(t0.elapsed().as_micros().max(1) as u64)?;
                }
                anyhow::Ok((h, errors))
            })
        })
        .collect();
    let mut all = stats::histogram();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        all.add(&h)?;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = all.len() as f64 / secs;
    println!(
        "{pairs} pairs, {secs:.1} s: {} accepted connections, {rate:.0}/s, {errors} errors",
        all.len()
    );
    println!("{}", stats::header());
    println!("{}", stats::row("request → established (citizen)", &all));
    Ok(json!({
        "pairs": pairs, "seconds": secs, "accepted": all.len(), "accepts_per_s": rate,
        "errors": errors, "request_to_established": stats::json(&all),
    }))
}
