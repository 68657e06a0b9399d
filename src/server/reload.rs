//! Reloading the config file (DESIGN §3) without a restart: on SIGHUP and on
//! `POST /-/reload` (admin listener, admin token), as Prometheus does. The file is read
//! and checked in full first; a file with any problem is refused, every problem logged,
//! and the running config kept. A good file takes effect for new requests: backends,
//! `[limits]` defaults, `[tenancy]` but its label, external issuers,
//! `auth.tokens.default_ttl` and the data listener's TLS files. Keys that shape the
//! process itself (listen addresses, the database, the queue directory, …) keep their
//! running values until a restart, with a warning naming each. Two changes refuse the
//! reload, as they need a restart: of a queued backend (it owns a durable queue and a
//! delivery worker), and of `tenancy.label` (it scopes every tenant's series).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::tls::TlsState;
use super::{Live, SharedState};
use crate::auth::issuers::Issuers;
use crate::backend::BackendClient;
use crate::config::{BackendConfig, Config, Delivery};

/// What a reload needs besides the state: the file and the data listener's TLS.
#[derive(Default)]
pub struct Reloader {
    path: OnceLock<PathBuf>,
    tls: OnceLock<Arc<TlsState>>,
    /// One reload at a time: SIGHUP and the endpoint may race.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The file promgate was started with; without one there is nothing to reload.
    pub fn set_path(&self, path: PathBuf) {
        let _ = self.path.set(path);
    }

    /// The data listener's TLS, when it speaks TLS.
    pub fn set_tls(&self, tls: Arc<TlsState>) {
        let _ = self.tls.set(tls);
    }
}

/// Why a reload did not apply the file.
#[derive(Debug)]
pub enum ReloadError {
    /// promgate runs on its built-in defaults: there is no file.
    NoFile,
    /// The file has problems; the running config stays.
    Invalid(Vec<String>),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => write!(
                f,
                "promgate was started without --config; there is no file to reload"
            ),
            ReloadError::Invalid(problems) => write!(
                f,
                "{} problem(s); the running configuration is kept:\n{}",
                problems.len(),
                problems.join("\n")
            ),
        }
    }
}

/// Reads the config file again and applies it, or refuses it whole.
pub async fn reload(state: &SharedState) -> Result<(), ReloadError> {
    let _one = state.reloader.one_at_a_time.lock().await;
    let Some(path) = state.reloader.path.get().cloned() else {
        return Err(ReloadError::NoFile);
    };
    let loaded = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|err| vec![format!("reading the config: {err}")])
            .and_then(|loaded| loaded.map_err(|errors| errors.problems))
    };
    let result = match loaded {
        Ok(new) => apply(state, new).await,
        Err(problems) => Err(problems),
    };
    match result {
        Ok(()) => {
            state.metrics.reload.succeeded();
            tracing::info!(config = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(problems) => {
            state.metrics.reload.failed();
            for problem in &problems {
                tracing::error!(config = %path.display(), problem = %problem, "configuration reload refused");
            }
            tracing::error!(
                config = %path.display(),
                problems = problems.len(),
                "configuration reload refused; the running configuration is kept"
            );
            Err(ReloadError::Invalid(problems))
        }
    }
}

/// Checks what only a valid file can reveal (backends' and TLS files, queued backends),
/// then swaps everything in. Nothing changes unless everything is good.
async fn apply(state: &SharedState, new: Config) -> Result<(), Vec<String>> {
    let running = state.live.load_full();
    let mut problems = queued_backend_problems(&running.config.backends, &new.backends);
    problems.extend(tenant_label_problem(&running.config, &new));
    for key in restart_only_changes(&running.config, &new) {
        tracing::warn!(
            key,
            "configuration reload: this key changed but needs a restart; it keeps its running value"
        );
    }
    let applied = keep_restart_only(&running.config, new);
    let mut backends = Vec::with_capacity(applied.backends.len());
    for backend in &applied.backends {
        // A queued backend's client is its worker's: unchanged (checked above), kept.
        let kept = (backend.delivery == Delivery::Queued)
            .then(|| {
                running
                    .backends
                    .iter()
                    .find(|client| client.config.name == backend.name)
            })
            .flatten();
        match kept {
            Some(client) => backends.push(Arc::clone(client)),
            None => match BackendClient::new(backend.clone()) {
                Ok(client) => backends.push(Arc::new(client)),
                Err(err) => problems.push(err.to_string()),
            },
        }
    }
    let tls = match (state.reloader.tls.get(), &applied.server.tls) {
        (Some(tls_state), Some(tls)) => match TlsState::prepare(tls) {
            Ok(prepared) => Some((tls_state, prepared)),
            Err(err) => {
                problems.push(format!("server.tls: {err}"));
                None
            }
        },
        _ => None,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    // Nothing is applied yet: an issuer that cannot be set up refuses the whole reload.
    let issuers = Issuers::restart(&applied.issuers, &state.auth.issuers())
        .await
        .map_err(|err| vec![err.to_string()])?;
    state.auth.replace_issuers(issuers);
    if let Some((tls_state, prepared)) = tls {
        tls_state.apply(prepared);
    }
    state.registry.reconfigure(&applied).await;
    state.live.store(Arc::new(Live {
        config: applied,
        backends,
    }));
    Ok(())
}

/// A queued backend owns a queue directory and a worker started with the process.
fn queued_backend_problems(running: &[BackendConfig], new: &[BackendConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let queued = |backends: &[BackendConfig]| -> Vec<BackendConfig> {
        backends
            .iter()
            .filter(|backend| backend.delivery == Delivery::Queued)
            .cloned()
            .collect()
    };
    let (before, after) = (queued(running), queued(new));
    for backend in &before {
        match after.iter().find(|other| other.name == backend.name) {
            None => problems.push(format!(
                "backends: {:?} is a queued backend; removing it (or making it sync) needs a restart",
                backend.name
            )),
            Some(other) if other != backend => problems.push(format!(
                "backends: {:?} is a queued backend; changing it needs a restart",
                backend.name
            )),
            Some(_) => {}
        }
    }
    for backend in &after {
        if !before.iter().any(|other| other.name == backend.name) {
            problems.push(format!(
                "backends: {:?} would be a new queued backend; adding one needs a restart",
                backend.name
            ));
        }
    }
    problems
}

/// The tenant label scopes every tenant's series, written and read: changed under running
/// traffic, each tenant would at once read the series whose new label names it, whoever
/// wrote them. The reload is refused rather than the label kept, so the file in force
/// never says otherwise than the running relay.
fn tenant_label_problem(running: &Config, new: &Config) -> Option<String> {
    let (before, after) = (&running.tenancy.label, &new.tenancy.label);
    (before != after).then(|| {
        format!(
            "tenancy.label: changing it ({before:?} to {after:?}) needs a restart; \
             a reload cannot re-scope every tenant's series"
        )
    })
}

/// The keys that changed but take effect only at the next start.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.server, &new.server);
    let (ac, bc) = (&a.connections, &b.connections);
    let checks = [
        ("server.listen", a.listen != b.listen),
        (
            "server.tls (adding or removing the section)",
            a.tls.is_some() != b.tls.is_some(),
        ),
        (
            "server.header_read_timeout",
            ac.header_read_timeout != bc.header_read_timeout,
        ),
        (
            "server.max_header_bytes",
            ac.max_header_bytes != bc.max_header_bytes,
        ),
        (
            "server.body_read_timeout",
            ac.body_read_timeout != bc.body_read_timeout,
        ),
        (
            "server.min_body_bytes_per_second",
            ac.min_body_bytes_per_second != bc.min_body_bytes_per_second,
        ),
        (
            "server.max_connections",
            ac.max_connections != bc.max_connections,
        ),
        (
            "server.max_in_flight_requests",
            a.max_in_flight_requests != b.max_in_flight_requests,
        ),
        (
            "server.max_in_flight_decoded_bytes",
            a.max_in_flight_decoded_bytes != b.max_in_flight_decoded_bytes,
        ),
        (
            "server.max_in_flight_answer_bytes",
            a.max_in_flight_answer_bytes != b.max_in_flight_answer_bytes,
        ),
        (
            "server.in_flight_wait",
            a.in_flight_wait != b.in_flight_wait,
        ),
        (
            "server.auth_failures_per_minute",
            a.auth_failures_per_minute != b.auth_failures_per_minute,
        ),
        (
            "server.request_timeout",
            a.request_timeout != b.request_timeout,
        ),
        (
            "server.trusted_proxies",
            a.trusted_proxies != b.trusted_proxies,
        ),
        (
            "server.proxy_protocol",
            a.proxy_protocol != b.proxy_protocol,
        ),
        ("admin.listen", running.admin.listen != new.admin.listen),
        (
            "admin.token_file",
            running.admin.token_file != new.admin.token_file,
        ),
        (
            "admin.auth_failures_per_minute",
            running.admin.auth_failures_per_minute != new.admin.auth_failures_per_minute,
        ),
        (
            "admin.trusted_proxies",
            running.admin.trusted_proxies != new.admin.trusted_proxies,
        ),
        (
            "admin.proxy_protocol",
            running.admin.proxy_protocol != new.admin.proxy_protocol,
        ),
        (
            "storage.database_url",
            running.storage.database_url != new.storage.database_url,
        ),
        (
            "storage.poll_interval",
            running.storage.poll_interval != new.storage.poll_interval,
        ),
        (
            "storage.usage_flush_interval",
            running.storage.usage_flush_interval != new.storage.usage_flush_interval,
        ),
        (
            "storage.usage_retention",
            running.storage.usage_retention != new.storage.usage_retention,
        ),
        (
            "auth.tokens.signing_key_file",
            running.tokens.signing_key_file != new.tokens.signing_key_file,
        ),
        (
            "queue.directory",
            running.queue.directory != new.queue.directory,
        ),
        (
            "queue.max_bytes",
            running.queue.max_bytes != new.queue.max_bytes,
        ),
        (
            "queue.drain_timeout",
            running.queue.drain_timeout != new.queue.drain_timeout,
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
}

/// `new`, with every key that needs a restart at its running value: the config then
/// says what is really in force.
fn keep_restart_only(running: &Config, mut new: Config) -> Config {
    let tls = match (&running.server.tls, new.server.tls.take()) {
        (Some(_), Some(tls)) => Some(tls),
        (kept, _) => kept.clone(),
    };
    new.server = running.server.clone();
    new.server.tls = tls;
    new.admin = running.admin.clone();
    new.storage = running.storage.clone();
    new.queue = running.queue.clone();
    new.tokens.signing_key_file = running.tokens.signing_key_file.clone();
    new
}

/// Reloads on every SIGHUP until shutdown begins (`stop` turns true). Installed before the
/// relay reports ready, so a SIGHUP never finds the default action (which ends the
/// process). It holds the state weakly and ends at shutdown, so a stopped relay lets go of
/// everything the state owns (its queues' locks among them).
pub fn spawn_on_sighup(
    state: &SharedState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let state = std::sync::Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                signal = hangup.recv() => {
                    let (Some(()), Some(state)) = (signal, state.upgrade()) else {
                        return;
                    };
                    tracing::info!("SIGHUP: reloading the configuration");
                    // A refused file is logged and in the metrics already.
                    if let Err(ReloadError::NoFile) = reload(&state).await {
                        tracing::warn!(reason = %ReloadError::NoFile, "SIGHUP ignored");
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, &BTreeMap::new()).expect("valid")
    }

    const QUEUED: &str =
        "[[backends]]\nname = \"q\"\nwrite_url = \"http://127.0.0.1:1/w\"\ndelivery = \"queued\"\n";
    const SYNC: &str = "[[backends]]\nname = \"s\"\nwrite_url = \"http://127.0.0.1:2/w\"\n";

    #[test]
    fn queued_backends_cannot_change_without_a_restart() {
        let running = parse(&format!("{QUEUED}{SYNC}"));
        let same_queue_other_sync = parse(&format!(
            "{QUEUED}[[backends]]\nname = \"s\"\nwrite_url = \"http://127.0.0.1:3/w\"\n"
        ));
        assert!(
            queued_backend_problems(&running.backends, &same_queue_other_sync.backends).is_empty()
        );
        let moved = parse(&format!("{SYNC}{QUEUED}"));
        assert!(
            queued_backend_problems(&running.backends, &moved.backends).is_empty(),
            "order does not matter"
        );
        let changed = parse(&QUEUED.replace(":1/w", ":9/w"));
        let problems = queued_backend_problems(&running.backends, &changed.backends);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("changing it needs a restart"));
        let removed = parse(SYNC);
        assert!(
            queued_backend_problems(&running.backends, &removed.backends)[0].contains("removing")
        );
        let added = parse(&format!(
            "{QUEUED}{}",
            SYNC.replace("\"s\"", "\"s\"\ndelivery = \"queued\"")
        ));
        assert!(queued_backend_problems(&running.backends, &added.backends)[0].contains("adding"));
    }

    #[test]
    fn restart_only_keys_are_named_and_keep_their_running_values() {
        let running =
            parse("[server]\nlisten = \"127.0.0.1:7001\"\n[limits]\nmax_series_per_request = 5\n");
        let new = parse(
            "[server]\nlisten = \"127.0.0.1:7002\"\n[admin]\nlisten = \"127.0.0.1:7003\"\n\
             [storage]\ndatabase_url = \"sqlite://other.db\"\n[limits]\nmax_series_per_request = 9\n",
        );
        let changed = restart_only_changes(&running, &new);
        for key in ["server.listen", "admin.listen", "storage.database_url"] {
            assert!(changed.contains(&key), "{key} in {changed:?}");
        }
        assert!(!changed.contains(&"server.request_timeout"));
        let applied = keep_restart_only(&running, new);
        assert_eq!(applied.server.listen, running.server.listen);
        assert_eq!(applied.admin.listen, running.admin.listen);
        assert_eq!(applied.storage, running.storage);
        assert_eq!(applied.limits.max_series_per_request, 9, "limits reload");
        assert!(restart_only_changes(&running, &running.clone()).is_empty());
    }

    #[test]
    fn a_changed_tenant_label_refuses_the_reload() {
        let running = parse("");
        let relabelled = parse("[tenancy]\nlabel = \"org_id\"\n");
        let problem = tenant_label_problem(&running, &relabelled).expect("refused");
        assert!(
            problem.starts_with("tenancy.label") && problem.contains("needs a restart"),
            "{problem}"
        );
        let other_tenancy = parse("[tenancy]\non_conflict = \"reject\"\n");
        assert_eq!(tenant_label_problem(&running, &other_tenancy), None);
    }
}
