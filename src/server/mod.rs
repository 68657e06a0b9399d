//! Listeners, routers and graceful shutdown (DESIGN §5). The data listener serves
//! remote write, remote read, OTLP metrics and the query API; the admin listener serves the admin API, `/metrics` and probes.

mod common;
pub mod ha;
pub mod listener;
pub mod otlp;
pub mod query;
pub mod read;
pub mod reload;
pub mod series;
pub mod tls;
pub mod usage;
pub mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::auth::Authenticator;
use crate::backend::BackendClient;
use crate::config::Config;
use crate::telemetry::Metrics;
use crate::tenant::{Registry, TenantEntry};

/// Everything a handler may need, shared by both listeners.
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub auth: Authenticator,
    /// What a config reload replaces: read once per request (`live.load_full()`).
    pub live: arc_swap::ArcSwap<Live>,
    /// The config file, the data listener's TLS and the reload count (SIGHUP,
    /// `POST /-/reload`).
    pub reloader: reload::Reloader,
    /// The durable queues of `delivery = "queued"` backends, by backend name.
    pub queued: crate::delivery::queued::QueuedBackends,
    pub metrics: Arc<Metrics>,
    /// SHA-256 of the admin token, compared in constant time.
    pub admin_token_digest: [u8; 32],
    /// Each tenant's concurrent remote reads.
    pub read_gate: crate::admission::ReadGate,
    /// Each tenant's concurrent query API requests.
    pub query_gate: crate::admission::ReadGate,
    /// Each tenant's token buckets.
    pub rate_limits: crate::admission::RateLimits,
    /// Each tenant's own writes and decoded bytes in flight.
    pub tenant_budgets: crate::admission::TenantBudgets,
    /// Requests and decoded bytes in flight, process-wide: the last-resort shed.
    pub in_flight: crate::admission::InFlight,
    /// Query API answers held at once, process-wide.
    pub answer_bytes: crate::admission::AnswerBytes,
    /// Threads for CPU-heavy stages, serving tenants in turn.
    pub cpu: crate::admission::CpuPool,
    /// Slows down token guessing on the data listener per source address.
    pub data_auth_failures: crate::admission::AuthFailureLimiter,
    /// Slows down admin-token guessing per source address.
    pub admin_auth_failures: crate::admission::AuthFailureLimiter,
    /// False until the registry is loaded and again once shutdown begins.
    pub ready: AtomicBool,
    /// Each tenant's active series (DESIGN §14).
    pub active_series: Arc<crate::series::ActiveSeries>,
    /// The key of series identities.
    pub series_key: crate::series::SeriesKey,
    /// The cached HA elections (DESIGN §15).
    pub ha: Arc<crate::series::ha::HaTracker>,
}

pub type SharedState = Arc<AppState>;

/// The configuration in force and the backends built from it. `AppState::config` keeps
/// the config promgate started with, which the keys that need a restart come from.
pub struct Live {
    pub config: Config,
    /// In the order of `config.backends`.
    pub backends: Vec<Arc<BackendClient>>,
}

impl Live {
    /// The backends `tenant` writes to and reads from: those it names (every one when it
    /// names none), by name, so a tenant's entry resolved against an older config never
    /// reaches a backend it does not name.
    pub fn backends_of<'a>(
        &'a self,
        tenant: &'a TenantEntry,
    ) -> impl Iterator<Item = &'a Arc<BackendClient>> + 'a {
        let named = &tenant.tenant.backends;
        self.backends
            .iter()
            .filter(move |backend| named.is_empty() || named.contains(&backend.config.name))
    }
}

/// The data listener's routes.
pub fn data_router(state: SharedState) -> Router {
    Router::new()
        .route("/api/v1/write", post(write::remote_write))
        .route("/api/v1/read", post(read::remote_read))
        .route("/otlp/v1/metrics", post(otlp::export_metrics))
        .route("/api/v1/otlp/v1/metrics", post(otlp::export_metrics))
        .route("/api/v1/query", get(query::query).post(query::query))
        .route(
            "/api/v1/query_range",
            get(query::query_range).post(query::query_range),
        )
        .route(
            "/api/v1/query_exemplars",
            get(query::query_exemplars).post(query::query_exemplars),
        )
        .route("/api/v1/series", get(query::series).post(query::series))
        .route("/api/v1/labels", get(query::labels).post(query::labels))
        .route("/api/v1/label/{name}/values", get(query::label_values))
        .route("/api/v1/metadata", get(query::metadata))
        .route("/federate", get(query::federate))
        .route("/api/v1/status/buildinfo", get(query::buildinfo))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .with_state(state)
}

pub async fn healthy() -> &'static str {
    "promgate is healthy\n"
}

pub async fn ready(State(state): State<SharedState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "promgate is ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "promgate is not ready\n")
    }
}
