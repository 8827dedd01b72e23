//! Partner webhook delivery. Every node runs one loop that, every
//! `webhooks.poll_interval_ms`, takes the deliveries due — of each webhook only its oldest
//! pending one, so a webhook receives its events in order — leases each (one node attempts
//! it) and POSTs it on its own task, at most `webhooks.max_in_flight` at once: a slow or
//! dead receiver holds one slot for at most `webhooks.timeout_ms` and never delays
//! another webhook. A 2xx delivers; anything else is retried after an exponential backoff
//! with jitter, until `webhooks.max_age_s` after the event, when the delivery is given up
//! (`dead`, visible in the admin API). Deliveries live in the store, so they survive a
//! restart; receivers may see an event twice (at least once) and deduplicate by
//! `X-HeyBlue-Event-Id`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::config::WebhookSettings;
use crate::store::Store;
use crate::store::webhooks::{After, Attempt, Due};

/// `sha256=<hex HMAC-SHA256 of body with secret>`, the `X-HeyBlue-Signature` value.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Whether an address is one a receiver may not have (loopback, private, link-local,
/// unspecified, carrier-grade NAT, multicast, documentation, unique local).
pub fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some_and(|m| private(IpAddr::V4(m)))
        }
    }
}

/// Why a receiver URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlRefused {
    /// Not an absolute http(s) URL with a host.
    #[error("url must be an absolute http:// or https:// URL with a host")]
    Invalid,
    /// The host does not resolve.
    #[error("the url's host does not resolve")]
    Unresolved,
    /// It resolves to an address receivers may not have.
    #[error("the url's host resolves to a loopback, private or link-local address")]
    Private,
}

/// How long a receiver's host may take to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks a receiver URL: http(s), a host, and (unless `allow_private`) only public
/// addresses for it — checked when a webhook is saved and again before every attempt.
pub async fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, UrlRefused> {
    let u = reqwest::Url::parse(url).map_err(|_| UrlRefused::Invalid)?;
    if !matches!(u.scheme(), "http" | "https") || url.len() > 2048 {
        return Err(UrlRefused::Invalid);
    }
    let host = u.host_str().ok_or(UrlRefused::Invalid)?.to_owned();
    if allow_private {
        return Ok(u);
    }
    let port = u.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<_> = tokio::time::timeout(DNS_TIMEOUT, lookup)
        .await
        .map_err(|_| UrlRefused::Unresolved)?
        .map_err(|_| UrlRefused::Unresolved)?
        .collect();
    if addrs.is_empty() {
        return Err(UrlRefused::Unresolved);
    }
    if addrs.iter().any(|a| private(a.ip())) {
        return Err(UrlRefused::Private);
    }
    Ok(u)
}

/// The wait before attempt `n + 1` after `n` failed ones: `initial · 2^(n−1)`, at most
/// `max`, the upper half of it drawn at random (so receivers coming back are not hit by
/// every sender at once).
pub fn backoff(cfg: &WebhookSettings, failed: u32) -> Duration {
    let exp = failed.saturating_sub(1).min(40);
    let full = cfg
        .backoff_initial_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.backoff_max_ms);
    let half = full / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=full - half))
}

/// Runs the delivery loop until the task is aborted.
pub async fn run(store: Store, cfg: WebhookSettings) {
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .user_agent("HeyBlue-Webhooks/1")
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("webhooks: no HTTP client: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight));
    let in_flight = Arc::new(dashmap::DashSet::<String>::new());
    let every = Duration::from_millis(cfg.poll_interval_ms);
    loop {
        tokio::time::sleep(every).await;
        let free = slots.available_permits();
        if free == 0 {
            continue;
        }
        let due = match store.due_deliveries(Utc::now(), free as u64).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("webhooks: reading deliveries due: {e}");
                continue;
            }
        };
        for d in due {
            // This node already attempts this webhook's head.
            if !in_flight.insert(d.webhook_id.clone()) {
                continue;
            }
            let lease = Utc::now()
                + chrono::Duration::from_std(Duration::from_millis(cfg.timeout_ms * 2 + 5000))
                    .unwrap_or_default();
            match store.lease_delivery(d.id, Utc::now(), lease).await {
                Ok(true) => {}
                Ok(false) => {
                    in_flight.remove(&d.webhook_id);
                    continue;
                }
                Err(e) => {
                    in_flight.remove(&d.webhook_id);
                    tracing::warn!("webhooks: leasing a delivery: {e}");
                    continue;
                }
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                in_flight.remove(&d.webhook_id);
                break;
            };
            let (store, http, cfg, in_flight) =
                (store.clone(), http.clone(), cfg.clone(), in_flight.clone());
            tokio::spawn(async move {
                attempt(&store, &http, &cfg, &d).await;
                in_flight.remove(&d.webhook_id);
                drop(permit);
            });
        }
    }
}

/// One attempt at `d`, recorded with what becomes of it.
async fn attempt(store: &Store, http: &reqwest::Client, cfg: &WebhookSettings, d: &Due) {
    let at = Utc::now();
    let started = Instant::now();
    let outcome = send(http, cfg, d).await;
    let latency = started.elapsed();
    metrics::histogram!("webhook_attempt_seconds").record(latency.as_secs_f64());
    let (status, error) = match outcome {
        Ok(s) if (200..300).contains(&s) => (Some(s), None),
        Ok(s) => (Some(s), Some(format!("the receiver answered {s}"))),
        Err(e) => (None, Some(e)),
    };
    let after = if error.is_none() {
        After::Delivered
    } else {
        let next = Utc::now()
            + chrono::Duration::from_std(backoff(cfg, d.attempts as u32 + 1)).unwrap_or_default();
        let deadline = d.since
            + chrono::Duration::from_std(Duration::from_secs(cfg.max_age_s)).unwrap_or_default();
        if next > deadline {
            After::Dead
        } else {
            After::Retry(next)
        }
    };
    let outcome = match after {
        After::Delivered => "delivered",
        After::Retry(_) => "failed",
        After::Dead => "dead",
    };
    metrics::counter!("webhook_attempts_total", "outcome" => outcome).increment(1);
    if after == After::Dead {
        tracing::warn!(webhook = %d.webhook_id, event = %d.event_id, "webhook delivery given up");
    }
    let attempt = Attempt {
        status,
        latency_ms: latency.as_millis() as i64,
        error,
    };
    if let Err(e) = store.record_attempt(d, at, &attempt, after).await {
        // The lease runs out and the delivery is attempted again: at least once.
        tracing::warn!(webhook = %d.webhook_id, "webhooks: recording an attempt: {e}");
    }
}

/// POSTs `d`; the receiver's status, or what kept it from answering.
async fn send(http: &reqwest::Client, cfg: &WebhookSettings, d: &Due) -> Result<u16, String> {
    let url = check_url(&d.url, cfg.allow_private)
        .await
        .map_err(|e| e.to_string())?;
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header(
            "x-heyblue-signature",
            signature(&d.secret, d.body.as_bytes()),
        )
        .header("x-heyblue-event-id", &d.event_id)
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", cfg.timeout_ms)
            } else {
                format!("not delivered: {e}")
            }
        })?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn private_addresses_are_told_apart() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "151.101.1.1", "2606:4700::1111"] {
            assert!(!private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let cfg = crate::config::Settings::defaults().webhooks;
        for (failed, full) in [
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (13, 3_600_000),
            (40, 3_600_000),
        ] {
            for _ in 0..50 {
                let d = backoff(&cfg, failed).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "{failed}: {d}");
            }
        }
    }

    #[tokio::test]
    async fn receiver_urls_are_checked() {
        assert!(matches!(
            check_url("ftp://example.com/x", true).await,
            Err(UrlRefused::Invalid)
        ));
        assert!(matches!(
            check_url("not a url", true).await,
            Err(UrlRefused::Invalid)
        ));
        assert!(matches!(
            check_url("http://127.0.0.1:9/x", false).await,
            Err(UrlRefused::Private)
        ));
        assert!(matches!(
            check_url("http://[::1]:9/x", false).await,
            Err(UrlRefused::Private)
        ));
        assert!(matches!(
            check_url("http://10.0.0.8/x", false).await,
            Err(UrlRefused::Private)
        ));
        assert!(check_url("http://127.0.0.1:9/x", true).await.is_ok());
        assert!(check_url("https://93.184.215.14/hook", false).await.is_ok());
    }
}
