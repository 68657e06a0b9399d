//! TLS on the data listener with rustls (DESIGN §4c; SECURITY.md T6–T8, T22): TLS 1.2 or
//! 1.3 only, no 0-RTT and no session resumption (so a revoked certificate cannot ride an
//! old session), client certificates verified against the configured client-CA bundle
//! only (never system roots) with the clientAuth EKU, revocation lists enforced
//! including their expiry, and the files reloaded without a restart when they change.

use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::RootCertStore;
use tokio_rustls::TlsAcceptor;

pub use crate::auth::mtls::ClientCertificate;
use crate::config::{ClientAuth, TlsConfig};
pub use crate::telemetry::TlsMetrics;

pub struct TlsState {
    /// Replaced by a config reload (`apply`).
    config: RwLock<TlsConfig>,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// Modification times of the files the current configuration was built from.
    built_from: Mutex<Vec<Option<SystemTime>>>,
    /// When the files in force expire, for `/metrics` (alerts before the certificate or a
    /// revocation list runs out: an expired CRL fails every client closed).
    expiry: Mutex<Expiry>,
    metrics: Mutex<Option<TlsMetrics>>,
}

/// Expiry times (Unix seconds) of the TLS files in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// The server certificate's `notAfter`.
    pub certificate_not_after: Option<i64>,
    /// Each revocation list file's earliest `nextUpdate` (none when it has none).
    pub crl_next_update: Vec<(String, Option<i64>)>,
}

/// Reads the expiry times of the certificate and revocation lists `config` names.
pub fn expiry_of(config: &TlsConfig) -> Expiry {
    let certificate_not_after = CertificateDer::pem_file_iter(&config.cert_file)
        .ok()
        .and_then(|mut certificates| certificates.next())
        .and_then(Result::ok)
        .and_then(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, certificate)| certificate.validity().not_after.timestamp())
        });
    let crl_next_update = config
        .crl_files
        .iter()
        .map(|path| {
            let next = CertificateRevocationListDer::pem_file_iter(path)
                .ok()
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|der| {
                    x509_parser::parse_x509_crl(&der)
                        .ok()
                        .and_then(|(_, crl)| crl.next_update())
                        .map(|next| next.timestamp())
                })
                .min();
            (path.display().to_string(), next)
        })
        .collect();
    Expiry {
        certificate_not_after,
        crl_next_update,
    }
}

impl TlsState {
    pub fn new(config: TlsConfig) -> Result<Arc<TlsState>, String> {
        let built_from = file_times(&config);
        let server_config = build(&config)?;
        let expiry = expiry_of(&config);
        Ok(Arc::new(TlsState {
            config: RwLock::new(config),
            current: RwLock::new(server_config),
            built_from: Mutex::new(built_from),
            expiry: Mutex::new(expiry),
            metrics: Mutex::new(None),
        }))
    }

    /// The expiry times of the files in force.
    pub fn expiry(&self) -> Expiry {
        self.expiry.lock().clone()
    }

    /// Sets the expiry gauges of `listener` now and after every reload.
    pub fn report_expiry(&self, metrics: TlsMetrics) {
        let expiry = self.expiry();
        metrics.set(expiry.certificate_not_after, &expiry.crl_next_update);
        *self.metrics.lock() = Some(metrics);
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read()))
    }

    pub fn handshake_timeout(&self) -> std::time::Duration {
        self.config.read().handshake_timeout
    }

    /// Reads and checks the files `config` names, without applying them: a config reload
    /// prepares first and applies only once every part of the new config is good.
    pub fn prepare(config: &TlsConfig) -> Result<PreparedTls, String> {
        let built_from = file_times(config);
        let server_config = build(config)?;
        Ok(PreparedTls {
            config: config.clone(),
            server_config,
            built_from,
        })
    }

    /// Serves new connections with a prepared configuration (a config reload).
    pub fn apply(&self, prepared: PreparedTls) {
        *self.current.write() = prepared.server_config;
        *self.built_from.lock() = prepared.built_from;
        self.refresh_expiry(&prepared.config);
        *self.config.write() = prepared.config;
    }

    /// Reads the expiry times of the files `config` names and sets the gauges.
    fn refresh_expiry(&self, config: &TlsConfig) {
        let expiry = expiry_of(config);
        if let Some(metrics) = self.metrics.lock().as_ref() {
            metrics.set(expiry.certificate_not_after, &expiry.crl_next_update);
        }
        *self.expiry.lock() = expiry;
    }

    /// Checks the files every `reload_interval`; a change rebuilds the configuration for
    /// new connections. A broken file keeps the previous configuration (and is logged).
    pub fn spawn_reload(self: &Arc<Self>) {
        let state = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let interval = state.config.read().reload_interval;
                tokio::time::sleep(interval).await;
                state.reload_if_changed();
            }
        });
    }

    pub fn reload_if_changed(&self) {
        let config = self.config.read().clone();
        let times = file_times(&config);
        if *self.built_from.lock() == times {
            return;
        }
        match build(&config) {
            Ok(server_config) => {
                *self.current.write() = server_config;
                *self.built_from.lock() = times;
                self.refresh_expiry(&config);
                tracing::info!("reloaded TLS certificate, client CA and revocation lists");
            }
            Err(err) => {
                tracing::error!(error = %err, "TLS files changed but cannot be loaded; keeping the previous ones")
            }
        }
    }
}

/// A data-listener TLS configuration built from its files, ready to serve.
pub struct PreparedTls {
    config: TlsConfig,
    server_config: Arc<rustls::ServerConfig>,
    built_from: Vec<Option<SystemTime>>,
}

fn file_times(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    [&config.cert_file, &config.key_file]
        .into_iter()
        .chain(config.client_ca_file.as_ref())
        .chain(&config.crl_files)
        .map(|path| {
            std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .ok()
        })
        .collect()
}

fn build(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if config.min_version_13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|err| format!("TLS versions: {err}"))?;
    let builder = match config.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let ca_file = config
                .client_ca_file
                .as_ref()
                .ok_or("client certificates need client_ca_file")?;
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca_file)
                .map_err(|err| format!("{}: {err}", ca_file.display()))?
            {
                let certificate =
                    certificate.map_err(|err| format!("{}: {err}", ca_file.display()))?;
                roots
                    .add(certificate)
                    .map_err(|err| format!("{}: {err}", ca_file.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no CA certificate", ca_file.display()));
            }
            let mut crls = Vec::new();
            for path in &config.crl_files {
                for crl in CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|err| format!("{}: {err}", path.display()))?
                {
                    crls.push(crl.map_err(|err| format!("{}: {err}", path.display()))?);
                }
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .with_crls(crls)
                    .enforce_revocation_expiration();
            if config.client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|err| format!("client verifier: {err}"))?,
            )
        }
    };
    let certificates = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(|err| format!("{}: {err}", config.cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{}: {err}", config.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|err| format!("{}: {err}", config.key_file.display()))?;
    let mut server_config = builder
        .with_single_cert(certificates, key)
        .map_err(|err| format!("certificate and key: {err}"))?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: every connection presents (and has checked) its certificate.
    server_config.session_storage = Arc::new(NoServerSessionStorage {});
    server_config.send_tls13_tickets = 0;
    server_config.max_early_data_size = 0;
    Ok(Arc::new(server_config))
}
