//! The active series tracker's background work in a running relay (DESIGN §14):
//! - every second, the replicas share their tenants' active series through the
//!   registry: each writes a sketch of what it holds when its count moved (tenants far
//!   below their limit write nothing; near the limit, a filter of the series too), reads
//!   the others', and tells its tracker how many series are active elsewhere and not
//!   here;
//! - every few seconds, idle series are forgotten and each tenant's count and limit are
//!   published as gauges.
//!
//! Also what the write handlers count a write's series with ([`Tracking`]) and the
//! refused samples' and relabel-dropped samples' counters.
//!
//! The first share runs before the relay is ready, so a restarted replica knows what the
//! others hold before it admits a write. The task holds the state weakly, so it ends
//! with the relay.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AppState, SharedState};
use crate::series::sketch::{Cardinality, Members};
use crate::series::tracker::TenantSeries;
use crate::series::{ActiveSeries, SeriesKey};
use crate::telemetry::{TenantLabel, TenantReason};
use crate::tenant::store::ActiveSeriesRow;
use crate::tenant::TenantEntry;
use crate::usage::Field;

/// The active series tracker and the identity key a write is counted with.
pub(super) struct Tracking<'a> {
    pub tracker: &'a ActiveSeries,
    pub key: &'a SeriesKey,
}

/// Counts samples refused alone (their request otherwise written).
pub(super) fn count_refused_samples(
    state: &SharedState,
    tenant: &TenantEntry,
    reason: &'static str,
    samples: u64,
) {
    state
        .metrics
        .refused_samples
        .get_or_create(&TenantReason {
            tenant: tenant.tenant.id.clone(),
            reason,
        })
        .inc_by(samples);
}

/// Counts the samples of series the tenant's relabel rules dropped (DESIGN §16); not an
/// error, so not a refusal.
pub(super) fn count_relabel_dropped(
    state: &SharedState,
    tenant: &TenantEntry,
    dropped: crate::series::relabel::Dropped,
) {
    if dropped.series == 0 {
        return;
    }
    state
        .metrics
        .relabel_dropped_samples
        .get_or_create(&crate::telemetry::TenantLabel {
            tenant: tenant.tenant.id.clone(),
        })
        .inc_by(dropped.samples);
}

/// How often replicas share their tenants' active series.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often idle series are swept and the gauges set, in sync intervals.
const SWEEP_EVERY: u64 = 5;
/// A tenant whose count did not move writes its row every this many rounds.
const REFRESH_EVERY: u64 = 10;
/// A row's grant counts this long after it was written (a replica refreshes its row at
/// least every `REFRESH_EVERY` rounds); after that its replica is taken as silent.
const FRESH_ROW_MS: i64 = 12_000;
/// A replica idle for a tenant that others hold grants itself at most this fraction of
/// the limit a round.
const IDLE_GRANT_DIVISOR: u64 = 100;

/// Shares once, then starts the background task.
pub async fn start(state: &SharedState) {
    sync(state, 0).await;
    let state: Weak<AppState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SYNC_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        for tick in 1u64.. {
            ticks.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            sync(&state, tick).await;
            if tick % SWEEP_EVERY == 0 {
                sweep(&state).await;
            }
        }
    });
}

async fn sweep(state: &SharedState) {
    record_usage(state);
    let tracker = Arc::clone(&state.active_series);
    let Ok(counts) = tokio::task::spawn_blocking(move || tracker.sweep()).await else {
        return;
    };
    let metrics = &state.metrics;
    for (tenant, count) in counts {
        let label = TenantLabel { tenant };
        metrics
            .tenant_active_series
            .get_or_create(&label)
            .set(i64::try_from(count.active).unwrap_or(i64::MAX));
        metrics
            .tenant_active_series_limit
            .get_or_create(&label)
            .set(i64::try_from(count.limit).unwrap_or(i64::MAX));
    }
}

/// Adds the series each tenant's tracker created since the last call to its usage of
/// today, and raises today's peak to its active series now (DESIGN §17). Before each
/// sweep and before the last usage flush, so the peak is sampled every few seconds.
pub(super) fn record_usage(state: &AppState) {
    let ledger = state.registry.usage();
    for (tenant, series) in state.active_series.tenants() {
        let created = series.take_created();
        let active = series.count().active;
        if created == 0 && active == 0 {
            continue;
        }
        let usage = ledger.tenant(&tenant);
        let today = usage.today();
        today.add(Field::NewSeries, created);
        today.raise(Field::PeakActiveSeries, active);
    }
}

/// What this replica computed of one tenant this round.
struct Local {
    series: Arc<TenantSeries>,
    sketch: Option<Cardinality>,
}

async fn sync(state: &SharedState, tick: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    let registry = &state.registry;
    let me = registry.replica_id().to_string();
    let live = registry.live_replicas() as u64;
    state.active_series.set_live_replicas(live);
    let tracker = Arc::clone(&state.active_series);
    let (mut locals, rows) =
        match tokio::task::spawn_blocking(move || own_rows(&tracker, &me, live, now, tick)).await {
            Ok(computed) => computed,
            Err(_) => return,
        };
    let store = registry.store();
    if let Err(err) = store.publish_active_series(&rows).await {
        tracing::warn!(error = %err, "could not share active series through the registry");
    }
    let rows = match store.active_series_rows(now).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "could not read other replicas' active series");
            return;
        }
    };
    let me = registry.replica_id();
    let mut remote: HashMap<String, Vec<ActiveSeriesRow>> = HashMap::new();
    for row in rows.into_iter().filter(|row| row.replica_id != me) {
        remote.entry(row.tenant_id.clone()).or_default().push(row);
    }
    for (tenant, rows) in &remote {
        locals.entry(tenant.clone()).or_insert_with(|| Local {
            series: state.active_series.tenant(tenant),
            sketch: None,
        });
        if let Some(row) = rows.first() {
            let local = &locals[tenant];
            if local.series.local() == 0 && local.series.limit() == 0 {
                // Known from other replicas only: its idle timeout until a write says.
                let limit = state
                    .registry
                    .tenant(tenant)
                    .map_or(0, |entry| entry.limits.max_active_series);
                let idle = Duration::from_millis(u64::try_from(row.idle_timeout_ms).unwrap_or(0));
                local.series.set_limits(limit, idle);
            }
        }
    }
    let computed = tokio::task::spawn_blocking(move || {
        for (tenant, local) in locals {
            apply_remote(
                &local,
                remote.get(&tenant).map_or(&[][..], Vec::as_slice),
                live,
                now,
            );
        }
    })
    .await;
    let _ = computed;
}

/// This replica's rows: each tenant whose turn it is ([`TenantSeries::due`]).
fn own_rows(
    tracker: &crate::series::ActiveSeries,
    me: &str,
    live: u64,
    now: i64,
    round: u64,
) -> (HashMap<String, Local>, Vec<ActiveSeriesRow>) {
    let mut locals = HashMap::new();
    let mut rows = Vec::new();
    for (tenant, series) in tracker.tenants() {
        let mut sketch = None;
        if let Some(near) = series.due(round, live, REFRESH_EVERY) {
            let (held, cardinality, members) = series.sketches(near);
            rows.push(ActiveSeriesRow {
                tenant_id: tenant.clone(),
                replica_id: me.to_string(),
                updated_at: now,
                idle_timeout_ms: i64::try_from(series.idle_timeout().as_millis())
                    .unwrap_or(i64::MAX),
                series: i64::try_from(held).unwrap_or(i64::MAX),
                grant: i64::try_from(series.grant()).unwrap_or(i64::MAX),
                sketch: cardinality.encode(),
                members: members.map(|members| members.encode()).unwrap_or_default(),
            });
            sketch = Some(cardinality);
        }
        locals.insert(tenant, Local { series, sketch });
    }
    (locals, rows)
}

/// Tells a tenant's tracker what the other replicas hold and what it may add:
/// - the series active elsewhere and not here: the union of every replica's sketch,
///   which counts a series once however many replicas hold it, less what is held here;
/// - its grant: the room under the limit that the other replicas' grants leave (a live
///   replica that shared no recent row is assumed to hold its share of the limit), split
///   among the replicas that hold the tenant's series (an idle one keeps a hundredth of
///   the limit), so replicas admitting new series between two rounds cannot together
///   pass the limit, and one busy replica beside idle ones soon has all the room;
/// - near the limit, the other replicas' filters.
fn apply_remote(local: &Local, rows: &[ActiveSeriesRow], live: u64, now: i64) {
    let series = &local.series;
    let limit = series.limit();
    let held = series.local();
    let mut union = match &local.sketch {
        Some(sketch) => sketch.clone(),
        None if rows.is_empty() => Cardinality::default(),
        None => series.sketches(false).1,
    };
    let mut members = Vec::new();
    let (mut others_grants, mut fresh_others, mut holders_elsewhere) = (0u64, 0u64, 0u64);
    for row in rows {
        if let Some(sketch) = Cardinality::decode(&row.sketch) {
            union.merge(&sketch);
        }
        if !row.members.is_empty() {
            members.extend(Members::decode(&row.members));
        }
        if now.saturating_sub(row.updated_at) <= FRESH_ROW_MS {
            others_grants += u64::try_from(row.grant).unwrap_or(0);
            fresh_others += 1;
            holders_elsewhere += u64::from(row.series > 0);
        }
    }
    let estimate = if rows.is_empty() {
        held
    } else {
        union.estimate().max(held)
    };
    let missing = (live.max(1) - 1).saturating_sub(fresh_others);
    let others = others_grants + missing * (limit / live.max(1));
    let room = limit.saturating_sub(estimate).saturating_sub(others);
    let grant = if live <= 1 {
        room
    } else if held > 0 {
        // Shared among the replicas that hold the tenant's series.
        room / (holders_elsewhere + 1)
    } else if holders_elsewhere == 0 {
        room / live
    } else {
        // Idle here while others hold it: a little, so a sender that moves here starts.
        (room / live).min(limit / IDLE_GRANT_DIVISOR)
    };
    series.set_remote(estimate - held, grant, !rows.is_empty(), members);
}
