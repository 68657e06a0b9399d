//! Prometheus HA pairs in a running relay (DESIGN §15):
//! - what the write handlers need around a request's decisions: the registry asked
//!   about the clusters the cache cannot judge ([`resolve`]: a new cluster, or an
//!   election older than the failover timeout, where a failover may be due), and what
//!   the decisions came to counted ([`commit`]);
//! - the background task: for each tenant with elections here, every third of its
//!   `ha_failover_timeout` (±10 %), the registry's `received_at` of the elected replicas
//!   this relay wrote for is moved forward, clusters silent for long are forgotten, and
//!   the cache is reloaded; on PostgreSQL, an election another relay changed reloads its
//!   tenant at once (LISTEN/NOTIFY).
//!
//! The task holds the state weakly, so it ends with the relay.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::common::Failure;
use super::write::now_ms;
use super::{AppState, SharedState};
use crate::error::AppError;
use crate::series::ha::{HaOutcome, HaSettings, Resolved};
use crate::telemetry::{TenantCluster, TenantReason};
use crate::tenant::store::Elected;
use crate::tenant::TenantEntry;

/// How often the task looks for due tenants.
const TICK: Duration = Duration::from_millis(250);
/// A cluster whose elected replica sent nothing for this long (or twice the failover
/// timeout, if longer) is forgotten: it stops counting against `ha_max_clusters`, and
/// its next sender is elected anew.
const FORGET_AFTER_MS: i64 = 30 * 60 * 1000;

/// Asks the registry about each (cluster, replica) the cache could not judge, updates
/// the cache, and returns the answers by cluster. A registry that cannot answer is 503:
/// the sender retries, and nothing of the request is written meanwhile.
pub(super) async fn resolve(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    asks: &[(String, String)],
    now: i64,
) -> Result<HashMap<String, Resolved>, Failure> {
    let settings = HaSettings::of(&tenant.limits);
    let id = tenant.tenant.id.as_str();
    let store = state.registry.store();
    let mut resolved = HashMap::with_capacity(asks.len());
    for (cluster, replica) in asks {
        if resolved.contains_key(cluster) {
            // One answer per cluster: the elected replica judges the others.
            continue;
        }
        let answer = store
            .ha_elect(
                id,
                cluster,
                replica,
                now,
                settings.failover_timeout_ms,
                settings.max_clusters,
            )
            .await
            .map_err(|err| {
                tracing::error!(tenant = %id, error = %err, "cannot read or change an HA election in the registry");
                Failure::new(
                    tenant,
                    "ha_registry",
                    AppError::Unavailable {
                        message: "the HA election cannot be read from the registry; retry later"
                            .into(),
                        retry_after_seconds: 1,
                    },
                )
            })?;
        match answer {
            Elected::Election { election, changed } => {
                // Shown from the cluster's first election on, at 0 until a failover.
                let changes =
                    state
                        .metrics
                        .ha_elected_replica_changes
                        .get_or_create(&TenantCluster {
                            tenant: id.to_string(),
                            cluster: cluster.clone(),
                        });
                if changed && election.changes > 0 {
                    tracing::info!(tenant = %id, cluster = %cluster, replica = %election.replica, "HA failover: the elected replica sent nothing for the failover timeout");
                    changes.inc();
                }
                resolved.insert(cluster.clone(), Resolved::Elected(election.replica.clone()));
                state.ha.store(id, election);
            }
            Elected::Refused => {
                resolved.insert(cluster.clone(), Resolved::Refused);
            }
        }
    }
    Ok(resolved)
}

/// Counts what a written request's decisions came to, and notes the elected replicas
/// this relay wrote for (the background task tells the registry).
pub(super) fn commit(state: &SharedState, tenant: &TenantEntry, outcome: &HaOutcome, now: i64) {
    let id = &tenant.tenant.id;
    for (cluster, replica) in &outcome.written {
        state.ha.saw(id, cluster, replica, now);
    }
    for (cluster, samples) in &outcome.deduplicated {
        state
            .metrics
            .ha_deduplicated_samples
            .get_or_create(&TenantCluster {
                tenant: id.clone(),
                cluster: cluster.clone(),
            })
            .inc_by(*samples);
    }
    if outcome.refused_samples > 0 {
        state
            .metrics
            .refused_samples
            .get_or_create(&TenantReason {
                tenant: id.clone(),
                reason: "ha_max_clusters",
            })
            .inc_by(outcome.refused_samples);
    }
}

/// Starts the background task (and, on PostgreSQL, the listener of changed elections).
pub fn start(state: &SharedState) {
    let dirty: Arc<parking_lot::Mutex<HashSet<String>>> = Arc::default();
    let wake = Arc::new(tokio::sync::Notify::new());
    {
        let (dirty, wake) = (Arc::clone(&dirty), Arc::clone(&wake));
        state.registry.store().spawn_ha_listener(move |tenant| {
            dirty.lock().insert(tenant.to_string());
            wake.notify_one();
        });
    }
    let state: Weak<AppState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut due: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = wake.notified() => {}
            }
            let Some(state) = state.upgrade() else {
                return;
            };
            let now = now_ms();
            let changed: HashSet<String> = std::mem::take(&mut *dirty.lock());
            for tenant in state.ha.tenants() {
                let next = due.get(&tenant).copied().unwrap_or(0);
                if next > now && !changed.contains(&tenant) {
                    continue;
                }
                let settings = state.registry.tenant(&tenant).map_or_else(
                    || HaSettings::of(&state.config.limits),
                    |entry| HaSettings::of(&entry.limits),
                );
                update(&state, &tenant, settings, now).await;
                due.insert(tenant, now + jittered(settings.update_interval_ms()));
            }
        }
    });
}

/// One tenant's round: refresh, forget, reload.
async fn update(state: &SharedState, tenant: &str, settings: HaSettings, now: i64) {
    let store = state.registry.store();
    for (election, seen_at) in state.ha.to_refresh(tenant) {
        if let Err(err) = store
            .ha_refresh(tenant, &election.cluster, &election.replica, seen_at)
            .await
        {
            tracing::warn!(tenant, error = %err, "could not refresh an HA election in the registry");
            return;
        }
    }
    let forget_after = FORGET_AFTER_MS.max(2 * settings.failover_timeout_ms);
    if let Err(err) = store.ha_forget_before(tenant, now - forget_after).await {
        tracing::warn!(tenant, error = %err, "could not forget silent HA clusters");
    }
    match store.ha_elections(tenant).await {
        Ok(elections) => state.ha.replace(tenant, elections),
        Err(err) => tracing::warn!(tenant, error = %err, "could not reload HA elections"),
    }
}

/// `interval` ±10 %, so relays started together do not refresh in step.
fn jittered(interval: i64) -> i64 {
    let mut random = [0u8; 2];
    let spread = interval / 5;
    if spread == 0 || getrandom::getrandom(&mut random).is_err() {
        return interval;
    }
    interval - spread / 2 + i64::from(u16::from_le_bytes(random)) % spread
}
