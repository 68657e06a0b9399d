//! Logging setup and the `/metrics` registry (DESIGN §10). Metric names live here as
//! one struct; labels are low-cardinality (tenant and backend names, fixed reasons),
//! never series labels. Logs are structured and never carry tokens, keys or bodies.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Installs the JSON log subscriber. The filter comes from `PROMGATE_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROMGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .try_init();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointTenantCode {
    pub endpoint: String,
    pub tenant: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointTenantReason {
    pub endpoint: String,
    pub tenant: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointTenant {
    pub endpoint: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantBackend {
    pub tenant: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantReason {
    pub tenant: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantCluster {
    pub tenant: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantOutcome {
    pub tenant: String,
    /// `accepted` or `rejected`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendOutcome {
    pub backend: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub endpoint: String,
    pub tenant: String,
    /// `samples`, `requests`, `read_requests`, `read_slots`.
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

impl BackendLabel {
    pub fn of(backend: &str) -> BackendLabel {
        BackendLabel {
            backend: backend.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendReason {
    pub backend: String,
    pub reason: String,
}

/// Request latency per tenant: few buckets, as every tenant has its own (14 series per
/// tenant and endpoint).
fn request_duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// fsyncs take from tens of microseconds (a battery-backed cache) to seconds (a
/// saturated disk).
fn fsync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// Config reloads (SIGHUP, `POST /-/reload`), named as Prometheus names its own.
pub struct ReloadMetrics {
    /// 1 when the last reload (or the start) applied the file, 0 when it was refused.
    pub successful: Gauge,
    /// Unix time of the last applied config, the start's included.
    pub success_timestamp: Gauge<f64, AtomicU64>,
}

impl ReloadMetrics {
    fn new(registry: &mut Registry) -> ReloadMetrics {
        let metrics = ReloadMetrics {
            successful: Gauge::default(),
            success_timestamp: Gauge::default(),
        };
        registry.register(
            "promgate_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful",
            metrics.successful.clone(),
        );
        registry.register(
            "promgate_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload",
            metrics.success_timestamp.clone(),
        );
        metrics
    }

    /// The config in force was applied now.
    pub fn succeeded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |elapsed| elapsed.as_secs_f64());
        self.successful.set(1);
        self.success_timestamp.set(now);
    }

    pub fn failed(&self) {
        self.successful.set(0);
    }
}

/// The durable delivery queues of queued backends (DESIGN §9), by backend. The gauges
/// are read off the queues when `/metrics` is scraped.
pub struct QueueMetrics {
    pub records: Family<BackendLabel, Gauge>,
    pub bytes: Family<BackendLabel, Gauge>,
    pub max_bytes: Family<BackendLabel, Gauge>,
    pub oldest_record_age: Family<BackendLabel, Gauge<f64, AtomicU64>>,
    pub appended: Family<BackendLabel, Counter>,
    pub delivered: Family<BackendLabel, Counter>,
    pub retries: Family<BackendLabel, Counter>,
    pub dropped: Family<BackendReason, Counter>,
    pub corrupt: Family<BackendLabel, Counter>,
    pub fsync_duration: Family<BackendLabel, Histogram, fn() -> Histogram>,
}

impl QueueMetrics {
    fn new(registry: &mut Registry) -> QueueMetrics {
        let metrics = QueueMetrics {
            records: Family::default(),
            bytes: Family::default(),
            max_bytes: Family::default(),
            oldest_record_age: Family::default(),
            appended: Family::default(),
            delivered: Family::default(),
            retries: Family::default(),
            dropped: Family::default(),
            corrupt: Family::default(),
            fsync_duration: Family::new_with_constructor(fsync_histogram),
        };
        registry.register(
            "promgate_queue_records",
            "Records in a queued backend's durable queue, not yet delivered",
            metrics.records.clone(),
        );
        registry.register(
            "promgate_queue_bytes",
            "Bytes of a queued backend's queue files on disk (what queue.max_bytes limits)",
            metrics.bytes.clone(),
        );
        registry.register(
            "promgate_queue_max_bytes",
            "The disk quota of a queued backend's queue (queue.max_bytes); writes that need a full queue get 503",
            metrics.max_bytes.clone(),
        );
        registry.register(
            "promgate_queue_oldest_record_age_seconds",
            "Age of the oldest record not yet delivered (0 when the queue is empty)",
            metrics.oldest_record_age.clone(),
        );
        registry.register(
            "promgate_queue_appended_records",
            "Writes queued for a backend (each on disk before the sender's 2xx)",
            metrics.appended.clone(),
        );
        registry.register(
            "promgate_queue_delivered_records",
            "Queued writes the backend accepted",
            metrics.delivered.clone(),
        );
        registry.register(
            "promgate_queue_retries",
            "Delivery attempts of queued writes that failed transiently and will be retried",
            metrics.retries.clone(),
        );
        registry.register(
            "promgate_queue_dropped_records",
            "Queued writes dropped, by reason: rejected (a permanent 4xx from the backend) or unreadable",
            metrics.dropped.clone(),
        );
        registry.register(
            "promgate_queue_corrupt_records",
            "Damaged stretches of queue files skipped (at start-up or while reading)",
            metrics.corrupt.clone(),
        );
        registry.register(
            "promgate_queue_fsync_duration_seconds",
            "Latency of fsyncs of queue data (one per group commit)",
            metrics.fsync_duration.clone(),
        );
        metrics
    }

    pub fn backend(backend: &str) -> BackendLabel {
        BackendLabel {
            backend: backend.to_string(),
        }
    }

    /// The backend's counter of records dropped for `reason`.
    pub fn dropped(&self, backend: &str, reason: &str) -> Counter {
        self.dropped
            .get_or_create(&BackendReason {
                backend: backend.to_string(),
                reason: reason.to_string(),
            })
            .clone()
    }

    /// Sets the backend's gauges: records pending, bytes on disk, and when the oldest
    /// pending record was appended.
    pub fn set_stats(
        &self,
        backend: &str,
        pending_records: u64,
        bytes: u64,
        oldest_appended_at: Option<SystemTime>,
    ) {
        let label = QueueMetrics::backend(backend);
        self.records
            .get_or_create(&label)
            .set(i64::try_from(pending_records).unwrap_or(i64::MAX));
        self.bytes
            .get_or_create(&label)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let age = oldest_appended_at
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .map_or(0.0, |age| age.as_secs_f64());
        self.oldest_record_age.get_or_create(&label).set(age);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerFile {
    pub listener: String,
    pub file: String,
}

/// When a listener's TLS certificate and revocation lists expire (Unix seconds), set when
/// they are loaded and on every reload.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    listener: String,
    certificate_expiry: Family<ListenerLabel, Gauge>,
    crl_next_update: Family<ListenerFile, Gauge>,
}

impl TlsMetrics {
    /// The handles of one listener's gauges.
    pub fn for_listener(&self, listener: &str) -> TlsMetrics {
        TlsMetrics {
            listener: listener.to_string(),
            ..self.clone()
        }
    }

    /// Sets the certificate's `notAfter` and each revocation list file's `nextUpdate`.
    pub fn set(
        &self,
        certificate_not_after: Option<i64>,
        crl_next_update: &[(String, Option<i64>)],
    ) {
        let listener = ListenerLabel {
            listener: self.listener.clone(),
        };
        match certificate_not_after {
            Some(at) => {
                self.certificate_expiry.get_or_create(&listener).set(at);
            }
            None => {
                self.certificate_expiry.remove(&listener);
            }
        }
        for (file, next_update) in crl_next_update {
            let labels = ListenerFile {
                listener: self.listener.clone(),
                file: file.clone(),
            };
            match next_update {
                Some(at) => {
                    self.crl_next_update.get_or_create(&labels).set(*at);
                }
                None => {
                    self.crl_next_update.remove(&labels);
                }
            }
        }
    }
}

/// The registry's health as each replica sees it (DESIGN §4, §8): its polls of the shared
/// database, what they read, and the replicas it shares tenant limits with. The handles
/// are updated by the tenant registry and registered by [`Metrics::register_registry`].
#[derive(Clone, Debug)]
pub struct RegistryMetrics {
    pub last_successful_poll: Gauge<f64, AtomicU64>,
    pub poll_errors: Counter,
    pub poll_duration: Histogram,
    pub rows_read: Counter,
    pub full_reloads: Counter,
    pub revision: Gauge,
    pub tenants: Gauge,
    pub tokens: Gauge,
    pub live_replicas: Gauge,
    pub pruned_tokens: Counter,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        RegistryMetrics {
            last_successful_poll: Gauge::default(),
            poll_errors: Counter::default(),
            poll_duration: duration_histogram(),
            rows_read: Counter::default(),
            full_reloads: Counter::default(),
            revision: Gauge::default(),
            tenants: Gauge::default(),
            tokens: Gauge::default(),
            live_replicas: Gauge::default(),
            pruned_tokens: Counter::default(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<EndpointTenantCode, Counter>,
    pub request_duration: Family<EndpointTenant, Histogram, fn() -> Histogram>,
    pub rejected_requests: Family<EndpointTenantReason, Counter>,
    pub read_samples: Family<TenantLabel, Counter>,
    pub read_foreign_series: Family<TenantBackend, Counter>,
    pub samples_received: Family<TenantLabel, Counter>,
    pub samples_forwarded: Family<TenantLabel, Counter>,
    /// OTLP data points translated and forwarded, or refused point by point.
    pub otlp_data_points: Family<TenantOutcome, Counter>,
    pub auth_failures: Family<CauseLabel, Counter>,
    pub backend_requests: Family<BackendOutcome, Counter>,
    pub backend_duration: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// Writes sent to a backend as several requests (over its caps, or after a 413).
    pub backend_split_writes: Family<BackendLabel, Counter>,
    /// Single series a backend refused as too large (413): a permanent refusal.
    pub backend_oversized_series: Family<BackendLabel, Counter>,
    pub throttled_requests: Family<ThrottleLabels, Counter>,
    pub throttled_samples: Family<TenantLabel, Counter>,
    /// Samples, histogram samples and exemplars refused alone (the rest of their request
    /// written), by tenant and reason (`series_limit`).
    pub refused_samples: Family<TenantReason, Counter>,
    /// Each tenant's active series and their limit (DESIGN §14).
    pub tenant_active_series: Family<TenantLabel, Gauge>,
    pub tenant_active_series_limit: Family<TenantLabel, Gauge>,
    /// Samples of HA series from a replica that is not elected, dropped (DESIGN §15).
    pub ha_deduplicated_samples: Family<TenantCluster, Counter>,
    /// Elections this relay changed to another replica (failovers).
    pub ha_elected_replica_changes: Family<TenantCluster, Counter>,
    /// Samples, histogram samples and exemplars of series a tenant's
    /// `write_relabel_configs` dropped (DESIGN §16).
    pub relabel_dropped_samples: Family<TenantLabel, Counter>,
    pub connections: Family<ListenerLabel, Gauge>,
    pub in_flight_requests: Gauge,
    pub in_flight_decoded_bytes: Gauge,
    pub queue: QueueMetrics,
    pub tls: TlsMetrics,
    pub reload: ReloadMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_duration_histogram),
            rejected_requests: Family::default(),
            read_samples: Family::default(),
            read_foreign_series: Family::default(),
            samples_received: Family::default(),
            refused_samples: Family::default(),
            tenant_active_series: Family::default(),
            tenant_active_series_limit: Family::default(),
            ha_deduplicated_samples: Family::default(),
            ha_elected_replica_changes: Family::default(),
            relabel_dropped_samples: Family::default(),
            samples_forwarded: Family::default(),
            otlp_data_points: Family::default(),
            auth_failures: Family::default(),
            backend_requests: Family::default(),
            backend_duration: Family::new_with_constructor(duration_histogram),
            backend_split_writes: Family::default(),
            backend_oversized_series: Family::default(),
            throttled_requests: Family::default(),
            throttled_samples: Family::default(),
            connections: Family::default(),
            in_flight_requests: Gauge::default(),
            in_flight_decoded_bytes: Gauge::default(),
            queue: QueueMetrics::new(&mut registry),
            tls: TlsMetrics::default(),
            reload: ReloadMetrics::new(&mut registry),
            registry: Registry::default(),
        };
        registry.register(
            "promgate_requests",
            "Remote-write and remote-read requests answered, by endpoint, tenant and HTTP status code",
            metrics.requests.clone(),
        );
        registry.register(
            "promgate_request_duration_seconds",
            "Time promgate took to answer remote-write and remote-read requests (to the response head), by endpoint and tenant (empty before the caller is known)",
            metrics.request_duration.clone(),
        );
        registry.register(
            "promgate_rejected_requests",
            "Requests refused, by endpoint, tenant and reason",
            metrics.rejected_requests.clone(),
        );
        registry.register(
            "promgate_read_samples",
            "Samples returned to remote-read callers (streamed: counted from chunk headers)",
            metrics.read_samples.clone(),
        );
        registry.register(
            "promgate_read_foreign_series_dropped",
            "Series a backend returned for another tenant, dropped by promgate (the backend ignored the tenant matcher)",
            metrics.read_foreign_series.clone(),
        );
        registry.register(
            "promgate_write_received_samples",
            "Samples, histogram samples and exemplars in valid write requests",
            metrics.samples_received.clone(),
        );
        registry.register(
            "promgate_write_forwarded_samples",
            "Samples, histogram samples and exemplars every backend accepted",
            metrics.samples_forwarded.clone(),
        );
        registry.register(
            "promgate_otlp_data_points",
            "OTLP data points in valid requests, by tenant and outcome (accepted, or rejected alone and \
             reported in partial_success)",
            metrics.otlp_data_points.clone(),
        );
        registry.register(
            "promgate_auth_failures",
            "Failed authentications on the data listener, by cause",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "promgate_backend_requests",
            "Requests to backends, by backend and outcome",
            metrics.backend_requests.clone(),
        );
        registry.register(
            "promgate_backend_request_duration_seconds",
            "Latency of requests to backends",
            metrics.backend_duration.clone(),
        );
        registry.register(
            "promgate_backend_split_writes",
            "Writes sent to a backend as several requests cut at series boundaries (over its max_request_bytes or max_samples_per_request, or after a 413)",
            metrics.backend_split_writes.clone(),
        );
        registry.register(
            "promgate_backend_oversized_series",
            "Single series a backend refused as too large (413), dropped from the write",
            metrics.backend_oversized_series.clone(),
        );
        registry.register(
            "promgate_throttled_requests",
            "Requests answered with the throttle status, by endpoint, tenant and the limit that was hit",
            metrics.throttled_requests.clone(),
        );
        registry.register(
            "promgate_throttled_samples",
            "Samples, histogram samples and exemplars in write requests refused by a tenant's sample rate",
            metrics.throttled_samples.clone(),
        );
        registry.register(
            "promgate_refused_samples",
            "Samples, histogram samples and exemplars refused alone while the rest of their request was written, by tenant and reason",
            metrics.refused_samples.clone(),
        );
        registry.register(
            "promgate_tenant_active_series",
            "Distinct series each tenant wrote within its active_series_idle_timeout, as this replica counts them",
            metrics.tenant_active_series.clone(),
        );
        registry.register(
            "promgate_tenant_active_series_limit",
            "Each tenant's max_active_series (0 = unlimited)",
            metrics.tenant_active_series_limit.clone(),
        );
        registry.register(
            "promgate_ha_deduplicated_samples",
            "Samples and histogram samples of HA series sent by a replica that is not the elected one of its cluster, dropped, by tenant and cluster",
            metrics.ha_deduplicated_samples.clone(),
        );
        registry.register(
            "promgate_relabel_dropped_samples",
            "Samples, histogram samples and exemplars of series dropped by the tenant's write_relabel_configs (not an error: the rest is written), by tenant",
            metrics.relabel_dropped_samples.clone(),
        );
        registry.register(
            "promgate_ha_elected_replica_changes",
            "Times this replica changed the elected replica of an HA cluster (a failover), by tenant and cluster",
            metrics.ha_elected_replica_changes.clone(),
        );
        registry.register(
            "promgate_open_connections",
            "Open client connections, by listener",
            metrics.connections.clone(),
        );
        registry.register(
            "promgate_in_flight_requests",
            "Remote-write and remote-read requests being handled",
            metrics.in_flight_requests.clone(),
        );
        registry.register(
            "promgate_in_flight_decoded_bytes",
            "Decoded write bodies held, by their announced size",
            metrics.in_flight_decoded_bytes.clone(),
        );
        registry.register(
            "promgate_tls_certificate_expiry_timestamp_seconds",
            "When the TLS server certificate of a listener expires (notAfter), Unix seconds",
            metrics.tls.certificate_expiry.clone(),
        );
        registry.register(
            "promgate_tls_crl_next_update_timestamp_seconds",
            "When a client-certificate revocation list must be replaced (nextUpdate; after it every client is refused), Unix seconds",
            metrics.tls.crl_next_update.clone(),
        );
        registry.register(
            "promgate_build",
            "promgate build information",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Exposes the tenant registry's health metrics.
    pub fn register_registry(&mut self, metrics: &RegistryMetrics) {
        let registry = &mut self.registry;
        registry.register(
            "promgate_registry_last_successful_poll_timestamp_seconds",
            "When this replica last read the registry database successfully (start-up load or poll), Unix seconds",
            metrics.last_successful_poll.clone(),
        );
        registry.register(
            "promgate_registry_poll_errors",
            "Polls of the registry database that failed (the cached tenants and tokens stay in force)",
            metrics.poll_errors.clone(),
        );
        registry.register(
            "promgate_registry_poll_duration_seconds",
            "Time taken by successful polls of the registry database",
            metrics.poll_duration.clone(),
        );
        registry.register(
            "promgate_registry_rows_read",
            "Registry rows read from the database (tenants, identities, tokens, tombstones, the revision)",
            metrics.rows_read.clone(),
        );
        registry.register(
            "promgate_registry_full_reloads",
            "Times the whole registry was read again because following its changes was not possible",
            metrics.full_reloads.clone(),
        );
        registry.register(
            "promgate_registry_revision",
            "The registry revision this replica's cache is at",
            metrics.revision.clone(),
        );
        registry.register(
            "promgate_registry_tenants",
            "Tenants in this replica's cache",
            metrics.tenants.clone(),
        );
        registry.register(
            "promgate_registry_tokens",
            "Issued tokens in this replica's cache (revoked and expired ones not yet pruned included)",
            metrics.tokens.clone(),
        );
        registry.register(
            "promgate_registry_live_replicas",
            "Replicas sharing each tenant's rate limits, as this replica counts them",
            metrics.live_replicas.clone(),
        );
        registry.register(
            "promgate_registry_pruned_tokens",
            "Expired tokens this replica deleted from the registry after the retention period",
            metrics.pruned_tokens.clone(),
        );
    }

    /// The open-connections gauge of one listener.
    pub fn open_connections(&self, listener: &str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone()
    }

    /// One request to a backend: its outcome's name and how long it took.
    pub fn observe_backend(&self, backend: &str, outcome: &str, elapsed: Duration) {
        self.backend_requests
            .get_or_create(&BackendOutcome {
                backend: backend.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.backend_duration
            .get_or_create(&BackendLabel {
                backend: backend.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
