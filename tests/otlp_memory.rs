//! Memory under gzip bombs on the OTLP endpoint of the promgate binary: each bomb inflates
//! to 256 MiB of zeros. Half state that in their gzip trailer and are refused by the claim
//! before a byte is inflated; half carry a forged trailer claiming 4 MiB and are inflated
//! until they pass it (then refused). 300 bombs, 50 at a time — 75 GiB if inflated —
//! must leave promgate's peak RSS (VmHWM from /proc) within its base plus twice its
//! in-flight decoded-bytes budget: a claim takes its share of the budget before the
//! buffer it sizes is allocated, and inflation never goes past it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::FakeBackend;
use serde_json::json;

const IN_FLIGHT_DECODED_MIB: u64 = 64;
const BASE_MIB: u64 = 64;

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
async fn gzip_bombs_cost_their_checked_claim_at_most() {
    let backend = FakeBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let promgate = PromgateBinary::start(
        dir.path(),
        &format!(
            "max_in_flight_decoded_bytes = \"{IN_FLIGHT_DECODED_MIB}MiB\"\nin_flight_wait = \"60s\""
        ),
        &format!(
            "[limits]\nmax_decoded_bytes = \"8MiB\"\nmax_in_flight_decoded_bytes = \"{IN_FLIGHT_DECODED_MIB}MiB\"\n\
             requests_per_second = 100000\n\
             [[backends]]\nname = \"sink\"\nwrite_url = \"{}\"\ntimeout = \"20s\"\n",
            backend.write_url()
        ),
    )
    .await;
    let token = promgate.add_tenant("alpha", json!({})).await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        encoder.write_all(&zeros).expect("in memory");
    }
    let honest = encoder.finish().expect("in memory");
    assert!(honest.len() < 512 << 10, "{}", honest.len());
    let mut forged = honest.clone();
    let n = forged.len();
    forged[n - 4..].copy_from_slice(&(4u32 << 20).to_le_bytes());
    let (honest, forged) = (bytes::Bytes::from(honest), bytes::Bytes::from(forged));

    let before = peak_rss_mib(promgate.process.pid());
    let url = format!("{}/otlp/v1/metrics", promgate.data_url);
    let started = Instant::now();
    for round in 0..6 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let body = if (round * 50 + i) % 2 == 0 {
                honest.clone()
            } else {
                forged.clone()
            };
            let (http, url, token) = (promgate.http.clone(), url.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .header("Content-Type", "application/x-protobuf")
                    .header("Content-Encoding", "gzip")
                    .body(body)
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await
                    .expect("answered");
                response.status().as_u16()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("join"), 400, "round {round}");
        }
    }
    let elapsed = started.elapsed();
    let peak = peak_rss_mib(promgate.process.pid());
    let budget = BASE_MIB + 2 * IN_FLIGHT_DECODED_MIB;
    println!(
        "otlp_memory: 300 gzip bombs of 256 MiB ({} KiB each) in {:.1} s; promgate peak RSS {before:.0} MiB \
         before, {peak:.0} MiB after (budget {budget} MiB)",
        honest.len() >> 10,
        elapsed.as_secs_f64()
    );
    assert!(
        peak < budget as f64,
        "peak RSS {peak:.0} MiB over the {budget} MiB budget"
    );
    assert!(backend.requests().is_empty());
    let metrics = promgate.metrics().await;
    for needle in [
        r#"promgate_rejected_requests_total{endpoint="otlp",tenant="alpha",reason="decoded_too_large"} 150"#,
        r#"promgate_rejected_requests_total{endpoint="otlp",tenant="alpha",reason="bad_gzip"} 150"#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}
