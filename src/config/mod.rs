//! Configuration: the TOML file of DESIGN §3 read into raw serde types, then checked
//! into a validated [`Config`]. Every problem is collected so `check-config` can
//! report them all in one run; unknown keys are problems, never silently ignored.

pub mod backends;
pub mod limits;
pub mod network;
pub mod otlp;
pub mod server;
pub mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use backends::{validate_backends, RawBackend};
pub use backends::{
    BackendConfig, BasicAuth, ClientCertFiles, Delivery, WriteProtocol, DEFAULT_BACKEND_TIMEOUT,
    DEFAULT_MAX_RETRY_AFTER, MAX_BACKEND_TIMEOUT,
};
pub use limits::{LimitOverrides, Limits};
pub use network::{IpNetwork, NetworkError, TrustedProxies};
pub use otlp::{OtlpConfig, Promotion, TranslationStrategy};
use server::{
    check_proxy_protocol, parse_addr, validate_server, validate_tls, validate_trusted_proxies,
    RawServer,
};
pub use server::{
    ClientAuth, ConnectionLimits, ServerConfig, TlsConfig, DEFAULT_IN_FLIGHT_ANSWER_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
};
use units::HumanDuration;

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

// ---------------------------------------------------------------------------
// Raw file shapes. Unknown keys are collected with serde_ignored, not rejected at the
// first one, so every unknown key is reported.

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

        let storage = validate_storage(storage, &mut problems);
        let secrets_dir = secrets_dir(&storage.database_url, &mut problems);
        let mut server_cfg = validate_server(&server, &mut problems);
        server_cfg.tls = server.tls.map(|raw| validate_tls(raw, &mut problems));
        let admin_cfg = validate_admin(admin, &secrets_dir, &mut problems);
        let queue = validate_queue(raw_queue, &secrets_dir, &mut problems);
        let issuers = validate_issuers(auth.issuers, &mut problems);
        let tokens = validate_tokens(auth.tokens, &secrets_dir, &mut problems);
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
/// `[storage]`: where the registry lives, how often replicas poll it, how long usage and
/// expired tokens are kept.
fn validate_storage(storage: RawStorage, problems: &mut Vec<String>) -> StorageConfig {
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
    storage
}

/// `[admin]`: the admin listener.
fn validate_admin(admin: RawAdmin, secrets_dir: &Path, problems: &mut Vec<String>) -> AdminConfig {
    let admin_cfg = AdminConfig {
        listen: parse_addr(
            "admin.listen",
            admin.listen.as_deref(),
            "127.0.0.1:9202",
            problems,
        ),
        token_file: admin
            .token_file
            .unwrap_or_else(|| secrets_dir.join("promgate-admin.token")),
        auth_failures_per_minute: admin.auth_failures_per_minute.unwrap_or(5),
        trusted_proxies: validate_trusted_proxies(
            "admin",
            admin.trusted_proxies.as_deref(),
            problems,
        ),
        proxy_protocol: admin.proxy_protocol.unwrap_or(false),
    };
    check_proxy_protocol(
        "admin",
        admin_cfg.proxy_protocol,
        &admin_cfg.trusted_proxies,
        problems,
    );
    if admin_cfg.auth_failures_per_minute == 0 {
        problems.push("admin.auth_failures_per_minute must be at least 1".into());
    }
    admin_cfg
}

/// `[queue]`: where queued backends keep their queues, and how much.
fn validate_queue(
    raw_queue: RawQueue,
    secrets_dir: &Path,
    problems: &mut Vec<String>,
) -> QueueConfig {
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
    queue
}

/// `[auth.tokens]`: the tokens promgate issues itself.
fn validate_tokens(
    tokens: RawTokens,
    secrets_dir: &Path,
    problems: &mut Vec<String>,
) -> TokenConfig {
    let config = TokenConfig {
        signing_key_file: tokens
            .signing_key_file
            .unwrap_or_else(|| secrets_dir.join("promgate-signing.key")),
        default_ttl: tokens
            .default_ttl
            .map_or(Duration::from_secs(90 * 86_400), |d| d.0),
    };
    if config.default_ttl.is_zero() {
        problems.push("auth.tokens.default_ttl must be longer than 0s".into());
    }
    config
}

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
