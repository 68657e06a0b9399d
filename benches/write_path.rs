//! The write path's codec over real Prometheus 2.42 bodies (tests/data/prom-2.42, 20
//! bodies of 2000 samples each), every figure beside its baselines measured in the same
//! run: a bare snappy decompress + compress of the same bodies, and plain prost.
//!
//! - `write_path`: whole codec per body (snappy in, rewrite, snappy out): the zero-copy
//!   path the relay runs, the prost reference path, plain prost, bare snappy.
//! - `write_stages`: the same split into decode, validate + enforce and encode on
//!   decompressed bodies (the zero-copy path does all three in one pass).
//! - `write_path_bytes`: the zero-copy path and bare snappy in decoded bytes per second.
//!
//! Run: `cargo bench --bench write_path`

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use promgate::codec::snappy::{compress, decompress_capped, decompress_capped_into};
use promgate::codec::splice::rewrite;
use promgate::codec::write::{decode, encode_compressed, validate_and_enforce, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::WriteRequest;
use prost::Message;

mod common;

const LIMIT: u64 = 32 << 20;
/// Far ahead of the fixtures' timestamps and far behind `i64::MAX`.
const NOW: i64 = i64::MAX / 2;

struct Fixture {
    compressed: Vec<Vec<u8>>,
    decoded: Vec<Vec<u8>>,
    samples: u64,
    decoded_bytes: u64,
}

fn fixture() -> Fixture {
    let compressed = common::captured_bodies();
    let decoded: Vec<Vec<u8>> = compressed
        .iter()
        .map(|body| decompress_capped(body, LIMIT).expect("snappy"))
        .collect();
    let samples = decoded
        .iter()
        .map(|body| {
            let request = decode(body).expect("protobuf");
            request
                .timeseries
                .iter()
                .map(|s| s.samples.len() as u64)
                .sum::<u64>()
        })
        .sum();
    let decoded_bytes = decoded.iter().map(|body| body.len() as u64).sum();
    Fixture {
        compressed,
        decoded,
        samples,
        decoded_bytes,
    }
}

fn policy() -> LabelPolicy {
    LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override)
}

fn snappy_roundtrip(body: &[u8]) -> Vec<u8> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .expect("snappy");
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("compress")
}

/// What the relay does with a body: capped decompress and one-pass rewrite into buffers
/// reused from body to body, then compress.
fn splice_path(body: &[u8], policy: &LabelPolicy, buffers: &mut (Vec<u8>, Vec<u8>)) -> Vec<u8> {
    let (decoded, out) = buffers;
    decompress_capped_into(body, LIMIT, decoded).expect("snappy");
    rewrite(decoded, policy, &Limits::default(), NOW, out).expect("valid");
    compress(out)
}

fn bench_snappy_roundtrip(group: &mut BenchmarkGroup<'_, WallTime>, fixture: &Fixture) {
    group.bench_function("baseline_snappy_roundtrip", |b| {
        b.iter(|| {
            for body in &fixture.compressed {
                black_box(snappy_roundtrip(body));
            }
        })
    });
}

fn bench_splice(group: &mut BenchmarkGroup<'_, WallTime>, fixture: &Fixture, policy: &LabelPolicy) {
    group.bench_function("promgate_splice", |b| {
        let mut buffers = (Vec::new(), Vec::new());
        b.iter(|| {
            for body in &fixture.compressed {
                black_box(splice_path(body, policy, &mut buffers));
            }
        })
    });
}

fn write_path(c: &mut Criterion) {
    let fixture = fixture();
    let policy = policy();
    let limits = Limits::default();
    let mut group = c.benchmark_group("write_path");
    group.throughput(Throughput::Elements(fixture.samples));
    bench_snappy_roundtrip(&mut group, &fixture);
    group.bench_function("baseline_prost_decode_encode", |b| {
        b.iter(|| {
            for body in &fixture.compressed {
                let raw = snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .expect("snappy");
                let request = WriteRequest::decode(raw.as_slice()).expect("protobuf");
                black_box(compress(&request.encode_to_vec()));
            }
        })
    });
    group.bench_function("reference_prost_enforce", |b| {
        b.iter(|| {
            for body in &fixture.compressed {
                let decoded = decompress_capped(body, LIMIT).expect("snappy");
                let mut request = decode(&decoded).expect("protobuf");
                validate_and_enforce(&mut request, &policy, &limits, NOW).expect("valid");
                black_box(encode_compressed(&request));
            }
        })
    });
    bench_splice(&mut group, &fixture, &policy);
    group.finish();

    let mut group = c.benchmark_group("write_path_bytes");
    group.throughput(Throughput::Bytes(fixture.decoded_bytes));
    bench_snappy_roundtrip(&mut group, &fixture);
    bench_splice(&mut group, &fixture, &policy);
    group.finish();
}

fn write_stages(c: &mut Criterion) {
    let fixture = fixture();
    let policy = policy();
    let limits = Limits::default();
    let requests: Vec<WriteRequest> = fixture
        .decoded
        .iter()
        .map(|body| decode(body).expect("protobuf"))
        .collect();
    let mut group = c.benchmark_group("write_stages");
    group.throughput(Throughput::Elements(fixture.samples));
    group.bench_function("snappy_decompress", |b| {
        b.iter(|| {
            for body in &fixture.compressed {
                black_box(decompress_capped(body, LIMIT).expect("snappy"));
            }
        })
    });
    group.bench_function("prost_decode", |b| {
        b.iter(|| {
            for body in &fixture.decoded {
                black_box(decode(body).expect("protobuf"));
            }
        })
    });
    group.bench_function("prost_validate_enforce", |b| {
        b.iter_batched(
            || requests.clone(),
            |mut requests| {
                for request in &mut requests {
                    validate_and_enforce(request, &policy, &limits, NOW).expect("valid");
                }
                requests
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("prost_encode", |b| {
        b.iter(|| {
            for request in &requests {
                black_box(request.encode_to_vec());
            }
        })
    });
    group.bench_function("splice_decode_enforce_encode", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            for body in &fixture.decoded {
                black_box(rewrite(body, &policy, &limits, NOW, &mut out).expect("valid"));
            }
        })
    });
    group.bench_function("snappy_compress", |b| {
        b.iter(|| {
            for body in &fixture.decoded {
                black_box(compress(body));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, write_path, write_stages);
criterion_main!(benches);
