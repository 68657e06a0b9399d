//! A typical per-tenant rule set's cost per series (DESIGN §16), beside the plain path
//! in the same run, over the captured Prometheus 2.42 bodies (tests/data/prom-2.42, 20
//! bodies of 2000 series):
//!
//! - `rewrite_baseline`: the zero-copy rewrite of a tenant without rules;
//! - `rewrite_with_rules`: a tenant with the rule set below: each body decoded with
//!   prost, relabeled, encoded again, then rewritten on the same zero-copy path;
//! - `rules_alone`: the rules run over every series' labels (cloned each time, as the
//!   prost path owns them), without decoding or encoding.
//!
//! The rule set: drop a noisy metric family by name, drop a high-cardinality label,
//! copy `job` into `service`, drop two histogram buckets by name and `le`.
//!
//! Run: `cargo bench --bench relabel`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promgate::codec::relabel::Scope;
use promgate::codec::snappy::decompress_capped;
use promgate::codec::splice::rewrite;
use promgate::codec::write::LabelPolicy;
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::WriteRequest;
use promgate::series::relabel::{Bounds, RelabelConfig, RelabelRules};
use prost::Message;

mod common;

const LIMIT: u64 = 32 << 20;
const NOW: i64 = 1_800_000_000_000;

fn typical_rules() -> Vec<RelabelConfig> {
    serde_json::from_str(
        r#"[
            {"source_labels": ["__name__"], "regex": "go_gc_.*", "action": "drop"},
            {"regex": "pod_uid|container_id", "action": "labeldrop"},
            {"source_labels": ["job"], "target_label": "service"},
            {"source_labels": ["__name__", "le"], "regex": ".*_bucket;(0\\.1|0\\.2)", "action": "drop"}
        ]"#,
    )
    .expect("rules")
}

fn relabel(c: &mut Criterion) {
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let limits = Limits::default();
    let rules = RelabelRules::compile(&typical_rules()).expect("valid rules");
    let scope = Scope::of(&rules, &policy, &limits).expect("rules");
    let bodies: Vec<Vec<u8>> = common::captured_bodies()
        .iter()
        .map(|body| decompress_capped(body, LIMIT).expect("snappy"))
        .collect();
    let series: Vec<_> = bodies
        .iter()
        .flat_map(|body| {
            WriteRequest::decode(body.as_slice())
                .expect("protobuf")
                .timeseries
        })
        .map(|series| series.labels)
        .collect();
    let mut group = c.benchmark_group("relabel");
    group.throughput(Throughput::Elements(series.len() as u64));
    group.measurement_time(Duration::from_secs(8));
    let mut out = Vec::new();
    let mut relabeled = Vec::new();
    group.bench_function("rewrite_baseline", |b| {
        b.iter(|| {
            for body in &bodies {
                black_box(rewrite(body, &policy, &limits, NOW, &mut out).expect("valid"));
            }
        })
    });
    group.bench_function("rewrite_with_rules", |b| {
        b.iter(|| {
            for body in &bodies {
                let dropped = scope.v1(body, &mut relabeled).expect("relabeled");
                black_box(dropped);
                black_box(rewrite(&relabeled, &policy, &limits, NOW, &mut out).expect("valid"));
            }
        })
    });
    let bounds = Bounds {
        max_labels: limits.max_labels_per_series,
        max_name_bytes: limits.max_label_name_bytes,
        max_value_bytes: limits.max_label_value_bytes,
    };
    group.bench_function("rules_alone", |b| {
        b.iter(|| {
            for labels in &series {
                let mut labels = labels.clone();
                black_box(
                    rules
                        .apply(&mut labels, &["tenant_id"], bounds)
                        .expect("bounds"),
                );
            }
        })
    });
    group.finish();
}

criterion_group!(benches, relabel);
criterion_main!(benches);
