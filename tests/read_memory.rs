//! Memory stays flat while promgate relays a large streamed remote-read response: a
//! fake backend generates frames without end buffers (one prebuilt 256-frame block sent
//! again and again), promgate filters them, the client discards them as they come.
//! Prints the peak-RSS growth (VmHWM) of the whole test process, which holds all three.
//!
//! The size relayed is `PROMGATE_READ_MEMORY_MIB` (default 96). For the figure in
//! docs/benchmarks.md: `PROMGATE_READ_MEMORY_MIB=2048 cargo test --release --test read_memory -- --nocapture`.

mod common;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use bytes::BytesMut;
use common::Relay;
use futures::StreamExt;
use promgate::proto::{Chunk, ChunkedReadResponse, ChunkedSeries, Label, Query, ReadRequest};
use promgate::read::frame::encode_frame;
use prost::Message;
use tokio::net::TcpListener;

const STREAMED: &str = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";

fn block() -> Bytes {
    let mut chunk = vec![0u8; 180];
    chunk[..2].copy_from_slice(&120u16.to_be_bytes());
    let chunk = Bytes::from(chunk);
    let mut out = BytesMut::new();
    for index in 0..256 {
        let tenant = if index % 2 == 0 { "alpha" } else { "beta" };
        let frame = ChunkedReadResponse {
            chunked_series: vec![ChunkedSeries {
                labels: [
                    ("__name__", "node_cpu_seconds_total"),
                    ("instance", "10.0.0.1:9100"),
                    ("job", "node"),
                    ("tenant_id", tenant),
                ]
                .iter()
                .map(|(name, value)| Label {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
                chunks: vec![Chunk {
                    min_time_ms: 0,
                    max_time_ms: 119_000,
                    r#type: 1,
                    data: chunk.clone(),
                }],
            }],
            query_index: 0,
        };
        encode_frame(&frame.encode_to_vec(), &mut out);
    }
    out.freeze()
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_a_large_stream_keeps_memory_flat() {
    let mib: usize = std::env::var("PROMGATE_READ_MEMORY_MIB")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(96);
    let block = block();
    let blocks = mib * 1024 * 1024 / block.len();
    let backend_block = block.clone();
    let router = Router::new().route(
        "/api/v1/read",
        post(move || {
            let block = backend_block.clone();
            async move {
                let stream = futures::stream::iter(0..blocks)
                    .map(move |_| Ok::<_, std::io::Error>(block.clone()));
                let mut response = (StatusCode::OK, Body::from_stream(stream)).into_response();
                response
                    .headers_mut()
                    .insert("content-type", STREAMED.parse().expect("value"));
                response
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let relay = Relay::start(&format!(
        "[limits]\nmax_read_samples = 1000000000000\n[[backends]]\nname = \"store\"\nwrite_url = \"http://{addr}/api/v1/write\"\nread_url = \"http://{addr}/api/v1/read\"\n"
    ))
    .await;
    let token = relay.tenant_with_token("alpha").await;
    let request = ReadRequest {
        queries: vec![Query {
            start_timestamp_ms: 0,
            end_timestamp_ms: 1000,
            matchers: vec![],
            hints: None,
        }],
        accepted_response_types: vec![1],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("compress");

    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    let response = relay
        .http
        .post(format!("http://{}/api/v1/read", relay.data_addr))
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .body(body)
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 200);
    let mut received = 0usize;
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        received += chunk.expect("stream completes").len();
    }
    let elapsed = started.elapsed();
    let growth_mib = (peak_rss_kib().saturating_sub(before)) as f64 / 1024.0;
    let relayed_mib = (blocks * block.len()) as f64 / (1024.0 * 1024.0);
    println!(
        "read_memory: relayed {relayed_mib:.0} MiB from the backend ({:.0} MiB to the client) in {:.1} s; peak RSS grew by {growth_mib:.1} MiB (from {:.1} MiB)",
        received as f64 / (1024.0 * 1024.0),
        elapsed.as_secs_f64(),
        before as f64 / 1024.0
    );
    assert!(
        received as f64 > relayed_mib * 1024.0 * 1024.0 * 0.3,
        "alpha's half came through"
    );
    assert!(
        growth_mib < 32.0,
        "memory must not grow with the response: +{growth_mib:.1} MiB for {relayed_mib:.0} MiB relayed"
    );
}
