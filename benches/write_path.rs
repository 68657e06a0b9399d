//! decode → enforce → encode over real Prometheus 2.42 bodies (tests/data/prom-2.42,
//! 2000 samples each), beside two baselines measured in the same run: plain prost
//! decode + encode, and a bare snappy decompress + compress of the same bodies.
//!
//! Run: `cargo bench --bench write_path`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promgate::codec::snappy::decompress_capped;
use promgate::codec::write::{decode, encode_compressed, validate_and_enforce, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::WriteRequest;
use prost::Message;

const LIMIT: u64 = 32 << 20;

fn bodies() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/prom-2.42");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data/prom-2.42")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("body"))
        .collect()
}

fn write_path(c: &mut Criterion) {
    let bodies = bodies();
    let samples: u64 = bodies
        .iter()
        .map(|body| {
            let request =
                decode(&decompress_capped(body, LIMIT).expect("snappy")).expect("protobuf");
            request
                .timeseries
                .iter()
                .map(|series| series.samples.len() as u64)
                .sum::<u64>()
        })
        .sum();
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let limits = Limits::default();
    let mut group = c.benchmark_group("write_path");
    group.throughput(Throughput::Elements(samples));

    group.bench_function("baseline_snappy_roundtrip", |b| {
        b.iter(|| {
            for body in &bodies {
                let raw = snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .expect("snappy");
                black_box(
                    snap::raw::Encoder::new()
                        .compress_vec(&raw)
                        .expect("compress"),
                );
            }
        })
    });
    group.bench_function("baseline_prost_decode_encode", |b| {
        b.iter(|| {
            for body in &bodies {
                let raw = snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .expect("snappy");
                let request = WriteRequest::decode(raw.as_slice()).expect("protobuf");
                black_box(
                    snap::raw::Encoder::new()
                        .compress_vec(&request.encode_to_vec())
                        .expect("compress"),
                );
            }
        })
    });
    group.bench_function("promgate_decode_enforce_encode", |b| {
        b.iter(|| {
            for body in &bodies {
                let decoded = decompress_capped(body, LIMIT).expect("snappy");
                let mut request = decode(&decoded).expect("protobuf");
                validate_and_enforce(&mut request, &policy, &limits, i64::MAX / 2).expect("valid");
                black_box(encode_compressed(&request));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, write_path);
criterion_main!(benches);
