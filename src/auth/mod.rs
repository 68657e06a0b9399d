//! Who is calling: credentials to a tenant (DESIGN §4, §6 step 2). The tenant comes
//! from authentication alone; headers such as `X-Scope-OrgID` never choose it.

pub mod secrets;
pub mod tokens;

use std::sync::Arc;

use http::HeaderMap;

use crate::error::AppError;
use crate::tenant::{Registry, TenantEntry, TenantStatus};
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
        }
    }
}

impl From<AuthError> for AppError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::UnknownTenant(_) | AuthError::DisabledTenant(_) => {
                AppError::Forbidden(err.to_string())
            }
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
    registry: Arc<Registry>,
}

impl Authenticator {
    pub fn new(signer: TokenSigner, registry: Arc<Registry>) -> Authenticator {
        Authenticator { signer, registry }
    }

    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// Maps the request's credentials to an active tenant, from the in-memory registry.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<TenantEntry>, AuthError> {
        let token = bearer_token(headers)?;
        let claims = self
            .signer
            .verify(token)
            .map_err(|err| AuthError::InvalidToken(err.to_string()))?;
        let record = self
            .registry
            .token(&claims.jti)
            .ok_or(AuthError::UnknownToken)?;
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if record.tenant_id != claims.sub {
            return Err(AuthError::UnknownToken);
        }
        let entry = self
            .registry
            .tenant(&claims.sub)
            .ok_or_else(|| AuthError::UnknownTenant(claims.sub.clone()))?;
        if entry.tenant.status != TenantStatus::Active {
            return Err(AuthError::DisabledTenant(claims.sub));
        }
        Ok(entry)
    }
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
