//! Queued delivery (DESIGN §9; SECURITY.md T20, T21): a `delivery = "queued"` backend's
//! outage never reaches the senders, and nothing acknowledged is lost.
//!
//! - Real processes: a Prometheus 2.42 sender → the promgate binary → a Prometheus 2.42
//!   receiver as a queued backend, stopped for a minute while the sender keeps writing
//!   (it sees only 2xx), then restarted: every sample the sender scraped is in the
//!   backend, compared series by series with the sender's own TSDB.
//! - The promgate binary killed with SIGKILL at random moments under load, six times,
//!   while its backend goes up and down: every acknowledged write is delivered
//!   (duplicates counted and reported), and a torn last record is cut off at start-up.
//! - A tiny `max_bytes` with the backend down: 503 + Retry-After once full, and every
//!   write acknowledged before is delivered once the backend is back.
//! - One sync backend up and one queued backend hanging: writes keep their latency.
//! - A sync backend down: 503, and no copy is queued for the sender's retry to repeat.
//! - A backend refusing one tenant (429, as Mimir does to a tenant over its limits): the
//!   other tenants' writes are delivered meanwhile, the refused tenant's in order once it
//!   is accepted again; its backlog fills only its own share of `max_bytes`, so only it gets
//!   503.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::process::{wait_ready, Process};
use common::stack::{start_backend_prometheus, Stack};
use common::{now_ms, series, snappy_body, FakeBackend, Relay, FAKE_TENANT_HEADER};
use promgate::proto::WriteRequest;
use serde_json::{json, Value};

/// The `seq` label of every series in the requests the backend accepted, with how many
/// times each arrived.
fn accepted_seqs(backend: &FakeBackend) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for request in backend.requests() {
        if !(200..300).contains(&request.status) {
            continue;
        }
        for series in request.write_request().timeseries {
            for label in series.labels.iter().filter(|label| label.name == "seq") {
                let seq = label.value.parse().expect("seq is a number");
                *seen.entry(seq).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// One series `probe{seq="<seq>"}`, plus `padding` bytes of incompressible label values
/// in series of their own (label values are capped, so 1000 bytes a series).
fn probe_body(seq: u64, padding: usize) -> Vec<u8> {
    let seq_text = seq.to_string();
    let now = now_ms();
    let mut timeseries = vec![series(
        &[("__name__", "probe"), ("seq", seq_text.as_str())],
        seq as f64,
        now,
    )];
    let mut state = seq.wrapping_mul(6_364_136_223_846_793_005) | 1;
    for chunk in 0..padding.div_ceil(1000) {
        let text: String = (0..1000.min(padding - chunk * 1000))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect();
        timeseries.push(series(
            &[("__name__", "probe_padding"), ("padding", text.as_str())],
            0.0,
            now,
        ));
    }
    snappy_body(&WriteRequest {
        timeseries,
        metadata: vec![],
    })
}

/// A metric's value in a `/metrics` text: the sum over the lines of `name` whose labels
/// contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            (series == &name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|label| series.contains(label))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

async fn until<F: Fn() -> bool>(what: &str, timeout: Duration, done: F) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn queued_backend_toml(backend: &FakeBackend, queue_dir: &Path, max_bytes: &str) -> String {
    format!(
        "[[backends]]\nname = \"queued\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\ndelivery = \"queued\"\n\
         [queue]\ndirectory = \"{}\"\nmax_bytes = \"{max_bytes}\"\ndrain_timeout = \"2s\"\n",
        backend.write_url(),
        queue_dir.display()
    )
}

/// A queued backend that names the tenant in a header (so the fake backend can answer one
/// tenant differently) and passes on a `Retry-After` of at most a second.
fn tenant_header_queued_backend_toml(
    backend: &FakeBackend,
    queue_dir: &Path,
    max_bytes: &str,
) -> String {
    format!(
        "[[backends]]\nname = \"queued\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\ndelivery = \"queued\"\n\
         tenant_header = \"{FAKE_TENANT_HEADER}\"\nmax_retry_after = \"1s\"\n\
         [queue]\ndirectory = \"{}\"\nmax_bytes = \"{max_bytes}\"\ndrain_timeout = \"2s\"\n",
        backend.write_url(),
        queue_dir.display()
    )
}

/// The `seq` labels of the series the backend accepted for `tenant`, in the order they
/// arrived.
fn delivered_seqs_of(backend: &FakeBackend, tenant: &str) -> Vec<u64> {
    backend
        .requests()
        .iter()
        .filter(|request| request.status == 204)
        .filter(|request| {
            request
                .headers
                .get(FAKE_TENANT_HEADER)
                .is_some_and(|value| value.as_bytes() == tenant.as_bytes())
        })
        .flat_map(|request| request.write_request().timeseries)
        .filter_map(|series| {
            series
                .labels
                .iter()
                .find(|label| label.name == "seq")
                .map(|label| label.value.parse::<u64>().expect("seq"))
        })
        .collect()
}

/// Requests the backend refused for `tenant`.
fn refused_requests_of(backend: &FakeBackend, tenant: &str) -> usize {
    backend
        .requests()
        .iter()
        .filter(|request| request.status == 429)
        .filter(|request| {
            request
                .headers
                .get(FAKE_TENANT_HEADER)
                .is_some_and(|value| value.as_bytes() == tenant.as_bytes())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_one_tenant_holds_back_none_of_the_others() {
    let backend = FakeBackend::start().await;
    backend.answer_tenant_with("alpha", Some(429));
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&tenant_header_queued_backend_toml(
        &backend,
        queue_dir.path(),
        "64MiB",
    ))
    .await;
    let alpha = relay.tenant_with_token("alpha").await;
    let beta = relay.tenant_with_token("beta").await;

    // Alpha's records come first: an in-order worker would be stuck behind them.
    for seq in 0..5 {
        let response = relay.write(&alpha, probe_body(seq, 0)).await;
        assert_eq!(response.status(), 204, "alpha's write {seq} is queued");
    }
    until("the backend refused alpha", Duration::from_secs(5), || {
        refused_requests_of(&backend, "alpha") > 0
    })
    .await;
    for seq in 100..110 {
        let response = relay.write(&beta, probe_body(seq, 0)).await;
        assert_eq!(response.status(), 204, "beta's write {seq} is queued");
    }
    until(
        "beta's writes are delivered while alpha is refused",
        Duration::from_secs(5),
        || delivered_seqs_of(&backend, "beta").len() >= 10,
    )
    .await;
    assert_eq!(
        delivered_seqs_of(&backend, "beta"),
        (100..110).collect::<Vec<_>>(),
        "beta's writes once each, in order"
    );
    assert!(delivered_seqs_of(&backend, "alpha").is_empty());

    backend.answer_tenant_with("alpha", None);
    until(
        "alpha's writes are delivered once the backend accepts alpha",
        Duration::from_secs(15),
        || delivered_seqs_of(&backend, "alpha").len() >= 5,
    )
    .await;
    assert_eq!(
        delivered_seqs_of(&backend, "alpha"),
        (0..5).collect::<Vec<_>>(),
        "alpha's writes once each, in the order acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_filling_its_share_of_the_queue_gets_503_and_the_others_keep_writing() {
    let backend = FakeBackend::start().await;
    backend.answer_tenant_with("alpha", Some(429));
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&tenant_header_queued_backend_toml(
        &backend,
        queue_dir.path(),
        "1MiB",
    ))
    .await;
    let alpha = relay.tenant_with_token("alpha").await;
    let beta = relay.tenant_with_token("beta").await;

    // ≈ 24 KiB records: alpha's backlog reaches its share within a few dozen writes.
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for seq in 0..200 {
        let response = relay.write(&alpha, probe_body(seq, 24 * 1024)).await;
        match response.status().as_u16() {
            204 => acknowledged.push(seq),
            503 => {
                refused = Some(response);
                break;
            }
            other => panic!("alpha's write {seq}: unexpected {other}"),
        }
    }
    let refused = refused.expect("alpha's share was never reached");
    assert!(refused.headers().contains_key("retry-after"));
    let message = refused.text().await.expect("body");
    assert!(message.contains("for this tenant"), "{message}");
    assert!(
        acknowledged.len() >= 10,
        "alpha alone may use a fair part of the queue: {} writes",
        acknowledged.len()
    );

    // More than the whole quota from beta: every write is accepted, as its records are
    // delivered while alpha's wait.
    for seq in 1000..1050 {
        let response = relay.write(&beta, probe_body(seq, 24 * 1024)).await;
        assert_eq!(
            response.status(),
            204,
            "beta's write {seq} is held back by alpha's backlog"
        );
    }
    let refused_again = relay.write(&alpha, probe_body(500, 24 * 1024)).await;
    assert_eq!(refused_again.status(), 503, "alpha is still over its share");

    backend.answer_tenant_with("alpha", None);
    until(
        "alpha's backlog is delivered",
        Duration::from_secs(30),
        || delivered_seqs_of(&backend, "alpha").len() >= acknowledged.len(),
    )
    .await;
    assert_eq!(
        delivered_seqs_of(&backend, "alpha"),
        acknowledged,
        "alpha's writes once each, in order; the refused ones never queued"
    );
    until(
        "beta's writes are delivered",
        Duration::from_secs(10),
        || delivered_seqs_of(&backend, "beta").len() >= 50,
    )
    .await;
    assert_eq!(
        delivered_seqs_of(&backend, "beta"),
        (1000..1050).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_loses_nothing_already_queued() {
    let backend = FakeBackend::start().await;
    backend.answer_with(503);
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&queued_backend_toml(&backend, queue_dir.path(), "1MiB")).await;
    let token = relay.tenant_with_token("alpha").await;

    // ≈ 24 KiB records: a 1 MiB quota fills within a few dozen writes.
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for seq in 0..200 {
        let response = relay.write(&token, probe_body(seq, 24 * 1024)).await;
        match response.status().as_u16() {
            204 => acknowledged.push(seq),
            503 => {
                refused = Some(response);
                break;
            }
            other => panic!("write {seq}: unexpected {other}"),
        }
    }
    let refused = refused.expect("the quota was never reached");
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("Retry-After on a full queue")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let message = refused.text().await.expect("body");
    assert!(message.contains("queue"), "{message}");
    assert!(
        acknowledged.len() >= 18,
        "{} writes fit in half of 1 MiB",
        acknowledged.len()
    );
    let metrics = relay.metrics().await;
    // A single tenant's backlog takes at most half the quota: the other half is left for
    // the tenants with nothing queued yet.
    let queue_bytes = metric(&metrics, "promgate_queue_bytes", &["backend=\"queued\""]);
    assert!(
        queue_bytes > 450_000.0 && queue_bytes <= 524_288.0,
        "{queue_bytes}"
    );
    assert_eq!(
        metric(&metrics, "promgate_queue_records", &["backend=\"queued\""]),
        acknowledged.len() as f64
    );

    // Still full while the backend is down; nothing was dropped to make room.
    let still = relay.write(&token, probe_body(1000, 24 * 1024)).await;
    assert_eq!(still.status(), 503);

    backend.answer_with(204);
    until("the queue drains", Duration::from_secs(30), || {
        let seen = accepted_seqs(&backend);
        acknowledged.iter().all(|seq| seen.contains_key(seq))
    })
    .await;
    let seen = accepted_seqs(&backend);
    assert!(
        !seen.contains_key(&1000),
        "a refused write was not queued either"
    );
    let delivered_in_order: Vec<u64> = backend
        .requests()
        .iter()
        .filter(|request| request.status == 204)
        .flat_map(|request| request.write_request().timeseries)
        .filter_map(|series| {
            series
                .labels
                .iter()
                .find(|label| label.name == "seq")
                .map(|label| label.value.parse::<u64>().expect("seq"))
        })
        .collect();
    assert_eq!(
        delivered_in_order, acknowledged,
        "delivered once each, in the order acknowledged"
    );
    // Room again.
    assert_eq!(
        relay
            .write(&token, probe_body(2000, 24 * 1024))
            .await
            .status(),
        204
    );
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped (needs root, as
/// CI runs; fails loudly otherwise).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs for the full-disk test failed (it needs root, as CI runs)"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_the_queue_recovers_once_delivered() {
    let backend = FakeBackend::start().await;
    backend.answer_with(503);
    // The quota (64 MiB) is far above the disk (1 MiB): the disk fills first.
    let disk = SmallDisk::mount("1m");
    let relay = Relay::start(&queued_backend_toml(&backend, disk.dir.path(), "64MiB")).await;
    let token = relay.tenant_with_token("alpha").await;
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for seq in 0..200 {
        let response = relay.write(&token, probe_body(seq, 24 * 1024)).await;
        match response.status().as_u16() {
            204 => acknowledged.push(seq),
            503 => {
                refused = Some(response);
                break;
            }
            other => panic!("write {seq}: unexpected {other}"),
        }
    }
    let refused = refused.expect("the disk never filled");
    assert!(refused.headers().contains_key("retry-after"));
    let message = refused.text().await.expect("body");
    assert!(message.contains("no space left"), "{message}");
    assert!(acknowledged.len() >= 10, "{acknowledged:?}");

    backend.answer_with(204);
    until("the queue drains", Duration::from_secs(30), || {
        let seen = accepted_seqs(&backend);
        acknowledged.iter().all(|seq| seen.contains_key(seq))
    })
    .await;
    // Delivered everything: the full segment is rolled and deleted, and writes pass again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = relay
            .write(&token, probe_body(1000, 24 * 1024))
            .await
            .status();
        if status == 204 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after the queue was delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_queued_backend_leaves_the_sync_backend_and_the_sender_unaffected() {
    let sync = FakeBackend::start().await;
    let queued = FakeBackend::start().await;
    queued.delay(Duration::from_secs(30));
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&format!(
        "[[backends]]\nname = \"sync\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\n{}",
        sync.write_url(),
        queued_backend_toml(&queued, queue_dir.path(), "64MiB")
    ))
    .await;
    let token = relay.tenant_with_token("alpha").await;

    let mut slowest = Duration::ZERO;
    for seq in 0..60 {
        let started = Instant::now();
        let status = relay.write(&token, probe_body(seq, 0)).await.status();
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 204, "write {seq}");
    }
    // The queued backend holds each attempt for 30 s (its timeout is 2 s): had a write
    // waited for it, it would have taken seconds.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest write took {slowest:?}"
    );
    assert_eq!(accepted_seqs(&sync).len(), 60, "the sync backend got each");
    let metrics = relay.metrics().await;
    let backend = "backend=\"queued\"";
    assert_eq!(metric(&metrics, "promgate_queue_records", &[backend]), 60.0);
    assert_eq!(
        metric(
            &metrics,
            "promgate_queue_appended_records_total",
            &[backend]
        ),
        60.0
    );
    assert!(
        metric(
            &metrics,
            "promgate_queue_oldest_record_age_seconds",
            &[backend]
        ) > 0.0
    );
    assert!(
        metric(
            &metrics,
            "promgate_queue_fsync_duration_seconds_count",
            &[backend]
        ) >= 1.0
    );
    assert!(
        metrics.contains(
            "promgate_queue_dropped_records_total{backend=\"queued\",reason=\"rejected\"} 0"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("promgate_queue_corrupt_records_total{backend=\"queued\"} 0"));
    // The first attempt times out after the backend's 2 s and is retried.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(
        &relay.metrics().await,
        "promgate_queue_retries_total",
        &[backend],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the hanging delivery was never retried"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_outage_answers_503_without_queueing_a_copy_and_permanent_refusals_are_dropped() {
    let sync = FakeBackend::start().await;
    sync.answer_with(503);
    let queued = FakeBackend::start().await;
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&format!(
        "[[backends]]\nname = \"sync\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\n{}",
        sync.write_url(),
        queued_backend_toml(&queued, queue_dir.path(), "64MiB")
    ))
    .await;
    let token = relay.tenant_with_token("alpha").await;
    for seq in 0..3 {
        assert_eq!(relay.write(&token, probe_body(seq, 0)).await.status(), 503);
    }
    let metrics = relay.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "promgate_queue_appended_records_total",
            &["backend=\"queued\""]
        ),
        0.0,
        "the sender retries; a queued copy now would be queued again then"
    );

    // A permanent refusal by the queued backend drops the record (counted), and the next
    // one is delivered.
    sync.answer_with(204);
    queued.answer_with(400);
    assert_eq!(relay.write(&token, probe_body(10, 0)).await.status(), 204);
    let dropped = || async {
        metric(
            &relay.metrics().await,
            "promgate_queue_dropped_records_total",
            &["backend=\"queued\"", "reason=\"rejected\""],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped().await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the refused record was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    queued.answer_with(204);
    assert_eq!(relay.write(&token, probe_body(11, 0)).await.status(), 204);
    until(
        "the next write is delivered",
        Duration::from_secs(10),
        || accepted_seqs(&queued).contains_key(&11),
    )
    .await;
    assert!(!accepted_seqs(&queued).contains_key(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_within_its_deadline_and_the_next_start_delivers_the_rest() {
    let backend = FakeBackend::start().await;
    backend.answer_with(503);
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let toml = queued_backend_toml(&backend, queue_dir.path(), "64MiB")
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"1s\"");
    let mut relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    for seq in 0..5 {
        assert_eq!(relay.write(&token, probe_body(seq, 0)).await.status(), 204);
    }
    let stopping = Instant::now();
    let dir = relay.stop().await;
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "the drain lasted its deadline, then stopped: {took:?}"
    );
    assert!(accepted_seqs(&backend).is_empty());

    // The next start delivers what was left once the backend is back.
    backend.answer_with(204);
    let mut relay = Relay::start_in(dir, &toml).await;
    until(
        "the next start delivers the rest",
        Duration::from_secs(10),
        || (0..5).all(|seq| accepted_seqs(&backend).contains_key(&seq)),
    )
    .await;

    // With the backend up but slow, a shutdown delivers everything before it returns.
    backend.delay(Duration::from_millis(300));
    for seq in 10..15 {
        assert_eq!(relay.write(&token, probe_body(seq, 0)).await.status(), 204);
    }
    relay.stop().await;
    let seen = accepted_seqs(&backend);
    assert!(
        (10..15).all(|seq| seen.contains_key(&seq)),
        "delivered before the relay stopped: {seen:?}"
    );
}

/// The acknowledged sequence numbers of a load that keeps writing until stopped.
struct Load {
    acknowledged: Arc<Mutex<BTreeSet<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(write_url: String, token: String, writers: u64) -> Load {
        let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let tasks = (0..writers)
            .map(|writer| {
                let (http, url, token) = (http.clone(), write_url.clone(), token.clone());
                let acknowledged = Arc::clone(&acknowledged);
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut seq = writer;
                    while !*stopped.borrow() {
                        let sent = http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("Content-Encoding", "snappy")
                            .header("Content-Type", "application/x-protobuf")
                            .body(probe_body(seq, 64))
                            .send()
                            .await;
                        match sent {
                            Ok(response) if response.status() == 204 => {
                                acknowledged.lock().expect("lock").insert(seq);
                            }
                            // Refused or cut off by a kill: the sender would retry.
                            _ => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                        seq += writers;
                    }
                })
            })
            .collect();
        Load {
            acknowledged,
            stop,
            tasks,
        }
    }

    async fn stop(self) -> BTreeSet<u64> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("writer");
        }
        let acknowledged = self.acknowledged.lock().expect("lock").clone();
        acknowledged
    }
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("queue dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("segment-"))
        })
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_write() {
    let backend = FakeBackend::start().await;
    backend.delay(Duration::from_millis(5));
    let root = tempfile::tempdir().expect("tempdir");
    let queue_dir = root.path().join("queue");
    let mut promgate = PromgateBinary::start(
        root.path(),
        "",
        &queued_backend_toml(&backend, &queue_dir, "256MiB"),
    )
    .await;
    let token = promgate
        // Every write is 64 new series: the load passes the default active series limit,
        // which a restart no longer forgets (DESIGN §14).
        .add_tenant(
            "alpha",
            json!({ "requests_per_second": 100_000, "max_active_series": 0 }),
        )
        .await;

    let load = Load::start(promgate.write_url(), token.clone(), 8);
    let mut rng_state = now_ms() as u64 | 1;
    let mut next_pause = || {
        // xorshift: a different schedule each run, printed for a re-run by hand.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        Duration::from_millis(200 + rng_state % 1300)
    };
    for round in 0..6 {
        // The backend is down every other round: records pile up, then drain while the
        // next kill lands between a delivery and its acknowledgement.
        backend.answer_with(if round % 2 == 0 { 503 } else { 204 });
        let pause = next_pause();
        tokio::time::sleep(pause).await;
        println!("round {round}: SIGKILL after {pause:?}");
        promgate.kill();
        promgate.restart().await;
    }
    let acknowledged = load.stop().await;
    assert!(
        acknowledged.len() > 100,
        "too little load: {} writes acknowledged",
        acknowledged.len()
    );

    // A torn last record: one more acknowledged write, killed, and its record cut short.
    backend.answer_with(503);
    let torn_seq = u64::MAX / 2;
    let response = promgate
        .http
        .post(promgate.write_url())
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .body(probe_body(torn_seq, 64))
        .send()
        .await
        .expect("write");
    assert_eq!(response.status(), 204);
    promgate.kill();
    let segment = newest_segment(&queue_dir.join("queued").join("tenants").join("alpha"));
    let len = std::fs::metadata(&segment).expect("segment").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment");
    file.set_len(len - 10).expect("truncate");
    drop(file);
    promgate.restart().await;
    let log = std::fs::read_to_string(&promgate.process.log).expect("log");
    assert!(
        log.contains("queue recovered from an unclean stop") && log.contains("\"truncated_bytes\""),
        "recovery is reported:\n{log}"
    );

    backend.answer_with(204);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = accepted_seqs(&backend);
        let missing: Vec<u64> = acknowledged
            .iter()
            .filter(|seq| !seen.contains_key(seq))
            .copied()
            .collect();
        if missing.is_empty() {
            let duplicates: usize = seen.values().map(|count| count - 1).sum();
            println!(
                "{} acknowledged writes delivered after 7 SIGKILLs; {duplicates} delivered more than once \
                 (killed between delivery and acknowledgement); 0 lost",
                acknowledged.len()
            );
            assert!(!seen.contains_key(&torn_seq), "the torn record was cut off");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged writes never delivered, e.g. {:?}\n{}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(10)],
            promgate.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = promgate.metrics().await;
    assert_eq!(
        metric(&metrics, "promgate_queue_records", &["backend=\"queued\""]),
        0.0
    );
}

/// Raw samples of every series matching `selector` over the last `range` at `time`,
/// keyed by label set without `drop` labels: `(timestamp ms, value text)` pairs.
async fn raw_samples(
    http: &reqwest::Client,
    base: &str,
    selector: &str,
    range: &str,
    time: f64,
    drop: &[&str],
) -> BTreeMap<Vec<(String, String)>, Vec<(i64, String)>> {
    let body: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[
            ("query", format!("{selector}[{range}]")),
            ("time", format!("{time:.3}")),
        ])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(body["status"], "success", "{body}");
    let mut all = BTreeMap::new();
    for item in body["data"]["result"].as_array().expect("matrix") {
        let mut labels: Vec<(String, String)> = item["metric"]
            .as_object()
            .expect("metric")
            .iter()
            .filter(|(name, _)| !drop.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().into()))
            .collect();
        labels.sort();
        let samples = item["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|pair| {
                let seconds = pair[0].as_f64().expect("timestamp");
                (
                    (seconds * 1000.0).round() as i64,
                    pair[1].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        all.insert(labels, samples);
    }
    all
}

async fn sender_metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("sender metrics")
        .text()
        .await
        .expect("text");
    metric(&text, name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_prometheus_down_for_a_minute_gets_every_sample_the_sender_scraped() {
    let mut stack = Stack::start_configured(
        false,
        "",
        "delivery = \"queued\"\n",
        "[queue]\ndrain_timeout = \"5s\"\n",
    )
    .await;
    let http = stack.http.clone();
    stack.add_tenant("alpha").await;
    let sender = stack.start_sender("alpha", &[]).await;
    let sender_url = sender_url(&sender);
    let started = now_ms() as f64 / 1000.0;
    tokio::time::sleep(Duration::from_secs(10)).await;

    // The backend goes away for a minute; the sender keeps scraping and writing.
    let backend_port: u16 = stack
        .prometheus_url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("backend port");
    assert!(stack.backend.terminate(Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let metrics = stack.promgate.metrics().await;
    assert!(
        metric(
            &metrics,
            "promgate_queue_records",
            &["backend=\"prometheus\""]
        ) > 10.0,
        "writes were queued while the backend was down:\n{metrics}"
    );
    stack.backend = start_backend_prometheus(stack.root(), backend_port);
    wait_ready(
        &mut stack.backend,
        &format!("{}/-/ready", stack.prometheus_url),
        Duration::from_secs(60),
    )
    .await;

    // Compare up to a moment the sender has surely sent, once promgate delivered it all.
    let until_time = now_ms() as f64 / 1000.0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent_through = sender_metric(
            &http,
            &sender_url,
            "prometheus_remote_storage_queue_highest_sent_timestamp_seconds",
        )
        .await;
        let metrics = stack.promgate.metrics().await;
        if sent_through > until_time + 2.0
            && metric(
                &metrics,
                "promgate_queue_records",
                &["backend=\"prometheus\""],
            ) == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: sent through {sent_through}, queue:\n{}",
            metrics
                .lines()
                .filter(|line| line.starts_with("promgate_queue"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        sender_metric(
            &http,
            &sender_url,
            "prometheus_remote_storage_samples_total"
        )
        .await
            > 1000.0,
        "the sender's remote-write metrics are named as in Prometheus 2.42"
    );
    for (name, expected) in [
        ("prometheus_remote_storage_samples_failed_total", 0.0),
        ("prometheus_remote_storage_samples_retried_total", 0.0),
        ("prometheus_remote_storage_samples_dropped_total", 0.0),
    ] {
        assert_eq!(
            sender_metric(&http, &sender_url, name).await,
            expected,
            "the sender saw only 2xx: {name}"
        );
    }

    let range = format!("{}s", (until_time - started).ceil() as u64 + 30);
    let scraped = raw_samples(
        &http,
        &sender_url,
        "{job=\"alpha-self\"}",
        &range,
        until_time,
        &[],
    )
    .await;
    let received = raw_samples(
        &http,
        &stack.prometheus_url,
        "{job=\"alpha-self\",tenant_id=\"alpha\"}",
        &range,
        until_time,
        &["tenant_id"],
    )
    .await;
    assert!(scraped.len() > 100, "{} series scraped", scraped.len());
    let samples: usize = scraped.values().map(Vec::len).sum();
    let mut differing = Vec::new();
    for (labels, samples) in &scraped {
        if received.get(labels) != Some(samples) {
            differing.push(format!(
                "{labels:?}: sender {} samples, backend {}",
                samples.len(),
                received.get(labels).map_or(0, Vec::len)
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {} series differ, e.g.\n{}",
        differing.len(),
        scraped.len(),
        differing[..differing.len().min(5)].join("\n")
    );
    assert_eq!(
        received.len(),
        scraped.len(),
        "the backend holds no series the sender did not scrape"
    );
    println!(
        "{} series, {samples} samples scraped over {range}, the backend down for 60 s: all delivered",
        scraped.len()
    );
}

fn sender_url(sender: &Process) -> String {
    // The sender's config names its own listen address as its scrape target.
    let config = std::fs::read_to_string(sender.log.with_file_name(format!("{}.yml", sender.name)))
        .expect("sender config");
    let target = config
        .split("targets: ['")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("scrape target");
    format!("http://{target}")
}
