//! Who is calling: credentials to a tenant (DESIGN §4, §6 step 2). The tenant comes
//! from authentication alone; headers such as `X-Scope-OrgID` never choose it.

pub mod issuers;
pub mod mtls;
pub mod restricted;
pub mod secrets;
pub mod tokens;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::AppError;
use crate::tenant::{Registry, TenantEntry, TenantStatus};
use issuers::{IssuerError, Issuers};
use mtls::ClientCertificate;
use restricted::RestrictedVerifications;
use tokens::{TokenSigner, MAX_TOKEN_BYTES};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("unknown token")]
    UnknownToken,
    #[error("token has been revoked")]
    Revoked,
    #[error("tenant {0:?} is not registered")]
    UnknownTenant(String),
    #[error("tenant {0:?} is disabled")]
    DisabledTenant(String),
    #[error("client certificate is not registered to a tenant")]
    UnregisteredCertificate,
    #[error("client certificate names identities of different tenants")]
    AmbiguousCertificate,
    #[error("client certificate and bearer token name different tenants")]
    ConflictingCredentials,
    /// An identity provider's keys cannot be had right now: retryable.
    #[error("{0}")]
    Unavailable(String),
    /// The source address failed to authenticate too often lately, and this credential
    /// is neither one already known good nor a fresh token of a configured issuer with a
    /// signature check left for the address: it is not even verified.
    #[error("too many failed authentications from this address; retry later")]
    Throttled { retry_after_seconds: u64 },
    /// Too many unknown credentials are being verified at once; retryable.
    #[error("too many credentials are being verified at once; retry later")]
    Overloaded,
}

impl AuthError {
    /// A fixed label for the auth-failure metric.
    pub fn cause(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::UnknownToken => "unknown_token",
            AuthError::Revoked => "revoked",
            AuthError::UnknownTenant(_) => "unknown_tenant",
            AuthError::DisabledTenant(_) => "disabled_tenant",
            AuthError::Unavailable(_) => "issuer_unavailable",
            AuthError::UnregisteredCertificate => "unregistered_certificate",
            AuthError::AmbiguousCertificate => "ambiguous_certificate",
            AuthError::ConflictingCredentials => "conflicting_credentials",
            AuthError::Throttled { .. } => "auth_failures_throttled",
            AuthError::Overloaded => "verification_overloaded",
        }
    }
}

impl From<AuthError> for AppError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::UnknownTenant(_) | AuthError::DisabledTenant(_) => {
                AppError::Forbidden(err.to_string())
            }
            AuthError::Unavailable(message) => AppError::Unavailable {
                message,
                retry_after_seconds: issuers::UNAVAILABLE_RETRY_SECONDS,
            },
            AuthError::Throttled {
                retry_after_seconds,
            } => AppError::TooManyRequests {
                message: err.to_string(),
                retry_after_seconds,
            },
            AuthError::Overloaded => AppError::Unavailable {
                message: err.to_string(),
                retry_after_seconds: 1,
            },
            _ => AppError::Unauthenticated(err.to_string()),
        }
    }
}

/// Extracts the token of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    if value.len() > MAX_TOKEN_BYTES + 16 {
        return Err(AuthError::Malformed);
    }
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

pub struct Authenticator {
    signer: TokenSigner,
    /// Replaced by a config reload.
    issuers: arc_swap::ArcSwap<Issuers>,
    registry: Arc<Registry>,
    /// Tokens whose signature and claims already verified, by SHA-256 of the whole token:
    /// a signature check per request would cost more than decoding a small write.
    /// Only an exact token matches; expiry is checked on every hit; revocation and tenant
    /// status are looked up on every request as before.
    verified: DashMap<[u8; 32], VerifiedToken>,
    /// Permits for verifying tokens the cache does not know.
    verifying: tokio::sync::Semaphore,
    /// Signature checks for configured issuers' tokens from restricted addresses.
    restricted_verifications: RestrictedVerifications,
}

#[derive(Clone, Debug)]
struct VerifiedToken {
    tenant_id: String,
    /// The `jti` of a token promgate issued (checked against the registry on every
    /// request); `None` for an external issuer's token.
    issued_token_id: Option<String>,
    expires_at: i64,
}

/// Verified tokens remembered at once beyond the issued tokens the registry holds (each
/// of those may be in use at once: with 200 000 of them, a fixed cap would have the cache
/// start over constantly and every request check a signature); the cache starts over
/// when full.
const MAX_VERIFIED_TOKENS: usize = 10_000;
/// Unknown tokens verified at once (signature checks are quick; an external issuer's
/// may wait up to its JWKS fetch timeout).
const MAX_CONCURRENT_VERIFICATIONS: usize = 256;

impl Authenticator {
    pub fn new(signer: TokenSigner, issuers: Issuers, registry: Arc<Registry>) -> Authenticator {
        Authenticator {
            signer,
            issuers: arc_swap::ArcSwap::from_pointee(issuers),
            registry,
            verified: DashMap::new(),
            verifying: tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            restricted_verifications: RestrictedVerifications::default(),
        }
    }

    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// The issuers in force.
    pub fn issuers(&self) -> Arc<Issuers> {
        self.issuers.load_full()
    }

    /// Takes a reloaded config's issuers. Every remembered verification is forgotten, so a
    /// token of an issuer now gone, or checked against an old audience, is checked again.
    pub fn replace_issuers(&self, issuers: Issuers) {
        self.issuers.store(std::sync::Arc::new(issuers));
        self.verified.clear();
    }

    /// Maps the request's credentials (a bearer token, a verified client certificate, or
    /// both naming the same tenant) to an active tenant, from the in-memory registry.
    ///
    /// `restriction` is set when the source address failed too often lately: then
    /// credentials already known good pass (a token whose signature verified before and
    /// is still cached, a token promgate issued whose id the registry holds, a registered
    /// client certificate), and so does a token that names a configured external issuer
    /// and one of its algorithms, verified within the address's few signature checks
    /// (see [`restricted`]): identity providers rotate their tokens, so their users'
    /// tokens are often new. Any other token is refused before a signature is checked.
    /// Strangers behind a shared address thus cannot lock out the tenants behind it.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
        restriction: Option<Restriction>,
    ) -> Result<Arc<TenantEntry>, AuthError> {
        let certificate_tenant = match certificate {
            Some(certificate) => self.tenant_of_certificate(certificate)?,
            None => None,
        };
        let token_tenant = match bearer_token(headers) {
            Ok(token) => Some(self.tenant_of_token(token, restriction).await?),
            Err(AuthError::Missing) => None,
            Err(err) => return Err(err),
        };
        let tenant_id = match (certificate_tenant, token_tenant) {
            (Some(from_certificate), Some(from_token)) if from_certificate != from_token => {
                return Err(AuthError::ConflictingCredentials)
            }
            (Some(tenant), _) | (None, Some(tenant)) => tenant,
            (None, None) if certificate.is_some() => {
                return Err(AuthError::UnregisteredCertificate)
            }
            (None, None) => return Err(AuthError::Missing),
        };
        let entry = self
            .registry
            .tenant(&tenant_id)
            .ok_or_else(|| self.unknown(AuthError::UnknownTenant(tenant_id.clone())))?;
        if entry.tenant.status != TenantStatus::Active {
            return Err(AuthError::DisabledTenant(tenant_id));
        }
        Ok(entry)
    }

    /// An identity the cache does not know is refused, unless the registry database is
    /// unreachable: then it may be new, and the sender should retry (503), not drop.
    fn unknown(&self, err: AuthError) -> AuthError {
        if self.registry.store_healthy() {
            err
        } else {
            AuthError::Unavailable("the registry database is unavailable; retry later".into())
        }
    }

    /// The tenant every registered SAN of the certificate names; SANs naming different
    /// tenants make the certificate ambiguous.
    fn tenant_of_certificate(
        &self,
        certificate: &ClientCertificate,
    ) -> Result<Option<String>, AuthError> {
        let mut tenant: Option<String> = None;
        for san in certificate.sans() {
            if let Some(owner) = self.registry.tenant_of_identity(san) {
                match &tenant {
                    Some(existing) if *existing != owner => {
                        return Err(AuthError::AmbiguousCertificate)
                    }
                    _ => tenant = Some(owner),
                }
            }
        }
        Ok(tenant)
    }

    async fn tenant_of_token(
        &self,
        token: &str,
        restriction: Option<Restriction>,
    ) -> Result<String, AuthError> {
        let verified = self.verify(token, restriction).await?;
        if let Some(token_id) = &verified.issued_token_id {
            let record = self
                .registry
                .token(token_id)
                .ok_or_else(|| self.unknown(AuthError::UnknownToken))?;
            if record.revoked_at.is_some() {
                return Err(AuthError::Revoked);
            }
            if record.tenant_id != verified.tenant_id {
                return Err(AuthError::UnknownToken);
            }
        }
        Ok(verified.tenant_id)
    }

    async fn verify(
        &self,
        token: &str,
        restriction: Option<Restriction>,
    ) -> Result<VerifiedToken, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(hit) = self.verified.get(&key) {
            if hit.expires_at > now {
                return Ok(hit.clone());
            }
        }
        if let Some(restriction) = restriction {
            if !self.is_registered_issued_token(token)
                && !self.may_verify_while_restricted(token, restriction.address)
            {
                return Err(AuthError::Throttled {
                    retry_after_seconds: restriction.retry_after_seconds,
                });
            }
        }
        // Bounds the unknown credentials verified at once (an external issuer's may wait
        // for its JWKS); more are answered 503 at once, holding nothing.
        let _verifying = self
            .verifying
            .try_acquire()
            .map_err(|_| AuthError::Overloaded)?;
        let verified = self.verify_uncached(token).await?;
        if self.verified.len() >= MAX_VERIFIED_TOKENS + self.registry.token_count() {
            self.verified.clear();
        }
        self.verified.insert(key, verified.clone());
        Ok(verified)
    }

    /// Whether an unverified token claims to be one promgate issued with a token id the
    /// registry holds and has not revoked: a map lookup, no signature check. Token ids
    /// are random, so a stranger cannot guess one.
    fn is_registered_issued_token(&self, token: &str) -> bool {
        let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<UnverifiedIssuer>(token)
        else {
            return false;
        };
        let claims = unverified.claims;
        claims.iss.as_deref() == Some(tokens::ISSUER)
            && claims.jti.is_some_and(|jti| {
                self.registry
                    .token(&jti)
                    .is_some_and(|record| record.revoked_at.is_none())
            })
    }

    /// Whether a token from a restricted address gets its signature checked: it names a
    /// configured external issuer and an algorithm that issuer accepts (no signature
    /// check yet), and the address has a check left. A forged one then fails and counts
    /// as a failure like any other.
    fn may_verify_while_restricted(&self, token: &str, address: IpAddr) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<UnverifiedIssuer>(token)
        else {
            return false;
        };
        let names_configured_issuer = unverified.claims.iss.is_some_and(|issuer| {
            self.issuers
                .load()
                .get(&issuer)
                .is_some_and(|issuer| issuer.accepts_algorithm(header.alg))
        });
        names_configured_issuer
            && self
                .restricted_verifications
                .try_take(address, Instant::now())
    }

    /// The unverified `iss` only picks which verifier runs; that verifier then checks
    /// `iss` itself along with the signature.
    async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let invalid = |err: jsonwebtoken::errors::Error| AuthError::InvalidToken(err.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let unverified =
            jsonwebtoken::dangerous::insecure_decode::<UnverifiedIssuer>(token).map_err(invalid)?;
        let issuer = unverified.claims.iss.unwrap_or_default();
        if issuer == tokens::ISSUER {
            let claims = self.signer.verify(token).map_err(invalid)?;
            return Ok(VerifiedToken {
                tenant_id: claims.sub,
                issued_token_id: Some(claims.jti),
                expires_at: claims.exp,
            });
        }
        let external = self.issuers.load().get(&issuer).cloned();
        let Some(external) = external else {
            return Err(AuthError::InvalidToken(format!(
                "unknown issuer {issuer:?}"
            )));
        };
        let identity = external
            .verify(token, &header)
            .await
            .map_err(|err| match err {
                IssuerError::Invalid(message) => AuthError::InvalidToken(message),
                IssuerError::Unavailable(message) => AuthError::Unavailable(message),
            })?;
        Ok(VerifiedToken {
            tenant_id: identity.tenant_id,
            issued_token_id: None,
            expires_at: identity.expires_at,
        })
    }
}

#[derive(serde::Deserialize)]
struct UnverifiedIssuer {
    iss: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

/// The source address is over its failed-authentication budget (see
/// [`Authenticator::authenticate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restriction {
    /// When the address's window ends.
    pub retry_after_seconds: u64,
    /// The restricted address: its signature checks are counted.
    pub address: IpAddr,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("ascii"),
        );
        headers
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(bearer_token(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")), Ok("abc"));
        assert_eq!(
            bearer_token(&headers("Basic abc")),
            Err(AuthError::Malformed)
        );
        assert_eq!(bearer_token(&headers("Bearer ")), Err(AuthError::Malformed));
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 100));
        assert_eq!(bearer_token(&headers(&huge)), Err(AuthError::Malformed));
    }
}
