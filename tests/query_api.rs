//! The Prometheus query API through promgate (DESIGN §13), against a real Prometheus
//! 2.42 and a real VictoriaMetrics as query backends. Two tenants write series with the
//! same metric names and the same `job`/`instance` values (and a backend scrape adds
//! series of no tenant at all). The calls a Grafana data source makes must return exactly
//! what the backend returns for the tenant's own selector (tenant label stripped), and
//! the hostile queries and parameter tricks must get a 4xx or an answer without the
//! other tenant's data.

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::PromgateBinary;
use common::process::{free_port, wait_ready, Process};
use common::stack::start_prometheus_with;
use common::{now_ms, series, snappy_body};
use promgate::proto::{Exemplar, Label, Sample, TimeSeries, WriteRequest};
use reqwest::Method;
use serde_json::{json, Value};

/// Every sample value of beta is at least this; alpha's are all below 1000.
const BETA_FLOOR: f64 = 1_000_000.0;

struct Setup {
    _dir: tempfile::TempDir,
    _prometheus: Process,
    _victoria: Process,
    prometheus_url: String,
    victoria_url: String,
    /// Queries through Prometheus.
    via_prometheus: PromgateBinary,
    /// The same registry, queries through VictoriaMetrics.
    via_victoria: PromgateBinary,
    alpha: String,
    beta: String,
    /// The evaluation time every query uses.
    at: f64,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let prometheus_port = free_port();
    let prometheus_url = format!("http://127.0.0.1:{prometheus_port}");
    // The backend also scrapes itself: series (and metadata) of no tenant at all.
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{prometheus_port}']\n"
    );
    let mut prometheus = start_prometheus_with(
        root,
        "backend",
        prometheus_port,
        &config,
        true,
        &["--enable-feature=exemplar-storage"],
    );
    wait_ready(
        &mut prometheus,
        &format!("{prometheus_url}/-/ready"),
        Duration::from_secs(30),
    )
    .await;
    let (mut victoria, victoria_url) = start_victoria(root);
    wait_ready(
        &mut victoria,
        &format!("{victoria_url}/health"),
        Duration::from_secs(30),
    )
    .await;
    let via_prometheus = PromgateBinary::start(
        root,
        "",
        &format!(
            "[[backends]]\nname = \"prometheus\"\nwrite_url = \"{prometheus_url}/api/v1/write\"\nquery_url = \"{prometheus_url}\"\ntimeout = \"10s\"\n\
             [[backends]]\nname = \"victoria\"\nwrite_url = \"{victoria_url}/api/v1/write\"\ntimeout = \"10s\"\n"
        ),
    )
    .await;
    let alpha = via_prometheus.add_tenant("alpha", json!({})).await;
    let beta = via_prometheus.add_tenant("beta", json!({})).await;
    // A second replica on the same registry whose only backend is VictoriaMetrics.
    let via_victoria = PromgateBinary::start(
        root,
        "",
        &format!(
            "[[backends]]\nname = \"victoria\"\nwrite_url = \"{victoria_url}/api/v1/write\"\nquery_url = \"{victoria_url}\"\ntimeout = \"10s\"\n"
        ),
    )
    .await;
    let http = reqwest::Client::new();
    let now = now_ms();
    for (token, offset, extra) in [
        (&alpha, 0.0, "alpha-team"),
        (&beta, BETA_FLOOR, "beta-only"),
    ] {
        let body = snappy_body(&tenant_data(now, offset, extra));
        let response = http
            .post(via_prometheus.write_url())
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .expect("write");
        assert_eq!(
            response.status(),
            204,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }
    let setup = Setup {
        _dir: dir,
        _prometheus: prometheus,
        _victoria: victoria,
        prometheus_url,
        victoria_url,
        via_prometheus,
        via_victoria,
        alpha,
        beta,
        at: now as f64 / 1000.0,
        http,
    };
    // Both backends show both tenants' data before the comparisons begin.
    for base in [&setup.prometheus_url, &setup.victoria_url] {
        wait_for_count(
            &setup,
            base,
            r#"count(node_load1{tenant_id=~"alpha|beta"})"#,
            4,
        )
        .await;
    }
    setup
}

fn start_victoria(root: &Path) -> (Process, String) {
    let port = free_port();
    let process = Process::spawn(
        "victoria-metrics",
        "victoria-metrics",
        &[
            format!("-storageDataPath={}", root.join("vm-data").display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-search.latencyOffset=1s".into(),
            "-search.disableCache".into(),
        ],
        root,
    );
    (process, format!("http://127.0.0.1:{port}"))
}

/// One tenant's series: the same names, jobs and instances for both tenants, values
/// offset by `offset`, one label value only this tenant has, a metric only it has.
fn tenant_data(now: i64, offset: f64, only: &str) -> WriteRequest {
    let step = 15_000;
    let samples = |base: f64, slope: f64| -> Vec<Sample> {
        (0..9)
            .map(|i| Sample {
                value: offset + base + slope * i as f64,
                timestamp: now - (8 - i) * step,
            })
            .collect()
    };
    let with_samples = |labels: &[(&str, &str)], samples: Vec<Sample>| -> TimeSeries {
        TimeSeries {
            samples,
            ..series(labels, 0.0, 0)
        }
    };
    let mut requests = with_samples(
        &[
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("instance", "host:9100"),
            ("code", "200"),
        ],
        samples(10.0, 3.0),
    );
    requests.exemplars = vec![Exemplar {
        labels: vec![Label {
            name: "trace_id".into(),
            value: format!("trace-{only}"),
        }],
        value: offset + 1.0,
        timestamp: now - step,
    }];
    WriteRequest {
        timeseries: vec![
            requests,
            with_samples(
                &[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("instance", "host:9100"),
                    ("code", "500"),
                ],
                samples(1.0, 1.0),
            ),
            with_samples(
                &[
                    ("__name__", "node_load1"),
                    ("job", "node"),
                    ("instance", "host:9100"),
                ],
                samples(0.5, 0.0),
            ),
            with_samples(
                &[
                    ("__name__", "node_load1"),
                    ("job", "node"),
                    ("instance", "other:9100"),
                    ("team", only),
                ],
                samples(0.7, 0.0),
            ),
            with_samples(
                &[
                    (
                        "__name__",
                        &format!("{}_secret_total", only.replace('-', "_")),
                    ),
                    ("job", "api"),
                    ("instance", "host:9100"),
                ],
                samples(5.0, 1.0),
            ),
            // A name the backend's own scrape also has: its metadata is the tenant's to see.
            with_samples(
                &[
                    ("__name__", "prometheus_build_info"),
                    ("job", "api"),
                    ("instance", "host:9100"),
                ],
                samples(1.0, 0.0),
            ),
        ],
        metadata: vec![],
    }
}

async fn wait_for_count(setup: &Setup, base: &str, query: &str, count: usize) {
    for _ in 0..120 {
        let answer = get_json(
            &setup.http,
            &format!("{base}/api/v1/query"),
            &[("query", query)],
        )
        .await;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("0");
        if value.parse::<f64>().unwrap_or(0.0) as usize == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{base} never showed {count} for {query}");
}

async fn get_json(http: &reqwest::Client, url: &str, params: &[(&str, &str)]) -> Value {
    http.get(url)
        .query(params)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

/// Removes `tenant_id` from every label set in a Prometheus answer's `data`, as
/// `strip_label_on_read` does (written here from the API's shapes, not promgate's code).
fn strip(data: &mut Value) {
    match data {
        Value::Object(object) => {
            for key in ["metric", "seriesLabels"] {
                if let Some(Value::Object(labels)) = object.get_mut(key) {
                    labels.remove("tenant_id");
                }
            }
            if object.contains_key("__name__") {
                object.remove("tenant_id");
            }
            if let Some(result) = object.get_mut("result") {
                strip(result);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

impl Setup {
    async fn through(
        &self,
        promgate: &PromgateBinary,
        token: &str,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!("{}{path}", promgate.data_url);
        let request = if method == Method::POST {
            self.http.post(url).form(params)
        } else {
            self.http.get(url).query(params)
        };
        let response = request.bearer_auth(token).send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn direct(&self, base: &str, path: &str, params: &[(&str, &str)]) -> Value {
        let answer = get_json(&self.http, &format!("{base}{path}"), params).await;
        assert_eq!(
            answer["status"], "success",
            "direct {path} {params:?}: {answer}"
        );
        answer
    }

    /// A Grafana call through promgate as alpha equals the backend's answer to the
    /// tenant-scoped call, and differs from beta's (so the comparison means something).
    #[allow(clippy::too_many_arguments)]
    async fn same_as_direct(
        &self,
        promgate: &PromgateBinary,
        base: &str,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
        direct_params: &[(&str, &str)],
        beta_params: Option<&[(&str, &str)]>,
    ) {
        let (status, through) = self
            .through(promgate, &self.alpha, method.clone(), path, params)
            .await;
        assert_eq!(
            status, 200,
            "{method} {path} {params:?} via {base}: {through}"
        );
        let mut expected = self.direct(base, path, direct_params).await["data"].clone();
        strip(&mut expected);
        assert_eq!(
            through["data"], expected,
            "{method} {path} {params:?} via {base}"
        );
        if let Some(beta_params) = beta_params {
            let mut beta = self.direct(base, path, beta_params).await["data"].clone();
            strip(&mut beta);
            assert_ne!(
                through["data"], beta,
                "{path} {params:?}: alpha and beta look alike"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_calls_see_exactly_the_tenants_own_data() {
    let s = setup().await;
    let at = s.at.to_string();
    let start = (s.at - 120.0).to_string();
    let hour_ago = (s.at - 3600.0).to_string();
    for (promgate, base) in [
        (&s.via_prometheus, s.prometheus_url.as_str()),
        (&s.via_victoria, s.victoria_url.as_str()),
    ] {
        // Instant queries, by POST (Grafana's default) and GET.
        for method in [Method::POST, Method::GET] {
            s.same_as_direct(
                promgate,
                base,
                method.clone(),
                "/api/v1/query",
                &[
                    ("query", "sum by (job, code) (http_requests_total)"),
                    ("time", &at),
                ],
                &[
                    (
                        "query",
                        r#"sum by (job, code) (http_requests_total{tenant_id="alpha"})"#,
                    ),
                    ("time", &at),
                ],
                Some(&[
                    (
                        "query",
                        r#"sum by (job, code) (http_requests_total{tenant_id="beta"})"#,
                    ),
                    ("time", &at),
                ]),
            )
            .await;
            s.same_as_direct(
                promgate,
                base,
                method.clone(),
                "/api/v1/query",
                &[("query", "node_load1"), ("time", &at)],
                &[("query", r#"node_load1{tenant_id="alpha"}"#), ("time", &at)],
                Some(&[("query", r#"node_load1{tenant_id="beta"}"#), ("time", &at)]),
            )
            .await;
            // Range queries with a matrix selector inside a function.
            s.same_as_direct(
                promgate,
                base,
                method.clone(),
                "/api/v1/query_range",
                &[
                    ("query", r#"rate(http_requests_total{code="200"}[1m])"#),
                    ("start", &start),
                    ("end", &at),
                    ("step", "15"),
                ],
                &[
                    (
                        "query",
                        r#"rate(http_requests_total{code="200",tenant_id="alpha"}[1m])"#,
                    ),
                    ("start", &start),
                    ("end", &at),
                    ("step", "15"),
                ],
                None,
            )
            .await;
            // Series look-up (Grafana's metric browser).
            s.same_as_direct(
                promgate,
                base,
                method.clone(),
                "/api/v1/series",
                &[
                    ("match[]", "node_load1"),
                    ("start", &hour_ago),
                    ("end", &at),
                ],
                &[
                    ("match[]", r#"node_load1{tenant_id="alpha"}"#),
                    ("start", &hour_ago),
                    ("end", &at),
                ],
                Some(&[
                    ("match[]", r#"node_load1{tenant_id="beta"}"#),
                    ("start", &hour_ago),
                    ("end", &at),
                ]),
            )
            .await;
        }
        // Dashboard variables: label names, then a label's values, with and without match[].
        let (status, labels) = s
            .through(
                promgate,
                &s.alpha,
                Method::GET,
                "/api/v1/labels",
                &[("start", &hour_ago), ("end", &at)],
            )
            .await;
        assert_eq!(status, 200, "{labels}");
        let mut expected = s
            .direct(
                base,
                "/api/v1/labels",
                &[
                    ("match[]", r#"{tenant_id="alpha"}"#),
                    ("start", &hour_ago),
                    ("end", &at),
                ],
            )
            .await["data"]
            .clone();
        expected
            .as_array_mut()
            .expect("labels")
            .retain(|name| name != "tenant_id");
        assert_eq!(labels["data"], expected, "labels via {base}");
        assert!(labels["data"]
            .as_array()
            .expect("list")
            .contains(&json!("team")));
        for name in ["job", "team", "__name__", "instance"] {
            let path = format!("/api/v1/label/{name}/values");
            s.same_as_direct(
                promgate,
                base,
                Method::GET,
                &path,
                &[("start", &hour_ago), ("end", &at)],
                &[
                    ("match[]", r#"{tenant_id="alpha"}"#),
                    ("start", &hour_ago),
                    ("end", &at),
                ],
                None,
            )
            .await;
            s.same_as_direct(
                promgate,
                base,
                Method::GET,
                &path,
                &[
                    ("match[]", "node_load1"),
                    ("start", &hour_ago),
                    ("end", &at),
                ],
                &[
                    ("match[]", r#"node_load1{tenant_id="alpha"}"#),
                    ("start", &hour_ago),
                    ("end", &at),
                ],
                None,
            )
            .await;
        }
        // The backend's own version, for Grafana's feature detection.
        let (status, buildinfo) = s
            .through(
                promgate,
                &s.alpha,
                Method::GET,
                "/api/v1/status/buildinfo",
                &[],
            )
            .await;
        assert_eq!(status, 200, "{buildinfo}");
        assert_eq!(
            buildinfo,
            s.direct(base, "/api/v1/status/buildinfo", &[]).await,
            "buildinfo via {base}"
        );
        // Federation: the tenant's samples, label stripped.
        let federated = s
            .http
            .get(format!("{}/federate", promgate.data_url))
            .query(&[("match[]", "node_load1")])
            .bearer_auth(&s.alpha)
            .send()
            .await
            .expect("federate");
        assert_eq!(federated.status(), 200);
        let text = federated.text().await.expect("text");
        let direct = s
            .http
            .get(format!("{base}/federate"))
            .query(&[("match[]", r#"node_load1{tenant_id="alpha"}"#)])
            .send()
            .await
            .expect("federate")
            .text()
            .await
            .expect("text");
        let samples = |text: &str| {
            let mut lines: Vec<String> = text
                .lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .map(|line| {
                    line.replace(r#",tenant_id="alpha""#, "")
                        .replace(r#"tenant_id="alpha","#, "")
                })
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(samples(&text).len(), 2, "{text}");
        assert_eq!(samples(&text), samples(&direct), "federate via {base}");
        assert!(
            !text.contains("tenant_id") && !text.contains("beta"),
            "{text}"
        );
    }

    // Exemplars (Prometheus stores them with exemplar-storage).
    s.same_as_direct(
        &s.via_prometheus,
        &s.prometheus_url,
        Method::POST,
        "/api/v1/query_exemplars",
        &[
            ("query", "http_requests_total"),
            ("start", &hour_ago),
            ("end", &at),
        ],
        &[
            ("query", r#"http_requests_total{tenant_id="alpha"}"#),
            ("start", &hour_ago),
            ("end", &at),
        ],
        Some(&[
            ("query", r#"http_requests_total{tenant_id="beta"}"#),
            ("start", &hour_ago),
            ("end", &at),
        ]),
    )
    .await;

    // Metadata: per metric name; only names the tenant has series of. The backend's
    // scrape gives metadata of its own metrics; of those, alpha only has
    // prometheus_build_info.
    let all = s.direct(&s.prometheus_url, "/api/v1/metadata", &[]).await;
    assert!(
        all["data"].get("prometheus_http_requests_total").is_some(),
        "{all}"
    );
    let (status, metadata) = s
        .through(
            &s.via_prometheus,
            &s.alpha,
            Method::GET,
            "/api/v1/metadata",
            &[],
        )
        .await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(
        metadata["data"],
        json!({ "prometheus_build_info": all["data"]["prometheus_build_info"] }),
    );
}

/// An answer shows none of beta's data: no beta-only label values or names, no value
/// from beta's range.
fn shows_nothing_of_beta(body: &Value) -> Result<(), String> {
    let text = body.to_string();
    if text.contains("beta-only") || text.contains("beta_only") || text.contains("trace-beta") {
        return Err(format!("beta's labels in {text}"));
    }
    if text.contains("tenant_id") {
        return Err(format!("tenant label not stripped in {text}"));
    }
    let mut worst = None;
    find_numbers(body, &mut |value| {
        if value >= BETA_FLOOR {
            worst = Some(value);
        }
    });
    match worst {
        Some(value) => Err(format!("beta's value {value} in {text}")),
        None => Ok(()),
    }
}

/// Calls `found` on every sample value in an answer (strings that parse as numbers in
/// `value`/`values` pairs and exemplars).
fn find_numbers(body: &Value, found: &mut impl FnMut(f64)) {
    match body {
        Value::Array(items) => {
            // [timestamp, "value"]
            if let [Value::Number(_), Value::String(value)] = items.as_slice() {
                if let Ok(value) = value.parse::<f64>() {
                    found(value);
                }
            }
            items.iter().for_each(|item| find_numbers(item, found));
        }
        Value::Object(object) => {
            if let Some(Value::String(value)) = object.get("value") {
                if let Ok(value) = value.parse::<f64>() {
                    found(value);
                }
            }
            object.values().for_each(|item| find_numbers(item, found));
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_get_a_refusal_or_nothing_of_the_other_tenant() {
    let s = setup().await;
    let at = s.at.to_string();
    let hour_ago = (s.at - 3600.0).to_string();
    let promgate = &s.via_prometheus;
    let url = |path: &str| format!("{}{path}", promgate.data_url);
    // (what, method, path, URL query (raw), form body (raw), must refuse)
    let instant = |query: &str| format!("query={}&time={at}", urlencode(query));
    let cases: Vec<(&str, Method, String, String, String, bool)> = vec![
        (
            "tenant matcher naming beta",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"node_load1{tenant_id="beta"}"#),
            String::new(),
            false,
        ),
        (
            "bare tenant selector",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"{tenant_id="beta"}"#),
            String::new(),
            false,
        ),
        (
            "regex over both tenants",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"{tenant_id=~"alpha|beta",__name__=~".+"}"#),
            String::new(),
            false,
        ),
        (
            "negative tenant matcher",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"node_load1{tenant_id!="alpha"}"#),
            String::new(),
            false,
        ),
        (
            "empty tenant matcher",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"{__name__=~".+",tenant_id=""}"#),
            String::new(),
            false,
        ),
        (
            "beta's own metric",
            Method::GET,
            "/api/v1/query".into(),
            instant("beta_only_secret_total"),
            String::new(),
            false,
        ),
        (
            "regex on names",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"{__name__=~"beta.*|node.*"}"#),
            String::new(),
            false,
        ),
        (
            "or inside braces",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"node_load1{job="x" or tenant_id="beta"}"#),
            String::new(),
            true,
        ),
        (
            "or inside braces, bare",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"{tenant_id="alpha" or tenant_id="beta"}"#),
            String::new(),
            true,
        ),
        (
            "info without selector",
            Method::GET,
            "/api/v1/query".into(),
            instant("info(node_load1)"),
            String::new(),
            true,
        ),
        (
            "relabelled into beta",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"label_replace(node_load1, "tenant_id", "beta", "", "")"#),
            String::new(),
            false,
        ),
        (
            "aggregated by tenant",
            Method::GET,
            "/api/v1/query".into(),
            instant("sum by (tenant_id) (node_load1)"),
            String::new(),
            false,
        ),
        (
            "or with a vector",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"node_load1 or on() {tenant_id="beta"}"#),
            String::new(),
            false,
        ),
        (
            "binary across tenants",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"node_load1 + ignoring(tenant_id) node_load1{tenant_id="beta"}"#),
            String::new(),
            false,
        ),
        (
            "subquery",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"max_over_time(node_load1{tenant_id="beta"}[5m:15s])"#),
            String::new(),
            false,
        ),
        (
            "offset and @",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"node_load1{tenant_id="beta"} offset -1m @ end()"#),
            String::new(),
            false,
        ),
        (
            "count_values into the tenant label",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"count_values("tenant_id", node_load1{tenant_id="beta"})"#),
            String::new(),
            false,
        ),
        (
            "topk parameter as a query",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"topk(scalar(count({tenant_id="beta"})), node_load1)"#),
            String::new(),
            false,
        ),
        (
            "escaped quote trick",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"node_load1{job="x\",tenant_id=\"beta"}"#),
            String::new(),
            false,
        ),
        (
            "absent of beta",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"absent(beta_only_secret_total{tenant_id="beta"})"#),
            String::new(),
            false,
        ),
        (
            "quoted metric name",
            Method::GET,
            "/api/v1/query".into(),
            instant(r#"{"node_load1", tenant_id="beta"}"#),
            String::new(),
            false,
        ),
        (
            "query in URL and body",
            Method::POST,
            "/api/v1/query".into(),
            "query=node_load1".into(),
            format!("query={}", urlencode(r#"{tenant_id="beta"}"#)),
            true,
        ),
        (
            "query twice in the URL",
            Method::GET,
            "/api/v1/query".into(),
            format!(
                "query=node_load1&query={}",
                urlencode(r#"{tenant_id="beta"}"#)
            ),
            String::new(),
            true,
        ),
        (
            "query twice in the body",
            Method::POST,
            "/api/v1/query".into(),
            String::new(),
            format!(
                "query=node_load1&query={}",
                urlencode("beta_only_secret_total")
            ),
            true,
        ),
        (
            "semicolon separator",
            Method::GET,
            "/api/v1/query".into(),
            "query=node_load1;query=beta_only_secret_total".into(),
            String::new(),
            true,
        ),
        (
            "unknown parameters",
            Method::GET,
            "/api/v1/query".into(),
            format!(
                "{}&tenant=beta&orgId=beta&X-Scope-OrgID=beta",
                instant("node_load1")
            ),
            String::new(),
            false,
        ),
        (
            "empty query",
            Method::GET,
            "/api/v1/query".into(),
            "query=".into(),
            String::new(),
            true,
        ),
        (
            "unparseable query",
            Method::GET,
            "/api/v1/query".into(),
            instant("sum(node_load1"),
            String::new(),
            true,
        ),
        (
            "range query",
            Method::POST,
            "/api/v1/query_range".into(),
            String::new(),
            format!(
                "query={}&start={hour_ago}&end={at}&step=60",
                urlencode(r#"rate(http_requests_total{tenant_id="beta"}[5m])"#)
            ),
            false,
        ),
        (
            "series of beta",
            Method::GET,
            "/api/v1/series".into(),
            format!(
                "match[]={}&start={hour_ago}",
                urlencode(r#"{tenant_id="beta"}"#)
            ),
            String::new(),
            false,
        ),
        (
            "series with a non-selector",
            Method::GET,
            "/api/v1/series".into(),
            format!(
                "match[]={}",
                urlencode(r#"node_load1 or {tenant_id="beta"}"#)
            ),
            String::new(),
            true,
        ),
        (
            "series match in URL and body",
            Method::POST,
            "/api/v1/series".into(),
            "match[]=node_load1".into(),
            format!("match[]={}", urlencode(r#"{tenant_id="beta"}"#)),
            true,
        ),
        (
            "series with or inside braces",
            Method::GET,
            "/api/v1/series".into(),
            format!(
                "match[]={}",
                urlencode(r#"{job="api" or tenant_id="beta"}"#)
            ),
            String::new(),
            true,
        ),
        (
            "labels of beta",
            Method::GET,
            "/api/v1/labels".into(),
            format!(
                "match[]={}&start={hour_ago}",
                urlencode(r#"{tenant_id="beta"}"#)
            ),
            String::new(),
            false,
        ),
        (
            "tenant label values",
            Method::GET,
            "/api/v1/label/tenant_id/values".into(),
            String::new(),
            String::new(),
            false,
        ),
        (
            "team values under beta's match",
            Method::GET,
            "/api/v1/label/team/values".into(),
            format!("match[]={}", urlencode(r#"{tenant_id="beta"}"#)),
            String::new(),
            false,
        ),
        (
            "label name path traversal",
            Method::GET,
            "/api/v1/label/..%2F..%2Fapi%2Fv1%2Fwrite/values".into(),
            String::new(),
            String::new(),
            true,
        ),
        (
            "exemplars of beta",
            Method::GET,
            "/api/v1/query_exemplars".into(),
            format!(
                "query={}&start={hour_ago}&end={at}",
                urlencode(r#"{tenant_id="beta",__name__=~".+"}"#)
            ),
            String::new(),
            false,
        ),
        (
            "metadata of beta's metric",
            Method::GET,
            "/api/v1/metadata".into(),
            "metric=beta_only_secret_total".into(),
            String::new(),
            false,
        ),
        (
            "federate beta",
            Method::GET,
            "/federate".into(),
            format!("match[]={}", urlencode(r#"{tenant_id="beta"}"#)),
            String::new(),
            false,
        ),
        (
            "form body with a JSON type",
            Method::POST,
            "/api/v1/query".into(),
            String::new(),
            r#"{"query":"{tenant_id=\"beta\"}"}"#.into(),
            true,
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, method, path, query, body, must_refuse) in cases {
        let target = if query.is_empty() {
            url(&path)
        } else {
            format!("{}?{query}", url(&path))
        };
        let mut request = s.http.request(method.clone(), target).bearer_auth(&s.alpha);
        if method == Method::POST {
            let content_type = if what.contains("JSON") {
                "application/json"
            } else {
                "application/x-www-form-urlencoded"
            };
            request = request
                .header("Content-Type", content_type)
                .body(body.clone());
        }
        // Client tenancy headers never choose the tenant.
        let response = request
            .header("X-Scope-OrgID", "beta")
            .header("THANOS-TENANT", "beta")
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let answer = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        eprintln!("{what}: {status}");
        if must_refuse {
            assert!(
                (400..500).contains(&status),
                "{what}: expected a refusal, got {status}: {text}"
            );
            continue;
        }
        match status {
            200 => {
                if let Err(leak) = shows_nothing_of_beta(&answer) {
                    panic!("{what}: {leak}");
                }
            }
            400..=499 => {}
            other => panic!("{what}: {other}: {text}"),
        }
    }

    // The tenant's own data really is reachable with such queries (the rewrite scoped
    // them rather than emptying them), and beta sees its own, never alpha's.
    let (status, own) = s
        .through(
            promgate,
            &s.alpha,
            Method::GET,
            "/api/v1/query",
            &[("query", r#"node_load1{tenant_id="beta"}"#), ("time", &at)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        own["data"]["result"].as_array().map(Vec::len),
        Some(2),
        "{own}"
    );
    let (status, theirs) = s
        .through(
            promgate,
            &s.beta,
            Method::GET,
            "/api/v1/query",
            &[("query", "node_load1"), ("time", &at)],
        )
        .await;
    assert_eq!(status, 200);
    let mut values = Vec::new();
    find_numbers(&theirs["data"], &mut |value| values.push(value));
    assert!(
        !values.is_empty() && values.iter().all(|v| *v >= BETA_FLOOR),
        "{theirs}"
    );
    // No credential: 401 in Prometheus' error shape.
    let response = s
        .http
        .get(url("/api/v1/query"))
        .query(&[("query", "node_load1")])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_limits_and_error_shapes() {
    let s = setup().await;
    let promgate = &s.via_prometheus;
    // A tenant with a query rate of 1/s and a burst of 2: the third query at once is
    // throttled with Retry-After; its answer keeps Prometheus' error shape.
    promgate
        .set_limits(
            "alpha",
            json!({"query_requests_per_second": 1, "query_requests_burst": 2, "max_query_response_bytes": "1KiB"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = s
            .http
            .get(format!("{}/api/v1/query", promgate.data_url))
            .query(&[("query", "vector(1)")])
            .bearer_auth(&s.alpha)
            .send()
            .await
            .expect("request");
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
            let error: Value = response.json().await.expect("json");
            assert_eq!(error["status"], "error");
            assert_eq!(error["errorType"], "unavailable");
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some());
    // Beta is not affected by alpha's throttle.
    let (status, _) = s
        .through(
            promgate,
            &s.beta,
            Method::GET,
            "/api/v1/query",
            &[("query", "vector(1)")],
        )
        .await;
    assert_eq!(status, 200);
    // The response cap: a range query at 1 s steps over alpha's data is over 1 KiB.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (start, end) = ((s.at - 600.0).to_string(), s.at.to_string());
    let (status, error) = s
        .through(
            promgate,
            &s.alpha,
            Method::GET,
            "/api/v1/query_range",
            &[
                ("query", "node_load1"),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        )
        .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["errorType"], "execution");
    // A backend error keeps its status and shape: an evaluation error.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, error) = s
        .through(
            promgate,
            &s.beta,
            Method::GET,
            "/api/v1/query_range",
            &[("query", "up"), ("start", "2"), ("end", "1"), ("step", "1")],
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["errorType"], "bad_data");
    // A body over max_request_bytes is refused before it is parsed.
    let big = format!("query={}", "a".repeat(40 * 1024 * 1024));
    let response = s
        .http
        .post(format!("{}/api/v1/query", promgate.data_url))
        .bearer_auth(&s.beta)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
