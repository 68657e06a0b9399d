//! Per-tenant limits and denial-of-service protection (DESIGN §8; SECURITY.md T12–T16):
//! token buckets with integer Retry-After, a request larger than the burst is 400, new
//! limits apply at once, per-address failed-authentication throttling, header-size cap,
//! slowloris headers and slow bodies cut off while a normal writer keeps succeeding,
//! connection cap and in-flight budgets.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{backends_toml, now_ms, series, simple_body, snappy_body, FakeBackend, Relay};
use promgate::proto::WriteRequest;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request of `n` samples (one series each).
fn samples_body(n: usize) -> Vec<u8> {
    snappy_body(&WriteRequest {
        timeseries: (0..n)
            .map(|i| series(&[("__name__", "up"), ("i", &i.to_string())], 1.0, now_ms()))
            .collect(),
        metadata: vec![],
    })
}

async fn relay_with_limits(limits: serde_json::Value) -> (Relay, FakeBackend, String) {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    relay
        .create_tenant(json!({"id": "alpha", "limits": limits}))
        .await;
    let (_, token) = relay.issue_token("alpha").await;
    (relay, backend, token)
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("an integer number of seconds")
}

#[tokio::test]
async fn samples_over_the_rate_get_429_with_retry_after_and_over_the_burst_400() {
    let (relay, backend, token) =
        relay_with_limits(json!({"samples_per_second": 100, "burst_samples": 300})).await;
    let response = relay.write(&token, samples_body(301)).await;
    assert_eq!(response.status(), 400, "more than the burst can never pass");
    assert!(response
        .text()
        .await
        .expect("body")
        .contains("burst of 300"));
    assert_eq!(
        relay.write(&token, samples_body(300)).await.status(),
        204,
        "the burst"
    );
    let response = relay.write(&token, samples_body(200)).await;
    assert_eq!(response.status(), 429);
    // 200 samples at 100/s: the bucket has room again in 2 s.
    assert_eq!(retry_after(&response), 2);
    // Within that wait, further writes are refused before their bodies are read.
    let response = relay.write(&token, samples_body(1)).await;
    assert_eq!(response.status(), 429);
    assert!((1..=2).contains(&retry_after(&response)));
    assert_eq!(
        backend.requests().len(),
        1,
        "throttled writes never reach a backend"
    );
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains("promgate_throttled_samples_total{tenant=\"alpha\"} 200"),
        "{metrics}"
    );
    assert!(
        metrics.contains("promgate_throttled_requests_total{endpoint=\"write\",tenant=\"alpha\",limit=\"samples\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn throttle_status_503_and_limit_changes_apply_at_once() {
    let (relay, _backend, token) = relay_with_limits(json!({
        "samples_per_second": 10, "burst_samples": 10, "throttle_status": 503
    }))
    .await;
    assert_eq!(relay.write(&token, samples_body(10)).await.status(), 204);
    let response = relay.write(&token, samples_body(10)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(retry_after(&response), 1);
    let (status, _) = relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"limits": {"samples_per_second": 100000, "burst_samples": 100000}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        relay.write(&token, samples_body(1000)).await.status(),
        204,
        "new limits at once"
    );
}

#[tokio::test]
async fn request_rates_are_limited_for_writes_and_reads() {
    let (relay, _backend, token) = relay_with_limits(
        json!({"requests_per_second": 2, "read_requests_per_second": 1, "read_requests_burst": 1}),
    )
    .await;
    assert_eq!(relay.write(&token, simple_body(&[])).await.status(), 204);
    assert_eq!(relay.write(&token, simple_body(&[])).await.status(), 204);
    let response = relay.write(&token, simple_body(&[])).await;
    assert_eq!(response.status(), 429);
    assert_eq!(retry_after(&response), 1);
    let read = || {
        relay
            .http
            .post(format!("http://{}/api/v1/read", relay.data_addr))
            .bearer_auth(&token)
            .body(vec![0x00])
            .send()
    };
    assert_eq!(
        read().await.expect("sent").status(),
        400,
        "the first read passes the rate (and is empty)"
    );
    assert_eq!(read().await.expect("sent").status(), 429);
}

#[tokio::test]
async fn invalid_token_floods_are_throttled_per_address() {
    let backend = FakeBackend::start().await;
    let relay =
        Relay::start_with_server("auth_failures_per_minute = 5", &backends_toml(&[&backend])).await;
    let token = relay.tenant_with_token("alpha").await;
    let from = |address: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(IpAddr::from(address))
            .build()
            .expect("client")
    };
    let attacker = from([127, 0, 0, 1]);
    let bystander = from([127, 0, 0, 2]);
    let write = |client: &reqwest::Client, token: &str| {
        client
            .post(relay.write_url())
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .body(simple_body(&[]))
            .send()
    };
    for attempt in 0..5 {
        let status = write(&attacker, "forged").await.expect("sent").status();
        assert_eq!(status, 401, "attempt {attempt}");
    }
    for _ in 0..3 {
        let response = write(&attacker, "forged").await.expect("sent");
        assert_eq!(response.status(), 429);
        assert!(retry_after(&response) >= 1);
    }
    assert_eq!(
        write(&attacker, &token).await.expect("sent").status(),
        204,
        "a known-good credential from the throttled address is not throttled"
    );
    assert_eq!(
        write(&bystander, "forged").await.expect("sent").status(),
        401,
        "another address: own count"
    );
    assert_eq!(write(&bystander, &token).await.expect("sent").status(), 204);
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (relay, backend, token) = relay_with_limits(json!({})).await;
    let response = relay
        .http
        .post(relay.write_url())
        .bearer_auth(&token)
        .header("X-Padding", "a".repeat(64 * 1024))
        .body(simple_body(&[]))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 431);
    assert!(backend.requests().is_empty());
}

/// Writes every 100 ms until `until`, asserting each succeeds.
async fn steady_writer(relay: &Relay, token: &str, until: Instant) -> usize {
    let mut written = 0;
    while Instant::now() < until {
        let response = relay.write(token, simple_body(&[])).await;
        assert_eq!(
            response.status(),
            204,
            "the normal writer must keep succeeding"
        );
        written += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout() {
    let backend = FakeBackend::start().await;
    let relay =
        Relay::start_with_server("header_read_timeout = \"1s\"", &backends_toml(&[&backend])).await;
    let token = relay.tenant_with_token("alpha").await;
    let addr: SocketAddr = relay.data_addr;
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..300 {
        attackers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"POST /api/v1/write HTTP/1.1\r\nHost: promgate\r\n")
                .await
                .expect("first bytes");
            // One header line every 300 ms, never the blank line that ends them.
            for line in 0..40 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if stream
                    .write_all(format!("X-Slow-{line}: 1\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let mut buffer = [0u8; 256];
            let closed =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
            (
                started.elapsed(),
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))) || stream_closed(&closed),
            )
        }));
    }
    let written = steady_writer(&relay, &token, started + Duration::from_secs(3)).await;
    assert!(written >= 20);
    for attacker in attackers {
        let (elapsed, closed) = attacker.await.expect("join");
        assert!(closed, "a slowloris connection must be closed by promgate");
        assert!(elapsed < Duration::from_secs(5), "closed late: {elapsed:?}");
    }
}

fn stream_closed(read: &Result<std::io::Result<usize>, tokio::time::error::Elapsed>) -> bool {
    // An answer before the close also counts as closing it.
    matches!(read, Ok(Ok(n)) if *n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_a_retryable_503_while_a_normal_writer_succeeds() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start_with_server(
        "body_read_timeout = \"3s\"\nmin_body_bytes_per_second = 1000\nin_flight_wait = \"500ms\"",
        &backends_toml(&[&backend]),
    )
    .await;
    let token = relay.tenant_with_token("alpha").await;
    // Another tenant writes normally meanwhile: alpha's dribblers fill alpha's own share.
    let normal = relay.tenant_with_token("beta").await;
    let addr = relay.data_addr;
    let started = Instant::now();
    let mut dribblers = Vec::new();
    for _ in 0..50 {
        let token = token.clone();
        dribblers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let head = format!(
                "POST /api/v1/write HTTP/1.1\r\nHost: promgate\r\nAuthorization: Bearer {token}\r\nContent-Encoding: snappy\r\nContent-Length: 100000\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.expect("head");
            let begun = Instant::now();
            // 20 bytes a second: far under the minimum rate.
            for _ in 0..100 {
                if stream.write_all(&[0u8; 2]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if begun.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            let mut answer = vec![0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
                .await
                .expect("answered")
                .unwrap_or(0);
            (String::from_utf8_lossy(&answer[..read]).to_string(), begun.elapsed())
        }));
    }
    steady_writer(&relay, &normal, started + Duration::from_secs(2)).await;
    for dribbler in dribblers {
        let (answer, elapsed) = dribbler.await.expect("join");
        // Never 408: Prometheus drops a batch answered with any 4xx but 429.
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer:?}"
        );
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    }
    assert!(backend.requests().iter().all(|r| !r.body.is_empty()));
}

#[tokio::test]
async fn connection_cap_holds_new_connections_until_one_closes() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start_with_server("max_connections = 2", &backends_toml(&[&backend])).await;
    let token = relay.tenant_with_token("alpha").await;
    // Two idle connections fill the cap (the relay's own client is idle, so use raw ones).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(relay.data_addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let attempt = client
        .post(relay.write_url())
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .timeout(Duration::from_millis(500))
        .body(simple_body(&[]))
        .send()
        .await;
    assert!(attempt.is_err(), "no slot: the connection is not served");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = client
        .post(relay.write_url())
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .body(simple_body(&[]))
        .send()
        .await
        .expect("served once a slot is free");
    assert_eq!(response.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_budgets_answer_503_when_exhausted() {
    let backend = FakeBackend::start().await;
    backend.delay(Duration::from_millis(600));
    let relay = Relay::start_with_server(
        "max_in_flight_requests = 1\nin_flight_wait = \"100ms\"",
        &backends_toml(&[&backend]),
    )
    .await;
    let token = relay.tenant_with_token("alpha").await;
    let slow = relay.write(&token, simple_body(&[]));
    let second = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        relay.write(&token, simple_body(&[])).await
    };
    let (slow, second) = tokio::join!(slow, second);
    assert_eq!(slow.status(), 204);
    assert_eq!(second.status(), 503);
    assert_eq!(retry_after(&second), 1);
}

#[test]
fn a_decoded_size_the_budget_can_never_hold_is_a_config_error() {
    // Each config must be refused with a problem naming the cause.
    for (section, cause) in [
        (
            "[server]\nmax_in_flight_decoded_bytes = \"16MiB\"",
            "limits.max_in_flight_decoded_bytes",
        ),
        (
            "[limits]\nmax_decoded_bytes = \"128MiB\"",
            "could never be admitted",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[storage]\ndatabase_url = \"sqlite://{}/promgate.db\"\n{section}\n",
            dir.path().display()
        );
        let problems = promgate::config::Config::from_toml_str(&text, &Default::default())
            .expect_err("refused")
            .problems;
        assert!(
            problems.iter().any(|problem| problem.contains(cause)),
            "{section}: {problems:?}"
        );
    }
}

/// A request of `n` series whose body decodes to about `n` × 60 bytes.
fn wide_body(n: usize) -> Vec<u8> {
    snappy_body(&WriteRequest {
        timeseries: (0..n)
            .map(|i| {
                series(
                    &[
                        ("__name__", "wide_metric_with_a_long_name"),
                        ("series", &format!("{i:012}")),
                    ],
                    1.0,
                    now_ms(),
                )
            })
            .collect(),
        metadata: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_tenants_free_decoded_budget_gets_a_retryable_503() {
    let backend = FakeBackend::start().await;
    backend.delay(Duration::from_millis(1500));
    let relay =
        Relay::start_with_server("in_flight_wait = \"200ms\"", &backends_toml(&[&backend])).await;
    relay
        .create_tenant(json!({"id": "alpha", "limits": {
            "max_decoded_bytes": "2MiB", "max_in_flight_decoded_bytes": "2MiB"
        }}))
        .await;
    let (_, token) = relay.issue_token("alpha").await;
    let other = relay.tenant_with_token("beta").await;
    let body = wide_body(20_000);
    let first = relay.write(&token, body.clone());
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let over = relay.write(&token, body.clone()).await;
        let beside = relay.write(&other, body.clone()).await;
        (over, beside)
    };
    let (first, (second, beside)) = tokio::join!(first, second);
    assert_eq!(first.status(), 204);
    assert_eq!(
        second.status(),
        503,
        "over the budget left: retryable, never 400"
    );
    assert_eq!(retry_after(&second), 1);
    assert_eq!(beside.status(), 204, "another tenant's budget is its own");
}

/// The in-flight gauge, as `/metrics` shows it.
async fn in_flight_gauge(relay: &Relay) -> f64 {
    let text = relay
        .http
        .get(relay.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix("promgate_in_flight_requests "))
        .and_then(|value| value.trim().parse().ok())
        .expect("promgate_in_flight_requests in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_request_leaves_the_in_flight_gauge() {
    let backend = FakeBackend::start().await;
    backend.delay(Duration::from_secs(5));
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    let token = relay.tenant_with_token("alpha").await;
    let impatient = relay
        .write_request(&token, simple_body(&[]))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        impatient.is_err(),
        "the client gave up before the backend answered"
    );
    // promgate sees the connection close and drops the request long before the
    // backend's 5 s are over.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let gauge = in_flight_gauge(&relay).await;
        if gauge == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in-flight gauge stuck at {gauge}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
