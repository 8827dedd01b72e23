//! The phone scenario: officers random-walk (walking or driving) inside a metro and are
//! available; citizens watch and walk; a share of citizens ask the nearest officer for a
//! connection and officers accept. Every session sends `location` at `--rate` Hz (`0`:
//! citizens send the next as soon as the previous is answered, as fast as the server goes).
//!
//! Measured on the load generator's one clock:
//! * citizen `location` → its `nearby` reply (the first `nearby` after a send answers it;
//!   the server replies to every location in order);
//! * officer move → push at a watching citizen: officers note when they sent each
//!   position, and a pushed `nearby` that shows an officer at a new position is matched to
//!   that send;
//! * `request_connection` → `connection_established` at the citizen.
//!
//! `--against echo` runs the same sockets against a bare echo endpoint: every frame comes
//! back as the "reply", which is the ceiling the server is compared with.
//!
//! The harness keeps its own work out of what it measures: sessions record into a few
//! shared histograms (none is made or merged per session, which at 5,000 sessions put
//! ~1 s stalls at both ends of a run), and at the end every session waits for the replies
//! it is owed and for the others to do the same before any socket closes, so no reply is
//! timed across 5,000 closes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use heyblue::geo::ZipTable;
use heyblue::http::auth::Auth;
use heyblue::protocol::Role;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Who, Ws};
use crate::frame::Frame;
use crate::metro::{self, Metro, Walker};
use crate::stats;

/// What the scenario runs against.
#[derive(Debug, Clone)]
pub enum Target {
    /// Hey Blue! orchestrators (one node, or several nodes of a cluster, used in turn),
    /// then the WebSocket each names.
    Server(Vec<String>),
    /// A bare echo WebSocket endpoint (`ws://…`).
    Echo(String),
}

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to.
    pub target: Target,
    /// Officer sessions.
    pub officers: usize,
    /// Citizen sessions.
    pub citizens: usize,
    /// How long the load runs once every session is open.
    pub duration: Duration,
    /// Location updates per session per second; 0 = citizens closed-loop.
    pub rate_hz: f64,
    /// Metro name.
    pub metro: String,
    /// Share of citizens that ask for connections.
    pub connect_share: f64,
    /// Sessions opened per second at most.
    pub open_rate: f64,
    /// Show a progress bar.
    pub progress: bool,
}

/// Error codes that are not protocol errors: refusals a correct client can get.
const REFUSALS: &[&str] = &[
    "handoff_target_gone",
    "officer_unavailable",
    "officer_busy",
    "too_far",
    "request_pending",
    "unknown_request",
];

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    replies: AtomicU64,
    pushes: AtomicU64,
    established: AtomicU64,
    /// Citizens' locations still unanswered when their session closed, after the drain.
    unanswered: AtomicU64,
    connected: AtomicI64,
    open_failures: AtomicU64,
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
    closes: std::sync::Mutex<BTreeMap<String, u64>>,
    /// officer id → the last few (lat bits, lon bits, sent at) it sent.
    officer_sends: DashMap<String, VecDeque<(u64, u64, Instant)>>,
    connected_over_time: std::sync::Mutex<Vec<(f64, i64)>>,
    /// Sessions opened per node (as the orchestrator placed them).
    nodes: std::sync::Mutex<BTreeMap<String, u64>>,
    /// `handoff` frames followed (a new socket opened to the node named).
    handoffs: AtomicU64,
    /// Sockets lost mid-run and opened again through an orchestrator.
    reopened: AtomicU64,
    /// Sessions whose socket was lost and not served again (no `welcome` for an officer, no
    /// `nearby` for a citizen on a new socket) by the end of the run.
    not_back: AtomicU64,
    hists: Recorder,
}

impl Shared {
    fn count(map: &std::sync::Mutex<BTreeMap<String, u64>>, k: String) {
        *map.lock().expect("not poisoned").entry(k).or_default() += 1;
    }
}

/// What a citizen's reader tells its writer: the nearest officer, and the request in
/// flight (when it was sent).
#[derive(Default)]
struct Asking {
    nearest: Option<String>,
    asked_at: Option<Instant>,
}

/// Latency histograms.
struct Hists {
    reply: Histogram<u64>,
    push: Histogram<u64>,
    connect: Histogram<u64>,
    /// From a socket lost mid-run (a node died) to the session being back: a citizen's
    /// first `nearby`, an officer's `welcome`, on the socket opened again.
    back: Histogram<u64>,
}

impl Hists {
    fn new() -> Self {
        Self {
            reply: stats::histogram(),
            push: stats::histogram(),
            connect: stats::histogram(),
            back: stats::histogram(),
        }
    }
}

/// The run's histograms, in shards that sessions pick by index: two workers seldom want
/// the same one, and there are a few of them however many sessions run (a histogram of
/// 1 µs–60 s at 3 figures is ~220 KB).
struct Recorder {
    shards: Box<[std::sync::Mutex<Hists>]>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            shards: (0..16)
                .map(|_| std::sync::Mutex::new(Hists::new()))
                .collect(),
        }
    }
}

impl Recorder {
    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Hists> {
        self.shards[i % self.shards.len()]
            .lock()
            .expect("not poisoned")
    }

    /// Every shard added up.
    fn merged(&self) -> anyhow::Result<Hists> {
        let mut all = Hists::new();
        for i in 0..self.shards.len() {
            let h = self.shard(i);
            all.reply.add(&h.reply)?;
            all.push.add(&h.push)?;
            all.connect.add(&h.connect)?;
            all.back.add(&h.back)?;
        }
        Ok(all)
    }
}

/// How long a session waits at the end for the replies it is owed, and then for the other
/// sessions, before it closes.
const DRAIN: Duration = Duration::from_secs(3);

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Runs the scenario; prints the table and returns every figure as JSON.
pub async fn run(cfg: Config, auth: Arc<Auth>) -> anyhow::Result<Value> {
    let zips = ZipTable::embedded();
    let m = metro::metro(&zips, &cfg.metro)
        .with_context(|| format!("unknown metro {:?}; one of {:?}", cfg.metro, metro::names()))?;
    let shared = Arc::new(Shared::default());
    let http = reqwest::Client::new();
    let total = cfg.officers + cfg.citizens;
    let open_gate = Arc::new(Semaphore::new(64));
    let opened_all = Arc::new(tokio::sync::Barrier::new(total + 1));
    let drained_all = Arc::new(tokio::sync::Barrier::new(total));
    let stop_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let pace = Duration::from_secs_f64(1.0 / cfg.open_rate.max(1.0));
    let started_opening = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let role = if i < cfg.officers {
            Role::Officer
        } else {
            Role::Citizen
        };
        let mut rng = rand::rng();
        // Officers: a third drive (10 m/s), the rest walk; citizens walk.
        let speed = if role == Role::Officer && i % 3 == 0 {
            10.0
        } else {
            1.4
        };
        let walker = Walker::new(&m, speed, &mut rng);
        let connects = role == Role::Citizen && rng.random::<f64>() < cfg.connect_share;
        let permit = open_gate.clone().acquire_owned().await?;
        let s = Session {
            i,
            role,
            sub: format!("lt-{}-{}-{i}", std::process::id(), role.as_str()),
            walker,
            metro: m,
            connects,
            cfg: cfg.clone(),
            shared: shared.clone(),
        };
        let (http, auth, opened_all, drained_all, stop_at) = (
            http.clone(),
            auth.clone(),
            opened_all.clone(),
            drained_all.clone(),
            stop_at.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let ws = s.open(&http, &auth, 0).await;
            drop(permit);
            opened_all.wait().await;
            let stop = *stop_at.get().expect("set once all opened");
            match ws {
                Ok(ws) => {
                    let shared = s.shared.clone();
                    if let Err(e) = s.drive(ws, stop, &http, &auth, &drained_all).await {
                        Shared::count(&shared.errors, format!("client: {e}"));
                    }
                }
                Err(e) => {
                    if s.shared.open_failures.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("opening session {}: {e:#}", s.i);
                    }
                    drained(&drained_all, stop).await;
                }
            }
        }));
        tokio::time::sleep(pace).await;
    }
    let opening_s = started_opening.elapsed().as_secs_f64();
    let t0 = Instant::now();
    stop_at.set(t0 + cfg.duration).expect("set once");
    opened_all.wait().await;

    let bar = cfg.progress.then(|| {
        let b = indicatif::ProgressBar::new(cfg.duration.as_secs());
        b.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b
    });
    let mut last = (0, 0, 0);
    while t0.elapsed() < cfg.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (
            shared.sent.load(Ordering::Relaxed),
            shared.replies.load(Ordering::Relaxed),
            shared.pushes.load(Ordering::Relaxed),
        );
        let connected = shared.connected.load(Ordering::Relaxed);
        shared
            .connected_over_time
            .lock()
            .expect("not poisoned")
            .push((t0.elapsed().as_secs_f64(), connected));
        if let Some(b) = &bar {
            b.set_position(t0.elapsed().as_secs());
            b.set_message(format!(
                "sessions {connected} | sent {}/s | replies {}/s | pushes {}/s",
                now.0 - last.0,
                now.1 - last.1,
                now.2 - last.2
            ));
        }
        last = now;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    report(&cfg, &shared, &shared.hists.merged()?, secs, opening_s)
}

/// Waits for every session to have drained (or for the drain's end, should one never come).
async fn drained(all: &tokio::sync::Barrier, stop: Instant) {
    let until = tokio::time::Instant::from_std(stop + DRAIN + Duration::from_secs(1));
    let _ = tokio::time::timeout_at(until, all.wait()).await;
}

fn report(
    cfg: &Config,
    shared: &Shared,
    h: &Hists,
    secs: f64,
    opening_s: f64,
) -> anyhow::Result<Value> {
    let rate = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / secs;
    let errors = shared.errors.lock().expect("not poisoned").clone();
    let protocol_errors: u64 = errors
        .iter()
        .filter(|(k, _)| !REFUSALS.contains(&k.as_str()))
        .map(|(_, v)| v)
        .sum();
    let closes = shared.closes.lock().expect("not poisoned").clone();
    let target = match &cfg.target {
        Target::Server(u) => format!("server {}", u.join(",")),
        Target::Echo(u) => format!("echo {u}"),
    };
    println!(
        "{target}: {} officers + {} citizens in {}, {:.0} s at {} Hz (opened in {opening_s:.1} s, {} failed)",
        cfg.officers,
        cfg.citizens,
        cfg.metro,
        secs,
        if cfg.rate_hz > 0.0 {
            format!("{}", cfg.rate_hz)
        } else {
            "closed-loop".into()
        },
        shared.open_failures.load(Ordering::Relaxed)
    );
    println!(
        "updates sent {:.0}/s | nearby replies {:.0}/s | pushes {:.0}/s | connections {:.1}/s | protocol errors {protocol_errors}",
        rate(&shared.sent),
        rate(&shared.replies),
        rate(&shared.pushes),
        rate(&shared.established)
    );
    let unanswered = shared.unanswered.load(Ordering::Relaxed);
    if unanswered > 0 {
        println!("locations never answered: {unanswered}");
    }
    if !errors.is_empty() {
        println!("error frames by code: {errors:?}");
    }
    if !closes.is_empty() {
        println!("closes by code: {closes:?}");
    }
    let nodes = shared.nodes.lock().expect("not poisoned").clone();
    let handoffs = shared.handoffs.load(Ordering::Relaxed);
    if nodes.len() > 1 || handoffs > 0 {
        println!("sessions opened per node: {nodes:?}; handoffs followed: {handoffs}");
    }
    println!("{}", stats::header());
    println!("{}", stats::row("location → nearby (citizen)", &h.reply));
    println!("{}", stats::row("officer move → push (citizen)", &h.push));
    println!("{}", stats::row("request → established", &h.connect));
    let reopened = shared.reopened.load(Ordering::Relaxed);
    let not_back = shared.not_back.load(Ordering::Relaxed);
    if reopened > 0 || not_back > 0 {
        println!(
            "sockets lost and opened again: {reopened}; sessions not served again: {not_back}"
        );
        println!("{}", stats::row("socket lost → back", &h.back));
    }
    Ok(json!({
        "target": target,
        "officers": cfg.officers, "citizens": cfg.citizens, "metro": cfg.metro,
        "rate_hz": cfg.rate_hz, "seconds": secs, "opening_seconds": opening_s,
        "open_failures": shared.open_failures.load(Ordering::Relaxed),
        "updates_sent_per_s": rate(&shared.sent),
        "nearby_replies_per_s": rate(&shared.replies),
        "pushes_per_s": rate(&shared.pushes),
        "connections_per_s": rate(&shared.established),
        "protocol_errors": protocol_errors,
        "unanswered_locations": unanswered,
        "errors_by_code": errors, "closes_by_code": closes,
        "sessions_per_node": nodes, "handoffs": handoffs,
        "sockets_reopened": reopened, "sessions_not_back": not_back,
        "lost_to_back": stats::json(&h.back),
        "location_to_nearby": stats::json(&h.reply),
        "move_to_push": stats::json(&h.push),
        "request_to_established": stats::json(&h.connect),
        "connected_over_time": *shared.connected_over_time.lock().expect("not poisoned"),
    }))
}

struct Session {
    i: usize,
    role: Role,
    sub: String,
    walker: Walker,
    metro: Metro,
    connects: bool,
    cfg: Config,
    shared: Arc<Shared>,
}

impl Session {
    /// Opens the session through an orchestrator: the session's own first, the next one on
    /// each further `attempt` (so a session whose node died asks a live one).
    async fn open(
        &self,
        http: &reqwest::Client,
        auth: &Auth,
        attempt: usize,
    ) -> anyhow::Result<Ws> {
        match &self.cfg.target {
            Target::Server(bases) => {
                let who = Who {
                    role: self.role,
                    sub: &self.sub,
                    lat: self.walker.pos.lat,
                    lon: self.walker.pos.lon,
                    i: self.i,
                };
                let base = &bases[(self.i + attempt) % bases.len()];
                let (ws, node) = client::open_placed(http, base, auth, who).await?;
                Shared::count(&self.shared.nodes, node);
                Ok(ws)
            }
            Target::Echo(url) => client::open_url(url, self.i).await,
        }
    }

    /// Reads a socket's frames until it closes, answering what needs an answer through
    /// `to_writer`; a `handoff` leaves its URL in `handoff` for the writer to follow.
    fn spawn_reader(
        &self,
        mut rx: futures_util::stream::SplitStream<Ws>,
        ctx: ReaderCtx,
    ) -> tokio::task::JoinHandle<()> {
        let echo = matches!(self.cfg.target, Target::Echo(_));
        let (shared, role, shard) = (self.shared.clone(), self.role, self.i);
        tokio::spawn(async move {
            let mut r = Reader {
                shared,
                role,
                echo,
                shard,
                asking: ctx.asking,
                handoff: ctx.handoff,
                lost_at: ctx.lost_at,
                seen: FxHashMap::default(),
            };
            let mut handed_off = false;
            while let Some(m) = rx.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let Some(v) = Frame::parse(&t) else {
                            // Counted as a protocol error: the server broke the contract.
                            Shared::count(&r.shared.errors, "unparsable_frame".into());
                            continue;
                        };
                        if let Some(out) = r.on_frame(v, &ctx.outstanding, &ctx.answered) {
                            let _ = ctx.to_writer.try_send(out);
                        }
                    }
                    Ok(Message::Close(c)) => {
                        let code = c.map_or(0, |c| u16::from(c.code));
                        Shared::count(
                            &r.shared.closes,
                            if code == 0 {
                                "none".into()
                            } else {
                                code.to_string()
                            },
                        );
                        // 4003: handed off (the writer follows the handoff); 4001: replaced
                        // by this session's newer socket. Neither is a loss to repair.
                        handed_off = code == 4003 || code == 4001;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // Anything but a handoff is a lost socket (the writer opens it again while the
            // run lasts).
            if !handed_off {
                ctx.lost.store(true, Ordering::Release);
            }
            r.shared.connected.fetch_sub(1, Ordering::Relaxed);
        })
    }

    /// Sends at the rate and reads until `stop`; then waits for the replies it is owed and
    /// for every other session to have done so (`drained_all`), and closes.
    async fn drive(
        mut self,
        ws: Ws,
        stop: Instant,
        http: &reqwest::Client,
        auth: &Auth,
        drained_all: &tokio::sync::Barrier,
    ) -> anyhow::Result<()> {
        let echo = matches!(self.cfg.target, Target::Echo(_));
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        let (mut tx, rx) = ws.split();
        let (to_writer, mut from_reader) = mpsc::channel::<Value>(16);
        if self.role == Role::Officer && !echo {
            let available = json!({"type":"available","window_s":900}).to_string();
            if let Err(e) = tx.send(Message::text(available)).await {
                drained(drained_all, stop).await;
                return Err(e.into());
            }
        }
        // Citizens: send times of locations not yet answered.
        let outstanding = Arc::new(std::sync::Mutex::new(VecDeque::<Instant>::new()));
        let answered = Arc::new(tokio::sync::Notify::new());
        let asking = Arc::new(std::sync::Mutex::new(Asking::default()));
        let handoff = Arc::new(std::sync::Mutex::new(None::<String>));
        let ctx = ReaderCtx {
            outstanding: outstanding.clone(),
            answered: answered.clone(),
            asking: asking.clone(),
            handoff: handoff.clone(),
            to_writer: to_writer.clone(),
            lost: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            lost_at: Arc::new(std::sync::Mutex::new(None)),
        };
        let mut readers = vec![self.spawn_reader(rx, ctx.clone())];
        let closed_loop = self.cfg.rate_hz <= 0.0 && self.role == Role::Citizen;
        // Closed-loop runs still move their officers once a second.
        let hz = if self.cfg.rate_hz > 0.0 {
            self.cfg.rate_hz
        } else {
            1.0
        };
        let period = Duration::from_secs_f64(1.0 / hz);
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        // Sessions send out of phase, as phones do: not all in the same millisecond.
        let phase = period.mul_f64(rng.random::<f64>());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_move = Instant::now();
        let mut next_request = Instant::now() + Duration::from_secs(2);
        let sent: anyhow::Result<()> = async {
            while Instant::now() < stop {
                // Handed off: open the socket the server named, then go on through it (the
                // server closes the old one with 4003, which its reader counts).
                if ctx.lost.swap(false, Ordering::AcqRel) {
                    // The socket was lost (its node died or closed it): open the session
                    // again through the orchestrators, as a phone does, until the run ends.
                    let lost_at = Instant::now();
                    *ctx.lost_at.lock().expect("not poisoned") = Some(lost_at);
                    let mut attempt = 0;
                    let ws = loop {
                        match self.open(http, auth, attempt).await {
                            Ok(ws) => break Some(ws),
                            Err(_) if Instant::now() < stop => {
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(_) => break None,
                        }
                    };
                    let Some(ws) = ws else { break };
                    // The orchestrator's placement supersedes a handoff the lost socket
                    // was told of: following it too would give the session two sockets,
                    // each replacing the other (4001) for ever.
                    handoff.lock().expect("not poisoned").take();
                    let (ntx, nrx) = ws.split();
                    tx = ntx;
                    self.shared.connected.fetch_add(1, Ordering::Relaxed);
                    self.shared.reopened.fetch_add(1, Ordering::Relaxed);
                    readers.push(self.spawn_reader(nrx, ctx.clone()));
                    outstanding.lock().expect("not poisoned").clear();
                    continue;
                }
                let follow = handoff.lock().expect("not poisoned").take();
                if let Some(url) = follow {
                    match client::open_url(&url, self.i).await {
                        Ok(ws) => {
                            let (ntx, nrx) = ws.split();
                            tx = ntx;
                            self.shared.connected.fetch_add(1, Ordering::Relaxed);
                            self.shared.handoffs.fetch_add(1, Ordering::Relaxed);
                            readers.push(self.spawn_reader(nrx, ctx.clone()));
                        }
                        // The node named is gone (it died meanwhile): the session is lost
                        // and opened again through an orchestrator, as a phone would.
                        Err(_) => {
                            Shared::count(&self.shared.errors, "handoff_target_gone".into());
                            ctx.lost.store(true, Ordering::Release);
                            continue;
                        }
                    }
                }
                if closed_loop {
                    let waiting = !outstanding.lock().expect("not poisoned").is_empty();
                    if waiting {
                        tokio::select! {
                            _ = answered.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                                outstanding.lock().expect("not poisoned").clear();
                            }
                        }
                        continue;
                    }
                } else {
                    tokio::select! {
                        _ = tick.tick() => {}
                        Some(out) = from_reader.recv() => {
                            tx.send(Message::text(out.to_string())).await?;
                            continue;
                        }
                    }
                }
                while let Ok(out) = from_reader.try_recv() {
                    tx.send(Message::text(out.to_string())).await?;
                }
                let dt = last_move.elapsed().as_secs_f64();
                last_move = Instant::now();
                self.walker.step(&self.metro, dt, &mut rng);
                let p = self.walker.pos;
                let now = Instant::now();
                if self.role == Role::Officer {
                    let mut ring = self
                        .shared
                        .officer_sends
                        .entry(self.sub.clone())
                        .or_default();
                    if ring.len() == 8 {
                        ring.pop_front();
                    }
                    ring.push_back((p.lat.to_bits(), p.lon.to_bits(), now));
                } else {
                    outstanding.lock().expect("not poisoned").push_back(now);
                }
                // Formatted directly: this is the hot path of a closed-loop run.
                let frame = format!(r#"{{"type":"location","lat":{},"lon":{}}}"#, p.lat, p.lon);
                if tx.send(Message::text(frame)).await.is_err() {
                    // The socket is gone; its reader says so and the next round reopens.
                    ctx.lost.store(true, Ordering::Release);
                    continue;
                }
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
                if self.connects && !echo && now >= next_request {
                    next_request = now + Duration::from_secs(5);
                    let officer = {
                        let mut a = asking.lock().expect("not poisoned");
                        match (a.nearest.clone(), a.asked_at) {
                            (Some(o), None) => {
                                a.asked_at = Some(now);
                                Some(o)
                            }
                            _ => None,
                        }
                    };
                    if let Some(o) = officer {
                        let m =
                            json!({"type":"request_connection","officer_id":o,"mode":"virtual"});
                        tx.send(Message::text(m.to_string())).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        // Replies still owed are waited for (and timed) before anyone closes.
        let until = stop + DRAIN;
        while !outstanding.lock().expect("not poisoned").is_empty() && Instant::now() < until {
            let _ = tokio::time::timeout_at(until.into(), answered.notified()).await;
        }
        let left = outstanding.lock().expect("not poisoned").len() as u64;
        self.shared.unanswered.fetch_add(left, Ordering::Relaxed);
        if ctx.lost.load(Ordering::Acquire) || ctx.lost_at.lock().expect("not poisoned").is_some() {
            self.shared.not_back.fetch_add(1, Ordering::Relaxed);
        }
        drained(drained_all, stop).await;
        let _ = tx.send(Message::Close(None)).await;
        // A reader ends when the server's close arrives.
        for mut reader in readers {
            if tokio::time::timeout(Duration::from_secs(3), &mut reader)
                .await
                .is_err()
            {
                reader.abort();
                self.shared.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        sent
    }
}

/// What a session's readers share with its writer.
#[derive(Clone)]
struct ReaderCtx {
    outstanding: Arc<std::sync::Mutex<VecDeque<Instant>>>,
    answered: Arc<tokio::sync::Notify>,
    asking: Arc<std::sync::Mutex<Asking>>,
    handoff: Arc<std::sync::Mutex<Option<String>>>,
    to_writer: mpsc::Sender<Value>,
    /// Set by a reader whose socket ended without a handoff (the node died, or closed it).
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// When the socket was lost, until the session is back on a new one.
    lost_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// What a session's reader keeps.
struct Reader {
    shared: Arc<Shared>,
    role: Role,
    echo: bool,
    /// Which of the run's histogram shards this session records into.
    shard: usize,
    asking: Arc<std::sync::Mutex<Asking>>,
    /// Where a `handoff` sends the session.
    handoff: Arc<std::sync::Mutex<Option<String>>>,
    /// When the session's socket was lost, until it is back.
    lost_at: Arc<std::sync::Mutex<Option<Instant>>>,
    /// officer id → position last shown to this citizen.
    seen: FxHashMap<Box<str>, (u64, u64)>,
}

impl Reader {
    /// Handles one frame; returns a frame to send, if any.
    fn on_frame(
        &mut self,
        v: Frame<'_>,
        outstanding: &std::sync::Mutex<VecDeque<Instant>>,
        answered: &tokio::sync::Notify,
    ) -> Option<Value> {
        let ty = v.ty.as_ref();
        if self.echo {
            if self.role == Role::Citizen && ty == "location" {
                self.reply(outstanding, answered);
            }
            return None;
        }
        let back = match ty {
            "nearby" => self.role == Role::Citizen,
            "welcome" => self.role == Role::Officer,
            _ => false,
        };
        if back && let Some(t) = self.lost_at.lock().expect("not poisoned").take() {
            let _ = self
                .shared
                .hists
                .shard(self.shard)
                .back
                .record(micros(t.elapsed()));
        }
        match ty {
            "nearby" => {
                let was_reply = self.role == Role::Citizen && self.reply(outstanding, answered);
                if !was_reply {
                    self.shared.pushes.fetch_add(1, Ordering::Relaxed);
                }
                self.track_officers(&v, !was_reply);
                None
            }
            "connection_requested" => {
                let id = v.request_id.as_deref()?;
                Some(json!({"type":"respond","request_id":id,"accept":true}))
            }
            "connection_established" => {
                if self.role == Role::Citizen {
                    self.shared.established.fetch_add(1, Ordering::Relaxed);
                    let asked = self.asking.lock().expect("not poisoned").asked_at.take();
                    if let Some(t) = asked {
                        let _ = self
                            .shared
                            .hists
                            .shard(self.shard)
                            .connect
                            .record(micros(t.elapsed()));
                    }
                }
                None
            }
            "connection_response" => {
                if v.status.as_deref() != Some("accepted") {
                    self.asking.lock().expect("not poisoned").asked_at = None;
                }
                None
            }
            "window_expiring" => Some(json!({"type":"available","window_s":900})),
            "handoff" => {
                if let Some(url) = v.ws_url.as_deref() {
                    *self.handoff.lock().expect("not poisoned") = Some(url.to_owned());
                }
                None
            }
            "error" => {
                let code = v.code.as_deref().unwrap_or("?").to_owned();
                if REFUSALS.contains(&code.as_str()) {
                    self.asking.lock().expect("not poisoned").asked_at = None;
                }
                Shared::count(&self.shared.errors, code);
                None
            }
            _ => None,
        }
    }

    /// A citizen's answer to its oldest outstanding location, if any.
    fn reply(
        &mut self,
        outstanding: &std::sync::Mutex<VecDeque<Instant>>,
        answered: &tokio::sync::Notify,
    ) -> bool {
        let sent = outstanding.lock().expect("not poisoned").pop_front();
        let Some(t) = sent else { return false };
        self.shared.replies.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .shared
            .hists
            .shard(self.shard)
            .reply
            .record(micros(t.elapsed()));
        answered.notify_one();
        true
    }

    /// Notes officer positions; for a push, times each officer seen at a new position
    /// against the moment that officer sent it.
    fn track_officers(&mut self, v: &Frame<'_>, push: bool) {
        let Some(list) = &v.officers else {
            return;
        };
        // Each reply names the nearest officer: copied only when it changes (this is the
        // load generator's hot path, and its CPU is the server's in a same-box run).
        {
            let mut a = self.asking.lock().expect("not poisoned");
            let first = list.first().map(|o| o.officer_id.as_ref());
            if a.nearest.as_deref() != first {
                a.nearest = first.map(str::to_owned);
            }
        }
        for o in list {
            let id = o.officer_id.as_ref();
            let pos = (o.lat.to_bits(), o.lon.to_bits());
            let moved = match self.seen.get_mut(id) {
                Some(p) => std::mem::replace(p, pos) != pos,
                None => {
                    self.seen.insert(id.into(), pos);
                    true
                }
            };
            if push
                && moved
                && let Some(ring) = self.shared.officer_sends.get(id)
                && let Some((_, _, at)) = ring.iter().find(|(a, b, _)| (*a, *b) == pos)
            {
                let _ = self
                    .shared
                    .hists
                    .shard(self.shard)
                    .push
                    .record(micros(at.elapsed()));
            }
        }
    }
}
