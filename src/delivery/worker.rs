//! The delivery worker of one queued backend (DESIGN §9; SECURITY.md T20, T21): reads the
//! backend's durable queue in order and sends each record until the backend takes it.
//!
//! - One worker per queue, and one queue per tenant and backend (see `lanes`): a tenant
//!   the backend refuses holds back only itself.
//! - One request in flight at a time, so delivery order is the order of acknowledgement
//!   (and of appending); a backlog goes as merged requests of consecutive records.
//! - A queue that has delivered everything and stays idle gives its disk back
//!   ([`Queue::release_delivered`]).
//! - A transient failure (429, 5xx, timeout, connection failure) and promgate's own
//!   misconfiguration (401/403/404) are retried with [`Backoff`], never sooner than the
//!   backend's `Retry-After`; nothing is dropped for its age or the queue's size.
//! - A permanent refusal (400, 409, 413, 422) drops the record: counted, and logged with
//!   the backend and its reason. So does a record whose envelope cannot be read.
//! - A record is acknowledged (its position made durable) only after the backend took it
//!   or it was dropped; a stop in between delivers it again after restart, which the
//!   backends absorb (same samples, same timestamps).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{watch, Notify};

use super::backoff::{jitter, Backoff};
use super::envelope::{EnvelopeError, QueuedWrite};
use super::queue::{Queue, QueueError, QueueReader, QueuedRecord};
use crate::backend::Outcome;
use crate::codec::snappy;
use crate::config::WriteProtocol;
use crate::telemetry::QueueMetrics;

/// Sends one queued write to the backend.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, write: &QueuedWrite) -> impl Future<Output = Outcome> + Send;

    /// The largest request (snappy-compressed bytes) the backend takes: records are
    /// merged up to it, so a backlog is not merged only to be cut again.
    fn max_request_bytes(&self) -> usize {
        usize::MAX
    }
}

/// What a worker did: the backend's series of the `promgate_queue_*` counters.
#[derive(Clone, Debug, Default)]
pub struct DeliveryCounters {
    pub delivered: Counter,
    pub retried: Counter,
    /// Dropped on a permanent refusal by the backend.
    pub dropped_rejected: Counter,
    /// Dropped because the record's envelope could not be read.
    pub dropped_unreadable: Counter,
    /// Damaged stretches of the queue skipped by the reader.
    pub corrupt: Counter,
}

impl DeliveryCounters {
    /// The backend's series of the delivery counters in `metrics`.
    pub fn of(metrics: &QueueMetrics, backend: &str) -> DeliveryCounters {
        let label = QueueMetrics::backend(backend);
        DeliveryCounters {
            delivered: metrics.delivered.get_or_create(&label).clone(),
            retried: metrics.retries.get_or_create(&label).clone(),
            dropped_rejected: metrics.dropped(backend, "rejected"),
            dropped_unreadable: metrics.dropped(backend, "unreadable"),
            corrupt: metrics.corrupt.get_or_create(&label).clone(),
        }
    }
}

/// How long an idle worker waits for an append's signal before looking for new records
/// again anyway.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a worker waits after the queue itself failed.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// A backlog is sent as merged requests of at most this many records…
const MAX_BATCH_RECORDS: usize = 256;
/// …and this many queued (compressed) bytes…
const MAX_BATCH_BYTES: usize = 4 << 20;
/// …and this many bytes once decoded, well under backends' request caps (Mimir 100 MiB,
/// VictoriaMetrics 32 MiB).
const MAX_BATCH_DECODED_BYTES: u64 = 16 << 20;

/// Consecutive records read together: merged into one request when they can be.
struct Batch {
    records: Vec<(u64, Result<QueuedWrite, EnvelopeError>)>,
    /// The record read after the batch that could not join it.
    carry: Option<QueuedRecord>,
}

/// Runs until `shutdown` turns true; what is not delivered by then stays on disk.
///
/// A backlog (after an outage) is delivered in merged requests: consecutive 1.0 records
/// of one tenant become one request (protobuf messages concatenate), so the queue
/// catches up at many records per round trip while order is kept; the snappy bodies are
/// joined without decompressing. 2.0 records go one by one (each has its own symbol
/// table).
pub async fn run<D: Deliver>(
    queue: Arc<Queue>,
    backend: String,
    deliver: D,
    backoff: Backoff,
    counters: DeliveryCounters,
    appended: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let worker = Worker {
        queue,
        backend,
        deliver,
        backoff,
        counters,
    };
    let mut reader = Some(worker.queue.reader());
    let mut carry = None;
    let mut skipped_regions = 0;
    let mut was_idle = false;
    while !*shutdown.borrow() {
        let Some(taken) = reader.take() else {
            return;
        };
        let max_bytes = worker.deliver.max_request_bytes().min(MAX_BATCH_BYTES);
        let (returned, next) = match next_batch(taken, carry.take(), max_bytes).await {
            Some(pair) => pair,
            None => {
                tracing::error!(backend = %worker.backend, "queue reader task failed; delivery stops");
                return;
            }
        };
        let skipped_now = returned.skipped_regions();
        if skipped_now > skipped_regions {
            tracing::error!(backend = %worker.backend, regions = skipped_now - skipped_regions, "damaged queue records skipped");
            worker
                .counters
                .corrupt
                .inc_by(skipped_now - skipped_regions);
            skipped_regions = skipped_now;
        }
        reader = Some(returned);
        let wait = match next {
            Ok(batch) if !batch.records.is_empty() => {
                was_idle = false;
                carry = batch.carry;
                if !worker.deliver_batch(batch.records, &mut shutdown).await {
                    return;
                }
                continue;
            }
            Ok(_) => {
                // Caught up: keep the cursor file current while there is time, and once
                // idle for a while give the delivered records' disk back.
                if was_idle {
                    release_delivered(&worker.queue, &worker.backend).await;
                } else {
                    flush_cursor(&worker.queue, &worker.backend).await;
                }
                was_idle = true;
                if wait_for_append(&appended, IDLE_POLL, &mut shutdown).await {
                    return;
                }
                continue;
            }
            Err(err) => {
                tracing::error!(backend = %worker.backend, error = %err, "reading the delivery queue failed");
                QUEUE_ERROR_PAUSE
            }
        };
        if sleep_or_stop(wait, &mut shutdown).await {
            return;
        }
    }
}

/// The reader's next records (after `carry`), read on the blocking pool.
async fn next_batch(
    mut reader: QueueReader,
    carry: Option<QueuedRecord>,
    max_bytes: usize,
) -> Option<(QueueReader, Result<Batch, QueueError>)> {
    tokio::task::spawn_blocking(move || {
        let next = read_batch(&mut reader, carry, max_bytes);
        (reader, next)
    })
    .await
    .ok()
}

/// Reads records while they can join one merged request of at most `max_bytes`.
fn read_batch(
    reader: &mut QueueReader,
    carry: Option<QueuedRecord>,
    max_bytes: usize,
) -> Result<Batch, QueueError> {
    let mut records: Vec<(u64, Result<QueuedWrite, EnvelopeError>)> = Vec::new();
    let mut bytes = 0;
    let mut decoded_bytes = 0;
    let mut next = carry;
    loop {
        let record = match next.take() {
            Some(record) => record,
            None => match reader.next_record()? {
                Some(record) => record,
                None => {
                    return Ok(Batch {
                        records,
                        carry: None,
                    })
                }
            },
        };
        let write = QueuedWrite::decode(&record.payload);
        let decoded = write.as_ref().map_or(0, |write| {
            snappy::checked_decoded_len(&write.body, u64::MAX).unwrap_or(u64::MAX)
        });
        let joins = match (records.first(), &write) {
            (None, _) => true,
            (Some((_, Ok(first))), Ok(write)) => {
                first.protocol == WriteProtocol::V1
                    && write.protocol == WriteProtocol::V1
                    && first.tenant_id == write.tenant_id
                    && records.len() < MAX_BATCH_RECORDS
                    && bytes + record.payload.len() <= max_bytes
                    && decoded_bytes + decoded <= MAX_BATCH_DECODED_BYTES
            }
            _ => false,
        };
        if !joins {
            return Ok(Batch {
                records,
                carry: Some(record),
            });
        }
        bytes += record.payload.len();
        decoded_bytes = decoded_bytes.saturating_add(decoded);
        records.push((record.seq, write));
    }
}

/// One queue's delivery: the queue, the backend and what is counted.
struct Worker<D> {
    queue: Arc<Queue>,
    backend: String,
    deliver: D,
    backoff: Backoff,
    counters: DeliveryCounters,
}

impl<D: Deliver> Worker<D> {
    /// Delivers (or drops) a batch and acknowledges it; false when shutdown came first
    /// (what was not acknowledged stays queued). A merged request the backend refuses
    /// permanently is delivered again record by record, so only the refused records are
    /// dropped.
    async fn deliver_batch(
        &self,
        records: Vec<(u64, Result<QueuedWrite, EnvelopeError>)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if let [_, _, ..] = records.as_slice() {
            let writes: Vec<&QueuedWrite> = records
                .iter()
                .filter_map(|(_, write)| write.as_ref().ok())
                .collect();
            if let Ok(merged) = QueuedWrite::merge_v1(&writes) {
                let last_seq = records.last().map_or(0, |(seq, _)| *seq);
                match self.deliver_until_final(&merged, last_seq, shutdown).await {
                    None => return false,
                    Some(Outcome::Accepted) => {
                        self.counters.delivered.inc_by(records.len() as u64);
                        acknowledge(&self.queue, &self.backend, last_seq).await;
                        return true;
                    }
                    Some(_) => tracing::info!(
                        backend = %self.backend,
                        records = records.len(),
                        "a merged delivery was refused; delivering its records one by one"
                    ),
                }
            }
        }
        for (seq, write) in records {
            if !self.deliver_record(seq, write, shutdown).await {
                return false;
            }
        }
        true
    }

    /// Delivers (or drops) one record and acknowledges it; false when shutdown came
    /// first (the record stays queued).
    async fn deliver_record(
        &self,
        seq: u64,
        write: Result<QueuedWrite, EnvelopeError>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let backend = self.backend.as_str();
        let write = match write {
            Ok(write) => write,
            Err(err) => {
                tracing::error!(backend, seq, error = %err, "queued record dropped: unreadable");
                self.counters.dropped_unreadable.inc();
                acknowledge(&self.queue, backend, seq).await;
                return true;
            }
        };
        match self.deliver_until_final(&write, seq, shutdown).await {
            None => return false,
            Some(Outcome::Accepted) => {
                self.counters.delivered.inc();
            }
            Some(outcome) => {
                let reason = match outcome {
                    Outcome::Rejected { message } => message,
                    other => format!("{other:?}"),
                };
                tracing::warn!(
                    backend,
                    tenant = %write.tenant_id,
                    seq,
                    reason = %reason,
                    "queued write dropped: the backend refused it permanently"
                );
                self.counters.dropped_rejected.inc();
            }
        }
        acknowledge(&self.queue, backend, seq).await;
        true
    }

    /// Sends `write` until the backend accepts it or refuses it permanently; `None` when
    /// shutdown came first.
    async fn deliver_until_final(
        &self,
        write: &QueuedWrite,
        seq: u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let backend = self.backend.as_str();
        let mut attempt = 0u32;
        loop {
            let retry_after = match self.deliver.deliver(write).await {
                outcome @ (Outcome::Accepted | Outcome::Rejected { .. }) => return Some(outcome),
                Outcome::Unavailable {
                    message,
                    retry_after_seconds,
                } => {
                    tracing::debug!(backend, seq, reason = %message, "queued write will be retried");
                    retry_after_seconds.map(Duration::from_secs)
                }
                Outcome::Misconfigured { message } => {
                    tracing::error!(backend, seq, reason = %message, "backend refused promgate; retrying until its configuration is fixed");
                    None
                }
            };
            attempt = attempt.saturating_add(1);
            self.counters.retried.inc();
            if sleep_or_stop(self.backoff.wait(attempt, retry_after, jitter()), shutdown).await {
                return None;
            }
        }
    }
}

/// Makes the record's position durable; a failure is logged (the record may then be
/// delivered again after a restart, never lost).
async fn acknowledge(queue: &Arc<Queue>, backend: &str, seq: u64) {
    let queue = Arc::clone(queue);
    let acked = tokio::task::spawn_blocking(move || queue.ack(seq)).await;
    match acked {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::error!(backend, seq, error = %err, "could not record delivery in the queue")
        }
        Err(err) => tracing::error!(backend, seq, error = %err, "queue ack task failed"),
    }
}

/// Writes the queue's cursor file when it lags behind the acknowledged position.
pub async fn flush_cursor(queue: &Arc<Queue>, backend: &str) {
    let queue = Arc::clone(queue);
    match tokio::task::spawn_blocking(move || queue.flush_cursor()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(backend, error = %err, "could not write the queue cursor"),
        Err(err) => tracing::warn!(backend, error = %err, "queue cursor task failed"),
    }
}

/// Deletes a caught-up queue's delivered segment; a failure is logged (the disk is then
/// given back once the segment is full).
async fn release_delivered(queue: &Arc<Queue>, backend: &str) {
    let queue = Arc::clone(queue);
    match tokio::task::spawn_blocking(move || queue.release_delivered()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(backend, error = %err, "could not release delivered queue records")
        }
        Err(err) => tracing::warn!(backend, error = %err, "queue release task failed"),
    }
}

/// Waits for an append's signal or `wait`; true when shutdown was signalled first.
async fn wait_for_append(
    appended: &Notify,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let stopped = tokio::select! {
        _ = appended.notified() => false,
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    };
    stopped || *shutdown.borrow()
}

/// Sleeps `wait`; true when shutdown was signalled first.
async fn sleep_or_stop(wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    };
    stopped || *shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WriteProtocol;
    use crate::delivery::queue::QueueOptions;
    use bytes::Bytes;
    use parking_lot::Mutex;
    use std::collections::VecDeque;

    /// Answers from a script (then Accepted), recording what it was sent and when.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<Mutex<VecDeque<Outcome>>>,
        sent: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
    }

    impl Deliver for Scripted {
        fn deliver(&self, write: &QueuedWrite) -> impl Future<Output = Outcome> + Send {
            let decoded = crate::codec::snappy::decompress_capped(&write.body, 1 << 20)
                .expect("test bodies are snappy");
            let body = String::from_utf8_lossy(&decoded).into_owned();
            self.sent.lock().push((body, tokio::time::Instant::now()));
            let answer = self.answers.lock().pop_front().unwrap_or(Outcome::Accepted);
            async move { answer }
        }
    }

    /// A queued write whose body is `text`, snappy-compressed (merged bodies then decode
    /// to the texts joined).
    fn write_as(text: &str, protocol: WriteProtocol) -> Vec<u8> {
        QueuedWrite {
            tenant_id: "alpha".into(),
            protocol,
            sent: crate::backend::Written::default(),
            body: Bytes::from(crate::codec::snappy::compress(text.as_bytes())),
        }
        .encode()
    }

    fn write(text: &str) -> Vec<u8> {
        write_as(text, WriteProtocol::V1)
    }

    fn sent_bodies(deliver: &Scripted) -> Vec<String> {
        deliver
            .sent
            .lock()
            .iter()
            .map(|(body, _)| body.clone())
            .collect()
    }

    struct Running {
        queue: Arc<Queue>,
        counters: DeliveryCounters,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn start(records: Vec<Vec<u8>>, deliver: Scripted) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let (queue, _) = Queue::open(dir.path(), QueueOptions::new(64 << 20)).expect("open");
        let queue = Arc::new(queue);
        queue.append(&records).expect("append");
        let counters = DeliveryCounters::default();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            Arc::clone(&queue),
            "b0".into(),
            deliver,
            Backoff::default(),
            counters.clone(),
            Arc::new(Notify::new()),
            stopped,
        ));
        Running {
            queue,
            counters,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn until_drained(queue: &Queue) {
        for _ in 0..500 {
            if queue.stats().pending_records == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the queue was not drained: {:?}", queue.stats());
    }

    #[tokio::test]
    async fn delivers_in_order_and_drops_only_what_can_never_pass() {
        let deliver = Scripted::default();
        deliver.answers.lock().extend([
            Outcome::Accepted,
            Outcome::Rejected {
                message: "400: out of order sample".into(),
            },
        ]);
        let records = vec![
            write("one,"),
            write("two,"),
            vec![7, 7, 7],
            write("three"),
            write_as("four", WriteProtocol::V2),
            write_as("five", WriteProtocol::V2),
        ];
        let running = start(records, deliver.clone());
        until_drained(&running.queue).await;
        assert_eq!(
            sent_bodies(&deliver),
            ["one,two,", "three", "four", "five"],
            "consecutive 1.0 records merged; 2.0 records one by one"
        );
        let counters = &running.counters;
        assert_eq!(counters.delivered.get(), 4);
        assert_eq!(counters.dropped_rejected.get(), 1);
        assert_eq!(counters.dropped_unreadable.get(), 1);
        assert_eq!(counters.retried.get(), 0);
        running.stop.send(true).expect("stop");
        running.task.await.expect("join");
    }

    #[tokio::test]
    async fn a_refused_merged_request_is_delivered_again_record_by_record() {
        let deliver = Scripted::default();
        let refused = || Outcome::Rejected {
            message: "400: bad label".into(),
        };
        deliver
            .answers
            .lock()
            .extend([refused(), Outcome::Accepted, refused(), Outcome::Accepted]);
        let running = start(vec![write("a"), write("b"), write("c")], deliver.clone());
        until_drained(&running.queue).await;
        assert_eq!(sent_bodies(&deliver), ["abc", "a", "b", "c"]);
        assert_eq!(running.counters.delivered.get(), 2);
        assert_eq!(running.counters.dropped_rejected.get(), 1);
        running.stop.send(true).expect("stop");
        running.task.await.expect("join");
    }

    #[tokio::test]
    async fn retries_transient_failures_no_sooner_than_retry_after() {
        let deliver = Scripted::default();
        deliver.answers.lock().extend([
            Outcome::Unavailable {
                message: "503".into(),
                retry_after_seconds: Some(1),
            },
            Outcome::Misconfigured {
                message: "401".into(),
            },
        ]);
        let running = start(vec![write("one,"), write("two")], deliver.clone());
        until_drained(&running.queue).await;
        let sent = deliver.sent.lock().clone();
        assert_eq!(
            sent_bodies(&deliver),
            ["one,two", "one,two", "one,two"],
            "the same records again"
        );
        assert!(
            sent[1].1 - sent[0].1 >= Duration::from_secs(1),
            "the backend's Retry-After was honoured"
        );
        assert_eq!(running.counters.retried.get(), 2);
        assert_eq!(running.counters.delivered.get(), 2);
        running.stop.send(true).expect("stop");
        running.task.await.expect("join");
    }

    #[tokio::test]
    async fn a_stop_while_the_backend_is_down_keeps_the_record() {
        let deliver = Scripted::default();
        deliver.answers.lock().extend(
            std::iter::repeat_with(|| Outcome::Unavailable {
                message: "connection failed".into(),
                retry_after_seconds: None,
            })
            .take(1000),
        );
        let running = start(vec![write("kept")], deliver.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        running.stop.send(true).expect("stop");
        running.task.await.expect("join");
        assert_eq!(running.queue.stats().pending_records, 1, "still queued");
        assert!(deliver.sent.lock().len() >= 2, "it was retried meanwhile");
        assert_eq!(running.counters.delivered.get(), 0);
    }
}
