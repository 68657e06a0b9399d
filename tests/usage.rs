//! Usage accounting (DESIGN §17) against what a recording backend received: two promgate
//! binaries on one PostgreSQL registry and one on SQLite take known traffic (remote write
//! 1.0 and 2.0 with exemplars and histograms, writes throttled by the sample rate, a write
//! with series over the active series limit, remote reads, queries, OTLP exports), and
//! `GET /admin/v1/usage` then shows exactly what the backend got, what was refused, the
//! bytes and requests the test sent and the series it created. A clean stop writes what
//! was counted since the last flush; after `kill -9` and a restart nothing is counted
//! twice; the CSV says what the JSON says (also through `promgate usage`); the tenant
//! filter and the date range select the rows they name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::postgres::Postgres;
use common::{now_ms, read_body, FakeBackend};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use promgate::proto::{histogram, write_v2, Exemplar, Histogram, Label, Sample, TimeSeries};
use promgate::tenant::store::{Store, UsageTotals};
use promgate::usage::{format_day, today, Field, Figures, ALL_FIELDS};
use prost::Message;
use serde_json::{json, Value};

/// A tenant's expected figures, by column.
type Expected = BTreeMap<String, BTreeMap<&'static str, u64>>;

/// Distinct label sets by tenant and round.
type SeriesByRound = BTreeMap<(String, String), BTreeSet<Vec<(String, String)>>>;

/// Adds to a column; a zero leaves it out (as the report's zero columns are).
fn add(expected: &mut Expected, tenant: &str, column: &'static str, value: u64) {
    if value == 0 {
        return;
    }
    *expected
        .entry(tenant.to_string())
        .or_default()
        .entry(column)
        .or_insert(0) += value;
}

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).expect("snappy")
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.into(),
        value: value.into(),
    }
}

fn native_histogram(timestamp: i64) -> Histogram {
    Histogram {
        count: Some(histogram::Count::CountInt(3)),
        sum: 1.5,
        schema: 0,
        zero_threshold: 1e-128,
        zero_count: Some(histogram::ZeroCount::ZeroCountInt(1)),
        timestamp,
        ..Histogram::default()
    }
}

/// A remote write 1.0 body: `series` float series of two samples each (the first with an
/// exemplar) and one histogram series of two histogram samples, named with `tag`.
fn v1_body(tag: &str, series: usize) -> Vec<u8> {
    let now = now_ms();
    let mut request = promgate::proto::WriteRequest::default();
    for index in 0..series {
        request.timeseries.push(TimeSeries {
            labels: vec![
                label("__name__", &format!("requests_{tag}")),
                label("path", &format!("/p{index}")),
            ],
            samples: vec![
                Sample {
                    value: 1.0,
                    timestamp: now - 1_000,
                },
                Sample {
                    value: 2.0,
                    timestamp: now,
                },
            ],
            exemplars: if index == 0 {
                vec![Exemplar {
                    labels: vec![label("trace_id", "abc")],
                    value: 2.0,
                    timestamp: now,
                }]
            } else {
                Vec::new()
            },
            histograms: Vec::new(),
        });
    }
    request.timeseries.push(TimeSeries {
        labels: vec![label("__name__", &format!("latency_{tag}"))],
        histograms: vec![native_histogram(now - 1_000), native_histogram(now)],
        ..TimeSeries::default()
    });
    request.encode_to_vec()
}

/// A remote write 2.0 body: a float series with an exemplar and a histogram series.
fn v2_body(tag: &str) -> Vec<u8> {
    let now = now_ms();
    let request = write_v2::Request {
        symbols: vec![
            String::new(),
            "__name__".into(),
            format!("jobs_{tag}"),
            format!("sizes_{tag}"),
            "trace_id".into(),
            "def".into(),
        ],
        timeseries: vec![
            write_v2::TimeSeries {
                labels_refs: vec![1, 2],
                samples: vec![write_v2::Sample {
                    value: 3.0,
                    timestamp: now,
                    ..write_v2::Sample::default()
                }],
                exemplars: vec![write_v2::Exemplar {
                    labels_refs: vec![4, 5],
                    value: 3.0,
                    timestamp: now,
                }],
                ..write_v2::TimeSeries::default()
            },
            write_v2::TimeSeries {
                labels_refs: vec![1, 3],
                histograms: vec![write_v2::Histogram {
                    count: Some(write_v2::histogram::Count::CountInt(2)),
                    sum: 4.0,
                    zero_threshold: 1e-128,
                    zero_count: Some(write_v2::histogram::ZeroCount::ZeroCountInt(2)),
                    timestamp: now,
                    ..write_v2::Histogram::default()
                }],
                ..write_v2::TimeSeries::default()
            },
        ],
    };
    request.encode_to_vec()
}

/// A float-only 1.0 body of `series` series of one sample, named with `tag`.
fn flat_body(name: &str, series: usize) -> Vec<u8> {
    let now = now_ms();
    promgate::proto::WriteRequest {
        timeseries: (0..series)
            .map(|index| TimeSeries {
                labels: vec![label("__name__", name), label("n", &index.to_string())],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: now,
                }],
                ..TimeSeries::default()
            })
            .collect(),
        ..promgate::proto::WriteRequest::default()
    }
    .encode_to_vec()
}

/// An OTLP export of a gauge with two points (two series), named with `tag`.
fn otlp_body(tag: &str) -> Vec<u8> {
    let point = |host: &str| NumberDataPoint {
        attributes: vec![KeyValue {
            key: "host".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(host.into())),
            }),
            ..KeyValue::default()
        }],
        time_unix_nano: now_ms() as u64 * 1_000_000,
        value: Some(number_data_point::Value::AsDouble(21.5)),
        ..NumberDataPoint::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: format!("temperature_{tag}"),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![point("a"), point("b")],
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

/// One promgate's data listener, as a sender sees it.
struct Sender<'a> {
    http: &'a reqwest::Client,
    data_url: &'a str,
}

impl Sender<'_> {
    async fn write(&self, token: &str, raw: &[u8], v2: bool) -> (u16, u64) {
        let body = snappy(raw);
        let length = body.len() as u64;
        let content_type = if v2 {
            "application/x-protobuf;proto=io.prometheus.write.v2.Request"
        } else {
            "application/x-protobuf"
        };
        let status = self
            .http
            .post(format!("{}/api/v1/write", self.data_url))
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", content_type)
            .header(
                "X-Prometheus-Remote-Write-Version",
                if v2 { "2.0.0" } else { "0.1.0" },
            )
            .body(body)
            .send()
            .await
            .expect("write")
            .status()
            .as_u16();
        (status, length)
    }

    async fn otlp(&self, token: &str, raw: Vec<u8>) -> u16 {
        self.http
            .post(format!("{}/otlp/v1/metrics", self.data_url))
            .bearer_auth(token)
            .header("Content-Type", "application/x-protobuf")
            .body(raw)
            .send()
            .await
            .expect("otlp")
            .status()
            .as_u16()
    }

    async fn read(&self, token: &str) -> u16 {
        self.http
            .post(format!("{}/api/v1/read", self.data_url))
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Read-Version", "0.1.0")
            .body(read_body(Vec::new()))
            .send()
            .await
            .expect("read")
            .status()
            .as_u16()
    }

    async fn query(&self, token: &str) -> u16 {
        self.http
            .get(format!("{}/api/v1/query", self.data_url))
            .query(&[("query", "sum(up)")])
            .bearer_auth(token)
            .send()
            .await
            .expect("query")
            .status()
            .as_u16()
    }

    /// Reads until the tenant is known here (a replica follows the registry within a
    /// second); the one read served is counted.
    async fn until_known(&self, token: &str, tenant: &str, expected: &mut Expected) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.read(token).await;
            if status == 200 {
                add(expected, tenant, "read_requests", 1);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tenant {tenant} unknown here: {status}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The traffic every round sends as `alpha` (tagged `tag`): writes of both protocols
    /// with exemplars and histograms, an OTLP export, reads and queries.
    async fn alpha_traffic(&self, token: &str, tag: &str, expected: &mut Expected) {
        for (raw, v2) in [(v1_body(tag, 3), false), (v2_body(tag), true)] {
            let (status, length) = self.write(token, &raw, v2).await;
            assert_eq!(status, 204, "alpha write");
            add(expected, "alpha", "write_requests", 1);
            add(expected, "alpha", "bytes_compressed", length);
            add(expected, "alpha", "bytes_decoded", raw.len() as u64);
        }
        let raw = otlp_body(tag);
        let length = raw.len() as u64;
        assert_eq!(self.otlp(token, raw).await, 200, "alpha OTLP");
        add(expected, "alpha", "otlp_requests", 1);
        add(expected, "alpha", "bytes_compressed", length);
        add(expected, "alpha", "bytes_decoded", length);
        for _ in 0..2 {
            assert_eq!(self.read(token).await, 200, "alpha read");
            add(expected, "alpha", "read_requests", 1);
        }
        for _ in 0..3 {
            assert_eq!(self.query(token).await, 200, "alpha query");
            add(expected, "alpha", "query_requests", 1);
        }
    }

    /// `beta` (a burst of 100 samples, refilled at 1 a second) sends four writes of the
    /// same 30 series: the first goes through, later ones are throttled. Returns how many
    /// were throttled.
    async fn beta_traffic(&self, token: &str, tag: &str, expected: &mut Expected) -> u32 {
        let raw = flat_body(&format!("beta_{tag}"), 30);
        let mut throttled = 0;
        for _ in 0..4 {
            let (status, length) = self.write(token, &raw, false).await;
            match status {
                204 => {
                    add(expected, "beta", "write_requests", 1);
                    add(expected, "beta", "bytes_compressed", length);
                    add(expected, "beta", "bytes_decoded", raw.len() as u64);
                }
                429 => {
                    throttled += 1;
                    add(expected, "beta", "refused_throttled", 30);
                }
                other => panic!("beta write answered {other}"),
            }
        }
        throttled
    }
}

/// What the backend received per tenant: samples, histograms and exemplars, and the
/// distinct series of each round's tag (a round is one promgate process).
fn backend_figures(backend: &FakeBackend, tags: &[&str], expected: &mut Expected) {
    let mut series = SeriesByRound::new();
    for recorded in backend.requests() {
        assert!((200..300).contains(&recorded.status));
        for one in recorded.write_request().timeseries {
            let tenant = one
                .labels
                .iter()
                .find(|label| label.name == "tenant_id")
                .map(|label| label.value.clone())
                .expect("tenant label");
            add(expected, &tenant, "samples", one.samples.len() as u64);
            add(expected, &tenant, "histograms", one.histograms.len() as u64);
            add(expected, &tenant, "exemplars", one.exemplars.len() as u64);
            let name = one
                .labels
                .iter()
                .find(|label| label.name == "__name__")
                .map(|label| label.value.clone())
                .expect("name");
            let tag = tags
                .iter()
                .find(|tag| name.ends_with(&format!("_{tag}")))
                .unwrap_or_else(|| panic!("series {name} of no round"));
            series.entry((tenant, tag.to_string())).or_default().insert(
                one.labels
                    .iter()
                    .map(|label| (label.name.clone(), label.value.clone()))
                    .collect(),
            );
        }
    }
    let mut peaks: BTreeMap<String, u64> = BTreeMap::new();
    for ((tenant, _), label_sets) in &series {
        add(expected, tenant, "new_series", label_sets.len() as u64);
        let peak = peaks.entry(tenant.clone()).or_insert(0);
        *peak = (*peak).max(label_sets.len() as u64);
    }
    for (tenant, peak) in peaks {
        add(expected, &tenant, "peak_active_series", peak);
    }
}

/// The report of `query` as JSON rows.
async fn report(replica: &PromgateBinary, query: &str) -> (u16, Value) {
    let response = replica
        .http
        .get(format!("{}/admin/v1/usage?{query}", replica.admin_url))
        .bearer_auth(&replica.admin_token)
        .send()
        .await
        .expect("usage");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Each tenant's figures around today (yesterday and tomorrow too, so a test that runs
/// across midnight still sums everything), by column.
async fn figures_now(replica: &PromgateBinary) -> Expected {
    let (from, to) = (format_day(today() - 1), format_day(today() + 1));
    let (status, body) = report(replica, &format!("from={from}&to={to}")).await;
    assert_eq!(status, 200, "{body}");
    let mut found = Expected::new();
    for row in body["rows"].as_array().expect("rows") {
        let tenant = row["tenant"].as_str().expect("tenant");
        for field in ALL_FIELDS {
            let value = row[field.column()].as_u64().expect("a count");
            if field.is_peak() {
                let peak = found
                    .entry(tenant.to_string())
                    .or_default()
                    .entry(field.column())
                    .or_insert(0);
                *peak = (*peak).max(value);
            } else if value > 0 {
                add(&mut found, tenant, field.column(), value);
            }
        }
    }
    // Columns that stayed zero are left out of both sides.
    for columns in found.values_mut() {
        columns.retain(|_, value| *value > 0);
    }
    found
}

/// Waits until the report equals `expected` (flushes run every second here).
async fn until_reported(replica: &PromgateBinary, expected: &Expected) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = figures_now(replica).await;
        if &found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "usage never matched:\n found    {found:?}\n expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn backend_toml(backend: &FakeBackend) -> String {
    format!(
        "[[backends]]\nname = \"b0\"\nwrite_url = \"{}\"\nread_url = \"{}\"\nquery_url = \"http://{}\"\ntimeout = \"5s\"\n",
        backend.write_url(),
        backend.read_url(),
        backend.addr
    )
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.split("\r\n")
        .filter(|line| !line.is_empty())
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

/// The JSON rows as CSV cells, header first.
fn json_as_cells(body: &Value) -> Vec<Vec<String>> {
    let mut header = vec!["tenant".to_string(), "day".to_string()];
    header.extend(ALL_FIELDS.iter().map(|field| field.column().to_string()));
    let mut rows = vec![header.clone()];
    for row in body["rows"].as_array().expect("rows") {
        rows.push(
            header
                .iter()
                .map(|column| match &row[column] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgresql_count_what_the_backend_received_and_flush_at_a_clean_stop() {
    let postgres = Postgres::start().await;
    let backend = FakeBackend::start().await;
    let shared = tempfile::tempdir().expect("tempdir");
    let admin_toml = format!(
        "token_file = \"{}\"",
        shared.path().join("admin.token").display()
    );
    // A minute between flushes: what this test sees was written by the clean stop.
    let extra = format!(
        "usage_flush_interval = \"60s\"\n[auth.tokens]\nsigning_key_file = \"{}\"\n{}",
        shared.path().join("signing.key").display(),
        backend_toml(&backend)
    );
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        replicas.push(
            PromgateBinary::start_full(dir.path(), "", &admin_toml, &postgres.url, &extra).await,
        );
    }
    let alpha = replicas[0].add_tenant("alpha", json!({})).await;
    let beta = replicas[0]
        .add_tenant(
            "beta",
            json!({"samples_per_second": 1, "burst_samples": 100}),
        )
        .await;
    let http = reqwest::Client::new();
    let mut expected = Expected::new();
    let mut throttled = 0;
    let tags = ["r0", "r1"];
    for (replica, tag) in replicas.iter().zip(tags) {
        let sender = Sender {
            http: &http,
            data_url: &replica.data_url,
        };
        sender.until_known(&alpha, "alpha", &mut expected).await;
        sender.until_known(&beta, "beta", &mut expected).await;
        sender.alpha_traffic(&alpha, tag, &mut expected).await;
        throttled += sender.beta_traffic(&beta, tag, &mut expected).await;
    }
    assert!(throttled > 0, "the sample rate throttled no write");
    backend_figures(&backend, &tags, &mut expected);
    assert_eq!(expected["alpha"]["histograms"], 2 * (2 + 1));
    assert_eq!(expected["alpha"]["exemplars"], 2 * (1 + 1));

    // A clean stop writes what was counted since the last flush (there was none).
    for replica in &mut replicas {
        assert!(
            replica.process.terminate(Duration::from_secs(20)),
            "clean stop"
        );
    }
    replicas[0].restart().await;
    let found = figures_now(&replicas[0]).await;
    assert_eq!(found, expected);
    let replica = &replicas[0];

    // CSV and JSON agree, through the API and through `promgate usage`.
    let range = format!(
        "from={}&to={}",
        format_day(today() - 1),
        format_day(today() + 1)
    );
    let (status, body) = report(replica, &range).await;
    assert_eq!(status, 200);
    let csv = http
        .get(format!(
            "{}/admin/v1/usage?{range}&format=csv",
            replica.admin_url
        ))
        .bearer_auth(&replica.admin_token)
        .send()
        .await
        .expect("csv");
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/csv"));
    let csv = csv.text().await.expect("text");
    assert_eq!(csv_rows(&csv), json_as_cells(&body));
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args([
            "usage",
            "--from",
            &format_day(today() - 1),
            "--to",
            &format_day(today() + 1),
            "--output",
            "csv",
            "--admin-url",
            &replica.admin_url,
            "--admin-token-file",
        ])
        .arg(shared.path().join("admin.token"))
        .output()
        .expect("promgate usage");
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(String::from_utf8_lossy(&cli.stdout), csv);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args([
            "usage",
            "--tenant",
            "beta",
            "--admin-url",
            &replica.admin_url,
        ])
        .arg("--admin-token-file")
        .arg(shared.path().join("admin.token"))
        .output()
        .expect("promgate usage");
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TENANT  DAY"), "{table}");
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[1].starts_with("beta  "), "{table}");

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args([
            "tenant",
            "list",
            "--output",
            "csv",
            "--admin-url",
            &replica.admin_url,
        ])
        .arg("--admin-token-file")
        .arg(shared.path().join("admin.token"))
        .output()
        .expect("promgate tenant list");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("--output csv is for `promgate usage` only"));

    // The tenant filter.
    let (status, only_alpha) = report(replica, &format!("{range}&tenant=alpha")).await;
    assert_eq!(status, 200);
    let rows = only_alpha["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|row| row["tenant"] == "alpha"));
    let all_rows = body["rows"].as_array().expect("rows");
    let alpha_rows: Vec<&Value> = all_rows
        .iter()
        .filter(|row| row["tenant"] == "alpha")
        .collect();
    assert_eq!(rows.iter().collect::<Vec<_>>(), alpha_rows);
    assert!(all_rows.iter().any(|row| row["tenant"] == "beta"));

    // The date range: a row of three days ago (another process's) is shown exactly when
    // the range holds that day.
    let store = Store::open(&postgres.url).await.expect("registry");
    let mut earlier = Figures::default();
    earlier.set(Field::Samples, 7);
    earlier.set(Field::WriteRequests, 1);
    store
        .upsert_usage(
            "an-earlier-process",
            0,
            &[UsageTotals {
                tenant_id: "alpha".into(),
                day: today() - 3,
                figures: earlier,
            }],
        )
        .await
        .expect("earlier row");
    let day = format_day(today() - 3);
    let (status, that_day) = report(replica, &format!("from={day}&to={day}")).await;
    assert_eq!(status, 200);
    let rows = that_day["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{that_day}");
    assert_eq!(rows[0]["tenant"], "alpha");
    assert_eq!(rows[0]["day"], day.as_str());
    assert_eq!(rows[0]["samples"], 7);
    assert_eq!(rows[0]["write_requests"], 1);
    let (_, without) = report(replica, &range).await;
    assert_eq!(without, body, "the range {range} leaves three days ago out");
    let (_, with) = report(
        replica,
        &format!("from={day}&to={}", format_day(today() + 1)),
    )
    .await;
    assert_eq!(
        with["rows"].as_array().expect("rows").len(),
        all_rows.len() + 1
    );
    // Retention deletes whole days before the cut, in batches, on PostgreSQL too.
    assert_eq!(store.prune_usage(today() - 2).await.expect("prune"), 1);
    assert_eq!(store.prune_usage(today() - 2).await.expect("prune"), 0);
    let (_, pruned) = report(replica, &format!("from={day}&to={day}")).await;
    assert_eq!(pruned["rows"], json!([]));
    assert_eq!(report(replica, &range).await.1, body);
    for bad in [
        "from=2024-02-30".to_string(),
        format!("from={}&to={day}", format_day(today())),
        "to=today".to_string(),
        "tennant=alpha".to_string(),
        "format=xlsx".to_string(),
    ] {
        let (status, body) = report(replica, &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let unauthenticated = http
        .get(format!("{}/admin/v1/usage", replica.admin_url))
        .send()
        .await
        .expect("usage");
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_on_sqlite_counts_refusals_and_never_twice_after_kill_9() {
    let backend = FakeBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("usage_flush_interval = \"1s\"\n{}", backend_toml(&backend));
    let database_url = format!("sqlite://{}", dir.path().join("promgate.db").display());
    let mut replica = PromgateBinary::start_full(dir.path(), "", "", &database_url, &extra).await;
    let alpha = replica.add_tenant("alpha", json!({})).await;
    let beta = replica
        .add_tenant(
            "beta",
            json!({"samples_per_second": 1, "burst_samples": 100}),
        )
        .await;
    let gamma = replica
        .add_tenant("gamma", json!({"max_active_series": 4}))
        .await;
    let http = reqwest::Client::new();
    let mut expected = Expected::new();
    let sender = Sender {
        http: &http,
        data_url: &replica.data_url,
    };
    sender.alpha_traffic(&alpha, "k0", &mut expected).await;
    assert!(sender.beta_traffic(&beta, "k0", &mut expected).await > 0);
    // Six new series against a limit of four: four written, two refused, answered 400.
    let raw = flat_body("gamma_k0", 6);
    let (status, length) = sender.write(&gamma, &raw, false).await;
    assert_eq!(status, 400);
    add(&mut expected, "gamma", "write_requests", 1);
    add(&mut expected, "gamma", "refused_series_limit", 2);
    add(&mut expected, "gamma", "bytes_compressed", length);
    add(&mut expected, "gamma", "bytes_decoded", raw.len() as u64);
    let mut with_backend = expected.clone();
    backend_figures(&backend, &["k0"], &mut with_backend);
    assert_eq!(with_backend["gamma"]["samples"], 4);
    until_reported(&replica, &with_backend).await;
    // Flushes repeated with nothing new leave the figures as they are.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(figures_now(&replica).await, with_backend);

    // kill -9: what was flushed stays, once; the new process counts from zero.
    replica.kill();
    replica.restart().await;
    assert_eq!(figures_now(&replica).await, with_backend);
    let sender = Sender {
        http: &http,
        data_url: &replica.data_url,
    };
    sender.alpha_traffic(&alpha, "k1", &mut expected).await;
    let mut with_backend = expected.clone();
    backend_figures(&backend, &["k0", "k1"], &mut with_backend);
    until_reported(&replica, &with_backend).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(figures_now(&replica).await, with_backend);
}
