//! Tokens promgate issues itself: EdDSA (Ed25519) JWTs whose `jti` is stored so they
//! can be listed and revoked (DESIGN §4a). Verification pins the algorithm; the
//! token's header never chooses it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::secrets::{random_bytes, SigningKeyPem};

/// `iss` and `aud` of every token promgate issues.
pub const ISSUER: &str = crate::config::PROMGATE_ISSUER;
pub const AUDIENCE: &str = "promgate";
/// Tokens longer than this are refused before any parsing (SECURITY.md §4: JWT ≤ 8 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The tenant id.
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenSigner {
    pub fn new(key: &SigningKeyPem) -> Result<TokenSigner, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 60;
        validation.validate_nbf = true;
        Ok(TokenSigner {
            encoding: EncodingKey::from_ed_pem(key.private_pem.as_bytes())?,
            decoding: DecodingKey::from_ed_pem(key.public_pem.as_bytes())?,
            validation,
        })
    }

    /// Signs a token for `tenant_id`; returns its id (`jti`) and the secret text.
    pub fn issue(
        &self,
        tenant_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(String, String), jsonwebtoken::errors::Error> {
        let jti = hex::encode(&random_bytes()[..16]);
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: tenant_id.into(),
            jti: jti.clone(),
            iat: now,
            exp: expires_at,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)?;
        Ok((jti, token))
    }

    /// Verifies signature, algorithm, `iss`, `aud`, `exp` and `nbf`.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secrets::load_or_create_signing_key;

    fn signer() -> TokenSigner {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = load_or_create_signing_key(&dir.path().join("k")).expect("key");
        TokenSigner::new(&key).expect("signer")
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    #[test]
    fn issued_tokens_verify_and_expired_ones_do_not() {
        let signer = signer();
        let (jti, token) = signer.issue("alpha", now(), now() + 60).expect("issued");
        let claims = signer.verify(&token).expect("valid");
        assert_eq!(
            (claims.sub.as_str(), claims.jti.as_str()),
            ("alpha", jti.as_str())
        );
        let (_, old) = signer
            .issue("alpha", now() - 7200, now() - 3600)
            .expect("issued");
        assert!(signer.verify(&old).is_err());
    }

    #[test]
    fn tokens_of_another_key_or_algorithm_are_refused() {
        let (_, foreign) = signer().issue("alpha", now(), now() + 60).expect("issued");
        assert!(signer().verify(&foreign).is_err());
        let hs256 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
                sub: "alpha".into(),
                jti: "x".into(),
                iat: now(),
                exp: now() + 60,
            },
            &EncodingKey::from_secret(b"guessable"),
        )
        .expect("encoded");
        assert!(signer().verify(&hs256).is_err());
    }
}
