//! The dashboard in a real browser: headless Chromium (the test command installs it; this
//! test fails without it, it does not skip), driven over the DevTools protocol on a
//! WebSocket — the browser picks its own port (`--remote-debugging-port=0`) and says which.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use heyblue::protocol::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// A headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    child: Child,
    dir: std::path::PathBuf,
    ws: Ws,
    next: u64,
    session: String,
    /// Every URL the page requested.
    requests: Vec<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Browser {
    async fn launch() -> Self {
        let bin = std::env::var("HEYBLUE_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let dir = std::env::temp_dir().join(format!("heyblue-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1280,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin} must be installed (scripts/test installs Chromium): {e}")
            });
        let stderr = child.stderr.take().unwrap();
        let endpoint = tokio::task::spawn_blocking(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.ok()?;
                if let Some(at) = line.find("ws://") {
                    return Some(line[at..].trim().to_owned());
                }
            }
            None
        })
        .await
        .unwrap()
        .expect("Chromium prints its DevTools endpoint");
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .expect("DevTools connects");
        let mut b = Self {
            child,
            dir,
            ws,
            next: 0,
            session: String::new(),
            requests: Vec::new(),
        };
        let target = b
            .call("Target.createTarget", json!({"url":"about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Network.enable", json!({})).await;
        b.call("Page.enable", json!({})).await;
        b
    }

    /// A DevTools command (on the page once attached); its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools open")
                .expect("a frame");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["method"] == "Network.requestWillBeSent" {
                let url = v["params"]["request"]["url"].as_str().unwrap_or("");
                self.requests.push(url.to_owned());
            }
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy (10 s of real time at most) and returns it.
    async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.eval(expr).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if Instant::now() >= deadline {
                let seen = self
                    .eval(
                        "JSON.stringify({errors: window.heyblueErrors, shown: \
                         document.querySelector('#signin-error')?.textContent})",
                    )
                    .await;
                panic!("not within 10 s: {what} ({expr}); page: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format":"png"}))
            .await;
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().unwrap().as_bytes())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// The ids of the officers on the map, whether as markers or counted in groups.
const MAP_OFFICERS: &str = "(() => { \
    const ids = [...document.querySelectorAll('.officer-marker[data-officer-id]')] \
      .map(e => e.dataset.officerId).sort(); \
    const grouped = [...document.querySelectorAll('.officer-cluster[data-count]')] \
      .reduce((n, e) => n + Number(e.dataset.count), 0); \
    return JSON.stringify({ids, grouped}); })()";

#[tokio::test]
async fn the_dashboard_shows_the_live_picture_in_a_real_browser() {
    let app = spawn_app().await;
    // Officers far apart (one marker each at the first view), and a citizen.
    let mut nyc = app.officer("o-nyc", 40.7506, -73.9972).await;
    let mut la = app.officer("o-la", 34.0522, -118.2437).await;
    let _chi = app.officer("o-chi", 41.8781, -87.6298).await;
    let _c = app.citizen("c1", 40.7510, -73.9972).await;

    let mut b = Browser::launch().await;
    b.open(&format!("{}/admin/", app.base)).await;

    // A token of another role: the server's error, and nothing else.
    let citizen = app.token(Role::Citizen, "c1");
    b.eval(&format!(
        "document.querySelector('input[name=token]').value = '{citizen}'; \
         document.querySelector('#signin').requestSubmit(); true"
    ))
    .await;
    let err = b
        .wait_for(
            "the refusal is shown",
            "document.querySelector('#signin-error').textContent",
        )
        .await;
    assert!(err.as_str().unwrap().contains("403"), "{err}");
    assert_eq!(
        b.eval("document.querySelector('#app').hidden").await,
        json!(true)
    );

    // An admin token: the live picture.
    let admin = app.token(Role::Admin, "admin");
    b.eval(&format!(
        "document.querySelector('input[name=token]').value = '{admin}'; \
         document.querySelector('#signin').requestSubmit(); true"
    ))
    .await;
    b.wait_for("data-ready", "document.body.dataset.ready === '1'")
        .await;
    let (_, stats) = app.get("/admin/v1/stats", Some(&admin)).await;
    for field in [
        "officers_available",
        "officers_online",
        "citizens_online",
        "pending_requests",
    ] {
        let id = field.replace('_', "-");
        let shown = b
            .wait_for(
                field,
                &format!(
                    "document.getElementById('{id}').textContent === '{}' && '{}'",
                    stats[field], stats[field]
                ),
            )
            .await;
        assert_eq!(shown, json!(stats[field].to_string()), "{field}");
    }
    let on_map = b
        .wait_for(
            "three officers on the map",
            &format!("(() => {{ const m = JSON.parse({MAP_OFFICERS}); return m.ids.length + m.grouped === 3 && JSON.stringify(m); }})()"),
        )
        .await;
    let m: Value = serde_json::from_str(on_map.as_str().unwrap()).unwrap();
    assert_eq!(m["ids"], json!(["o-chi", "o-la", "o-nyc"]), "{m}");
    // The citizen as a count in its zip, not as a position.
    let counted = b
        .wait_for(
            "the citizen counted in its zip",
            "document.querySelector('.citizen-count[data-zip=\"10001\"]')?.dataset.count",
        )
        .await;
    assert_eq!(counted, json!("1"));
    b.screenshot("admin-overview.png").await;

    // An officer goes unavailable: its marker goes.
    nyc.send(json!({"type":"unavailable"})).await;
    nyc.recv_type("availability").await;
    b.wait_for(
        "the officer's marker is gone",
        &format!("JSON.parse({MAP_OFFICERS}).ids.join() === 'o-chi,o-la'"),
    )
    .await;

    // An officer moves: its marker follows, from the live feed.
    la.send(json!({"type":"location","lat":34.0610,"lon":-118.2500}))
        .await;
    b.wait_for(
        "the page hears of the move",
        "officerPosition('o-la')?.[0] === 34.061",
    )
    .await;
    // A kilometre is not a pixel at the first view: the marker is redrawn there when the
    // view changes.
    b.eval("map.setView([34.06, -118.25], 14, {animate: false}); true")
        .await;
    b.wait_for(
        "the moved officer's marker follows",
        "markers.get('o-la').getLatLng().lat === 34.061",
    )
    .await;
    b.eval("map.fitBounds([[24.4, -125], [49.4, -66.9]], {animate: false}); true")
        .await;

    // Region view: the LA officer in its zip.
    let (_, z) = app
        .get("/v1/zips/lookup?lat=34.0610&lon=-118.2500", None)
        .await;
    let zip = z["zip"].as_str().unwrap();
    b.eval(&format!(
        "document.querySelector('input[name=zip]').value = '{zip}'; \
         document.querySelector('#region-form').requestSubmit(); true"
    ))
    .await;
    b.wait_for(
        "the region lists its officer",
        "document.querySelector('#region').textContent.includes('o-la')",
    )
    .await;
    b.screenshot("admin-region.png").await;

    // Import: a file with one good row and one bad one; the page lists the rejected row.
    let csv = b.dir.join("officers.csv");
    std::fs::write(
        &csv,
        "officer_id,display_name,badge,precinct,email\nof-1,Ana,,,\nof-2,Bob,,,not-an-email\n",
    )
    .unwrap();
    let doc = b.call("DOM.getDocument", json!({})).await;
    let input = b
        .call(
            "DOM.querySelector",
            json!({"nodeId": doc["root"]["nodeId"], "selector": "#import-file"}),
        )
        .await;
    b.call(
        "DOM.setFileInputFiles",
        json!({"files": [csv.display().to_string()], "nodeId": input["nodeId"]}),
    )
    .await;
    b.eval(
        "document.querySelector('select[name=kind]').value = 'officers'; \
         document.querySelector('#import-form').requestSubmit(); true",
    )
    .await;
    let rejected = b
        .wait_for(
            "the import's rejected rows",
            "document.querySelector('#import-rejected')?.textContent",
        )
        .await;
    assert!(rejected.as_str().unwrap().contains("email"), "{rejected}");
    assert_eq!(
        b.eval("document.querySelector('#import-accepted').textContent")
            .await,
        json!("1")
    );
    assert_eq!(
        b.eval("document.querySelector('#import-rejected-count').textContent")
            .await,
        json!("1")
    );

    // Report: a table, and the CSV saved (downloads denied: the link is what is checked).
    b.call("Page.setDownloadBehavior", json!({"behavior": "deny"}))
        .await;
    b.eval("document.querySelector('#report-form').requestSubmit(); true")
        .await;
    b.wait_for(
        "the report table",
        "document.querySelector('#report-table') !== null",
    )
    .await;
    b.eval("document.querySelector('#report-csv').click(); true")
        .await;
    let name = b
        .wait_for(
            "the CSV download",
            "document.querySelector('#report-download')?.download",
        )
        .await;
    assert_eq!(name, json!("connections.csv"));
    b.screenshot("admin-imports-reports.png").await;

    // Webhooks: a private receiver is refused with the server's words; a public one is
    // listed (its secret never shown), its deliveries open, and it is removed (confirmed).
    let add = |url: &str| {
        format!(
            "document.querySelector('#webhook-url').value = '{url}'; \
             document.querySelector('#webhook-secret').value = 'a-partner-secret-0123'; \
             document.querySelector('#webhook-form').requestSubmit(); true"
        )
    };
    b.eval(&add("http://127.0.0.1:9/hook")).await;
    let err = b
        .wait_for(
            "a private receiver refused",
            "document.querySelector('#webhook-error').textContent",
        )
        .await;
    assert!(err.as_str().unwrap().contains("invalid_url"), "{err}");
    b.eval(&add("https://93.184.215.14/hook")).await;
    let id = b
        .wait_for(
            "the webhook listed",
            "document.querySelector('#webhooks tr[data-webhook-id]')?.dataset.webhookId",
        )
        .await;
    let (_, listed) = app.get("/admin/v1/webhooks", Some(&admin)).await;
    assert_eq!(listed["webhooks"][0]["webhook_id"], id);
    assert_eq!(
        listed["webhooks"][0]["events"],
        json!(["connection.shared", "trophy.awarded"])
    );
    let html = b
        .eval("document.querySelector('#webhooks').outerHTML")
        .await;
    assert!(
        !html.as_str().unwrap().contains("a-partner-secret"),
        "{html}"
    );
    b.eval("document.querySelector('button[data-deliveries]').click(); true")
        .await;
    b.wait_for(
        "the deliveries table",
        "document.querySelector('#deliveries-table') !== null",
    )
    .await;
    b.eval("document.querySelector('button[data-requeue]').click(); true")
        .await;
    b.wait_for(
        "the requeue answered (nothing was given up)",
        &format!(
            "document.querySelector('#webhook-note').textContent === '0 given-up deliveries of {} requeued'",
            id.as_str().unwrap()
        ),
    )
    .await;
    b.eval(
        "window.confirm = () => true; document.querySelector('button[data-remove]').click(); true",
    )
    .await;
    b.wait_for(
        "the webhook removed",
        "document.querySelector('#webhooks tr[data-webhook-id]') === null",
    )
    .await;
    let (_, listed) = app.get("/admin/v1/webhooks", Some(&admin)).await;
    assert_eq!(listed["webhooks"], json!([]));

    // Nothing was requested from another host.
    let foreign: Vec<&String> = b
        .requests
        .iter()
        .filter(|u| !u.starts_with(&app.base) && !u.starts_with("data:") && *u != "about:blank")
        .collect();
    assert!(foreign.is_empty(), "requests to other hosts: {foreign:?}");
    // The map moved from one live feed, never by polling.
    let count = |needle: &str| b.requests.iter().filter(|u| u.contains(needle)).count();
    assert_eq!(count("/admin/v1/live"), 1, "{:?}", b.requests);
    assert_eq!(
        (count("/admin/v1/officers"), count("/metrics")),
        (0, 0),
        "{:?}",
        b.requests
    );
    assert!(count("/admin/v1/stats") <= 2, "{:?}", b.requests);
    assert!(
        b.requests.iter().any(|u| u.contains("format=csv")),
        "{:?}",
        b.requests
    );
}

impl Browser {
    /// Goes to `url` and waits for the page to load.
    async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for("the page loads", "document.readyState === 'complete'")
            .await;
    }

    /// Presses a key on the focused element.
    async fn key(&mut self, key: &str, code: u32) {
        for kind in ["keyDown", "keyUp"] {
            let mut ev =
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code});
            if kind == "keyDown" && key == "Enter" {
                // The character an Enter types is what submits a form.
                ev["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", ev).await;
        }
    }

    /// Whether the page scrolls sideways at the current size.
    async fn overflows(&mut self) -> bool {
        self.eval("document.documentElement.scrollWidth > window.innerWidth")
            .await
            == json!(true)
    }
}

#[tokio::test]
async fn the_dashboard_works_from_the_keyboard_and_on_a_tablet() {
    let app = spawn_app().await;
    let _o = app.officer("o-la", 34.0522, -118.2437).await;
    let mut b = Browser::launch().await;
    b.open(&format!("{}/admin/", app.base)).await;
    // The first Tab reaches the token; Enter signs in.
    b.key("Tab", 9).await;
    assert_eq!(b.eval("document.activeElement.name").await, json!("token"));
    let admin = app.token(Role::Admin, "admin");
    b.call("Input.insertText", json!({"text": admin})).await;
    b.key("Enter", 13).await;
    b.wait_for("data-ready", "document.body.dataset.ready === '1'")
        .await;
    // Every control has a label.
    let unlabelled = b
        .eval(
            "[...document.querySelectorAll('input, select, button')]                .filter(e => !e.labels?.length && !e.getAttribute('aria-label') && !e.textContent.trim())                .map(e => e.outerHTML)",
        )
        .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");
    // A zip typed and Enter: the region shows.
    let (_, z) = app
        .get("/v1/zips/lookup?lat=34.0522&lon=-118.2437", None)
        .await;
    b.eval("document.querySelector('input[name=zip]').focus(); true")
        .await;
    b.call("Input.insertText", json!({"text": z["zip"]})).await;
    b.key("Enter", 13).await;
    b.wait_for(
        "the region from the keyboard",
        "document.querySelector('#region').textContent.includes('o-la')",
    )
    .await;
    assert!(!b.overflows().await, "no sideways scrolling at 1280x800");
    // A tablet, portrait and landscape: one column, nothing wider than the screen.
    for (w, h, shot) in [
        (768, 1024, "admin-tablet-portrait.png"),
        (1024, 768, "admin-tablet-landscape.png"),
    ] {
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": w, "height": h, "deviceScaleFactor": 1, "mobile": true}),
        )
        .await;
        let seen = b
            .wait_for(
                "the page takes the new width",
                &format!(
                    "window.innerWidth === {w} || `${{window.innerWidth}}x${{window.innerHeight}}`"
                ),
            )
            .await;
        assert_eq!(seen, json!(true), "at {w}x{h}");
        assert!(!b.overflows().await, "no sideways scrolling at {w}x{h}");
        let map_w = b
            .eval("document.querySelector('#map').getBoundingClientRect().width")
            .await;
        assert!(map_w.as_f64().unwrap() > (w as f64) * 0.5, "{map_w}");
        // The charts span the last 15 minutes up to the last sample.
        let span = b
            .eval("charts.sessions.scales.x.max === series.t.at(-1) && charts.sessions.scales.x.max - charts.sessions.scales.x.min")
            .await;
        assert_eq!(span, json!(900), "{span}");
        b.eval("window.scrollTo(0, 0); true").await;
        b.screenshot(shot).await;
    }
}

/// The dashboard against a loaded server, measured (`scripts/dashboard-bench` runs it; it is
/// not part of the test command): `HEYBLUE_BENCH_URL` names the server, whose available
/// officers move at 1 Hz; `HEYBLUE_BENCH_SECONDS` how long updates are watched. Prints one
/// JSON line of figures.
#[tokio::test]
#[ignore = "a measurement, run by scripts/dashboard-bench"]
async fn dashboard_under_load() {
    let base = std::env::var("HEYBLUE_BENCH_URL").expect("HEYBLUE_BENCH_URL");
    let watch_s: u64 = std::env::var("HEYBLUE_BENCH_SECONDS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(30);
    let admin = heyblue::http::auth::Auth::new(
        heyblue::config::Settings::defaults()
            .auth
            .jwt_secret
            .expose(),
    )
    .mint(Role::Admin, "bench", None, Duration::from_secs(3600));
    let mut b = Browser::launch().await;
    b.open(&format!("{base}/admin/")).await;
    // Cold: from the sign-in to the first data drawn.
    b.eval(&format!(
        "window.benchT0 = performance.now(); \
         document.querySelector('input[name=token]').value = '{admin}'; \
         document.querySelector('#signin').requestSubmit(); true"
    ))
    .await;
    b.wait_for("data-ready", "document.body.dataset.ready === '1'")
        .await;
    let cold_ms = b
        .eval("window.heyblueLive.firstDataMs - window.benchT0")
        .await;
    let bytes = b
        .eval(
            "(() => { const e = performance.getEntriesByType('navigation') \
               .concat(performance.getEntriesByType('resource')) \
               .filter(e => !e.name.includes('/admin/v1/')); \
             return {requests: e.length, transferred: e.reduce((n, x) => n + x.transferSize, 0), \
                     decoded: e.reduce((n, x) => n + x.decodedBodySize, 0)}; })()",
        )
        .await;
    // Updates: the cost of applying each delta, frames drawn, long tasks.
    b.eval(
        "window.benchFrames = 0; (function f() { window.benchFrames++; requestAnimationFrame(f); })(); \
         window.benchLong = {n: 0, ms: 0}; \
         new PerformanceObserver(l => { for (const e of l.getEntries()) { benchLong.n++; benchLong.ms += e.duration; } }) \
           .observe({type: 'longtask'}); \
         window.heyblueLive.applyMs = []; window.benchEvents0 = window.heyblueLive.events; \
         window.benchT1 = performance.now(); true",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(watch_s)).await;
    let updates = b
        .eval(
            "(() => { const s = [...heyblueLive.applyMs].sort((a, b) => a - b); \
               const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]; \
               const secs = (performance.now() - benchT1) / 1000; \
               return {markers: markers.size, events: heyblueLive.events - benchEvents0, \
                 apply_ms_p50: q(0.5), apply_ms_p99: q(0.99), apply_ms_max: s[s.length - 1], \
                 fps: benchFrames / secs, long_tasks: benchLong.n, long_task_ms_per_s: benchLong.ms / secs}; })()",
        )
        .await;
    // Warm: a reload with the token kept for the tab, assets from the cache.
    b.call("Page.reload", json!({})).await;
    b.wait_for("data-ready again", "document.body?.dataset.ready === '1'")
        .await;
    let warm_ms = b.eval("window.heyblueLive.firstDataMs").await;
    let errors = b.eval("window.heyblueErrors").await;
    println!(
        "{}",
        json!({"cold_first_data_ms": cold_ms, "reload_first_data_ms": warm_ms,
               "first_load": bytes, "updates": updates, "page_errors": errors})
    );
}
