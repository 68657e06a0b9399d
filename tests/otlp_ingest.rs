//! OTLP/HTTP metrics through promgate running in-process with recording fake backends
//! (DESIGN §12): what is forwarded, and every refusal — malformed protobuf, a gzip
//! bomb, a wrong content type, no credential, throttling, delta temporality, an
//! unavailable backend — with the status, headers and protobuf body the OTLP/HTTP
//! specification asks for. Every refusal also asserts that nothing reached a backend.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{backends_toml, label_value, now_ms, FakeBackend, Relay};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::json;

const PROTOBUF: &str = "application/x-protobuf";

/// `google.rpc.Status`, the body of a refusal.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn point(value: f64, attributes: &[(&str, &str)]) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        time_unix_nano: now_ms() as u64 * 1_000_000,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Metric::default()
    }
}

fn counter(name: &str, temporality: AggregationTemporality, value: f64) -> Metric {
    Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(Data::Sum(Sum {
            data_points: vec![point(value, &[])],
            aggregation_temporality: temporality as i32,
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

fn export(resource: &[(&str, &str)], metrics: Vec<Metric>) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
    .encode_to_vec()
}

fn simple_export() -> Vec<u8> {
    export(
        &[("service.name", "api")],
        vec![gauge("temperature", vec![point(21.0, &[])])],
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("in memory");
    encoder.finish().expect("in memory")
}

fn url(relay: &Relay, path: &str) -> String {
    format!("http://{}{path}", relay.data_addr)
}

async fn post(relay: &Relay, token: Option<&str>, body: Vec<u8>, gzip: bool) -> reqwest::Response {
    let mut request = relay
        .http
        .post(url(relay, "/otlp/v1/metrics"))
        .header("Content-Type", PROTOBUF)
        .body(body);
    if gzip {
        request = request.header("Content-Encoding", "gzip");
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("otlp request")
}

async fn relay_with_backend(limits: serde_json::Value) -> (Relay, FakeBackend, String) {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    relay
        .create_tenant(json!({"id": "alpha", "limits": limits}))
        .await;
    let (_, token) = relay.issue_token("alpha").await;
    (relay, backend, token)
}

/// Asserts a refusal: its status, a protobuf `google.rpc.Status` body with `code` and
/// a message holding `needle`, and nothing at the backend.
async fn assert_refused(
    response: reqwest::Response,
    backend: &FakeBackend,
    status: u16,
    code: i32,
    needle: &str,
) -> reqwest::header::HeaderMap {
    assert_eq!(response.status().as_u16(), status);
    let headers = response.headers().clone();
    assert_eq!(
        headers
            .get("content-type")
            .map(|v| v.to_str().expect("ascii")),
        Some(PROTOBUF)
    );
    let body = response.bytes().await.expect("body");
    let status = RpcStatus::decode(&body[..]).expect("a google.rpc.Status body");
    assert_eq!(status.code, code, "{status:?}");
    assert!(
        status.message.contains(needle),
        "{status:?} lacks {needle:?}"
    );
    assert!(
        backend.requests().is_empty(),
        "nothing may reach the backend"
    );
    headers
}

async fn accepted(response: reqwest::Response) -> ExportMetricsServiceResponse {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii")),
        Some(PROTOBUF)
    );
    let body = response.bytes().await.expect("body");
    ExportMetricsServiceResponse::decode(&body[..]).expect("ExportMetricsServiceResponse")
}

#[tokio::test]
async fn exports_are_translated_stamped_and_forwarded_on_both_routes() {
    let (relay, backend, token) = relay_with_backend(json!({})).await;
    let body = export(
        &[("service.name", "api"), ("tenant_id", "beta")],
        vec![
            gauge("temperature", vec![point(21.0, &[("tenant_id", "beta")])]),
            counter("job.runtime", AggregationTemporality::Cumulative, 2.5),
        ],
    );
    let answer = accepted(post(&relay, Some(&token), body.clone(), false).await).await;
    assert_eq!(answer.partial_success, None);
    let answer = accepted(post(&relay, Some(&token), gzip(&body), true).await).await;
    assert_eq!(answer.partial_success, None);
    let other_route = relay
        .http
        .post(url(&relay, "/api/v1/otlp/v1/metrics"))
        .bearer_auth(&token)
        .header("Content-Type", PROTOBUF)
        .body(body)
        .send()
        .await
        .expect("request");
    accepted(other_route).await;
    let requests = backend.requests();
    assert_eq!(requests.len(), 3, "one backend request per export");
    for recorded in &requests {
        // Remote write 1.0, with promgate's headers only.
        assert_eq!(
            recorded
                .headers
                .get("content-encoding")
                .map(|v| v.to_str().expect("ascii")),
            Some("snappy")
        );
        assert!(recorded.headers.get("authorization").is_none());
        let write = recorded.write_request();
        let names: Vec<&str> = write
            .timeseries
            .iter()
            .flat_map(|s| label_value(s, "__name__"))
            .collect();
        assert_eq!(
            names,
            ["temperature", "job_runtime_seconds_total", "target_info"]
        );
        for series in &write.timeseries {
            assert_eq!(label_value(series, "tenant_id"), ["alpha"], "{series:?}");
            assert_eq!(label_value(series, "job"), ["api"]);
        }
    }
    let metrics = relay.metrics().await;
    for needle in [
        r#"promgate_requests_total{endpoint="otlp",tenant="alpha",code="200"} 3"#,
        r#"promgate_otlp_data_points_total{tenant="alpha",outcome="accepted"} 6"#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

#[tokio::test]
async fn malformed_protobuf_is_400() {
    let (relay, backend, token) = relay_with_backend(json!({})).await;
    let response = post(&relay, Some(&token), vec![0x0a, 0xff, 0xff, 0x01], false).await;
    assert_refused(response, &backend, 400, 3, "protobuf").await;
    // Not gzip although it says so.
    let response = post(&relay, Some(&token), simple_export(), true).await;
    assert_refused(response, &backend, 400, 3, "gzip").await;
    // Gzip of garbage.
    let response = post(&relay, Some(&token), gzip(b"\xff\xff\xff\xff"), true).await;
    assert_refused(response, &backend, 400, 3, "protobuf").await;
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_by_its_claim_or_cut_off_at_it() {
    let (relay, backend, token) = relay_with_backend(json!({})).await;
    // 256 MiB of zeros in some 256 KiB: the trailer's claim is over max_decoded_bytes
    // (32 MiB), refused before a byte is inflated.
    let bomb = gzip(&vec![0u8; 256 << 20]);
    assert!(bomb.len() < 512 << 10);
    let started = Instant::now();
    let response = post(&relay, Some(&token), bomb.clone(), true).await;
    assert_refused(response, &backend, 400, 3, "over the").await;
    // The same bomb with a forged trailer claiming 1 KiB: inflation stops after 1 KiB + 1.
    let mut forged = bomb;
    let n = forged.len();
    forged[n - 4..].copy_from_slice(&1024u32.to_le_bytes());
    let response = post(&relay, Some(&token), forged, true).await;
    assert_refused(response, &backend, 400, 3, "more than 1024").await;
    // Inflating 256 MiB would take far longer than refusing twice.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn other_content_types_and_encodings_are_415() {
    let (relay, backend, token) = relay_with_backend(json!({})).await;
    for (content_type, encoding) in [
        (Some("application/json"), None),
        (None, None),
        (Some("text/plain"), None),
        (Some(PROTOBUF), Some("snappy")),
        (Some(PROTOBUF), Some("zstd")),
    ] {
        let mut request = relay
            .http
            .post(url(&relay, "/otlp/v1/metrics"))
            .bearer_auth(&token)
            .body(simple_export());
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        if let Some(encoding) = encoding {
            request = request.header("Content-Encoding", encoding);
        }
        let response = request.send().await.expect("request");
        assert_refused(response, &backend, 415, 3, "not supported").await;
    }
}

#[tokio::test]
async fn unauthenticated_and_bad_tokens_are_401() {
    let (relay, backend, token) = relay_with_backend(json!({})).await;
    let headers = assert_refused(
        post(&relay, None, simple_export(), false).await,
        &backend,
        401,
        16,
        "",
    )
    .await;
    assert_eq!(
        headers
            .get("www-authenticate")
            .map(|v| v.to_str().expect("ascii")),
        Some("Bearer")
    );
    let forged = format!("{token}x");
    assert_refused(
        post(&relay, Some(&forged), simple_export(), false).await,
        &backend,
        401,
        16,
        "",
    )
    .await;
}

#[tokio::test]
async fn throttled_exports_get_429_or_503_with_retry_after() {
    // Data points count as samples: the tenant may send 3 a second, 3 at once.
    let (relay, backend, token) =
        relay_with_backend(json!({"samples_per_second": 3, "burst_samples": 3})).await;
    let three = export(
        &[],
        vec![gauge(
            "g",
            vec![
                point(1.0, &[("i", "1")]),
                point(2.0, &[("i", "2")]),
                point(3.0, &[("i", "3")]),
            ],
        )],
    );
    accepted(post(&relay, Some(&token), three.clone(), false).await).await;
    backend.received.lock().expect("lock").clear();
    let headers = assert_refused(
        post(&relay, Some(&token), three, false).await,
        &backend,
        429,
        8,
        "samples limit",
    )
    .await;
    let retry_after: u64 = headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    // A request larger than the burst can never pass: 400, not 429.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let four = export(
        &[],
        vec![gauge(
            "g",
            (0..4)
                .map(|i| point(1.0, &[("i", &i.to_string())]))
                .collect(),
        )],
    );
    assert_refused(
        post(&relay, Some(&token), four, false).await,
        &backend,
        400,
        3,
        "4 data points, more than the tenant's burst of 3",
    )
    .await;
    // A histogram point is one data point, however many series it makes (here four:
    // _count, two buckets and +Inf; a resource with service.name alone has no
    // target_info).
    let histogram = Metric {
        name: "h".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                time_unix_nano: now_ms() as u64 * 1_000_000,
                count: 3,
                bucket_counts: vec![1, 1, 1],
                explicit_bounds: vec![1.0, 2.0],
                ..HistogramDataPoint::default()
            }],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Metric::default()
    };
    let body = export(&[("service.name", "a")], vec![histogram]);
    accepted(post(&relay, Some(&token), body, false).await).await;
    assert_eq!(backend.requests()[0].write_request().timeseries.len(), 4);
    backend.received.lock().expect("lock").clear();

    // throttle_status = 503 for senders that never retry 429.
    let (relay, backend, token) =
        relay_with_backend(json!({"requests_per_second": 1, "throttle_status": 503})).await;
    accepted(post(&relay, Some(&token), simple_export(), false).await).await;
    backend.received.lock().expect("lock").clear();
    let headers = assert_refused(
        post(&relay, Some(&token), simple_export(), false).await,
        &backend,
        503,
        14,
        "requests limit",
    )
    .await;
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn delta_temporality_is_refused_whole_or_as_partial_success() {
    let (relay, backend, token) = relay_with_backend(json!({})).await;
    let only_delta = export(
        &[],
        vec![counter("requests", AggregationTemporality::Delta, 1.0)],
    );
    assert_refused(
        post(&relay, Some(&token), only_delta, false).await,
        &backend,
        400,
        3,
        "\"requests\" has delta temporality",
    )
    .await;
    let mixed = export(
        &[],
        vec![
            counter("requests", AggregationTemporality::Delta, 1.0),
            gauge("g", vec![point(1.0, &[])]),
        ],
    );
    let answer = accepted(post(&relay, Some(&token), mixed, false).await).await;
    let partial = answer.partial_success.expect("partial_success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("delta temporality"),
        "{}",
        partial.error_message
    );
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let write = requests[0].write_request();
    assert_eq!(write.timeseries.len(), 1);
    assert_eq!(label_value(&write.timeseries[0], "__name__"), ["g"]);
}

#[tokio::test]
async fn delta_temporality_passes_when_allowed() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&format!(
        "[otlp]\nallow_delta_temporality = true\n{}",
        backends_toml(&[&backend])
    ))
    .await;
    let token = relay.tenant_with_token("alpha").await;
    let body = export(
        &[],
        vec![counter("requests", AggregationTemporality::Delta, 1.0)],
    );
    let answer = accepted(post(&relay, Some(&token), body, false).await).await;
    assert_eq!(answer.partial_success, None);
    let write = backend.requests()[0].write_request();
    assert_eq!(
        label_value(&write.timeseries[0], "__name__"),
        ["requests_seconds_total"]
    );
}

#[tokio::test]
async fn an_unavailable_backend_is_503_with_retry_after() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let relay = Relay::start(&format!(
        "[[backends]]\nname = \"dead\"\nwrite_url = \"http://127.0.0.1:{dead_port}/api/v1/write\"\ntimeout = \"2s\"\n"
    ))
    .await;
    let token = relay.tenant_with_token("alpha").await;
    let response = post(&relay, Some(&token), simple_export(), false).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body = response.bytes().await.expect("body");
    assert_eq!(RpcStatus::decode(&body[..]).expect("status").code, 14);
    // A backend that answers 400 makes the export 400, with its reason.
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    let token = relay.tenant_with_token("alpha").await;
    backend.answer_with(400);
    let response = post(&relay, Some(&token), simple_export(), false).await;
    assert_eq!(response.status(), 400);
    backend.answer_with(500);
    let response = post(&relay, Some(&token), simple_export(), false).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn oversized_bodies_are_413_before_decoding() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&format!(
        "[limits]\nmax_request_bytes = \"1KiB\"\n{}",
        backends_toml(&[&backend])
    ))
    .await;
    let token = relay.tenant_with_token("alpha").await;
    let big = export(
        &[],
        vec![gauge(
            "g",
            (0..100)
                .map(|i| point(1.0, &[("i", &i.to_string())]))
                .collect(),
        )],
    );
    assert!(big.len() > 1024);
    assert_refused(
        post(&relay, Some(&token), big, false).await,
        &backend,
        413,
        3,
        "limit",
    )
    .await;
}

#[tokio::test]
async fn an_empty_export_is_200_and_sends_nothing() {
    let (relay, backend, token) = relay_with_backend(json!({})).await;
    let answer = accepted(post(&relay, Some(&token), Vec::new(), false).await).await;
    assert_eq!(answer.partial_success, None);
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn points_of_new_series_past_the_active_series_limit_are_a_partial_success() {
    let (relay, backend, token) = relay_with_backend(json!({"max_active_series": 3})).await;
    let points = |range: std::ops::Range<u32>| {
        range
            .map(|i| point(f64::from(i), &[("n", &i.to_string())]))
            .collect::<Vec<_>>()
    };
    let answer = accepted(
        post(
            &relay,
            Some(&token),
            export(&[], vec![gauge("g", points(0..2))]),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(answer.partial_success, None);
    // 0 and 1 are active, 2 fits, 3..5 are new past the limit.
    let answer = accepted(
        post(
            &relay,
            Some(&token),
            export(&[], vec![gauge("g", points(0..6))]),
            false,
        )
        .await,
    )
    .await;
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_data_points, 3);
    assert!(
        partial
            .error_message
            .contains("per-tenant active series limit of 3 reached: 3 of 4 series in this request are new and were refused"),
        "{partial:?}"
    );
    let written: Vec<String> = backend
        .requests()
        .last()
        .expect("the rest was written")
        .write_request()
        .timeseries
        .iter()
        .flat_map(|series| label_value(series, "n"))
        .map(str::to_string)
        .collect();
    assert_eq!(written, ["0", "1", "2"]);
    // Every point refused for the limit: still a partial success, nothing forwarded.
    let before = backend.requests().len();
    let answer = accepted(
        post(
            &relay,
            Some(&token),
            export(&[], vec![gauge("g", points(10..12))]),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(
        answer
            .partial_success
            .expect("partial")
            .rejected_data_points,
        2
    );
    assert_eq!(backend.requests().len(), before);
}
