//! The active series limit's cost (DESIGN §14), each figure beside its baseline in the
//! same run, over real Prometheus 2.42 bodies (tests/data/prom-2.42, 2000 series each):
//!
//! - `active_series_tracker`: admitting one request's 2000 series identities, all
//!   already active (the steady state of a scraping Prometheus), beside inserting the
//!   same identities into a plain `HashSet<u64>`;
//! - `active_series_write_path`: the zero-copy rewrite of the decompressed bodies with
//!   identities noted and admitted, beside the same rewrite without them.
//!
//! Memory per tracked series is measured by the tracker's unit test
//! `a_million_series_take_under_32_bytes_each`.
//!
//! Run: `cargo bench --bench active_series`

use std::collections::HashSet;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promgate::codec::refused::apply_limit;
use promgate::codec::snappy::decompress_capped;
use promgate::codec::splice::{rewrite, rewrite_tracked, SeriesLog};
use promgate::codec::write::{LabelPolicy, WriteStats};
use promgate::config::{ConflictPolicy, Limits};
use promgate::series::limit::SeriesLimit;
use promgate::series::{ActiveSeries, SeriesKey, SeriesSpan};

mod common;

const LIMIT: u64 = 32 << 20;
const NOW: i64 = i64::MAX / 2;

fn decoded_bodies() -> Vec<Vec<u8>> {
    common::captured_bodies()
        .iter()
        .map(|body| decompress_capped(body, LIMIT).expect("snappy"))
        .collect()
}

fn identities_of(decoded: &[u8], policy: &LabelPolicy, key: &SeriesKey) -> Vec<u64> {
    let mut spans = Vec::new();
    let mut out = Vec::new();
    let log = SeriesLog {
        key,
        spans: &mut spans,
    };
    rewrite_tracked(
        decoded,
        policy,
        &Limits::default(),
        NOW,
        &mut out,
        Some(log),
    )
    .expect("valid");
    spans.iter().map(|span| span.identity).collect()
}

fn tracker(c: &mut Criterion) {
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let key = SeriesKey::derive(b"bench");
    let identities = identities_of(&decoded_bodies()[0], &policy, &key);
    let mut group = c.benchmark_group("active_series_tracker");
    group.throughput(Throughput::Elements(identities.len() as u64));
    group.measurement_time(Duration::from_secs(5));
    let mut set: HashSet<u64> = identities.iter().copied().collect();
    group.bench_function("hashset_baseline", |b| {
        b.iter(|| {
            for identity in &identities {
                black_box(set.insert(*identity));
            }
        })
    });
    let active = ActiveSeries::new();
    active.admit(
        "alpha",
        150_000,
        Duration::from_secs(1200),
        identities.iter().copied(),
        |_| {},
    );
    group.bench_function("tracker_admit_active", |b| {
        b.iter(|| {
            let mut admitted = 0u32;
            active.admit(
                "alpha",
                150_000,
                Duration::from_secs(1200),
                identities.iter().copied(),
                |ok| admitted += u32::from(ok),
            );
            black_box(admitted)
        })
    });
    group.finish();
}

fn write_path(c: &mut Criterion) {
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let limits = Limits::default();
    let key = SeriesKey::derive(b"bench");
    let bodies = decoded_bodies();
    let series: u64 = bodies
        .iter()
        .map(|body| identities_of(body, &policy, &key).len() as u64)
        .sum();
    let mut group = c.benchmark_group("active_series_write_path");
    group.throughput(Throughput::Elements(series));
    group.measurement_time(Duration::from_secs(8));
    let mut out = Vec::new();
    group.bench_function("rewrite_baseline", |b| {
        b.iter(|| {
            for body in &bodies {
                black_box(rewrite(body, &policy, &limits, NOW, &mut out).expect("valid"));
            }
        })
    });
    let active = ActiveSeries::new();
    let mut spans: Vec<SeriesSpan> = Vec::new();
    group.bench_function("rewrite_tracked_and_admitted", |b| {
        b.iter(|| {
            for body in &bodies {
                let log = SeriesLog {
                    key: &key,
                    spans: &mut spans,
                };
                let mut rewritten =
                    rewrite_tracked(body, &policy, &limits, NOW, &mut out, Some(log))
                        .expect("valid");
                let limit = SeriesLimit {
                    tracker: &active,
                    tenant: "alpha",
                    max_active_series: 150_000,
                    idle_timeout: Duration::from_secs(1200),
                };
                let mut stats: WriteStats = rewritten.stats;
                let (end, refused) =
                    apply_limit(&limit, &spans, &mut out, rewritten.series_end, &mut stats);
                rewritten.series_end = end;
                black_box((rewritten, refused));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, tracker, write_path);
criterion_main!(benches);
