//! `spawn_app()` and a small WebSocket client speaking the protocol, for every test.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use heyblue::config::Settings;
use heyblue::geo::ZipTable;
use heyblue::http::auth::Auth;
use heyblue::protocol::{Role, ServerMsg};
use heyblue::server::Running;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub fn zips() -> Arc<ZipTable> {
    static Z: OnceLock<Arc<ZipTable>> = OnceLock::new();
    Z.get_or_init(|| Arc::new(ZipTable::embedded())).clone()
}

pub struct TestApp {
    pub running: Running,
    pub base: String,
    pub auth: Auth,
    pub http: reqwest::Client,
    /// Declared last so it drops after the server: the SQLite file's directory goes with the app.
    _data: DataDir,
}

/// A test app's own data directory, removed when the app is dropped (a full test run opens
/// a few hundred apps; their databases used to stay behind in the temp dir).
struct DataDir(std::path::PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test settings: port 0, short intervals, SQLite in `dir`.
fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::defaults();
    s.server.bind = "127.0.0.1:0".into();
    s.server.shutdown_grace_ms = 1000;
    s.citizen.push_interval_ms = 200;
    // Feed reads see every write at once (the cache has a test of its own).
    s.feed.cache_ms = 0;
    s.database.url = format!("sqlite://{}/heyblue.db?mode=rwc", dir.display());
    s
}

/// A fresh database on the PostgreSQL the test command started (fails without one).
pub async fn postgres_database() -> String {
    use sea_orm::ConnectionTrait;
    let admin_url = std::env::var("HEYBLUE_TEST_POSTGRES_URL").expect(
        "HEYBLUE_TEST_POSTGRES_URL must name a PostgreSQL server (scripts/test starts one)",
    );
    let name = format!("hb_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// The app on SQLite, then on PostgreSQL.
pub async fn on_both_stores<F, Fut>(f: F)
where
    F: Fn(TestApp) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    on_both_stores_with(|_| {}, f).await
}

/// `on_both_stores`, each app with the settings `settings` makes.
pub async fn on_both_stores_with<F, Fut>(settings: impl Fn(&mut Settings), f: F)
where
    F: Fn(TestApp) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f(spawn_app_with(&settings).await).await;
    let url = postgres_database().await;
    f(spawn_app_with(|s| {
        settings(s);
        s.database.url = url;
    })
    .await)
    .await;
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app for tests that pause tokio's clock once their sockets are open: the event
/// publisher's periodic store poll and the HTTP timeouts are moved out of the way (an
/// hour), so the only timers that make paused time jump are the ones a test is about.
pub async fn spawn_app_for_paused_time() -> TestApp {
    spawn_app_with(|s| {
        s.events.publish_interval_ms = 3_600_000;
        s.limits.header_timeout_ms = 3_600_000;
        s.limits.request_timeout_ms = 3_600_000;
        s.limits.ws_ping_interval_s = 86_400;
    })
    .await
}

/// An app with no rate limit to speak of and an outbound queue of `outbound_queue` frames,
/// for tests that send frames in bursts.
pub async fn spawn_app_unlimited(outbound_queue: usize) -> TestApp {
    spawn_app_with(|s| {
        s.limits.outbound_queue = outbound_queue;
        s.limits.messages_per_s = 100_000;
        s.limits.messages_burst = 100_000;
    })
    .await
}

pub async fn spawn_app_with(f: impl FnOnce(&mut Settings)) -> TestApp {
    let data = DataDir(std::env::temp_dir().join(format!("heyblue-api-{}", uuid::Uuid::new_v4())));
    let mut s = test_settings(&data.0);
    f(&mut s);
    let auth = Auth::new(s.auth.jwt_secret.expose());
    // Bound here and handed over: the port is never released between choosing and binding.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let running = heyblue::server::start_on(listener, s, zips())
        .await
        .expect("server starts");
    let base = format!("http://{}", running.addr);
    TestApp {
        running,
        base,
        auth,
        http: reqwest::Client::new(),
        _data: data,
    }
}

/// Waits until `check` answers `Some`, polling every 10 ms, and returns the answer; fails
/// naming `what` after 10 s of real time (a bound for a broken server, never a timing the
/// test relies on). The one way tests wait for something that must become true.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub welcome: Value,
}

impl TestApp {
    pub fn token(&self, role: Role, sub: &str) -> String {
        self.auth.mint(
            role,
            sub,
            Some(&format!("Name {sub}")),
            Duration::from_secs(600),
        )
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Any request: method, path, token, optional (content type, body) and extra headers.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, b)) = body {
            req = req.header("content-type", ct).body(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            Some(token),
            Some(("application/json", body.to_string().into_bytes())),
            &[],
        )
        .await
    }

    /// POST /admin/v1/import/{kind} as an admin.
    pub async fn import(&self, kind: &str, content_type: &str, body: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/admin/v1/import/{kind}"),
            Some(&self.token(Role::Admin, "admin")),
            Some((content_type, body.as_bytes().to_vec())),
            &[],
        )
        .await
    }

    /// Gives `account` `n` × `points.per_connection` through recorded connections.
    pub async fn earn(&self, account: &str, n: usize) {
        let s = &self.running.ctx().settings.points;
        for i in 0..n {
            let officer = format!("earn-{account}-{i}-{}", uuid::Uuid::new_v4().simple());
            self.running
                .ctx()
                .store
                .record_accepted(&heyblue::store::NewConnection {
                    request_id: format!("req-{officer}"),
                    officer_id: officer,
                    citizen_id: account.into(),
                    mode: "virtual".into(),
                    zip: "10001".into(),
                    per_connection: s.per_connection,
                    pair_cooldown: Duration::from_secs(s.pair_cooldown_s),
                    at: chrono::Utc::now(),
                })
                .await
                .unwrap();
        }
    }

    /// `/metrics` as an admin sees it.
    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(self.token(Role::Admin, "admin"))
            .send()
            .await
            .expect("metrics request");
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("metrics body")
    }

    /// The sum of a metric's samples in `/metrics` (compare before and after: the
    /// recorder is shared by every app of the test process).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics().await, name)
    }

    /// Asks the orchestrator for a ticket; returns the ws_url.
    pub async fn ticket(&self, role: Role, sub: &str, lat: f64, lon: f64) -> String {
        let path = match role {
            Role::Officer => "/v1/officers/session",
            _ => "/v1/citizens/session",
        };
        let (status, body) = self
            .get(
                &format!("{path}?lat={lat}&lon={lon}"),
                Some(&self.token(role, sub)),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["ws_url"].as_str().unwrap().to_owned()
    }

    /// Opens a session, reading nothing.
    pub async fn open(&self, role: Role, sub: &str, lat: f64, lon: f64) -> Client {
        let url = self.ticket(role, sub, lat, lon).await;
        // No Nagle, as phones' small frames want (and the server sets on its side): with
        // it, a frame sent while the previous one is unacknowledged waits for a delayed
        // ACK (~40 ms of real time), which a paused tokio clock does not wait for.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("upgrade");
        Client {
            ws,
            welcome: Value::Null,
        }
    }

    /// Opens a session and reads its `welcome`.
    pub async fn connect(&self, role: Role, sub: &str, lat: f64, lon: f64) -> Client {
        let mut c = self.open(role, sub, lat, lon).await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.welcome = w;
        c
    }

    /// An officer who is available at the given point.
    pub async fn officer(&self, sub: &str, lat: f64, lon: f64) -> Client {
        let mut c = self.connect(Role::Officer, sub, lat, lon).await;
        c.send(serde_json::json!({"type":"available","window_s":900}))
            .await;
        let a = c.recv_type("availability").await;
        assert_eq!(a["available"], true);
        c
    }

    /// A citizen, with its first `nearby` read.
    pub async fn citizen(&self, sub: &str, lat: f64, lon: f64) -> (Client, Value) {
        let mut c = self.connect(Role::Citizen, sub, lat, lon).await;
        let n = c.recv_type("nearby").await;
        (c, n)
    }
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Client {
    /// Opens the session of a `ws_url` and reads its `welcome`.
    pub async fn open_url(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("upgrade");
        let mut c = Client {
            ws,
            welcome: Value::Null,
        };
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.welcome = w;
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next text frame as JSON (panics on close or timeout).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("stream open")
                .expect("frame");
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    // Every frame must also parse as the server's wire type.
                    serde_json::from_value::<ServerMsg>(v.clone()).expect("a ServerMsg");
                    return v;
                }
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Skips frames until one of `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// The next frame within `d`, if any.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Value> {
        let m = tokio::time::timeout(d, self.ws.next()).await.ok()??.ok()?;
        match m {
            Message::Text(t) => serde_json::from_str(&t).ok(),
            _ => None,
        }
    }

    /// Reads for `d` (answering the server's pings as it reads), failing if the socket
    /// closes or a text frame comes.
    pub async fn idle(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(until, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("while idle: {other:?}"),
            }
        }
    }

    /// Reads until the close frame; returns its code (None if the stream just ended).
    pub async fn closed(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within the wait")
            {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(c))) => return (frames, c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (frames, None),
            }
        }
    }

    /// Sends `request_connection`; returns the `connection_pending` or `error` answer,
    /// skipping pushes.
    pub async fn request(&mut self, officer: &str, mode: &str) -> Value {
        self.send(
            serde_json::json!({"type":"request_connection","officer_id":officer,"mode":mode}),
        )
        .await;
        loop {
            let f = self.recv().await;
            if f["type"] == "connection_pending" || f["type"] == "error" {
                return f;
            }
        }
    }

    pub async fn ping(&mut self) {
        self.send(serde_json::json!({"type":"ping"})).await;
        self.recv_type("pong").await;
    }
}

/// Citizen `c` asks officer `o` (account `officer`), who receives it; returns the request id.
pub async fn ask(o: &mut Client, c: &mut Client, officer: &str, mode: &str) -> String {
    let p = c.request(officer, mode).await;
    assert_eq!(p["type"], "connection_pending", "{p}");
    o.recv_type("connection_requested").await;
    p["request_id"].as_str().unwrap().to_owned()
}

/// `ask`, then the officer accepts; returns the request id and the officer's
/// `connection_established`.
pub async fn ask_and_accept(
    o: &mut Client,
    c: &mut Client,
    officer: &str,
    mode: &str,
) -> (String, Value) {
    let id = ask(o, c, officer, mode).await;
    o.send(serde_json::json!({"type":"respond","request_id":id,"accept":true}))
        .await;
    let est = o.recv_type("connection_established").await;
    (id, est)
}

impl TestApp {
    /// `PATCH /v1/me` as `who`.
    pub async fn patch_me(&self, role: Role, who: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::PATCH,
            "/v1/me",
            Some(&self.token(role, who)),
            Some(("application/json", body.to_string().into_bytes())),
            &[],
        )
        .await
    }

    /// Sets `who`'s consent to share, checking the answer.
    pub async fn consent(&self, role: Role, who: &str, share: bool) -> Value {
        let (s, me) = self
            .patch_me(role, who, serde_json::json!({ "share_connections": share }))
            .await;
        assert_eq!(s, 200, "{me}");
        assert_eq!(me["share_connections"], share, "{me}");
        me
    }

    /// Connections the store holds for a request.
    pub async fn recorded(&self, request_id: &str) -> u64 {
        self.running
            .ctx()
            .store
            .connections_for_request(request_id)
            .await
            .unwrap()
    }
}

/// Every object key anywhere in `v` (to show that no payload carries a position).
pub fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| {
            out.push(k.clone());
            keys(v, out);
        }),
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

/// `s` percent-encoded for a query string (cursors carry `|`, `:` and `+`).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sum of every series of a metric (all label sets) in a Prometheus text body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts `heyblue serve --bind 127.0.0.1:0 ARGS` in `dir` with `envs`, reads the address it
/// bound from its first line on stdout, and waits for /healthz. Its log goes to
/// `dir/stderr.log`.
pub async fn serve_process(
    dir: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (std::process::Child, String) {
    let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_heyblue"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env(
            "RUST_LOG",
            std::env::var("HEYBLUE_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start heyblue");
    let line = listening_line(&mut child).await;
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no address on stdout: {line:?}"))
        .to_owned();
    let http = reqwest::Client::new();
    let health = format!("{base}/healthz");
    eventually("the server answers /healthz", || async {
        let ok = http.get(&health).send().await.ok()?.status() == 200;
        ok.then_some(())
    })
    .await;
    (child, base)
}

/// Runs `heyblue serve ARGS` in `dir` with `envs`, expecting the refusal of a usable
/// configuration (exit code 2); its stderr.
pub fn serve_refused(dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_heyblue"))
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .output()
        .expect("run heyblue");
    assert_eq!(out.status.code(), Some(2), "serve {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `listening on …` line a `heyblue serve` child prints first on its piped stdout.
pub async fn listening_line(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .expect("read the bound address")
}

/// A reader of the dashboard's live feed (`GET /admin/v1/live`) that folds its events
/// into the map they describe, checking that deltas follow each other without a gap.
pub struct LiveWatch {
    resp: reqwest::Response,
    buf: String,
    /// Officers on the map, by id.
    pub officers: std::collections::HashMap<String, Value>,
    /// Citizens per zip.
    pub citizens: std::collections::HashMap<String, u64>,
    /// The counters of the last event.
    pub stats: Value,
    /// Number of the last sample.
    pub seq: u64,
    /// `snapshot` events read.
    pub snapshots: usize,
}

impl LiveWatch {
    /// Opens the feed, or the error answer.
    pub async fn open(base: &str, token: &str) -> Result<LiveWatch, (u16, Value)> {
        let resp = reqwest::Client::new()
            .get(format!("{base}/admin/v1/live"))
            .bearer_auth(token)
            .send()
            .await
            .expect("live feed request");
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(LiveWatch {
            resp,
            buf: String::new(),
            officers: Default::default(),
            citizens: Default::default(),
            stats: Value::Null,
            seq: 0,
            snapshots: 0,
        })
    }

    /// The next event (name and data), keep-alive comments skipped.
    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !name.is_empty() {
                    return (
                        name,
                        serde_json::from_str(&data).expect("event data is JSON"),
                    );
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("a live event within 5 s")
                .expect("the feed reads")
                .expect("the feed is open");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// Reads and folds events until `done` holds for the map; fails naming `what` after 10
    /// s of real time.
    pub async fn until(&mut self, what: &str, done: impl Fn(&LiveWatch) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "not within 10 s: {what}"
            );
            let (name, ev) = self.next().await;
            self.fold(&name, ev);
        }
    }

    /// Folds one event into the map.
    pub fn fold(&mut self, name: &str, ev: Value) {
        let seq = ev["seq"].as_u64().expect("seq");
        let zip_counts = |v: &Value| -> Vec<(String, u64)> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|z| {
                    assert!(z.get("lat").is_some(), "a zip count has its centroid");
                    (
                        z["zip"].as_str().unwrap().to_owned(),
                        z["citizens"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        match name {
            "snapshot" => {
                self.snapshots += 1;
                self.officers = ev["officers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| (o["officer_id"].as_str().unwrap().to_owned(), o.clone()))
                    .collect();
                self.citizens = zip_counts(&ev["citizens"]).into_iter().collect();
            }
            "delta" => {
                assert_eq!(seq, self.seq + 1, "deltas follow each other");
                for o in ev["upsert"].as_array().unwrap() {
                    self.officers
                        .insert(o["officer_id"].as_str().unwrap().to_owned(), o.clone());
                }
                for id in ev["gone"].as_array().unwrap() {
                    assert!(
                        self.officers.remove(id.as_str().unwrap()).is_some(),
                        "{id} went without having come"
                    );
                }
                for (zip, n) in zip_counts(&ev["citizens"]) {
                    if n == 0 {
                        self.citizens.remove(&zip);
                    } else {
                        self.citizens.insert(zip, n);
                    }
                }
            }
            other => panic!("unknown live event {other}"),
        }
        self.seq = seq;
        self.stats = ev["stats"].clone();
    }
}
