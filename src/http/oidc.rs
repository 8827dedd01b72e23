//! OpenID Connect tokens (RS256 and ES256) from the issuers under `auth.oidc`, beside the
//! HS256 development tokens. Each issuer's keys come from its JWKS URL: fetched on first
//! use, kept, and fetched again when a token names a key id not in them (a rotation) — at
//! most once per `auth.jwks_refresh_min_s`, so tokens with made-up key ids cannot make the
//! server hammer the issuer. `iss`, `aud`, `exp` and `nbf` are checked for every token;
//! the role comes from the issuer's configured claim, or its default role.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::RwLock;

use super::auth::{Claims, display_name, refusal};
use super::error::ApiError;
use crate::config::OidcIssuer;
use crate::protocol::Role;

/// The configured issuers and their keys.
pub struct Oidc {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    refresh_min: Duration,
}

struct Issuer {
    cfg: OidcIssuer,
    /// Key id → algorithm and key; and when they were last fetched. Known keys are read
    /// under the shared lock; a fetch holds the exclusive one across the request, so there
    /// is one fetch at a time per issuer and the others wait for its keys.
    keys: RwLock<Keys>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unauthorized("invalid_token", message)
}

impl Oidc {
    /// The issuers of `cfg`; keys are fetched when first needed.
    pub fn new(cfg: &[OidcIssuer], refresh_min: Duration, timeout: Duration) -> Self {
        Self {
            issuers: cfg
                .iter()
                .map(|c| Issuer {
                    cfg: c.clone(),
                    keys: RwLock::new(Keys::default()),
                })
                .collect(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client with a timeout"),
            refresh_min,
        }
    }

    /// The claims of an RS256 or ES256 token from a configured issuer.
    pub async fn verify(&self, token: &str, alg: Algorithm) -> Result<Claims, ApiError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| invalid("the token is not valid"))?;
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token names no key (kid)"))?;
        let iss = unverified_issuer(token).ok_or_else(|| invalid("the token names no issuer"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.cfg.issuer == iss)
            .ok_or_else(|| invalid("the token's issuer is not one this server trusts"))?;
        let key = self.key(issuer, &kid, alg).await?;
        let mut v = Validation::new(alg);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_issuer(&[&issuer.cfg.issuer]);
        v.set_audience(&[&issuer.cfg.audience]);
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| refusal(&e))?;
        claims(&issuer.cfg, data.claims)
    }

    /// The key `kid` of `issuer` for `alg`, fetching the issuer's keys when it is not
    /// known (at most once per `refresh_min`).
    async fn key(
        &self,
        issuer: &Issuer,
        kid: &str,
        alg: Algorithm,
    ) -> Result<DecodingKey, ApiError> {
        if let Some(found) = pick(&*issuer.keys.read().await, kid, alg) {
            return found;
        }
        let mut keys = issuer.keys.write().await;
        if !keys.by_kid.contains_key(kid) {
            let may = keys.fetched.is_none_or(|t| t.elapsed() >= self.refresh_min);
            if !may {
                metrics::counter!("oidc_unknown_keys_total").increment(1);
                return Err(invalid("the token's key is not one of its issuer's"));
            }
            keys.fetched = Some(Instant::now());
            match self.fetch(&issuer.cfg).await {
                Ok(fresh) => {
                    metrics::counter!("oidc_jwks_fetches_total", "result" => "ok").increment(1);
                    tracing::info!(issuer = %issuer.cfg.issuer, keys = fresh.len(), "OIDC keys fetched");
                    keys.by_kid = fresh;
                }
                Err(e) => {
                    metrics::counter!("oidc_jwks_fetches_total", "result" => "failed").increment(1);
                    tracing::warn!(issuer = %issuer.cfg.issuer, "OIDC keys not fetched: {e:#}");
                    return Err(ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the token's issuer could not be reached to check it; try again",
                    ));
                }
            }
        }
        pick(&keys, kid, alg)
            .unwrap_or_else(|| Err(invalid("the token's key is not one of its issuer's")))
    }

    async fn fetch(
        &self,
        cfg: &OidcIssuer,
    ) -> anyhow::Result<HashMap<String, (Algorithm, DecodingKey)>> {
        let set: JwkSet = self
            .http
            .get(&cfg.jwks_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut out = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (_, Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (_, Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
                (jsonwebtoken::jwk::AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
                (jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_), None) => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                out.insert(kid, (alg, key));
            }
        }
        Ok(out)
    }
}

/// Key `kid` of `keys` if known: the key, or a refusal when its algorithm is not `alg`.
fn pick(keys: &Keys, kid: &str, alg: Algorithm) -> Option<Result<DecodingKey, ApiError>> {
    keys.by_kid.get(kid).map(|(a, k)| {
        if *a == alg {
            Ok(k.clone())
        } else {
            Err(invalid("the token's algorithm is not its key's"))
        }
    })
}

/// The `iss` of a token, read before its signature is checked (to pick the keys that
/// check it).
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.trim_end_matches('=').as_bytes())
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// The server's claims from a verified OIDC token.
fn claims(cfg: &OidcIssuer, c: Value) -> Result<Claims, ApiError> {
    let sub = c["sub"].as_str().unwrap_or_default().to_owned();
    if sub.is_empty() || sub.len() > 128 {
        return Err(invalid("sub must be 1..=128 bytes"));
    }
    let role = match c.get(&cfg.role_claim) {
        None | Some(Value::Null) => cfg.default_role,
        Some(v) => v
            .as_str()
            .and_then(parse_role)
            .ok_or_else(|| invalid(format!("the {} claim names no role", cfg.role_claim)))?,
    };
    let name = match c.get("name").and_then(Value::as_str) {
        None => None,
        Some(raw) => Some(
            display_name(raw)
                .ok_or_else(|| {
                    invalid("name must be 1..=60 characters without control characters")
                })?
                .to_owned(),
        ),
    };
    Ok(Claims {
        sub,
        role,
        exp: c["exp"].as_u64().unwrap_or_default(),
        name,
        nbf: c["nbf"].as_u64(),
    })
}

/// A role by its wire name.
pub fn parse_role(s: &str) -> Option<Role> {
    match s {
        "officer" => Some(Role::Officer),
        "citizen" => Some(Role::Citizen),
        "admin" => Some(Role::Admin),
        "retailer" => Some(Role::Retailer),
        _ => None,
    }
}
