//! The translation rules, one test each, named after the upstream function (in
//! prometheus/prometheus `storage/remote/otlptranslator/prometheusremotewrite`) whose
//! rule it checks; expectations are derived from those rules and upstream's test cases.

use std::collections::BTreeSet;
use std::io::Write;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, AggregationTemporality, Exemplar as OtelExemplar,
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::*;
use crate::config::{ConflictPolicy, Promotion, TranslationStrategy};

const T: u64 = 1_700_000_000_000_000_000; // ns
const T_MS: i64 = 1_700_000_000_000;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs.iter().map(|(k, v)| kv(k, v)).collect()
}

fn number(attributes: &[(&str, &str)], value: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs(attributes),
        time_unix_nano: T,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

fn metric(name: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Metric::default()
    }
}

fn sum(monotonic: bool, temporality: AggregationTemporality, points: Vec<NumberDataPoint>) -> Data {
    Data::Sum(Sum {
        data_points: points,
        aggregation_temporality: temporality as i32,
        is_monotonic: monotonic,
    })
}

fn gauge(points: Vec<NumberDataPoint>) -> Data {
    Data::Gauge(Gauge {
        data_points: points,
    })
}

fn request(resource: &[(&str, &str)], metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: attrs(resource),
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn caps() -> Caps {
    Caps {
        max_series: 1000,
        max_label_bytes: 1 << 20,
    }
}

fn run(request: &ExportMetricsServiceRequest, config: &OtlpConfig) -> Translated {
    translate(request, config, caps()).expect("translates")
}

/// Each series as `name{a="x",b="y"}` (without `__name__`), with its float values.
fn rendered(translated: &Translated) -> Vec<(String, Vec<u64>)> {
    translated
        .request
        .timeseries
        .iter()
        .map(|series| {
            (
                render(&series.labels),
                series.samples.iter().map(|s| s.value.to_bits()).collect(),
            )
        })
        .collect()
}

fn render(labels: &[Label]) -> String {
    let name = labels
        .iter()
        .find(|l| l.name == "__name__")
        .map_or("", |l| l.value.as_str());
    let rest: Vec<String> = labels
        .iter()
        .filter(|l| l.name != "__name__")
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

const SERVICE: &[(&str, &str)] = &[
    ("service.name", "checkout"),
    ("service.namespace", "shop"),
    ("service.instance.id", "checkout-1"),
];

/// `addSumNumberDataPoints` / `addGaugeNumberDataPoints` with `createAttributes`:
/// names per `MetricNamer`, attribute names per `LabelNamer`, `job` and `instance`
/// from the service attributes, timestamps in milliseconds.
#[test]
fn sums_and_gauges() {
    let translated = run(
        &request(
            SERVICE,
            vec![
                metric(
                    "http.server.requests",
                    "{request}",
                    sum(
                        true,
                        AggregationTemporality::Cumulative,
                        vec![number(&[("http.method", "GET")], 5.0)],
                    ),
                ),
                metric(
                    "queue.depth",
                    "{item}",
                    sum(
                        false,
                        AggregationTemporality::Cumulative,
                        vec![number(&[], -3.0)],
                    ),
                ),
                metric("cpu.utilization", "1", gauge(vec![number(&[], 0.25)])),
                metric("memory.used", "By", gauge(vec![number(&[], 1024.0)])),
            ],
        ),
        &OtlpConfig::default(),
    );
    let labels = r#"instance="checkout-1",job="shop/checkout""#;
    assert_eq!(
        rendered(&translated),
        vec![
            (
                format!(r#"http_server_requests_total{{http_method="GET",{labels}}}"#),
                bits(&[5.0])
            ),
            (format!("queue_depth{{{labels}}}"), bits(&[-3.0])),
            (format!("cpu_utilization_ratio{{{labels}}}"), bits(&[0.25])),
            (format!("memory_used_bytes{{{labels}}}"), bits(&[1024.0])),
        ]
    );
    assert_eq!(translated.request.timeseries[0].samples[0].timestamp, T_MS);
    assert_eq!(translated.accepted_points(), 4);
    assert_eq!(translated.rejected_points(), 0);
}

/// `setResourceContext`: `job` is `service.name` alone without a namespace; no
/// `instance` without `service.instance.id`; both override attributes of those names.
#[test]
fn job_and_instance() {
    let translated = run(
        &request(
            &[("service.name", "api")],
            vec![metric(
                "up",
                "",
                gauge(vec![number(&[("job", "spoofed"), ("instance", "x")], 1.0)]),
            )],
        ),
        &OtlpConfig::default(),
    );
    assert_eq!(rendered(&translated)[0].0, r#"up{instance="x",job="api"}"#);
    let none = run(
        &request(&[], vec![metric("up", "", gauge(vec![number(&[], 1.0)]))]),
        &OtlpConfig::default(),
    );
    assert_eq!(rendered(&none)[0].0, "up{}");
}

/// `createAttributes`: names colliding after sanitising are joined with `;` in key
/// order; an empty value is no label; `__name__` attributes are ignored; Prometheus'
/// default label options (`key` before a single leading `_`, runs of `_` kept).
#[test]
fn attribute_labels() {
    let translated = run(
        &request(
            &[],
            vec![metric(
                "m",
                "",
                gauge(vec![number(
                    &[
                        ("a_b", "2"),
                        ("a.b", "1"),
                        ("empty", ""),
                        ("__name__", "evil"),
                        ("_private", "p"),
                        ("1st", "f"),
                        ("x..y", "z"),
                    ],
                    1.0,
                )]),
            )],
        ),
        &OtlpConfig::default(),
    );
    assert_eq!(
        rendered(&translated)[0].0,
        r#"m{a_b="1;2",key_1st="f",key_private="p",x__y="z"}"#
    );
}

/// `addHistogramDataPoints`: `_sum`, `_count`, cumulative buckets with `le` printed as
/// Go's `FormatFloat(b, 'f', -1)`, `+Inf` holding the count; exemplars in their bucket.
#[test]
fn explicit_histograms_are_classic() {
    let point = HistogramDataPoint {
        attributes: attrs(&[("route", "/")]),
        time_unix_nano: T,
        count: 6,
        sum: Some(20.5),
        bucket_counts: vec![1, 2, 3],
        explicit_bounds: vec![0.5, 5.0],
        exemplars: vec![OtelExemplar {
            time_unix_nano: T,
            value: Some(exemplar::Value::AsDouble(3.0)),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..OtelExemplar::default()
        }],
        ..HistogramDataPoint::default()
    };
    let translated = run(
        &request(
            &[("service.name", "api")],
            vec![metric(
                "http.server.duration",
                "ms",
                Data::Histogram(Histogram {
                    data_points: vec![point],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            )],
        ),
        &OtlpConfig::default(),
    );
    let base = "http_server_duration_milliseconds";
    assert_eq!(
        rendered(&translated),
        vec![
            (
                format!(r#"{base}_sum{{job="api",route="/"}}"#),
                bits(&[20.5])
            ),
            (
                format!(r#"{base}_count{{job="api",route="/"}}"#),
                bits(&[6.0])
            ),
            (
                format!(r#"{base}_bucket{{job="api",le="0.5",route="/"}}"#),
                bits(&[1.0])
            ),
            (
                format!(r#"{base}_bucket{{job="api",le="5",route="/"}}"#),
                bits(&[3.0])
            ),
            (
                format!(r#"{base}_bucket{{job="api",le="+Inf",route="/"}}"#),
                bits(&[6.0])
            ),
        ]
    );
    let series = &translated.request.timeseries;
    assert!(series[2].exemplars.is_empty());
    let exemplar = &series[3].exemplars[0];
    assert_eq!(exemplar.value, 3.0);
    assert_eq!(
        exemplar.labels,
        vec![
            Label {
                name: "span_id".into(),
                value: "0202020202020202".into()
            },
            Label {
                name: "trace_id".into(),
                value: "01010101010101010101010101010101".into()
            },
        ]
    );
    // One data point, five series.
    assert_eq!(translated.accepted_points(), 1);
}

/// `addSummaryDataPoints`
#[test]
fn summaries() {
    let point = SummaryDataPoint {
        time_unix_nano: T,
        count: 10,
        sum: 4.5,
        quantile_values: vec![
            ValueAtQuantile {
                quantile: 0.5,
                value: 0.3,
            },
            ValueAtQuantile {
                quantile: 0.99,
                value: 1.2,
            },
        ],
        ..SummaryDataPoint::default()
    };
    let translated = run(
        &request(
            &[],
            vec![metric(
                "rpc.latency",
                "s",
                Data::Summary(Summary {
                    data_points: vec![point],
                }),
            )],
        ),
        &OtlpConfig::default(),
    );
    assert_eq!(
        rendered(&translated),
        vec![
            ("rpc_latency_seconds_sum{}".to_string(), bits(&[4.5])),
            ("rpc_latency_seconds_count{}".to_string(), bits(&[10.0])),
            (
                r#"rpc_latency_seconds{quantile="0.5"}"#.to_string(),
                bits(&[0.3])
            ),
            (
                r#"rpc_latency_seconds{quantile="0.99"}"#.to_string(),
                bits(&[1.2])
            ),
        ]
    );
}

/// `addExponentialHistogramDataPoints`: one native histogram sample per point.
#[test]
fn exponential_histograms_are_native() {
    let point = ExponentialHistogramDataPoint {
        time_unix_nano: T,
        count: 5,
        sum: Some(12.0),
        scale: 0,
        zero_count: 1,
        positive: Some(Buckets {
            offset: 0,
            bucket_counts: vec![1, 3],
        }),
        ..ExponentialHistogramDataPoint::default()
    };
    let translated = run(
        &request(
            &[],
            vec![metric(
                "payload",
                "By",
                Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![point],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            )],
        ),
        &OtlpConfig::default(),
    );
    let series = &translated.request.timeseries[0];
    assert_eq!(render(&series.labels), "payload_bytes{}");
    assert!(series.samples.is_empty());
    let native = &series.histograms[0];
    assert_eq!(native.timestamp, T_MS);
    assert_eq!(native.schema, 0);
    assert_eq!(native.positive_deltas, vec![1, 2]);
    assert_eq!(native.positive_spans[0].offset, 1);
}

/// The "no recorded value" flag makes every sample of the point a stale marker
/// (`value.StaleNaN`), bit for bit.
#[test]
fn no_recorded_value_is_stale() {
    let mut stale_gauge = number(&[], 7.0);
    stale_gauge.flags = NO_RECORDED_VALUE;
    let stale_histogram = HistogramDataPoint {
        time_unix_nano: T,
        count: 1,
        sum: Some(1.0),
        bucket_counts: vec![1, 0],
        explicit_bounds: vec![1.0],
        flags: NO_RECORDED_VALUE,
        ..HistogramDataPoint::default()
    };
    let translated = run(
        &request(
            &[],
            vec![
                metric("g", "", gauge(vec![stale_gauge])),
                metric(
                    "h",
                    "",
                    Data::Histogram(Histogram {
                        data_points: vec![stale_histogram],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                ),
            ],
        ),
        &OtlpConfig::default(),
    );
    let all = rendered(&translated);
    assert_eq!(all.len(), 1 + 4);
    for (series, values) in all {
        assert_eq!(values, vec![STALE_NAN_BITS], "{series}");
    }
}

/// `addResourceTargetInfo`: the other resource attributes on `target_info` with
/// `job`/`instance`, value 1; none for a resource with identifying attributes only,
/// or without `job` and `instance`.
#[test]
fn target_info() {
    let mut resource = SERVICE.to_vec();
    resource.extend([("deployment.environment", "prod"), ("host.name", "h1")]);
    let metrics = || vec![metric("up", "", gauge(vec![number(&[], 1.0)]))];
    let translated = run(&request(&resource, metrics()), &OtlpConfig::default());
    let all = rendered(&translated);
    assert_eq!(
        all.last(),
        Some(&(
            r#"target_info{deployment_environment="prod",host_name="h1",instance="checkout-1",job="shop/checkout"}"#
                .to_string(),
            bits(&[1.0])
        ))
    );
    assert_eq!(
        translated
            .request
            .timeseries
            .last()
            .map(|s| s.samples[0].timestamp),
        Some(T_MS)
    );
    // keep_identifying_resource_attributes
    let keep = OtlpConfig {
        keep_identifying_resource_attributes: true,
        ..OtlpConfig::default()
    };
    let kept = rendered(&run(&request(&resource, metrics()), &keep));
    assert!(
        kept.last()
            .is_some_and(|(series, _)| series.contains(r#"service_name="checkout""#)
                && series.contains(r#"service_instance_id="checkout-1""#)),
        "{kept:?}"
    );
    // Identifying attributes only: no target_info.
    assert_eq!(
        run(&request(SERVICE, metrics()), &OtlpConfig::default())
            .request
            .timeseries
            .len(),
        1
    );
    // No job or instance: no target_info.
    assert_eq!(
        run(
            &request(&[("host.name", "h1")], metrics()),
            &OtlpConfig::default()
        )
        .request
        .timeseries
        .len(),
        1
    );
}

/// `addResourceTargetInfo`: samples every 2½ minutes from the earliest point to the
/// latest, and at the latest; the same `target_info` from two resources once.
#[test]
fn target_info_spans_the_points() {
    let resource = [("service.name", "a"), ("host.name", "h")];
    let mut early = number(&[], 1.0);
    early.time_unix_nano = T - 400 * 1_000_000_000;
    let late = number(&[("x", "y")], 1.0);
    let one = request(&resource, vec![metric("up", "", gauge(vec![early, late]))]);
    let mut two = one.clone();
    two.resource_metrics.extend(one.resource_metrics.clone());
    let translated = run(&two, &OtlpConfig::default());
    let info: Vec<_> = translated
        .request
        .timeseries
        .iter()
        .filter(|s| render(&s.labels).starts_with("target_info"))
        .collect();
    assert_eq!(info.len(), 1);
    let times: Vec<i64> = info[0].samples.iter().map(|s| s.timestamp).collect();
    assert_eq!(
        times,
        vec![T_MS - 400_000, T_MS - 250_000, T_MS - 100_000, T_MS]
    );
}

/// `addPromotedAttributes`: promoted resource attributes on every series unless the
/// point sets that label; `promote_all_resource_attributes` with an ignore list.
#[test]
fn promoted_resource_attributes() {
    let resource = [
        ("service.name", "api"),
        ("k8s.namespace.name", "ns1"),
        ("region", "eu"),
    ];
    let metrics = vec![
        metric("a", "", gauge(vec![number(&[], 1.0)])),
        metric("b", "", gauge(vec![number(&[("region", "us")], 1.0)])),
    ];
    let listed = OtlpConfig {
        promotion: Promotion::Listed(BTreeSet::from([
            "k8s.namespace.name".to_string(),
            "region".to_string(),
        ])),
        ..OtlpConfig::default()
    };
    let all = rendered(&run(&request(&resource, metrics.clone()), &listed));
    assert_eq!(
        all[0].0,
        r#"a{job="api",k8s_namespace_name="ns1",region="eu"}"#
    );
    assert_eq!(
        all[1].0,
        r#"b{job="api",k8s_namespace_name="ns1",region="us"}"#
    );
    // target_info still carries them (upstream does not remove promoted attributes).
    assert!(all[2].0.starts_with("target_info"), "{all:?}");
    let all_but = OtlpConfig {
        promotion: Promotion::AllExcept(BTreeSet::from(["region".to_string()])),
        ..OtlpConfig::default()
    };
    let everything = rendered(&run(&request(&resource, metrics), &all_but));
    assert_eq!(
        everything[0].0,
        r#"a{job="api",k8s_namespace_name="ns1",service_name="api"}"#
    );
}

/// `FromMetrics`: delta (and unspecified) temporality sums and histograms are refused
/// point by point with the reason; gauges pass; `allow_delta_temporality` accepts.
#[test]
fn delta_temporality_is_refused() {
    let req = request(
        &[],
        vec![
            metric(
                "requests",
                "",
                sum(
                    true,
                    AggregationTemporality::Delta,
                    vec![number(&[], 1.0), number(&[("a", "b")], 2.0)],
                ),
            ),
            metric(
                "odd",
                "",
                sum(
                    true,
                    AggregationTemporality::Unspecified,
                    vec![number(&[], 1.0)],
                ),
            ),
            metric("g", "", gauge(vec![number(&[], 1.0)])),
        ],
    );
    let translated = run(&req, &OtlpConfig::default());
    assert_eq!(translated.accepted_points(), 1);
    assert_eq!(translated.rejected_points(), 3);
    assert!(
        translated
            .message()
            .contains("\"requests\" has delta temporality"),
        "{}",
        translated.message()
    );
    assert!(
        translated.message().contains("unspecified"),
        "{}",
        translated.message()
    );
    let allowed = OtlpConfig {
        allow_delta_temporality: true,
        ..OtlpConfig::default()
    };
    let translated = run(&req, &allowed);
    assert_eq!(translated.accepted_points(), 3);
    assert_eq!(rendered(&translated)[0].0, "requests_total{}");
}

/// Other translation strategies (`translation_strategy`).
#[test]
fn strategies() {
    let req = request(
        &[],
        vec![metric(
            "http.server.requests",
            "s",
            sum(
                true,
                AggregationTemporality::Cumulative,
                vec![number(&[("http.method", "GET")], 1.0)],
            ),
        )],
    );
    for (strategy, want) in [
        (
            TranslationStrategy::UnderscoreEscapingWithoutSuffixes,
            r#"http_server_requests{http_method="GET"}"#,
        ),
        (
            TranslationStrategy::NoUtf8EscapingWithSuffixes,
            r#"http.server.requests_seconds_total{http.method="GET"}"#,
        ),
        (
            TranslationStrategy::NoTranslation,
            r#"http.server.requests{http.method="GET"}"#,
        ),
    ] {
        let config = OtlpConfig {
            translation_strategy: strategy,
            ..OtlpConfig::default()
        };
        assert_eq!(rendered(&run(&req, &config))[0].0, want, "{strategy:?}");
    }
}

/// A point whose names cannot be translated is rejected alone.
#[test]
fn untranslatable_points_are_rejected_alone() {
    let translated = run(
        &request(
            &[],
            vec![
                metric("@#$", "", gauge(vec![number(&[], 1.0)])),
                metric(
                    "ok",
                    "",
                    gauge(vec![number(&[("___", "x")], 1.0), number(&[], 2.0)]),
                ),
            ],
        ),
        &OtlpConfig::default(),
    );
    assert_eq!(translated.accepted_points(), 1);
    assert_eq!(translated.rejected_points(), 2);
    assert_eq!(
        rendered(&translated),
        vec![("ok{}".to_string(), bits(&[2.0]))]
    );
}

/// The tenant label is enforced on translated series exactly as on remote-written
/// ones: an attribute of that name on a point or a resource never survives.
#[test]
fn tenant_attributes_are_overridden() {
    let req = request(
        &[("service.name", "api"), ("tenant_id", "beta")],
        vec![metric(
            "up",
            "",
            gauge(vec![number(&[("tenant_id", "beta")], 1.0)]),
        )],
    );
    let translated = run(&req, &OtlpConfig::default());
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let enforced = enforce(translated, &policy, &Limits::default(), T_MS).expect("valid");
    assert_eq!(enforced.request.timeseries.len(), 2);
    for series in &enforced.request.timeseries {
        let tenants: Vec<_> = series
            .labels
            .iter()
            .filter(|l| l.name == "tenant_id")
            .collect();
        assert_eq!(tenants.len(), 1);
        assert_eq!(tenants[0].value, "alpha");
    }
    assert_eq!(enforced.stats.samples, 2);
    assert_eq!(enforced.accepted_points, 1);
    // Under on_conflict = "reject" the point is refused, and target_info dropped.
    let reject = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Reject);
    let enforced = enforce(
        run(&req, &OtlpConfig::default()),
        &reject,
        &Limits::default(),
        T_MS,
    )
    .expect("answers");
    assert!(enforced.request.timeseries.is_empty());
    assert_eq!(enforced.accepted_points, 0);
    assert_eq!(enforced.rejected_points, 1);
    assert!(
        enforced.message.contains("another tenant"),
        "{}",
        enforced.message
    );
}

/// A histogram point that fails enforcement (a sample too far ahead) loses all its
/// series, not some.
#[test]
fn a_failing_point_goes_whole() {
    let future = HistogramDataPoint {
        time_unix_nano: T + 3_600 * 1_000_000_000,
        count: 1,
        bucket_counts: vec![1, 0],
        explicit_bounds: vec![1.0],
        ..HistogramDataPoint::default()
    };
    let req = request(
        &[],
        vec![
            metric(
                "h",
                "",
                Data::Histogram(Histogram {
                    data_points: vec![future],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            ),
            metric("g", "", gauge(vec![number(&[], 1.0)])),
        ],
    );
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let enforced = enforce(
        run(&req, &OtlpConfig::default()),
        &policy,
        &Limits::default(),
        T_MS,
    )
    .expect("ok");
    assert_eq!(enforced.request.timeseries.len(), 1);
    assert_eq!(enforced.rejected_points, 1);
    assert_eq!(enforced.accepted_points, 1);
    assert!(
        enforced.message.contains("ahead of now"),
        "{}",
        enforced.message
    );
}

/// A small body cannot expand past the series cap.
#[test]
fn expansion_is_capped() {
    let wide = HistogramDataPoint {
        time_unix_nano: T,
        count: 0,
        bucket_counts: vec![0; 2001],
        explicit_bounds: (0..2000).map(f64::from).collect(),
        ..HistogramDataPoint::default()
    };
    let req = request(
        &[],
        vec![metric(
            "h",
            "",
            Data::Histogram(Histogram {
                data_points: vec![wide],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        )],
    );
    let err = translate(&req, &OtlpConfig::default(), caps()).expect_err("2002 series > 1000");
    assert!(err.to_string().contains("more than 1000 series"), "{err}");
}

/// pdata's `Value.AsString` for attribute values.
#[test]
fn attribute_values_as_strings() {
    let value = |v: any_value::Value| value_string(Some(&AnyValue { value: Some(v) }));
    assert_eq!(value(any_value::Value::IntValue(-42)), "-42");
    assert_eq!(value(any_value::Value::BoolValue(true)), "true");
    assert_eq!(value(any_value::Value::DoubleValue(0.5)), "0.5");
    assert_eq!(value(any_value::Value::DoubleValue(3.0)), "3");
    assert_eq!(value(any_value::Value::DoubleValue(1e-7)), "1e-7");
    assert_eq!(value(any_value::Value::DoubleValue(1e21)), "1e+21");
    assert_eq!(value(any_value::Value::BytesValue(vec![1, 2, 3])), "AQID");
    assert_eq!(
        value(any_value::Value::ArrayValue(ArrayValue {
            values: vec![
                AnyValue {
                    value: Some(any_value::Value::StringValue("a".into()))
                },
                AnyValue {
                    value: Some(any_value::Value::IntValue(1))
                },
            ]
        })),
        r#"["a",1]"#
    );
    assert_eq!(value_string(None), "");
    assert_eq!(format_float(0.1), "0.1");
    assert_eq!(format_float(1e21), "1000000000000000000000");
    assert_eq!(format_float(f64::INFINITY), "+Inf");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("in memory");
    encoder.finish().expect("in memory")
}

/// A gzip body's size claim is checked before inflating, and the stream is held to it:
/// a bomb that claims little is cut off after one byte more than its claim.
#[test]
fn gzip_bombs_are_refused() {
    let body = request(
        SERVICE,
        vec![metric("up", "", gauge(vec![number(&[], 1.0)]))],
    )
    .encode_to_vec();
    let compressed = gzip(&body);
    let claimed = gzip_claimed_len(&compressed, 1 << 20).expect("small");
    assert_eq!(claimed, body.len() as u64);
    assert_eq!(gunzip(&compressed, claimed).expect("inflates"), body);
    // 64 MiB of zeros in some 64 KiB: refused by its claim.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 128 << 10);
    assert!(matches!(
        gzip_claimed_len(&bomb, 32 << 20),
        Err(CodecError::DecodedTooLarge { .. })
    ));
    // The same bomb with a forged trailer claiming 1 KiB: cut off at 1 KiB + 1.
    let mut forged = bomb.clone();
    let n = forged.len();
    forged[n - 4..].copy_from_slice(&1024u32.to_le_bytes());
    let claimed = gzip_claimed_len(&forged, 32 << 20).expect("claims 1 KiB");
    let err = gunzip(&forged, claimed).expect_err("inflates past its claim");
    assert!(err.to_string().contains("more than 1024"), "{err}");
    for bad in [&b"not gzip at all, no"[..], &[0x1f, 0x8b, 8]] {
        assert!(matches!(
            gzip_claimed_len(bad, 1 << 20),
            Err(CodecError::Gzip(_))
        ));
    }
    let mut corrupt = compressed.clone();
    corrupt[12] ^= 0xff;
    assert!(gunzip(&corrupt, claimed_len_of(&corrupt)).is_err());
}

fn claimed_len_of(body: &[u8]) -> u64 {
    gzip_claimed_len(body, u64::MAX).expect("gzip")
}

#[test]
fn malformed_protobuf_is_refused() {
    assert!(matches!(
        decode(&[0xff, 0xff, 0xff]),
        Err(CodecError::Protobuf(_))
    ));
    assert_eq!(
        decode(&[]).expect("empty is valid"),
        ExportMetricsServiceRequest::default()
    );
}

/// Hostile or odd values translate or are refused, never panic: bounds and counts of
/// different lengths, NaN and infinite bounds, extreme scales and offsets, timestamps
/// at both ends, metrics without data, empty names.
#[test]
fn odd_values_never_panic() {
    let histogram = |bounds: Vec<f64>, counts: Vec<u64>| HistogramDataPoint {
        time_unix_nano: u64::MAX,
        count: u64::MAX,
        sum: Some(f64::NAN),
        bucket_counts: counts,
        explicit_bounds: bounds,
        ..HistogramDataPoint::default()
    };
    let exponential = |scale: i32, offset: i32, counts: Vec<u64>| ExponentialHistogramDataPoint {
        scale,
        count: 1,
        positive: Some(Buckets {
            offset,
            bucket_counts: counts.clone(),
        }),
        negative: Some(Buckets {
            offset: -offset,
            bucket_counts: counts,
        }),
        ..ExponentialHistogramDataPoint::default()
    };
    let req = request(
        &[("service.name", ""), ("", "empty key")],
        vec![
            metric(
                "h",
                "",
                Data::Histogram(Histogram {
                    data_points: vec![
                        histogram(
                            vec![f64::NAN, f64::INFINITY, -0.0],
                            vec![u64::MAX, u64::MAX],
                        ),
                        histogram(vec![], vec![1, 2, 3]),
                        histogram(vec![1.0, 2.0, 3.0], vec![]),
                    ],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            ),
            metric(
                "e",
                "",
                Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![
                        exponential(20, 1 << 20, vec![u64::MAX, 0, 0, 0, 5]),
                        exponential(-4, -(1 << 20), vec![0, 0, 0]),
                        exponential(i32::MAX, i32::MAX, vec![1]),
                        exponential(i32::MIN, 0, vec![1]),
                    ],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            ),
            Metric {
                name: "nodata".into(),
                ..Metric::default()
            },
            metric("", "", gauge(vec![number(&[], 1.0)])),
            metric("g", "{/}", gauge(vec![NumberDataPoint::default()])),
        ],
    );
    let translated = run(&req, &OtlpConfig::default());
    assert!(
        translated.rejected_points() >= 3,
        "{}",
        translated.message()
    );
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let enforced = enforce(translated, &policy, &Limits::default(), T_MS).expect("answers");
    // Every surviving series is a valid remote-write series of the tenant.
    for series in &enforced.request.timeseries {
        assert_eq!(
            series
                .labels
                .iter()
                .filter(|l| l.name == "tenant_id")
                .count(),
            1
        );
    }
}
