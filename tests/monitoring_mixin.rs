//! The monitoring mixin in deploy/monitoring/ (DESIGN §10): `promtool check rules` accepts
//! the alerting rules; every PromQL expression of the rules and of the Grafana dashboard
//! (panel targets and variable queries, Grafana's variables substituted) parses, both with
//! promql-parser and with Prometheus' own parser (each one a recording rule for promtool);
//! and every metric they name is exported by a running promgate binary's `/metrics`,
//! scraped after it served accepted, rejected, throttled and unauthenticated writes, a
//! read, with a queued backend and a TLS data listener with a revocation list configured.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::binary::PromgateBinary;
use common::pki::{ca, crl, server_leaf};
use common::process::which;
use common::{now_ms, read_body, series, simple_body, snappy_body, FakeBackend};
use promgate::proto::WriteRequest;
use promql_parser::parser::{self, Expr};
use serde_json::Value;
use time::OffsetDateTime;

fn mixin(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(file)
}

fn promtool() -> PathBuf {
    which("promtool").unwrap_or_else(|| {
        panic!("promtool is not installed: apt-get install prometheus (CI's scripts/test.sh does)")
    })
}

fn promtool_check_rules(path: &Path) {
    let output = Command::new(promtool())
        .arg("check")
        .arg("rules")
        .arg(path)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check rules {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `expr` of the alerting rules.
fn rule_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(mixin("promgate-alerts.yml")).expect("rules file");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("rules YAML");
    let mut exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

/// Every query of the dashboard: panel targets (rows' nested panels too) and the
/// selectors of `label_values(…)` variable queries.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(mixin("promgate-dashboard.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    fn collect(panels: &[Value], exprs: &mut Vec<String>) {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                exprs.push(target["expr"].as_str().expect("target expr").to_string());
            }
            collect(panel["panels"].as_array().map_or(&[], Vec::as_slice), exprs);
        }
    }
    let mut exprs = Vec::new();
    collect(dashboard["panels"].as_array().expect("panels"), &mut exprs);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.trim().to_string())
            .unwrap_or_else(|| {
                panic!("variable query {query:?} is not label_values(selector, label)")
            });
        exprs.push(inner);
    }
    assert!(exprs.len() > 30, "the dashboard has its panels");
    exprs
}

/// Grafana's variables as the queries see them at run time.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$tenant", ".*")
        .replace("$backend", ".*")
}

/// The metric names an expression selects.
fn metric_names(expr: &Expr, names: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(aggregate) => {
            metric_names(&aggregate.expr, names);
            if let Some(param) = &aggregate.param {
                metric_names(param, names);
            }
        }
        Expr::Unary(unary) => metric_names(&unary.expr, names),
        Expr::Binary(binary) => {
            metric_names(&binary.lhs, names);
            metric_names(&binary.rhs, names);
        }
        Expr::Paren(paren) => metric_names(&paren.expr, names),
        Expr::Subquery(subquery) => metric_names(&subquery.expr, names),
        Expr::VectorSelector(selector) => {
            names.insert(
                selector
                    .name
                    .clone()
                    .expect("every selector names its metric"),
            );
        }
        Expr::MatrixSelector(matrix) => {
            names.insert(
                matrix
                    .vs
                    .name
                    .clone()
                    .expect("every selector names its metric"),
            );
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                metric_names(arg, names);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[test]
fn the_alerting_rules_pass_promtool() {
    promtool_check_rules(&mixin("promgate-alerts.yml"));
}

#[test]
fn every_expression_parses() {
    let exprs: Vec<String> = rule_expressions()
        .into_iter()
        .chain(dashboard_expressions())
        .map(|expr| substitute(&expr))
        .collect();
    let mut problems = Vec::new();
    for expr in &exprs {
        if let Err(err) = parser::parse(expr) {
            problems.push(format!("{expr}\n  {err}"));
        }
        assert!(
            !expr.contains('$'),
            "a Grafana variable left unsubstituted: {expr}"
        );
    }
    assert!(problems.is_empty(), "unparsable:\n{}", problems.join("\n"));
    // Prometheus' own parser too: each expression as a recording rule for promtool.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rules = String::from("groups:\n  - name: mixin-expressions\n    rules:\n");
    for (at, expr) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(expr).expect("quote");
        rules.push_str(&format!(
            "      - record: promgate_mixin:expr{at}\n        expr: {quoted}\n"
        ));
    }
    let path = dir.path().join("expressions.yml");
    std::fs::write(&path, rules).expect("write rules");
    promtool_check_rules(&path);
}

/// A remote-read backend that ignores the tenant matcher and answers every query with a
/// series of another tenant (which promgate drops and counts).
async fn leaky_read_backend() -> String {
    use prost::Message;
    async fn answer(body: axum::body::Bytes) -> (axum::http::HeaderMap, Vec<u8>) {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy");
        let request = promgate::proto::ReadRequest::decode(raw.as_slice()).expect("ReadRequest");
        let foreign = promgate::proto::TimeSeries {
            labels: vec![
                promgate::proto::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                },
                promgate::proto::Label {
                    name: "tenant_id".into(),
                    value: "someone-else".into(),
                },
            ],
            samples: vec![promgate::proto::Sample {
                value: 1.0,
                timestamp: now_ms(),
            }],
            ..Default::default()
        };
        let response = promgate::proto::ReadResponse {
            results: vec![
                promgate::proto::QueryResult {
                    timeseries: vec![foreign],
                };
                request.queries.len()
            ],
        };
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-protobuf".parse().expect("value"),
        );
        headers.insert("content-encoding", "snappy".parse().expect("value"));
        let body = snap::raw::Encoder::new()
            .compress_vec(&response.encode_to_vec())
            .expect("compress");
        (headers, body)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/api/v1/read", axum::routing::post(answer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/api/v1/read")
}

/// A request of `n` samples (one series each).
fn samples_body(n: usize) -> Vec<u8> {
    snappy_body(&WriteRequest {
        timeseries: (0..n)
            .map(|i| series(&[("__name__", "up"), ("i", &i.to_string())], 1.0, now_ms()))
            .collect(),
        metadata: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_mixin_uses_is_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let authority = ca("mixin test CA");
    let server = server_leaf(&authority);
    let write = |name: &str, text: &str| {
        let path = root.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let cert = write("server.pem", &server.pem);
    let key = write("server.key", &server.key_pem);
    let ca_file = write("ca.pem", &authority.pem);
    let crl_next_update = OffsetDateTime::now_utc() + time::Duration::days(3);
    let crl_file = write("ca.crl", &crl(&authority, &[66], crl_next_update));
    let server_toml = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\
         client_auth = \"optional\"\ncrl_files = [\"{}\"]\n",
        cert.display(),
        key.display(),
        ca_file.display(),
        crl_file.display()
    );
    let sync_backend = FakeBackend::start().await;
    let queued_backend = FakeBackend::start().await;
    let extra = format!(
        "[[backends]]\nname = \"sync\"\nwrite_url = \"{}\"\nread_url = \"{}\"\ntimeout = \"2s\"\n\
         [[backends]]\nname = \"queued\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\ndelivery = \"queued\"\n\
         [queue]\ndirectory = \"{}\"\nmax_bytes = \"64MiB\"\ndrain_timeout = \"1s\"\n",
        sync_backend.write_url(),
        leaky_read_backend().await,
        queued_backend.write_url(),
        root.join("queue").display()
    );
    let promgate = PromgateBinary::start(root, &server_toml, &extra).await;
    let token = promgate
        .add_tenant(
            "alpha",
            serde_json::json!({"samples_per_second": 100, "burst_samples": 100}),
        )
        .await;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(authority.pem.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let data = promgate.data_url.replace("http://", "https://");
    let post = |path: &str, token: &str, body: Vec<u8>| {
        http.post(format!("{data}{path}"))
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
    };
    let status = |response: reqwest::Result<reqwest::Response>| {
        response.expect("answered").status().as_u16()
    };
    assert_eq!(
        status(post("/api/v1/write", &token, simple_body(&[])).await),
        204
    );
    assert_eq!(
        status(post("/api/v1/write", &token, samples_body(90)).await),
        204
    );
    assert_eq!(
        status(post("/api/v1/write", &token, b"not snappy".to_vec()).await),
        400,
        "rejected"
    );
    assert_eq!(
        status(post("/api/v1/write", &token, samples_body(90)).await),
        429,
        "over the sample rate"
    );
    assert_eq!(
        status(post("/api/v1/write", "not-a-token", simple_body(&[])).await),
        401,
        "an authentication failure"
    );
    let read = http
        .post(format!("{data}/api/v1/read"))
        .bearer_auth(&token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Read-Version", "0.1.0")
        .body(read_body(vec![]))
        .send()
        .await;
    assert_eq!(status(read), 200, "a read is answered");
    let limited = promgate
        .add_tenant(
            "beta",
            serde_json::json!({"max_active_series": 1, "accept_ha_samples": true}),
        )
        .await;
    assert_eq!(
        status(post("/api/v1/write", &limited, samples_body(2)).await),
        400,
        "a new series past the active series limit"
    );
    // An HA pair: r1 is elected (its new series past the limit), r2 de-duplicated.
    let pair = snappy_body(&WriteRequest {
        timeseries: ["r1", "r2"]
            .into_iter()
            .map(|replica| {
                series(
                    &[
                        ("__name__", "up"),
                        ("cluster", "c"),
                        ("__replica__", replica),
                    ],
                    1.0,
                    now_ms(),
                )
            })
            .collect(),
        metadata: vec![],
    });
    assert_eq!(status(post("/api/v1/write", &limited, pair).await), 400);
    // The active series gauges are set by the tracker's sweep, every few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let exposition = loop {
        let exposition = promgate.metrics().await;
        if exposition.contains("promgate_tenant_active_series{") {
            break exposition;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no active series gauge"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            line.split(['{', ' '])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();

    let mut used = BTreeSet::new();
    for expr in rule_expressions()
        .into_iter()
        .chain(dashboard_expressions())
    {
        let parsed = parser::parse(&substitute(&expr)).expect("parses");
        metric_names(&parsed, &mut used);
    }
    assert!(used.len() > 30, "the mixin uses {} metrics", used.len());
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the mixin uses metrics promgate does not export: {missing:?}\nexported: {exported:?}"
    );

    // The TLS expiry gauges hold the files' real dates.
    let gauge = |name: &str| -> f64 {
        exposition
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{exposition}"))
    };
    let crl_at = gauge("promgate_tls_crl_next_update_timestamp_seconds");
    assert!(
        (crl_at - crl_next_update.unix_timestamp() as f64).abs() <= 1.0,
        "CRL nextUpdate {crl_at}"
    );
    let not_after = gauge("promgate_tls_certificate_expiry_timestamp_seconds");
    assert!(
        not_after > OffsetDateTime::now_utc().unix_timestamp() as f64,
        "certificate notAfter {not_after} is in the future"
    );
    let last_poll = gauge("promgate_registry_last_successful_poll_timestamp_seconds");
    assert!(
        (OffsetDateTime::now_utc().unix_timestamp() as f64 - last_poll) < 30.0,
        "the registry was polled lately ({last_poll})"
    );
    assert_eq!(gauge("promgate_registry_tenants"), 2.0);
    assert_eq!(
        gauge(r#"promgate_tenant_active_series{tenant="beta"}"#),
        1.0
    );
    assert_eq!(gauge("promgate_queue_max_bytes"), 64.0 * 1024.0 * 1024.0);
}
