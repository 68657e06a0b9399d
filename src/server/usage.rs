//! Usage accounting in a running relay (DESIGN §17): every `storage.usage_flush_interval`
//! (at most a minute) and once more at a clean stop, this process writes its running
//! totals per tenant and day to the registry ([`crate::tenant::store::UsageTotals`]), each
//! replacing its own previous row, so a retried or repeated flush never counts twice and a
//! `kill -9` loses at most what was counted since the last flush. Totals that could not be
//! written stay pending and go with the next flush. About once an hour, rows older than
//! `storage.usage_retention` are deleted in bounded batches.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{AppState, SharedState};
use crate::backend::Written;
use crate::tenant::store::{UsageTotals, USAGE_PRUNE_BATCH};
use crate::tenant::TenantEntry;
use crate::usage::{Field, Figures};

/// How often old usage rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Batches one prune deletes at most (the next round continues).
const MAX_PRUNE_BATCHES: usize = 100;
/// How long the last flush at a clean stop may take.
const LAST_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The flush task; [`UsageFlusher::stop`] makes it flush once more and end.
pub struct UsageFlusher {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// What this process wrote and has still to write.
#[derive(Default)]
struct Flushes {
    /// The totals to write, by tenant and day.
    pending: HashMap<(String, i64), Figures>,
    /// What the registry holds of this process, so unchanged days are not written again.
    written: HashMap<(String, i64), Figures>,
    last_prune: Option<Instant>,
}

/// Starts the flush task. It holds the state weakly, so it ends with the relay.
pub fn start(state: &SharedState) -> UsageFlusher {
    let interval = state.config.storage.usage_flush_interval;
    let weak: Weak<AppState> = Arc::downgrade(state);
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut flushes = Flushes::default();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            let last = tokio::select! {
                _ = ticks.tick() => false,
                _ = &mut stopped => true,
            };
            let Some(state) = weak.upgrade() else {
                return;
            };
            if last {
                super::series::record_usage(&state);
            }
            flushes.flush(&state).await;
            if last {
                return;
            }
            flushes.prune_when_due(&state).await;
        }
    });
    UsageFlusher {
        stop: Some(stop),
        task,
    }
}

impl UsageFlusher {
    /// Flushes what was counted until now (after the listeners stopped, so every
    /// answered request is in) and ends the task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(LAST_FLUSH_TIMEOUT, &mut self.task).await {
            Ok(_) => tracing::info!("usage totals written to the registry"),
            Err(_) => {
                self.task.abort();
                tracing::warn!(
                    "the last usage flush did not finish in time; usage since the previous flush is lost"
                );
            }
        }
    }
}

impl Flushes {
    async fn flush(&mut self, state: &AppState) {
        let totals = self.plan(state.registry.usage().take_figures());
        if totals.is_empty() {
            return;
        }
        let store = state.registry.store();
        match store
            .upsert_usage(state.registry.replica_id(), now_seconds(), &totals)
            .await
        {
            Ok(()) => self.written_all(),
            Err(err) => {
                tracing::warn!(error = %err, rows = totals.len(), "could not write usage totals to the registry; retrying at the next flush");
            }
        }
    }

    /// What to write of the days `taken` from the counters: each day whose totals differ
    /// from what the registry holds of this process, and what an earlier flush could not
    /// write. What is remembered as written shrinks to the days the counters still hold,
    /// so a tenant idle for days is written neither again nor forever.
    fn plan(&mut self, taken: Vec<(String, i64, Figures)>) -> Vec<UsageTotals> {
        let mut held = HashSet::with_capacity(taken.len());
        for (tenant, day, figures) in taken {
            if figures.is_zero() {
                continue;
            }
            let key = (tenant, day);
            if self.written.get(&key) == Some(&figures) {
                self.pending.remove(&key);
            } else {
                self.pending.insert(key.clone(), figures);
            }
            held.insert(key);
        }
        self.written.retain(|key, _| held.contains(key));
        self.pending
            .iter()
            .map(|((tenant, day), figures)| UsageTotals {
                tenant_id: tenant.clone(),
                day: *day,
                figures: *figures,
            })
            .collect()
    }

    /// The planned totals are in the registry.
    fn written_all(&mut self) {
        self.written.extend(self.pending.drain());
    }

    async fn prune_when_due(&mut self, state: &AppState) {
        if self
            .last_prune
            .is_some_and(|last| last.elapsed() < PRUNE_EVERY)
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        let retention_days =
            i64::try_from(state.config.storage.usage_retention.as_secs() / 86_400).unwrap_or(0);
        let before = crate::usage::today() - retention_days;
        let store = state.registry.store();
        let mut deleted = 0u64;
        for _ in 0..MAX_PRUNE_BATCHES {
            match store.prune_usage(before).await {
                Ok(rows) => {
                    deleted += rows;
                    if rows < USAGE_PRUNE_BATCH as u64 {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not prune old usage rows");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(
                rows = deleted,
                "pruned usage rows past storage.usage_retention"
            );
        }
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Counts a write-like request (remote write or OTLP) that went through: what every
/// backend acknowledged, what was refused for the active series limit while the rest was
/// written, and its body's size as received and decoded.
pub(super) fn count_write(tenant: &TenantEntry, counted: WriteCounted) {
    let today = tenant.usage.today();
    today.add(counted.request, 1);
    today.add(Field::Samples, counted.written.samples);
    today.add(Field::Histograms, counted.written.histograms);
    today.add(Field::Exemplars, counted.written.exemplars);
    today.add(Field::RefusedSeriesLimit, counted.refused_series_limit);
    today.add(Field::BytesCompressed, counted.compressed_bytes);
    today.add(Field::BytesDecoded, counted.decoded_bytes);
}

/// What [`count_write`] counts of one request.
#[derive(Clone, Copy, Debug)]
pub(super) struct WriteCounted {
    /// [`Field::WriteRequests`] or [`Field::OtlpRequests`].
    pub request: Field,
    pub written: Written,
    pub refused_series_limit: u64,
    pub compressed_bytes: u64,
    pub decoded_bytes: u64,
}

/// Counts one more of `field` (a read or query answered 2xx).
pub(super) fn count_answered(tenant: &TenantEntry, field: Field) {
    tenant.usage.today().add(field, 1);
}

/// Counts samples of a write refused whole for the tenant's sample rate.
pub(super) fn count_throttled(tenant: &TenantEntry, samples: u64) {
    tenant.usage.today().add(Field::RefusedThrottled, samples);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(samples: u64) -> Figures {
        let mut figures = Figures::default();
        figures.set(Field::Samples, samples);
        figures
    }

    fn planned(totals: &[UsageTotals]) -> Vec<(String, i64, u64)> {
        let mut planned: Vec<(String, i64, u64)> = totals
            .iter()
            .map(|row| {
                (
                    row.tenant_id.clone(),
                    row.day,
                    row.figures.get(Field::Samples),
                )
            })
            .collect();
        planned.sort();
        planned
    }

    #[test]
    fn only_changed_days_are_written_and_a_failed_flush_is_retried() {
        let mut flushes = Flushes::default();
        let taken = vec![
            ("a".to_string(), 10, figures(5)),
            ("b".to_string(), 10, figures(0)),
        ];
        assert_eq!(
            planned(&flushes.plan(taken.clone())),
            vec![("a".into(), 10, 5)]
        );
        flushes.written_all();
        // Unchanged: nothing to write, however often the flush runs.
        assert!(flushes.plan(taken.clone()).is_empty());
        assert!(flushes.plan(taken).is_empty());
        // Grown, but the write fails: the next flush writes the newest totals, and the
        // day handed over once (a day rolled out of its slot) is kept until written.
        let taken = vec![
            ("a".to_string(), 10, figures(7)),
            ("a".to_string(), 8, figures(3)),
        ];
        assert_eq!(planned(&flushes.plan(taken)).len(), 2);
        let taken = vec![("a".to_string(), 10, figures(9))];
        assert_eq!(
            planned(&flushes.plan(taken.clone())),
            vec![("a".into(), 8, 3), ("a".into(), 10, 9)]
        );
        flushes.written_all();
        assert!(flushes.plan(taken).is_empty());
        // A day the counters no longer hold is forgotten.
        assert!(flushes.plan(Vec::new()).is_empty());
        assert!(flushes.written.is_empty());
    }
}
