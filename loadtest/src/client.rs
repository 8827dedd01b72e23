//! A simulated phone: asks the orchestrator for a ticket, opens the WebSocket from a
//! chosen source address, and speaks JSON frames.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use heyblue::http::auth::Auth;
use heyblue::protocol::Role;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The socket of one session.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Source address for the i-th socket beyond the first 20k: 127.0.0.x, 20k per address.
/// (Binding before connect makes the kernel pick a port without knowing the destination,
/// which is slow and cannot reuse TIME_WAIT ports, so the first 20k do not bind.)
pub fn source(i: usize) -> Option<IpAddr> {
    (i >= 20_000).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / 20_000) as u8)))
}

/// Where and who a session is.
pub struct Who<'a> {
    /// Role.
    pub role: Role,
    /// Account id.
    pub sub: &'a str,
    /// Start position.
    pub lat: f64,
    /// Start position.
    pub lon: f64,
    /// Index of the socket (chooses the source address).
    pub i: usize,
}

/// Opens a session through the orchestrator and returns the upgraded socket.
pub async fn open(
    http: &reqwest::Client,
    target: &str,
    auth: &Auth,
    who: Who<'_>,
) -> anyhow::Result<Ws> {
    Ok(open_placed(http, target, auth, who).await?.0)
}

/// [`open`], also returning the node the orchestrator placed the session on (in a
/// cluster, the owner of its region; alone, the one node).
pub async fn open_placed(
    http: &reqwest::Client,
    target: &str,
    auth: &Auth,
    who: Who<'_>,
) -> anyhow::Result<(Ws, String)> {
    let token = auth.mint(who.role, who.sub, None, Duration::from_secs(3600));
    let path = if who.role == Role::Officer {
        "officers"
    } else {
        "citizens"
    };
    let url = format!("{target}/v1/{path}/session?lat={}&lon={}", who.lat, who.lon);
    let resp = http.get(url).bearer_auth(token).send().await?;
    if !resp.status().is_success() {
        bail!("orchestrator answered {}", resp.status());
    }
    let body: Value = resp.json().await?;
    let ws_url = body["ws_url"].as_str().context("ws_url")?;
    let node = body["node"].as_str().unwrap_or("").to_owned();
    Ok((open_url(ws_url, who.i).await?, node))
}

/// Read buffer of every client socket (frames larger than this are read in pieces).
const CLIENT_READ_BUFFER: usize = 4096;

/// Opens a WebSocket straight to `ws_url` (also the echo endpoint: no orchestrator).
pub async fn open_url(ws_url: &str, i: usize) -> anyhow::Result<Ws> {
    let addr: SocketAddr = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .context("host")?
        .parse()?;
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = source(i) {
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    // tungstenite zero-fills its whole read buffer before every read: at the default
    // 128 KiB that memset was a fifth of the load generator's CPU. Phones' frames are small.
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(ws_url, stream, Some(config)).await?;
    Ok(ws)
}

/// Sends one JSON frame.
pub async fn send(ws: &mut Ws, v: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

/// The next JSON frame; an error on close, timeout or a non-JSON frame.
pub async fn recv(ws: &mut Ws, wait: Duration) -> anyhow::Result<Value> {
    loop {
        let m = tokio::time::timeout(wait, ws.next())
            .await
            .context("no frame within the wait")?
            .context("socket ended")??;
        match m {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Skips frames until one whose `type` is in `types` (an `error` frame is returned too).
pub async fn recv_until(ws: &mut Ws, types: &[&str], wait: Duration) -> anyhow::Result<Value> {
    loop {
        let v = recv(ws, wait).await?;
        let t = v["type"].as_str().unwrap_or_default();
        if t == "error" || types.contains(&t) {
            return Ok(v);
        }
    }
}
