//! Memory under hostile load: 100 concurrent maximum-size valid writes plus 1000 snappy
//! bombs against the promgate binary, whose peak RSS (VmHWM from /proc) must stay under
//! the budget its settings imply. The figures are printed (`--nocapture`) and recorded
//! in docs/benchmarks.md.
//!
//! The maximum size here is 8 MiB decoded (CI builds are unoptimised); the budget is
//! `BASE + max_in_flight_requests × max_request_bytes + 6 × max_in_flight_decoded_bytes`:
//! bodies are read only by requests holding an in-flight place, and each decoded byte is
//! held several times over (decoded buffer, prost's owned structs at ≈ 4×, re-encoded,
//! compressed; measured ≈ 5.5× in total).

mod common;

use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::{snappy_body, FakeBackend};
use promgate::proto::{Label, Sample, TimeSeries, WriteRequest};
use serde_json::json;

const MAX_BYTES_MIB: u64 = 8;
const IN_FLIGHT_REQUESTS: u64 = 32;
const IN_FLIGHT_DECODED_MIB: u64 = 64;
const BASE_MIB: u64 = 64;

/// A valid request just under `MAX_BYTES_MIB` decoded: 6 800 series of 24 labels.
fn max_size_body() -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let timeseries = (0..6_800)
        .map(|i| {
            let mut labels = vec![Label {
                name: "__name__".into(),
                value: format!("memory_test_metric_{}", i % 50),
            }];
            for l in 0..23 {
                labels.push(Label {
                    name: format!("label_{l:02}"),
                    value: format!("value-{i:08}-{l:02}-padding-padding"),
                });
            }
            TimeSeries {
                labels,
                samples: vec![Sample {
                    value: i as f64,
                    timestamp: now,
                }],
                ..TimeSeries::default()
            }
        })
        .collect();
    snappy_body(&WriteRequest {
        timeseries,
        metadata: vec![],
    })
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_stays_under_budget_under_max_size_writes_and_bombs() {
    let backend = FakeBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut promgate = PromgateBinary::start(
        dir.path(),
        &format!(
            "max_in_flight_requests = {IN_FLIGHT_REQUESTS}\nmax_in_flight_decoded_bytes = \"{IN_FLIGHT_DECODED_MIB}MiB\"\nin_flight_wait = \"60s\""
        ),
        &format!(
            "[limits]\nmax_request_bytes = \"{MAX_BYTES_MIB}MiB\"\nmax_decoded_bytes = \"{MAX_BYTES_MIB}MiB\"\n\
             max_concurrent_writes = {IN_FLIGHT_REQUESTS}\nmax_in_flight_decoded_bytes = \"{IN_FLIGHT_DECODED_MIB}MiB\"\n\
             [[backends]]\nname = \"sink\"\nwrite_url = \"{}\"\ntimeout = \"20s\"\n",
            backend.write_url()
        ),
    )
    .await;
    let token = promgate
        .add_tenant(
            "alpha",
            json!({"samples_per_second": 100_000_000, "burst_samples": 100_000_000, "requests_per_second": 100_000}),
        )
        .await;
    let http = promgate.http.clone();
    let body = bytes::Bytes::from(max_size_body());
    let decoded = snap::raw::decompress_len(&body).expect("snappy");
    assert!(
        decoded as u64 <= MAX_BYTES_MIB << 20 && decoded as u64 > (MAX_BYTES_MIB - 2) << 20,
        "{decoded}"
    );
    let before = peak_rss_mib(promgate.process.pid());
    let url = promgate.write_url();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (http, url, token, body) = (http.clone(), url.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .header("Content-Encoding", "snappy")
                .body(body)
                .timeout(Duration::from_secs(300))
                .send()
                .await
                .map_or(0, |response| response.status().as_u16())
        }));
    }
    let bomb = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00]);
    for chunk in 0..10 {
        let mut bombs = Vec::new();
        for _ in 0..100 {
            let (http, url, token, bomb) = (http.clone(), url.clone(), token.clone(), bomb.clone());
            bombs.push(tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(token)
                    .header("Content-Encoding", "snappy")
                    .body(bomb)
                    .send()
                    .await
                    .map_or(0, |response| response.status().as_u16())
            }));
        }
        for bomb in bombs {
            assert_eq!(bomb.await.expect("join"), 400, "bomb batch {chunk}");
        }
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("join"));
    }
    let elapsed = started.elapsed();
    let peak = peak_rss_mib(promgate.process.pid());
    let budget = BASE_MIB + IN_FLIGHT_REQUESTS * MAX_BYTES_MIB + 6 * IN_FLIGHT_DECODED_MIB;
    let accepted = statuses.iter().filter(|status| **status == 204).count();
    println!(
        "write_memory: 100 writes of {:.1} MiB decoded ({:.1} MiB compressed) + 1000 snappy bombs in {:.1} s: \
         {accepted} accepted, statuses {:?}; promgate peak RSS {before:.0} MiB before, {peak:.0} MiB after (budget {budget} MiB)",
        decoded as f64 / 1048576.0,
        body.len() as f64 / 1048576.0,
        elapsed.as_secs_f64(),
        {
            let mut counts = std::collections::BTreeMap::new();
            for status in &statuses {
                *counts.entry(*status).or_insert(0) += 1;
            }
            counts
        }
    );
    assert_eq!(
        accepted, 100,
        "every valid write is accepted (they wait for the budget)"
    );
    assert!(
        peak < budget as f64,
        "peak RSS {peak:.0} MiB over the budget of {budget} MiB"
    );
    assert!(promgate.process.terminate(Duration::from_secs(30)));
}
