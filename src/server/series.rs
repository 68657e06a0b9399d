//! The active series tracker's background work in a running relay: every few seconds
//! idle series are forgotten and each tenant's count and limit are published as gauges.
//! The task holds the state weakly, so it ends with the relay.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{AppState, SharedState};
use crate::telemetry::TenantLabel;

/// How often idle series are swept and the gauges set.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub fn spawn_sweeper(state: &SharedState) {
    let state: Weak<AppState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            let tracker = Arc::clone(&state.active_series);
            let Ok(counts) = tokio::task::spawn_blocking(move || tracker.sweep()).await else {
                continue;
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
    });
}
