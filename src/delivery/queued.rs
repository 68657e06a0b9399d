//! The relay's queued backends (DESIGN §9): opens the durable queue of every
//! `delivery = "queued"` backend at start-up, appends the write path's copies to them,
//! runs one delivery worker per queue, and drains them on shutdown within
//! `queue.drain_timeout`, leaving the rest on disk for the next start.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::envelope::QueuedWrite;
use super::queue::{AsyncQueue, Queue, QueueError, QueueOptions, RecoveryReport};
use super::worker::{self, Deliver};
use crate::backend::{BackendClient, Outcome};
use crate::config::{Config, Delivery, WriteProtocol};
use crate::telemetry::{BackendLabel, Metrics};

/// The queue of one queued backend.
pub struct QueuedBackend {
    pub name: String,
    queue: AsyncQueue,
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
            let options = QueueOptions::new(config.queue.max_bytes);
            let opened = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || {
                    std::fs::create_dir_all(&dir)?;
                    Queue::open(&dir, options)
                }
            })
            .await?
            .map_err(|err| {
                anyhow::anyhow!(
                    "queue of backend {} in {}: {err}",
                    backend.name,
                    dir.display()
                )
            })?;
            let (queue, report) = opened;
            log_recovery(&backend.name, &report);
            let label = BackendLabel {
                backend: backend.name.clone(),
            };
            metrics
                .queue
                .corrupt
                .get_or_create(&label)
                .inc_by(report.corrupt_regions);
            metrics
                .queue
                .max_bytes
                .get_or_create(&label)
                .set(i64::try_from(config.queue.max_bytes).unwrap_or(i64::MAX));
            let fsyncs = metrics.queue.fsync_duration.get_or_create(&label).clone();
            queue.observe_fsyncs(move |took| fsyncs.observe(took.as_secs_f64()));
            by_backend.push(Some(QueuedBackend {
                name: backend.name.clone(),
                queue: AsyncQueue::new(Arc::new(queue)),
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
            metrics
                .queue
                .set_stats(&queued.name, &queued.queue.queue().stats());
        }
    }

    /// Starts one delivery worker per queue.
    pub fn start_workers(
        &self,
        backends: &[Arc<BackendClient>],
        metrics: &Arc<Metrics>,
    ) -> Workers {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut queues = Vec::new();
        for (index, queued) in self.by_backend.iter().enumerate() {
            let (Some(queued), Some(client)) = (queued, backends.get(index)) else {
                continue;
            };
            let queue = Arc::clone(queued.queue.queue());
            queues.push((queued.name.clone(), Arc::clone(&queue)));
            tasks.push(tokio::spawn(worker::run(
                queue,
                queued.name.clone(),
                ToBackend {
                    client: Arc::clone(client),
                    metrics: Arc::clone(metrics),
                },
                Backoff::default(),
                metrics.queue.delivery_counters(&queued.name),
                stopped.clone(),
            )));
        }
        Workers {
            stop,
            tasks,
            queues,
        }
    }
}

impl QueuedBackend {
    /// Whether a write of this body would fit in the queue now (a cheap check before the
    /// sync backends are asked).
    pub fn has_room_for(&self, body_len: usize) -> bool {
        self.queue
            .queue()
            .has_room_for(&[body_len + ENVELOPE_OVERHEAD_BYTES])
    }

    /// Appends the write; returns once it is on disk.
    pub async fn append(&self, write: &QueuedWrite) -> Result<(), QueueError> {
        self.queue.append(vec![Bytes::from(write.encode())]).await?;
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

fn log_recovery(backend: &str, report: &RecoveryReport) {
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
            "queue opened"
        );
    }
}

/// Delivers queued writes with the backend's own client, in the protocol each was
/// queued in.
struct ToBackend {
    client: Arc<BackendClient>,
    metrics: Arc<Metrics>,
}

impl Deliver for ToBackend {
    fn deliver(&self, write: &QueuedWrite) -> impl Future<Output = Outcome> + Send {
        let client = Arc::clone(&self.client);
        let metrics = Arc::clone(&self.metrics);
        let write = write.clone();
        async move {
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
}

/// The running delivery workers.
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    queues: Vec<(String, Arc<Queue>)>,
}

impl Workers {
    /// Lets the workers go on until every queue is empty or `deadline` passed, then stops
    /// them (a send in progress finishes or times out first); what is left stays queued.
    pub async fn drain_and_stop(self, deadline: Duration) {
        let started = Instant::now();
        let pending = |queues: &[(String, Arc<Queue>)]| -> u64 {
            queues
                .iter()
                .map(|(_, queue)| queue.stats().pending_records)
                .sum()
        };
        if pending(&self.queues) > 0 {
            tracing::info!(records = pending(&self.queues), deadline = ?deadline, "draining delivery queues");
        }
        while pending(&self.queues) > 0 && started.elapsed() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for (backend, queue) in &self.queues {
            worker::flush_cursor(queue, backend).await;
            let left = queue.stats().pending_records;
            if left > 0 {
                tracing::warn!(backend, records = left, "delivery stopped with records still queued; they are delivered after the next start");
            }
        }
    }
}
