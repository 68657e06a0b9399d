//! The delivery worker of one queued backend (DESIGN §9; SECURITY.md T20, T21): reads the
//! backend's durable queue in order and sends each record until the backend takes it.
//!
//! - One record in flight at a time, so delivery order is the order of acknowledgement
//!   (and of appending).
//! - A transient failure (429, 5xx, timeout, connection failure) and promgate's own
//!   misconfiguration (401/403/404) are retried with [`Backoff`], never sooner than the
//!   backend's `Retry-After`; nothing is dropped for its age or the queue's size.
//! - A permanent refusal (400, 409, 413, 422) drops the record: counted, and logged with
//!   the backend and its reason. So does a record whose envelope cannot be read.
//! - A record is acknowledged (its position made durable) only after the backend took it
//!   or it was dropped; a stop in between delivers it again after restart, which the
//!   backends absorb (same samples, same timestamps).
//!
//! Not yet wired into the relay: the write path does not append to queues yet.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::backoff::{jitter, Backoff};
use super::envelope::QueuedWrite;
use super::queue::{Queue, QueueError, QueueReader, QueuedRecord};
use crate::backend::Outcome;

/// Sends one queued write to the backend.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, write: &QueuedWrite) -> impl Future<Output = Outcome> + Send;
}

/// What a worker did, for `/metrics`.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    /// Dropped on a permanent refusal by the backend.
    pub dropped_rejected: AtomicU64,
    /// Dropped because the record's envelope could not be read.
    pub dropped_unreadable: AtomicU64,
}

/// How long an idle worker waits before looking for new records again.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long a worker waits after the queue itself failed.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true; what is not delivered by then stays on disk.
pub async fn run<D: Deliver>(
    queue: Arc<Queue>,
    backend: String,
    deliver: D,
    backoff: Backoff,
    counters: Arc<DeliveryCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reader = Some(queue.reader());
    while !*shutdown.borrow() {
        let Some(taken) = reader.take() else {
            return;
        };
        let (returned, next) = match next_record(taken).await {
            Some(pair) => pair,
            None => {
                tracing::error!(backend = %backend, "queue reader task failed; delivery stops");
                return;
            }
        };
        reader = Some(returned);
        let wait = match next {
            Ok(Some(record)) => {
                if !deliver_record(
                    &queue,
                    &backend,
                    &deliver,
                    backoff,
                    &counters,
                    record,
                    &mut shutdown,
                )
                .await
                {
                    return;
                }
                continue;
            }
            Ok(None) => IDLE_POLL,
            Err(err) => {
                tracing::error!(backend = %backend, error = %err, "reading the delivery queue failed");
                QUEUE_ERROR_PAUSE
            }
        };
        if sleep_or_stop(wait, &mut shutdown).await {
            return;
        }
    }
}

/// The reader's next record, read on the blocking pool.
async fn next_record(
    mut reader: QueueReader,
) -> Option<(QueueReader, Result<Option<QueuedRecord>, QueueError>)> {
    tokio::task::spawn_blocking(move || {
        let next = reader.next_record();
        (reader, next)
    })
    .await
    .ok()
}

/// Delivers (or drops) one record and acknowledges it; false when shutdown came first
/// (the record stays queued).
async fn deliver_record<D: Deliver>(
    queue: &Arc<Queue>,
    backend: &str,
    deliver: &D,
    backoff: Backoff,
    counters: &DeliveryCounters,
    record: QueuedRecord,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let write = match QueuedWrite::decode(&record.payload) {
        Ok(write) => write,
        Err(err) => {
            tracing::error!(backend, seq = record.seq, error = %err, "queued record dropped: unreadable");
            counters.dropped_unreadable.fetch_add(1, Ordering::Relaxed);
            acknowledge(queue, backend, record.seq).await;
            return true;
        }
    };
    let mut attempt = 0u32;
    loop {
        let retry_after = match deliver.deliver(&write).await {
            Outcome::Accepted => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                acknowledge(queue, backend, record.seq).await;
                return true;
            }
            Outcome::Rejected { message } => {
                tracing::warn!(
                    backend,
                    tenant = %write.tenant_id,
                    seq = record.seq,
                    reason = %message,
                    "queued write dropped: the backend refused it permanently"
                );
                counters.dropped_rejected.fetch_add(1, Ordering::Relaxed);
                acknowledge(queue, backend, record.seq).await;
                return true;
            }
            Outcome::Unavailable {
                message,
                retry_after_seconds,
            } => {
                tracing::debug!(backend, seq = record.seq, reason = %message, "queued write will be retried");
                retry_after_seconds.map(Duration::from_secs)
            }
            Outcome::Misconfigured { message } => {
                tracing::error!(backend, seq = record.seq, reason = %message, "backend refused promgate; retrying until its configuration is fixed");
                None
            }
        };
        attempt = attempt.saturating_add(1);
        counters.retried.fetch_add(1, Ordering::Relaxed);
        if sleep_or_stop(backoff.wait(attempt, retry_after, jitter()), shutdown).await {
            return false;
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
            let body = String::from_utf8_lossy(&write.body).into_owned();
            self.sent.lock().push((body, tokio::time::Instant::now()));
            let answer = self.answers.lock().pop_front().unwrap_or(Outcome::Accepted);
            async move { answer }
        }
    }

    fn write(body: &str) -> Vec<u8> {
        QueuedWrite {
            tenant_id: "alpha".into(),
            protocol: WriteProtocol::V1,
            body: Bytes::from(body.to_string()),
        }
        .encode()
    }

    struct Running {
        queue: Arc<Queue>,
        counters: Arc<DeliveryCounters>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn start(records: Vec<Vec<u8>>, deliver: Scripted) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let (queue, _) = Queue::open(dir.path(), QueueOptions::new(64 << 20)).expect("open");
        let queue = Arc::new(queue);
        queue.append(&records).expect("append");
        let counters = Arc::new(DeliveryCounters::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            Arc::clone(&queue),
            "b0".into(),
            deliver,
            Backoff::default(),
            Arc::clone(&counters),
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
        let mut records = vec![write("one"), write("two")];
        records.push(vec![7, 7, 7]);
        records.push(write("three"));
        let running = start(records, deliver.clone());
        until_drained(&running.queue).await;
        let sent: Vec<String> = deliver
            .sent
            .lock()
            .iter()
            .map(|(body, _)| body.clone())
            .collect();
        assert_eq!(sent, ["one", "two", "three"]);
        let counters = &running.counters;
        assert_eq!(counters.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(counters.dropped_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(counters.dropped_unreadable.load(Ordering::Relaxed), 1);
        assert_eq!(counters.retried.load(Ordering::Relaxed), 0);
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
        let running = start(vec![write("one"), write("two")], deliver.clone());
        until_drained(&running.queue).await;
        let sent = deliver.sent.lock().clone();
        let bodies: Vec<&str> = sent.iter().map(|(body, _)| body.as_str()).collect();
        assert_eq!(
            bodies,
            ["one", "one", "one", "two"],
            "in order, the same record again"
        );
        assert!(
            sent[1].1 - sent[0].1 >= Duration::from_secs(1),
            "the backend's Retry-After was honoured"
        );
        assert_eq!(running.counters.retried.load(Ordering::Relaxed), 2);
        assert_eq!(running.counters.delivered.load(Ordering::Relaxed), 2);
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
        assert_eq!(running.counters.delivered.load(Ordering::Relaxed), 0);
    }
}
