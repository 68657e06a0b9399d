//! promgate: an authenticated Prometheus remote-write relay with tenant isolation.
//!
//! Module map (imports flow one way: `server` → domain modules → `codec` → `proto`):
//! `config`, `error` and `telemetry` are leaves; `codec` is pure; `tenant` owns the
//! registry; `auth` maps credentials to tenants; `admission` decides what a request may
//! take once its tenant is known (budgets, throttles, the CPU pool); `backend` owns the
//! HTTP client; `delivery` owns the durable per-backend queue; `usage` owns each tenant's
//! usage counters by day (DESIGN §17); `admin` and `server` are the only modules that know
//! axum.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod codec;
pub mod config;
pub mod delivery;
pub mod error;
pub mod proto;
pub mod query;
pub mod read;
pub mod series;
pub mod server;
pub mod telemetry;
pub mod tenant;
pub mod usage;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::issuers::Issuers;
use crate::auth::secrets::{load_or_create_admin_token, load_or_create_signing_key};
use crate::auth::tokens::TokenSigner;
use crate::auth::Authenticator;
use crate::backend::BackendClient;
use crate::config::{Config, ConnectionLimits};
use crate::delivery::queued::QueuedBackends;
use crate::server::{AppState, Live, SharedState};
use crate::tenant::store::Store;
use crate::tenant::Registry;

/// Addresses remembered at once by the failed-authentication limiters.
const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// CPU-heavy jobs of one tenant waiting for the pool at once (a tenant's concurrent
/// writes and reads bound this already; this is the backstop).
const MAX_QUEUED_CPU_JOBS_PER_TENANT: usize = 256;
/// The admin listener serves operators and scrapers, not fleets of senders.
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Both listeners, bound by the caller (port 0 in tests).
pub struct Listeners {
    pub data: TcpListener,
    pub admin: TcpListener,
}

/// Binds the listeners named in `config`.
pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
    let data = TcpListener::bind(config.server.listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.server.listen))?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.admin.listen))?;
    Ok(Listeners { data, admin })
}

/// Opens the registry, loads or generates secrets, and connects the backends: everything
/// the routers need, without listening anywhere (benchmarks drive the routers directly).
pub async fn build_state(config: Config) -> anyhow::Result<SharedState> {
    let store = Store::open(&config.storage.database_url).await?;
    let registry = Arc::new(Registry::load(store, &config).await?);
    registry.spawn_reload(config.storage.poll_interval);
    let admin_token = load_or_create_admin_token(&config.admin.token_file)?;
    let signing_key = load_or_create_signing_key(&config.tokens.signing_key_file)?;
    let signer = TokenSigner::new(&signing_key)?;
    // Replicas share the signing key, so they give every series the same identity.
    let series_key = series::SeriesKey::derive(signing_key.private_pem.as_bytes());
    let backends = config
        .backends
        .iter()
        .cloned()
        .map(|backend| BackendClient::new(backend).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut metrics = telemetry::Metrics::new();
    metrics.register_registry(registry.metrics());
    registry
        .metrics()
        .live_replicas
        .set(i64::try_from(registry.live_replicas()).unwrap_or(1));
    let metrics = Arc::new(metrics);
    // The config in force was applied now (as Prometheus counts its start).
    metrics.reload.succeeded();
    let queued = QueuedBackends::open(&config, &metrics).await?;
    let state = Arc::new(AppState {
        auth: Authenticator::new(
            signer,
            Issuers::start(&config.issuers).await?,
            Arc::clone(&registry),
        ),
        registry,
        live: arc_swap::ArcSwap::from_pointee(Live {
            config: config.clone(),
            backends,
        }),
        reloader: server::reload::Reloader::default(),
        queued,
        metrics,
        admin_token_digest: admin::admin_token_digest(&admin_token),
        read_gate: admission::ReadGate::default(),
        query_gate: admission::ReadGate::default(),
        rate_limits: admission::RateLimits::default(),
        tenant_budgets: admission::TenantBudgets::default(),
        cpu: admission::CpuPool::for_this_machine(MAX_QUEUED_CPU_JOBS_PER_TENANT),
        in_flight: admission::InFlight::new(
            config.server.max_in_flight_requests,
            config.server.max_in_flight_decoded_bytes,
            config.server.in_flight_wait,
        ),
        answer_bytes: admission::AnswerBytes::new(config.server.max_in_flight_answer_bytes),
        data_auth_failures: admission::AuthFailureLimiter::new(
            config.server.auth_failures_per_minute,
            std::time::Duration::from_secs(60),
            MAX_TRACKED_ADDRESSES,
        ),
        admin_auth_failures: admin::auth_failure_limiter(config.admin.auth_failures_per_minute),
        ready: AtomicBool::new(false),
        active_series: Arc::new(series::ActiveSeries::new()),
        ha: Arc::new(series::ha::HaTracker::new()),
        series_key,
        config,
    });
    drop(admin_token);
    Ok(state)
}

/// Opens the registry, loads or generates secrets, and serves both listeners until
/// `shutdown` completes; then stops accepting, lets in-flight requests finish, and lets
/// the delivery workers drain the queues for up to `queue.drain_timeout`.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_reloadable(listeners, config, None, shutdown).await
}

/// As [`run`], for a config read from `config_path`: SIGHUP and `POST /-/reload` read
/// the file again and apply it without a restart (`server::reload`).
pub async fn run_from_file(
    listeners: Listeners,
    config: Config,
    config_path: std::path::PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_reloadable(listeners, config, Some(config_path), shutdown).await
}

async fn run_reloadable(
    listeners: Listeners,
    config: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(config).await?;
    let workers = state
        .queued
        .start_workers(&state.live.load().backends, &state.metrics);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reload_stop = stop_rx.clone();
    let data_addr = listeners.data.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let connection_limits = state.config.server.connections;
    let data_tls = match &state.config.server.tls {
        Some(tls) => {
            let tls = server::tls::TlsState::new(tls.clone())
                .map_err(|err| anyhow::anyhow!("TLS: {err}"))?;
            tls.report_expiry(state.metrics.tls.for_listener("data"));
            tls.spawn_reload();
            state.reloader.set_tls(Arc::clone(&tls));
            Some(tls)
        }
        None => None,
    };
    let data = server::listener::serve(
        listeners.data,
        server::data_router(Arc::clone(&state)),
        connection_limits,
        data_tls,
        server::listener::ProxyProtocol::new(
            state.config.server.proxy_protocol,
            &state.config.server.trusted_proxies,
        ),
        state.metrics.open_connections("data"),
        stop_rx.clone(),
    );
    let admin = server::listener::serve(
        listeners.admin,
        admin::admin_router(Arc::clone(&state)),
        ConnectionLimits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..connection_limits
        },
        None,
        server::listener::ProxyProtocol::new(
            state.config.admin.proxy_protocol,
            &state.config.admin.trusted_proxies,
        ),
        state.metrics.open_connections("admin"),
        stop_rx,
    );
    let readiness = Arc::clone(&state);
    tokio::spawn(async move {
        shutdown.await;
        readiness.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    if let Some(path) = config_path {
        state.reloader.set_path(path);
    }
    server::series::start(&state).await;
    let usage = server::usage::start(&state);
    server::ha::start(&state);
    // Also without a file: a SIGHUP is then logged, never the end of the process.
    server::reload::spawn_on_sighup(&state, reload_stop)
        .map_err(|err| anyhow::anyhow!("cannot listen for SIGHUP: {err}"))?;
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(data = %data_addr, admin = %admin_addr, backends = state.config.backends.len(), "promgate is serving");
    let (data_result, admin_result) = tokio::join!(data, admin);
    // Every answered request is counted by now: the usage totals' last flush.
    usage.stop().await;
    // Every acknowledged write is on disk by now; deliver what the deadline allows.
    workers
        .drain_and_stop(state.config.queue.drain_timeout)
        .await;
    state.registry.leave().await;
    data_result?;
    admin_result?;
    tracing::info!("stopped");
    Ok(())
}
