//! The OTLP path's translation in data points per second, beside the remote-write path's
//! samples per second over the same metrics, in the same run.
//!
//! The input is the captured Prometheus 2.42 bodies of `tests/data/prom-2.42` (20 bodies,
//! 2000 samples each), and the same metrics as OTLP: each body becomes one
//! `ExportMetricsServiceRequest`, its series grouped into a resource per `job`/`instance`
//! (`service.name`, `service.instance.id`) and a gauge per metric name, one data point per
//! sample, the other labels as attributes. Both paths go from the bytes a sender posts to
//! the snappy-compressed remote write 1.0 body promgate sends a backend:
//!
//! - `remote_write_splice`: snappy decompress, zero-copy rewrite, compress (the relay's
//!   remote-write path);
//! - `remote_write_prost`: the prost reference path of remote write;
//! - `otlp`: protobuf decode, translate, enforce, encode, compress (the relay's OTLP path
//!   for an uncompressed body);
//! - `otlp_gzip`: the same from a gzip body;
//! - `otlp_translate_only`: translation alone, from a decoded request.
//!
//! Run: `cargo bench --bench otlp`

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use promgate::codec::otlp::{self, Caps};
use promgate::codec::snappy::{compress, decompress_capped, decompress_capped_into};
use promgate::codec::splice::rewrite;
use promgate::codec::write::{decode, encode_compressed, validate_and_enforce, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits, OtlpConfig};
use prost::Message;

mod common;

const LIMIT: u64 = 32 << 20;
/// Far ahead of the fixtures' timestamps and far behind `i64::MAX`.
const NOW: i64 = i64::MAX / 2;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// One remote-write body as the OTLP export of the same metrics; and its samples.
fn as_otlp(decoded: &[u8]) -> (ExportMetricsServiceRequest, u64) {
    let request = decode(decoded).expect("protobuf");
    // (job, instance) -> metric name -> points
    let mut resources: BTreeMap<(String, String), BTreeMap<String, Vec<NumberDataPoint>>> =
        BTreeMap::new();
    let mut samples = 0;
    for series in &request.timeseries {
        let label = |name: &str| {
            series
                .labels
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.value.clone())
                .unwrap_or_default()
        };
        let attributes: Vec<KeyValue> = series
            .labels
            .iter()
            .filter(|l| !["__name__", "job", "instance"].contains(&l.name.as_str()))
            .map(|l| kv(&l.name, &l.value))
            .collect();
        let points = resources
            .entry((label("job"), label("instance")))
            .or_default()
            .entry(label("__name__"))
            .or_default();
        for sample in &series.samples {
            samples += 1;
            points.push(NumberDataPoint {
                attributes: attributes.clone(),
                time_unix_nano: sample.timestamp as u64 * 1_000_000,
                value: Some(number_data_point::Value::AsDouble(sample.value)),
                ..NumberDataPoint::default()
            });
        }
    }
    let resource_metrics = resources
        .into_iter()
        .map(|((job, instance), metrics)| ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", &job),
                    kv("service.instance.id", &instance),
                ],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: metrics
                    .into_iter()
                    .map(|(name, points)| Metric {
                        name,
                        data: Some(Data::Gauge(Gauge {
                            data_points: points,
                        })),
                        ..Metric::default()
                    })
                    .collect(),
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        })
        .collect();
    (ExportMetricsServiceRequest { resource_metrics }, samples)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("in memory");
    encoder.finish().expect("in memory")
}

/// The relay's OTLP path from a decoded body to the backend body.
fn otlp_path(
    decoded: &[u8],
    config: &OtlpConfig,
    policy: &LabelPolicy,
    limits: &Limits,
) -> Vec<u8> {
    let request = otlp::decode(decoded).expect("protobuf");
    let translated = otlp::translate(&request, config, Caps::of(limits)).expect("translates");
    let enforced = otlp::enforce(translated, policy, limits, NOW).expect("valid");
    assert_eq!(enforced.rejected_points, 0);
    compress(&enforced.request.encode_to_vec())
}

fn otlp_vs_remote_write(c: &mut Criterion) {
    let compressed = common::captured_bodies();
    let decoded: Vec<Vec<u8>> = compressed
        .iter()
        .map(|body| decompress_capped(body, LIMIT).expect("snappy"))
        .collect();
    let converted: Vec<(ExportMetricsServiceRequest, u64)> =
        decoded.iter().map(|body| as_otlp(body)).collect();
    let samples: u64 = converted.iter().map(|(_, samples)| samples).sum();
    let otlp_bodies: Vec<Vec<u8>> = converted.iter().map(|(r, _)| r.encode_to_vec()).collect();
    let otlp_gzip: Vec<Vec<u8>> = otlp_bodies.iter().map(|body| gzip(body)).collect();
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let limits = Limits::default();
    let config = OtlpConfig::default();
    // The same samples either way, and the OTLP path makes one series per point.
    for (body, (request, samples)) in otlp_bodies.iter().zip(&converted) {
        let _ = request;
        let out = otlp_path(body, &config, &policy, &limits);
        let raw = decompress_capped(&out, LIMIT).expect("snappy");
        let series = decode(&raw).expect("protobuf").timeseries.len() as u64;
        assert_eq!(series, *samples);
    }

    let mut group = c.benchmark_group("otlp_vs_remote_write");
    group.throughput(Throughput::Elements(samples));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("remote_write_splice", |b| {
        let (mut decoded, mut out) = (Vec::new(), Vec::new());
        b.iter(|| {
            for body in &compressed {
                decompress_capped_into(body, LIMIT, &mut decoded).expect("snappy");
                rewrite(&decoded, &policy, &limits, NOW, &mut out).expect("valid");
                black_box(compress(&out));
            }
        })
    });
    group.bench_function("remote_write_prost", |b| {
        b.iter(|| {
            for body in &compressed {
                let decoded = decompress_capped(body, LIMIT).expect("snappy");
                let mut request = decode(&decoded).expect("protobuf");
                validate_and_enforce(&mut request, &policy, &limits, NOW).expect("valid");
                black_box(encode_compressed(&request));
            }
        })
    });
    group.bench_function("otlp", |b| {
        b.iter(|| {
            for body in &otlp_bodies {
                black_box(otlp_path(body, &config, &policy, &limits));
            }
        })
    });
    group.bench_function("otlp_gzip", |b| {
        b.iter(|| {
            for body in &otlp_gzip {
                let claimed = otlp::gzip_claimed_len(body, LIMIT).expect("claim");
                let decoded = otlp::gunzip(body, claimed).expect("gzip");
                black_box(otlp_path(&decoded, &config, &policy, &limits));
            }
        })
    });
    group.bench_function("otlp_translate_only", |b| {
        b.iter(|| {
            for (request, _) in &converted {
                black_box(
                    otlp::translate(request, &config, Caps::of(&limits)).expect("translates"),
                );
            }
        })
    });
    group.finish();
}

criterion_group!(benches, otlp_vs_remote_write);
criterion_main!(benches);
