//! External identity providers (DESIGN §4b; SECURITY.md T1–T5): JWTs signed by a
//! configured issuer, verified against its JWKS (a file, or a URL fetched with a cache),
//! naming the tenant in a configured claim. The algorithm comes from the issuer's
//! allow-list, never from the token; a key is only ever looked up by `kid` in the
//! issuer's own JWKS (`jku`, `x5u` and embedded `jwk` headers are ignored); `oct`
//! (shared-secret) keys are refused. When the JWKS cannot be fetched, keys already
//! known keep working and unknown key ids get 503 (retryable), never 401.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{DecodingKey, Header, Validation};
use parking_lot::RwLock;

use crate::config::{IssuerConfig, JwksSource};

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Clock skew tolerated on `exp` and `nbf` (SECURITY.md §4).
const LEEWAY_SECONDS: u64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IssuerError {
    /// The token is not acceptable: 401.
    #[error("{0}")]
    Invalid(String),
    /// The issuer's keys cannot be had right now: 503, the sender retries.
    #[error("{0}")]
    Unavailable(String),
}

/// What a verified external token says.
#[derive(Clone, Debug)]
pub struct ExternalIdentity {
    pub tenant_id: String,
    pub expires_at: i64,
}

pub struct Issuer {
    config: IssuerConfig,
    keys: RwLock<KeySet>,
    http: reqwest::Client,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    without_kid: Vec<Arc<DecodingKey>>,
    last_attempt: Option<Instant>,
    last_attempt_failed: bool,
}

impl Issuer {
    pub fn new(config: IssuerConfig) -> Issuer {
        let http = reqwest::Client::builder()
            .timeout(config.jwks_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("promgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Issuer {
            config,
            keys: RwLock::new(KeySet::default()),
            http,
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.issuer
    }

    /// Fetches (or reads) the JWKS now and replaces the known keys on success.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _one_at_a_time = self.fetching.lock().await;
        let result = self.load_keys().await;
        let mut keys = self.keys.write();
        keys.last_attempt = Some(Instant::now());
        keys.last_attempt_failed = result.is_err();
        match result {
            Ok((by_kid, without_kid)) => {
                let count = by_kid.len() + without_kid.len();
                keys.by_kid = by_kid;
                keys.without_kid = without_kid;
                Ok(count)
            }
            Err(err) => {
                tracing::warn!(issuer = %self.config.issuer, error = %err, "JWKS refresh failed; keeping the keys already known");
                Err(err)
            }
        }
    }

    /// Refreshes every `jwks_refresh` for as long as the process runs.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let issuer = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(issuer.config.jwks_refresh).await;
                let _ = issuer.refresh().await;
            }
        });
    }

    async fn load_keys(
        &self,
    ) -> Result<(HashMap<String, Arc<DecodingKey>>, Vec<Arc<DecodingKey>>), String> {
        let text = match &self.config.jwks {
            JwksSource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|err| format!("{}: {err}", path.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err("JWKS file is larger than 1 MiB".into());
                }
                bytes
            }
            JwksSource::Url(url) => {
                let response = self
                    .http
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|err| format!("fetching the JWKS failed: {err}"))?;
                if !response.status().is_success() {
                    return Err(format!("the JWKS URL answered {}", response.status()));
                }
                if response
                    .content_length()
                    .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
                {
                    return Err("JWKS is larger than 1 MiB".into());
                }
                let body = response
                    .bytes()
                    .await
                    .map_err(|err| format!("reading the JWKS failed: {err}"))?;
                if body.len() > MAX_JWKS_BYTES {
                    return Err("JWKS is larger than 1 MiB".into());
                }
                body.to_vec()
            }
        };
        let set: JwkSet =
            serde_json::from_slice(&text).map_err(|err| format!("JWKS is not valid: {err}"))?;
        let mut by_kid = HashMap::new();
        let mut without_kid = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                tracing::warn!(issuer = %self.config.issuer, kid = ?jwk.common.key_id, "ignoring an oct (shared-secret) key in the JWKS");
                continue;
            }
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(key) => Arc::new(key),
                Err(err) => {
                    tracing::warn!(issuer = %self.config.issuer, kid = ?jwk.common.key_id, error = %err, "ignoring an unusable JWKS key");
                    continue;
                }
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => without_kid.push(key),
            }
        }
        Ok((by_kid, without_kid))
    }

    /// Verifies a token of this issuer and names its tenant.
    pub async fn verify(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<ExternalIdentity, IssuerError> {
        let algorithm = header.alg;
        if !self.config.algorithms.contains(&algorithm) {
            return Err(IssuerError::Invalid(format!(
                "algorithm {algorithm:?} is not accepted for issuer {}",
                self.config.issuer
            )));
        }
        let key = self.key_for(header).await?;
        if key.family() != algorithm.family() {
            return Err(IssuerError::Invalid(
                "the key does not match the token's algorithm".into(),
            ));
        }
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|err| IssuerError::Invalid(format!("invalid token: {err}")))?;
        let claims = data.claims;
        let tenant_id = claims
            .get(&self.config.tenant_claim)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                IssuerError::Invalid(format!(
                    "token has no string claim {:?}",
                    self.config.tenant_claim
                ))
            })?
            .to_string();
        let expires_at = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        Ok(ExternalIdentity {
            tenant_id,
            expires_at,
        })
    }

    /// The key named by the token's `kid`; an unknown kid triggers one fetch per cooldown.
    async fn key_for(&self, header: &Header) -> Result<Arc<DecodingKey>, IssuerError> {
        if let Some(key) = self.lookup(header) {
            return Ok(key);
        }
        let (may_fetch, last_failed) = {
            let keys = self.keys.read();
            let may_fetch = keys
                .last_attempt
                .is_none_or(|at| at.elapsed() >= self.config.jwks_cooldown);
            (may_fetch, keys.last_attempt_failed)
        };
        if may_fetch {
            if let Err(err) = self.refresh().await {
                return Err(IssuerError::Unavailable(format!(
                    "the keys of issuer {} cannot be fetched: {err}",
                    self.config.issuer
                )));
            }
            if let Some(key) = self.lookup(header) {
                return Ok(key);
            }
        } else if last_failed {
            return Err(IssuerError::Unavailable(format!(
                "the keys of issuer {} are unavailable; retry later",
                self.config.issuer
            )));
        }
        Err(IssuerError::Invalid(match &header.kid {
            Some(kid) => format!("unknown key id {kid:?} for issuer {}", self.config.issuer),
            None => "token names no key id and the issuer has no single key to use".into(),
        }))
    }

    fn lookup(&self, header: &Header) -> Option<Arc<DecodingKey>> {
        let keys = self.keys.read();
        match &header.kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None => {
                let family = header.alg.family();
                let mut candidates = keys
                    .by_kid
                    .values()
                    .chain(&keys.without_kid)
                    .filter(|key| key.family() == family);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(Arc::clone(only)),
                    _ => None,
                }
            }
        }
    }
}

/// Seconds a sender should wait before retrying while an issuer's keys are unavailable.
pub const UNAVAILABLE_RETRY_SECONDS: u64 = 5;

/// The configured issuers, by `iss`.
#[derive(Default)]
pub struct Issuers {
    by_name: HashMap<String, Arc<Issuer>>,
}

impl Issuers {
    /// Loads every issuer's keys once (a failure is logged, not fatal: its tokens get 503
    /// until the keys can be had) and starts their refresh.
    pub async fn start(configs: &[IssuerConfig]) -> Issuers {
        let mut by_name = HashMap::new();
        for config in configs {
            let issuer = Arc::new(Issuer::new(config.clone()));
            match issuer.refresh().await {
                Ok(count) => {
                    tracing::info!(issuer = %issuer.name(), keys = count, "loaded issuer keys")
                }
                Err(err) => {
                    tracing::warn!(issuer = %issuer.name(), error = %err, "issuer keys unavailable at start")
                }
            }
            issuer.spawn_refresh();
            by_name.insert(config.issuer.clone(), issuer);
        }
        Issuers { by_name }
    }

    pub fn get(&self, issuer: &str) -> Option<&Arc<Issuer>> {
        self.by_name.get(issuer)
    }
}
