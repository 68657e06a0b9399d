//! `[[backends]]`: where writes, reads and queries go, with what credentials, in which
//! protocol and delivery mode, and within which request caps (DESIGN §9).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{self, HumanDuration};

/// Prometheus' default `remote_timeout` is 30 s: a backend timeout must stay below it
/// so promgate answers before the sender gives up (SECURITY.md §1).
pub const MAX_BACKEND_TIMEOUT: Duration = Duration::from_secs(29);

pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest `Retry-After` of a backend passed on to senders and taken as the floor of
/// a queued backend's backoff, unless configured.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub write_url: url::Url,
    pub read_url: Option<url::Url>,
    /// The root of the backend's Prometheus HTTP API (DESIGN §13): `/api/v1/query` and
    /// the rest are resolved under it.
    pub query_url: Option<url::Url>,
    /// When set, promgate sends the tenant id in this header (Mimir/Cortex `X-Scope-OrgID`,
    /// Thanos `THANOS-TENANT`); such backends also receive metadata-only requests.
    pub tenant_header: Option<http::HeaderName>,
    pub timeout: Duration,
    /// A backend's `Retry-After` is clamped to this before it reaches a sender or a
    /// queue's backoff (a backend asking for a day would otherwise park a queue for one).
    pub max_retry_after: Duration,
    /// The largest write (snappy-compressed) the backend accepts: larger ones are sent
    /// as several requests cut at series boundaries (0: no cap; DESIGN §9).
    pub max_request_bytes: u64,
    /// The most samples (float and histogram) per write the backend accepts: larger
    /// writes are cut the same way (0: no cap).
    pub max_samples_per_request: u64,
    pub bearer_token_file: Option<PathBuf>,
    pub basic_auth: Option<BasicAuth>,
    pub ca_file: Option<PathBuf>,
    /// promgate's client certificate (PEM chain) and key towards this backend.
    pub client_cert: Option<ClientCertFiles>,
    /// The name the backend's certificate must carry (and the SNI sent), when it is not
    /// the URL's host.
    pub server_name: Option<String>,
    /// The remote-write version the backend accepts: 2.0 requests are converted to 1.0
    /// for a 1.0 backend; a 1.0 request stays 1.0 for a 2.0 backend.
    pub protocol: WriteProtocol,
    /// When a write counts as delivered to this backend.
    pub delivery: Delivery,
}

/// How a backend receives writes (DESIGN §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The sender's request is acknowledged only after this backend accepted it.
    Sync,
    /// The request is acknowledged once its copy for this backend is on disk; a worker
    /// delivers it in order, retrying until the backend takes it.
    Queued,
}

/// A remote-write protocol version (DESIGN §5, §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteProtocol {
    /// `prometheus.WriteRequest`
    V1,
    /// `io.prometheus.write.v2.Request` (spec 2.0-rc.4)
    V2,
}

/// A client certificate promgate presents to a backend (mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawBackend {
    name: Option<String>,
    write_url: Option<String>,
    read_url: Option<String>,
    query_url: Option<String>,
    tenant_header: Option<String>,
    timeout: Option<HumanDuration>,
    max_retry_after: Option<HumanDuration>,
    max_request_bytes: Option<units::HumanSize>,
    max_samples_per_request: Option<u64>,
    bearer_token_file: Option<PathBuf>,
    basic_auth_username: Option<String>,
    basic_auth_password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    server_name: Option<String>,
    insecure_skip_verify: Option<bool>,
    protocol: Option<String>,
    delivery: Option<String>,
}

/// Headers promgate owns on the way to a backend; a tenant header may not be one of them.
const RESERVED_HEADERS: [&str; 8] = [
    "authorization",
    "content-type",
    "content-encoding",
    "content-length",
    "host",
    "user-agent",
    "x-prometheus-remote-write-version",
    "transfer-encoding",
];

/// The smallest `backends[].max_request_bytes` other than 0: room for a series.
const MIN_BACKEND_REQUEST_BYTES: u64 = 1024;

pub(super) fn validate_backends(
    raw: Vec<RawBackend>,
    problems: &mut Vec<String>,
) -> Vec<BackendConfig> {
    if raw.is_empty() {
        return vec![default_backend()];
    }
    let mut seen = HashSet::new();
    let mut backends = Vec::new();
    for (index, backend) in raw.into_iter().enumerate() {
        let context = format!("backends[{index}]");
        let name = backend.name.clone().unwrap_or_default();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(format!(
                "{context}.name: {name:?} must be non-empty [a-zA-Z0-9_-]"
            ));
        } else if !seen.insert(name.clone()) {
            problems.push(format!(
                "{context}.name: {name:?} is used by another backend"
            ));
        }
        backends.extend(validate_backend(&context, name, backend, problems));
    }
    backends
}

/// The backend promgate writes to when the config names none: a Prometheus on loopback.
fn default_backend() -> BackendConfig {
    BackendConfig {
        name: "primary".into(),
        write_url: url::Url::parse("http://127.0.0.1:9090/api/v1/write").expect("static URL"),
        read_url: Some(url::Url::parse("http://127.0.0.1:9090/api/v1/read").expect("static URL")),
        query_url: Some(url::Url::parse("http://127.0.0.1:9090/").expect("static URL")),
        tenant_header: None,
        timeout: DEFAULT_BACKEND_TIMEOUT,
        max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        max_request_bytes: 0,
        max_samples_per_request: 0,
        bearer_token_file: None,
        basic_auth: None,
        ca_file: None,
        client_cert: None,
        server_name: None,
        protocol: WriteProtocol::V1,
        delivery: Delivery::Sync,
    }
}

/// One `[[backends]]` entry; `None` without a usable write URL.
fn validate_backend(
    context: &str,
    name: String,
    backend: RawBackend,
    problems: &mut Vec<String>,
) -> Option<BackendConfig> {
    let (write_url, read_url, query_url) = backend_urls(context, &backend, problems);
    let tenant_header = tenant_header(context, backend.tenant_header.as_deref(), problems);
    let bounds = request_bounds(context, &backend, problems);
    let (protocol, delivery) = modes(context, &backend, problems);
    let credentials = credentials(context, backend, write_url.as_ref(), problems);
    Some(BackendConfig {
        name,
        write_url: write_url?,
        read_url: read_url.flatten(),
        query_url: query_url.flatten(),
        tenant_header,
        timeout: bounds.timeout,
        max_retry_after: bounds.max_retry_after,
        max_request_bytes: bounds.max_request_bytes,
        max_samples_per_request: bounds.max_samples_per_request,
        bearer_token_file: credentials.bearer_token_file,
        basic_auth: credentials.basic_auth,
        ca_file: credentials.ca_file,
        client_cert: credentials.client_cert,
        server_name: credentials.server_name,
        protocol,
        delivery,
    })
}

type BackendUrls = (
    Option<url::Url>,
    Option<Option<url::Url>>,
    Option<Option<url::Url>>,
);

/// The write, read and query URLs (a query URL made a root that paths resolve under).
fn backend_urls(context: &str, backend: &RawBackend, problems: &mut Vec<String>) -> BackendUrls {
    let write_url = parse_url(
        &format!("{context}.write_url"),
        backend.write_url.as_deref(),
        problems,
    );
    let read_url = backend
        .read_url
        .as_deref()
        .map(|text| parse_url(&format!("{context}.read_url"), Some(text), problems));
    let query_url = backend.query_url.as_deref().map(|text| {
        parse_url(&format!("{context}.query_url"), Some(text), problems).map(|mut url| {
            // A root: paths are resolved under it, so it must end with a slash.
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            url
        })
    });
    (write_url, read_url, query_url)
}

/// The header the tenant id is also sent in, never one promgate sets itself.
fn tenant_header(
    context: &str,
    text: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<http::HeaderName> {
    text.and_then(|text| match http::HeaderName::from_bytes(text.as_bytes()) {
        Ok(header) if !RESERVED_HEADERS.contains(&header.as_str()) => Some(header),
        Ok(_) => {
            problems.push(format!(
                "{context}.tenant_header: {text:?} is a header promgate sets itself"
            ));
            None
        }
        Err(_) => {
            problems.push(format!(
                "{context}.tenant_header: {text:?} is not a valid header name"
            ));
            None
        }
    })
}

/// How long a request may take and how large it may be.
struct RequestBounds {
    timeout: Duration,
    max_retry_after: Duration,
    max_request_bytes: u64,
    max_samples_per_request: u64,
}

fn request_bounds(
    context: &str,
    backend: &RawBackend,
    problems: &mut Vec<String>,
) -> RequestBounds {
    let timeout = backend.timeout.map_or(DEFAULT_BACKEND_TIMEOUT, |d| d.0);
    if timeout.is_zero() || timeout > MAX_BACKEND_TIMEOUT {
        problems.push(format!(
            "{context}.timeout: must be between 1ms and 29s, below Prometheus' 30s remote_timeout"
        ));
    }
    let max_retry_after = backend
        .max_retry_after
        .map_or(DEFAULT_MAX_RETRY_AFTER, |d| d.0);
    if max_retry_after < Duration::from_secs(1) {
        problems.push(format!(
            "{context}.max_retry_after: must be at least 1s (Retry-After counts whole seconds)"
        ));
    }
    let max_request_bytes = backend.max_request_bytes.map_or(0, |size| size.0);
    if max_request_bytes > 0 && max_request_bytes < MIN_BACKEND_REQUEST_BYTES {
        problems.push(format!(
            "{context}.max_request_bytes: must be 0 (no cap) or at least 1KiB"
        ));
    }
    let max_samples_per_request = backend.max_samples_per_request.unwrap_or(0);
    RequestBounds {
        timeout,
        max_retry_after,
        max_request_bytes,
        max_samples_per_request,
    }
}

/// The protocol the backend speaks and how writes reach it.
fn modes(
    context: &str,
    backend: &RawBackend,
    problems: &mut Vec<String>,
) -> (WriteProtocol, Delivery) {
    let protocol = match backend.protocol.as_deref() {
        None | Some("1.0") => WriteProtocol::V1,
        Some("2.0") => WriteProtocol::V2,
        Some(other) => {
            problems.push(format!(
                "{context}.protocol: {other:?} must be \"1.0\" or \"2.0\""
            ));
            WriteProtocol::V1
        }
    };
    let delivery = match backend.delivery.as_deref() {
        None | Some("sync") => Delivery::Sync,
        Some("queued") => Delivery::Queued,
        Some(other) => {
            problems.push(format!(
                "{context}.delivery: {other:?} must be \"sync\" or \"queued\""
            ));
            Delivery::Sync
        }
    };
    (protocol, delivery)
}

/// What promgate presents to the backend and how it checks the backend's certificate.
struct Credentials {
    bearer_token_file: Option<PathBuf>,
    basic_auth: Option<BasicAuth>,
    ca_file: Option<PathBuf>,
    client_cert: Option<ClientCertFiles>,
    server_name: Option<String>,
}

fn credentials(
    context: &str,
    backend: RawBackend,
    write_url: Option<&url::Url>,
    problems: &mut Vec<String>,
) -> Credentials {
    let basic_auth = match (
        backend.basic_auth_username,
        backend.basic_auth_password_file,
    ) {
        (Some(username), Some(password_file)) => Some(BasicAuth {
            username,
            password_file,
        }),
        (None, None) => None,
        _ => {
            problems.push(format!(
                "{context}: basic_auth_username and basic_auth_password_file go together"
            ));
            None
        }
    };
    if backend.bearer_token_file.is_some() && basic_auth.is_some() {
        problems.push(format!(
            "{context}: choose bearer_token_file or basic auth, not both"
        ));
    }
    let client_cert = match (backend.cert_file, backend.key_file) {
        (Some(cert_file), Some(key_file)) => Some(ClientCertFiles {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        _ => {
            problems.push(format!("{context}: cert_file and key_file go together"));
            None
        }
    };
    if backend.insecure_skip_verify.is_some() {
        problems.push(format!(
            "{context}.insecure_skip_verify: promgate always verifies a backend's certificate; \
             give the backend's CA in ca_file (and server_name when the certificate names another host)"
        ));
    }
    let server_name = backend.server_name.filter(|name| {
        let valid = rustls::pki_types::ServerName::try_from(name.as_str()).is_ok();
        if !valid {
            problems.push(format!(
                "{context}.server_name: {name:?} is not a DNS name or IP address"
            ));
        }
        valid
    });
    let tls_keys_set = backend.ca_file.is_some() || client_cert.is_some() || server_name.is_some();
    if tls_keys_set && write_url.is_some_and(|url| url.scheme() != "https") {
        problems.push(format!(
            "{context}: ca_file, cert_file, key_file and server_name need an https:// write_url"
        ));
    }
    for (key, file) in [
        ("bearer_token_file", backend.bearer_token_file.as_ref()),
        ("ca_file", backend.ca_file.as_ref()),
        ("cert_file", client_cert.as_ref().map(|c| &c.cert_file)),
        ("key_file", client_cert.as_ref().map(|c| &c.key_file)),
        (
            "basic_auth_password_file",
            basic_auth.as_ref().map(|b| &b.password_file),
        ),
    ] {
        if let Some(file) = file {
            if !file.is_file() {
                problems.push(format!(
                    "{context}.{key}: {} is not a readable file",
                    file.display()
                ));
            }
        }
    }
    Credentials {
        bearer_token_file: backend.bearer_token_file,
        basic_auth,
        ca_file: backend.ca_file,
        client_cert,
        server_name,
    }
}

pub(super) fn parse_url(
    key: &str,
    text: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<url::Url> {
    let Some(text) = text else {
        problems.push(format!("{key} is required"));
        return None;
    };
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        _ => {
            problems.push(format!("{key}: {text:?} is not an http(s) URL"));
            None
        }
    }
}
