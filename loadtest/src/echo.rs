//! The ceiling: a bare WebSocket echo endpoint with the server's socket settings (axum,
//! the same tungstenite read buffer, no write buffering, TCP_NODELAY), so the load on it
//! costs everything the server's sockets cost except the server's own work.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::Message;
use axum::routing::get;
use axum::serve::ListenerExt;

/// Starts the echo endpoint on 127.0.0.1:0; returns its `ws://` URL.
pub async fn start() -> anyhow::Result<String> {
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("ws://{addr}/echo"))
}
