//! External identity providers (DESIGN §4b; SECURITY.md T1–T5): JWTs signed by a
//! configured issuer, verified against its JWKS (a file, or a URL fetched with a cache),
//! naming the tenant in a configured claim. The algorithm comes from the issuer's
//! allow-list, never from the token; a key is only ever looked up by `kid` in the
//! issuer's own JWKS (`jku`, `x5u` and embedded `jwk` headers are ignored); `oct`
//! (shared-secret) keys are refused. When the JWKS cannot be fetched, keys already
//! known keep working and unknown key ids get 503 (retryable), never 401.
//!
//! Unknown key ids are a stranger's lever on the identity provider (T5): one fetch is in
//! flight per issuer at a time, every request that waited for it takes its result, and
//! inside the cooldown an unknown kid is answered from the last fetch without fetching.

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

/// An issuer that cannot be set up (its JWKS client cannot be built): the relay does not
/// start, a reload is refused.
#[derive(Debug, thiserror::Error)]
#[error("issuer {issuer}: cannot build the JWKS client: {message}")]
pub struct IssuerSetupError {
    pub issuer: String,
    pub message: String,
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
    /// One fetch in flight per issuer. A request that waited here while another fetch
    /// completed uses that fetch's result (see [`KeySet::attempts`]) instead of
    /// fetching again, so a spray of unknown key ids costs one fetch, not one each.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    without_kid: Vec<Arc<DecodingKey>>,
    last_attempt: Option<Instant>,
    last_attempt_failed: bool,
    /// Completed fetch attempts: a waiter that sees it move knows a fetch finished
    /// while it waited, and answers from that fetch.
    attempts: u64,
}

/// What the key set said about a key it does not hold, read under one lock so the
/// answer and the fetch bookkeeping belong together.
#[derive(Clone, Copy, Debug)]
struct Missing {
    attempts: u64,
    last_attempt: Option<Instant>,
    last_attempt_failed: bool,
}

impl Missing {
    /// Whether the unknown-kid cooldown allows a fetch now.
    fn cooldown_over(&self, cooldown: std::time::Duration) -> bool {
        self.last_attempt.is_none_or(|at| at.elapsed() >= cooldown)
    }
}

impl Issuer {
    /// An issuer with its one JWKS client: bounded by `jwks_timeout`, following no
    /// redirect. A client that cannot be built with that policy is an error, never
    /// replaced by one without it.
    pub fn new(config: IssuerConfig) -> Result<Issuer, IssuerSetupError> {
        let http = reqwest::Client::builder()
            .timeout(config.jwks_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("promgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| IssuerSetupError {
                issuer: config.issuer.clone(),
                message: err.to_string(),
            })?;
        Ok(Issuer {
            config,
            keys: RwLock::new(KeySet::default()),
            http,
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.issuer
    }

    /// Whether `algorithm` is on the issuer's allow-list.
    pub fn accepts_algorithm(&self, algorithm: jsonwebtoken::Algorithm) -> bool {
        self.config.algorithms.contains(&algorithm)
    }

    /// Fetches (or reads) the JWKS now and replaces the known keys on success.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _one_at_a_time = self.fetching.lock().await;
        self.fetch_while_holding_the_lock().await
    }

    /// The fetch itself; the caller holds `fetching`.
    async fn fetch_while_holding_the_lock(&self) -> Result<usize, String> {
        let result = self.load_keys().await;
        let mut keys = self.keys.write();
        keys.last_attempt = Some(Instant::now());
        keys.last_attempt_failed = result.is_err();
        keys.attempts = keys.attempts.wrapping_add(1);
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

    /// Refreshes every `jwks_refresh` for as long as the issuer is in use; ends once the
    /// issuer is dropped (a config reload replaced it).
    pub fn spawn_refresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.config.jwks_refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(issuer) = weak.upgrade() else {
                    return;
                };
                let _ = issuer.refresh().await;
            }
        });
    }

    async fn load_keys(
        &self,
    ) -> Result<(HashMap<String, Arc<DecodingKey>>, Vec<Arc<DecodingKey>>), String> {
        let text = match &self.config.jwks {
            JwksSource::File(path) => {
                use tokio::io::AsyncReadExt;
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|err| format!("{}: {err}", path.display()))?;
                // One byte past the cap is enough to know it is too large.
                let mut bytes = Vec::new();
                file.take(MAX_JWKS_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
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
                // Read chunk by chunk under the cap: a body without (or lying about) its
                // length is dropped as soon as it passes the cap.
                let mut response = response;
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|err| format!("reading the JWKS failed: {err}"))?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err("JWKS is larger than 1 MiB".into());
                    }
                    body.extend_from_slice(&chunk);
                }
                body
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
        if !self.accepts_algorithm(algorithm) {
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

    /// The key named by the token's `kid`. An unknown kid triggers at most one fetch per
    /// cooldown, shared by every request that was waiting for it; inside the cooldown it
    /// is answered from the last fetch without fetching: 401 if that fetch succeeded,
    /// 503 if it failed.
    async fn key_for(&self, header: &Header) -> Result<Arc<DecodingKey>, IssuerError> {
        let before_waiting = match self.lookup(header) {
            Ok(key) => return Ok(key),
            Err(missing) => missing,
        };
        if !before_waiting.cooldown_over(self.config.jwks_cooldown) {
            return Err(self.missing_key(header, before_waiting));
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Look again under the lock: the fetch this request waited for may have brought
        // the key, or have found it missing; either way it is the answer.
        let after_waiting = match self.lookup(header) {
            Ok(key) => return Ok(key),
            Err(missing) => missing,
        };
        if after_waiting.attempts != before_waiting.attempts
            || !after_waiting.cooldown_over(self.config.jwks_cooldown)
        {
            return Err(self.missing_key(header, after_waiting));
        }
        if let Err(err) = self.fetch_while_holding_the_lock().await {
            return Err(IssuerError::Unavailable(format!(
                "the keys of issuer {} cannot be fetched: {err}",
                self.config.issuer
            )));
        }
        match self.lookup(header) {
            Ok(key) => Ok(key),
            Err(missing) => Err(self.missing_key(header, missing)),
        }
    }

    /// The answer for a key the last fetch did not bring: 503 when that fetch failed
    /// (the key may exist; the sender retries), 401 when it succeeded.
    fn missing_key(&self, header: &Header, missing: Missing) -> IssuerError {
        if missing.last_attempt_failed {
            return IssuerError::Unavailable(format!(
                "the keys of issuer {} are unavailable; retry later",
                self.config.issuer
            ));
        }
        IssuerError::Invalid(match &header.kid {
            Some(kid) => format!("unknown key id {kid:?} for issuer {}", self.config.issuer),
            None => "token names no key id and the issuer has no single key to use".into(),
        })
    }

    /// The key for `header`, or the state of the key set that does not hold it.
    fn lookup(&self, header: &Header) -> Result<Arc<DecodingKey>, Missing> {
        let keys = self.keys.read();
        let found = match &header.kid {
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
        };
        found.ok_or(Missing {
            attempts: keys.attempts,
            last_attempt: keys.last_attempt,
            last_attempt_failed: keys.last_attempt_failed,
        })
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
    /// until the keys can be had) and starts their refresh. Fails, before fetching
    /// anything, when an issuer's JWKS client cannot be built.
    pub async fn start(configs: &[IssuerConfig]) -> Result<Issuers, IssuerSetupError> {
        let issuers = configs
            .iter()
            .map(|config| Issuer::new(config.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_name = HashMap::new();
        for issuer in issuers {
            match issuer.refresh().await {
                Ok(count) => {
                    tracing::info!(issuer = %issuer.name(), keys = count, "loaded issuer keys")
                }
                Err(err) => {
                    tracing::warn!(issuer = %issuer.name(), error = %err, "issuer keys unavailable at start")
                }
            }
            issuer.spawn_refresh();
            by_name.insert(issuer.config.issuer.clone(), issuer);
        }
        Ok(Issuers { by_name })
    }

    /// The issuers of a reloaded config. One whose settings did not change is kept with
    /// the keys it holds (a `jwks_file` is read again; a `jwks_url` is left to its refresh),
    /// so a reload while an identity provider is down loses nothing; the others start as
    /// at start-up, and those no longer configured stop refreshing once unused.
    pub async fn restart(
        configs: &[IssuerConfig],
        running: &Issuers,
    ) -> Result<Issuers, IssuerSetupError> {
        let mut fresh = Vec::new();
        let mut by_name = HashMap::new();
        for config in configs {
            match running.by_name.get(&config.issuer) {
                Some(issuer) if issuer.config == *config => {
                    if matches!(config.jwks, JwksSource::File(_)) {
                        // A failure is logged and keeps the keys already known.
                        let _ = issuer.refresh().await;
                    }
                    by_name.insert(config.issuer.clone(), Arc::clone(issuer));
                }
                _ => fresh.push(config.clone()),
            }
        }
        by_name.extend(Issuers::start(&fresh).await?.by_name);
        Ok(Issuers { by_name })
    }

    pub fn get(&self, issuer: &str) -> Option<&Arc<Issuer>> {
        self.by_name.get(issuer)
    }
}
