//! `[server]`: the data listener (address, TLS, connection caps, the process-wide
//! in-flight budgets, the request deadline, trusted proxies), and the listener checks the
//! admin section shares.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{self, HumanDuration};
use super::{TrustedProxies, MAX_BACKEND_TIMEOUT};

/// How long a data request may take in all, waits, body and backends included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(25);

/// Room for two answers of the default `max_query_response_bytes` at once, and the
/// small ones beside them.
pub const DEFAULT_IN_FLIGHT_ANSWER_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// TLS on the data listener; `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
    pub connections: ConnectionLimits,
    /// Requests being handled at once (writes and reads, until the answer began).
    pub max_in_flight_requests: usize,
    /// Decoded write bodies held at once, by their announced decoded size.
    pub max_in_flight_decoded_bytes: u64,
    /// Query API answers held at once (three times each answer's size: as received,
    /// room to grow, and the tenant's copy); an answer that does not fit is 503.
    pub max_in_flight_answer_bytes: u64,
    /// How long a request may wait for either budget before 503.
    pub in_flight_wait: Duration,
    /// Failed authentications per source address and minute before 429. Never applied
    /// to a credential already known good (a cached verified token, a registered client
    /// certificate), nor to a configured issuer's token within a few signature checks:
    /// strangers behind the same address cannot lock a tenant out.
    pub auth_failures_per_minute: u32,
    /// Every data request is answered within this (503 + Retry-After when it runs out),
    /// below Prometheus' 30 s `remote_timeout`, so the sender hears back before it gives up.
    pub request_timeout: Duration,
    /// Peers believed about the client address (PROXY header, `X-Forwarded-For`);
    /// everyone else is the client (SECURITY.md T16).
    pub trusted_proxies: TrustedProxies,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from one of
    /// `trusted_proxies`; any other connection is closed.
    pub proxy_protocol: bool,
}

/// TLS on the data listener (DESIGN §4c; SECURITY.md T6–T8, T22).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The only roots client certificates are verified against (never system roots).
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Revocation lists; a certificate whose status cannot be determined is refused and
    /// an expired list fails verification.
    pub crl_files: Vec<PathBuf>,
    /// TLS 1.2 (default) or 1.3 as the lowest version.
    pub min_version_13: bool,
    /// How often the files are checked for changes and reloaded.
    pub reload_interval: Duration,
    pub handshake_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTls {
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) client_ca_file: Option<PathBuf>,
    pub(super) client_auth: Option<String>,
    pub(super) crl_files: Option<Vec<PathBuf>>,
    pub(super) min_version: Option<String>,
    pub(super) reload_interval: Option<HumanDuration>,
    pub(super) handshake_timeout: Option<HumanDuration>,
}

pub(super) fn validate_tls(raw: RawTls, problems: &mut Vec<String>) -> TlsConfig {
    let mut required_file = |key: &str, value: Option<PathBuf>| {
        let path = value.unwrap_or_default();
        if path.as_os_str().is_empty() {
            problems.push(format!("server.tls.{key} is required"));
        } else if !path.is_file() {
            problems.push(format!(
                "server.tls.{key}: {} is not a readable file",
                path.display()
            ));
        }
        path
    };
    let cert_file = required_file("cert_file", raw.cert_file);
    let key_file = required_file("key_file", raw.key_file);
    let client_auth = match raw.client_auth.as_deref().unwrap_or("none") {
        "none" => ClientAuth::None,
        "optional" => ClientAuth::Optional,
        "required" => ClientAuth::Required,
        other => {
            problems.push(format!(
                "server.tls.client_auth: {other:?} must be \"none\", \"optional\" or \"required\""
            ));
            ClientAuth::None
        }
    };
    let client_ca_file = raw.client_ca_file;
    match (&client_ca_file, client_auth) {
        (None, ClientAuth::Optional | ClientAuth::Required) => {
            problems.push("server.tls.client_ca_file is required for client certificates".into())
        }
        (Some(path), _) if !path.is_file() => problems.push(format!(
            "server.tls.client_ca_file: {} is not a readable file",
            path.display()
        )),
        _ => {}
    }
    let crl_files = raw.crl_files.unwrap_or_default();
    for path in &crl_files {
        if !path.is_file() {
            problems.push(format!(
                "server.tls.crl_files: {} is not a readable file",
                path.display()
            ));
        }
    }
    let min_version_13 = match raw.min_version.as_deref().unwrap_or("1.2") {
        "1.2" => false,
        "1.3" => true,
        other => {
            problems.push(format!(
                "server.tls.min_version: {other:?} must be \"1.2\" or \"1.3\""
            ));
            false
        }
    };
    TlsConfig {
        cert_file,
        key_file,
        client_ca_file,
        client_auth,
        crl_files,
        min_version_13,
        reload_interval: raw.reload_interval.map_or(Duration::from_secs(30), |d| d.0),
        handshake_timeout: raw
            .handshake_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
    }
}

/// Connection-level protection of a listener (SECURITY.md T13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From the connection's first byte (or the end of the previous response) to the end
    /// of the request headers; also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Request line + headers; more → 431.
    pub max_header_bytes: usize,
    /// The whole request body must arrive within this.
    pub body_read_timeout: Duration,
    /// After a grace second, the body must keep arriving at least this fast.
    pub min_body_bytes_per_second: u64,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            body_read_timeout: Duration::from_secs(20),
            min_body_bytes_per_second: 1000,
            max_connections: 4096,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) header_read_timeout: Option<HumanDuration>,
    pub(super) max_header_bytes: Option<units::HumanSize>,
    pub(super) body_read_timeout: Option<HumanDuration>,
    pub(super) min_body_bytes_per_second: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_in_flight_requests: Option<usize>,
    pub(super) max_in_flight_decoded_bytes: Option<units::HumanSize>,
    pub(super) max_in_flight_answer_bytes: Option<units::HumanSize>,
    pub(super) in_flight_wait: Option<HumanDuration>,
    pub(super) auth_failures_per_minute: Option<u32>,
    pub(super) request_timeout: Option<HumanDuration>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) proxy_protocol: Option<bool>,
}

pub(super) fn parse_addr(
    key: &str,
    value: Option<&str>,
    default: &str,
    problems: &mut Vec<String>,
) -> SocketAddr {
    let text = value.unwrap_or(default);
    match text.parse() {
        Ok(addr) => addr,
        Err(_) => {
            problems.push(format!(
                "{key}: {text:?} is not an address such as 127.0.0.1:9201"
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

pub(super) fn validate_server(raw: &RawServer, problems: &mut Vec<String>) -> ServerConfig {
    let defaults = ConnectionLimits::default();
    let connections = ConnectionLimits {
        header_read_timeout: raw
            .header_read_timeout
            .map_or(defaults.header_read_timeout, |d| d.0),
        max_header_bytes: raw
            .max_header_bytes
            .map_or(defaults.max_header_bytes, |size| {
                usize::try_from(size.0).unwrap_or(usize::MAX)
            }),
        body_read_timeout: raw
            .body_read_timeout
            .map_or(defaults.body_read_timeout, |d| d.0),
        min_body_bytes_per_second: raw
            .min_body_bytes_per_second
            .unwrap_or(defaults.min_body_bytes_per_second),
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
    };
    let config = ServerConfig {
        tls: None,
        listen: parse_addr(
            "server.listen",
            raw.listen.as_deref(),
            "127.0.0.1:9201",
            problems,
        ),
        connections,
        max_in_flight_requests: raw.max_in_flight_requests.unwrap_or(128),
        max_in_flight_decoded_bytes: raw
            .max_in_flight_decoded_bytes
            .map_or(256 * 1024 * 1024, |size| size.0),
        max_in_flight_answer_bytes: raw
            .max_in_flight_answer_bytes
            .map_or(DEFAULT_IN_FLIGHT_ANSWER_BYTES, |size| size.0),
        in_flight_wait: raw.in_flight_wait.map_or(Duration::from_secs(5), |d| d.0),
        auth_failures_per_minute: raw.auth_failures_per_minute.unwrap_or(30),
        request_timeout: raw.request_timeout.map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.0),
        trusted_proxies: validate_trusted_proxies(
            "server",
            raw.trusted_proxies.as_deref(),
            problems,
        ),
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
    };
    if config.request_timeout < Duration::from_secs(1)
        || config.request_timeout > MAX_BACKEND_TIMEOUT
    {
        problems.push(format!(
            "server.request_timeout must be between 1s and {}s (below Prometheus' 30s remote_timeout)",
            MAX_BACKEND_TIMEOUT.as_secs()
        ));
    }
    check_proxy_protocol(
        "server",
        config.proxy_protocol,
        &config.trusted_proxies,
        problems,
    );
    for (key, value) in [
        ("header_read_timeout", connections.header_read_timeout),
        ("body_read_timeout", connections.body_read_timeout),
    ] {
        if value.is_zero() {
            problems.push(format!("server.{key} must be longer than 0s"));
        }
    }
    if !(8 * 1024..=1024 * 1024).contains(&connections.max_header_bytes) {
        problems.push("server.max_header_bytes must be between 8KiB and 1MiB".into());
    }
    for (key, value) in [
        ("max_connections", connections.max_connections),
        ("max_in_flight_requests", config.max_in_flight_requests),
        (
            "auth_failures_per_minute",
            config.auth_failures_per_minute as usize,
        ),
    ] {
        if value == 0 {
            problems.push(format!("server.{key} must be at least 1"));
        }
    }
    if config.max_in_flight_decoded_bytes < 1024 * 1024 {
        problems.push("server.max_in_flight_decoded_bytes must be at least 1MiB".into());
    }
    if config.max_in_flight_answer_bytes < 1024 * 1024 {
        problems.push("server.max_in_flight_answer_bytes must be at least 1MiB".into());
    }
    config
}

/// `[section] trusted_proxies`: one problem line per entry that is not a network.
pub(super) fn validate_trusted_proxies(
    section: &str,
    entries: Option<&[String]>,
    problems: &mut Vec<String>,
) -> TrustedProxies {
    match TrustedProxies::parse(entries.unwrap_or_default()) {
        Ok(trusted) => trusted,
        Err(errors) => {
            for error in errors {
                problems.push(format!("{section}.trusted_proxies: {error}"));
            }
            TrustedProxies::default()
        }
    }
}

/// With nobody trusted to send a PROXY header, every connection would be closed.
pub(super) fn check_proxy_protocol(
    section: &str,
    proxy_protocol: bool,
    trusted: &TrustedProxies,
    problems: &mut Vec<String>,
) {
    if proxy_protocol && trusted.is_empty() {
        problems.push(format!(
            "{section}.proxy_protocol: list the proxies that send the header in {section}.trusted_proxies"
        ));
    }
}
