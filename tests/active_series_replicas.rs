//! The active series limit across replicas (DESIGN §14): two and three promgate binaries
//! on one PostgreSQL registry, each tenant with a limit of 3 000 and senders that want 6 000
//! series, re-sending their whole set every cycle as Prometheus does. Whether each
//! sender is pinned to one replica, one replica takes all the traffic while the others
//! idle, or a sender's requests are spread over every replica, the series that reach
//! the backend end within ±10 % of the limit; a replica killed and restarted refuses
//! none of the series that were active before.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::binary::PromgateBinary;
use common::postgres::Postgres;
use common::{backends_toml, FakeBackend};
use promgate::proto::{Label, Sample, TimeSeries, WriteRequest};
use prost::Message;
use serde_json::json;

const LIMIT: u32 = 3_000;
const WANTED: u32 = 6_000;
const BATCH: u32 = 500;

struct Cluster {
    _postgres: Postgres,
    replicas: Vec<PromgateBinary>,
    backend: FakeBackend,
    _shared: tempfile::TempDir,
    _dirs: Vec<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(count: usize) -> Cluster {
        let postgres = Postgres::start().await;
        let backend = FakeBackend::start().await;
        let shared = tempfile::tempdir().expect("tempdir");
        let admin_toml = format!(
            "token_file = \"{}\"",
            shared.path().join("admin.token").display()
        );
        let extra = format!(
            "[auth.tokens]\nsigning_key_file = \"{}\"\n[limits]\nmax_active_series = {LIMIT}\nsamples_per_second = 1000000\nburst_samples = 1000000\n{}",
            shared.path().join("signing.key").display(),
            backends_toml(&[&backend])
        );
        let mut replicas = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..count {
            let dir = tempfile::tempdir().expect("tempdir");
            replicas.push(
                PromgateBinary::start_full(dir.path(), "", &admin_toml, &postgres.url, &extra)
                    .await,
            );
            dirs.push(dir);
        }
        Cluster {
            _postgres: postgres,
            replicas,
            backend,
            _shared: shared,
            _dirs: dirs,
            http: reqwest::Client::new(),
        }
    }

    /// Writes `range` of `tenant`'s series through replica `replica`; the status.
    async fn write(
        &self,
        replica: usize,
        token: &str,
        tenant: &str,
        range: std::ops::Range<u32>,
    ) -> u16 {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let request = WriteRequest {
            timeseries: range
                .map(|i| TimeSeries {
                    labels: vec![
                        Label {
                            name: "__name__".into(),
                            value: format!("{tenant}_metric"),
                        },
                        Label {
                            name: "n".into(),
                            value: i.to_string(),
                        },
                    ],
                    samples: vec![Sample {
                        value: 1.0,
                        timestamp,
                    }],
                    ..TimeSeries::default()
                })
                .collect(),
            ..WriteRequest::default()
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .expect("snappy");
        self.http
            .post(self.replicas[replica].write_url())
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .map_or(0, |response| response.status().as_u16())
    }

    /// The `n` of every series of `tenant` the backend received since request `from`.
    fn written(&self, tenant: &str, from: usize) -> BTreeSet<u32> {
        let name = format!("{tenant}_metric");
        self.backend.requests()[from..]
            .iter()
            .flat_map(|recorded| recorded.write_request().timeseries)
            .filter(|series| series.labels.iter().any(|label| label.value == name))
            .filter_map(|series| {
                series
                    .labels
                    .iter()
                    .find(|label| label.name == "n")
                    .and_then(|label| label.value.parse().ok())
            })
            .collect()
    }
}

fn within_ten_percent(tenant: &str, written: usize) {
    let limit = LIMIT as usize;
    eprintln!("{tenant}: {written} series reached the backend (limit {limit})");
    assert!(
        written * 10 >= limit * 9 && written * 10 <= limit * 11,
        "{tenant}: {written} series reached the backend, the limit is {limit}"
    );
}

/// One sender's cycle: its whole set in batches, each batch to the replica `route` picks.
async fn cycle(
    cluster: &Cluster,
    token: &str,
    tenant: &str,
    set: std::ops::Range<u32>,
    route: impl Fn(u32) -> usize,
) {
    let mut start = set.start;
    let mut batch = 0;
    while start < set.end {
        let end = (start + BATCH).min(set.end);
        let status = cluster.write(route(batch), token, tenant, start..end).await;
        assert!(status == 204 || status == 400, "{tenant}: {status}");
        start = end;
        batch += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_three_replicas_however_senders_are_spread() {
    the_limit_holds(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_two_replicas_however_senders_are_spread() {
    the_limit_holds(2).await;
}

async fn the_limit_holds(replicas: usize) {
    let mut cluster = Cluster::start(replicas).await;
    let mut tokens = Vec::new();
    for tenant in ["pinned", "busy", "spread"] {
        tokens.push(cluster.replicas[0].add_tenant(tenant, json!({})).await);
    }
    let (pinned, busy, spread) = (&tokens[0], &tokens[1], &tokens[2]);
    // Let every replica see the tenants.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let count = replicas as u32;
    let share = WANTED / count;
    for _ in 0..8 {
        // One sender of the tenant pinned to each replica, its share of 6 000 series each.
        for replica in 0..count {
            let set = replica * share..(replica + 1) * share;
            cycle(&cluster, pinned, "pinned", set, |_| replica as usize).await;
        }
        // One sender of 6 000 series on replica 0 alone.
        cycle(&cluster, busy, "busy", 0..WANTED, |_| 0).await;
        // One sender whose batches go round the replicas.
        cycle(&cluster, spread, "spread", 0..WANTED, |batch| {
            batch as usize % replicas
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    for tenant in ["pinned", "busy", "spread"] {
        within_ten_percent(tenant, cluster.written(tenant, 0).len());
    }
    // The spread sender's last cycle wrote its active series, whichever replica each
    // batch reached.
    let admitted = cluster.written("spread", 0);
    let from = cluster.backend.requests().len();
    cycle(&cluster, spread, "spread", 0..WANTED, |batch| {
        (batch as usize + 1) % replicas
    })
    .await;
    let last = cluster.written("spread", from);
    let refused_active = admitted.difference(&last).count();
    assert!(
        refused_active * 100 <= admitted.len(),
        "{refused_active} of {} active series refused",
        admitted.len()
    );

    // Replica 1 killed and restarted: its sender's active series are all written again.
    let before = cluster.written("pinned", 0);
    let own: BTreeSet<u32> = before
        .iter()
        .copied()
        .filter(|n| (share..2 * share).contains(n))
        .collect();
    assert!(!own.is_empty());
    cluster.replicas[1].kill();
    cluster.replicas[1].restart().await;
    let from = cluster.backend.requests().len();
    cycle(&cluster, pinned, "pinned", share..2 * share, |_| 1).await;
    let after = cluster.written("pinned", from);
    assert!(
        own.is_subset(&after),
        "{} of {} active series refused after the restart",
        own.difference(&after).count(),
        own.len()
    );
    within_ten_percent("pinned", cluster.written("pinned", 0).len());
}
