//! HA pairs' de-duplication cost per sample (DESIGN §15), beside the plain path in the
//! same run, over the captured Prometheus 2.42 bodies (tests/data/prom-2.42, 2000 series
//! each) with `cluster="prod"` and `__replica__="a"` set on every series, as a pair's
//! external labels put them:
//!
//! - `rewrite_baseline`: the zero-copy rewrite of a tenant without HA (every label kept);
//! - `rewrite_ha_elected`: HA on, every series from the elected replica (each series'
//!   labels found, the replica label cut out, the verdict taken from the cache);
//! - `rewrite_ha_deduplicated`: HA on, every series from the other replica (written, then
//!   dropped and counted).
//!
//! Run: `cargo bench --bench ha_pairs`

use std::collections::HashMap;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promgate::codec::ha::HaGate;
use promgate::codec::snappy::decompress_capped;
use promgate::codec::splice::{rewrite, rewrite_gated};
use promgate::codec::write::LabelPolicy;
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::{Label, WriteRequest};
use promgate::series::ha::{Election, HaDecisions, HaSettings, HaTracker};
use prost::Message;

mod common;

const LIMIT: u64 = 32 << 20;
const NOW: i64 = 1_800_000_000_000;

/// The captured bodies, decompressed, each series with the pair's labels added.
fn paired_bodies(replica: &str) -> (Vec<Vec<u8>>, u64) {
    let mut samples = 0;
    let bodies = common::captured_bodies()
        .iter()
        .map(|body| {
            let decoded = decompress_capped(body, LIMIT).expect("snappy");
            let mut request = WriteRequest::decode(decoded.as_slice()).expect("protobuf");
            for series in &mut request.timeseries {
                // The captured Prometheus had external labels of its own.
                series
                    .labels
                    .retain(|label| label.name != "cluster" && label.name != "__replica__");
                series.labels.push(Label {
                    name: "cluster".into(),
                    value: "prod".into(),
                });
                series.labels.push(Label {
                    name: "__replica__".into(),
                    value: replica.into(),
                });
                series.labels.sort_by(|a, b| a.name.cmp(&b.name));
                samples += series.samples.len() as u64;
            }
            request.encode_to_vec()
        })
        .collect();
    (bodies, samples)
}

fn write_path(c: &mut Criterion) {
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let limits = Limits {
        accept_ha_samples: true,
        ..Limits::default()
    };
    let settings = HaSettings::of(&limits);
    let tracker = HaTracker::new();
    tracker.store(
        "alpha",
        Election {
            cluster: "prod".into(),
            replica: "a".into(),
            received_at: NOW,
            elected_at: NOW,
            changes: 0,
        },
    );
    let resolved = HashMap::new();
    let (elected, samples) = paired_bodies("a");
    let (other, _) = paired_bodies("b");
    let mut group = c.benchmark_group("ha_write_path");
    group.throughput(Throughput::Elements(samples));
    group.measurement_time(Duration::from_secs(8));
    let mut out = Vec::new();
    group.bench_function("rewrite_baseline", |b| {
        b.iter(|| {
            for body in &elected {
                black_box(rewrite(body, &policy, &limits, NOW, &mut out).expect("valid"));
            }
        })
    });
    for (name, bodies, written) in [
        ("rewrite_ha_elected", &elected, true),
        ("rewrite_ha_deduplicated", &other, false),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for body in bodies {
                    let mut decisions =
                        HaDecisions::new(&tracker, "alpha", settings, NOW, &resolved);
                    let mut decide = |cluster: &[u8], replica: &[u8], samples: u64| {
                        decisions.decide(cluster, replica, samples)
                    };
                    let rewritten = rewrite_gated(
                        body,
                        &policy,
                        &limits,
                        NOW,
                        &mut out,
                        None,
                        Some(HaGate {
                            decide: &mut decide,
                        }),
                    )
                    .expect("valid");
                    assert_eq!(rewritten.stats.series > 0, written);
                    black_box((rewritten, &decisions.outcome));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, write_path);
criterion_main!(benches);
