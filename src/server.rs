//! Starting and stopping a node: binds the listener, wires context, routes and background
//! upkeep, and runs the one shutdown sequence (stop accepting, close sockets with 1001,
//! stop the actors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::actors::session::{SessionMsg, tell};
use crate::config::Settings;
use crate::context::Context;
use crate::geo::ZipTable;
use crate::http::{self, AppState, HttpState};
use crate::store::Store;
use anyhow::Context as _;

/// A node that is accepting sessions.
pub struct Running {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    /// Shared state of the routes (tests reach the context through it).
    pub state: AppState,
    /// The unauthenticated /metrics listener, when `metrics.bind` is set.
    pub metrics_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    publisher: JoinHandle<()>,
    notifier: JoinHandle<()>,
    webhooks: JoinHandle<()>,
}

/// Binds `settings.server.bind` and starts serving.
pub async fn start(settings: Settings, zips: Arc<ZipTable>) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(&settings.server.bind)
        .await
        .with_context(|| format!("binding {}", settings.server.bind))?;
    start_on(listener, settings, zips).await
}

/// Starts serving on a listener the caller bound (tests bind port 0 and hand it over, so
/// no port is ever released and taken again).
pub async fn start_on(
    listener: TcpListener,
    settings: Settings,
    zips: Arc<ZipTable>,
) -> anyhow::Result<Running> {
    http::metrics_handle();
    let addr = listener.local_addr()?;
    let mut settings = settings;
    settings.cluster.advertise_url = advertise_on(&settings.cluster.advertise_url, addr.port());
    let metrics_bind = settings.metrics.bind.clone();
    // Certificates first: a bad file stops the start before anything else is opened.
    let tls = match (
        settings.server.tls_cert.as_str(),
        settings.server.tls_key.as_str(),
    ) {
        ("", "") => None,
        (cert, key) => {
            let certs = http::tls::Certificates::load(cert.as_ref(), key.as_ref())?;
            Some((certs.acceptor()?, certs))
        }
    };
    let store = Store::connect(&settings.database.url)
        .await
        .with_context(|| format!("opening the store at {}", redact(&settings.database.url)))?
        .with_trophy_rules(settings.trophies.rules.clone())
        .with_city_names({
            let zips = zips.clone();
            Arc::new(move |zip: &str| {
                zips.by_code(zip)
                    .map(|z| {
                        let e = zips.get(z);
                        format!("{}, {}", e.city, e.state)
                    })
                    .unwrap_or_default()
            })
        });
    store.migrate().await.context("migrating the store")?;
    let encrypted = store.encrypted().await.unwrap_or(false);
    tracing::info!(backend = ?store.backend(), tls = encrypted, "store ready");
    let ctx = Context::start(settings, zips, store).await?;
    let state = HttpState::new(ctx.clone());
    let app = http::router(state.clone());
    if let Some(c) = &ctx.cluster {
        tokio::spawn(http::cluster::serve_tickets(state.clone(), c.clone()));
        tokio::spawn(crate::actors::relay::serve(ctx.clone(), c.clone()));
    }

    let (stop, stopped) = oneshot::channel::<()>();
    let limits = http::serve::ConnLimits::from_settings(&ctx.settings.limits);
    let acceptor = tls.as_ref().map(|(a, _)| a.clone());
    let server = tokio::spawn(http::serve::serve(
        listener,
        app,
        limits,
        acceptor,
        async move {
            let _ = stopped.await;
        },
    ));
    if let Some((_, certs)) = tls {
        tokio::spawn(reload_on_sighup(certs));
    }

    let mut metrics_addr = None;
    if !metrics_bind.is_empty() {
        let l = TcpListener::bind(&metrics_bind).await?;
        metrics_addr = Some(l.local_addr()?);
        tracing::info!(addr = %l.local_addr()?, "metrics listener (no token)");
        let r = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { http::metrics_handle().render() }),
        );
        tokio::spawn(async move { axum::serve(l, r).await });
    }

    // Subscribed before the publisher runs: no event it publishes is missed.
    let notifier = tokio::spawn(crate::actors::notify::run(
        ctx.clone(),
        ctx.events.subscribe(),
    ));
    let webhooks = tokio::spawn(crate::webhooks::run(
        ctx.store.clone(),
        ctx.settings.webhooks.clone(),
    ));
    let publisher = {
        let every = Duration::from_millis(ctx.settings.events.publish_interval_ms);
        tokio::spawn(ctx.publisher.clone().run(every, ctx.events_wake.clone()))
    };
    let upkeep = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let ttl = Duration::from_secs(state.ctx.settings.rewards.idempotency_ttl_s);
            let mut rounds = 0u64;
            loop {
                tick.tick().await;
                state.tickets.sweep();
                record_process_metrics(&state.ctx);
                http::metrics_handle().run_upkeep();
                rounds += 1;
                // Idempotency answers are kept for their TTL, then forgotten (once a minute).
                if rounds.is_multiple_of(12) {
                    match state.ctx.store.expire_idempotency_keys(ttl).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(n, "expired idempotency keys"),
                        Err(e) => tracing::warn!("expiring idempotency keys: {e}"),
                    }
                }
            }
        })
    };
    tracing::info!(%addr, node = %ctx.settings.server.node_id, "accepting sessions");
    Ok(Running {
        addr,
        state,
        metrics_addr,
        stop,
        server,
        upkeep,
        publisher,
        notifier,
        webhooks,
    })
}

/// Reads the certificate files again on every SIGHUP (new handshakes get them; open
/// connections keep theirs).
async fn reload_on_sighup(certs: Arc<http::tls::Certificates>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP; certificates will not reload: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => {
                metrics::counter!("tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!("SIGHUP: certificates reloaded");
            }
            Err(e) => {
                metrics::counter!("tls_reloads_total", "result" => "failed").increment(1);
                tracing::error!("SIGHUP: certificates not reloaded, the old ones stay: {e:#}");
            }
        }
    }
}

/// An advertised URL whose port is 0 takes the port bound (a node started with
/// `--bind 127.0.0.1:0 --advertise-url http://127.0.0.1:0` advertises where it listens).
fn advertise_on(url: &str, port: u16) -> String {
    let u = url.trim_end_matches('/');
    match u.strip_suffix(":0") {
        Some(head) if head.contains("://") => format!("{head}:{port}"),
        _ => url.to_owned(),
    }
}

impl Running {
    /// The node's context.
    pub fn ctx(&self) -> &Arc<Context> {
        &self.state.ctx
    }

    /// Stops accepting; in a cluster, gives its regions to the other nodes and hands its
    /// sessions off to them (waiting up to the grace period for the phones to move); closes
    /// every socket left with 1001 (waiting up to the grace period for them to flush); then
    /// stops the actors.
    pub async fn shutdown(self) {
        let ctx = self.state.ctx.clone();
        let _ = self.stop.send(());
        self.state.live.close();
        let grace = Duration::from_millis(ctx.settings.server.shutdown_grace_ms);
        if let Some(cl) = ctx.cluster.as_ref().filter(|c| c.ready()) {
            cl.leave().await;
            for e in ctx.sessions.all() {
                tell(&e.handle, SessionMsg::CheckOwner, "owner");
            }
            let deadline = Instant::now() + grace;
            while ctx.sessions.sockets() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(
                sockets_left = ctx.sessions.sockets(),
                "cluster: sessions handed off"
            );
        }
        ctx.begin_shutdown();
        let deadline = Instant::now() + grace + Duration::from_millis(500);
        while ctx.sessions.sockets() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = ctx.sessions.sockets();
        match tokio::time::timeout(grace, self.server).await {
            Ok(Ok(())) => tracing::info!(sockets_left = left, "http server stopped"),
            Ok(Err(e)) => tracing::warn!("http server task failed: {e}"),
            Err(_) => tracing::warn!("http server did not stop within the grace period"),
        }
        self.upkeep.abort();
        self.notifier.abort();
        self.webhooks.abort();
        // Whatever committed is published before the store closes.
        self.publisher.abort();
        if let Err(e) = ctx.publisher.publish_pending().await {
            tracing::warn!("publishing the last events: {e}");
        }
        ctx.stop();
        if let Err(e) = ctx.store.clone().close().await {
            tracing::warn!("closing the store: {e}");
        }
    }
}

/// Gauges sampled by the upkeep task: resident memory (Linux) and live counts.
pub fn record_process_metrics(ctx: &Context) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
    };
    if let Some(kb) = field("VmRSS:") {
        metrics::gauge!("process_resident_memory_bytes").set(kb * 1024.0);
    }
    if let Some(kb) = field("VmHWM:") {
        metrics::gauge!("process_resident_memory_max_bytes").set(kb * 1024.0);
    }
    if let Some(n) = field("Threads:") {
        metrics::gauge!("process_threads").set(n);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100 a second
    // on Linux); the command name before them may hold spaces, so count from its ')'.
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
    {
        metrics::gauge!("process_cpu_seconds_total").set(ticks / 100.0);
    }
    metrics::gauge!("officers_available").set(ctx.sessions.available() as f64);
    metrics::gauge!("connection_requests_pending").set(ctx.sessions.pending() as f64);
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            super::redact("sqlite://data/heyblue.db?mode=rwc"),
            "sqlite://data/heyblue.db?mode=rwc"
        );
    }

    #[test]
    fn an_advertised_port_0_is_the_bound_port() {
        assert_eq!(
            super::advertise_on("http://127.0.0.1:0", 4100),
            "http://127.0.0.1:4100"
        );
        assert_eq!(
            super::advertise_on("http://10.0.0.5:8080/", 4100),
            "http://10.0.0.5:8080/"
        );
        assert_eq!(super::advertise_on("", 4100), "");
    }
}
