//! One tenant's heaviest allowed queries against another tenant's everyday traffic
//! (SECURITY.md T23): while alpha sends the costliest query the bounds allow, four at a
//! time, beta's query, write and OTLP latencies stay within 4x of their baseline. In a
//! test binary of its own, so no other test's load runs beside the measurement.

mod common;

use common::query::{ask, fake_query_backend};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use serde_json::json;

/// The costliest query the bounds allow: 255 selectors joined by `or`, each with a regex
/// alternation of 255 bytes (64 KiB of regex in all).
fn largest_allowed_query() -> String {
    let alternation = |i: usize| {
        let mut regex = format!("q{i:03}");
        let mut n = 0;
        while regex.len() + 7 <= 255 {
            regex.push_str(&format!("|{i:03}{n:03}"));
            n += 1;
        }
        regex
    };
    (0..255)
        .map(|i| format!("up{{a=~\"{}\"}}", alternation(i)))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Median latency of `rounds` requests of each kind from beta: a query, a remote write,
/// an OTLP export.
async fn beta_latencies(relay: &PromgateBinary, token: &str, rounds: usize) -> [Duration; 3] {
    let otlp = otlp_export();
    let (mut query, mut write, mut export) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let (status, body) = ask(
            relay,
            token,
            "/api/v1/query",
            &[("query", "sum(rate(up[5m]))")],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        query.push(started.elapsed());

        let body = common::simple_body(&[("round", &round.to_string())]);
        let started = Instant::now();
        let response = relay
            .http
            .post(relay.write_url())
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .expect("write");
        assert_eq!(response.status(), 204);
        write.push(started.elapsed());

        let started = Instant::now();
        let response = relay
            .http
            .post(format!("{}/otlp/v1/metrics", relay.data_url))
            .bearer_auth(token)
            .header("Content-Type", "application/x-protobuf")
            .body(otlp.clone())
            .send()
            .await
            .expect("export");
        assert_eq!(response.status(), 200);
        export.push(started.elapsed());
    }
    [median(query), median(write), median(export)]
}

fn otlp_export() -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("api".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "temperature".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: now_ns,
                            value: Some(number_data_point::Value::AsDouble(21.0)),
                            ..NumberDataPoint::default()
                        }],
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
    .encode_to_vec()
}

/// SECURITY.md T23: while alpha sends the costliest query the bounds allow, four at a
/// time without pause, beta's query, write and OTLP latencies stay within 4× of their
/// baseline: alpha's jobs take the CPU pool, beta's everyday requests never queue
/// behind them (light queries and small answers are handled on the request's thread;
/// small writes never needed the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_latency_holds_while_one_sends_the_largest_allowed_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (query_backend, _) = fake_query_backend().await;
    let write_backend = common::FakeBackend::start().await;
    let mut relay = PromgateBinary::start(
        dir.path(),
        "",
        &format!(
            "[limits]\nquery_requests_per_second = 1000\nrequests_per_second = 1000\n\
             [[backends]]\nname = \"q\"\nwrite_url = \"{}\"\nquery_url = \"{query_backend}\"\ntimeout = \"5s\"\n",
            write_backend.write_url()
        ),
    )
    .await;
    let alpha = relay.add_tenant("alpha", json!({})).await;
    let beta = relay.add_tenant("beta", json!({})).await;
    let heavy = largest_allowed_query();
    let started = Instant::now();
    let (status, body) = ask(&relay, &alpha, "/api/v1/query", &[("query", &heavy)]).await;
    assert_eq!(status, 200, "the largest allowed query is allowed: {body}");
    let heavy_time = started.elapsed();

    beta_latencies(&relay, &beta, 5).await;
    let baseline = beta_latencies(&relay, &beta, 25).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heavy_sent = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, token, heavy) = (
                relay.http.clone(),
                format!("{}/api/v1/query", relay.data_url),
                alpha.clone(),
                heavy.clone(),
            );
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&heavy_sent));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .form(&[("query", heavy.as_str())])
                        .send()
                        .await;
                    assert!(response.is_ok_and(|response| response.status() == 200));
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = beta_latencies(&relay, &beta, 25).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.expect("alpha's load");
    }
    eprintln!(
        "alpha's largest query: {heavy_time:?} alone, {} sent under load; beta's medians \
         (query, write, OTLP): {baseline:?} alone, {loaded:?} beside alpha",
        heavy_sent.load(Ordering::SeqCst)
    );
    assert!(
        heavy_sent.load(Ordering::SeqCst) >= 4,
        "alpha kept the pool busy"
    );
    // A floor of 2 ms keeps sub-millisecond baselines from making noise a failure.
    for (kind, (alone, beside)) in ["query", "write", "OTLP"]
        .iter()
        .zip(baseline.iter().zip(loaded.iter()))
    {
        assert!(
            *beside <= (*alone).max(Duration::from_millis(2)) * 4,
            "beta's {kind} took {beside:?} beside alpha's queries, {alone:?} alone"
        );
    }
    relay.process.assert_running();
}
