//! Property tests of the OTLP translation and enforcement (`promgate::codec::otlp`) over
//! generated exports full of awkward names (the tenant label, the service attributes,
//! `__name__`, `le`, names that sanitise alike or to nothing), values, temporalities,
//! flags and histogram shapes: nothing panics; every data point is either accepted or
//! counted as rejected; every forwarded series is a valid remote-write series carrying
//! exactly the caller's tenant; and translation is deterministic.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, ExponentialHistogram, ExponentialHistogramDataPoint,
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use promgate::codec::otlp::{enforce, translate, Caps};
use promgate::codec::write::LabelPolicy;
use promgate::config::{ConflictPolicy, Limits, OtlpConfig, Promotion};
use proptest::prelude::*;
use prost::Message;

const NOW_MS: i64 = 1_700_000_000_000;

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "tenant_id",
        "tenant.id",
        "service.name",
        "service.namespace",
        "service.instance.id",
        "__name__",
        "le",
        "quantile",
        "job",
        "instance",
        "a.b",
        "a_b",
        "_x",
        "1st",
        "",
        "___",
        "ü",
        "host.name",
    ])
    .prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = Option<AnyValue>> {
    prop_oneof![
        prop::sample::select(vec!["", "beta", "alpha", "x;y", "ü"])
            .prop_map(|s| Some(any_value::Value::StringValue(s.to_string()))),
        any::<i64>().prop_map(|i| Some(any_value::Value::IntValue(i))),
        any::<bool>().prop_map(|b| Some(any_value::Value::BoolValue(b))),
        prop::num::f64::ANY.prop_map(|f| Some(any_value::Value::DoubleValue(f))),
        Just(None),
    ]
    .prop_map(|value| value.map(|value| AnyValue { value: Some(value) }))
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(
        (key(), value()).prop_map(|(key, value)| KeyValue {
            key,
            value,
            ..KeyValue::default()
        }),
        0..5,
    )
}

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(NOW_MS as u64 * 1_000_000),
        (0u64..600_000_000_000).prop_map(|d| NOW_MS as u64 * 1_000_000 - d),
        Just(0),
        Just(u64::MAX),
    ]
}

fn number_point() -> impl Strategy<Value = NumberDataPoint> {
    (
        attributes(),
        time(),
        prop::num::f64::ANY,
        any::<bool>(),
        0u32..3,
    )
        .prop_map(
            |(attributes, time_unix_nano, value, int, flags)| NumberDataPoint {
                attributes,
                time_unix_nano,
                value: Some(if int {
                    number_data_point::Value::AsInt(value as i64)
                } else {
                    number_data_point::Value::AsDouble(value)
                }),
                flags,
                ..NumberDataPoint::default()
            },
        )
}

fn histogram_point() -> impl Strategy<Value = HistogramDataPoint> {
    (
        attributes(),
        time(),
        prop::collection::vec(prop::num::f64::ANY, 0..4),
        prop::collection::vec(0u64..1000, 0..5),
        prop::option::of(prop::num::f64::ANY),
        0u32..3,
    )
        .prop_map(
            |(attributes, time_unix_nano, explicit_bounds, bucket_counts, sum, flags)| {
                HistogramDataPoint {
                    attributes,
                    time_unix_nano,
                    count: bucket_counts.iter().sum(),
                    sum,
                    bucket_counts,
                    explicit_bounds,
                    flags,
                    ..HistogramDataPoint::default()
                }
            },
        )
}

fn exponential_point() -> impl Strategy<Value = ExponentialHistogramDataPoint> {
    (
        attributes(),
        time(),
        -6i32..24,
        -40i32..40,
        prop::collection::vec(0u64..100, 0..12),
        0u32..3,
    )
        .prop_map(
            |(attributes, time_unix_nano, scale, offset, counts, flags)| {
                ExponentialHistogramDataPoint {
                    attributes,
                    time_unix_nano,
                    count: counts.iter().sum(),
                    sum: Some(1.0),
                    scale,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset,
                        bucket_counts: counts.clone(),
                    }),
                    negative: Some(Buckets {
                        offset: -offset,
                        bucket_counts: counts,
                    }),
                    flags,
                    ..ExponentialHistogramDataPoint::default()
                }
            },
        )
}

fn summary_point() -> impl Strategy<Value = SummaryDataPoint> {
    (
        attributes(),
        time(),
        prop::collection::vec((0.0f64..=1.0, prop::num::f64::ANY), 0..3),
    )
        .prop_map(|(attributes, time_unix_nano, quantiles)| SummaryDataPoint {
            attributes,
            time_unix_nano,
            count: 3,
            sum: 1.5,
            quantile_values: quantiles
                .into_iter()
                .map(|(quantile, value)| ValueAtQuantile { quantile, value })
                .collect(),
            ..SummaryDataPoint::default()
        })
}

fn points<S: Strategy>(strategy: S) -> prop::collection::VecStrategy<S> {
    prop::collection::vec(strategy, 0..3)
}

fn data() -> impl Strategy<Value = Option<Data>> {
    prop_oneof![
        points(number_point()).prop_map(|data_points| Some(Data::Gauge(Gauge { data_points }))),
        (points(number_point()), 0i32..4, any::<bool>()).prop_map(
            |(data_points, aggregation_temporality, is_monotonic)| Some(Data::Sum(Sum {
                data_points,
                aggregation_temporality,
                is_monotonic,
            }))
        ),
        (points(histogram_point()), 1i32..3).prop_map(|(data_points, aggregation_temporality)| {
            Some(Data::Histogram(Histogram {
                data_points,
                aggregation_temporality,
            }))
        }),
        (points(exponential_point()), 1i32..3).prop_map(
            |(data_points, aggregation_temporality)| Some(Data::ExponentialHistogram(
                ExponentialHistogram {
                    data_points,
                    aggregation_temporality,
                }
            ))
        ),
        points(summary_point())
            .prop_map(|data_points| Some(Data::Summary(Summary { data_points }))),
        Just(None),
    ]
}

fn metric() -> impl Strategy<Value = Metric> {
    (
        prop::sample::select(vec![
            "",
            "@@",
            "http.requests",
            "x_total",
            "cpu",
            "1up",
            "a.b",
        ]),
        prop::sample::select(vec!["", "s", "By", "1", "{req}", "By/s", "%", "/"]),
        data(),
    )
        .prop_map(|(name, unit, data)| Metric {
            name: name.into(),
            unit: unit.into(),
            data,
            ..Metric::default()
        })
}

fn request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    prop::collection::vec(
        (attributes(), prop::collection::vec(metric(), 0..4)).prop_map(|(attributes, metrics)| {
            ResourceMetrics {
                resource: Some(Resource {
                    attributes,
                    ..Resource::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }
        }),
        0..3,
    )
    .prop_map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
}

fn count_points(request: &ExportMetricsServiceRequest) -> u64 {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter_map(|m| m.data.as_ref())
        .map(|data| match data {
            Data::Gauge(g) => g.data_points.len(),
            Data::Sum(s) => s.data_points.len(),
            Data::Histogram(h) => h.data_points.len(),
            Data::ExponentialHistogram(h) => h.data_points.len(),
            Data::Summary(s) => s.data_points.len(),
        } as u64)
        .sum()
}

fn config() -> impl Strategy<Value = OtlpConfig> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(promote, keep, delta, sanitize)| OtlpConfig {
            promotion: if promote {
                Promotion::AllExcept(Default::default())
            } else {
                Promotion::Listed(Default::default())
            },
            keep_identifying_resource_attributes: keep,
            allow_delta_temporality: delta,
            label_name_underscore_sanitization: sanitize,
            label_name_preserve_multiple_underscores: !sanitize,
            ..OtlpConfig::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn every_point_is_accounted_for_and_every_series_is_the_tenants(
        request in request(),
        config in config(),
        reject in any::<bool>(),
    ) {
        let limits = Limits::default();
        let translated = translate(&request, &config, Caps::of(&limits)).expect("within the caps");
        prop_assert_eq!(
            translated.accepted_points() + translated.rejected_points(),
            count_points(&request)
        );
        let again = translate(&request, &config, Caps::of(&limits)).expect("within the caps");
        // Bytes, not values: NaN samples are equal bit for bit only.
        prop_assert_eq!(again.request.encode_to_vec(), translated.request.encode_to_vec());
        let on_conflict = if reject { ConflictPolicy::Reject } else { ConflictPolicy::Override };
        let policy = LabelPolicy::new(
            "tenant_id",
            "alpha",
            [("region".to_string(), "eu".to_string())],
            on_conflict,
        );
        let enforced = enforce(translated, &policy, &limits, NOW_MS).expect("within the caps");
        prop_assert_eq!(enforced.accepted_points + enforced.rejected_points, count_points(&request));
        prop_assert_eq!(enforced.stats.series, enforced.request.timeseries.len());
        for series in &enforced.request.timeseries {
            let names: Vec<&str> = series.labels.iter().map(|l| l.name.as_str()).collect();
            prop_assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, unique: {:?}", names);
            prop_assert!(series.labels.iter().all(|l| !l.value.is_empty() && !l.name.is_empty()));
            prop_assert!(names.contains(&"__name__"));
            let tenant: Vec<&str> = series
                .labels
                .iter()
                .filter(|l| l.name == "tenant_id")
                .map(|l| l.value.as_str())
                .collect();
            prop_assert_eq!(tenant, vec!["alpha"]);
            prop_assert!(series.labels.iter().any(|l| l.name == "region" && l.value == "eu"));
            prop_assert_eq!(series.samples.len() + series.histograms.len() > 0, true);
        }
    }
}
