//! Remote write 2.0 beside 1.0 on the same series: the 20 captured Prometheus 2.42
//! bodies (tests/data/prom-2.42, 2000 samples each) converted to 2.0 (symbols interned
//! in first-seen order, as Prometheus' sender does), every figure measured in the same
//! run as its baselines.
//!
//! - `v1_splice`: the 1.0 zero-copy path the relay runs (snappy in, rewrite, snappy out).
//! - `v2_splice_to_v2`: the 2.0 zero-copy path the relay runs for a 2.0 backend: snappy
//!   in, validate and enforce in place, the 2.0 form written, snappy out.
//! - `v2_splice_to_v1`: the same, converted to 1.0 for a 1.0 backend.
//! - `v2_reference_to_v2`: the prost reference of the 2.0 path: snappy in, prost decode,
//!   validate, enforce in the symbol table, encode, snappy out.
//! - `v2_reference_to_v1`: the same, but converted to 1.0 for a 1.0 backend.
//! - `baseline_snappy_roundtrip_v2`: a bare snappy decompress + compress of the 2.0 bodies.
//!
//! Run: `cargo bench --bench write_v2`

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promgate::codec::rw2;
use promgate::codec::snappy::{compress, decompress_capped, decompress_capped_into};
use promgate::codec::splice::rewrite;
use promgate::codec::splice_v2::{rewrite_v2, Forms};
use promgate::codec::write::{decode, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::write_v2 as v2;
use promgate::proto::WriteRequest;
use prost::Message;

mod common;

const LIMIT: u64 = 32 << 20;
/// Far ahead of the fixtures' timestamps and far behind `i64::MAX`.
const NOW: i64 = i64::MAX / 2;

/// The same series as remote write 2.0.
fn to_v2(request: &WriteRequest) -> v2::Request {
    let mut symbols = vec![String::new()];
    let mut index: HashMap<String, u32> = HashMap::from([(String::new(), 0)]);
    let mut intern = |text: &str| -> u32 {
        if let Some(&found) = index.get(text) {
            return found;
        }
        symbols.push(text.to_string());
        let reference = (symbols.len() - 1) as u32;
        index.insert(text.to_string(), reference);
        reference
    };
    let timeseries = request
        .timeseries
        .iter()
        .map(|series| v2::TimeSeries {
            labels_refs: series
                .labels
                .iter()
                .flat_map(|label| [intern(&label.name), intern(&label.value)])
                .collect(),
            samples: series
                .samples
                .iter()
                .map(|sample| v2::Sample {
                    value: sample.value,
                    timestamp: sample.timestamp,
                    start_timestamp: 0,
                })
                .collect(),
            ..v2::TimeSeries::default()
        })
        .collect();
    v2::Request {
        symbols,
        timeseries,
    }
}

fn write_v2(c: &mut Criterion) {
    let v1_bodies = common::captured_bodies();
    let decoded: Vec<WriteRequest> = v1_bodies
        .iter()
        .map(|body| decode(&decompress_capped(body, LIMIT).expect("snappy")).expect("protobuf"))
        .collect();
    let samples: u64 = decoded
        .iter()
        .map(|request| {
            request
                .timeseries
                .iter()
                .map(|s| s.samples.len() as u64)
                .sum::<u64>()
        })
        .sum();
    let v2_bodies: Vec<Vec<u8>> = decoded
        .iter()
        .map(|request| compress(&to_v2(request).encode_to_vec()))
        .collect();
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let limits = Limits::default();
    let v1_bytes: usize = v1_bodies.iter().map(Vec::len).sum();
    let v2_bytes: usize = v2_bodies.iter().map(Vec::len).sum();
    println!("write_v2: 20 bodies, {samples} samples; compressed 1.0 {v1_bytes} bytes, 2.0 {v2_bytes} bytes");

    let mut group = c.benchmark_group("write_v2");
    group.throughput(Throughput::Elements(samples));
    group.bench_function("baseline_snappy_roundtrip_v2", |b| {
        b.iter(|| {
            for body in &v2_bodies {
                let raw = decompress_capped(body, LIMIT).expect("snappy");
                black_box(compress(&raw));
            }
        })
    });
    group.bench_function("v1_splice", |b| {
        let (mut decoded, mut out) = (Vec::new(), Vec::new());
        b.iter(|| {
            for body in &v1_bodies {
                decompress_capped_into(body, LIMIT, &mut decoded).expect("snappy");
                rewrite(&decoded, &policy, &limits, NOW, &mut out).expect("valid");
                black_box(compress(&out));
            }
        })
    });
    for (name, forms) in [
        (
            "v2_splice_to_v2",
            Forms {
                v2: true,
                v1: false,
            },
        ),
        (
            "v2_splice_to_v1",
            Forms {
                v2: false,
                v1: true,
            },
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for body in &v2_bodies {
                    let raw = decompress_capped(body, LIMIT).expect("snappy");
                    let rewritten = rewrite_v2(&raw, &policy, &limits, NOW, forms).expect("valid");
                    let out = rewritten.v2.or(rewritten.v1).expect("a form");
                    black_box(compress(&out));
                }
            })
        });
    }
    group.bench_function("v2_reference_to_v2", |b| {
        b.iter(|| {
            for body in &v2_bodies {
                let raw = decompress_capped(body, LIMIT).expect("snappy");
                let mut request = rw2::decode(&raw).expect("protobuf");
                rw2::validate_and_enforce(&mut request, &policy, &limits, NOW).expect("valid");
                black_box(compress(&request.encode_to_vec()));
            }
        })
    });
    group.bench_function("v2_reference_to_v1", |b| {
        b.iter(|| {
            for body in &v2_bodies {
                let raw = decompress_capped(body, LIMIT).expect("snappy");
                let mut request = rw2::decode(&raw).expect("protobuf");
                rw2::validate_and_enforce(&mut request, &policy, &limits, NOW).expect("valid");
                black_box(compress(&rw2::encode_v1(&request, false)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, write_v2);
criterion_main!(benches);
