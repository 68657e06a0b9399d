//! Prometheus HA pairs (DESIGN §15) through promgate running in-process with a recording
//! fake backend: decisions per series in one request mixing two clusters and series
//! without HA labels; a tenant without HA keeping both copies and every label; a new
//! cluster past `ha_max_clusters` refused with 400 while the rest is written; remote
//! write 2.0 and OTLP alike; the admin API and `promgate tenant ha`.

mod common;

use common::{backends_toml, label_value, now_ms, series, snappy_body, FakeBackend, Relay};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use promgate::proto::write_v2 as v2;
use promgate::proto::{TimeSeries, WriteRequest};
use prost::Message;
use serde_json::{json, Value};

const HA: &str = r#"{"accept_ha_samples": true, "ha_max_clusters": 2}"#;

async fn relay() -> (Relay, FakeBackend) {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    (relay, backend)
}

async fn tenant(relay: &Relay, id: &str, limits: Value) -> String {
    relay
        .create_tenant(json!({"id": id, "limits": limits}))
        .await;
    relay.issue_token(id).await.1
}

/// `up{job, cluster?, __replica__?}` series, one sample each at now.
fn request(series_labels: &[&[(&str, &str)]]) -> WriteRequest {
    let now = now_ms();
    WriteRequest {
        timeseries: series_labels
            .iter()
            .enumerate()
            .map(|(i, labels)| {
                let mut all = vec![("__name__", "up")];
                all.extend_from_slice(labels);
                series(&all, i as f64, now)
            })
            .collect(),
        metadata: vec![],
    }
}

/// Each written series as `job/cluster/replica` ("-" for an absent label).
fn described(written: &[TimeSeries]) -> Vec<String> {
    written
        .iter()
        .map(|series| {
            let one = |name: &str| {
                label_value(series, name)
                    .first()
                    .map_or("-".to_string(), |value| value.to_string())
            };
            format!("{}/{}/{}", one("job"), one("cluster"), one("__replica__"))
        })
        .collect()
}

fn last_written(backend: &FakeBackend) -> Vec<TimeSeries> {
    backend
        .requests()
        .last()
        .expect("a write reached the backend")
        .write_request()
        .timeseries
}

fn metric(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .find(|line| {
            line.starts_with(name)
                && line[name.len()..].starts_with('{')
                && labels.split(',').all(|label| line.contains(label))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn each_series_is_decided_on_its_own_cluster_and_replica() {
    let (relay, backend) = relay().await;
    let token = tenant(&relay, "pair", serde_json::from_str(HA).expect("json")).await;
    // The first request elects a in cluster one and b in cluster two (first seen).
    let first = request(&[
        &[("job", "j1"), ("cluster", "one"), ("__replica__", "a")],
        &[("job", "j2"), ("cluster", "two"), ("__replica__", "b")],
    ]);
    let response = relay.write(&token, snappy_body(&first)).await;
    assert_eq!(response.status(), 204);
    assert_eq!(described(&last_written(&backend)), ["j1/one/-", "j2/two/-"]);
    // One request mixing both clusters from both replicas, and series without both
    // labels: each series on its own.
    let mixed = request(&[
        &[("job", "j1"), ("cluster", "one"), ("__replica__", "b")],
        &[("job", "j1"), ("cluster", "one"), ("__replica__", "a")],
        &[("job", "j2"), ("cluster", "two"), ("__replica__", "a")],
        &[("job", "j2"), ("cluster", "two"), ("__replica__", "b")],
        &[("job", "plain")],
        &[("job", "only-replica"), ("__replica__", "z")],
        &[("job", "only-cluster"), ("cluster", "three")],
    ]);
    let response = relay.write(&token, snappy_body(&mixed)).await;
    assert_eq!(response.status(), 204, "deduplicated series are still 2xx");
    assert_eq!(
        described(&last_written(&backend)),
        [
            "j1/one/-",
            "j2/two/-",
            "plain/-/-",
            "only-replica/-/z",
            "only-cluster/three/-"
        ]
    );
    // Every written series carries the tenant label and never the replica label.
    for series in last_written(&backend) {
        assert_eq!(label_value(&series, "tenant_id"), ["pair"]);
    }
    let metrics = relay.metrics().await;
    for cluster in ["one", "two"] {
        assert_eq!(
            metric(
                &metrics,
                "promgate_ha_deduplicated_samples_total",
                &format!("tenant=\"pair\",cluster=\"{cluster}\"")
            ),
            1.0,
            "{cluster}"
        );
    }
}

#[tokio::test]
async fn a_tenant_without_ha_keeps_both_copies_and_every_label() {
    let (relay, backend) = relay().await;
    let token = tenant(&relay, "single", json!({})).await;
    let body = request(&[
        &[("job", "j"), ("cluster", "one"), ("__replica__", "a")],
        &[("job", "j"), ("cluster", "one"), ("__replica__", "b")],
    ]);
    let response = relay.write(&token, snappy_body(&body)).await;
    assert_eq!(response.status(), 204);
    assert_eq!(described(&last_written(&backend)), ["j/one/a", "j/one/b"]);
    // And a tenant with HA keeps one copy, from the same bytes.
    let token = tenant(&relay, "paired", json!({"accept_ha_samples": true})).await;
    let response = relay.write(&token, snappy_body(&body)).await;
    assert_eq!(response.status(), 204);
    assert_eq!(described(&last_written(&backend)), ["j/one/-"]);
}

#[tokio::test]
async fn a_new_cluster_past_ha_max_clusters_is_refused_and_the_rest_written() {
    let (relay, backend) = relay().await;
    let token = tenant(&relay, "many", serde_json::from_str(HA).expect("json")).await;
    let two = request(&[
        &[("job", "j"), ("cluster", "c1"), ("__replica__", "a")],
        &[("job", "j"), ("cluster", "c2"), ("__replica__", "a")],
    ]);
    assert_eq!(relay.write(&token, snappy_body(&two)).await.status(), 204);
    let third = request(&[
        &[("job", "j"), ("cluster", "c3"), ("__replica__", "a")],
        &[("job", "j"), ("cluster", "c1"), ("__replica__", "a")],
        &[("job", "plain")],
    ]);
    let response = relay.write(&token, snappy_body(&third)).await;
    assert_eq!(response.status(), 400);
    let reason = response.text().await.expect("body");
    assert!(
        reason.contains("per-tenant limit of 2 HA clusters reached: 1 series of new cluster(s) \"c3\" were refused"),
        "{reason}"
    );
    assert_eq!(described(&last_written(&backend)), ["j/c1/-", "plain/-/-"]);
    let metrics = relay.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "promgate_refused_samples_total",
            "tenant=\"many\",reason=\"ha_max_clusters\""
        ),
        1.0
    );
}

const V2_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

fn v2_request(series: &[&[(&str, &str)]], timestamp: i64) -> v2::Request {
    let mut symbols = vec![String::new()];
    let mut intern = |text: &str| -> u32 {
        match symbols.iter().position(|symbol| symbol == text) {
            Some(index) => index as u32,
            None => {
                symbols.push(text.to_string());
                (symbols.len() - 1) as u32
            }
        }
    };
    let timeseries = series
        .iter()
        .map(|labels| v2::TimeSeries {
            labels_refs: labels
                .iter()
                .flat_map(|(name, value)| [intern(name), intern(value)])
                .collect(),
            samples: vec![v2::Sample {
                value: 1.0,
                timestamp,
                start_timestamp: 0,
            }],
            ..v2::TimeSeries::default()
        })
        .collect();
    v2::Request {
        symbols,
        timeseries,
    }
}

#[tokio::test]
async fn remote_write_2_is_decided_per_series_and_counts_what_was_written() {
    let v1 = FakeBackend::start().await;
    let v2_backend = FakeBackend::start().await;
    let toml = format!(
        "{}[[backends]]\nname = \"b1\"\nwrite_url = \"{}\"\nprotocol = \"2.0\"\ntimeout = \"2s\"\n",
        backends_toml(&[&v1]),
        v2_backend.write_url()
    );
    let relay = Relay::start(&toml).await;
    let token = tenant(&relay, "two", json!({"accept_ha_samples": true})).await;
    let send = |request: v2::Request| {
        let body = snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .expect("snappy");
        relay
            .http
            .post(relay.write_url())
            .bearer_auth(&token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", V2_TYPE)
            .header("X-Prometheus-Remote-Write-Version", "2.0.0")
            .body(body)
            .send()
    };
    let now = now_ms();
    let response = send(v2_request(
        &[&[("__name__", "up"), ("cluster", "one"), ("__replica__", "a")]],
        now,
    ))
    .await
    .expect("sent");
    assert_eq!(response.status(), 204);
    let response = send(v2_request(
        &[
            &[("__name__", "up"), ("cluster", "one"), ("__replica__", "b")],
            &[("__name__", "up"), ("cluster", "one"), ("__replica__", "a")],
            &[("__name__", "plain")],
        ],
        now + 1,
    ))
    .await
    .expect("sent");
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()["x-prometheus-remote-write-samples-written"],
        "2"
    );
    // The 1.0 backend: converted, the replica label gone, b's series dropped.
    let written = last_written(&v1);
    let names: Vec<String> = written
        .iter()
        .map(|series| {
            format!(
                "{}/{}",
                label_value(series, "__name__")[0],
                label_value(series, "__replica__").len()
            )
        })
        .collect();
    assert_eq!(names, ["up/0", "plain/0"]);
    // The 2.0 backend: the same series, no replica label among their references.
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&v2_backend.requests().last().expect("v2 write").body)
        .expect("snappy");
    let request = v2::Request::decode(raw.as_slice()).expect("v2");
    assert_eq!(request.timeseries.len(), 2);
    for series in &request.timeseries {
        for pair in series.labels_refs.chunks_exact(2) {
            assert_ne!(request.symbols[pair[0] as usize], "__replica__");
        }
    }
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

fn otlp_export(points: &[(&str, &str, f64)]) -> Vec<u8> {
    let points = points
        .iter()
        .map(|(cluster, replica, value)| NumberDataPoint {
            attributes: vec![kv("cluster", cluster), kv("__replica__", replica)],
            time_unix_nano: now_ms() as u64 * 1_000_000,
            value: Some(number_data_point::Value::AsDouble(*value)),
            ..NumberDataPoint::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "temperature".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: points,
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

#[tokio::test]
async fn otlp_series_are_decided_on_their_translated_labels() {
    let (relay, backend) = relay().await;
    let token = tenant(
        &relay,
        "otel",
        json!({"accept_ha_samples": true, "ha_max_clusters": 1}),
    )
    .await;
    let post = |body: Vec<u8>| {
        relay
            .http
            .post(format!("http://{}/otlp/v1/metrics", relay.data_addr))
            .bearer_auth(&token)
            .header("Content-Type", "application/x-protobuf")
            .body(body)
            .send()
    };
    let response = post(otlp_export(&[("east", "a", 1.0)]))
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    // b's point is dropped (and not reported as rejected); a new cluster past the
    // limit of one is a partial success.
    let response = post(otlp_export(&[
        ("east", "b", 2.0),
        ("east", "a", 3.0),
        ("west", "a", 4.0),
    ]))
    .await
    .expect("sent");
    assert_eq!(response.status(), 200);
    let answer =
        ExportMetricsServiceResponse::decode(response.bytes().await.expect("body")).expect("pb");
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("HA clusters reached"),
        "{partial:?}"
    );
    let written = last_written(&backend);
    assert_eq!(written.len(), 1);
    assert_eq!(label_value(&written[0], "cluster"), ["east"]);
    assert!(label_value(&written[0], "__replica__").is_empty());
    assert_eq!(written[0].samples[0].value, 3.0);
}

#[tokio::test]
async fn the_admin_api_and_the_cli_show_each_clusters_election() {
    let (relay, _backend) = relay().await;
    let token = tenant(
        &relay,
        "shown",
        json!({"accept_ha_samples": true, "ha_failover_timeout": "10s"}),
    )
    .await;
    let body = request(&[
        &[("job", "j"), ("cluster", "prod"), ("__replica__", "r1")],
        &[("job", "j"), ("cluster", "prod"), ("__replica__", "r2")],
    ]);
    assert_eq!(relay.write(&token, snappy_body(&body)).await.status(), 204);
    let (status, answer) = relay
        .admin(reqwest::Method::GET, "/admin/v1/tenants/shown/ha", None)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accept_ha_samples"], true);
    assert_eq!(answer["ha_failover_timeout"], "10s");
    let clusters = answer["clusters"].as_array().expect("clusters");
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0]["cluster"], "prod");
    assert_eq!(clusters[0]["elected_replica"], "r1");
    assert_eq!(clusters[0]["changes"], 0);
    for field in ["elected_at", "received_at"] {
        let text = clusters[0][field].as_str().expect(field);
        humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("{field} {text}: {err}"));
    }
    let (status, _) = relay
        .admin(reqwest::Method::GET, "/admin/v1/tenants/nobody/ha", None)
        .await;
    assert_eq!(status, 404);

    let cli = |output: &'static str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_promgate"));
        command
            .args(["tenant", "ha", "shown", "--output", output])
            .arg("--admin-token-file")
            .arg(relay.dir.path().join("promgate-admin.token"))
            .env("PROMGATE_ADMIN_URL", format!("http://{}", relay.admin_addr))
            .env_remove("PROMGATE_ADMIN_TOKEN_FILE");
        command.output()
    };
    let json_output = cli("json").await.expect("run promgate");
    assert!(json_output.status.success(), "{json_output:?}");
    let shown: Value = serde_json::from_slice(&json_output.stdout).expect("json");
    assert_eq!(shown["clusters"][0]["elected_replica"], "r1");
    let table = cli("table").await.expect("run promgate");
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8(table.stdout).expect("utf-8");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[1].starts_with("CLUSTER"), "{table}");
    assert!(
        lines[2].starts_with("prod") && lines[2].contains("r1") && lines[2].ends_with('0'),
        "{table}"
    );
}
