//! Three `heyblue serve` processes on loopback ports sharing the NATS server and the
//! PostgreSQL server the test command started (`HEYBLUE_TEST_NATS_URL`,
//! `HEYBLUE_TEST_POSTGRES_URL`; without them these tests fail, they do not skip). Each test
//! has its own database and its own NATS namespace, so tests run side by side.

use std::process::Child;
use std::time::{Duration, Instant};

use heyblue::geo::{LatLon, haversine_m};
use heyblue::http::auth::Auth;
use heyblue::protocol::Role;
use serde_json::{Value, json};

use crate::helpers::{Client, LiveWatch, eventually, postgres_database, serve_process, zips};

/// Lease TTL of the test clusters (the default is 5 s; shorter keeps failover tests short).
const LEASE_TTL_S: u64 = 3;

struct Node {
    id: String,
    base: String,
    dir: std::path::PathBuf,
    child: Child,
}

impl Node {
    fn port(&self) -> String {
        self.base.rsplit(':').next().unwrap().to_owned()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("HEYBLUE_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct TestCluster {
    nodes: Vec<Node>,
    db: String,
    nats: String,
    namespace: String,
    auth: Auth,
    http: reqwest::Client,
}

impl TestCluster {
    async fn start(n: usize) -> Self {
        Self::start_with(n, &[]).await
    }

    /// `n` nodes, each with the extra settings `env` (`HEYBLUE__…` variables).
    async fn start_with(n: usize, env: &[(&str, &str)]) -> Self {
        let nats = std::env::var("HEYBLUE_TEST_NATS_URL").expect(
            "HEYBLUE_TEST_NATS_URL must name a NATS server with JetStream (scripts/test starts one)",
        );
        let mut c = Self {
            nodes: Vec::new(),
            db: postgres_database().await,
            nats,
            namespace: format!("t{}", uuid::Uuid::new_v4().simple()),
            auth: Auth::new(
                heyblue::config::Settings::defaults()
                    .auth
                    .jwt_secret
                    .expose(),
            ),
            http: reqwest::Client::new(),
        };
        for i in 1..=n {
            let node = c.start_node(&format!("n{i}"), env).await;
            c.nodes.push(node);
        }
        c.settled().await;
        c
    }

    /// Node `id`, with the extra settings `extra` (`HEYBLUE__…` variables).
    async fn start_node(&self, id: &str, extra: &[(&str, &str)]) -> Node {
        let dir = std::env::temp_dir().join(format!("heyblue-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ttl = LEASE_TTL_S.to_string();
        let (child, base) = serve_process(
            &dir,
            &[
                "--database-url",
                &self.db,
                "--cluster-url",
                &self.nats,
                "--node-id",
                id,
                "--advertise-url",
                "http://127.0.0.1:0",
            ],
            &[
                ("HEYBLUE__CLUSTER__NAMESPACE", self.namespace.as_str()),
                ("HEYBLUE__CLUSTER__LEASE_TTL_S", ttl.as_str()),
                ("HEYBLUE__CLUSTER__RENEW_INTERVAL_MS", "500"),
                ("HEYBLUE__CLUSTER__RECONCILE_INTERVAL_MS", "200"),
                ("HEYBLUE__CLUSTER__MOVES_PER_ROUND", "1000"),
                ("HEYBLUE__CITIZEN__PUSH_INTERVAL_MS", "200"),
                ("HEYBLUE__SERVER__SHUTDOWN_GRACE_MS", "1000"),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )
        .await;
        Node {
            id: id.to_owned(),
            base,
            dir,
            child,
        }
    }

    fn token(&self, role: Role, sub: &str) -> String {
        self.auth.mint(
            role,
            sub,
            Some(&format!("Name {sub}")),
            Duration::from_secs(600),
        )
    }

    /// `method path` on node `node`, with a JSON body if any; the status and JSON answer.
    async fn send(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.nodes[node].base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, node: usize, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(node, reqwest::Method::GET, path, token, None)
            .await
    }

    async fn delete(&self, node: usize, path: &str, token: &str) -> (u16, Value) {
        self.send(node, reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// The sum of a metric's samples on node `node`.
    async fn metric(&self, node: usize, name: &str) -> f64 {
        let resp = self
            .http
            .get(format!("{}/metrics", self.nodes[node].base))
            .bearer_auth(self.token(Role::Admin, "admin"))
            .send()
            .await
            .expect("metrics request");
        assert_eq!(resp.status(), 200);
        crate::helpers::metric_sum(&resp.text().await.expect("metrics body"), name)
    }

    async fn stats(&self, node: usize) -> Value {
        let admin = self.token(Role::Admin, "admin");
        let (status, body) = self.get(node, "/admin/v1/stats", Some(&admin)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Every live node lists every node and has no unit left to take or give up, and the
    /// regions the nodes serve add up to all of them. Each node's own entry is read (the
    /// others' are as old as their last renewal).
    async fn settled(&self) {
        let want: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        let mut owned = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            owned += eventually("the cluster settles", || async {
                let s = self.stats(i).await;
                let nodes = s["nodes"].as_array()?;
                let ids: Vec<&str> = nodes.iter().filter_map(|n| n["node_id"].as_str()).collect();
                let own = nodes.iter().find(|n| n["node_id"] == node.id.as_str())?;
                (ids == want && own["units_moving"] == 0).then(|| own["regions_owned"].as_u64())?
            })
            .await;
        }
        assert_eq!(owned, zips().len() as u64, "every region is served once");
    }

    /// The owner of the region holding `(lat, lon)`, as node `via` sees it.
    async fn owner(&self, via: usize, lat: f64, lon: f64) -> String {
        let (status, b) = self
            .get(via, &format!("/v1/zips/lookup?lat={lat}&lon={lon}"), None)
            .await;
        assert_eq!(status, 200, "{b}");
        b["node"].as_str().expect("node in a cluster").to_owned()
    }

    /// Opens a session through node `via`'s orchestrator; returns the client (welcome
    /// read) and the grant.
    async fn connect(
        &self,
        via: usize,
        role: Role,
        sub: &str,
        lat: f64,
        lon: f64,
    ) -> (Client, Value) {
        let path = match role {
            Role::Officer => "/v1/officers/session",
            _ => "/v1/citizens/session",
        };
        let (status, grant) = self
            .get(
                via,
                &format!("{path}?lat={lat}&lon={lon}"),
                Some(&self.token(role, sub)),
            )
            .await;
        assert_eq!(status, 200, "{grant}");
        let url = grant["ws_url"].as_str().unwrap();
        (Client::open_url(url).await, grant)
    }

    async fn officer(&self, via: usize, sub: &str, lat: f64, lon: f64) -> (Client, Value) {
        let (mut c, grant) = self.connect(via, Role::Officer, sub, lat, lon).await;
        c.send(json!({"type":"available","window_s":900})).await;
        let a = c.recv_type("availability").await;
        assert_eq!(a["available"], true, "{a}");
        (c, grant)
    }
}

/// Deterministic points around `centre` within `spread_m` (a fixed LCG: the same every run).
fn points(centre: LatLon, spread_m: f64, n: usize, mut seed: u64) -> Vec<LatLon> {
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let r = spread_m * next().sqrt();
            let a = next() * std::f64::consts::TAU;
            let dlat = (r * a.sin()) / 111_195.0;
            let dlon = (r * a.cos()) / (111_195.0 * centre.lat.to_radians().cos());
            LatLon::new(centre.lat + dlat, centre.lon + dlon).unwrap()
        })
        .collect()
}

/// The brute-force answer: ids of the `k` nearest within `r`, nearest first.
fn brute(officers: &[(String, LatLon)], at: LatLon, r: f64, k: usize) -> Vec<String> {
    let mut v: Vec<(f64, &String)> = officers
        .iter()
        .map(|(id, p)| (haversine_m(at, *p), id))
        .filter(|(d, _)| *d <= r)
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    v.into_iter().take(k).map(|(_, id)| id.clone()).collect()
}

fn ids(nearby: &Value) -> Vec<String> {
    nearby["officers"]
        .as_array()
        .expect("officers")
        .iter()
        .map(|o| o["officer_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn three_nodes_own_every_region_once_and_route_sessions_to_the_owner() {
    let c = TestCluster::start(3).await;
    // Stats are cluster-wide from any node, with every node listed; every node is ready.
    for i in 0..3 {
        let (status, ready) = c.get(i, "/readyz", None).await;
        assert_eq!(
            (status, &ready["status"]),
            (200, &json!("ready")),
            "{ready}"
        );
        let s = c.stats(i).await;
        let nodes = s["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3, "{s}");
        for (n, node) in nodes.iter().zip(&c.nodes) {
            assert_eq!(n["node_id"], node.id.as_str());
            assert_eq!(n["alive"], true);
            assert_eq!(
                n["advertise_url"],
                format!("http://127.0.0.1:{}", node.port()).as_str()
            );
            assert!(n["regions_owned"].as_u64().unwrap() > 0, "{s}");
        }
    }
    // Whichever orchestrator is asked, a session goes to the region's owner.
    let places = [
        (40.7506, -73.9927),
        (34.0522, -118.2437),
        (41.8781, -87.6298),
        (29.7604, -95.3698),
        (47.6062, -122.3321),
        (25.7617, -80.1918),
    ];
    let mut owners = std::collections::BTreeSet::new();
    for (k, &(lat, lon)) in places.iter().enumerate() {
        let owner = c.owner(0, lat, lon).await;
        assert_eq!(owner, c.owner(1, lat, lon).await);
        assert_eq!(owner, c.owner(2, lat, lon).await);
        let node = c.nodes.iter().find(|n| n.id == owner).unwrap();
        let (client, grant) = c
            .connect(k % 3, Role::Citizen, &format!("c{k}"), lat, lon)
            .await;
        assert_eq!(grant["node"], owner.as_str(), "{grant}");
        assert!(
            grant["ws_url"]
                .as_str()
                .unwrap()
                .starts_with(&format!("ws://127.0.0.1:{}/v1/ws?ticket=", node.port())),
            "{grant}"
        );
        assert_eq!(client.welcome["type"], "welcome");
        owners.insert(owner);
    }
    assert!(owners.len() >= 2, "the places fall on one node: {owners:?}");

    // An administrator ends a session from a node that does not hold it.
    let (lat, lon) = places[0];
    let owner = c.owner(0, lat, lon).await;
    let (mut kept, _) = c.connect(0, Role::Citizen, "kept", lat, lon).await;
    let other = c.nodes.iter().position(|n| n.id != owner).unwrap();
    let admin = c.token(Role::Admin, "admin");
    let (status, body) = c.delete(other, "/admin/v1/sessions/kept", &admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "citizen", "{body}");
    let (frames, code) = kept.closed().await;
    assert_eq!(code, Some(4002));
    assert!(
        frames.iter().any(|f| f["code"] == "session_ended"),
        "{frames:?}"
    );
    let (status, _) = c.delete(other, "/admin/v1/sessions/nobody", &admin).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_owner_that_is_full_refuses_through_another_nodes_orchestrator() {
    let c = TestCluster::start_with(2, &[("HEYBLUE__LIMITS__MAX_SESSIONS", "1")]).await;
    let (lat, lon) = (40.7506, -73.9972);
    let owner = c.owner(0, lat, lon).await;
    let other = c.nodes.iter().position(|n| n.id != owner).unwrap();
    // The owner takes one session, asked through the other node.
    let (_held, grant) = c.connect(other, Role::Citizen, "c1", lat, lon).await;
    assert_eq!(grant["node"], owner.as_str());
    // The next one: the owner refuses, and the node asked says so.
    let (status, b) = c
        .get(
            other,
            &format!("/v1/citizens/session?lat={lat}&lon={lon}"),
            Some(&c.token(Role::Citizen, "c2")),
        )
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (503, Some("node_full")),
        "{b}"
    );
}

#[tokio::test]
async fn nearby_is_exact_across_nodes() {
    let c = TestCluster::start(3).await;
    // Lower Manhattan and Jersey City across the Hudson: zip3 units 070, 073, 100, 102, 112.
    let centre = LatLon::new(40.7163, -74.0200).unwrap();
    let spots = points(centre, 9_000.0, 40, 7);
    let mut officers = Vec::new();
    let mut held = Vec::new();
    let mut nodes_used = std::collections::BTreeSet::new();
    for (i, p) in spots.iter().enumerate() {
        let Some(_) = zips().locate(*p, 50_000.0).ok() else {
            continue;
        };
        let id = format!("o{i}");
        let (client, grant) = c.officer(i % 3, &id, p.lat, p.lon).await;
        nodes_used.insert(grant["node"].as_str().unwrap().to_owned());
        officers.push((id, *p));
        held.push(client);
    }
    assert!(
        nodes_used.len() >= 2,
        "officers all on one node: {nodes_used:?}"
    );
    // Citizens around the centre, each on the node owning its own region, each checked
    // against brute force over every officer of the cluster.
    let citizens = points(centre, 4_000.0, 6, 11);
    let mut citizen_nodes = std::collections::BTreeSet::new();
    let mut held_citizens = Vec::new();
    for (i, at) in citizens.iter().enumerate() {
        let (mut cit, grant) = c
            .connect(i % 3, Role::Citizen, &format!("c{i}"), at.lat, at.lon)
            .await;
        citizen_nodes.insert(grant["node"].as_str().unwrap().to_owned());
        cit.recv_type("nearby").await;
        cit.send(json!({"type":"watch","radius_m":10000,"limit":20}))
            .await;
        cit.send(json!({"type":"location","lat":at.lat,"lon":at.lon}))
            .await;
        let want = brute(&officers, *at, 10_000.0, 20);
        let got = loop {
            let n = cit.recv_type("nearby").await;
            if n["radius_m"] == 10000 || n["radius_m"] == 10000.0 {
                break n;
            }
        };
        assert_eq!(ids(&got), want, "citizen {i} at {at:?} on {grant}");
        // The remote officers' distances are the owners' haversine, exactly.
        for o in got["officers"].as_array().unwrap() {
            let (_, p) = officers
                .iter()
                .find(|(id, _)| id == o["officer_id"].as_str().unwrap())
                .unwrap();
            let d = o["distance_m"].as_f64().unwrap();
            assert!((d - haversine_m(*at, *p)).abs() < 0.01, "{o}");
        }
        held_citizens.push(cit);
    }
    assert!(
        citizen_nodes.len() >= 2,
        "citizens all on one node: {citizen_nodes:?}"
    );

    // The admin map is cluster-wide from any node: every officer once, citizens summed.
    let admin = c.token(Role::Admin, "admin");
    let mut want: Vec<String> = officers.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    for i in 0..3 {
        let (status, b) = c.get(i, "/admin/v1/officers", Some(&admin)).await;
        assert_eq!(status, 200, "{b}");
        let mut got: Vec<String> = b["officers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["officer_id"].as_str().unwrap().to_owned())
            .collect();
        got.sort();
        assert_eq!(got, want, "officers as node {i} sees them");
        let (_, z) = c.get(i, "/admin/v1/citizens/zips", Some(&admin)).await;
        let total: u64 = z["zips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| z["citizens"].as_u64().unwrap())
            .sum();
        assert_eq!(total, citizens.len() as u64, "{z}");
    }
    let (_, cut) = c.get(1, "/admin/v1/officers?limit=5", Some(&admin)).await;
    assert_eq!(cut["officers"].as_array().unwrap().len(), 5, "{cut}");
    assert_eq!(cut["truncated"], true);
    let mut feed = LiveWatch::open(&c.nodes[2].base, &admin).await.unwrap();
    feed.until("the live map holds every officer of the cluster", |w| {
        let mut ids: Vec<&String> = w.officers.keys().collect();
        ids.sort();
        ids == want.iter().collect::<Vec<_>>()
    })
    .await;
}

#[tokio::test]
async fn a_killed_node_loses_its_regions_to_the_survivors_within_the_lease() {
    let mut c = TestCluster::start(3).await;
    // An officer on the node that will die, a citizen on a survivor nearby.
    let (lat, lon) = (40.7506, -73.9927);
    let victim_id = c.owner(0, lat, lon).await;
    let victim = c.nodes.iter().position(|n| n.id == victim_id).unwrap();
    let survivor = (victim + 1) % 3;
    let (mut officer, _) = c.connect(survivor, Role::Officer, "o1", lat, lon).await;
    officer
        .send(json!({"type":"available","window_s":900}))
        .await;
    let window_end = officer.recv_type("availability").await["expires_at"].clone();

    c.nodes[victim].signal("-KILL");
    let killed = Instant::now();
    let dead = c.nodes.remove(victim);
    drop(dead);
    // The survivors own everything again, within the lease TTL plus 2 s.
    let deadline = Duration::from_secs(LEASE_TTL_S + 2);
    c.settled().await;
    let took = killed.elapsed();
    assert!(
        took <= deadline + Duration::from_secs(1),
        "re-owned after {took:?} (lease {LEASE_TTL_S} s + 2 s)"
    );
    let new_owner = c.owner(0, lat, lon).await;
    assert_ne!(new_owner, victim_id);
    // The officer's phone reconnects through any orchestrator: its window survived the
    // node (welcome says so, with the same end) and it is visible without `available`.
    let (officer, grant) = c.connect(0, Role::Officer, "o1", lat, lon).await;
    assert_eq!(grant["node"], new_owner.as_str());
    assert_eq!(officer.welcome["available"], true, "{}", officer.welcome);
    assert_eq!(
        officer.welcome["expires_at"], window_end,
        "{}",
        officer.welcome
    );
    let (mut citizen, _) = c.connect(1, Role::Citizen, "c1", lat + 0.001, lon).await;
    let n = citizen.recv_type("nearby").await;
    assert_eq!(ids(&n), vec!["o1".to_owned()], "{n}");
}

#[test]
fn a_cluster_node_refuses_sqlite_with_exit_2() {
    let dir = std::env::temp_dir().join(format!("heyblue-cluster-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = crate::helpers::serve_refused(
        &dir,
        &[
            "--bind",
            "127.0.0.1:0",
            "--cluster-url",
            "nats://127.0.0.1:4222",
            "--node-id",
            "n1",
            "--advertise-url",
            "http://127.0.0.1:0",
        ],
        &[],
    );
    assert!(
        err.contains("PostgreSQL") && err.contains("SQLite"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// NATS that never answers (a socket that accepts nothing): the node serves HTTP, keeps
/// trying, and its orchestrator answers 503 instead of placing sessions it cannot place.
#[tokio::test]
async fn a_node_without_nats_keeps_trying_and_refuses_sessions_with_503() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let dir = std::env::temp_dir().join(format!("heyblue-cluster-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = postgres_database().await;
    let (child, base) = serve_process(
        &dir,
        &[
            "--database-url",
            &db,
            "--cluster-url",
            &url,
            "--node-id",
            "n1",
            "--advertise-url",
            "http://127.0.0.1:0",
        ],
        &[],
    )
    .await;
    let node = Node {
        id: "n1".into(),
        base,
        dir,
        child,
    };
    let auth = Auth::new(
        heyblue::config::Settings::defaults()
            .auth
            .jwt_secret
            .expose(),
    );
    let token = auth.mint(Role::Citizen, "c1", None, Duration::from_secs(60));
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1/citizens/session?lat=40.75&lon=-73.99",
            node.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    let resp = reqwest::Client::new()
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cluster"),
        "{body}"
    );
    // It says why, and keeps trying.
    let log = node.dir.join("stderr.log");
    eventually("the node logs why it cannot join", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("cannot join yet").then_some(())
    })
    .await;
    drop(silent);
}

/// Reads `nearby` frames until one satisfies `ok` (each frame must come within the
/// client's wait; at most 50 frames).
async fn until_nearby(c: &mut Client, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..50 {
        let n = c.recv_type("nearby").await;
        if ok(&n) {
            return n;
        }
    }
    panic!("no nearby frame with {what}");
}

/// Two points within `max_m` of each other whose regions have different owners.
async fn across_a_border(c: &TestCluster, max_m: f64) -> (LatLon, LatLon) {
    let centre = LatLon::new(40.7163, -74.0200).unwrap();
    let candidates = points(centre, 5_000.0, 24, 3);
    let mut owners = Vec::new();
    for p in &candidates {
        owners.push(c.owner(0, p.lat, p.lon).await);
    }
    for (i, a) in candidates.iter().enumerate() {
        for (j, b) in candidates.iter().enumerate() {
            if owners[i] != owners[j] && haversine_m(*a, *b) <= max_m {
                return (*a, *b);
            }
        }
    }
    panic!("no border within {max_m} m around {centre:?}: {owners:?}");
}

/// Officer `o1` (available) and citizen `c1` (watching 5 km) on different nodes, within
/// 3 km of each other across a border, once the citizen sees the officer; and where the
/// officer is.
async fn pair_across_a_border(c: &TestCluster) -> (Client, Client, LatLon) {
    let (at_officer, at_citizen) = across_a_border(c, 3_000.0).await;
    let (officer, og) = c.officer(0, "o1", at_officer.lat, at_officer.lon).await;
    let (mut citizen, cg) = c
        .connect(1, Role::Citizen, "c1", at_citizen.lat, at_citizen.lon)
        .await;
    assert_ne!(og["node"], cg["node"], "{og} {cg}");
    citizen
        .send(json!({"type":"watch","radius_m":5000,"limit":5}))
        .await;
    until_nearby(&mut citizen, "the officer across nodes", |n| {
        ids(n) == ["o1"]
    })
    .await;
    (officer, citizen, at_officer)
}

#[tokio::test]
async fn pushes_cross_nodes_when_an_officer_moves_or_leaves() {
    let c = TestCluster::start(3).await;
    let (mut officer, mut citizen, at_officer) = pair_across_a_border(&c).await;

    // The officer moves (staying in its region): the citizen is pushed the new position
    // without sending anything.
    let moved = LatLon::new(at_officer.lat + 0.0005, at_officer.lon).unwrap();
    officer
        .send(json!({"type":"location","lat":moved.lat,"lon":moved.lon}))
        .await;
    until_nearby(&mut citizen, "a push with the new position", |n| {
        n["officers"][0]["lat"].as_f64() == Some(moved.lat)
    })
    .await;

    // The officer goes unavailable: the citizen is pushed an answer without it.
    officer.send(json!({"type":"unavailable"})).await;
    until_nearby(&mut citizen, "a push without the officer", |n| {
        ids(n).is_empty()
    })
    .await;
}

/// An officer walks into a region owned by another node: `handoff` with a ticket there,
/// the phone connects and resumes its window, the old socket closes with 4003, and a
/// citizen near the border sees the officer throughout (at the walk's every step its
/// answer holds the officer, at most after the push that follows the reconnect).
#[tokio::test]
async fn an_officer_walking_across_a_border_is_handed_off_and_stays_visible() {
    let c = TestCluster::start(3).await;
    let (from, to) = across_a_border(&c, 3_000.0).await;
    let (mut officer, og) = c.officer(0, "o1", from.lat, from.lon).await;
    let mid = LatLon::new((from.lat + to.lat) / 2.0, (from.lon + to.lon) / 2.0).unwrap();
    let (mut citizen, _) = c.connect(1, Role::Citizen, "c1", mid.lat, mid.lon).await;
    citizen
        .send(json!({"type":"watch","radius_m":5000,"limit":5}))
        .await;
    until_nearby(&mut citizen, "the officer before the walk", |n| {
        ids(n) == ["o1"]
    })
    .await;

    officer
        .send(json!({"type":"location","lat":to.lat,"lon":to.lon}))
        .await;
    let h = officer.recv_type("handoff").await;
    let target = c.owner(0, to.lat, to.lon).await;
    assert_eq!(h["node"], target.as_str(), "{h}");
    assert_ne!(og["node"], h["node"]);
    let new = Client::open_url(h["ws_url"].as_str().unwrap()).await;
    assert_eq!(new.welcome["available"], true, "{}", new.welcome);
    // The old socket is closed with 4003 once the phone is there.
    let (_, code) = officer.closed().await;
    assert_eq!(code, Some(4003));
    // The citizen's answers hold the officer at its new position.
    citizen
        .send(json!({"type":"location","lat":mid.lat,"lon":mid.lon}))
        .await;
    until_nearby(&mut citizen, "the officer after the handoff", |n| {
        ids(n) == ["o1"] && n["officers"][0]["lat"].as_f64() == Some(to.lat)
    })
    .await;
    drop(new);
}

/// A citizen on one node asks an officer on another: the officer is offered the request,
/// accepts, both sides get `connection_established` with their points, and the store has
/// the connection once; a citizen who disconnects cancels its request across nodes.
#[tokio::test]
async fn a_connection_across_nodes_is_recorded_once_and_cancels_cross_too() {
    let c = TestCluster::start(3).await;
    let (mut officer, mut citizen, _) = pair_across_a_border(&c).await;

    let pending = citizen.request("o1", "virtual").await;
    assert_eq!(pending["type"], "connection_pending", "{pending}");
    let asked = officer.recv_type("connection_requested").await;
    assert_eq!(asked["citizen"]["citizen_id"], "c1", "{asked}");
    let id = asked["request_id"].as_str().unwrap().to_owned();
    assert_eq!(pending["request_id"], id.as_str());
    officer
        .send(json!({"type":"respond","request_id":id,"accept":true}))
        .await;
    let o = officer.recv_type("connection_established").await;
    assert_eq!(o["points_awarded"], 10, "{o}");
    let ce = citizen.recv_type("connection_established").await;
    assert_eq!(
        (ce["points_awarded"].as_i64(), ce["balance"].as_i64()),
        (Some(10), Some(10)),
        "{ce}"
    );
    assert_eq!(ce["connection_id"], o["connection_id"]);
    // Recorded once: the citizen's history, read from any node, has one connection.
    let token = c.token(Role::Citizen, "c1");
    for i in 0..3 {
        let (status, h) = c.get(i, "/v1/me/connections", Some(&token)).await;
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["connections"].as_array().map(Vec::len), Some(1), "{h}");
    }

    // The profile projection, fed from the events stream by whichever node consumed each
    // event, counts the connection once.
    eventually("the projection counts the connection", || async {
        let (_, me) = c.get(2, "/v1/me", Some(&token)).await;
        (me["connections"] == 1 && me["points"]["earned"] == 10).then_some(())
    })
    .await;
    // Both earn their first trophy once, folded from the stream, each told on its own node
    // whichever node published the award.
    for s in [&mut officer, &mut citizen] {
        let t = s.recv_type("trophy_awarded").await;
        assert_eq!(t["trophy_id"], "first_connection", "{t}");
    }
    let (_, me) = c.get(1, "/v1/me", Some(&token)).await;
    assert_eq!(me["trophies"].as_array().map(Vec::len), Some(1), "{me}");

    // A second request; the citizen disconnects: the officer hears it was cancelled.
    let pending = citizen.request("o1", "virtual").await;
    assert_eq!(pending["type"], "connection_pending", "{pending}");
    officer.recv_type("connection_requested").await;
    drop(citizen);
    let r = officer.recv_type("connection_response").await;
    assert_eq!(r["status"], "cancelled", "{r}");
}

/// A node frozen (SIGSTOP) past its lease loses its regions to the others; resumed
/// (SIGCONT), it finds its lease lapsed, serves nothing it lost (its sessions are closed
/// with 1012) and rejoins as a fresh member, with every region served once.
#[tokio::test]
async fn a_frozen_node_fences_itself_when_it_wakes_and_rejoins() {
    let mut c = TestCluster::start(3).await;
    let (lat, lon) = (40.7506, -73.9927);
    let frozen_id = c.owner(0, lat, lon).await;
    let frozen = c.nodes.iter().position(|n| n.id == frozen_id).unwrap();
    let (mut citizen, grant) = c
        .connect((frozen + 1) % 3, Role::Citizen, "c1", lat, lon)
        .await;
    assert_eq!(grant["node"], frozen_id.as_str());
    citizen.recv_type("nearby").await;

    c.nodes[frozen].signal("-STOP");
    let node = c.nodes.remove(frozen);
    // The others own every region without it.
    c.settled().await;
    let new_owner = c.owner(0, lat, lon).await;
    assert_ne!(new_owner, frozen_id);
    let (mut officer, og) = c.officer(0, "o1", lat, lon).await;
    assert_eq!(og["node"], new_owner.as_str());

    node.signal("-CONT");
    // Awake, its lease is stale: it closes its sessions with 1012 rather than answer for
    // regions that are not its own any more.
    let (_, code) = citizen.closed().await;
    assert_eq!(code, Some(1012));
    // It rejoins as a fresh member; every region is served once again. The region goes
    // back to it (placement depends on the id), so the officer is handed off there.
    c.nodes.insert(frozen, node);
    c.settled().await;
    let h = officer.recv_type("handoff").await;
    assert_eq!(h["node"], frozen_id.as_str(), "{h}");
    let moved = Client::open_url(h["ws_url"].as_str().unwrap()).await;
    assert_eq!(moved.welcome["available"], true, "{}", moved.welcome);
    // A citizen placed through the rejoined node sees the officer.
    let (mut again, _) = c
        .connect(frozen, Role::Citizen, "c2", lat + 0.001, lon)
        .await;
    let n = again.recv_type("nearby").await;
    assert_eq!(ids(&n), vec!["o1".to_owned()], "{n}");
}

/// SIGTERM: the node gives its regions to the others at once (not after the lease), its
/// officer is handed off and resumes its window there, and it exits 0 within the grace
/// period and a few seconds.
#[tokio::test]
async fn a_node_stopped_with_sigterm_hands_its_sessions_over_and_exits_0() {
    let mut c = TestCluster::start(3).await;
    let (lat, lon) = (40.7506, -73.9927);
    let leaving_id = c.owner(0, lat, lon).await;
    let leaving = c.nodes.iter().position(|n| n.id == leaving_id).unwrap();
    let (mut officer, _) = c.officer((leaving + 1) % 3, "o1", lat, lon).await;

    c.nodes[leaving].signal("-TERM");
    let asked = Instant::now();
    let h = officer.recv_type("handoff").await;
    assert_ne!(h["node"], leaving_id.as_str(), "{h}");
    let moved = Client::open_url(h["ws_url"].as_str().unwrap()).await;
    assert_eq!(moved.welcome["available"], true, "{}", moved.welcome);
    let (_, code) = officer.closed().await;
    assert_eq!(code, Some(4003));
    let mut node = c.nodes.remove(leaving);
    let status = eventually("the node exits", || {
        let exited = node.child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert_eq!(status.code(), Some(0));
    // Grace (1 s in these tests) and a few seconds.
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "{:?}",
        asked.elapsed()
    );
    c.settled().await;
    let (mut citizen, _) = c.connect(0, Role::Citizen, "c1", lat + 0.001, lon).await;
    let n = citizen.recv_type("nearby").await;
    assert_eq!(ids(&n), vec!["o1".to_owned()], "{n}");
}

/// Partner webhooks in a cluster: every node polls for deliveries due and the store's lease
/// lets one attempt each, so a receiver slower than many polls of every node gets each
/// event once, in order, whichever node folded the event and whichever attempted it.
#[tokio::test]
async fn every_node_delivers_webhooks_and_each_event_reaches_the_receiver_once() {
    use crate::webhooks::{Receiver, SECRET};
    let c = TestCluster::start_with(
        3,
        &[
            ("HEYBLUE__WEBHOOKS__ALLOW_PRIVATE", "true"),
            ("HEYBLUE__WEBHOOKS__POLL_INTERVAL_MS", "20"),
            ("HEYBLUE__POINTS__PAIR_COOLDOWN_S", "0"),
        ],
    )
    .await;
    let rx = Receiver::start_slow(&[], Duration::from_millis(250)).await;
    let admin = c.token(Role::Admin, "ops");
    let (s, b) = c
        .send(
            2,
            reqwest::Method::POST,
            "/admin/v1/webhooks",
            Some(&admin),
            Some(json!({"url": rx.url, "events": ["connection.shared", "trophy.awarded"], "secret": SECRET})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let hook = b["webhook_id"].as_str().unwrap().to_owned();
    for (node, role, who) in [(0, Role::Officer, "o1"), (1, Role::Citizen, "c1")] {
        let (s, me) = c
            .send(
                node,
                reqwest::Method::PATCH,
                "/v1/me",
                Some(&c.token(role, who)),
                Some(json!({"share_connections": true})),
            )
            .await;
        assert_eq!(s, 200, "{me}");
    }

    // Four connections across nodes: four `connection.shared`, and each side's first
    // trophy.
    let (mut officer, mut citizen, _) = pair_across_a_border(&c).await;
    const CONNECTIONS: usize = 4;
    for _ in 0..CONNECTIONS {
        crate::helpers::ask_and_accept(&mut officer, &mut citizen, "o1", "virtual").await;
        citizen.recv_type("connection_established").await;
    }
    let path = format!("/admin/v1/webhooks/{hook}/deliveries");
    let deliveries = eventually("every delivery made", || async {
        let (_, b) = c.get(0, &path, Some(&admin)).await;
        let ds = b["deliveries"].as_array()?.clone();
        (ds.len() == CONNECTIONS + 2 && ds.iter().all(|d| d["status"] == "delivered")).then_some(ds)
    })
    .await;
    for d in &deliveries {
        assert_eq!(d["attempts"], 1, "one attempt each: {d}");
    }
    // The receiver saw each event once, oldest first (the listing is newest first).
    let seen: Vec<String> = rx
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.event_id.clone())
        .collect();
    let queued: Vec<String> = deliveries
        .iter()
        .rev()
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, queued);
    let shared = rx
        .distinct()
        .iter()
        .filter(|s| s.body["type"] == "connection.shared")
        .count();
    assert_eq!(shared, CONNECTIONS);
    let mut attempts = 0.0;
    for i in 0..3 {
        attempts += c.metric(i, "webhook_attempts_total").await;
    }
    assert_eq!(
        attempts,
        (CONNECTIONS + 2) as f64,
        "attempts over all nodes"
    );
}
