//! Memory under large query answers (SECURITY.md T23): eight queries at once, each
//! answered by the backend with about 60 MB of matrix (half of it another tenant's),
//! sent chunked so promgate cannot know the size in advance. The answers are filtered
//! without building a tree of them and held in a process-wide budget that is reserved
//! as they arrive: promgate's peak RSS (VmHWM from /proc) grows by at most that budget
//! plus a margin, every answer is either the tenant's whole answer or a 503 to retry,
//! and once the burst is over a large answer is served again (the budget is released).

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use common::binary::PromgateBinary;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const ANSWER_BUDGET_MIB: u64 = 400;
const MARGIN_MIB: u64 = 160;
const SERIES: usize = 30_000;

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

/// A `query_range` answer of `SERIES` series of 100 samples, every other one beta's.
fn large_answer() -> Bytes {
    let values: Vec<String> = (0..100)
        .map(|i| format!("[{},\"{}.5\"]", 1_700_000_000 + i * 15, i))
        .collect();
    let values = values.join(",");
    let mut body = String::from(r#"{"status":"success","data":{"resultType":"matrix","result":["#);
    for i in 0..SERIES {
        if i > 0 {
            body.push(',');
        }
        let tenant = if i % 2 == 0 { "alpha" } else { "beta" };
        body.push_str(&format!(
            r#"{{"metric":{{"__name__":"big","tenant_id":"{tenant}","series":"{i}"}},"values":[{values}]}}"#
        ));
    }
    body.push_str("]}}");
    Bytes::from(body)
}

/// A query backend that sends `answer` to every request in 1 MiB chunks, without a
/// Content-Length.
async fn chunked_backend(answer: Bytes) -> String {
    let router = Router::new().fallback(move || {
        let answer = answer.clone();
        async move {
            let chunks: Vec<Result<Bytes, std::io::Error>> = answer
                .chunks(1 << 20)
                .map(|chunk| Ok(answer.slice_ref(chunk)))
                .collect();
            axum::response::Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .expect("response")
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

async fn ask(relay: &PromgateBinary, token: &str) -> (u16, Option<String>, Bytes) {
    let response = relay
        .http
        .post(format!("{}/api/v1/query_range", relay.data_url))
        .bearer_auth(token)
        .form(&[
            ("query", "big"),
            ("start", "1700000000"),
            ("end", "1700001500"),
            ("step", "15"),
        ])
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("promgate answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    (status, retry_after, response.bytes().await.expect("body"))
}

fn assert_whole_and_own(body: &[u8]) {
    let answer: Value = serde_json::from_slice(body).expect("JSON answer");
    let result = answer["data"]["result"].as_array().expect("a matrix");
    assert_eq!(result.len(), SERIES / 2, "alpha's series, all of them");
    for series in result {
        assert!(series["metric"].get("tenant_id").is_none(), "stripped");
        assert_eq!(series["values"].as_array().map(Vec::len), Some(100));
    }
    assert!(!String::from_utf8_lossy(body).contains("beta"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_large_answers_stay_within_the_answer_budget() {
    let answer = large_answer();
    assert!(answer.len() > 55 << 20, "{} bytes", answer.len());
    let backend = chunked_backend(answer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = PromgateBinary::start(
        dir.path(),
        &format!("max_in_flight_answer_bytes = \"{ANSWER_BUDGET_MIB}MiB\""),
        &format!(
            "[limits]\nmax_query_response_bytes = \"64MiB\"\nquery_timeout = \"50s\"\n\
             max_concurrent_queries = 8\nquery_requests_per_second = 100\n\
             [[backends]]\nname = \"q\"\nwrite_url = \"{backend}/api/v1/write\"\nquery_url = \"{backend}\"\ntimeout = \"20s\"\n"
        ),
    )
    .await;
    let token = relay.add_tenant("alpha", json!({})).await;
    let pid = relay.process.pid();
    let base = peak_rss_mib(pid);

    let answers = futures::future::join_all((0..8).map(|_| ask(&relay, &token))).await;
    let peak = peak_rss_mib(pid);
    let mut served = 0;
    for (status, retry_after, body) in &answers {
        match status {
            200 => {
                assert_whole_and_own(body);
                served += 1;
            }
            503 => assert!(retry_after.is_some(), "a 503 says when to retry"),
            other => panic!(
                "{other}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ),
        }
    }
    eprintln!(
        "eight answers of 60 MB: {served} served, peak RSS {base} MiB → {peak} MiB (budget {ANSWER_BUDGET_MIB} MiB)"
    );
    assert!(served >= 1, "at least the answers that fit are served");
    assert!(
        peak <= base + ANSWER_BUDGET_MIB + MARGIN_MIB,
        "peak RSS grew from {base} MiB to {peak} MiB, over the {ANSWER_BUDGET_MIB} MiB answer budget"
    );

    // The budget was released: one large answer at a time is always served.
    for _ in 0..2 {
        let (status, _, body) = ask(&relay, &token).await;
        assert_eq!(status, 200);
        assert_whole_and_own(&body);
    }
}
