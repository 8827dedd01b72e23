//! Typed settings: the embedded `config/default.toml`, an optional overlay file, then
//! `HEYBLUE__SECTION__KEY` environment variables. Secrets are wrapped so they never print.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The defaults compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A string that is never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listener and node identity.
    pub server: ServerSettings,
    /// Tokens and tickets.
    pub auth: AuthSettings,
    /// The store.
    pub database: DatabaseSettings,
    /// Per-socket and per-node limits.
    pub limits: LimitSettings,
    /// Zip regions.
    pub regions: RegionSettings,
    /// Officer sessions.
    pub officer: OfficerSettings,
    /// Citizen sessions.
    pub citizen: CitizenSettings,
    /// Connection requests.
    pub connections: ConnectionSettings,
    /// Points.
    pub points: PointsSettings,
    /// Event bus and outbox publisher.
    pub events: EventSettings,
    /// Prometheus endpoint.
    pub metrics: MetricsSettings,
    /// Offers, vouchers and donations.
    pub rewards: RewardSettings,
    /// Cluster membership (empty `nats_url`: this node runs alone).
    pub cluster: ClusterSettings,
    /// The administrators' dashboard and its live feed.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Trophies and what earns them.
    pub trophies: TrophySettings,
    /// Partner webhooks.
    pub webhooks: WebhookSettings,
    /// The public feed.
    pub feed: FeedSettings,
}

/// `[feed]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// How long a node serves the first page of each size before reading it again (0: every
    /// request reads the store).
    pub cache_ms: u64,
}

/// `[webhooks]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// How long one delivery attempt may take.
    pub timeout_ms: u64,
    /// The wait before the first retry; doubled each time.
    pub backoff_initial_ms: u64,
    /// The longest wait between attempts.
    pub backoff_max_ms: u64,
    /// A delivery not made within this long of its event is given up (`dead`).
    pub max_age_s: u64,
    /// Accept receivers on loopback, private and link-local addresses (tests only).
    pub allow_private: bool,
    /// Webhooks that can exist at once.
    pub max_webhooks: u64,
    /// Attempts in flight at once on a node.
    pub max_in_flight: usize,
    /// How often a node looks for deliveries due.
    pub poll_interval_ms: u64,
}

/// `[trophies]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrophySettings {
    /// The rules: each awards its trophy once per account, when the account's measure
    /// reaches `at_least`. Replaces the shipped table as a whole when set.
    pub rules: Vec<TrophyRule>,
}

/// Trophy rules a configuration holds at most.
pub const MAX_TROPHY_RULES: usize = 100;

/// One trophy and what earns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrophyRule {
    /// Stable id (`[a-z0-9_]`, 1..=40): what accounts keep and clients see.
    pub id: String,
    /// Shown name (1..=60 characters).
    pub name: String,
    /// What is counted.
    pub measure: TrophyMeasure,
    /// The count that earns it (>= 1).
    pub at_least: i64,
}

/// What a trophy rule counts, over the account's whole history (as officer or citizen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrophyMeasure {
    /// Connections recorded.
    Connections,
    /// Distinct other sides of its connections (citizens for an officer, officers for a
    /// citizen).
    DistinctCounterparts,
    /// Distinct zips its connections were made in.
    DistinctZips,
    /// Donations made.
    Donations,
    /// Points donated in all.
    PointsDonated,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (one human line per event) or `json` (one JSON object per line).
    pub format: String,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// How often the live feed samples the map and the counters while anyone watches.
    pub live_interval_ms: u64,
    /// Live feeds open at once on a node; one more is refused with 503.
    pub live_max_watchers: usize,
    /// Updates queued for a watcher; one that falls further behind is sent the whole map
    /// again.
    pub live_queue: usize,
    /// Officers the live feed carries at most (the snapshot says when it was cut).
    pub live_max_officers: usize,
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URL(s), comma separated; empty runs the node alone.
    pub nats_url: String,
    /// This node's member id; empty takes `server.node_id`.
    pub node_id: String,
    /// The URL phones and other nodes reach this node at (`http://host:port`).
    pub advertise_url: String,
    /// Seconds a membership lease lives without renewal.
    pub lease_ttl_s: u64,
    /// How often the lease is renewed.
    pub renew_interval_ms: u64,
    /// How often ownership is reconciled with the member set.
    pub reconcile_interval_ms: u64,
    /// Ownership units a node gives up or takes per reconcile round when members change.
    pub moves_per_round: usize,
    /// Timeout of one cross-node request.
    pub request_timeout_ms: u64,
    /// Attempts of a cross-node request that met no responder (an owner failing over).
    pub request_attempts: u32,
    /// Region changes queued for publishing to the other nodes; beyond it a change is
    /// dropped (counted) and the receivers, seeing the gap, read again.
    pub change_queue: usize,
    /// How long the events stream keeps an event (and the projection its id).
    pub events_max_age_s: u64,
    /// Bytes the events stream keeps at most (the oldest go first).
    pub events_max_bytes: i64,
    /// Longest time a session that was handed off keeps its old socket.
    pub handoff_grace_s: u64,
    /// JetStream replicas of the buckets and the event stream (3 on a three-server NATS).
    pub replicas: usize,
    /// Name prefix of the buckets, stream and subjects (clusters sharing one NATS differ).
    pub namespace: String,
}

impl ClusterSettings {
    /// Whether this node joins a cluster.
    pub fn enabled(&self) -> bool {
        !self.nats_url.trim().is_empty()
    }
}

/// `[rewards]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSettings {
    /// HMAC key that signs voucher codes.
    pub voucher_key: Secret,
    /// How long an `Idempotency-Key` answer is kept.
    pub idempotency_ttl_s: u64,
}

/// `[events]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Events kept per subscriber.
    pub capacity: usize,
    /// Publisher period.
    pub publish_interval_ms: u64,
    /// Rows per round.
    pub batch: u64,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address.
    pub bind: String,
    /// This node's name.
    pub node_id: String,
    /// Base URL for `ws_url`; empty derives it from the Host header.
    pub public_url: String,
    /// PEM certificate chain: with `tls_key`, the listener speaks HTTPS and WSS only.
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// Time a closing socket has to flush its close frame (shutdown, errors, slow client)
    /// before it is dropped; shutdown also waits this long for sockets.
    pub shutdown_grace_ms: u64,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret.
    pub jwt_secret: Secret,
    /// Ticket lifetime.
    pub ticket_ttl_s: u64,
    /// Outstanding tickets held at once.
    pub max_outstanding_tickets: usize,
    /// OpenID Connect issuers whose RS256/ES256 tokens are accepted.
    #[serde(default)]
    pub oidc: Vec<OidcIssuer>,
    /// An issuer's keys are fetched again for an unknown key id at most this often.
    pub jwks_refresh_min_s: u64,
    /// Time a JWKS fetch may take.
    pub jwks_timeout_ms: u64,
}

/// One `[[auth.oidc]]` issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    /// The `iss` its tokens carry (exactly).
    pub issuer: String,
    /// Where its signing keys are published (a JWK set).
    pub jwks_url: String,
    /// The `aud` its tokens must carry for this server.
    pub audience: String,
    /// The claim that names the role (`officer`, `citizen`, `admin`, `retailer`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The role of a token without that claim.
    #[serde(default = "default_role")]
    pub default_role: crate::protocol::Role,
}

fn default_role_claim() -> String {
    "role".to_owned()
}

fn default_role() -> crate::protocol::Role {
    crate::protocol::Role::Citizen
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// sqlite:// or postgres:// URL.
    pub url: String,
    /// How long `GET /readyz` waits for the store's answer.
    pub ready_timeout_ms: u64,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest accepted text frame.
    pub max_frame_bytes: usize,
    /// Hard WebSocket message limit.
    pub max_message_bytes: usize,
    /// Sustained inbound messages per second.
    pub messages_per_s: u32,
    /// Inbound burst.
    pub messages_burst: u32,
    /// Consecutive errors before close 1008.
    pub max_consecutive_errors: u32,
    /// Outbound queue per socket.
    pub outbound_queue: usize,
    /// Messages from elsewhere (region signals, connection messages) queued per session.
    pub session_mailbox: usize,
    /// tungstenite read buffer.
    pub ws_read_buffer_bytes: usize,
    /// Sessions per node.
    pub max_sessions: usize,
    /// HTTP body limit.
    pub max_body_bytes: usize,
    /// Body limit of the import endpoints; larger gets 413.
    pub import_max_bytes: usize,
    /// Data rows of one import file at most; more gets 413 `too_many_rows`.
    pub import_max_rows: usize,
    /// Rejected rows listed in an import's answer at most (all are counted).
    pub import_max_rejected: usize,
    /// Time a connection has to send a request head; also the longest idle keep-alive.
    pub header_timeout_ms: u64,
    /// Time a request has to be answered (its body read included); then 408.
    pub request_timeout_ms: u64,
    /// Open HTTP connections (not yet upgraded) at most; one more gets 503 and is closed.
    pub max_connections: usize,
    /// Header lines of a request at most; more gets 431.
    pub max_headers: usize,
    /// Bytes of a request's header lines at most (names and values); more gets 431.
    pub max_header_bytes: usize,
    /// A socket silent this long is sent a ping.
    pub ws_ping_interval_s: u64,
    /// A pinged socket that sends nothing within this is closed (1001).
    pub ws_pong_timeout_s: u64,
}

/// `[regions]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSettings {
    /// Service area radius around centroids.
    pub max_distance_m: f64,
    /// Region call timeout.
    pub call_timeout_ms: u64,
}

/// `[officer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficerSettings {
    /// Longest availability window.
    pub max_window_s: u64,
}

/// `[citizen]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitizenSettings {
    /// Search radius before any `watch`.
    pub default_radius_m: f64,
    /// Smallest radius a `watch` may set.
    pub min_radius_m: f64,
    /// Largest radius a `watch` may set.
    pub max_radius_m: f64,
    /// Result count before any `watch`.
    pub default_limit: usize,
    /// Largest `limit`.
    pub max_limit: usize,
    /// Minimum interval between pushed `nearby` frames.
    pub push_interval_ms: u64,
    /// Distance for `officer_nearby`.
    pub proximity_m: f64,
}

/// `[connections]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Largest distance for in-person requests.
    pub in_person_m: f64,
    /// Time an officer has to respond.
    pub request_timeout_s: u64,
}

/// `[points]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsSettings {
    /// Points per side per connection.
    pub per_connection: i64,
    /// Cooldown per officer–citizen pair.
    pub pair_cooldown_s: u64,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Extra unauthenticated listener for /metrics; empty for none.
    pub bind: String,
}

/// Settings that cannot be used: a key that does not exist (in a file or a `HEYBLUE__`
/// variable), a value of the wrong type, or values that contradict each other.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or did not fit the settings (names the key and source).
    #[error("{0}")]
    Source(Box<figment::Error>),
    /// Values that parse but cannot work together.
    #[error("invalid settings: {0}")]
    Invalid(String),
}

impl Settings {
    /// The range limits a session decodes its frames with.
    pub fn decode_limits(&self) -> crate::protocol::DecodeLimits {
        crate::protocol::DecodeLimits {
            max_frame_bytes: self.limits.max_frame_bytes,
            max_window_s: self.officer.max_window_s,
            min_radius_m: self.citizen.min_radius_m,
            max_radius_m: self.citizen.max_radius_m,
            max_limit: self.citizen.max_limit,
        }
    }

    /// Defaults, then `overlay` if given, then the environment; then [`Settings::validate`].
    pub fn load(overlay: Option<&Path>) -> Result<Self, ConfigError> {
        let s: Self = Self::figment(overlay)
            .extract()
            .map_err(|e| ConfigError::Source(Box::new(e)))?;
        let mut s = s;
        if !s.cluster.node_id.is_empty() {
            s.server.node_id = s.cluster.node_id.clone();
        }
        s.validate()?;
        Ok(s)
    }

    /// Every check that spans more than one key, in one place.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut bad = Vec::new();
        let c = &self.citizen;
        if !(c.min_radius_m > 0.0 && c.min_radius_m <= c.max_radius_m) {
            bad.push("citizen.min_radius_m must be > 0 and <= citizen.max_radius_m".to_owned());
        }
        if !(c.min_radius_m..=c.max_radius_m).contains(&c.default_radius_m) {
            bad.push(
                "citizen.default_radius_m must lie in citizen.min_radius_m..=max_radius_m"
                    .to_owned(),
            );
        }
        if c.default_limit == 0 || c.default_limit > c.max_limit {
            bad.push("citizen.default_limit must be 1..=citizen.max_limit".to_owned());
        }
        if c.push_interval_ms == 0 {
            bad.push("citizen.push_interval_ms must be > 0".to_owned());
        }
        let l = &self.limits;
        if l.max_frame_bytes > l.max_message_bytes {
            bad.push("limits.max_frame_bytes must be <= limits.max_message_bytes".to_owned());
        }
        for (name, v) in [
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.max_sessions", l.max_sessions),
            ("limits.session_mailbox", l.session_mailbox),
            (
                "auth.max_outstanding_tickets",
                self.auth.max_outstanding_tickets,
            ),
            ("events.capacity", self.events.capacity),
            ("limits.import_max_rows", l.import_max_rows),
            ("limits.max_connections", l.max_connections),
            ("limits.header_timeout_ms", l.header_timeout_ms as usize),
            ("limits.request_timeout_ms", l.request_timeout_ms as usize),
            ("limits.ws_ping_interval_s", l.ws_ping_interval_s as usize),
            ("limits.ws_pong_timeout_s", l.ws_pong_timeout_s as usize),
            (
                "database.ready_timeout_ms",
                self.database.ready_timeout_ms as usize,
            ),
            ("webhooks.timeout_ms", self.webhooks.timeout_ms as usize),
            (
                "webhooks.backoff_initial_ms",
                self.webhooks.backoff_initial_ms as usize,
            ),
            ("webhooks.max_age_s", self.webhooks.max_age_s as usize),
            ("webhooks.max_webhooks", self.webhooks.max_webhooks as usize),
            ("webhooks.max_in_flight", self.webhooks.max_in_flight),
            (
                "webhooks.poll_interval_ms",
                self.webhooks.poll_interval_ms as usize,
            ),
            ("admin.live_max_watchers", self.admin.live_max_watchers),
            ("admin.live_queue", self.admin.live_queue),
            ("admin.live_max_officers", self.admin.live_max_officers),
            (
                "admin.live_interval_ms",
                self.admin.live_interval_ms as usize,
            ),
        ] {
            if v == 0 {
                bad.push(format!("{name} must be > 0"));
            }
        }
        if l.messages_per_s == 0 || l.messages_burst == 0 {
            bad.push("limits.messages_per_s and limits.messages_burst must be > 0".to_owned());
        }
        if self.officer.max_window_s == 0 {
            bad.push("officer.max_window_s must be > 0".to_owned());
        }
        if self.connections.request_timeout_s == 0 {
            bad.push("connections.request_timeout_s must be > 0".to_owned());
        }
        let cl = &self.cluster;
        if cl.enabled() {
            if self.database.url.starts_with("sqlite:") {
                bad.push(
                    "a cluster node needs a shared PostgreSQL store (database.url is SQLite, \
                     which other nodes cannot share)"
                        .to_owned(),
                );
            }
            if cl.advertise_url.trim().is_empty() {
                bad.push("cluster.advertise_url must be set on a cluster node".to_owned());
            }
            if cl.lease_ttl_s < 2 {
                bad.push("cluster.lease_ttl_s must be >= 2".to_owned());
            }
            if cl.renew_interval_ms == 0 || cl.renew_interval_ms >= cl.lease_ttl_s * 1000 / 2 {
                bad.push(
                    "cluster.renew_interval_ms must be > 0 and below half of cluster.lease_ttl_s"
                        .to_owned(),
                );
            }
            for (name, v) in [
                ("cluster.reconcile_interval_ms", cl.reconcile_interval_ms),
                ("cluster.request_timeout_ms", cl.request_timeout_ms),
                ("cluster.moves_per_round", cl.moves_per_round as u64),
                ("cluster.request_attempts", u64::from(cl.request_attempts)),
                ("cluster.replicas", cl.replicas as u64),
                ("cluster.change_queue", cl.change_queue as u64),
                ("cluster.events_max_age_s", cl.events_max_age_s),
                (
                    "cluster.events_max_bytes",
                    cl.events_max_bytes.max(0) as u64,
                ),
            ] {
                if v == 0 {
                    bad.push(format!("{name} must be > 0"));
                }
            }
        }
        if self.webhooks.backoff_max_ms < self.webhooks.backoff_initial_ms {
            bad.push("webhooks.backoff_max_ms must be >= webhooks.backoff_initial_ms".to_owned());
        }
        let rules = &self.trophies.rules;
        if rules.len() > MAX_TROPHY_RULES {
            bad.push(format!("trophies.rules: at most {MAX_TROPHY_RULES} rules"));
        }
        let mut ids = std::collections::HashSet::new();
        for r in rules {
            let id_ok = (1..=40).contains(&r.id.len())
                && r.id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !id_ok {
                bad.push(format!(
                    "trophies.rules: id {:?} must be 1..=40 of [a-z0-9_]",
                    r.id
                ));
            }
            if !ids.insert(r.id.as_str()) {
                bad.push(format!("trophies.rules: id {:?} appears twice", r.id));
            }
            let name = r.name.trim();
            if name.is_empty() || name.chars().count() > 60 || name.chars().any(char::is_control) {
                bad.push(format!(
                    "trophies.rules: {}: name must be 1..=60 characters without control characters",
                    r.id
                ));
            }
            if r.at_least < 1 {
                bad.push(format!("trophies.rules: {}: at_least must be >= 1", r.id));
            }
        }
        for i in &self.auth.oidc {
            if !(i.jwks_url.starts_with("https://") || i.jwks_url.starts_with("http://")) {
                bad.push(format!(
                    "auth.oidc {}: jwks_url must be an http(s) URL",
                    i.issuer
                ));
            }
            if i.issuer.is_empty() || i.audience.is_empty() {
                bad.push("auth.oidc: issuer and audience must be set".to_owned());
            }
        }
        if self.server.tls_cert.is_empty() != self.server.tls_key.is_empty() {
            bad.push("server.tls_cert and server.tls_key go together".to_owned());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bad.push(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            ));
        }
        bad.extend(self.exposed_development_keys());
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(bad.join("; ")))
        }
    }

    /// A listener reachable from other machines must not sign with the keys every copy of
    /// this repository knows: each such key, named with the variable that sets it.
    fn exposed_development_keys(&self) -> Vec<String> {
        let host = self
            .server
            .bind
            .rsplit_once(':')
            .map_or(self.server.bind.as_str(), |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Vec::new();
        }
        let dev = Self::defaults();
        let mut out = Vec::new();
        if self.auth.jwt_secret.expose() == dev.auth.jwt_secret.expose() {
            out.push(format!(
                "server.bind {} is not loopback while auth.jwt_secret is the development secret: set HEYBLUE__AUTH__JWT_SECRET",
                self.server.bind
            ));
        }
        if self.rewards.voucher_key.expose() == dev.rewards.voucher_key.expose() {
            out.push(format!(
                "server.bind {} is not loopback while rewards.voucher_key is the development key: set HEYBLUE__REWARDS__VOUCHER_KEY",
                self.server.bind
            ));
        }
        out
    }

    /// The layered sources, for callers that add their own (tests).
    pub fn figment(overlay: Option<&Path>) -> Figment {
        let mut f = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = overlay {
            f = f.merge(Toml::file_exact(path));
        }
        f.merge(Env::prefixed("HEYBLUE__").split("__"))
    }

    /// The embedded defaults alone (tests and tools).
    pub fn defaults() -> Self {
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("embedded defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_hide_secret() {
        let s = Settings::defaults();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.limits.max_frame_bytes, 4096);
        assert!(!format!("{s:?}").contains("heyblue-dev-secret"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type is fixed by figment
    fn unknown_keys_are_refused_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[citizen]\nproximty_m = 75.0\n")?;
            let e = Settings::load(Some(Path::new("typo.toml"))).unwrap_err();
            assert!(e.to_string().contains("proximty_m"), "{e}");
            jail.create_file("section.toml", "[citzen]\nproximity_m = 75.0\n")?;
            let e = Settings::load(Some(Path::new("section.toml"))).unwrap_err();
            assert!(e.to_string().contains("citzen"), "{e}");
            jail.set_env("HEYBLUE__CITIZEN__PUSH_INTERVL_MS", "250");
            let e = Settings::load(None).unwrap_err();
            assert!(e.to_string().contains("push_intervl_ms"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type is fixed by figment
    fn contradicting_values_are_refused_together() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HEYBLUE__CITIZEN__MIN_RADIUS_M", "20000");
            jail.set_env("HEYBLUE__LIMITS__OUTBOUND_QUEUE", "0");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("citizen.min_radius_m"), "{e}");
            assert!(e.contains("limits.outbound_queue"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type is fixed by figment
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("over.toml", "[citizen]\nproximity_m = 75.0\n")?;
            jail.set_env("HEYBLUE__SERVER__NODE_ID", "node-7");
            jail.set_env("HEYBLUE__CITIZEN__PUSH_INTERVAL_MS", "250");
            let s = Settings::load(Some(Path::new("over.toml"))).unwrap();
            assert_eq!(s.server.node_id, "node-7");
            assert_eq!(s.citizen.push_interval_ms, 250);
            assert_eq!(s.citizen.proximity_m, 75.0);
            Ok(())
        });
    }
}
