//! Secrets promgate needs and generates when missing: the admin bearer token and the
//! Ed25519 token-signing key. Files are created with mode 0600; only their paths are
//! ever logged (DESIGN §2).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// 32 random bytes from the operating system.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // getrandom only fails when the OS has no entropy source at all; nothing secure
    // can run then.
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// Reads the admin token from `path`, generating a 256-bit one when the file is missing.
pub fn load_or_create_admin_token(path: &Path) -> Result<String, SecretError> {
    if !path.exists() {
        let token = hex::encode(random_bytes());
        write_private(path, format!("{token}\n").as_bytes())?;
        tracing::info!(path = %path.display(), "generated admin token");
    }
    warn_if_readable_by_others(path);
    let token = std::fs::read_to_string(path)
        .map_err(io_error(path))?
        .trim()
        .to_string();
    if token.len() < 16 {
        return Err(SecretError::Invalid {
            path: path.display().to_string(),
            message: "admin token must be at least 16 characters".into(),
        });
    }
    Ok(token)
}

/// The signing key as PKCS#8 PEM (private) and SPKI PEM (public).
pub struct SigningKeyPem {
    pub private_pem: String,
    pub public_pem: String,
}

/// Reads the Ed25519 signing key from `path`, generating one when the file is missing.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKeyPem, SecretError> {
    let invalid = |message: String| SecretError::Invalid {
        path: path.display().to_string(),
        message,
    };
    if !path.exists() {
        let key = SigningKey::from_bytes(&random_bytes());
        let pem = key
            .to_pkcs8_pem(Default::default())
            .map_err(|err| invalid(err.to_string()))?;
        write_private(path, pem.as_bytes())?;
        tracing::info!(path = %path.display(), "generated token-signing key");
    }
    warn_if_readable_by_others(path);
    let private_pem = std::fs::read_to_string(path).map_err(io_error(path))?;
    let key = SigningKey::from_pkcs8_pem(&private_pem)
        .map_err(|err| invalid(format!("not a PKCS#8 Ed25519 key: {err}")))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|err| invalid(err.to_string()))?;
    Ok(SigningKeyPem {
        private_pem,
        public_pem,
    })
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecretError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(contents).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(metadata) = std::fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "secret file is readable by group or others; use mode 0600");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_private_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_path = dir.path().join("admin.token");
        let first = load_or_create_admin_token(&token_path).expect("created");
        assert_eq!(first.len(), 64);
        assert_eq!(
            load_or_create_admin_token(&token_path).expect("read"),
            first
        );
        let key_path = dir.path().join("signing.key");
        let key = load_or_create_signing_key(&key_path).expect("created");
        assert!(key.private_pem.contains("PRIVATE KEY"));
        assert_eq!(
            load_or_create_signing_key(&key_path)
                .expect("read")
                .public_pem,
            key.public_pem
        );
        for path in [token_path, key_path] {
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
}
