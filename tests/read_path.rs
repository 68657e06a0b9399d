//! Remote read through promgate against fake backends (DESIGN §7): the tenant matcher
//! is always appended, a backend that ignores matchers still leaks nothing (SAMPLES
//! and streamed), broken streams reach the client as aborted responses, and bad
//! requests get their status codes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::BytesMut;
use common::Relay;
use futures::StreamExt;
use promgate::proto::{
    Chunk, ChunkedReadResponse, ChunkedSeries, Label, LabelMatcher, Query, QueryResult,
    ReadRequest, ReadResponse, Sample, TimeSeries,
};
use promgate::read::frame::{encode_frame, FrameDecoder};
use prost::Message;
use tokio::net::TcpListener;

const XOR_CHUNK: [u8; 18] = [
    0x00, 0x04, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xe8, 0x07, 0x30, 0x97, 0xff, 0xc0,
];
const STREAMED: &str = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";

/// What the fake backend answers, whatever it is asked (it ignores matchers).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Samples,
    Streamed,
    StreamedTruncated,
    StreamedCorrupt,
    StreamedTrailingText,
    StreamedSlow,
    Status(u16),
}

#[derive(Clone)]
struct FakeRead {
    mode: Arc<Mutex<Mode>>,
    /// Break the stream before any of alpha's frames, so promgate sees the break before
    /// answering.
    break_in_first_chunk: Arc<Mutex<bool>>,
    received: Arc<Mutex<Vec<(HeaderMap, ReadRequest)>>>,
}

impl FakeRead {
    async fn start(mode: Mode) -> (FakeRead, String) {
        let fake = FakeRead {
            mode: Arc::new(Mutex::new(mode)),
            break_in_first_chunk: Arc::new(Mutex::new(false)),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let router = Router::new()
            .route("/api/v1/read", post(answer))
            .with_state(fake.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (fake, format!("http://{addr}/api/v1/read"))
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    fn last_request(&self) -> (HeaderMap, ReadRequest) {
        self.received
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request")
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(name, value)| Label {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

/// Series of alpha, beta and one without any tenant label.
fn tenants() -> [Option<&'static str>; 3] {
    [Some("alpha"), Some("beta"), None]
}

fn series_labels(tenant: Option<&str>) -> Vec<Label> {
    let mut pairs = vec![("__name__", "up"), ("job", "node")];
    if let Some(tenant) = tenant {
        pairs.push(("tenant_id", tenant));
    }
    labels(&pairs)
}

fn frames() -> Vec<u8> {
    frame_list().concat()
}

/// One encoded frame per series of [`tenants`], alpha's first.
fn frame_list() -> Vec<Vec<u8>> {
    let mut list = Vec::new();
    for tenant in tenants() {
        let mut out = BytesMut::new();
        let frame = ChunkedReadResponse {
            chunked_series: vec![ChunkedSeries {
                labels: series_labels(tenant),
                chunks: vec![Chunk {
                    min_time_ms: 1000,
                    max_time_ms: 4000,
                    r#type: 1,
                    data: Bytes::from_static(&XOR_CHUNK),
                }],
            }],
            query_index: 0,
        };
        encode_frame(&frame.encode_to_vec(), &mut out);
        list.push(out.to_vec());
    }
    list
}

async fn answer(State(fake): State<FakeRead>, headers: HeaderMap, body: Bytes) -> Response {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("snappy request");
    let request = ReadRequest::decode(raw.as_slice()).expect("ReadRequest");
    let queries = request.queries.len();
    fake.received.lock().expect("lock").push((headers, request));
    let mode = *fake.mode.lock().expect("lock");
    let broken_first = *fake.break_in_first_chunk.lock().expect("lock");
    let streamed = |body: Body| {
        let mut response = (StatusCode::OK, body).into_response();
        response
            .headers_mut()
            .insert("content-type", STREAMED.parse().expect("value"));
        response
    };
    match mode {
        Mode::Samples => {
            let results = (0..queries)
                .map(|_| QueryResult {
                    timeseries: tenants()
                        .iter()
                        .map(|tenant| TimeSeries {
                            labels: series_labels(*tenant),
                            samples: vec![Sample {
                                value: 1.0,
                                timestamp: 1000,
                            }],
                            ..TimeSeries::default()
                        })
                        .collect(),
                })
                .collect();
            let body = snap::raw::Encoder::new()
                .compress_vec(&ReadResponse { results }.encode_to_vec())
                .expect("compress");
            let mut response = body.into_response();
            response.headers_mut().insert(
                "content-type",
                "application/x-protobuf".parse().expect("value"),
            );
            response
        }
        Mode::Streamed => streamed(Body::from(frames())),
        Mode::StreamedTruncated | Mode::StreamedCorrupt | Mode::StreamedTrailingText => {
            let list = frame_list();
            let alphas = list[0].clone();
            let mut rest = list[1..].concat();
            match mode {
                Mode::StreamedTruncated => rest.truncate(rest.len() - 5),
                Mode::StreamedCorrupt => {
                    let last = rest.len() - 1;
                    rest[last] ^= 0xff;
                }
                _ => rest.extend_from_slice(b"query failed: out of memory\n"),
            }
            let pieces = if broken_first {
                // Without alpha's frame nothing is sendable before the break.
                vec![Bytes::from(rest)]
            } else {
                vec![Bytes::from(alphas), Bytes::from(rest)]
            };
            let stream = futures::stream::iter(pieces).then(|piece| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>(piece)
            });
            streamed(Body::from_stream(stream))
        }
        Mode::StreamedSlow => {
            let first = frames();
            let stream = futures::stream::unfold(0, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from(first)), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            None
                        }
                        _ => None,
                    }
                }
            });
            streamed(Body::from_stream(stream))
        }
        Mode::Status(code) => (
            StatusCode::from_u16(code).expect("code"),
            "fake backend refuses\n",
        )
            .into_response(),
    }
}

fn read_request(matchers: Vec<LabelMatcher>, accepted: Vec<i32>, queries: usize) -> Vec<u8> {
    let request = ReadRequest {
        queries: (0..queries)
            .map(|_| Query {
                start_timestamp_ms: 0,
                end_timestamp_ms: 3_600_000,
                matchers: matchers.clone(),
                hints: None,
            })
            .collect(),
        accepted_response_types: accepted,
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("compress")
}

fn matcher(kind: i32, name: &str, value: &str) -> LabelMatcher {
    LabelMatcher {
        r#type: kind,
        name: name.into(),
        value: value.into(),
    }
}

async fn relay_with(mode: Mode, extra_toml: &str) -> (Relay, FakeRead, String) {
    let (fake, read_url) = FakeRead::start(mode).await;
    let toml = format!(
        "{extra_toml}\n[[backends]]\nname = \"store\"\nwrite_url = \"http://127.0.0.1:1/api/v1/write\"\nread_url = \"{read_url}\"\ntenant_header = \"X-Scope-OrgID\"\ntimeout = \"2s\"\n"
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    (relay, fake, token)
}

async fn post_read(relay: &Relay, token: &str, body: Vec<u8>) -> reqwest::Response {
    relay
        .http
        .post(format!("http://{}/api/v1/read", relay.data_addr))
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Scope-OrgID", "beta")
        .body(body)
        .send()
        .await
        .expect("read request")
}

fn decode_frames(body: &[u8]) -> Vec<ChunkedReadResponse> {
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.push(body);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame().expect("valid frames") {
        frames.push(ChunkedReadResponse::decode(frame).expect("frame"));
    }
    decoder.finish().expect("complete");
    frames
}

#[tokio::test]
async fn samples_from_a_backend_that_ignores_matchers_leak_nothing() {
    let (relay, fake, token) = relay_with(Mode::Samples, "").await;
    let body = read_request(
        vec![matcher(2, "tenant_id", ".*"), matcher(0, "__name__", "up")],
        vec![],
        2,
    );
    let response = post_read(&relay, &token, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "snappy");
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&response.bytes().await.expect("body"))
        .expect("snappy");
    let answer = ReadResponse::decode(raw.as_slice()).expect("ReadResponse");
    assert_eq!(answer.results.len(), 2, "one result per query, in order");
    for result in &answer.results {
        assert_eq!(result.timeseries.len(), 1);
        assert_eq!(
            result.timeseries[0].labels,
            labels(&[("__name__", "up"), ("job", "node")])
        );
    }
    let (headers, forwarded) = fake.last_request();
    assert_eq!(
        headers["x-scope-orgid"], "alpha",
        "promgate's tenant header, not the client's"
    );
    assert!(headers.get("authorization").is_none());
    assert_eq!(forwarded.accepted_response_types, vec![0]);
    for query in &forwarded.queries {
        assert_eq!(
            query.matchers.last(),
            Some(&matcher(0, "tenant_id", "alpha"))
        );
        assert_eq!(query.matchers.len(), 3, "the caller's matchers are kept");
    }
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains(
            "promgate_read_foreign_series_dropped_total{tenant=\"alpha\",backend=\"store\"} 4"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn streamed_frames_of_other_tenants_are_dropped() {
    let (relay, _fake, token) = relay_with(Mode::Streamed, "").await;
    let response = post_read(&relay, &token, read_request(vec![], vec![1, 0], 1)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], STREAMED);
    let frames = decode_frames(&response.bytes().await.expect("complete body"));
    assert_eq!(frames.len(), 1, "only alpha's frame; no empty frames");
    let series = &frames[0].chunked_series[0];
    assert_eq!(
        series.labels,
        labels(&[("__name__", "up"), ("job", "node")])
    );
    assert_eq!(
        &series.chunks[0].data[..],
        &XOR_CHUNK,
        "chunk bytes untouched"
    );
}

#[tokio::test]
async fn a_stream_with_nothing_of_the_callers_ends_cleanly_and_empty() {
    let (relay, _fake, token) = relay_with(Mode::Streamed, "").await;
    let gamma = relay.tenant_with_token("gamma").await;
    for _ in 0..2 {
        let response = post_read(&relay, &gamma, read_request(vec![], vec![1], 1)).await;
        assert_eq!(response.status(), 200);
        assert!(response.bytes().await.expect("clean end").is_empty());
    }
    // promgate is still serving.
    let response = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn label_is_kept_when_stripping_is_off() {
    let (relay, _fake, token) =
        relay_with(Mode::Streamed, "[tenancy]\nstrip_label_on_read = false").await;
    let response = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
    let frames = decode_frames(&response.bytes().await.expect("body"));
    assert_eq!(
        frames[0].chunked_series[0].labels,
        series_labels(Some("alpha"))
    );
}

#[tokio::test]
async fn broken_streams_abort_the_client_response() {
    for mode in [
        Mode::StreamedTruncated,
        Mode::StreamedCorrupt,
        Mode::StreamedTrailingText,
    ] {
        let (relay, fake, token) = relay_with(mode, "").await;
        let response = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
        assert_eq!(
            response.status(),
            200,
            "{mode:?}: the answer began before the break"
        );
        let body = response.bytes().await;
        assert!(
            body.is_err(),
            "{mode:?}: the client must see an aborted response, got {body:?}"
        );
        // Broken before anything of alpha's could be sent: a clean 502 instead.
        *fake.break_in_first_chunk.lock().expect("lock") = true;
        let response = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
        assert_eq!(response.status(), 502, "{mode:?}");
    }
}

#[tokio::test]
async fn invalid_requests_are_refused() {
    let (relay, fake, token) =
        relay_with(Mode::Samples, "[limits]\nmax_read_request_bytes = \"1KiB\"").await;
    for (body, status) in [
        (read_request(vec![matcher(7, "job", "x")], vec![], 1), 400),
        (read_request(vec![matcher(2, "job", "(")], vec![], 1), 400),
        (read_request(vec![], vec![5], 1), 400),
        (read_request(vec![], vec![], 0), 400),
        (b"garbage".to_vec(), 400),
        (vec![0u8; 4096], 413),
    ] {
        let response = post_read(&relay, &token, body).await;
        assert_eq!(response.status().as_u16(), status);
    }
    let response = post_read(&relay, "wrong", read_request(vec![], vec![], 1)).await;
    assert_eq!(response.status(), 401);
    let response = relay
        .http
        .post(format!("http://{}/api/v1/read", relay.data_addr))
        .bearer_auth(&token)
        .header("Content-Encoding", "gzip")
        .body(read_request(vec![], vec![], 1))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);
    assert!(
        fake.received.lock().expect("lock").is_empty(),
        "nothing reached the backend"
    );
}

#[tokio::test]
async fn backend_failures_map_to_status_codes() {
    let (relay, fake, token) = relay_with(Mode::Status(500), "").await;
    for (code, expected) in [(500, 503), (503, 503), (400, 400), (401, 502)] {
        fake.set(Mode::Status(code));
        let response = post_read(&relay, &token, read_request(vec![], vec![], 1)).await;
        assert_eq!(response.status().as_u16(), expected, "backend {code}");
    }
}

#[tokio::test]
async fn a_tenant_without_a_read_backend_gets_501() {
    let relay = Relay::start(
        "[[backends]]\nname = \"w\"\nwrite_url = \"http://127.0.0.1:1/api/v1/write\"\n",
    )
    .await;
    let token = relay.tenant_with_token("alpha").await;
    let response = post_read(&relay, &token, read_request(vec![], vec![], 1)).await;
    assert_eq!(response.status(), 501);
}

#[tokio::test]
async fn sample_budget_is_enforced_for_both_response_types() {
    let (relay, fake, token) = relay_with(Mode::Samples, "[limits]\nmax_read_samples = 3").await;
    // SAMPLES: 3 series × 1 sample per query; two queries give alpha 2 samples: fits.
    assert_eq!(
        post_read(&relay, &token, read_request(vec![], vec![], 2))
            .await
            .status(),
        200
    );
    let response = post_read(&relay, &token, read_request(vec![], vec![], 4)).await;
    assert_eq!(response.status(), 400, "4 of alpha's samples are over 3");
    // Streamed: alpha's one frame holds a 4-sample chunk, over the budget before
    // anything was sent: 400.
    fake.set(Mode::Streamed);
    let response = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn concurrent_reads_per_tenant_are_capped() {
    let (relay, _fake, token) = relay_with(
        Mode::StreamedSlow,
        "[limits]\nmax_concurrent_reads = 1\nmax_queued_reads = 0",
    )
    .await;
    let first = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
    assert_eq!(first.status(), 200);
    // The first read still streams (the fake pauses 1.5 s): the second finds no slot.
    let second = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    first.bytes().await.expect("first read completes");
    let third = post_read(&relay, &token, read_request(vec![], vec![1], 1)).await;
    assert_eq!(
        third.status(),
        200,
        "the slot is free again once the stream ended"
    );
}
