//! `--peer redis` / `--peer postgis`: the nearby workload on a peer beside the server's own
//! engine, at the same officer count, positions, moves and query points.
//!
//! * Redis: officers are members of one GEO key; a move is `GEOADD`; a citizen's update is
//!   `GEOSEARCH key FROMLONLAT lon lat BYRADIUS r m ASC COUNT k`.
//! * PostGIS: officers are rows of a `geography(Point)` column with a GiST index; a batch of
//!   moves is one `UPDATE … FROM (VALUES …)`; a citizen's update is the index's k-nearest
//!   search within the radius: `WHERE ST_DWithin(geom, p, r) ORDER BY geom <-> p LIMIT k`.
//! * Hey Blue!: the server's region actors in process (`Regions`): a move is an upsert into
//!   the officer's zip region; an update is `Regions::nearby`, exactly what a citizen
//!   session runs (no sockets on either side).
//!
//! Both legs run `--citizens` closed-loop query tasks for `--duration` while officers move
//! at `--rate` Hz each, and report answers per second and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use heyblue::actors::directory::Regions;
use heyblue::actors::region::OfficerData;
use heyblue::geo::{LatLon, ZipTable};
use rand::SeedableRng;
use serde_json::{Value, json};

use crate::metro::{self, Metro, Walker};
use crate::stats;

const RADIUS_M: f64 = 2_000.0;
const K: usize = 5;
const KEY: &str = "heyblue:loadtest:officers";

/// Peer run settings.
pub struct Config {
    /// Officers indexed.
    pub officers: usize,
    /// Concurrent query loops.
    pub citizens: usize,
    /// Moves per officer per second.
    pub rate_hz: f64,
    /// How long each leg runs.
    pub duration: Duration,
    /// Metro name.
    pub metro: String,
    /// The peer and where it runs.
    pub peer: Peer,
}

/// The system compared with the engine.
#[derive(Clone)]
pub enum Peer {
    /// Redis GEO at this URL.
    Redis(String),
    /// PostgreSQL with PostGIS at this URL.
    Postgis(String),
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Peer::Redis(_) => "redis",
            Peer::Postgis(_) => "postgis",
        }
    }
}

/// One leg's result.
struct Leg {
    answers: u64,
    moves: u64,
    secs: f64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Leg {
    fn json(&self) -> Value {
        json!({
            "answers_per_s": self.answers as f64 / self.secs,
            "moves_per_s": self.moves as f64 / self.secs,
            "latency": stats::json(&self.latency),
        })
    }
}

/// Runs both legs and prints the comparison.
pub async fn run(cfg: Config) -> anyhow::Result<Value> {
    let zips = Arc::new(ZipTable::embedded());
    let m = metro::metro(&zips, &cfg.metro)
        .ok_or_else(|| anyhow::anyhow!("unknown metro {}", cfg.metro))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let walkers: Vec<Walker> = (0..cfg.officers)
        .map(|i| Walker::new(&m, if i % 3 == 0 { 10.0 } else { 1.4 }, &mut rng))
        .collect();
    let name = cfg.peer.name();
    let peer = match &cfg.peer {
        Peer::Redis(url) => redis_leg(&cfg, url, &m, walkers.clone()).await?,
        Peer::Postgis(url) => postgis_leg(&cfg, url, &m, walkers.clone()).await?,
    };
    let engine = engine_leg(&cfg, &m, zips, walkers).await?;
    let ratio = (engine.answers as f64 / engine.secs) / (peer.answers as f64 / peer.secs);
    println!(
        "{} officers in {}, radius {RADIUS_M} m, k={K}, {} query loops, moves {} Hz/officer, {:.0} s per leg",
        cfg.officers,
        cfg.metro,
        cfg.citizens,
        cfg.rate_hz,
        cfg.duration.as_secs_f64()
    );
    println!(
        "{name}:  {:.0} answers/s ({:.0} moves/s)",
        peer.answers as f64 / peer.secs,
        peer.moves as f64 / peer.secs
    );
    println!(
        "hey blue!:  {:.0} answers/s ({:.0} moves/s) = {ratio:.2}x {name}",
        engine.answers as f64 / engine.secs,
        engine.moves as f64 / engine.secs
    );
    println!("{}", stats::header());
    println!("{}", stats::row(name, &peer.latency));
    println!("{}", stats::row("hey blue! regions", &engine.latency));
    Ok(json!({
        "officers": cfg.officers, "citizens": cfg.citizens, "metro": cfg.metro,
        "radius_m": RADIUS_M, "k": K, "move_hz": cfg.rate_hz, "peer_name": name,
        "peer": peer.json(), name: peer.json(), "heyblue": engine.json(), "ratio": ratio,
    }))
}

/// Query points: walkers of their own (citizens), one per loop.
fn citizens(m: &Metro, n: usize) -> Vec<Walker> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..n).map(|_| Walker::new(m, 1.4, &mut rng)).collect()
}

/// Runs `movers` (officer moves at the rate) and `n` query loops for the duration.
async fn drive<Q, QF, M, MF>(
    cfg: &Config,
    m: &Metro,
    walkers: Vec<Walker>,
    query: Q,
    mv: M,
) -> anyhow::Result<Leg>
where
    Q: Fn(LatLon) -> QF + Clone + Send + 'static,
    QF: std::future::Future<Output = anyhow::Result<()>> + Send,
    M: Fn(Vec<(usize, LatLon, LatLon)>) -> MF + Clone + Send + 'static,
    MF: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let moves = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Movers: 4 tasks share the officers; each pass moves every officer of its share.
    let mut mover_tasks = Vec::new();
    let shares = 4;
    let mut parts: Vec<Vec<(usize, Walker)>> = vec![Vec::new(); shares];
    for (i, w) in walkers.into_iter().enumerate() {
        parts[i % shares].push((i, w));
    }
    for mut part in parts {
        let (stop, moves, mv, m) = (stop.clone(), moves.clone(), mv.clone(), *m);
        let per_pass = Duration::from_secs_f64(1.0 / cfg.rate_hz.max(1e-3));
        mover_tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(part.len() as u64);
            let mut tick = tokio::time::interval(per_pass);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                // One pass moves every officer of the share, sent in batches of 500.
                for chunk in part.chunks_mut(500) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let batch: Vec<_> = chunk
                        .iter_mut()
                        .map(|(i, w)| {
                            let from = w.pos;
                            w.step(&m, per_pass.as_secs_f64(), &mut rng);
                            (*i, from, w.pos)
                        })
                        .collect();
                    let n = batch.len() as u64;
                    mv(batch).await?;
                    moves.fetch_add(n, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let mut loops = Vec::new();
    for mut c in citizens(m, cfg.citizens) {
        let (stop, query, m) = (stop.clone(), query.clone(), *m);
        loops.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut h = stats::histogram();
            while !stop.load(Ordering::Relaxed) {
                c.step(&m, 1.0, &mut rng);
                let t = Instant::now();
                query(c.pos).await?;
                h.record((t.elapsed().as_micros() as u64).max(1))?;
                // The engine's answer can complete without ever waiting (regions watched
                // by nobody are read in place): yield, or these loops starve the timer
                // that ends the run.
                tokio::task::yield_now().await;
            }
            anyhow::Ok(h)
        }));
    }
    tokio::time::sleep(cfg.duration).await;
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let mut latency = stats::histogram();
    for l in loops {
        latency.add(&l.await??)?;
    }
    for t in mover_tasks {
        t.await??;
    }
    Ok(Leg {
        answers: latency.len(),
        moves: moves.load(Ordering::Relaxed),
        secs,
        latency,
    })
}

async fn redis_leg(
    cfg: &Config,
    url: &str,
    m: &Metro,
    walkers: Vec<Walker>,
) -> anyhow::Result<Leg> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL")
        .arg(KEY)
        .query_async::<()>(&mut con)
        .await?;
    for chunk in walkers.chunks(1000).enumerate() {
        let mut c = redis::cmd("GEOADD");
        c.arg(KEY);
        for (j, w) in chunk.1.iter().enumerate() {
            c.arg(w.pos.lon)
                .arg(w.pos.lat)
                .arg(format!("officer-{}", chunk.0 * 1000 + j));
        }
        c.query_async::<()>(&mut con).await?;
    }
    // A few connections, as a pooled client would use (Redis runs commands on one thread).
    let cons: Vec<_> = futures_util::future::try_join_all(
        (0..4).map(|_| client.get_multiplexed_async_connection()),
    )
    .await?;
    let next = Arc::new(AtomicU64::new(0));
    let pick = {
        let (cons, next) = (cons.clone(), next.clone());
        move || cons[next.fetch_add(1, Ordering::Relaxed) as usize % cons.len()].clone()
    };
    let query = {
        let pick = pick.clone();
        move |p: LatLon| {
            let mut con = pick();
            async move {
                let found: Vec<String> = redis::cmd("GEOSEARCH")
                    .arg(KEY)
                    .arg("FROMLONLAT")
                    .arg(p.lon)
                    .arg(p.lat)
                    .arg("BYRADIUS")
                    .arg(RADIUS_M)
                    .arg("m")
                    .arg("ASC")
                    .arg("COUNT")
                    .arg(K)
                    .query_async(&mut con)
                    .await?;
                std::hint::black_box(found);
                anyhow::Ok(())
            }
        }
    };
    // A batch of moves is one GEOADD of many members (one round trip, as a pipeline would).
    let mv = move |batch: Vec<(usize, LatLon, LatLon)>| {
        let mut con = pick();
        async move {
            let mut c = redis::cmd("GEOADD");
            c.arg(KEY);
            for (i, _, to) in batch {
                c.arg(to.lon).arg(to.lat).arg(format!("officer-{i}"));
            }
            c.query_async::<()>(&mut con).await?;
            anyhow::Ok(())
        }
    };
    drive(cfg, m, walkers, query, mv).await
}

const TABLE: &str = "heyblue_loadtest_officers";

async fn postgis_leg(
    cfg: &Config,
    url: &str,
    m: &Metro,
    walkers: Vec<Walker>,
) -> anyhow::Result<Leg> {
    use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
    // As many connections as query loops and movers can use at once (PostgreSQL answers
    // each on a process of its own).
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections((cfg.citizens as u32 + 4).min(64))
        .sqlx_logging(false);
    let db: DatabaseConnection = Database::connect(opts).await?;
    for sql in [
        "CREATE EXTENSION IF NOT EXISTS postgis".to_owned(),
        format!("DROP TABLE IF EXISTS {TABLE}"),
        format!(
            "CREATE TABLE {TABLE} (id integer PRIMARY KEY, geom geography(Point, 4326) NOT NULL)"
        ),
    ] {
        db.execute_unprepared(&sql).await?;
    }
    // Coordinates are numbers formatted by Rust: nothing user-given is spliced into SQL.
    let point = |p: LatLon| {
        format!(
            "ST_SetSRID(ST_MakePoint({}, {}), 4326)::geography",
            p.lon, p.lat
        )
    };
    for (c, chunk) in walkers.chunks(1000).enumerate() {
        let values: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(j, w)| format!("({}, {})", c * 1000 + j, point(w.pos)))
            .collect();
        db.execute_unprepared(&format!(
            "INSERT INTO {TABLE} (id, geom) VALUES {}",
            values.join(",")
        ))
        .await?;
    }
    db.execute_unprepared(&format!("CREATE INDEX ON {TABLE} USING gist (geom)"))
        .await?;
    db.execute_unprepared(&format!("ANALYZE {TABLE}")).await?;
    let query = {
        let db = db.clone();
        move |p: LatLon| {
            let db = db.clone();
            async move {
                let sql = format!(
                    "SELECT id FROM {TABLE} WHERE ST_DWithin(geom, $1::geography, {RADIUS_M}) \
                     ORDER BY geom <-> $1::geography LIMIT {K}"
                );
                let at = format!("SRID=4326;POINT({} {})", p.lon, p.lat);
                let rows = db
                    .query_all_raw(Statement::from_sql_and_values(
                        db.get_database_backend(),
                        sql,
                        [at.into()],
                    ))
                    .await?;
                std::hint::black_box(rows);
                anyhow::Ok(())
            }
        }
    };
    // A batch of moves is one UPDATE joined to a VALUES list (one round trip).
    let mv = {
        let db = db.clone();
        move |batch: Vec<(usize, LatLon, LatLon)>| {
            let db = db.clone();
            async move {
                let values: Vec<String> = batch
                    .iter()
                    .map(|(i, _, to)| format!("({i}, {}, {})", to.lon, to.lat))
                    .collect();
                db.execute_unprepared(&format!(
                    "UPDATE {TABLE} AS o SET geom = ST_SetSRID(ST_MakePoint(v.lon, v.lat), 4326)::geography \
                     FROM (VALUES {}) AS v(id, lon, lat) WHERE o.id = v.id",
                    values.join(",")
                ))
                .await?;
                anyhow::Ok(())
            }
        }
    };
    let leg = drive(cfg, m, walkers, query, mv).await;
    db.execute_unprepared(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .await?;
    leg
}

async fn engine_leg(
    cfg: &Config,
    m: &Metro,
    zips: Arc<ZipTable>,
    walkers: Vec<Walker>,
) -> anyhow::Result<Leg> {
    let (regions, _) =
        Regions::start(zips.clone(), Default::default(), Duration::from_secs(5)).await?;
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    // The region entry of officer `i` in zip `z` (card written on every move: the server's
    // sessions keep theirs while the zip stays, so this leg pays more than a session).
    let data = {
        let zips = zips.clone();
        move |i: usize, z| {
            let id = format!("officer-{i}");
            OfficerData::new(&id, "officer".into(), expires, 1, &zips.get(z).code)
        }
    };
    for (i, w) in walkers.iter().enumerate() {
        let (z, _) = zips.nearest(w.pos);
        regions
            .upsert(z, format!("officer-{i}").into(), w.pos, data(i, z))
            .await?;
    }
    let query = {
        let (regions, zips) = (regions.clone(), zips.clone());
        move |p: LatLon| {
            let (regions, zips) = (regions.clone(), zips.clone());
            async move {
                let (own, d0) = zips.nearest(p);
                let found = regions.nearby(p, own, d0, RADIUS_M, K, None).await?;
                std::hint::black_box(found);
                anyhow::Ok(())
            }
        }
    };
    let mv = {
        let (regions, zips) = (regions.clone(), zips.clone());
        move |batch: Vec<(usize, LatLon, LatLon)>| {
            let (regions, zips, data) = (regions.clone(), zips.clone(), data.clone());
            async move {
                for (i, from, to) in batch {
                    let id: Arc<str> = format!("officer-{i}").into();
                    let (old, _) = zips.nearest(from);
                    let (z, _) = zips.nearest(to);
                    if old != z {
                        regions.remove(old, id.clone(), 1);
                    }
                    regions.upsert(z, id, to, data(i, z)).await?;
                }
                anyhow::Ok(())
            }
        }
    };
    let leg = drive(cfg, m, walkers, query, mv).await;
    regions.stop();
    leg
}
