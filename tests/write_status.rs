//! One test per status code of DESIGN §6, against promgate running in-process with
//! recording fake backends. Every refusal also asserts that nothing reached a backend.

mod common;

use std::time::Duration;

use common::{
    backends_toml, label_value, now_ms, series, simple_body, snappy_body, FakeBackend, Relay,
};
use promgate::proto::{MetricMetadata, WriteRequest};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn relay_with_backend() -> (Relay, FakeBackend, String) {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    let token = relay.tenant_with_token("alpha").await;
    (relay, backend, token)
}

async fn assert_refused(
    relay: &Relay,
    backend: &FakeBackend,
    token: &str,
    body: Vec<u8>,
    status: u16,
    needle: &str,
) {
    let response = relay.write(token, body).await;
    assert_eq!(response.status().as_u16(), status);
    let text = response.text().await.expect("body");
    assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one-line reason: {text:?}"
    );
    assert!(
        backend.requests().is_empty(),
        "nothing may reach the backend"
    );
}

#[tokio::test]
async fn valid_write_is_forwarded_with_the_tenant_label_and_promgates_headers_only() {
    let backend = FakeBackend::start().await;
    let toml = format!(
        "[[backends]]\nname = \"mimir\"\nwrite_url = \"{}\"\ntenant_header = \"X-Scope-OrgID\"\n",
        backend.write_url()
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    let response = relay
        .http
        .post(relay.write_url())
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Scope-OrgID", "beta|gamma")
        .header("THANOS-TENANT", "beta")
        .header("X-Mimir-SkipLabelNameValidation", "true")
        .body(simple_body(&[("tenant_id", "beta")]))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204);
    let requests = backend.requests();
    assert_eq!(
        requests.len(),
        1,
        "one outgoing request per incoming request"
    );
    let headers = &requests[0].headers;
    assert_eq!(headers["x-scope-orgid"], "alpha");
    assert!(headers.get("thanos-tenant").is_none());
    assert!(headers.get("x-mimir-skiplabelnamevalidation").is_none());
    assert!(
        headers.get("authorization").is_none(),
        "the client's token never goes upstream"
    );
    assert_eq!(headers["content-encoding"], "snappy");
    assert_eq!(headers["x-prometheus-remote-write-version"], "0.1.0");
    let forwarded = requests[0].write_request();
    assert_eq!(
        label_value(&forwarded.timeseries[0], "tenant_id"),
        ["alpha"]
    );
}

#[tokio::test]
async fn reject_policy_refuses_a_foreign_tenant_label() {
    let backend = FakeBackend::start().await;
    let toml = format!(
        "[tenancy]\non_conflict = \"reject\"\n{}",
        backends_toml(&[&backend])
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    assert_refused(
        &relay,
        &backend,
        &token,
        simple_body(&[("tenant_id", "beta")]),
        400,
        "another tenant",
    )
    .await;
    assert_eq!(
        relay
            .write(&token, simple_body(&[("tenant_id", "alpha")]))
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn snappy_bomb_is_refused_without_allocating() {
    let (relay, backend, token) = relay_with_backend().await;
    // Preamble claims 4 GiB - 1; the body is 7 bytes.
    let bomb = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00];
    assert_refused(&relay, &backend, &token, bomb, 400, "over the").await;
}

#[tokio::test]
async fn framed_snappy_is_refused() {
    let (relay, backend, token) = relay_with_backend().await;
    let mut framed = Vec::new();
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&simple_body(&[]))
        .expect("raw");
    {
        let mut writer = snap::write::FrameEncoder::new(&mut framed);
        std::io::Write::write_all(&mut writer, &raw).expect("framed");
    }
    assert_refused(&relay, &backend, &token, framed, 400, "framed").await;
}

#[tokio::test]
async fn unsupported_encodings_and_types_are_415_before_decoding() {
    let (relay, backend, token) = relay_with_backend().await;
    for (encoding, content_type) in [
        ("gzip", "application/x-protobuf"),
        ("snappy", "application/json"),
        (
            "snappy",
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        ),
        (
            "deflate",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        ),
    ] {
        let response = relay
            .http
            .post(relay.write_url())
            .bearer_auth(&token)
            .header("Content-Encoding", encoding)
            .header("Content-Type", content_type)
            .body(vec![0x1f, 0x8b, 0x08])
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 415, "{encoding} {content_type}");
    }
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn invalid_series_are_400_with_a_reason() {
    let (relay, backend, token) = relay_with_backend().await;
    let now = now_ms();
    let cases = [
        (
            vec![("__name__", "up"), ("job", "a"), ("job", "b")],
            now,
            "more than once",
        ),
        (vec![("job", "a")], now, "no __name__"),
        (vec![("__name__", "up")], now + 3_600_000, "ahead of now"),
    ];
    for (labels, timestamp, needle) in cases {
        let body = snappy_body(&WriteRequest {
            timeseries: vec![series(&labels, 1.0, timestamp)],
            metadata: vec![],
        });
        assert_refused(&relay, &backend, &token, body, 400, needle).await;
    }
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let (relay, backend, token) = relay_with_backend().await;
    let valid = snap::raw::Decoder::new()
        .decompress_vec(&simple_body(&[]))
        .expect("raw");
    let truncated = snap::raw::Encoder::new()
        .compress_vec(&valid[..valid.len() - 3])
        .expect("compress");
    assert_refused(&relay, &backend, &token, truncated, 400, "protobuf").await;
    assert_refused(&relay, &backend, &token, Vec::new(), 400, "empty").await;
    assert_refused(
        &relay,
        &backend,
        &token,
        b"not snappy at all".to_vec(),
        400,
        "snappy",
    )
    .await;
    // WriteRequest { timeseries: [{ labels: [{ name: "a", value: 0xff }] }] }: not UTF-8.
    let bad_utf8 = [0x0a, 0x08, 0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, 0xff];
    let body = snap::raw::Encoder::new()
        .compress_vec(&bad_utf8)
        .expect("compress");
    assert_refused(&relay, &backend, &token, body, 400, "UTF-8").await;
}

#[tokio::test]
async fn empty_request_succeeds() {
    let (relay, _backend, token) = relay_with_backend().await;
    assert_eq!(relay.write(&token, vec![0x00]).await.status(), 204);
}

#[tokio::test]
async fn oversized_bodies_are_413_and_series_counts_400() {
    let backend = FakeBackend::start().await;
    let toml = format!(
        "[limits]\nmax_request_bytes = \"1KiB\"\nmax_series_per_request = 2\n{}",
        backends_toml(&[&backend])
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    assert_refused(&relay, &backend, &token, vec![0u8; 4096], 413, "limit").await;
    // Without Content-Length (chunked), the cap applies while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|_| Ok(vec![0u8; 512])).collect();
    let response = relay
        .http
        .post(relay.write_url())
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 413);
    let three = snappy_body(&WriteRequest {
        timeseries: (0..3)
            .map(|i| series(&[("__name__", "up"), ("i", &i.to_string())], 1.0, now_ms()))
            .collect(),
        metadata: vec![],
    });
    assert_refused(&relay, &backend, &token, three, 400, "3 series").await;
}

#[tokio::test]
async fn unauthenticated_large_body_is_answered_401_before_it_is_sent() {
    let (relay, backend, _token) = relay_with_backend().await;
    let mut stream = tokio::net::TcpStream::connect(relay.data_addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {}\r\nContent-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        relay.data_addr,
        32 * 1024 * 1024
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("headers sent");
    // Not one byte of the body is sent: the answer must come anyway.
    let mut response = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .expect("answered before the body was sent")
        .expect("read");
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn bad_and_revoked_tokens_are_401_and_disabled_tenants_403() {
    let (relay, backend, token) = relay_with_backend().await;
    assert_refused(
        &relay,
        &backend,
        "not-a-jwt",
        simple_body(&[]),
        401,
        "invalid token",
    )
    .await;
    let (token_id, revoked) = relay.issue_token("alpha").await;
    // Used once (its verification is cached), then revoked: refused at once.
    assert_eq!(relay.write(&revoked, simple_body(&[])).await.status(), 204);
    backend.received.lock().expect("lock").clear();
    let (status, _) = relay
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/alpha/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_refused(&relay, &backend, &revoked, simple_body(&[]), 401, "revoked").await;
    let (status, _) = relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_refused(&relay, &backend, &token, simple_body(&[]), 403, "disabled").await;
    relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(relay.write(&token, simple_body(&[])).await.status(), 204);
    let (status, _) = relay
        .admin(reqwest::Method::DELETE, "/admin/v1/tenants/alpha", None)
        .await;
    assert_eq!(status, 204);
    let response = relay.write(&token, simple_body(&[])).await;
    assert_eq!(response.status(), 401, "a deleted tenant's tokens are gone");
}

#[tokio::test]
async fn backend_answers_map_to_retryable_or_permanent_codes() {
    let (relay, backend, token) = relay_with_backend().await;
    for (backend_status, expected, retry_after) in [
        (500, 503, Some("5")),
        (503, 503, Some("5")),
        (429, 503, Some("11")),
        (400, 400, None),
        (409, 400, None),
        (422, 400, None),
        (401, 502, None),
        (404, 502, None),
    ] {
        backend.answer_with(backend_status);
        let response = relay.write(&token, simple_body(&[])).await;
        assert_eq!(
            response.status().as_u16(),
            expected,
            "backend {backend_status}"
        );
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii")),
            retry_after,
            "backend {backend_status}"
        );
        let text = response.text().await.expect("body");
        assert_eq!(text.trim_end().lines().count(), 1, "{text:?}");
        if expected == 400 {
            assert!(
                text.contains(&format!("fake backend says {backend_status}")),
                "{text}"
            );
        }
    }
}

#[tokio::test]
async fn unreachable_backend_is_503_and_one_of_two_down_is_503() {
    let backend = FakeBackend::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let toml = format!(
        "{}[[backends]]\nname = \"dead\"\nwrite_url = \"http://127.0.0.1:{dead_port}/api/v1/write\"\ntimeout = \"2s\"\n",
        backends_toml(&[&backend])
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    let response = relay.write(&token, simple_body(&[])).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // A tenant limited to the live backend is unaffected.
    relay
        .create_tenant(json!({"id": "beta", "backends": ["b0"]}))
        .await;
    let (_, beta) = relay.issue_token("beta").await;
    assert_eq!(relay.write(&beta, simple_body(&[])).await.status(), 204);
}

#[tokio::test]
async fn every_backend_gets_the_same_bytes() {
    let first = FakeBackend::start().await;
    let second = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&first, &second])).await;
    let token = relay.tenant_with_token("alpha").await;
    assert_eq!(relay.write(&token, simple_body(&[])).await.status(), 204);
    let (a, b) = (first.requests(), second.requests());
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].body, b[0].body);
}

#[tokio::test]
async fn metadata_goes_only_to_backends_with_a_tenant_header() {
    let shared = FakeBackend::start().await;
    let mimir = FakeBackend::start().await;
    let toml = format!(
        "{}[[backends]]\nname = \"mimir\"\nwrite_url = \"{}\"\ntenant_header = \"X-Scope-OrgID\"\n",
        backends_toml(&[&shared]),
        mimir.write_url()
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    let metadata_only =
        std::fs::read("tests/data/prom-2.42-metadata/body-000.bin").expect("fixture");
    assert_eq!(relay.write(&token, metadata_only).await.status(), 204);
    assert!(
        shared.requests().is_empty(),
        "a shared backend cannot scope metadata"
    );
    let to_mimir = mimir.requests();
    assert_eq!(to_mimir.len(), 1);
    assert_eq!(to_mimir[0].write_request().metadata.len(), 449);
    // Mixed request: series go everywhere, metadata only to the header-tenanted backend.
    let mixed = snappy_body(&WriteRequest {
        timeseries: vec![series(&[("__name__", "up")], 1.0, now_ms())],
        metadata: vec![MetricMetadata {
            r#type: 1,
            metric_family_name: "up".into(),
            help: "help".into(),
            unit: String::new(),
        }],
    });
    assert_eq!(relay.write(&token, mixed).await.status(), 204);
    let shared_got = shared.requests()[0].write_request();
    assert_eq!(
        (shared_got.timeseries.len(), shared_got.metadata.len()),
        (1, 0)
    );
    let mimir_got = mimir.requests()[1].write_request();
    assert_eq!(
        (mimir_got.timeseries.len(), mimir_got.metadata.len()),
        (1, 1)
    );
}

#[tokio::test]
async fn rejections_are_counted_in_metrics() {
    let (relay, _backend, token) = relay_with_backend().await;
    relay
        .write(&token, vec![0xff, 0xff, 0xff, 0xff, 0x0f])
        .await;
    relay.write("garbage", simple_body(&[])).await;
    let metrics = relay.metrics().await;
    assert!(metrics.contains("promgate_rejected_requests_total{endpoint=\"write\",tenant=\"alpha\",reason=\"decoded_too_large\"} 1"), "{metrics}");
    assert!(
        metrics.contains("promgate_auth_failures_total{cause=\"invalid_token\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(&token), "no token in metrics");
}
