//! Tenant-first admission (SECURITY.md T16, T23): one tenant's trouble, or a stranger's,
//! never reaches another tenant. A tenant keeps writing and reading while anonymous and
//! revoked-token floods come from its own address; another tenant's writes keep their
//! latency while one tenant sends regex-heavy reads; one tenant's slow writes and queued
//! reads leave another tenant's requests unaffected; clients hanging up leave the read
//! queue usable; a dashboard's 50 reads at once pass on default limits; a tenant whose
//! backends are gone is refused with 503; the request deadline answers 503 before the
//! sender's `remote_timeout`; the valid admin token is never throttled.

mod common;

use std::time::{Duration, Instant};

use common::{backends_toml, read_backends_toml, read_body, simple_body, FakeBackend, Relay};
use promgate::proto::LabelMatcher;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_keeps_working_while_anonymous_and_revoked_floods_come_from_its_address() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start_with_server(
        "auth_failures_per_minute = 30",
        &read_backends_toml(&[&backend]),
    )
    .await;
    let token = relay.tenant_with_token("alpha").await;
    relay.create_tenant(json!({"id": "gone"})).await;
    let (revoked_id, revoked) = relay.issue_token("gone").await;
    let (code, _) = relay
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/gone/tokens/{revoked_id}"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    // A second tenant whose token was never used before the flood: it is not in the
    // verified cache, yet it is not locked out either.
    relay.create_tenant(json!({"id": "beta"})).await;
    let (_, fresh) = relay.issue_token("beta").await;

    // Everything comes from 127.0.0.1: the strangers and the tenants share the address.
    let strangers = {
        let relay_write = relay.write_url();
        let relay_read = relay.read_url();
        let revoked = revoked.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answers = Vec::new();
            for round in 0..100 {
                let (url, credential) = match round % 4 {
                    0 => (&relay_write, None),
                    1 => (&relay_write, Some("forged.token.value".to_string())),
                    2 => (&relay_read, Some(revoked.clone())),
                    _ => (&relay_write, Some(revoked.clone())),
                };
                let mut request = client
                    .post(url.as_str())
                    .header("Content-Encoding", "snappy")
                    .body(simple_body(&[]));
                if let Some(credential) = credential {
                    request = request.bearer_auth(credential);
                }
                answers.push(status(request).await);
            }
            answers
        })
    };
    let until = Instant::now() + Duration::from_millis(1500);
    let mut served = 0;
    while Instant::now() < until {
        assert_eq!(
            status(relay.write_request(&token, simple_body(&[]))).await,
            204
        );
        assert_eq!(
            status(relay.read_request(&token, read_body(vec![]))).await,
            200
        );
        served += 1;
        // A Prometheus-like pace: well inside the tenant's own read rate.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let answers = strangers.await.expect("join");
    assert!(
        answers.iter().all(|code| *code == 401 || *code == 429),
        "{answers:?}"
    );
    assert!(
        answers.contains(&429),
        "the strangers' address was throttled: {answers:?}"
    );
    assert_eq!(
        status(relay.write_request(&fresh, simple_body(&[]))).await,
        204,
        "a token promgate issued and the registry holds passes a throttled address"
    );
    let code = status(relay.write_request(&revoked, simple_body(&[]))).await;
    assert!(
        code == 401 || code == 429,
        "the revoked token is still refused: {code}"
    );
    assert!(served > 3, "alpha was served all along ({served} rounds)");
}

#[tokio::test]
async fn the_valid_admin_token_is_never_throttled_by_others_failures() {
    let relay = Relay::start_with_admin_limit(tempfile::tempdir().expect("tempdir"), "", 5).await;
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let response = client
            .get(relay.admin_url("/admin/v1/tenants"))
            .bearer_auth("guess")
            .send()
            .await
            .expect("sent");
        answers.push(response.status().as_u16());
    }
    assert_eq!(&answers[..5], &[401; 5]);
    assert_eq!(&answers[5..], &[429; 3]);
    let (code, body) = relay
        .admin(reqwest::Method::GET, "/admin/v1/tenants", None)
        .await;
    assert_eq!(code, 200, "the operator is not locked out: {body}");
}

/// A read whose matchers fill the default regex budget: sixteen 4 KiB alternations.
fn regex_heavy_read() -> Vec<u8> {
    let alternation: String = (0..400)
        .map(|i| format!("host-{i:04}.example"))
        .collect::<Vec<_>>()
        .join("|");
    let pattern = &alternation[..4000];
    let pattern = &pattern[..pattern.rfind('|').expect("has alternatives")];
    read_body(
        (0..16)
            .map(|i| LabelMatcher {
                r#type: 2,
                name: format!("label_{i}"),
                value: pattern.to_string(),
            })
            .collect(),
    )
}

fn percentile(latencies: &mut [Duration], fraction: f64) -> Duration {
    latencies.sort();
    let index = ((latencies.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
    latencies[index.min(latencies.len() - 1)]
}

/// B's writes at 50 a second for `phase`: latencies (every answer must be 204).
async fn paced_writes(relay: &Relay, token: &str, phase: Duration) -> Vec<Duration> {
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let until = Instant::now() + phase;
    let mut latencies = Vec::new();
    while Instant::now() < until {
        ticks.tick().await;
        let started = Instant::now();
        assert_eq!(
            status(relay.write_request(token, simple_body(&[]))).await,
            204
        );
        latencies.push(started.elapsed());
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_write_p99_holds_while_one_tenant_sends_regex_heavy_reads() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&read_backends_toml(&[&backend])).await;
    relay
        .create_tenant(json!({"id": "a", "limits": {"read_requests_per_second": 1000, "read_requests_burst": 1000}}))
        .await;
    let (_, token_a) = relay.issue_token("a").await;
    let token_b = relay.tenant_with_token("b").await;
    let body = regex_heavy_read();
    assert_eq!(
        status(relay.read_request(&token_a, body.clone())).await,
        200,
        "the heavy read is within the default caps"
    );
    paced_writes(&relay, &token_b, Duration::from_millis(500)).await;
    for round in 1..=3 {
        let mut alone = paced_writes(&relay, &token_b, Duration::from_secs(3)).await;
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let request = relay.read_request(&token_a, body.clone());
                tokio::spawn(async move {
                    let until = Instant::now() + Duration::from_secs(3);
                    let mut reads = 0u32;
                    while Instant::now() < until {
                        let Some(request) = request.try_clone() else {
                            break;
                        };
                        let code = status(request).await;
                        assert!(code == 200 || code == 429 || code == 503, "{code}");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let mut during = paced_writes(&relay, &token_b, Duration::from_secs(3)).await;
        let mut reads = 0;
        for reader in readers {
            reads += reader.await.expect("join");
        }
        let (p99_alone, p99_during) = (percentile(&mut alone, 0.99), percentile(&mut during, 0.99));
        println!("round {round}: {reads} regex-heavy reads; B p99 alone {p99_alone:?}, during {p99_during:?}");
        // A floor of 5 ms: a shared 2-core machine has hiccups of its own.
        if p99_during <= (p99_alone * 4).max(Duration::from_millis(5)) {
            return;
        }
    }
    panic!(
        "B's write p99 rose past 4× its baseline while A sent regex-heavy reads, in three rounds"
    );
}

/// Opens a write whose body then dribbles in: holds a place until promgate gives up on it.
async fn slow_write(addr: std::net::SocketAddr, token: String) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: promgate\r\nAuthorization: Bearer {token}\r\nContent-Encoding: snappy\r\nContent-Length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let begun = Instant::now();
    while begun.elapsed() < Duration::from_secs(4) {
        if stream.write_all(&[0u8; 1]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answer = vec![0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .map_or(0, |read| read.unwrap_or(0));
    String::from_utf8_lossy(&answer[..read]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_slow_writes_and_queued_reads_leave_another_tenant_unaffected() {
    let backend = FakeBackend::start().await;
    // Reads take 3 s at the backend, so A's reads fill its slots and queue.
    backend.delay(Duration::from_secs(3));
    let relay = Relay::start_with_server(
        "body_read_timeout = \"4s\"\nmin_body_bytes_per_second = 1",
        &read_backends_toml(&[&backend]),
    )
    .await;
    let token_a = relay.tenant_with_token("a").await;
    let token_b = relay.tenant_with_token("b").await;
    // A: 60 writes with dribbling bodies and 60 reads that wait behind the slow backend.
    let mut slow = Vec::new();
    for _ in 0..60 {
        slow.push(tokio::spawn(slow_write(relay.data_addr, token_a.clone())));
    }
    let mut queued = Vec::new();
    for _ in 0..60 {
        queued.push(tokio::spawn(
            relay.read_request(&token_a, read_body(vec![])).send(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B writes (the backend answers writes after 3 s too, so B's writes take 3 s; what
    // matters is that they are admitted and succeed) and reads.
    let b_write = tokio::spawn(relay.write_request(&token_b, simple_body(&[])).send());
    let b_read = tokio::spawn(relay.read_request(&token_b, read_body(vec![])).send());
    let b_write = b_write.await.expect("join").expect("sent");
    let b_read = b_read.await.expect("join").expect("sent");
    assert_eq!(b_write.status(), 204, "{:?}", b_write.text().await);
    assert_eq!(b_read.status(), 200, "{:?}", b_read.text().await);
    let mut slow_answers = Vec::new();
    for write in slow {
        slow_answers.push(write.await.expect("join"));
    }
    assert!(
        slow_answers
            .iter()
            .all(|answer| answer.is_empty() || answer.starts_with("HTTP/1.1 503")),
        "A's slow writes get retryable answers: {:?}",
        &slow_answers[..3]
    );
    for read in queued {
        let _ = read.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_while_queued_leave_the_read_queue_usable() {
    let backend = FakeBackend::start().await;
    backend.delay(Duration::from_millis(800));
    let relay = Relay::start(&read_backends_toml(&[&backend])).await;
    relay
        .create_tenant(
            json!({"id": "alpha", "limits": {"max_concurrent_reads": 1, "max_queued_reads": 2}}),
        )
        .await;
    let (_, token) = relay.issue_token("alpha").await;
    let holder = tokio::spawn(relay.read_request(&token, read_body(vec![])).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Ten clients that queue, then give up before a slot frees.
    for _ in 0..10 {
        let impatient = relay
            .read_request(&token, read_body(vec![]))
            .timeout(Duration::from_millis(50))
            .send()
            .await;
        assert!(impatient.is_err(), "hung up while queued");
    }
    assert_eq!(holder.await.expect("join").expect("sent").status(), 200);
    // Two at once: one takes the slot, one queues (the queue's places came back).
    let (first, second) = tokio::join!(
        relay.read_request(&token, read_body(vec![])).send(),
        relay.read_request(&token, read_body(vec![])).send()
    );
    assert_eq!(first.expect("sent").status(), 200);
    assert_eq!(second.expect("sent").status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_refresh_of_50_reads_at_once_passes_on_default_limits() {
    let backend = FakeBackend::start().await;
    backend.delay(Duration::from_millis(20));
    let relay = Relay::start(&read_backends_toml(&[&backend])).await;
    let token = relay.tenant_with_token("alpha").await;
    for refresh in 0..2 {
        let reads: Vec<_> = (0..50)
            .map(|_| tokio::spawn(relay.read_request(&token, read_body(vec![])).send()))
            .collect();
        for read in reads {
            let response = read.await.expect("join").expect("sent");
            assert_eq!(response.status(), 200, "refresh {refresh}");
        }
    }
}

#[tokio::test]
async fn a_tenant_whose_backends_are_gone_is_refused_with_503() {
    let kept = FakeBackend::start().await;
    let old = FakeBackend::start().await;
    let both = format!(
        "{}[[backends]]\nname = \"old\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\n",
        backends_toml(&[&kept]),
        old.write_url()
    );
    let mut relay = Relay::start(&both).await;
    relay
        .create_tenant(json!({"id": "orphan", "backends": ["old"]}))
        .await;
    let (_, orphan) = relay.issue_token("orphan").await;
    let (_, kept_token) = {
        relay.create_tenant(json!({"id": "fine"})).await;
        relay.issue_token("fine").await
    };
    assert_eq!(
        status(relay.write_request(&orphan, simple_body(&[]))).await,
        204
    );
    let dir = relay.stop().await;
    // The "old" backend is removed from the config.
    let relay = Relay::start_in(dir, &backends_toml(&[&kept])).await;
    let response = relay.write(&orphan, simple_body(&[])).await;
    assert_eq!(
        response.status(),
        503,
        "never 2xx for data that goes nowhere"
    );
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        old.requests().len(),
        1,
        "nothing more reached the old backend"
    );
    assert_eq!(
        relay.write(&kept_token, simple_body(&[])).await.status(),
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_answers_503_before_the_senders_timeout() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start_with_server(
        "request_timeout = \"3s\"\nbody_read_timeout = \"20s\"\nmin_body_bytes_per_second = 1",
        &backends_toml(&[&backend]),
    )
    .await;
    let token = relay.tenant_with_token("alpha").await;
    let started = Instant::now();
    let answer = slow_write(relay.data_addr, token).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn behind_a_trusted_proxy_failures_count_against_the_forwarded_client() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start_with_server(
        "auth_failures_per_minute = 3\ntrusted_proxies = [\"127.0.0.1/32\"]",
        &backends_toml(&[&backend]),
    )
    .await;
    let guess = |client: &'static str| {
        relay
            .write_request("forged", simple_body(&[]))
            .header("X-Forwarded-For", format!("6.6.6.6, {client}"))
    };
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(status(guess("198.51.100.1")).await);
    }
    assert_eq!(answers, [401, 401, 401, 429, 429]);
    assert_eq!(
        status(guess("198.51.100.2")).await,
        401,
        "another client behind the same proxy has its own count"
    );
}
