//! Bearer tokens (HS256 JWTs) and the single-use WebSocket tickets of the orchestrator.

use std::sync::Arc;
use std::time::Duration;

// Tokio's clock: tests advance it instead of sleeping for a ticket to expire.
use tokio::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use crate::geo::{LatLon, ZipId};
use crate::protocol::Role;

/// Token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Account id.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Not valid before (seconds since the epoch), if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Most characters of a display name, once trimmed (`PATCH /v1/me` and a token's `name`).
pub const DISPLAY_NAME_MAX: usize = 60;

/// A display name as stored and shown: trimmed, 1..=60 characters, no control characters;
/// `None` when it breaks the rule.
pub fn display_name(raw: &str) -> Option<&str> {
    let name = raw.trim();
    let chars = name.chars().count();
    ((1..=DISPLAY_NAME_MAX).contains(&chars) && !name.chars().any(char::is_control)).then_some(name)
}

/// Signs and verifies tokens: HS256 development tokens, and OpenID Connect tokens from
/// the configured issuers.
#[derive(Clone)]
pub struct Auth {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    oidc: Option<Arc<super::oidc::Oidc>>,
}

impl Auth {
    /// Keys from the HS256 secret.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            enc: EncodingKey::from_secret(secret.as_bytes()),
            dec: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            oidc: None,
        }
    }

    /// The HS256 secret and the OpenID Connect issuers of `cfg`.
    pub fn from_settings(cfg: &crate::config::AuthSettings) -> Self {
        let mut auth = Self::new(cfg.jwt_secret.expose());
        if !cfg.oidc.is_empty() {
            auth.oidc = Some(Arc::new(super::oidc::Oidc::new(
                &cfg.oidc,
                Duration::from_secs(cfg.jwks_refresh_min_s),
                Duration::from_millis(cfg.jwks_timeout_ms),
            )));
        }
        auth
    }

    /// A signed token valid for `ttl`.
    pub fn mint(&self, role: Role, sub: &str, name: Option<&str>, ttl: Duration) -> String {
        let exp = (chrono::Utc::now().timestamp().max(0) as u64) + ttl.as_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp,
            name: name.map(str::to_owned),
            nbf: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing cannot fail")
    }

    /// The claims of a valid token: HS256 with the secret, or RS256/ES256 from a
    /// configured OpenID Connect issuer.
    pub async fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let alg = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("invalid_token", "the token is not valid"))?
            .alg;
        match (alg, &self.oidc) {
            (Algorithm::HS256, _) => self.verify_hs256(token),
            (Algorithm::RS256 | Algorithm::ES256, Some(oidc)) => oidc.verify(token, alg).await,
            _ => Err(ApiError::unauthorized(
                "invalid_token",
                "the token's algorithm is not accepted here",
            )),
        }
    }

    fn verify_hs256(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|e| refusal(&e))?;
        let mut c = data.claims;
        if c.sub.is_empty() || c.sub.len() > 128 {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "sub must be 1..=128 bytes",
            ));
        }
        if let Some(raw) = &c.name {
            let Some(name) = display_name(raw) else {
                return Err(ApiError::unauthorized(
                    "invalid_token",
                    "name must be 1..=60 characters without control characters",
                ));
            };
            c.name = Some(name.to_owned());
        }
        Ok(c)
    }
}

/// What a client is told about a token that did not verify (HS256 and OpenID Connect
/// alike).
pub fn refusal(e: &jsonwebtoken::errors::Error) -> ApiError {
    use jsonwebtoken::errors::ErrorKind;
    let (code, message) = match e.kind() {
        ErrorKind::ExpiredSignature => ("token_expired", "the token has expired"),
        ErrorKind::ImmatureSignature => ("token_not_yet_valid", "the token's nbf is in the future"),
        ErrorKind::InvalidAudience => ("invalid_token", "the token is for another audience"),
        ErrorKind::InvalidIssuer => ("invalid_token", "the token's issuer does not match"),
        _ => ("invalid_token", "the token is not valid"),
    };
    ApiError::unauthorized(code, message)
}

/// The caller of an authenticated route.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl Caller {
    /// Refuses other roles with 403.
    pub fn require(&self, role: Role) -> Result<&Claims, ApiError> {
        if self.0.role == role {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "this endpoint is for role {}",
                role.as_str()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing_token",
                    "an Authorization: Bearer token is required",
                )
            })?;
        // The scheme is case-insensitive (RFC 7235).
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| ApiError::unauthorized("invalid_token", "expected a Bearer token"))?;
        state.auth.verify(token.trim()).await.map(Caller)
    }
}

/// What a ticket grants: one session for this account, role and first position.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Account id.
    pub account: Arc<str>,
    /// Display name.
    pub display_name: Arc<str>,
    /// Role.
    pub role: Role,
    /// First position.
    pub pos: LatLon,
    /// Its region.
    pub zip: ZipId,
    /// Distance to the region's centroid.
    pub d0: f64,
    /// The node that issued it (tickets are only valid there).
    pub node: String,
    expires: Instant,
}

impl Ticket {
    /// A ticket for `ttl` from now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        account: Arc<str>,
        display_name: Arc<str>,
        role: Role,
        pos: LatLon,
        zip: ZipId,
        d0: f64,
        node: String,
        ttl: Duration,
    ) -> Self {
        Self {
            account,
            display_name,
            role,
            pos,
            zip,
            d0,
            node,
            expires: Instant::now() + ttl,
        }
    }
}

/// Issued, unused tickets of this node (bounded).
pub struct Tickets {
    map: DashMap<String, Ticket>,
    max: usize,
}

impl Tickets {
    /// A store holding at most `max` tickets.
    pub fn new(max: usize) -> Self {
        Self {
            map: DashMap::new(),
            max,
        }
    }

    /// Stores a ticket and returns its secret id (128 random bits, hex).
    pub fn issue(&self, t: Ticket) -> Result<String, ApiError> {
        if self.map.len() >= self.max {
            self.sweep();
            if self.map.len() >= self.max {
                metrics::counter!("tickets_refused_total").increment(1);
                return Err(ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "too_many_tickets",
                    "too many sessions are being opened; retry shortly",
                ));
            }
        }
        let id = format!("{:032x}", rand::rng().random::<u128>());
        self.map.insert(id.clone(), t);
        Ok(id)
    }

    /// Takes a ticket (single use); `None` if unknown, used or expired.
    pub fn redeem(&self, id: &str, node: &str) -> Option<Ticket> {
        let (_, t) = self.map.remove(id)?;
        (t.expires > Instant::now() && t.node == node).then_some(t)
    }

    /// Drops expired tickets.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.map.retain(|_, t| t.expires > now);
    }

    /// Outstanding tickets.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none are outstanding.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
