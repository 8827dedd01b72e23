//! The ceiling: a bare WebSocket echo endpoint with the server's socket settings (axum,
//! the same tungstenite read buffer, no write buffering, TCP_NODELAY) and the server's
//! runtime (its own default multi-thread tokio runtime, not the load generator's), so the
//! load on it costs everything the server's sockets cost except the server's own work.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::Message;
use axum::routing::get;
use axum::serve::ListenerExt;

/// Starts the echo endpoint on 127.0.0.1:0 in a runtime of its own, built as the server
/// builds its (one worker per core), on a thread that lives as long as the
/// process; returns its `ws://` URL.
pub fn start() -> anyhow::Result<String> {
    let settings = heyblue::config::Settings::defaults();
    let (read_buffer, max_message) = (
        settings.limits.ws_read_buffer_bytes,
        settings.limits.max_message_bytes,
    );
    let app = Router::new().route(
        "/echo",
        get(move |ws: WebSocketUpgrade| async move {
            ws.read_buffer_size(read_buffer)
                .write_buffer_size(0)
                .max_message_size(max_message)
                .on_upgrade(|mut socket| async move {
                    while let Some(Ok(m)) = socket.recv().await {
                        let echo = matches!(m, Message::Text(_) | Message::Binary(_));
                        if matches!(m, Message::Close(_)) || (echo && socket.send(m).await.is_err())
                        {
                            break;
                        }
                    }
                })
        }),
    );
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr: SocketAddr = std_listener.local_addr()?;
    // What `Runtime::new` builds, with the workers named so that their CPU time can be
    // told apart from the load generator's (`/proc/PID/task/*/comm`, `perf --comm`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("echo-worker")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    }),
                    Err(e) => return eprintln!("echo endpoint: {e}"),
                };
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("echo endpoint: {e}");
                }
            })
        })?;
    Ok(format!("ws://{addr}/echo"))
}
