//! End to end with real processes: a real Prometheus 2.42 with its default queue writes
//! through the promgate binary while strangers on the same address (as behind a load
//! balancer or NAT) flood promgate with requests without a credential and with forged
//! tokens. The strangers are throttled; the sender loses nothing: its own
//! `prometheus_remote_storage_samples_failed_total` (which it scrapes and writes through
//! promgate like any other series) stays 0, and its newest samples keep arriving.

mod common;

use std::time::{Duration, Instant};

use common::stack::{instant_query, Stack};
use serde_json::Value;

/// The single value of an instant query, if it has one.
async fn scalar(http: &reqwest::Client, base: &str, query: &str) -> Option<f64> {
    let body: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_loses_nothing_while_strangers_flood_its_address() {
    let stack = Stack::start(false).await;
    let backend = stack.prometheus_url.clone();
    let http = stack.http.clone();
    stack.add_tenant("alpha").await;
    let mut sender = stack.start_sender("alpha", &[("sender", "alpha")]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while instant_query(&http, &backend, "up{job=\"alpha-self\"}")
        .await
        .is_empty()
    {
        sender.assert_running();
        assert!(
            Instant::now() < deadline,
            "the sender's series did not arrive\npromgate log:\n{}",
            stack.promgate.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 20 s of strangers from 127.0.0.1, the sender's own address: 20 requests a second,
    // far over the 30 failed authentications a minute the address is allowed.
    let data_url = stack.promgate.data_url.clone();
    let flood_until = Instant::now() + Duration::from_secs(20);
    let mut answers = std::collections::BTreeMap::<u16, u32>::new();
    let client = reqwest::Client::new();
    let mut round = 0u32;
    while Instant::now() < flood_until {
        let path = if round % 2 == 0 { "write" } else { "read" };
        let mut request = client
            .post(format!("{data_url}/api/v1/{path}"))
            .header("Content-Encoding", "snappy")
            .body(vec![0u8; 16]);
        if round % 3 != 0 {
            request = request.bearer_auth(format!("eyJhbGciOiJFZERTQSJ9.forged{round}.sig"));
        }
        let code = request
            .send()
            .await
            .map_or(0, |response| response.status().as_u16());
        *answers.entry(code).or_default() += 1;
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sender.assert_running();
    assert!(
        answers.keys().all(|code| *code == 401 || *code == 429),
        "strangers get 401 or 429 only: {answers:?}"
    );
    assert!(
        answers.get(&429).copied().unwrap_or(0) > 100,
        "the strangers were throttled: {answers:?}"
    );

    // The sender's own view, as it wrote it through promgate: nothing failed, and its
    // newest samples are fresh (it kept writing through the flood).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failed = scalar(
        &http,
        &backend,
        "max_over_time(sum(prometheus_remote_storage_samples_failed_total{job=\"alpha-self\"})[5m:1s])",
    )
    .await
    .expect("the sender's failed-samples counter reached the backend");
    assert_eq!(failed, 0.0, "the sender dropped samples during the flood");
    let age = scalar(
        &http,
        &backend,
        "time() - timestamp(up{job=\"alpha-self\"})",
    )
    .await
    .expect("the sender's up series");
    assert!(age < 5.0, "the sender's newest sample is {age} s old");
    println!("e2e_admission: strangers' answers {answers:?}; sender failed samples {failed}, newest sample {age:.1} s old");
}
