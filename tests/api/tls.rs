//! HTTPS and WSS on the listener's port, from a real process: the orchestrator hands out
//! `wss://` URLs, and SIGHUP swaps the certificate for new handshakes while a WebSocket
//! opened before it keeps going.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use heyblue::protocol::Role;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// A self-signed certificate for localhost: PEM chain, PEM key, DER certificate.
fn self_signed() -> (String, String, CertificateDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (
        c.cert.pem(),
        c.key_pair.serialize_pem(),
        c.cert.der().clone(),
    )
}

/// A TLS connection trusting `roots`; and the certificate the server presented.
async fn connect(port: u16, roots: &[CertificateDer<'static>]) -> (TlsStream<TcpStream>, Vec<u8>) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, presented)
}

/// One HTTP/1.1 request over TLS: status, JSON body (or null) and the body as text.
async fn https(
    port: u16,
    roots: &[CertificateDer<'static>],
    path: &str,
    token: Option<&str>,
) -> (u16, Value, String) {
    let (mut tls, _) = connect(port, roots).await;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
    )
}

async fn https_get(
    port: u16,
    roots: &[CertificateDer<'static>],
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let (s, v, _) = https(port, roots, path, token).await;
    (s, v)
}

/// The next text frame of a WebSocket, as JSON (5 s at most).
async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn https_and_wss_on_one_port_and_sighup_swaps_the_certificate() {
    let dir = std::env::temp_dir().join(format!("heyblue-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert1, key1, der1) = self_signed();
    let (cert2, key2, der2) = self_signed();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert1).unwrap();
    std::fs::write(&key, &key1).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_heyblue"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = listening_line(&mut child).await;
    let port: u16 = line
        .trim()
        .strip_prefix("listening on https://127.0.0.1:")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let roots = [der1.clone(), der2.clone()];
    eventually("the server answers over TLS", || async {
        let (s, _) = https_get(port, &roots, "/healthz", None).await;
        (s == 200).then_some(())
    })
    .await;
    let (_, presented) = connect(port, &roots).await;
    assert_eq!(presented, der1.to_vec());

    // The orchestrator says wss://, and the session opens over TLS.
    let auth = heyblue::http::auth::Auth::new("heyblue-dev-secret-change-me");
    let token = auth.mint(Role::Citizen, "c1", None, Duration::from_secs(600));
    let (s, grant) = https_get(
        port,
        &roots,
        "/v1/citizens/session?lat=40.7506&lon=-73.9972",
        Some(&token),
    )
    .await;
    assert_eq!(s, 200, "{grant}");
    let url = grant["ws_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("wss://localhost:{port}/v1/ws?ticket=")),
        "{url}"
    );
    let (tls, _) = connect(port, &roots).await;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WSS upgrade");
    assert_eq!(next_text(&mut ws).await["type"], "welcome");

    // New files, SIGHUP: new handshakes get the new certificate...
    std::fs::write(&cert, &cert2).unwrap();
    std::fs::write(&key, &key2).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("new handshakes get the new certificate", || async {
        let (_, presented) = connect(port, &roots).await;
        (presented == der2.to_vec()).then_some(())
    })
    .await;
    // ...and the socket opened before is still served.
    ws.send(Message::text(json!({"type":"ping"}).to_string()))
        .await
        .unwrap();
    while next_text(&mut ws).await["type"] != "pong" {}

    // Files that cannot be read: the reload fails and the certificate in use stays.
    std::fs::write(&key, "not a key").unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let admin = auth.mint(Role::Admin, "admin", None, Duration::from_secs(600));
    eventually("the failed reload is counted", || async {
        let (_, _, text) = https(port, &roots, "/metrics", Some(&admin)).await;
        text.contains("tls_reloads_total{result=\"failed\"} 1")
            .then_some(())
    })
    .await;
    let (_, presented) = connect(port, &roots).await;
    assert_eq!(presented, der2.to_vec());

    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}
