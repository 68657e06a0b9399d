//! End to end with a real OpenTelemetry SDK: the Python `opentelemetry-sdk` and its
//! OTLP/HTTP exporter (from PyPI, installed by this test into a cached virtualenv) export
//! counters with units, up-down counters, gauges, an explicit-bucket histogram and
//! resource attributes to the promgate binary, which forwards to a Prometheus 2.42
//! remote-write receiver (through its durable queue: `delivery = "queued"`) and a
//! VictoriaMetrics single node (synchronously). Both are then queried for exactly the
//! series Prometheus 3's own OTLP receiver makes of the same export under its default
//! settings, plus `tenant_id`. No installable Prometheus has that receiver (Debian's
//! builds remove it), so the expected series are derived from its translation rules
//! (prometheus/prometheus `storage/remote/otlptranslator/prometheusremotewrite` and
//! prometheus/otlptranslator); each expectation names the rule it comes from. A second
//! test sends exponential histograms into a Prometheus with native histograms enabled.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::stack::Stack;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};

type Series = BTreeMap<String, String>;

const REQUIREMENTS: &str = include_str!("otlp/requirements.txt");

/// A virtualenv with the pinned SDK and exporter, made once per requirements under
/// the target directory and reused (idempotent: built aside, then renamed into place).
/// Fails loudly when Python, venv or PyPI are not available.
fn python_sdk() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let digest = hex::encode(&Sha256::digest(REQUIREMENTS.as_bytes())[..8]);
            let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("otel-venv-{digest}"));
            let python = root.join("bin").join("python");
            if root.join("promgate-ready").exists() {
                return python;
            }
            let building = root.with_extension(format!("building-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&building);
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&building),
                "python3 -m venv (on Debian: apt-get install python3-venv)",
            );
            let requirements =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/requirements.txt");
            run(
                Command::new(building.join("bin").join("python"))
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "-r",
                    ])
                    .arg(&requirements),
                "pip install of the OpenTelemetry Python SDK (needs PyPI)",
            );
            std::fs::write(building.join("promgate-ready"), REQUIREMENTS).expect("marker");
            if std::fs::rename(&building, &root).is_err() {
                // Another test process got there first.
                let _ = std::fs::remove_dir_all(&building);
                assert!(
                    root.join("promgate-ready").exists(),
                    "virtualenv at {}",
                    root.display()
                );
            }
            python
        })
        .clone()
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `tests/otlp/export.py MODE ENDPOINT TOKEN_FILE` and returns its JSON.
async fn export(mode: &str, endpoint: &str, token_file: &Path) -> Value {
    let python = tokio::task::spawn_blocking(python_sdk).await.expect("venv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/export.py");
    let mut command = Command::new(python);
    command.arg(script).arg(mode).arg(endpoint).arg(token_file);
    // Nothing from the environment may change the resource or the exporter.
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let stdout = tokio::task::spawn_blocking(move || run(&mut command, "export.py"))
        .await
        .expect("export.py");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("export.py printed {stdout:?}: {err}"))
}

/// Every series `selector` selects now, with its value.
async fn query(http: &reqwest::Client, base: &str, selector: &str) -> BTreeMap<Series, f64> {
    let Ok(response) = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", selector)])
        .send()
        .await
    else {
        return BTreeMap::new();
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|result| {
            let labels = result["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = result["value"][1]
                .as_str()
                .and_then(|text| text.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

/// Polls until `selector` gives `want` on `base`, or fails with what it gave.
async fn until_equal(stack: &mut Stack, base: &str, selector: &str, want: &BTreeMap<Series, f64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        stack.promgate.process.assert_running();
        let got = query(&stack.http, base, selector).await;
        if &got == want {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .collect();
            let unexpected: Vec<_> = got
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .collect();
            panic!(
                "{base}: {selector} gave {} series, want {}\nmissing or different: {missing:#?}\nunexpected: {unexpected:#?}\npromgate log:\n{}",
                got.len(),
                want.len(),
                stack.promgate.process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    // `createAttributes`: job = service.namespace "/" service.name, instance =
    // service.instance.id on every series; then promgate's tenant label.
    let mut series: Series = [
        ("__name__", name),
        ("job", "shop/checkout"),
        ("instance", "checkout-1"),
        ("tenant_id", "alpha"),
    ]
    .into_iter()
    .chain(labels.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    series.insert("tenant_id".into(), "alpha".into());
    series
}

/// What Prometheus 3's OTLP receiver (default settings) makes of `export.py
/// cumulative`, stamped with tenant alpha.
fn expected(sdk_version: &str) -> BTreeMap<Series, f64> {
    // LabelNamer: the `http.route` attribute.
    let route = [("http_route", "/checkout")];
    let mut want = BTreeMap::new();
    // MetricNamer: a monotonic cumulative sum gets `_total`; `{request}` is an annotation
    // and adds no unit; LabelNamer: `.` becomes `_`; int attributes print in decimal.
    want.insert(
        series(
            "http_server_requests_total",
            &[("http_method", "GET"), ("http_status_code", "200")],
        ),
        3.0,
    );
    // The same, with a spoofed `tenant_id` data-point attribute: promgate's enforcement
    // overrides it with the caller's tenant.
    want.insert(
        series(
            "http_server_requests_total",
            &[("http_method", "POST"), ("http_status_code", "500")],
        ),
        2.0,
    );
    // unitMap: By -> bytes, s -> seconds; the unit before `_total`.
    want.insert(series("network_io_bytes_total", &[]), 1536.0);
    want.insert(series("job_runtime_seconds_total", &[]), 2.5);
    // normalizeName: an existing `total` token moves to the end, never doubles; unit "1"
    // adds nothing to a counter (`_ratio` is for gauges only).
    want.insert(series("cache_hits_total", &[]), 7.0);
    // Non-monotonic sums (up-down counters) get no `_total`; `{item}` adds nothing.
    want.insert(series("queue_depth", &[]), 6.0);
    want.insert(series("pool_size_bytes", &[]), 4096.0);
    // A gauge of unit "1" gets `_ratio`.
    want.insert(series("cpu_utilization_ratio", &[]), 0.42);
    // MiBy -> mebibytes; LabelNamer under Prometheus' defaults: `key_` before a leading
    // digit, `key` before a single leading `_`.
    want.insert(
        series(
            "disk_free_mebibytes",
            &[
                ("mount_point", "/"),
                ("key_1st_disk", "yes"),
                ("key_private", "p"),
            ],
        ),
        512.0,
    );
    // Cel -> celsius (observable gauge).
    want.insert(series("room_temperature_celsius", &[("room", "lab")]), 21.5);
    // addHistogramDataPoints: ms -> milliseconds; `_sum`, `_count`, cumulative buckets
    // with `le` as FormatFloat(bound, 'f', -1), and `+Inf` holding the count. Recorded
    // 5, 20, 70, 200, 30 into bounds [10, 50, 100].
    let base = "http_server_duration_milliseconds";
    for (le, count) in [("10", 1.0), ("50", 3.0), ("100", 4.0), ("+Inf", 5.0)] {
        let mut labels = route.to_vec();
        labels.push(("le", le));
        want.insert(series(&format!("{base}_bucket"), &labels), count);
    }
    want.insert(series(&format!("{base}_sum"), &route), 325.0);
    want.insert(series(&format!("{base}_count"), &route), 5.0);
    // addResourceTargetInfo: the resource's other attributes (the SDK adds
    // telemetry.sdk.*) with job and instance, value 1; the identifying service.*
    // attributes are left out; the spoofed `tenant_id` resource attribute is overridden.
    want.insert(
        series(
            "target_info",
            &[
                ("deployment_environment", "e2e"),
                ("host_name", "otel-host"),
                ("telemetry_sdk_language", "python"),
                ("telemetry_sdk_name", "opentelemetry"),
                ("telemetry_sdk_version", sdk_version),
            ],
        ),
        1.0,
    );
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_exports_through_promgate_into_prometheus_and_victoria_metrics() {
    // Built first: a first run spends its time in pip, not while the stack waits.
    tokio::task::spawn_blocking(python_sdk).await.expect("venv");
    let mut stack = Stack::start_configured(true, "", "delivery = \"queued\"", "").await;
    let token_file = stack.add_tenant("alpha").await;
    let prometheus = stack.prometheus_url.clone();
    let victoria = stack.victoria.as_ref().expect("victoria").1.clone();

    let endpoint = format!("{}/otlp/v1/metrics", stack.promgate.data_url);
    let answer = export("cumulative", &endpoint, &token_file).await;
    assert_eq!(answer["result"], "SUCCESS", "{answer}");
    let want = expected(answer["sdk_version"].as_str().expect("sdk version"));
    let all = "{__name__=~\".+\"}";
    // Prometheus via the queued delivery, VictoriaMetrics synchronously: the same series.
    until_equal(&mut stack, &prometheus, all, &want).await;
    until_equal(&mut stack, &victoria, all, &want).await;

    // Delta temporality, on the other route: the exporter's delta-only export is refused
    // whole (400); a mixed request is answered 200 with partial_success naming it, and
    // its cumulative gauge arrives.
    let endpoint = format!("{}/api/v1/otlp/v1/metrics", stack.promgate.data_url);
    let answer = export("delta", &endpoint, &token_file).await;
    assert_eq!(answer["result"], "FAILURE", "{answer}");
    assert_eq!(answer["mixed_status"], 200, "{answer}");
    assert_eq!(answer["mixed_content_type"], "application/x-protobuf");
    let body = hex::decode(answer["mixed_body_hex"].as_str().expect("hex")).expect("hex");
    let response = ExportMetricsServiceResponse::decode(&body[..]).expect("protobuf answer");
    let partial = response.partial_success.expect("partial_success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial
            .error_message
            .contains("\"mixed.delta.requests\" has delta temporality"),
        "{}",
        partial.error_message
    );
    let mut want_after = want.clone();
    want_after.insert(series("mixed_gauge", &[]), 1.0);
    until_equal(&mut stack, &prometheus, all, &want_after).await;
    until_equal(&mut stack, &victoria, all, &want_after).await;

    let metrics = stack.promgate.metrics().await;
    for needle in [
        r#"promgate_requests_total{endpoint="otlp",tenant="alpha",code="200"} 2"#,
        r#"promgate_requests_total{endpoint="otlp",tenant="alpha",code="400"} 1"#,
        r#"promgate_otlp_data_points_total{tenant="alpha",outcome="rejected"} 2"#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

/// Exponential histograms become native histograms (`exponentialToNativeHistogram`) that
/// a real Prometheus 2.42 with native histograms enabled stores and queries: count and
/// sum as recorded, the median in the right bucket; a histogram the SDK keeps at scale
/// 20 is merged down to schema 8 first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_histograms_arrive_as_native_histograms() {
    tokio::task::spawn_blocking(python_sdk).await.expect("venv");
    let mut stack =
        Stack::start_with_backend_flags(false, "", "", "", &["--enable-feature=native-histograms"])
            .await;
    let token_file = stack.add_tenant("alpha").await;
    let endpoint = format!("{}/otlp/v1/metrics", stack.promgate.data_url);
    let answer = export("exponential", &endpoint, &token_file).await;
    assert_eq!(answer["result"], "SUCCESS", "{answer}");
    // The SDK's own scales: the spread one downscaled below 8, the single value at 20.
    let scales = &answer["scales"];
    assert!(
        scales["payload.size"][0].as_i64().expect("scale") <= 8,
        "{answer}"
    );
    assert_eq!(scales["single.latency"][0], 20, "{answer}");
    let prometheus = stack.prometheus_url.clone();
    let tenant = r#"tenant_id="alpha",job="shop/checkout",instance="checkout-1""#;
    let mut want = BTreeMap::new();
    for (query, value) in [
        // MetricNamer: By -> bytes, s -> seconds; no suffixes for the native series.
        (
            format!("histogram_count(payload_size_bytes{{{tenant}}})"),
            6.0,
        ),
        (
            format!("histogram_sum(payload_size_bytes{{{tenant}}})"),
            1106.5,
        ),
        (
            format!("histogram_count(single_latency_seconds{{{tenant}}})"),
            3.0,
        ),
        (
            format!("histogram_sum(single_latency_seconds{{{tenant}}})"),
            0.75,
        ),
    ] {
        want.insert(query, value);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        stack.promgate.process.assert_running();
        let mut got = BTreeMap::new();
        for query in want.keys() {
            if let Some(value) = query_one(&stack.http, &prometheus, query).await {
                got.insert(query.clone(), value);
            }
        }
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "got {got:?}, want {want:?}\npromgate log:\n{}\nprometheus log:\n{}",
            stack.promgate.process.log_tail(),
            stack.backend.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The median of 0.25 recorded three times lies in the bucket holding 0.25 at
    // schema 8: within a factor of 2^(1/256) of it.
    let median = query_one(
        &stack.http,
        &prometheus,
        &format!("histogram_quantile(0.5, single_latency_seconds{{{tenant}}})"),
    )
    .await
    .expect("median");
    assert!((median / 0.25 - 1.0).abs() < 0.003, "{median}");
    // Native histograms only: no classic series were made.
    let classic = query(&stack.http, &prometheus, "{__name__=~\".*_bucket\"}").await;
    assert!(classic.is_empty(), "{classic:?}");
}

/// The single value of an instant query that gives one series.
async fn query_one(http: &reqwest::Client, base: &str, expression: &str) -> Option<f64> {
    let result = query(http, base, expression).await;
    (result.len() == 1)
        .then(|| result.values().next().copied())
        .flatten()
}
