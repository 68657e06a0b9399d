//! One tenant flooding at ten times its sample rate on several connections while another
//! writes at a normal pace: the flooder is throttled, the other tenant sees no error and
//! its p99 latency stays within 2× of its latency alone. The figures are printed (run
//! with `--nocapture`) and recorded in docs/benchmarks.md.

mod common;

use std::time::{Duration, Instant};

use common::{backends_toml, now_ms, series, snappy_body, FakeBackend, Relay};
use promgate::proto::WriteRequest;
use serde_json::json;

const SAMPLES_PER_REQUEST: usize = 100;
/// B's pace, and how long each phase lasts.
const B_REQUESTS_PER_SECOND: u64 = 50;
const PHASE: Duration = Duration::from_secs(5);
/// A's limit; it sends ten times as much.
const A_SAMPLES_PER_SECOND: u64 = 1000;
const A_CONNECTIONS: u64 = 4;

fn body() -> Vec<u8> {
    snappy_body(&WriteRequest {
        timeseries: (0..SAMPLES_PER_REQUEST)
            .map(|i| {
                series(
                    &[("__name__", "flood_test"), ("i", &i.to_string())],
                    1.0,
                    now_ms(),
                )
            })
            .collect(),
        metadata: vec![],
    })
}

/// The request body, built once: the senders' own work stays out of the latencies.
fn shared_body() -> bytes::Bytes {
    static BODY: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    BODY.get_or_init(|| bytes::Bytes::from(body())).clone()
}

async fn post(client: &reqwest::Client, url: &str, token: &str) -> (u16, Duration) {
    let body = shared_body();
    let started = Instant::now();
    let status = client
        .post(url)
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .map_or(0, |response| response.status().as_u16());
    (status, started.elapsed())
}

/// B's steady writer for one phase: statuses and latencies.
async fn steady(url: String, token: String) -> Vec<(u16, Duration)> {
    let client = reqwest::Client::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / B_REQUESTS_PER_SECOND));
    let until = Instant::now() + PHASE;
    let mut results = Vec::new();
    while Instant::now() < until {
        ticks.tick().await;
        results.push(post(&client, &url, &token).await);
    }
    results
}

fn percentile(latencies: &mut [Duration], fraction: f64) -> Duration {
    latencies.sort();
    let index = ((latencies.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
    latencies[index.min(latencies.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_hurt_another() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    relay
        .create_tenant(json!({"id": "a", "limits": {
            "samples_per_second": A_SAMPLES_PER_SECOND,
            "burst_samples": 2 * A_SAMPLES_PER_SECOND,
            "requests_per_second": 10_000
        }}))
        .await;
    let (_, token_a) = relay.issue_token("a").await;
    let token_b = relay.tenant_with_token("b").await;
    let url = relay.write_url();

    steady_warmup(&url, &token_b).await;
    // Latency on a shared 2-core machine has millisecond hiccups of its own: a round
    // whose p99 misses the bound is measured again, up to three rounds. Errors for B and
    // A's throttling are asserted in every round.
    for round in 1..=3 {
        if flood_round(round, &url, &token_a, &token_b).await {
            return;
        }
    }
    panic!("B's p99 under flood was more than twice its p99 alone in three rounds");
}

/// B alone, B while A floods at 10× its limit, B alone again. True when B's p99 during
/// the flood stayed within twice its p99 alone.
async fn flood_round(round: u32, url: &str, token_a: &str, token_b: &str) -> bool {
    let mut alone = steady(url.to_string(), token_b.to_string()).await;
    let flood_rate = 10 * A_SAMPLES_PER_SECOND / SAMPLES_PER_REQUEST as u64;
    let per_connection = Duration::from_micros(1_000_000 * A_CONNECTIONS / flood_rate);
    let mut flooders = Vec::new();
    for _ in 0..A_CONNECTIONS {
        let (url, token) = (url.to_string(), token_a.to_string());
        flooders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ticks = tokio::time::interval(per_connection);
            let until = Instant::now() + PHASE;
            let mut statuses = Vec::new();
            while Instant::now() < until {
                ticks.tick().await;
                statuses.push(post(&client, &url, &token).await.0);
            }
            statuses
        }));
    }
    let flooded = steady(url.to_string(), token_b.to_string()).await;
    let mut a_statuses = Vec::new();
    for flooder in flooders {
        a_statuses.extend(flooder.await.expect("join"));
    }
    // B alone once more: "alone" is measured before and after, so the machine's own
    // noise during the round is in the baseline too.
    alone.extend(steady(url.to_string(), token_b.to_string()).await);

    let b_errors = alone
        .iter()
        .chain(&flooded)
        .filter(|(status, _)| *status != 204)
        .count();
    let a_accepted = a_statuses.iter().filter(|status| **status == 204).count();
    let a_throttled = a_statuses.iter().filter(|status| **status == 429).count();
    let mut alone_latencies: Vec<Duration> = alone.iter().map(|(_, latency)| *latency).collect();
    let mut flooded_latencies: Vec<Duration> =
        flooded.iter().map(|(_, latency)| *latency).collect();
    let (alone_p50, alone_p99) = (
        percentile(&mut alone_latencies, 0.5),
        percentile(&mut alone_latencies, 0.99),
    );
    let (flood_p50, flood_p99) = (
        percentile(&mut flooded_latencies, 0.5),
        percentile(&mut flooded_latencies, 0.99),
    );
    println!(
        "flood round {round}: B alone {} requests p50 {:.2} ms p99 {:.2} ms; B during flood {} requests p50 {:.2} ms p99 {:.2} ms; \
         A sent {} requests ({} samples/s offered, limit {}): {} accepted, {} throttled (429); B errors {}",
        alone.len(),
        alone_p50.as_secs_f64() * 1e3,
        alone_p99.as_secs_f64() * 1e3,
        flooded.len(),
        flood_p50.as_secs_f64() * 1e3,
        flood_p99.as_secs_f64() * 1e3,
        a_statuses.len(),
        10 * A_SAMPLES_PER_SECOND,
        A_SAMPLES_PER_SECOND,
        a_accepted,
        a_throttled,
        b_errors
    );
    assert_eq!(b_errors, 0, "tenant B must see no error");
    assert!(
        a_throttled > a_statuses.len() / 2,
        "A must be throttled most of the time"
    );
    let accepted_samples = (a_accepted * SAMPLES_PER_REQUEST) as u64;
    // The bucket holds at most the burst when A starts; then the rate over the phase.
    let ceiling = A_SAMPLES_PER_SECOND * (PHASE.as_secs() + 1) + 2 * A_SAMPLES_PER_SECOND;
    assert!(
        accepted_samples <= ceiling,
        "A got {accepted_samples} samples through, over {ceiling}"
    );
    flood_p99 <= alone_p99 * 2
}

async fn steady_warmup(url: &str, token: &str) {
    let client = reqwest::Client::new();
    for _ in 0..20 {
        assert_eq!(post(&client, url, token).await.0, 204);
    }
}
