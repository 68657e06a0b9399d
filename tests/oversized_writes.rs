//! Writes larger than a backend accepts (DESIGN §9): promgate cuts them at series
//! boundaries to fit the backend's `max_request_bytes` and `max_samples_per_request`,
//! halves a part the backend answers 413, and refuses only a single series that is still
//! too large, delivering the rest. A 20 000-series write reaches every backend whole —
//! one with a byte cap, one answering 413 above 48 KiB, one with a sample cap, and a
//! queued one with a byte cap — and the sender gets 2xx.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::binary::PromgateBinary;
use common::{now_ms, series, snappy_body, FakeBackend, Recorded};
use promgate::proto::WriteRequest;
use serde_json::json;

fn backend_toml(name: &str, backend: &FakeBackend, extra: &str) -> String {
    format!(
        "[[backends]]\nname = \"{name}\"\nwrite_url = \"{}\"\ntimeout = \"10s\"\n{extra}\n",
        backend.write_url()
    )
}

/// The series each accepted request held, by `series` label: how often each arrived.
fn arrived(received: &[Recorded]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for request in received.iter().filter(|request| request.status < 300) {
        for series in request.write_request().timeseries {
            let name = series
                .labels
                .iter()
                .find(|label| label.name == "series")
                .map(|label| label.value.clone())
                .expect("series label");
            *seen.entry(name).or_insert(0) += 1;
        }
    }
    seen
}

async fn write(relay: &PromgateBinary, token: &str, body: Vec<u8>) -> (u16, String) {
    let response = relay
        .http
        .post(relay.write_url())
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("promgate answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_reaches_every_backend_whole_and_the_sender_gets_2xx() {
    let (capped, refusing, sampled, queued) = (
        FakeBackend::start().await,
        FakeBackend::start().await,
        FakeBackend::start().await,
        FakeBackend::start().await,
    );
    refusing.refuse_bodies_over(48 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = PromgateBinary::start(
        dir.path(),
        "",
        &format!(
            "[limits]\nburst_samples = 1000000\n[queue]\ndirectory = \"{}\"\n{}{}{}{}",
            dir.path().join("queue").display(),
            backend_toml("capped", &capped, "max_request_bytes = \"64KiB\""),
            backend_toml("refusing", &refusing, ""),
            backend_toml("sampled", &sampled, "max_samples_per_request = 1500"),
            backend_toml(
                "queued",
                &queued,
                "max_request_bytes = \"64KiB\"\ndelivery = \"queued\""
            ),
        ),
    )
    .await;
    let token = relay.add_tenant("alpha", json!({})).await;

    let now = now_ms();
    let request = WriteRequest {
        timeseries: (0..20_000)
            .map(|i| {
                let value = format!("{i}");
                let pod = format!("pod-{:x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                series(
                    &[
                        ("__name__", "container_memory_working_set_bytes"),
                        ("series", &value),
                        ("pod", &pod),
                    ],
                    i as f64,
                    now,
                )
            })
            .collect(),
        metadata: vec![],
    };
    let body = snappy_body(&request);
    assert!(
        body.len() > 256 * 1024,
        "{} bytes: over every cap",
        body.len()
    );
    let (status, text) = write(&relay, &token, body).await;
    assert_eq!(status, 204, "{text}");

    // The queued backend gets it from the queue's worker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while arrived(&queued.received.lock().expect("lock")).len() < 20_000 {
        assert!(tokio::time::Instant::now() < deadline, "queued delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, backend) in [
        ("capped", &capped),
        ("refusing", &refusing),
        ("sampled", &sampled),
        ("queued", &queued),
    ] {
        let received = backend.received.lock().expect("lock").clone();
        let seen = arrived(&received);
        assert_eq!(seen.len(), 20_000, "{name}: every series arrived");
        assert!(
            seen.values().all(|&times| times == 1),
            "{name}: each series once"
        );
        let accepted: Vec<&Recorded> = received.iter().filter(|r| r.status < 300).collect();
        assert!(accepted.len() > 1, "{name}: sent in parts");
        match name {
            "capped" | "queued" => assert!(
                received.iter().all(|r| r.body.len() <= 64 * 1024),
                "{name}: every request within max_request_bytes"
            ),
            "refusing" => assert!(
                received.iter().any(|r| r.status == 413),
                "the 413 backend refused the first tries"
            ),
            _ => assert!(
                accepted
                    .iter()
                    .all(|r| r.write_request().timeseries.len() <= 1500),
                "{name}: every request within max_samples_per_request"
            ),
        }
    }
    let metrics = relay.metrics().await;
    for backend in ["capped", "refusing", "sampled"] {
        assert!(
            metrics.contains(&format!(
                "promgate_backend_split_writes_total{{backend=\"{backend}\"}} 1"
            )),
            "{backend}: {}",
            metrics
                .lines()
                .filter(|line| line.contains("split"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_series_still_too_large_is_refused_and_the_rest_delivered() {
    let backend = FakeBackend::start().await;
    backend.refuse_bodies_over(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = PromgateBinary::start(dir.path(), "", &backend_toml("small", &backend, "")).await;
    let token = relay.add_tenant("alpha", json!({})).await;
    let now = now_ms();
    // Incompressible, so its body stays over 300 bytes.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let big: String = (0..1500)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    let request = WriteRequest {
        timeseries: vec![
            series(&[("__name__", "a"), ("series", "0")], 1.0, now),
            series(
                &[("__name__", "b"), ("series", "1"), ("blob", &big)],
                1.0,
                now,
            ),
            series(&[("__name__", "c"), ("series", "2")], 1.0, now),
        ],
        metadata: vec![],
    };
    let (status, text) = write(&relay, &token, snappy_body(&request)).await;
    assert_eq!(
        status, 400,
        "the oversized series can never be written: {text}"
    );
    assert!(text.contains("too large (413)"), "{text}");
    let seen = arrived(&backend.received.lock().expect("lock"));
    let mut names: Vec<&str> = seen.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["0", "2"], "the rest of the write was delivered");
    assert!(relay
        .metrics()
        .await
        .contains("promgate_backend_oversized_series_total{backend=\"small\"} 1"));
}
