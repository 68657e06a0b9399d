//! Prometheus HA pairs end to end (DESIGN §15): two real Prometheus replicas of one
//! cluster scrape the same target, each remote-writing to a different promgate replica
//! (both on one PostgreSQL registry) in front of a real Prometheus receiver. Every
//! series is stored once, without the replica label, and is the elected replica's own
//! data; when the elected Prometheus is killed (SIGKILL), the other takes over after
//! the failover timeout, and no series ever holds samples of both replicas for the same
//! time, nor interleaved.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::postgres::Postgres;
use common::process::{free_port, wait_ready, Process};
use common::stack::{start_backend_prometheus, start_prometheus};
use serde_json::{json, Value};

/// Short, so the test runs in about a minute; the update interval is a third of it.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(6);
const JOB: &str = "ha-target";

/// Every series of a range-vector query: its labels (sorted, `name=value`) and its
/// samples by millisecond timestamp.
type Samples = BTreeMap<String, BTreeMap<i64, String>>;

async fn raw_samples(http: &reqwest::Client, base: &str, selector: &str) -> Samples {
    let body: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", format!("{selector}[10m]"))])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(body["status"], "success", "{body}");
    let mut out = Samples::new();
    for item in body["data"]["result"].as_array().expect("matrix") {
        let labels: BTreeSet<String> = item["metric"]
            .as_object()
            .expect("metric")
            .iter()
            .map(|(name, value)| format!("{name}={}", value.as_str().unwrap_or_default()))
            .collect();
        let samples = item["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|pair| {
                let seconds = pair[0].as_f64().expect("timestamp");
                let value = pair[1].as_str().expect("value").to_string();
                ((seconds * 1000.0).round() as i64, value)
            })
            .collect();
        out.insert(labels.into_iter().collect::<Vec<_>>().join(","), samples);
    }
    out
}

/// The timestamps of a sender's own scrapes of the target (every series of one scrape
/// shares them).
async fn scrape_times(http: &reqwest::Client, base: &str) -> BTreeSet<i64> {
    raw_samples(http, base, &format!("up{{job=\"{JOB}\"}}"))
        .await
        .into_values()
        .flat_map(|samples| samples.into_keys())
        .collect()
}

async fn elected(http: &reqwest::Client, relay: &PromgateBinary) -> Option<(String, i64)> {
    let body: Value = http
        .get(format!("{}/admin/v1/tenants/pair/ha", relay.admin_url))
        .bearer_auth(&relay.admin_token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let cluster = body["clusters"].as_array()?.first()?.clone();
    Some((
        cluster["elected_replica"].as_str()?.to_string(),
        cluster["changes"].as_i64()?,
    ))
}

fn sender(
    root: &std::path::Path,
    replica: &str,
    target: &str,
    relay: &PromgateBinary,
    token_file: &std::path::Path,
) -> (Process, String) {
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  external_labels:\n    cluster: prod\n    __replica__: {replica}\n\
scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n\
remote_write:\n  - url: {}/api/v1/write\n    authorization:\n      credentials_file: {}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
        relay.data_url,
        token_file.display(),
    );
    let process = start_prometheus(root, &format!("sender-{replica}"), port, &config, false);
    (process, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_pair_is_stored_once_and_fails_over_without_overlap() {
    let postgres = Postgres::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let http = reqwest::Client::new();
    let backend_port = free_port();
    let mut backend = start_backend_prometheus(root.path(), backend_port);
    let backend_url = format!("http://127.0.0.1:{backend_port}");
    wait_ready(
        &mut backend,
        &format!("{backend_url}/-/ready"),
        Duration::from_secs(30),
    )
    .await;

    // Two promgate replicas sharing the registry, the signing key and the admin token.
    let admin_toml = format!(
        "token_file = \"{}\"",
        root.path().join("admin.token").display()
    );
    let extra = format!(
        "[auth.tokens]\nsigning_key_file = \"{}\"\n[limits]\nsamples_per_second = 1000000\nburst_samples = 1000000\n\
[[backends]]\nname = \"prometheus\"\nwrite_url = \"{backend_url}/api/v1/write\"\ntimeout = \"10s\"\n",
        root.path().join("signing.key").display(),
    );
    let mut relays = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("tempdir");
        relays.push(
            PromgateBinary::start_full(dir.path(), "", &admin_toml, &postgres.url, &extra).await,
        );
        dirs.push(dir);
    }
    relays[0]
        .add_tenant(
            "pair",
            json!({"accept_ha_samples": true, "ha_failover_timeout": format!("{}s", FAILOVER_TIMEOUT.as_secs())}),
        )
        .await;
    let token_file = relays[0].token_path("pair");
    // The second replica knows the tenant before its Prometheus sends.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = http
            .get(format!("{}/admin/v1/tenants/pair", relays[1].admin_url))
            .bearer_auth(&relays[1].admin_token)
            .send()
            .await
            .map(|response| response.status().as_u16());
        if status.ok() == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "replica 1 never saw the tenant");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Prometheus a writes to promgate 0, b to promgate 1; both scrape the backend.
    let target = format!("127.0.0.1:{backend_port}");
    let mut senders = BTreeMap::new();
    for (index, replica) in ["a", "b"].into_iter().enumerate() {
        let (mut process, url) = sender(root.path(), replica, &target, &relays[index], &token_file);
        wait_ready(
            &mut process,
            &format!("{url}/-/ready"),
            Duration::from_secs(30),
        )
        .await;
        senders.insert(replica, (process, url));
    }
    // Until the backend holds some twelve seconds of the pair's data.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = raw_samples(&http, &backend_url, &format!("up{{job=\"{JOB}\"}}")).await;
        if stored.values().map(BTreeMap::len).max().unwrap_or(0) >= 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pair's data never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let (first, changes) = elected(&http, &relays[1]).await.expect("an election");
    assert_eq!(changes, 0);
    let other = if first == "a" { "b" } else { "a" };
    eprintln!("elected first: {first}");
    let selector = format!("{{job=\"{JOB}\"}}");
    let stored = raw_samples(&http, &backend_url, &selector).await;
    assert!(stored.len() > 50, "{} series stored", stored.len());
    for labels in stored.keys() {
        assert!(!labels.contains("__replica__="), "{labels}");
        assert!(
            labels.contains("cluster=prod") && labels.contains("tenant_id=pair"),
            "{labels}"
        );
    }
    // Stored once, and the elected replica's own data: its scrape durations (which differ
    // between the two replicas) sample for sample, over the time both hold completely.
    let own = raw_samples(
        &http,
        &senders[first.as_str()].1,
        &format!("scrape_duration_seconds{{job=\"{JOB}\"}}"),
    )
    .await;
    let own = own
        .into_values()
        .next()
        .expect("the elected replica's own scrapes");
    let copied = raw_samples(
        &http,
        &backend_url,
        &format!("scrape_duration_seconds{{job=\"{JOB}\"}}"),
    )
    .await;
    assert_eq!(copied.len(), 1, "stored once: {:?}", copied.keys());
    let copied = copied.into_values().next().expect("one series");
    let (from, to) = (
        *copied.keys().next().expect("samples"),
        *copied.keys().last().expect("samples") - 3_000,
    );
    let own_window: BTreeMap<i64, String> =
        own.range(from..=to).map(|(t, v)| (*t, v.clone())).collect();
    let copied_window: BTreeMap<i64, String> = copied
        .range(from..=to)
        .map(|(t, v)| (*t, v.clone()))
        .collect();
    assert!(own_window.len() >= 5, "{own_window:?}");
    assert_eq!(
        copied_window, own_window,
        "the backend holds the elected replica's data"
    );

    // Kill the elected Prometheus; the other takes over after the failover timeout.
    let old_times = scrape_times(&http, &senders[first.as_str()].1).await;
    let killed_at = Instant::now();
    senders.get_mut(first.as_str()).expect("sender").0.kill();
    let took_over = loop {
        if let Some((replica, changes)) = elected(&http, &relays[0]).await {
            if replica == other {
                assert_eq!(changes, 1);
                break killed_at.elapsed();
            }
        }
        assert!(
            killed_at.elapsed() < FAILOVER_TIMEOUT + Duration::from_secs(15),
            "{other} never took over"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("{other} elected {took_over:?} after {first} was killed");
    // Within the timeout plus one refresh interval (a third of it) and a send or two.
    assert!(
        took_over <= FAILOVER_TIMEOUT + FAILOVER_TIMEOUT / 3 + Duration::from_secs(3),
        "took over after {took_over:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let new_times = scrape_times(&http, &senders[other].1).await;
    assert!(
        old_times.is_disjoint(&new_times),
        "the replicas scrape at other times"
    );

    // Every stored sample of every series is one replica's; the first replica's all come
    // before the second's (no overlap, no interleaving); the gap at the switch is at most
    // the failover timeout and a few scrapes.
    let stored = raw_samples(&http, &backend_url, &selector).await;
    let mut switched = 0;
    for (labels, samples) in &stored {
        assert!(!labels.contains("__replica__="), "{labels}");
        let mut last_old = None;
        let mut first_new = None;
        for &time in samples.keys() {
            match (old_times.contains(&time), new_times.contains(&time)) {
                (true, false) => {
                    assert!(
                        first_new.is_none(),
                        "{labels}: {first}'s sample at {time} after {other}'s"
                    );
                    last_old = Some(time);
                }
                (false, true) => {
                    first_new.get_or_insert(time);
                }
                _ => panic!("{labels}: a sample at {time} of neither replica's scrapes"),
            }
        }
        if let (Some(last_old), Some(first_new)) = (last_old, first_new) {
            switched += 1;
            let gap = first_new - last_old;
            assert!(
                gap <= (FAILOVER_TIMEOUT + FAILOVER_TIMEOUT / 3).as_millis() as i64 + 4_000,
                "{labels}: {gap} ms without samples at the switch"
            );
        }
    }
    assert!(switched > 50, "{switched} series went on with {other}");
    let scrapes = relays[1].metrics().await + &relays[0].metrics().await;
    assert!(
        scrapes
            .contains("promgate_ha_deduplicated_samples_total{tenant=\"pair\",cluster=\"prod\"}"),
        "deduplicated samples are counted"
    );
    assert!(
        scrapes.contains(
            "promgate_ha_elected_replica_changes_total{tenant=\"pair\",cluster=\"prod\"} 1"
        ),
        "the failover is counted"
    );
    drop(relays);
    drop(dirs);
    drop(postgres);
}
