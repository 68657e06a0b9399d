//! The query API's added CPU per query: scoping a PromQL expression (parse, put the
//! tenant matcher on every selector, print, parse the printed text again and compare)
//! beside the baseline of parsing it once, in the same run, on expressions of the kind
//! Grafana dashboards send. Also the parameters of a typical `query_range` form body read
//! and scoped whole.
//!
//! And the largest queries `query::guard` lets through (its size, nesting and regex
//! bounds): how long one of them holds a CPU-pool thread.
//!
//! Run: `cargo bench --bench query_rewrite`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use promgate::query::guard::{
    MAX_QUERY_BYTES, MAX_QUERY_NESTING, MAX_QUERY_REGEX_BYTES, MAX_QUERY_REGEX_MATCHERS,
};
use promgate::query::params::{self, Api};
use promgate::query::promql::{scope_expression, TenantScope};

const SCOPE: TenantScope<'static> = TenantScope {
    label: "tenant_id",
    value: "alpha",
    reject_conflicts: false,
};

/// Panels of the kind a Kubernetes / node-exporter / RED dashboard holds.
const DASHBOARD: [&str; 8] = [
    "up",
    r#"sum by (job) (rate(http_requests_total{job="api",code=~"5.."}[5m]))"#,
    r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{job="api"}[5m])))"#,
    r#"100 - (avg by (instance) (rate(node_cpu_seconds_total{mode="idle",instance=~"host.*"}[5m])) * 100)"#,
    r#"sum(rate(http_requests_total{code=~"5.."}[5m])) / sum(rate(http_requests_total[5m])) > bool 0.01 or on() vector(0)"#,
    r#"node_memory_MemAvailable_bytes{instance="host:9100"} / node_memory_MemTotal_bytes{instance="host:9100"}"#,
    r#"topk(10, sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="prod",container!=""}[5m])))"#,
    r#"max_over_time(deriv(node_filesystem_avail_bytes{fstype!~"tmpfs|overlay"}[1h])[1d:5m]) < 0"#,
];

fn rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("query_rewrite");
    group.throughput(Throughput::Elements(DASHBOARD.len() as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("parse_only_baseline", |b| {
        b.iter(|| {
            for query in DASHBOARD {
                std::hint::black_box(promql_parser::parser::parse(query).expect("parses"));
            }
        })
    });
    group.bench_function("scope_expression", |b| {
        b.iter(|| {
            for query in DASHBOARD {
                std::hint::black_box(scope_expression(query, &SCOPE).expect("scoped"));
            }
        })
    });
    let forms: Vec<String> = DASHBOARD
        .iter()
        .map(|query| {
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("query", query)
                .append_pair("start", "1700000000")
                .append_pair("end", "1700003600")
                .append_pair("step", "15")
                .finish()
        })
        .collect();
    group.bench_function("query_range_parameters", |b| {
        b.iter(|| {
            for form in &forms {
                let given = params::collect(None, form.as_bytes()).expect("collected");
                std::hint::black_box(
                    params::scope(&Api::QueryRange, &given, &SCOPE, Duration::from_secs(120))
                        .expect("scoped"),
                );
            }
        })
    });
    group.finish();
}

/// The most expensive texts within the guard's bounds, each refused or scoped whole.
fn worst_cases() -> Vec<(&'static str, String)> {
    // Selectors with long values, as many as the size and operator bounds allow.
    let value = "x".repeat(120);
    let term = format!(r#"up{{job="{value}"}}"#);
    let terms = (MAX_QUERY_BYTES / (term.len() + 4)).min(MAX_QUERY_NESTING - 1);
    let selectors = vec![term.as_str(); terms].join(" or ");
    // Regex matchers: as many as allowed, sharing the regex byte budget.
    let each = MAX_QUERY_REGEX_BYTES / MAX_QUERY_REGEX_MATCHERS - 1;
    let alternation = (0..each / 4)
        .map(|i| format!("{:03}", i % 1000))
        .collect::<Vec<_>>()
        .join("|");
    let regex_term = format!(
        r#"up{{job=~"{}"}}"#,
        &alternation[..alternation.len().min(each)]
    );
    let regexes =
        vec![regex_term.as_str(); MAX_QUERY_REGEX_MATCHERS.min(MAX_QUERY_NESTING - 1)].join(" or ");
    // The same selectors ending in a syntax error.
    let syntax_error = format!("{selectors} or )");
    let deepest = format!(
        "{}up{}",
        "(".repeat(MAX_QUERY_NESTING - 1),
        ")".repeat(MAX_QUERY_NESTING - 1)
    );
    vec![
        ("largest_selectors", selectors),
        ("most_regexes", regexes),
        ("largest_syntax_error", syntax_error),
        ("deepest_parentheses", deepest),
    ]
}

fn worst(c: &mut Criterion) {
    let mut group = c.benchmark_group("query_worst_case");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    for (name, text) in worst_cases() {
        assert!(text.len() <= MAX_QUERY_BYTES, "{name}: {}", text.len());
        group.bench_function(name, |b| {
            b.iter(|| std::hint::black_box(scope_expression(&text, &SCOPE).is_ok()))
        });
    }
    group.finish();
}

criterion_group!(benches, rewrite, worst);
criterion_main!(benches);
