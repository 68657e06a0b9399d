//! End to end with real processes: a remote write 2.0 sender of the tests' own writes
//! through the promgate binary into a Prometheus 2.42 receiver and a VictoriaMetrics
//! single node, both 1.0-only (promgate converts). Read back through both query APIs:
//! every sample with its exact value and timestamp, the tenant label (the client's
//! spoofed one replaced), and a stale marker that ends the series in Prometheus.

mod common;

use std::time::Duration;

use common::now_ms;
use common::stack::Stack;
use promgate::proto::write_v2 as v2;
use prost::Message;
use serde_json::Value;

const V2_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// (value, timestamp) pairs of every sample of `selector` over the last `range`, at `at`.
async fn raw_samples(
    http: &reqwest::Client,
    base: &str,
    selector: &str,
    at_ms: i64,
) -> Vec<(f64, i64)> {
    let body: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[
            ("query", format!("{selector}[10m]")),
            ("time", format!("{:.3}", at_ms as f64 / 1000.0)),
        ])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(body["status"], "success", "{body}");
    let Some(series) = body["data"]["result"].as_array().and_then(|r| r.first()) else {
        return Vec::new();
    };
    series["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|pair| {
            let at = pair[0].as_f64().expect("time");
            let value: f64 = pair[1].as_str().expect("value").parse().expect("number");
            (value, (at * 1000.0).round() as i64)
        })
        .collect()
}

async fn label_of(http: &reqwest::Client, base: &str, selector: &str, name: &str) -> Vec<String> {
    let body: Value = http
        .get(format!("{base}/api/v1/series"))
        .query(&[("match[]", selector), ("start", "0")])
        .send()
        .await
        .expect("series")
        .json()
        .await
        .expect("json");
    body["data"]
        .as_array()
        .expect("series list")
        .iter()
        .filter_map(|series| series[name].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_sender_lands_in_v1_backends_exactly() {
    let stack = Stack::start(true).await;
    let (victoria_url, prometheus_url) = (
        stack.victoria.as_ref().expect("victoria").1.clone(),
        stack.prometheus_url.clone(),
    );
    let http = stack.http.clone();
    let token_path = stack.add_tenant("alpha").await;
    let token = std::fs::read_to_string(token_path).expect("token");

    let now = now_ms() - 120_000;
    let timestamps: Vec<i64> = (0..4).map(|i| now + i * 15_000).collect();
    let symbols: Vec<String> = [
        "",
        "__name__",
        "rw2_e2e_gauge",
        "job",
        "sender",
        "tenant_id",
        "beta",
        "rw2_e2e_ended",
    ]
    .map(String::from)
    .to_vec();
    let values = [1.5, -2.25, 0.001, 42.0];
    let request = v2::Request {
        symbols,
        timeseries: vec![
            v2::TimeSeries {
                // __name__="rw2_e2e_gauge", job="sender", tenant_id="beta" (a spoof).
                labels_refs: vec![1, 2, 3, 4, 5, 6],
                samples: timestamps
                    .iter()
                    .zip(values)
                    .map(|(&timestamp, value)| v2::Sample {
                        value,
                        timestamp,
                        start_timestamp: 0,
                    })
                    .collect(),
                metadata: Some(v2::Metadata {
                    r#type: 2,
                    help_ref: 0,
                    unit_ref: 0,
                }),
                ..v2::TimeSeries::default()
            },
            v2::TimeSeries {
                // __name__="rw2_e2e_ended", job="sender": two samples, then a stale marker.
                labels_refs: vec![1, 7, 3, 4],
                samples: vec![
                    v2::Sample {
                        value: 7.0,
                        timestamp: timestamps[0],
                        start_timestamp: 0,
                    },
                    v2::Sample {
                        value: 8.0,
                        timestamp: timestamps[1],
                        start_timestamp: 0,
                    },
                    v2::Sample {
                        value: f64::from_bits(STALE_NAN),
                        timestamp: timestamps[2],
                        start_timestamp: 0,
                    },
                ],
                ..v2::TimeSeries::default()
            },
        ],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("compress");
    let response = http
        .post(format!("{}/api/v1/write", stack.promgate.data_url))
        .bearer_auth(token.trim())
        .header("Content-Encoding", "snappy")
        .header("Content-Type", V2_TYPE)
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    assert_eq!(
        response.headers()["x-prometheus-remote-write-samples-written"],
        "7"
    );

    let expected: Vec<(f64, i64)> = values.into_iter().zip(timestamps.clone()).collect();
    let at = timestamps[3] + 1;
    for base in [&prometheus_url, &victoria_url] {
        let mut got = Vec::new();
        for _ in 0..60 {
            got = raw_samples(&http, base, "rw2_e2e_gauge", at).await;
            if got.len() == expected.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(got, expected, "{base}");
        assert_eq!(
            label_of(&http, base, "rw2_e2e_gauge", "tenant_id").await,
            ["alpha"],
            "{base}: the spoofed tenant label was replaced"
        );
    }
    // The stale marker arrived bit-exact: Prometheus ends the series there.
    assert_eq!(
        raw_samples(&http, &prometheus_url, "rw2_e2e_ended", timestamps[1] + 1).await,
        [(7.0, timestamps[0]), (8.0, timestamps[1])]
    );
    let instant: Value = http
        .get(format!("{prometheus_url}/api/v1/query"))
        .query(&[
            ("query", "rw2_e2e_ended".to_string()),
            (
                "time",
                format!("{:.3}", (timestamps[2] + 1000) as f64 / 1000.0),
            ),
        ])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(
        instant["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "after the stale marker the series is gone: {instant}"
    );
}
