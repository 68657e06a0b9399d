//! Per-tenant `write_relabel_configs` (DESIGN §16) through the promgate binary into
//! recording fake backends: a drop rule answered 2xx with its samples counted, a
//! high-cardinality label dropped (and the active series limit counting what the rules
//! left), rules that try to set or drop the tenant label or an extra label changing
//! nothing, for remote write 1.0, 2.0 and OTLP; invalid rules refused with their index
//! by the admin API and the CLI.

mod common;

use common::binary::PromgateBinary;
use common::{backends_toml, label_value, now_ms, series, snappy_body, FakeBackend};
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

const V2_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// Drop a noisy metric, drop a high-cardinality label, and try (in vain) to remove the
/// tenant label and the `team` extra label and to set them to other values.
fn rules() -> Value {
    json!([
        {"source_labels": ["__name__"], "regex": "go_gc_.*", "action": "drop"},
        {"regex": "pod_uid", "action": "labeldrop"},
        {"regex": "tenant_id|team", "action": "labeldrop"},
        {"target_label": "tenant_id", "replacement": "victim"},
        {"target_label": "team", "replacement": "other"},
        {"source_labels": ["job"], "target_label": "service", "regex": "api-(.*)", "replacement": "$1"}
    ])
}

struct Setup {
    _root: tempfile::TempDir,
    promgate: PromgateBinary,
    v1: FakeBackend,
    v2: FakeBackend,
}

async fn setup() -> Setup {
    let root = tempfile::tempdir().expect("tempdir");
    let v1 = FakeBackend::start().await;
    let v2 = FakeBackend::start().await;
    let toml = format!(
        "{}[[backends]]\nname = \"b1\"\nwrite_url = \"{}\"\nprotocol = \"2.0\"\ntimeout = \"2s\"\n",
        backends_toml(&[&v1]),
        v2.write_url()
    );
    let promgate = PromgateBinary::start(root.path(), "", &toml).await;
    Setup {
        _root: root,
        promgate,
        v1,
        v2,
    }
}

impl Setup {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .promgate
            .http
            .request(method, format!("{}{path}", self.promgate.admin_url))
            .bearer_auth(&self.promgate.admin_token)
            .json(&body)
            .send()
            .await
            .expect("admin call");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates `id` with `spec` (plus its id) and returns a token for it.
    async fn tenant(&self, id: &str, mut spec: Value) -> String {
        spec["id"] = json!(id);
        let (status, answer) = self
            .admin(reqwest::Method::POST, "/admin/v1/tenants", spec)
            .await;
        assert_eq!(status, 201, "{answer}");
        let (status, issued) = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/v1/tenants/{id}/tokens"),
                json!({}),
            )
            .await;
        assert_eq!(status, 201, "{issued}");
        issued["token"].as_str().expect("token").to_string()
    }

    async fn write_v1(&self, token: &str, request: &WriteRequest) -> reqwest::Response {
        self.promgate
            .http
            .post(self.promgate.write_url())
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(snappy_body(request))
            .send()
            .await
            .expect("write")
    }
}

fn last_written(backend: &FakeBackend) -> Vec<TimeSeries> {
    backend
        .requests()
        .last()
        .expect("a write reached the backend")
        .write_request()
        .timeseries
}

/// Each series as `name{label=value,…}`, labels in the order they were sent.
fn shown(written: &[TimeSeries]) -> Vec<String> {
    written
        .iter()
        .map(|series| {
            let labels: Vec<String> = series
                .labels
                .iter()
                .map(|label| format!("{}={}", label.name, label.value))
                .collect();
            labels.join(",")
        })
        .collect()
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

/// The series every protocol sends: one noisy metric, two series that differ only in a
/// high-cardinality label, one forging the tenant label and the extra label.
fn sent_labels() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![("__name__", "go_gc_duration_seconds"), ("job", "api-web")],
        vec![("__name__", "up"), ("job", "api-web"), ("pod_uid", "1111")],
        vec![("__name__", "up"), ("job", "api-web"), ("pod_uid", "2222")],
        vec![
            ("__name__", "up"),
            ("job", "db"),
            ("team", "forged"),
            ("tenant_id", "forged"),
        ],
    ]
}

const EXPECTED: [&str; 3] = [
    "__name__=up,job=api-web,service=web,team=a,tenant_id=relab",
    "__name__=up,job=api-web,service=web,team=a,tenant_id=relab",
    "__name__=up,job=db,team=a,tenant_id=relab",
];

fn v1_request() -> WriteRequest {
    let now = now_ms();
    WriteRequest {
        timeseries: sent_labels()
            .iter()
            .enumerate()
            .map(|(i, labels)| series(labels, i as f64, now + i as i64))
            .collect(),
        metadata: vec![],
    }
}

#[tokio::test]
async fn remote_write_1_is_relabeled_before_enforcement() {
    let setup = setup().await;
    // At most two active series: the two pods become one series once pod_uid is gone,
    // so the limit (which counts what the rules left) is not reached.
    let token = setup
        .tenant(
            "relab",
            json!({"extra_labels": {"team": "a"}, "limits": {"max_active_series": 2},
                   "write_relabel_configs": rules()}),
        )
        .await;
    let response = setup.write_v1(&token, &v1_request()).await;
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    for backend in [&setup.v1, &setup.v2] {
        assert_eq!(shown(&last_written(backend)), EXPECTED);
    }
    let metrics = setup.promgate.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "promgate_relabel_dropped_samples_total",
            "tenant=\"relab\""
        ),
        1.0
    );
    // A request whose every series a rule drops is still 2xx, and counted.
    let noisy = WriteRequest {
        timeseries: vec![series(&[("__name__", "go_gc_heap")], 1.0, now_ms())],
        metadata: vec![],
    };
    let before = setup.v1.requests().len();
    assert_eq!(setup.write_v1(&token, &noisy).await.status(), 204);
    assert_eq!(setup.v1.requests().len(), before, "nothing left to forward");
    let metrics = setup.promgate.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "promgate_relabel_dropped_samples_total",
            "tenant=\"relab\""
        ),
        2.0
    );
}

#[tokio::test]
async fn rules_on_the_tenant_label_change_nothing_that_reaches_the_backend() {
    let setup = setup().await;
    let tamper_rules = json!([
        {"regex": "tenant_id|team", "action": "labeldrop"},
        {"target_label": "tenant_id", "replacement": "plain"},
        {"source_labels": ["job"], "target_label": "team", "replacement": "stolen-$1"},
        {"regex": "(team)", "replacement": "tenant_id", "action": "labelmap"}
    ]);
    let plain = setup
        .tenant("plain", json!({"extra_labels": {"team": "a"}}))
        .await;
    let tamper = setup
        .tenant(
            "tamper",
            json!({"label_value": "plain-twin", "extra_labels": {"team": "a"},
                   "write_relabel_configs": tamper_rules}),
        )
        .await;
    let request = v1_request();
    assert_eq!(setup.write_v1(&plain, &request).await.status(), 204);
    let without_rules = shown(&last_written(&setup.v1));
    assert_eq!(setup.write_v1(&tamper, &request).await.status(), 204);
    let with_rules = shown(&last_written(&setup.v1));
    // Identical but for the tenant label's value: the rules set and dropped nothing.
    let expected: Vec<String> = without_rules
        .iter()
        .map(|series| series.replace("tenant_id=plain", "tenant_id=plain-twin"))
        .collect();
    assert_eq!(with_rules, expected);
    assert!(with_rules
        .iter()
        .all(|series| series.ends_with("team=a,tenant_id=plain-twin")));
}

fn v2_request() -> v2::Request {
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
    let now = now_ms();
    let timeseries = sent_labels()
        .iter()
        .enumerate()
        .map(|(i, labels)| v2::TimeSeries {
            labels_refs: labels
                .iter()
                .flat_map(|(name, value)| [intern(name), intern(value)])
                .collect(),
            samples: vec![v2::Sample {
                value: i as f64,
                timestamp: now + i as i64,
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
async fn remote_write_2_is_relabeled_before_enforcement() {
    let setup = setup().await;
    let token = setup
        .tenant(
            "relab",
            json!({"extra_labels": {"team": "a"}, "write_relabel_configs": rules()}),
        )
        .await;
    let body = snap::raw::Encoder::new()
        .compress_vec(&v2_request().encode_to_vec())
        .expect("snappy");
    let response = setup
        .promgate
        .http
        .post(setup.promgate.write_url())
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", V2_TYPE)
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .body(body)
        .send()
        .await
        .expect("write");
    assert_eq!(response.status(), 204);
    // What was written: the dropped series is not.
    assert_eq!(
        response.headers()["x-prometheus-remote-write-samples-written"],
        "3"
    );
    // The 1.0 backend gets it converted.
    assert_eq!(shown(&last_written(&setup.v1)), EXPECTED);
    // The 2.0 backend gets 2.0, its labels resolved through the symbol table.
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&setup.v2.requests().last().expect("v2 write").body)
        .expect("snappy");
    let request = v2::Request::decode(raw.as_slice()).expect("v2");
    let resolved: Vec<String> = request
        .timeseries
        .iter()
        .map(|series| {
            series
                .labels_refs
                .chunks_exact(2)
                .map(|pair| {
                    format!(
                        "{}={}",
                        request.symbols[pair[0] as usize], request.symbols[pair[1] as usize]
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    assert_eq!(resolved, EXPECTED);
    let metrics = setup.promgate.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "promgate_relabel_dropped_samples_total",
            "tenant=\"relab\""
        ),
        1.0
    );
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

/// Gauges named as the remote-write series, their other labels as point attributes.
fn otlp_export() -> Vec<u8> {
    let metrics = sent_labels()
        .iter()
        .enumerate()
        .map(|(i, labels)| Metric {
            name: labels[0].1.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    attributes: labels[1..]
                        .iter()
                        .map(|(name, value)| kv(name, value))
                        .collect(),
                    time_unix_nano: (now_ms() + i as i64) as u64 * 1_000_000,
                    value: Some(number_data_point::Value::AsDouble(i as f64)),
                    ..NumberDataPoint::default()
                }],
            })),
            ..Metric::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test]
async fn otlp_is_relabeled_after_translation_and_before_enforcement() {
    let setup = setup().await;
    let token = setup
        .tenant(
            "relab",
            json!({"extra_labels": {"team": "a"}, "write_relabel_configs": rules()}),
        )
        .await;
    let response = setup
        .promgate
        .http
        .post(format!("{}/otlp/v1/metrics", setup.promgate.data_url))
        .bearer_auth(&token)
        .header("Content-Type", "application/x-protobuf")
        .body(otlp_export())
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let answer =
        ExportMetricsServiceResponse::decode(response.bytes().await.expect("body")).expect("pb");
    // A dropped series is not a rejected point.
    assert!(
        answer
            .partial_success
            .is_none_or(|partial| partial.rejected_data_points == 0),
        "no point rejected"
    );
    let written = last_written(&setup.v1);
    assert_eq!(shown(&written), EXPECTED);
    for series in &written {
        assert!(label_value(series, "pod_uid").is_empty());
    }
    let metrics = setup.promgate.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "promgate_relabel_dropped_samples_total",
            "tenant=\"relab\""
        ),
        1.0
    );
}

#[tokio::test]
async fn invalid_rules_are_refused_with_their_index() {
    let setup = setup().await;
    let bad = json!([
        {"source_labels": ["__name__"], "regex": "go_.*", "action": "drop"},
        {"source_labels": ["instance"], "target_label": "shard", "action": "hashmod"},
        {"source_labels": ["a"], "regex": "(unclosed", "action": "keep"},
        {"action": "explode"}
    ]);
    let (status, answer) = setup
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants",
            json!({"id": "bad", "write_relabel_configs": bad}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let error = answer.to_string();
    for expected in [
        "write_relabel_configs[1]: hashmod requires a non-zero modulus",
        "write_relabel_configs[2]: regex \\\"(unclosed\\\" is invalid",
        "write_relabel_configs[3]: unknown action \\\"explode\\\"",
    ] {
        assert!(error.contains(expected), "{error} should say {expected}");
    }
    assert!(!error.contains("write_relabel_configs[0]"), "{error}");
    // Nothing was created.
    let (status, _) = setup
        .admin(reqwest::Method::GET, "/admin/v1/tenants/bad", Value::Null)
        .await;
    assert_eq!(status, 404);
    // A PATCH with a bad rule changes nothing; a good one is stored and shown, with
    // Prometheus' defaults filled in.
    setup.tenant("good", json!({})).await;
    let (status, answer) = setup
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/good",
            json!({"write_relabel_configs": [{"action": "labeldrop", "regex": "x", "target_label": "y"}]}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("write_relabel_configs[0]: labeldrop takes only a regex"),
        "{answer}"
    );
    let (status, answer) = setup
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/good",
            json!({"write_relabel_configs": [{"regex": "pod_uid", "action": "labeldrop"}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, shown) = setup
        .admin(reqwest::Method::GET, "/admin/v1/tenants/good", Value::Null)
        .await;
    assert_eq!(
        shown["write_relabel_configs"],
        json!([{"separator": ";", "regex": "pod_uid", "replacement": "$1", "action": "labeldrop"}])
    );
    // An unknown field is named with its rule's index.
    let (status, answer) = setup
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/good",
            json!({"write_relabel_configs": [{"regex": "a", "action": "labeldrop"}, {"acton": "drop"}]}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("write_relabel_configs.?.1.acton"),
        "{answer}"
    );
}

/// `promgate tenant create|update --relabel-file`, and the API's refusal on one line.
#[tokio::test]
async fn the_cli_sets_rules_from_a_file_and_shows_refusals() {
    let setup = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("rules.json");
    std::fs::write(&good, rules().to_string()).expect("write rules");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"regex": "a", "action": "labeldrop"}, {"action": "replace"}]"#,
    )
    .expect("write rules");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, &setup.promgate.admin_token).expect("token file");
    let run = |args: Vec<String>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_promgate"));
        command
            .args(&args)
            .arg("--admin-url")
            .arg(&setup.promgate.admin_url)
            .arg("--admin-token-file")
            .arg(&token_file)
            .env_remove("PROMGATE_ADMIN_URL")
            .env_remove("PROMGATE_ADMIN_TOKEN_FILE");
        command.output().expect("run promgate")
    };
    let path = |path: &std::path::Path| path.display().to_string();
    let refused = run(vec![
        "tenant".into(),
        "create".into(),
        "cli".into(),
        "--relabel-file".into(),
        path(&bad),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("write_relabel_configs[1]: replace requires a target_label"),
        "{stderr}"
    );
    let created = run(vec![
        "tenant".into(),
        "create".into(),
        "cli".into(),
        "--relabel-file".into(),
        path(&good),
        "--output".into(),
        "json".into(),
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let tenant: Value = serde_json::from_slice(&created.stdout).expect("json");
    assert_eq!(
        tenant["write_relabel_configs"].as_array().map(Vec::len),
        Some(6)
    );
    let table = run(vec!["tenant".into(), "get".into(), "cli".into()]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("6 rule(s): replace") || table.contains("6 rule(s): drop"),
        "{table}"
    );
    let refused = run(vec![
        "tenant".into(),
        "update".into(),
        "cli".into(),
        "--relabel-file".into(),
        path(&bad),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let cleared = run(vec![
        "tenant".into(),
        "update".into(),
        "cli".into(),
        "--clear-relabel".into(),
        "--output".into(),
        "json".into(),
    ]);
    assert!(cleared.status.success());
    let tenant: Value = serde_json::from_slice(&cleared.stdout).expect("json");
    assert_eq!(tenant["write_relabel_configs"], json!([]));
}
