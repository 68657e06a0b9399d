//! Configuration: the TOML file of DESIGN §3 read into raw serde types, then checked
//! into a validated [`Config`]. Every problem is collected so `check-config` can
//! report them all in one run; unknown keys are problems, never silently ignored.

pub mod limits;
pub mod network;
pub mod otlp;
pub mod units;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use limits::{LimitOverrides, Limits};
pub use network::{IpNetwork, NetworkError, TrustedProxies};
pub use otlp::{OtlpConfig, Promotion, TranslationStrategy};
use units::HumanDuration;

/// Prometheus' default `remote_timeout` is 30 s: a backend timeout must stay below it
/// so promgate answers before the sender gives up (SECURITY.md §1).
pub const MAX_BACKEND_TIMEOUT: Duration = Duration::from_secs(29);
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest `Retry-After` of a backend passed on to senders and taken as the floor of
/// a queued backend's backoff, unless configured.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long a data request may take in all, waits, body and backends included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(25);
/// The `iss` of the tokens promgate issues itself; no external issuer may claim it.
pub const PROMGATE_ISSUER: &str = "promgate";

/// The validated configuration the relay runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub tenancy: TenancyConfig,
    pub tokens: TokenConfig,
    pub issuers: Vec<IssuerConfig>,
    pub limits: Limits,
    pub backends: Vec<BackendConfig>,
    pub queue: QueueConfig,
    /// `[otlp]`: how OpenTelemetry metrics are translated (DESIGN §12).
    pub otlp: OtlpConfig,
}

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
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth: Option<String>,
    crl_files: Option<Vec<PathBuf>>,
    min_version: Option<String>,
    reload_interval: Option<HumanDuration>,
    handshake_timeout: Option<HumanDuration>,
}

fn validate_tls(raw: RawTls, problems: &mut Vec<String>) -> TlsConfig {
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Holds the admin bearer token; generated (mode 0600) when missing.
    pub token_file: PathBuf,
    /// Failed admin authentications per source address and minute before 429.
    pub auth_failures_per_minute: u32,
    /// As `ServerConfig::trusted_proxies`, for the admin listener.
    pub trusted_proxies: TrustedProxies,
    /// As `ServerConfig::proxy_protocol`, for the admin listener.
    pub proxy_protocol: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    pub database_url: String,
    /// How often each replica reads the registry's changes and sends its heartbeat, so
    /// changes made through another replica are in force everywhere within about this long.
    pub poll_interval: Duration,
    /// How long an expired token stays in the registry (listed as expired) before it is
    /// deleted.
    pub expired_token_retention: Duration,
    /// How often each replica writes its usage totals to the registry (DESIGN §17): what
    /// a `kill -9` can lose at most.
    pub usage_flush_interval: Duration,
    /// How long usage rows are kept.
    pub usage_retention: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// A client-sent tenant label is replaced by the caller's.
    Override,
    /// A client-sent tenant label with another value fails the request with 400.
    Reject,
}

#[derive(Clone, Debug)]
pub struct TenancyConfig {
    pub label: String,
    pub on_conflict: ConflictPolicy,
    pub strip_label_on_read: bool,
}

/// An external identity provider whose JWTs name a tenant (DESIGN §4b).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The exact `aud` its tokens must carry.
    pub audience: String,
    pub jwks: JwksSource,
    /// The only algorithms accepted; never taken from a token's header.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The claim that names the tenant.
    pub tenant_claim: String,
    /// How often the JWKS is fetched again (cache lifetime).
    pub jwks_refresh: Duration,
    /// The least time between two fetches triggered by unknown key ids.
    pub jwks_cooldown: Duration,
    pub jwks_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    /// HTTPS, or plain HTTP to a loopback address only.
    Url(url::Url),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenConfig {
    /// PKCS#8 PEM Ed25519 key that signs the tokens promgate issues; generated when missing.
    pub signing_key_file: PathBuf,
    pub default_ttl: Duration,
}

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

/// The durable per-backend delivery queues of `delivery = "queued"` backends (DESIGN §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Holds one sub-folder per queued backend, named after it.
    pub directory: PathBuf,
    /// Bytes of queue files each backend may hold; when full, writes that need that
    /// queue get 503 + Retry-After and nothing queued is dropped.
    pub max_bytes: u64,
    /// On shutdown, how long the delivery workers go on draining the queues after the
    /// listeners closed; what is left stays on disk for the next start.
    pub drain_timeout: Duration,
}

pub const DEFAULT_QUEUE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The smallest `[queue] max_bytes`: room for a few segments of the smallest size.
pub const MIN_QUEUE_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_QUEUE_BYTES: u64 = 1024 * 1024 * 1024;

impl QueueConfig {
    /// Where the queue of backend `name` lives.
    pub fn backend_directory(&self, name: &str) -> PathBuf {
        self.directory.join(name)
    }
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

// ---------------------------------------------------------------------------
// Raw file shapes. Unknown keys are collected with serde_ignored, not rejected at the
// first one, so every unknown key is reported.

#[derive(Debug, Default, Deserialize)]
struct RawServer {
    listen: Option<String>,
    tls: Option<RawTls>,
    header_read_timeout: Option<HumanDuration>,
    max_header_bytes: Option<units::HumanSize>,
    body_read_timeout: Option<HumanDuration>,
    min_body_bytes_per_second: Option<u64>,
    max_connections: Option<usize>,
    max_in_flight_requests: Option<usize>,
    max_in_flight_decoded_bytes: Option<units::HumanSize>,
    max_in_flight_answer_bytes: Option<units::HumanSize>,
    in_flight_wait: Option<HumanDuration>,
    auth_failures_per_minute: Option<u32>,
    request_timeout: Option<HumanDuration>,
    trusted_proxies: Option<Vec<String>>,
    proxy_protocol: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAdmin {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    auth_failures_per_minute: Option<u32>,
    trusted_proxies: Option<Vec<String>>,
    proxy_protocol: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawStorage {
    database_url: Option<String>,
    poll_interval: Option<HumanDuration>,
    expired_token_retention: Option<HumanDuration>,
    usage_flush_interval: Option<HumanDuration>,
    usage_retention: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTenancy {
    label: Option<String>,
    on_conflict: Option<String>,
    strip_label_on_read: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAuth {
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
struct RawIssuer {
    issuer: Option<String>,
    audience: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    algorithms: Option<Vec<String>>,
    tenant_claim: Option<String>,
    jwks_refresh: Option<HumanDuration>,
    jwks_cooldown: Option<HumanDuration>,
    jwks_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTokens {
    signing_key_file: Option<PathBuf>,
    default_ttl: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
struct RawQueue {
    directory: Option<PathBuf>,
    max_bytes: Option<units::HumanSize>,
    drain_timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
struct RawBackend {
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

const SECTIONS: [&str; 9] = [
    "server", "admin", "storage", "tenancy", "auth", "limits", "backends", "queue", "otlp",
];

/// Every problem found in a config, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigErrors {
    pub problems: Vec<String>,
}

impl Config {
    /// The configuration promgate runs on when started without a file.
    pub fn defaults() -> Config {
        match Config::from_toml_str("", &BTreeMap::new()) {
            Ok(config) => config,
            // The empty file is valid by construction; tested below.
            Err(errors) => panic!("built-in defaults are invalid: {errors}"),
        }
    }

    /// Reads and validates a config file, with `PROMGATE_…` overrides from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigErrors {
            problems: vec![format!("cannot read {}: {err}", path.display())],
        })?;
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("PROMGATE_"))
            .collect();
        Config::from_toml_str(&text, &env)
    }

    /// Parses `text`, applies `env` overrides (`PROMGATE_SECTION__KEY=value`) and validates.
    pub fn from_toml_str(
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let mut root: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(err) => {
                return Err(ConfigErrors {
                    problems: vec![format!("not valid TOML: {err}")],
                })
            }
        };
        apply_env_overrides(&mut root, env, &mut problems);
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(format!("unknown key `{key}`"));
            }
        }
        let server: RawServer = section(&root, "server", &mut problems);
        let admin: RawAdmin = section(&root, "admin", &mut problems);
        let storage: RawStorage = section(&root, "storage", &mut problems);
        let tenancy: RawTenancy = section(&root, "tenancy", &mut problems);
        let auth: RawAuth = section(&root, "auth", &mut problems);
        let limit_overrides: LimitOverrides = section(&root, "limits", &mut problems);
        let raw_backends: Vec<RawBackend> = section_list(&root, "backends", &mut problems);
        let raw_queue: RawQueue = section(&root, "queue", &mut problems);
        let raw_otlp: otlp::RawOtlp = section(&root, "otlp", &mut problems);
        let otlp = raw_otlp.validate(&mut problems);

        let storage = StorageConfig {
            database_url: storage
                .database_url
                .unwrap_or_else(|| "sqlite://promgate.db".into()),
            poll_interval: storage
                .poll_interval
                .map_or(Duration::from_secs(1), |d| d.0),
            expired_token_retention: storage
                .expired_token_retention
                .map_or(Duration::from_secs(30 * 24 * 3600), |d| d.0),
            usage_flush_interval: storage
                .usage_flush_interval
                .map_or(Duration::from_secs(60), |d| d.0),
            usage_retention: storage
                .usage_retention
                .map_or(Duration::from_secs(400 * 24 * 3600), |d| d.0),
        };
        if storage.poll_interval.is_zero() {
            problems.push("storage.poll_interval must be longer than 0s".into());
        }
        if storage.usage_flush_interval < Duration::from_secs(1)
            || storage.usage_flush_interval > Duration::from_secs(60)
        {
            problems.push(
                "storage.usage_flush_interval must be between 1s and 60s (usage is written at least every minute)"
                    .into(),
            );
        }
        if storage.usage_retention < Duration::from_secs(24 * 3600) {
            problems.push("storage.usage_retention must be at least 1d".into());
        }
        let secrets_dir = secrets_dir(&storage.database_url, &mut problems);
        let mut server_cfg = validate_server(&server, &mut problems);
        server_cfg.tls = server.tls.map(|raw| validate_tls(raw, &mut problems));
        let admin_cfg = AdminConfig {
            listen: parse_addr(
                "admin.listen",
                admin.listen.as_deref(),
                "127.0.0.1:9202",
                &mut problems,
            ),
            token_file: admin
                .token_file
                .unwrap_or_else(|| secrets_dir.join("promgate-admin.token")),
            auth_failures_per_minute: admin.auth_failures_per_minute.unwrap_or(5),
            trusted_proxies: validate_trusted_proxies(
                "admin",
                admin.trusted_proxies.as_deref(),
                &mut problems,
            ),
            proxy_protocol: admin.proxy_protocol.unwrap_or(false),
        };
        check_proxy_protocol(
            "admin",
            admin_cfg.proxy_protocol,
            &admin_cfg.trusted_proxies,
            &mut problems,
        );
        if admin_cfg.auth_failures_per_minute == 0 {
            problems.push("admin.auth_failures_per_minute must be at least 1".into());
        }
        let queue = QueueConfig {
            directory: raw_queue
                .directory
                .unwrap_or_else(|| secrets_dir.join("promgate-queue")),
            max_bytes: raw_queue
                .max_bytes
                .map_or(DEFAULT_QUEUE_BYTES, |size| size.0),
            drain_timeout: raw_queue
                .drain_timeout
                .map_or(DEFAULT_QUEUE_DRAIN_TIMEOUT, |d| d.0),
        };
        if queue.directory.as_os_str().is_empty() {
            problems.push("queue.directory must not be empty".into());
        }
        if queue.max_bytes < MIN_QUEUE_BYTES {
            problems.push(format!(
                "queue.max_bytes must be at least {}",
                units::HumanSize(MIN_QUEUE_BYTES)
            ));
        }
        let issuers = validate_issuers(auth.issuers, &mut problems);
        let tokens = TokenConfig {
            signing_key_file: auth
                .tokens
                .signing_key_file
                .unwrap_or_else(|| secrets_dir.join("promgate-signing.key")),
            default_ttl: auth
                .tokens
                .default_ttl
                .map_or(Duration::from_secs(90 * 86_400), |d| d.0),
        };
        if tokens.default_ttl.is_zero() {
            problems.push("auth.tokens.default_ttl must be longer than 0s".into());
        }
        let before_tenancy = problems.len();
        let tenancy = validate_tenancy(tenancy, &mut problems);
        let tenancy_valid = problems.len() == before_tenancy;
        let limits = Limits::default().with(&limit_overrides);
        problems.extend(limits.problems());
        // A tenancy label refused already (such as "cluster") is not reported twice.
        if tenancy_valid {
            problems.extend(limits.ha_label_problems(&tenancy.label));
        }
        if limits.max_in_flight_decoded_bytes > server_cfg.max_in_flight_decoded_bytes {
            problems.push(format!(
                "limits.max_in_flight_decoded_bytes ({}) is larger than server.max_in_flight_decoded_bytes ({}), \
                 the whole relay's budget",
                units::HumanSize(limits.max_in_flight_decoded_bytes),
                units::HumanSize(server_cfg.max_in_flight_decoded_bytes)
            ));
        }
        let backends = validate_backends(raw_backends, &mut problems);
        for backend in &backends {
            if backend.timeout >= server_cfg.request_timeout {
                problems.push(format!(
                    "backends: {:?} has a timeout of {} which is not below server.request_timeout ({}); \
                     promgate would answer before the backend does",
                    backend.name,
                    humantime::format_duration(backend.timeout),
                    humantime::format_duration(server_cfg.request_timeout)
                ));
            }
        }

        if problems.is_empty() {
            Ok(Config {
                server: server_cfg,
                admin: admin_cfg,
                storage,
                tenancy,
                tokens,
                issuers,
                limits,
                backends,
                queue,
                otlp,
            })
        } else {
            Err(ConfigErrors { problems })
        }
    }

    pub fn backend_names(&self) -> impl Iterator<Item = &str> {
        self.backends.iter().map(|b| b.name.as_str())
    }
}

/// `PROMGATE_LIMITS__MAX_REQUEST_BYTES=64MiB` sets `[limits] max_request_bytes`. The value
/// is read as a TOML value when it parses as one, else as a string.
fn apply_env_overrides(
    root: &mut toml::Table,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    for (name, raw_value) in env {
        let Some(path) = name.strip_prefix("PROMGATE_") else {
            continue;
        };
        let Some((section, key)) = path.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let value = format!("v = {raw_value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw_value.clone()));
        match root
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(table) => {
                table.insert(key, value);
            }
            _ => problems.push(format!("{name}: `{section}` is not a table")),
        }
    }
}

fn section<T: DeserializeOwned + Default>(
    root: &toml::Table,
    name: &str,
    problems: &mut Vec<String>,
) -> T {
    let Some(value) = root.get(name) else {
        return T::default();
    };
    deserialize_reporting_unknown(value.clone(), name, problems).unwrap_or_default()
}

fn section_list<T: DeserializeOwned>(
    root: &toml::Table,
    name: &str,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let Some(value) = root.get(name) else {
        return Vec::new();
    };
    let toml::Value::Array(items) = value else {
        problems.push(format!("`{name}` must be an array of tables ([[{name}]])"));
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| {
            deserialize_reporting_unknown(item.clone(), &format!("{name}[{index}]"), problems)
        })
        .collect()
}

fn deserialize_reporting_unknown<T: DeserializeOwned>(
    value: toml::Value,
    context: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    for path in unknown {
        problems.push(format!("unknown key `{context}.{path}`"));
    }
    match parsed {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            problems.push(format!("{context}: {err}"));
            None
        }
    }
}

/// Secrets live next to the SQLite file, or in the working directory otherwise (with
/// PostgreSQL, point every replica at the same mounted secret files instead).
fn secrets_dir(database_url: &str, problems: &mut Vec<String>) -> PathBuf {
    if let Some(path) = sqlite_path(database_url) {
        return path.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        problems.push(format!(
            "storage.database_url: use a sqlite:// or postgres:// URL, not {:?}",
            database_url.split(':').next().unwrap_or_default()
        ));
    }
    PathBuf::new()
}

/// The file behind a `sqlite://` URL, without query parameters.
pub fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    Some(PathBuf::from(path))
}

fn parse_addr(
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

fn validate_server(raw: &RawServer, problems: &mut Vec<String>) -> ServerConfig {
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
fn validate_trusted_proxies(
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
fn check_proxy_protocol(
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

fn validate_issuers(raw: Vec<RawIssuer>, problems: &mut Vec<String>) -> Vec<IssuerConfig> {
    let mut issuers: Vec<IssuerConfig> = Vec::new();
    for (index, issuer) in raw.into_iter().enumerate() {
        let context = format!("auth.issuers[{index}]");
        let name = issuer.issuer.unwrap_or_default();
        if name.is_empty() {
            problems.push(format!("{context}.issuer is required"));
        } else if name == PROMGATE_ISSUER {
            problems.push(format!(
                "{context}.issuer: {name:?} is promgate's own issuer"
            ));
        } else if issuers.iter().any(|other| other.issuer == name) {
            problems.push(format!("{context}.issuer: {name:?} is configured twice"));
        }
        let audience = issuer.audience.unwrap_or_default();
        if audience.is_empty() {
            problems.push(format!("{context}.audience is required"));
        }
        let jwks = match (issuer.jwks_file, issuer.jwks_url) {
            (Some(file), None) => Some(JwksSource::File(file)),
            (None, Some(text)) => match url::Url::parse(&text) {
                Ok(url) if url.scheme() == "https" => Some(JwksSource::Url(url)),
                Ok(url) if url.scheme() == "http" && is_loopback(&url) => {
                    Some(JwksSource::Url(url))
                }
                _ => {
                    problems.push(format!(
                        "{context}.jwks_url: {text:?} must be an https:// URL (http:// only to a loopback address)"
                    ));
                    None
                }
            },
            _ => {
                problems.push(format!(
                    "{context}: set exactly one of jwks_file and jwks_url"
                ));
                None
            }
        };
        let mut algorithms = Vec::new();
        for text in issuer.algorithms.unwrap_or_default() {
            match text.parse::<jsonwebtoken::Algorithm>() {
                Ok(algorithm) if algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac => problems.push(format!(
                    "{context}.algorithms: {text} is an HMAC algorithm; only asymmetric algorithms are accepted"
                )),
                Ok(algorithm) => algorithms.push(algorithm),
                Err(_) => problems.push(format!("{context}.algorithms: {text:?} is not a JWT algorithm")),
            }
        }
        if algorithms.is_empty() {
            problems.push(format!(
                "{context}.algorithms: list the algorithms this issuer signs with"
            ));
        }
        let config = IssuerConfig {
            issuer: name,
            audience,
            jwks: jwks.unwrap_or(JwksSource::File(PathBuf::new())),
            algorithms,
            tenant_claim: issuer.tenant_claim.unwrap_or_else(|| "tenant".into()),
            jwks_refresh: issuer
                .jwks_refresh
                .map_or(Duration::from_secs(600), |d| d.0),
            jwks_cooldown: issuer
                .jwks_cooldown
                .map_or(Duration::from_secs(30), |d| d.0),
            jwks_timeout: issuer.jwks_timeout.map_or(Duration::from_secs(5), |d| d.0),
        };
        if config.tenant_claim.is_empty() {
            problems.push(format!("{context}.tenant_claim must not be empty"));
        }
        issuers.push(config);
    }
    issuers
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    }
}

/// Label names that senders' series already carry (Prometheus' target and histogram
/// labels, Kubernetes service discovery, HA pairs). Scoped by one of them, a tenant would
/// read every series whose value names it, whoever wrote it; names starting with `__` are
/// refused as well (reserved by Prometheus).
const LABELS_COMMON_IN_SERIES: [&str; 16] = [
    "job",
    "instance",
    "__name__",
    "le",
    "quantile",
    "namespace",
    "pod",
    "container",
    "cluster",
    "service",
    "node",
    "endpoint",
    "replica",
    "__replica__",
    "prometheus",
    "prometheus_replica",
];

fn validate_tenancy(raw: RawTenancy, problems: &mut Vec<String>) -> TenancyConfig {
    let label = raw.label.unwrap_or_else(|| "tenant_id".into());
    if !is_legacy_label_name(&label) || label.starts_with("__") {
        problems.push(format!(
            "tenancy.label: {label:?} must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"
        ));
    } else if LABELS_COMMON_IN_SERIES.contains(&label.as_str()) {
        problems.push(format!(
            "tenancy.label: {label:?} is a label senders' series already carry (tenant \"x\" \
             would read every series with {label}=\"x\", whoever wrote it); choose one of its \
             own, such as \"tenant_id\" (the default) or \"org_id\""
        ));
    }
    let on_conflict = match raw.on_conflict.as_deref().unwrap_or("override") {
        "override" => ConflictPolicy::Override,
        "reject" => ConflictPolicy::Reject,
        other => {
            problems.push(format!(
                "tenancy.on_conflict: {other:?} must be \"override\" or \"reject\""
            ));
            ConflictPolicy::Override
        }
    };
    TenancyConfig {
        label,
        on_conflict,
        strip_label_on_read: raw.strip_label_on_read.unwrap_or(true),
    }
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

fn validate_backends(raw: Vec<RawBackend>, problems: &mut Vec<String>) -> Vec<BackendConfig> {
    if raw.is_empty() {
        return vec![BackendConfig {
            name: "primary".into(),
            write_url: url::Url::parse("http://127.0.0.1:9090/api/v1/write").expect("static URL"),
            read_url: Some(
                url::Url::parse("http://127.0.0.1:9090/api/v1/read").expect("static URL"),
            ),
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
        }];
    }
    let mut seen = HashSet::new();
    let mut backends = Vec::new();
    for (index, backend) in raw.into_iter().enumerate() {
        let context = format!("backends[{index}]");
        let name = backend.name.unwrap_or_default();
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
        let tenant_header = backend.tenant_header.as_deref().and_then(|text| {
            match http::HeaderName::from_bytes(text.as_bytes()) {
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
            }
        });
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
        let tls_keys_set =
            backend.ca_file.is_some() || client_cert.is_some() || server_name.is_some();
        if tls_keys_set
            && write_url
                .as_ref()
                .is_some_and(|url| url.scheme() != "https")
        {
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
        if let Some(write_url) = write_url {
            backends.push(BackendConfig {
                name,
                write_url,
                read_url: read_url.flatten(),
                query_url: query_url.flatten(),
                tenant_header,
                timeout,
                max_retry_after,
                max_request_bytes,
                max_samples_per_request,
                bearer_token_file: backend.bearer_token_file,
                basic_auth,
                ca_file: backend.ca_file,
                client_cert,
                server_name,
                protocol,
                delivery,
            });
        }
    }
    backends
}

fn parse_url(key: &str, text: Option<&str>, problems: &mut Vec<String>) -> Option<url::Url> {
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

/// `[a-zA-Z_][a-zA-Z0-9_]*`: the label-name syntax every backend accepts.
pub fn is_legacy_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_str(text, &BTreeMap::new())
    }

    #[test]
    fn usage_keys_have_defaults_and_bounds() {
        let config = parse("").expect("defaults are valid");
        assert_eq!(config.storage.usage_flush_interval, Duration::from_secs(60));
        assert_eq!(
            config.storage.usage_retention,
            Duration::from_secs(400 * 24 * 3600)
        );
        let config = parse("[storage]\nusage_flush_interval = \"1s\"\nusage_retention = \"30d\"\n")
            .expect("valid");
        assert_eq!(config.storage.usage_flush_interval, Duration::from_secs(1));
        assert_eq!(
            config.storage.usage_retention,
            Duration::from_secs(30 * 24 * 3600)
        );
        for bad in [
            "usage_flush_interval = \"0s\"",
            "usage_flush_interval = \"2m\"",
            "usage_retention = \"12h\"",
        ] {
            let errors = parse(&format!("[storage]\n{bad}\n")).expect_err(bad);
            assert!(
                errors
                    .problems
                    .iter()
                    .any(|problem| problem.contains("storage.usage_")),
                "{bad}: {:?}",
                errors.problems
            );
        }
    }

    #[test]
    fn empty_file_gives_design_defaults() {
        let config = parse("").expect("defaults are valid");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:9201");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9202");
        assert_eq!(config.storage.database_url, "sqlite://promgate.db");
        assert_eq!(config.tenancy.label, "tenant_id");
        assert_eq!(config.backends.len(), 1);
        assert_eq!(
            config.backends[0].write_url.as_str(),
            "http://127.0.0.1:9090/api/v1/write"
        );
        assert_eq!(
            config.admin.token_file,
            PathBuf::from("promgate-admin.token")
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = parse(
            r#"
            bogus = 1
            [server]
            listen = "nowhere"
            colour = "blue"
            [tenancy]
            on_conflict = "merge"
            [limits]
            max_request_bytes = "32MiB"
            max_requets_bytes = 5
            throttle_status = 418
            [[backends]]
            name = "a"
            write_url = "ftp://x"
            timeout = "45s"
            max_retry_after = "0s"
            [[backends]]
            name = "a"
            write_url = "http://127.0.0.1:1/api/v1/write"
            tenant_header = "Authorization"
            "#,
        )
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "unknown key `bogus`",
            "unknown key `server.colour`",
            "server.listen",
            "tenancy.on_conflict",
            "unknown key `limits.max_requets_bytes`",
            "throttle_status",
            "backends[0].write_url",
            "backends[0].timeout",
            "backends[0].max_retry_after",
            "backends[1].name",
            "backends[1].tenant_header",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(errors.problems.len(), 11, "{text}");
    }

    #[test]
    fn environment_overrides_single_keys() {
        let env = BTreeMap::from([
            (
                "PROMGATE_SERVER__LISTEN".to_string(),
                "127.0.0.1:7000".to_string(),
            ),
            (
                "PROMGATE_LIMITS__MAX_SERIES_PER_REQUEST".to_string(),
                "7".to_string(),
            ),
        ]);
        let config =
            Config::from_toml_str("[server]\nlisten = \"127.0.0.1:1\"\n", &env).expect("valid");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.limits.max_series_per_request, 7);
    }

    #[test]
    fn issuers_are_checked() {
        let errors = parse(
            r#"
            [[auth.issuers]]
            issuer = "https://idp.example"
            audience = "promgate"
            jwks_url = "http://idp.example/jwks.json"
            algorithms = ["HS256", "XX1"]
            [[auth.issuers]]
            issuer = "promgate"
            audience = "promgate"
            jwks_file = "jwks.json"
            jwks_url = "https://idp.example/jwks.json"
            algorithms = ["RS256"]
            "#,
        )
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "auth.issuers[0].jwks_url",
            "HMAC",
            "\"XX1\" is not a JWT algorithm",
            "auth.issuers[1].issuer",
            "exactly one of jwks_file and jwks_url",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let config = parse(
            "[[auth.issuers]]\nissuer = \"https://idp.example\"\naudience = \"promgate\"\njwks_url = \"http://127.0.0.1:8080/jwks\"\nalgorithms = [\"RS256\", \"ES256\"]\n",
        )
        .expect("loopback http and asymmetric algorithms are fine");
        assert_eq!(config.issuers[0].tenant_claim, "tenant");
        assert_eq!(config.issuers[0].jwks_cooldown, Duration::from_secs(30));
    }

    #[test]
    fn trusted_proxies_and_proxy_protocol_are_checked() {
        let config = parse("").expect("defaults");
        assert!(config.server.trusted_proxies.is_empty());
        assert!(config.admin.trusted_proxies.is_empty());
        assert!(!config.server.proxy_protocol && !config.admin.proxy_protocol);

        let config = parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\"]\nproxy_protocol = true\n[admin]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        )
        .expect("valid");
        assert_eq!(config.server.trusted_proxies.networks().len(), 3);
        assert!(config.server.proxy_protocol);
        assert!(config
            .admin
            .trusted_proxies
            .contains("127.0.0.1".parse().expect("ip")));
        assert!(!config.admin.proxy_protocol);

        let errors = parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\", \"proxy.example\", \"10.1.2.3/8\"]\n[admin]\nproxy_protocol = true\n",
        )
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "server.trusted_proxies: \"10.0.0.0/33\"",
            "server.trusted_proxies: \"proxy.example\"",
            "did you mean 10.0.0.0/8?",
            "admin.proxy_protocol",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(errors.problems.len(), 4, "{text}");
    }

    #[test]
    fn the_otlp_section_is_checked() {
        let defaults = Config::defaults().otlp;
        assert_eq!(defaults, OtlpConfig::default());
        assert_eq!(
            defaults.translation_strategy,
            TranslationStrategy::UnderscoreEscapingWithSuffixes
        );
        let config = parse(
            "[otlp]\ntranslation_strategy = \"NoUTF8EscapingWithSuffixes\"\n\
             promote_resource_attributes = [\"k8s.namespace.name\", \" region \"]\n\
             keep_identifying_resource_attributes = true\nallow_delta_temporality = true\n",
        )
        .expect("valid");
        assert_eq!(
            config.otlp.translation_strategy,
            TranslationStrategy::NoUtf8EscapingWithSuffixes
        );
        assert!(config.otlp.promotion.promotes("region"));
        assert!(config.otlp.promotion.promotes("k8s.namespace.name"));
        assert!(!config.otlp.promotion.promotes("host.name"));
        assert!(config.otlp.keep_identifying_resource_attributes);
        assert!(config.otlp.allow_delta_temporality);
        let errors = parse(
            "[otlp]\ntranslation_strategy = \"Underscores\"\npromote_resource_attributes = [\"a\", \"a\", \"\"]\n\
             promote_all_resource_attributes = true\nconvert_histograms_to_nhcb = true\n",
        )
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "otlp.translation_strategy",
            "cannot both be set",
            "convert_histograms_to_nhcb",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let errors = parse("[otlp]\npromote_resource_attributes = [\"a\", \"a\", \" \"]\n")
            .expect_err("invalid");
        let text = errors.to_string();
        assert!(
            text.contains("listed twice") && text.contains("is empty"),
            "{text}"
        );
    }

    #[test]
    fn secrets_default_next_to_the_database() {
        let config =
            parse("[storage]\ndatabase_url = \"sqlite:///var/lib/promgate/db.sqlite?mode=rwc\"\n")
                .expect("valid");
        assert_eq!(
            config.admin.token_file,
            PathBuf::from("/var/lib/promgate/promgate-admin.token")
        );
        assert_eq!(
            config.tokens.signing_key_file,
            PathBuf::from("/var/lib/promgate/promgate-signing.key")
        );
        assert_eq!(
            config.queue.directory,
            PathBuf::from("/var/lib/promgate/promgate-queue")
        );
        assert_eq!(config.queue.max_bytes, DEFAULT_QUEUE_BYTES);
    }

    #[test]
    fn backend_tls_keys_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "-").expect("file");
        let pem = pem.display();
        let config = parse(&format!(
            "[[backends]]\nname = \"b\"\nwrite_url = \"https://127.0.0.1:9/w\"\nca_file = \"{pem}\"\n\
             cert_file = \"{pem}\"\nkey_file = \"{pem}\"\nserver_name = \"tsdb.internal\"\n"
        ))
        .expect("valid");
        let backend = &config.backends[0];
        assert_eq!(backend.server_name.as_deref(), Some("tsdb.internal"));
        assert!(backend.client_cert.is_some());

        let errors = parse(&format!(
            "[[backends]]\nname = \"a\"\nwrite_url = \"https://127.0.0.1:9/w\"\ninsecure_skip_verify = true\n\
             cert_file = \"{pem}\"\nserver_name = \"not a name\"\n\
             [[backends]]\nname = \"b\"\nwrite_url = \"http://127.0.0.1:9/w\"\nca_file = \"{pem}\"\n"
        ))
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "backends[0].insecure_skip_verify: promgate always verifies",
            "backends[0]: cert_file and key_file go together",
            "backends[0].server_name: \"not a name\"",
            "backends[1]: ca_file, cert_file, key_file and server_name need an https:// write_url",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(errors.problems.len(), 4, "{text}");
    }

    #[test]
    fn the_queue_section_and_queued_delivery_are_checked() {
        let config = parse(
            "[queue]\ndirectory = \"/srv/queue\"\nmax_bytes = \"10GiB\"\ndrain_timeout = \"1m\"\n\
             [[backends]]\nname = \"b\"\nwrite_url = \"http://b/w\"\ndelivery = \"queued\"\n\
             [[backends]]\nname = \"c\"\nwrite_url = \"http://c/w\"\n",
        )
        .expect("valid");
        assert_eq!(config.queue.directory, PathBuf::from("/srv/queue"));
        assert_eq!(config.queue.max_bytes, 10 * 1024 * 1024 * 1024);
        assert_eq!(config.queue.drain_timeout, Duration::from_secs(60));
        assert_eq!(
            config.queue.backend_directory("mimir"),
            PathBuf::from("/srv/queue/mimir")
        );
        assert_eq!(config.backends[0].delivery, Delivery::Queued);
        assert_eq!(config.backends[1].delivery, Delivery::Sync);

        let errors = parse(
            "[queue]\nmax_bytes = \"10KiB\"\nmax_age = \"1h\"\n\
             [[backends]]\nname = \"b\"\nwrite_url = \"http://b/w\"\ndelivery = \"async\"\n",
        )
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "queue.max_bytes must be at least",
            "unknown key `queue.max_age`",
            "delivery: \"async\" must be \"sync\" or \"queued\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn tenant_labels_that_series_already_carry_are_refused() {
        let label = |name: &str| parse(&format!("[tenancy]\nlabel = {name:?}\n"));
        for refused in [
            "job",
            "instance",
            "__name__",
            "le",
            "quantile",
            "namespace",
            "pod",
            "container",
            "cluster",
            "service",
            "__replica__",
            "__tenant__",
            "replica",
            "1tenant",
            "tenant-id",
            "tenant.id",
            "",
        ] {
            let errors = label(refused).expect_err(refused);
            assert!(
                errors.to_string().contains("tenancy.label"),
                "{refused:?}: {errors}"
            );
            assert_eq!(errors.problems.len(), 1, "{refused:?}: {errors}");
        }
        for accepted in ["tenant_id", "org_id", "team", "_tenant"] {
            assert_eq!(
                label(accepted).expect(accepted).tenancy.label,
                accepted,
                "{accepted:?}"
            );
        }
        assert_eq!(parse("").expect("default").tenancy.label, "tenant_id");
    }

    #[test]
    fn ha_labels_may_not_be_the_tenancy_label() {
        let errors =
            parse("[tenancy]\nlabel = \"org_id\"\n[limits]\nha_replica_label = \"org_id\"\n")
                .expect_err("the replica label is the tenancy label");
        assert!(errors.to_string().contains("ha_replica_label"), "{errors}");
        assert!(
            parse("[limits]\naccept_ha_samples = true\nha_failover_timeout = \"10s\"\n").is_ok()
        );
    }
}
