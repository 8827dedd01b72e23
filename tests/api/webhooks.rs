//! Partner webhooks over real sockets: a receiver in the test (an HTTP server on port 0)
//! that fails, hangs or answers as scripted, checks every signature and dedups by event id.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heyblue::protocol::Role;
use serde_json::{Value, json};

use crate::helpers::*;

const HERE: (f64, f64) = (40.7506, -73.9972);
const NEAR: (f64, f64) = (40.7510, -73.9972);
pub const SECRET: &str = "a-partner-secret-0123";

/// What the receiver answers the next request with.
#[derive(Clone, Copy)]
pub enum Plan {
    Status(u16),
    Hang,
}

/// A request the receiver took: event id header, signature header, body.
#[derive(Clone, Debug)]
pub struct Seen {
    pub event_id: String,
    pub signature: String,
    pub body: Value,
    pub raw: Vec<u8>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub url: String,
    plan: Arc<Mutex<VecDeque<Plan>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// How long every answer takes.
    delay: Duration,
}

impl Receiver {
    /// Starts on port 0; answers 200 once its plan is used up.
    pub async fn start(plan: &[Plan]) -> Self {
        Self::start_slow(plan, Duration::ZERO).await
    }

    /// `start`, each answer taking `delay`.
    pub async fn start_slow(plan: &[Plan], delay: Duration) -> Self {
        let r = Receiver {
            plan: Arc::new(Mutex::new(plan.iter().copied().collect())),
            delay,
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        let next = state.plan.lock().unwrap().pop_front();
                        tokio::time::sleep(state.delay).await;
                        if let Some(Plan::Hang) = next {
                            std::future::pending::<()>().await;
                        }
                        let h = |k: &str| {
                            headers
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        state.seen.lock().unwrap().push(Seen {
                            event_id: h("x-heyblue-event-id"),
                            signature: h("x-heyblue-signature"),
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            raw: body.to_vec(),
                        });
                        let status = match next {
                            Some(Plan::Status(s)) => s,
                            _ => 200,
                        };
                        axum::http::StatusCode::from_u16(status).unwrap()
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, ..r }
    }

    /// Event ids in the order first answered 2xx-or-not, without repeats.
    pub fn distinct(&self) -> Vec<Seen> {
        let mut out: Vec<Seen> = Vec::new();
        for s in self.seen.lock().unwrap().iter() {
            if !out.iter().any(|o| o.event_id == s.event_id) {
                out.push(s.clone());
            }
        }
        out
    }
}

fn fast(s: &mut heyblue::config::Settings) {
    s.webhooks.allow_private = true;
    s.webhooks.backoff_initial_ms = 50;
    s.webhooks.poll_interval_ms = 20;
    s.webhooks.timeout_ms = 2000;
}

async fn subscribe(app: &TestApp, url: &str, events: &[&str]) -> String {
    let admin = app.token(Role::Admin, "ops");
    let (s, b) = app
        .post(
            "/admin/v1/webhooks",
            &admin,
            json!({"url": url, "events": events, "secret": SECRET}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    b["webhook_id"].as_str().unwrap().to_owned()
}

/// Two consenting accounts connect: one `connection.shared`, then two `trophy.awarded`.
async fn shared_connection(app: &TestApp) {
    let mut o = app.officer("o1", NEAR.0, NEAR.1).await;
    let (mut c, _) = app.citizen("c1", HERE.0, HERE.1).await;
    app.consent(Role::Officer, "o1", true).await;
    app.consent(Role::Citizen, "c1", true).await;
    ask_and_accept(&mut o, &mut c, "o1", "in_person").await;
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_each_event_once_in_order_signed() {
    on_both_stores_with(fast, |app| async move {
        let rx = Receiver::start(&[Plan::Status(500), Plan::Status(503)]).await;
        let hook = subscribe(
            &app,
            &rx.url,
            &["connection.shared", "trophy.awarded", "donation.made"],
        )
        .await;
        shared_connection(&app).await;

        let got = eventually("three events delivered", || async {
            let d = rx.distinct();
            (d.len() == 3 && rx.seen.lock().unwrap().len() >= 5).then_some(d)
        })
        .await;
        let types: Vec<&str> = got
            .iter()
            .map(|s| s.body["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["connection.shared", "trophy.awarded", "trophy.awarded"]
        );
        // In order: the failing first event held the later ones back.
        let ids: Vec<i64> = got.iter().map(|s| s.event_id.parse().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        for s in rx.seen.lock().unwrap().iter() {
            assert_eq!(
                s.signature,
                heyblue::webhooks::signature(SECRET, &s.raw),
                "every delivery is signed"
            );
            assert_eq!(s.body["event_id"].as_str(), Some(s.event_id.as_str()));
            let mut all = Vec::new();
            keys(&s.body, &mut all);
            assert!(!all.iter().any(|k| k == "lat" || k == "lon"), "{}", s.body);
        }
        let c = &got[0].body["data"];
        assert_eq!(c["officer"]["account_id"], "o1");
        assert_eq!(c["citizen"]["display_name"], "Name c1");
        assert_eq!(c["city"], "New York, NY");
        assert!(got[0].body["at"].as_str().unwrap().contains('T'));

        // The admin view: the first delivery took three attempts, newest first.
        let admin = app.token(Role::Admin, "ops");
        let (s, b) = app
            .get(
                &format!("/admin/v1/webhooks/{hook}/deliveries"),
                Some(&admin),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let ds = b["deliveries"].as_array().unwrap();
        assert_eq!(ds.len(), 3, "{b}");
        let first = &ds[2];
        assert_eq!(
            (first["status"].as_str(), first["attempts"].as_i64()),
            (Some("delivered"), Some(3)),
            "{b}"
        );
        let statuses: Vec<i64> = first["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status"].as_i64().unwrap())
            .collect();
        assert_eq!(statuses, [200, 503, 500]);
        assert!(
            first["attempt_log"][1]["error"]
                .as_str()
                .unwrap()
                .contains("503")
        );

        // Accounts that did not consent: their connection and trophies queue nothing (the
        // fold queues deliveries in its own transaction, so two publishing rounds — the
        // connection's, then its trophies' — decide it).
        let mut o2 = app.officer("o2", NEAR.0, NEAR.1 + 0.0002).await;
        let (mut c2, _) = app.citizen("c2", HERE.0, HERE.1).await;
        ask_and_accept(&mut o2, &mut c2, "o2", "virtual").await;
        c2.recv_type("trophy_awarded").await;
        let publisher = &app.running.ctx().publisher;
        publisher.publish_pending().await.unwrap();
        publisher.publish_pending().await.unwrap();
        let (_, b) = app
            .get(
                &format!("/admin/v1/webhooks/{hook}/deliveries"),
                Some(&admin),
            )
            .await;
        assert_eq!(b["deliveries"].as_array().unwrap().len(), 3, "{b}");
        app.running.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_delay_another_webhook() {
    let app = spawn_app_with(|s| {
        fast(s);
        s.webhooks.timeout_ms = 60_000;
    })
    .await;
    let stuck = Receiver::start(&[Plan::Hang; 8]).await;
    let fine = Receiver::start(&[]).await;
    subscribe(&app, &stuck.url, &["connection.shared"]).await;
    subscribe(&app, &fine.url, &["connection.shared"]).await;
    shared_connection(&app).await;
    eventually("the other webhook delivered", || async {
        (fine.distinct().len() == 1).then_some(())
    })
    .await;
    assert!(stuck.seen.lock().unwrap().is_empty(), "still hanging");
    app.running.shutdown().await;
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("heyblue-wh-{}", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}/heyblue.db?mode=rwc", dir.display());
    let rx = Receiver::start(&[Plan::Status(500); 1000]).await;
    let with_db = |s: &mut heyblue::config::Settings| {
        fast(s);
        s.database.url = url.clone();
    };
    let app = spawn_app_with(with_db).await;
    let hook = subscribe(&app, &rx.url, &["connection.shared"]).await;
    shared_connection(&app).await;
    eventually("a first attempt failed", || async {
        (!rx.seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    app.running.shutdown().await;

    // The receiver mends while the server is down; the next server delivers.
    rx.plan.lock().unwrap().clear();
    let app = spawn_app_with(with_db).await;
    let admin = app.token(Role::Admin, "ops");
    eventually("delivered after the restart", || async {
        let (_, b) = app
            .get(
                &format!("/admin/v1/webhooks/{hook}/deliveries"),
                Some(&admin),
            )
            .await;
        (b["deliveries"][0]["status"] == "delivered").then_some(())
    })
    .await;
    assert_eq!(rx.distinct().len(), 1);
    app.running.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn webhooks_are_validated_listed_changed_and_removed() {
    on_both_stores_with(|s| s.webhooks.max_webhooks = 2, |app| async move {
    let admin = app.token(Role::Admin, "ops");
    let post = |body: Value| {
        let (app, admin) = (&app, admin.clone());
        async move { app.post("/admin/v1/webhooks", &admin, body).await }
    };
    for (body, code) in [
        (
            json!({"url":"ftp://x.example/h","events":["trophy.awarded"],"secret":SECRET}),
            "invalid_url",
        ),
        (
            json!({"url":"http://127.0.0.1:9/h","events":["trophy.awarded"],"secret":SECRET}),
            "invalid_url",
        ),
        (
            json!({"url":"http://10.1.2.3/h","events":["trophy.awarded"],"secret":SECRET}),
            "invalid_url",
        ),
        (
            json!({"url":"https://93.184.215.14/h","events":["dance"],"secret":SECRET}),
            "invalid_events",
        ),
        (
            json!({"url":"https://93.184.215.14/h","events":[],"secret":SECRET}),
            "invalid_events",
        ),
        (
            json!({"url":"https://93.184.215.14/h","events":["trophy.awarded"],"secret":"short"}),
            "invalid_secret",
        ),
    ] {
        let (s, b) = post(body.clone()).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some(code)),
            "{body} → {b}"
        );
    }
    let ok = json!({"url":"https://93.184.215.14/h","events":["trophy.awarded"],"secret":SECRET});
    let (s, b) = post(ok.clone()).await;
    assert_eq!(s, 201, "{b}");
    let id = b["webhook_id"].as_str().unwrap().to_owned();
    assert!(!b.to_string().contains(SECRET), "the secret is never shown");
    assert_eq!(post(ok.clone()).await.0, 201);
    let (s, b) = post(ok).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("too_many_webhooks"))
    );

    let (_, list) = app.get("/admin/v1/webhooks", Some(&admin)).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 2);
    let (s, b) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/admin/v1/webhooks/{id}"),
            Some(&admin),
            Some((
                "application/json",
                json!({"events":["donation.made","trophy.awarded"]})
                    .to_string()
                    .into_bytes(),
            )),
            &[],
        )
        .await;
    assert_eq!(
        (s, b["events"].clone()),
        (200, json!(["donation.made", "trophy.awarded"])),
        "{b}"
    );
    let (s, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/v1/webhooks/{id}"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(s, 204);
    let (s, b) = app
        .get(&format!("/admin/v1/webhooks/{id}/deliveries"), Some(&admin))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("unknown_webhook"))
    );
    let (s, _) = app
        .get("/admin/v1/webhooks", Some(&app.token(Role::Citizen, "c1")))
        .await;
    assert_eq!(s, 403);
    app.running.shutdown().await;
    })
    .await;
}

/// A delivery given up after `webhooks.max_age_s` is listed `dead`; once the receiver is
/// mended an administrator requeues it, and it is delivered, its attempts counted afresh.
#[tokio::test]
async fn given_up_deliveries_are_requeued_by_an_administrator() {
    let settings = |s: &mut heyblue::config::Settings| {
        fast(s);
        s.webhooks.max_age_s = 1;
    };
    on_both_stores_with(settings, |app| async move {
        let rx = Receiver::start(&[Plan::Status(500); 1000]).await;
        let hook = subscribe(&app, &rx.url, &["connection.shared"]).await;
        shared_connection(&app).await;
        let admin = app.token(Role::Admin, "ops");
        let path = format!("/admin/v1/webhooks/{hook}/deliveries");
        let latest = |status: &'static str| {
            let (app, admin, path) = (&app, admin.clone(), path.clone());
            async move {
                let (_, b) = app.get(&path, Some(&admin)).await;
                let d = &b["deliveries"][0];
                (d["status"] == status).then(|| d.clone())
            }
        };
        let dead = eventually("the delivery is given up", || latest("dead")).await;
        assert!(dead["attempts"].as_i64().unwrap() >= 2, "{dead}");

        rx.plan.lock().unwrap().clear();
        let seen = rx.seen.lock().unwrap().len();
        let requeue = format!("/admin/v1/webhooks/{hook}/requeue");
        let (s, b) = app.post(&requeue, &admin, json!({})).await;
        assert_eq!((s, b["requeued"].as_u64()), (202, Some(1)), "{b}");
        let done = eventually("delivered once requeued", || latest("delivered")).await;
        assert_eq!(done["attempts"], 1, "{done}");
        assert_eq!(rx.seen.lock().unwrap().len(), seen + 1);

        let (s, b) = app.post(&requeue, &admin, json!({})).await;
        assert_eq!(
            (s, b["requeued"].as_u64()),
            (202, Some(0)),
            "nothing left: {b}"
        );
        let (s, b) = app
            .post("/admin/v1/webhooks/wh_nope/requeue", &admin, json!({}))
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (404, Some("unknown_webhook"))
        );
        let citizen = app.token(Role::Citizen, "c1");
        assert_eq!(app.post(&requeue, &citizen, json!({})).await.0, 403);
        app.running.shutdown().await;
    })
    .await;
}
