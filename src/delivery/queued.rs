//! The relay's queued backends (DESIGN §9): opens the per-tenant lanes of every
//! `delivery = "queued"` backend at start-up ([`TenantLanes`]), appends the write path's
//! copies to them, runs one delivery worker per lane (at most [`MAX_IN_FLIGHT`] requests
//! to a backend at once), and drains them on shutdown within `queue.drain_timeout`,
//! leaving the rest on disk for the next start.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::envelope::QueuedWrite;
use super::lanes::{Lane, LanesReport, TenantLanes};
use super::queue::QueueError;
use super::worker::{self, Deliver, DeliveryCounters};
use crate::backend::{BackendClient, Outcome};
use crate::config::{Config, Delivery, WriteProtocol};
use crate::telemetry::{BackendLabel, Metrics};

/// The lanes of one queued backend.
pub struct QueuedBackend {
    pub name: String,
    lanes: Arc<TenantLanes>,
    metrics: Arc<Metrics>,
}

/// Every backend's queue, in the order of `config.backends` (`None` for sync backends).
pub struct QueuedBackends {
    by_backend: Vec<Option<QueuedBackend>>,
}

/// Envelope bytes around a body (format, protocol, tenant length, tenant, counts): an
/// upper bound for the room check.
const ENVELOPE_OVERHEAD_BYTES: usize = 4 + 256 + 24;
/// How often a draining shutdown looks at the queues.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Requests in flight to one queued backend at once, over all its tenants' lanes.
pub const MAX_IN_FLIGHT: usize = 8;

impl QueuedBackends {
    /// Opens (creating and recovering) the queue of every queued backend. A queue
    /// directory another process holds, or one that cannot be created, stops start-up.
    pub async fn open(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<QueuedBackends> {
        let mut by_backend = Vec::with_capacity(config.backends.len());
        for backend in &config.backends {
            if backend.delivery != Delivery::Queued {
                by_backend.push(None);
                continue;
            }
            let dir = config.queue.backend_directory(&backend.name);
            let max_bytes = config.queue.max_bytes;
            let opened = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || TenantLanes::open(&dir, max_bytes)
            })
            .await?
            .map_err(|err| {
                anyhow::anyhow!(
                    "queue of backend {} in {}: {err}",
                    backend.name,
                    dir.display()
                )
            })?;
            let (lanes, report) = opened;
            log_recovery(&backend.name, &report);
            let label = BackendLabel {
                backend: backend.name.clone(),
            };
            metrics
                .queue
                .corrupt
                .get_or_create(&label)
                .inc_by(report.recovery.corrupt_regions);
            metrics
                .queue
                .max_bytes
                .get_or_create(&label)
                .set(i64::try_from(config.queue.max_bytes).unwrap_or(i64::MAX));
            let fsyncs = metrics.queue.fsync_duration.get_or_create(&label).clone();
            lanes.observe_fsyncs(Arc::new(move |took: Duration| {
                fsyncs.observe(took.as_secs_f64())
            }));
            by_backend.push(Some(QueuedBackend {
                name: backend.name.clone(),
                lanes: Arc::new(lanes),
                metrics: Arc::clone(metrics),
            }));
        }
        Ok(QueuedBackends { by_backend })
    }

    /// No queues (a relay without queued backends, or a benchmark).
    pub fn none() -> QueuedBackends {
        QueuedBackends {
            by_backend: Vec::new(),
        }
    }

    /// The queue of backend `index`, when it is a queued one.
    pub fn get(&self, index: usize) -> Option<&QueuedBackend> {
        self.by_backend.get(index)?.as_ref()
    }

    /// The queue of the backend called `name`, when it is a queued one.
    pub fn named(&self, name: &str) -> Option<&QueuedBackend> {
        self.iter().find(|queued| queued.name == name)
    }

    fn iter(&self) -> impl Iterator<Item = &QueuedBackend> {
        self.by_backend.iter().flatten()
    }

    /// Sets the `promgate_queue_*` gauges from the queues as they are now.
    pub fn refresh_metrics(&self, metrics: &Metrics) {
        for queued in self.iter() {
            let stats = queued.lanes.stats();
            metrics.queue.set_stats(
                &queued.name,
                stats.pending_records,
                stats.bytes,
                stats.oldest_appended_at,
            );
        }
    }

    /// Starts one delivery worker per lane, and one for each lane created later.
    pub fn start_workers(
        &self,
        backends: &[Arc<BackendClient>],
        metrics: &Arc<Metrics>,
    ) -> Workers {
        let (stop, stopped) = watch::channel(false);
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let mut backends_lanes = Vec::new();
        let runtime = tokio::runtime::Handle::current();
        for (index, queued) in self.by_backend.iter().enumerate() {
            let (Some(queued), Some(client)) = (queued, backends.get(index)) else {
                continue;
            };
            backends_lanes.push((queued.name.clone(), Arc::clone(&queued.lanes)));
            let deliver = ToBackend {
                client: Arc::clone(client),
                metrics: Arc::clone(metrics),
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            };
            let counters = DeliveryCounters::of(&metrics.queue, &queued.name);
            let backend = queued.name.clone();
            let tasks = Arc::clone(&tasks);
            let stopped = stopped.clone();
            let runtime = runtime.clone();
            queued.lanes.start_lanes(Arc::new(move |lane: Arc<Lane>| {
                let task = runtime.spawn(worker::run(
                    Arc::clone(&lane.queue),
                    backend.clone(),
                    deliver.clone(),
                    Backoff::default(),
                    counters.clone(),
                    Arc::clone(&lane.appended),
                    stopped.clone(),
                ));
                tasks.lock().push(task);
            }));
        }
        Workers {
            stop,
            tasks,
            lanes: backends_lanes,
        }
    }
}

impl QueuedBackend {
    /// Whether a write of this body by `tenant` would fit in the queue now (a cheap check
    /// before the sync backends are asked): [`QueueError::Full`] or
    /// [`QueueError::TenantShareFull`] when not.
    pub fn check_room(&self, tenant: &str, body_len: usize) -> Result<(), QueueError> {
        self.lanes
            .check_room(tenant, body_len + ENVELOPE_OVERHEAD_BYTES)
    }

    /// Appends the write to its tenant's lane; returns once it is on disk.
    pub async fn append(&self, write: &QueuedWrite) -> Result<(), QueueError> {
        let lanes = Arc::clone(&self.lanes);
        let tenant = write.tenant_id.clone();
        let payload = write.encode();
        tokio::task::spawn_blocking(move || lanes.append(&tenant, &payload))
            .await
            .map_err(|err| QueueError::Stopped(format!("append task: {err}")))??;
        self.metrics
            .queue
            .appended
            .get_or_create(&BackendLabel {
                backend: self.name.clone(),
            })
            .inc();
        Ok(())
    }
}

fn log_recovery(backend: &str, lanes: &LanesReport) {
    if lanes.migrated_records > 0 || lanes.unreadable_records > 0 {
        tracing::info!(
            backend,
            migrated_records = lanes.migrated_records,
            unreadable_records = lanes.unreadable_records,
            "records of the shared queue moved into per-tenant lanes"
        );
    }
    let report = &lanes.recovery;
    if report.truncated_bytes > 0
        || report.corrupt_regions > 0
        || report.cursor_damaged
        || report.renamed_segments > 0
    {
        tracing::warn!(
            backend,
            pending_records = report.pending_records,
            truncated_bytes = report.truncated_bytes,
            corrupt_regions = report.corrupt_regions,
            corrupt_bytes = report.corrupt_bytes,
            cursor_damaged = report.cursor_damaged,
            renamed_segments = report.renamed_segments,
            "queue recovered from an unclean stop; valid records kept"
        );
    } else {
        tracing::info!(
            backend,
            pending_records = report.pending_records,
            segments = report.segments,
            lanes = lanes.lanes,
            "queue opened"
        );
    }
}

/// Delivers queued writes with the backend's own client, in the protocol each was
/// queued in; shared by the backend's lanes, which wait for one of its permits.
#[derive(Clone)]
struct ToBackend {
    client: Arc<BackendClient>,
    metrics: Arc<Metrics>,
    in_flight: Arc<Semaphore>,
}

impl Deliver for ToBackend {
    fn deliver(&self, write: &QueuedWrite) -> impl Future<Output = Outcome> + Send {
        let client = Arc::clone(&self.client);
        let metrics = Arc::clone(&self.metrics);
        let write = write.clone();
        let in_flight = Arc::clone(&self.in_flight);
        async move {
            // Never closed; without a permit the request would go unlimited.
            let _permit = in_flight.acquire_owned().await.ok();
            match write.protocol {
                WriteProtocol::V1 => client.write(&write.tenant_id, write.body, &metrics).await,
                WriteProtocol::V2 => {
                    client
                        .write_v2(&write.tenant_id, write.body, write.sent, &metrics)
                        .await
                        .0
                }
            }
        }
    }

    fn max_request_bytes(&self) -> usize {
        match self.client.config.max_request_bytes {
            0 => usize::MAX,
            cap => usize::try_from(cap).unwrap_or(usize::MAX),
        }
    }
}

/// The running delivery workers.
pub struct Workers {
    stop: watch::Sender<bool>,
    /// One per lane; lanes created later add theirs.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    lanes: Vec<(String, Arc<TenantLanes>)>,
}

impl Workers {
    /// Lets the workers go on until every queue is empty or `deadline` passed, then stops
    /// them (a send in progress finishes or times out first); what is left stays queued.
    pub async fn drain_and_stop(self, deadline: Duration) {
        let started = Instant::now();
        let pending = |lanes: &[(String, Arc<TenantLanes>)]| -> u64 {
            lanes.iter().map(|(_, lanes)| lanes.pending_records()).sum()
        };
        if pending(&self.lanes) > 0 {
            tracing::info!(records = pending(&self.lanes), deadline = ?deadline, "draining delivery queues");
        }
        while pending(&self.lanes) > 0 && started.elapsed() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        for (backend, lanes) in &self.lanes {
            for lane in lanes.lanes() {
                worker::flush_cursor(&lane.queue, backend).await;
            }
            let left = lanes.pending_records();
            if left > 0 {
                tracing::warn!(backend, records = left, "delivery stopped with records still queued; they are delivered after the next start");
            }
        }
    }
}
