//! TLS towards one backend (DESIGN §9: "TLS CA / client cert"): the roots a backend's
//! certificate must chain to (`ca_file`, else the public web roots), promgate's client
//! certificate (`cert_file`/`key_file`) and the name the backend's certificate must carry
//! when it is not the URL's host (`server_name`). A backend's certificate is always
//! verified: there is no way to switch verification off.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::BackendConfig;

/// Whether `config` asks for anything but reqwest's default TLS (public roots, no client
/// certificate, the URL's host as the name).
pub fn is_customised(config: &BackendConfig) -> bool {
    config.ca_file.is_some() || config.client_cert.is_some() || config.server_name.is_some()
}

/// The rustls client configuration of one backend, read from its files now.
pub fn client_config(config: &BackendConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &config.ca_file {
        // As Prometheus' `tls_config.ca_file`: the file's CAs replace the default roots.
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca_file, "ca_file")? {
                roots
                    .add(certificate)
                    .map_err(|err| format!("ca_file {}: {err}", ca_file.display()))?;
            }
            roots
        }
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|err| format!("ca_file: {err}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &config.server_name {
        Some(name) => Arc::new(NamedVerifier {
            inner: verifier,
            name: ServerName::try_from(name.clone())
                .map_err(|err| format!("server_name {name:?}: {err}"))?,
        }),
        None => verifier,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS versions: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match &config.client_cert {
        Some(files) => {
            let chain = read_certificates(&files.cert_file, "cert_file")?;
            let key = PrivateKeyDer::from_pem_file(&files.key_file)
                .map_err(|err| format!("key_file {}: {err}", files.key_file.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| format!("cert_file/key_file: {err}"))?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("{key} {}: {err}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{key} {}: {err}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{key} {} holds no certificate", path.display()));
    }
    Ok(certificates)
}

/// Full WebPKI verification, against `server_name` instead of the URL's host (as
/// Prometheus' `tls_config.server_name`). The SNI sent is still the URL's host name
/// (none for an IP address).
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
