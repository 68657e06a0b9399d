//! Remote read end to end with real Prometheus 2.42 processes: alpha and beta write
//! through promgate into a backend Prometheus; a Prometheus with alpha's token and
//! `remote_read` pointed at promgate sees alpha's history without the tenant label and
//! none of beta's series; hand-built ReadRequests with every matcher on the tenant label,
//! in both response types, never return a beta series.

mod common;

use std::time::{Duration, Instant};

use common::stack::{instant_query, series, value_of, Stack};
use promgate::proto::{ChunkedReadResponse, Label, LabelMatcher, Query, ReadRequest, ReadResponse};
use promgate::read::frame::FrameDecoder;
use prost::Message;
use serde_json::Value;

type TenantMatcherCase = (&'static str, Option<(i32, &'static str)>, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_scoped_to_the_callers_tenant() {
    let stack = Stack::start(false).await;
    stack.add_tenant("alpha").await;
    stack.add_tenant("beta").await;
    // The hand-built reads below come faster than the default 10 reads/s.
    stack
        .promgate
        .set_limits(
            "alpha",
            serde_json::json!({"read_requests_per_second": 1000}),
        )
        .await;
    let _alpha_sender = stack.start_sender("alpha", &[("sender", "alpha")]).await;
    let _beta_sender = stack
        .start_sender("beta", &[("sender", "beta"), ("tenant_id", "alpha")])
        .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let held = series(&stack.http, &stack.prometheus_url, "{__name__=\"up\"}").await;
        if ["alpha", "beta"].iter().all(|tenant| {
            held.iter()
                .any(|labels| value_of(labels, "tenant_id") == Some(tenant))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not arrive:\n{}",
            stack.promgate.process.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // PromQL through a Prometheus that reads with alpha's token.
    let (_reader, reader_url) = stack.start_reader("alpha").await;
    let results = instant_query(
        &stack.http,
        &reader_url,
        "{__name__=~\"up|scrape_duration_seconds\"}",
    )
    .await;
    assert!(!results.is_empty(), "alpha's history is readable");
    for metric in &results {
        assert_eq!(
            metric.get("sender").and_then(Value::as_str),
            Some("alpha"),
            "{metric:?}"
        );
        assert_eq!(
            metric.get("job").and_then(Value::as_str),
            Some("alpha-self"),
            "{metric:?}"
        );
        assert!(
            metric.get("tenant_id").is_none(),
            "the tenant label is stripped: {metric:?}"
        );
    }
    let beta = instant_query(&stack.http, &reader_url, "up{job=\"beta-self\"}").await;
    assert!(
        beta.is_empty(),
        "beta's series are invisible to alpha: {beta:?}"
    );

    // Hand-built requests: every matcher on the tenant label, both response types.
    let token = std::fs::read_to_string(stack.root().join("alpha.token")).expect("token");
    // (how it reads, the matcher on tenant_id as (type, value), whether alpha's series match)
    let tenant_matchers: [TenantMatcherCase; 6] = [
        ("none", None, true),
        ("=~\".*\"", Some((2, ".*")), true),
        ("=\"beta\"", Some((0, "beta")), false),
        ("!=\"alpha\"", Some((1, "alpha")), false),
        ("=\"\"", Some((0, "")), false),
        ("!~\"alpha\"", Some((3, "alpha")), false),
    ];
    for response_type in [0, 1] {
        for (name, tenant_matcher, alpha_expected) in tenant_matchers {
            let mut matchers = vec![matcher(2, "__name__", ".+")];
            if let Some((kind, value)) = tenant_matcher {
                matchers.push(matcher(kind, "tenant_id", value));
            }
            let results = read(&stack, &token, vec![matchers], response_type).await;
            let all: Vec<&Vec<Label>> = results.iter().flatten().collect();
            assert!(
                all.iter().all(|labels| sender(labels) == Some("alpha")),
                "type {response_type}, tenant_id{name}: a series that is not alpha's came back"
            );
            assert!(
                all.iter()
                    .all(|labels| labels.iter().all(|l| l.name != "tenant_id")),
                "type {response_type}: tenant label stripped"
            );
            assert_eq!(
                !all.is_empty(),
                alpha_expected,
                "type {response_type}, tenant_id{name}"
            );
        }
        // Several queries in one request, each scoped on its own.
        let results = read(
            &stack,
            &token,
            vec![
                vec![
                    matcher(0, "tenant_id", "beta"),
                    matcher(0, "__name__", "up"),
                ],
                vec![matcher(0, "__name__", "up")],
                vec![matcher(0, "sender", "beta"), matcher(0, "__name__", "up")],
            ],
            response_type,
        )
        .await;
        assert_eq!(results.len(), 3);
        assert!(
            results[0].is_empty() && results[2].is_empty(),
            "type {response_type}"
        );
        assert!(!results[1].is_empty(), "type {response_type}");
        assert!(results[1]
            .iter()
            .all(|labels| sender(labels) == Some("alpha")));
    }
}

fn matcher(kind: i32, name: &str, value: &str) -> LabelMatcher {
    LabelMatcher {
        r#type: kind,
        name: name.into(),
        value: value.into(),
    }
}

fn sender(labels: &[Label]) -> Option<&str> {
    labels
        .iter()
        .find(|l| l.name == "sender")
        .map(|l| l.value.as_str())
}

/// Sends one ReadRequest (one query per matcher list, the last 10 minutes) through
/// promgate; returns each query's series label sets.
async fn read(
    stack: &Stack,
    token: &str,
    queries: Vec<Vec<LabelMatcher>>,
    response_type: i32,
) -> Vec<Vec<Vec<Label>>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let query_count = queries.len();
    let request = ReadRequest {
        queries: queries
            .into_iter()
            .map(|matchers| Query {
                start_timestamp_ms: now - 600_000,
                end_timestamp_ms: now,
                matchers,
                hints: None,
            })
            .collect(),
        accepted_response_types: vec![response_type],
    };
    let response = stack
        .http
        .post(format!("{}/api/v1/read", stack.promgate.data_url))
        .bearer_auth(token.trim())
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(
            snap::raw::Encoder::new()
                .compress_vec(&request.encode_to_vec())
                .expect("compress"),
        )
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "read failed: {err}\npromgate log:\n{}",
                stack.promgate.process.log_tail()
            )
        });
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let body = response.bytes().await.unwrap_or_else(|err| {
        panic!(
            "read aborted: {err}\npromgate log:\n{}",
            stack.promgate.process.log_tail()
        )
    });
    let mut results = vec![Vec::new(); query_count];
    if response_type == 0 {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy");
        let answer = ReadResponse::decode(raw.as_slice()).expect("ReadResponse");
        assert_eq!(answer.results.len(), query_count);
        for (index, result) in answer.results.into_iter().enumerate() {
            results[index] = result
                .timeseries
                .into_iter()
                .map(|series| series.labels)
                .collect();
        }
    } else {
        let mut decoder = FrameDecoder::new(4 << 20);
        decoder.push(&body);
        while let Some(frame) = decoder.next_frame().expect("valid frame") {
            let frame = ChunkedReadResponse::decode(frame).expect("frame");
            assert_eq!(frame.chunked_series.len(), 1, "one series per frame");
            let index = usize::try_from(frame.query_index).expect("index");
            results[index].extend(frame.chunked_series.into_iter().map(|series| series.labels));
        }
        decoder.finish().expect("complete stream");
    }
    results
}
