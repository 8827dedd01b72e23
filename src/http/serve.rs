//! The HTTP listener, on hyper directly (`axum::serve` takes no settings): every connection
//! must send its request head within `limits.header_timeout_ms` (the same timer closes a
//! keep-alive connection left idle that long), open connections are capped at
//! `limits.max_connections` (one more is told `503 too_many_connections` and closed), and
//! a stop ends the accepting and lets the open requests finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::config::LimitSettings;

/// Header lines hyper parses at most; past `limits.max_headers` (and under this) the
/// server answers 431 with the JSON error body, past this hyper answers 431 without one.
const PARSED_HEADERS: usize = 1000;

/// What every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to send a request head, and the longest idle keep-alive.
    pub header_timeout: Duration,
    /// Open HTTP connections (before any upgrade) at most.
    pub max_connections: usize,
}

impl ConnLimits {
    /// The limits in force.
    pub fn from_settings(l: &LimitSettings) -> Self {
        Self {
            header_timeout: Duration::from_millis(l.header_timeout_ms),
            max_connections: l.max_connections,
        }
    }
}

/// Open connections; the count drops when a connection's task ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `stop` resolves, then waits for the open requests (a
/// connection upgraded to a WebSocket belongs to its session by then, and ends with it).
/// With `tls`, every connection is TLS first (its handshake within the header timeout).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(PARSED_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of files or memory: wait a little rather than spin.
                    metrics::counter!("http_accept_errors_total").increment(1);
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Frames are small and latency matters: no Nagle delay on any socket.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let taken = open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limits.max_connections).then_some(n + 1)
        });
        if taken.is_err() {
            metrics::counter!("http_connections_refused_total").increment(1);
            tokio::spawn(refuse(tcp));
            continue;
        }
        let held = Open(open.clone());
        let svc = TowerToHyperService::new(
            app.clone()
                .map_request(|r: axum::http::Request<Incoming>| r.map(Body::new)),
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let _held = held;
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(tcp);
                tokio::spawn(async move {
                    let _held = held;
                    let io = match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(io)) => io,
                        Ok(Err(e)) => {
                            metrics::counter!("tls_handshakes_failed_total").increment(1);
                            tracing::debug!("TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("tls_handshakes_failed_total").increment(1);
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Tells a connection over the cap so (503 with the JSON error body), without waiting
/// for its request, and closes it.
async fn refuse(mut tcp: TcpStream) {
    let body = r#"{"error":{"code":"too_many_connections","message":"this node holds limits.max_connections connections"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}
