//! WebSocket framing at the edge, over a raw TCP socket (a client library would refuse to
//! send most of these): each broken frame closes with the code RFC 6455 gives it, and a
//! client that keeps sending after the server's close still reads every error frame and
//! the close code instead of a reset.

use heyblue::protocol::Role;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;

/// A WebSocket spoken byte by byte.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A frame: FIN set, `opcode`, masked unless `unmasked`.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// What the server sent until it closed the connection.
struct Ending {
    texts: Vec<Value>,
    close: Option<u16>,
    /// The connection was reset (the close frame may have been lost).
    reset: bool,
}

impl Raw {
    async fn open(app: &TestApp, role: Role, sub: &str) -> Raw {
        let url = app.ticket(role, sub, 40.7506, -73.9972).await;
        let rest = url.strip_prefix("ws://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut s = TcpStream::connect(host).await.unwrap();
        s.set_nodelay(true).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await.expect("the handshake answer");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        let (op, welcome) = raw.next().await.expect("welcome");
        assert_eq!(op, TEXT, "{welcome:?}");
        raw
    }

    /// More bytes; `Err(reset)` on a reset, `Ok(false)` on EOF.
    async fn fill(&mut self) -> Result<bool, bool> {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
            Err(_) => panic!("the server sent nothing for 5 s"),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Ok(Err(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                Err(true)
            }
        }
    }

    /// The next server frame (opcode, payload); `None` when the connection ended.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n @ 0..=125 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            if !matches!(self.fill().await, Ok(true)) {
                return None;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A server that already closed may reset a write: what it sent is what counts.
        let _ = self.s.write_all(bytes).await;
    }

    /// Reads to the end: text frames, the close code, whether the connection was reset.
    async fn ending(&mut self) -> Ending {
        let mut e = Ending {
            texts: Vec::new(),
            close: None,
            reset: false,
        };
        loop {
            if self.buf.len() < 2 {
                match self.fill().await {
                    Ok(true) => continue,
                    Ok(false) => return e,
                    Err(_) => {
                        e.reset = true;
                        return e;
                    }
                }
            }
            let Some((op, payload)) = self.next().await else {
                return e;
            };
            match op {
                TEXT => e.texts.push(serde_json::from_slice(&payload).unwrap()),
                CLOSE => {
                    e.close = Some(u16::from_be_bytes([payload[0], payload[1]]));
                    // Answer the close, as a client does.
                    self.send(&frame(CLOSE, &payload[..2], true)).await;
                }
                _ => {}
            }
        }
    }
}

async fn closes_with(app: &TestApp, bytes: &[u8], code: u16, what: &str) {
    let mut raw = Raw::open(app, Role::Citizen, "c1").await;
    raw.send(bytes).await;
    let end = raw.ending().await;
    assert_eq!(end.close, Some(code), "{what}: texts {:?}", end.texts);
}

#[tokio::test]
async fn broken_frames_close_with_the_rfc_6455_codes() {
    let app = spawn_app().await;
    let big = vec![b'a'; 70 * 1024];
    closes_with(&app, &frame(TEXT, &big, true), 1009, "a 70 KB text frame").await;
    closes_with(
        &app,
        &frame(BINARY, &vec![0u8; 1 << 20], true),
        1009,
        "a 1 MB binary frame",
    )
    .await;
    let deep = "[".repeat(100_000);
    closes_with(
        &app,
        &frame(TEXT, deep.as_bytes(), true),
        1009,
        "a 100k-deep array",
    )
    .await;
    closes_with(
        &app,
        &frame(TEXT, &[0x7b, 0xff, 0xfe, 0x7d], true),
        1007,
        "invalid UTF-8",
    )
    .await;
    closes_with(&app, &frame(TEXT, b"{}", false), 1002, "an unmasked frame").await;
    closes_with(&app, &frame(0x3, b"x", true), 1002, "a reserved opcode").await;
    assert!(app.metric("ws_protocol_closes_total").await >= 6.0);
}

#[tokio::test]
async fn a_client_still_sending_reads_the_1008_close() {
    let app = spawn_app().await;
    let mut raw = Raw::open(&app, Role::Citizen, "c1").await;
    // Ten bad frames and seventy more in one write: the tenth gets the 1008 close, the
    // rest arrive after it.
    let mut burst = Vec::new();
    for _ in 0..80 {
        burst.extend(frame(TEXT, br#"{"type":"nonsense"}"#, true));
    }
    raw.send(&burst).await;
    let end = raw.ending().await;
    assert_eq!(end.close, Some(1008), "texts {:?}", end.texts);
    assert!(!end.reset, "the connection was reset under the close");
    let errors = end.texts.iter().filter(|t| t["type"] == "error").count();
    assert_eq!(errors, 10, "{:?}", end.texts);
}

#[tokio::test]
async fn a_silent_socket_is_pinged_then_closed_and_an_answering_one_kept() {
    let app = spawn_app_with(|s| {
        s.limits.ws_ping_interval_s = 1;
        s.limits.ws_pong_timeout_s = 1;
    })
    .await;
    let mut raw = Raw::open(&app, Role::Citizen, "c1").await;
    let mut kept = app.connect(Role::Citizen, "c2", 40.7506, -73.9972).await;
    kept.recv_type("nearby").await;
    // From here the clock moves only when every task waits: the heartbeat's own timers.
    tokio::time::pause();
    let mut seen = Vec::new();
    let close = loop {
        let (op, payload) = raw.next().await.expect("a ping, then the close");
        seen.push(op);
        if op == CLOSE {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    assert!(seen.ends_with(&[0x9, CLOSE]), "{seen:?}");
    assert_eq!(close, 1001);
    // The library client answers pings whenever it reads: still open a minute later.
    kept.idle(std::time::Duration::from_secs(60)).await;
    kept.ping().await;
    assert!(app.metric("ws_pong_timeouts_total").await >= 1.0);
}
