//! Usage accounting's cost on the write path (DESIGN §17): what a write handler does per
//! request (today's day from the clock, then the figures of one acknowledged write added
//! to the tenant's day slot), beside its baseline in the same run: the clock read alone,
//! and the same seven additions to plain atomics with no day. One thread, and four
//! threads counting for one tenant at once (the contended case: the same cache lines).
//!
//! Run: `cargo bench --bench usage`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use promgate::usage::{Field, TenantUsage};

const WRITE_FIELDS: [Field; 7] = [
    Field::WriteRequests,
    Field::Samples,
    Field::Histograms,
    Field::Exemplars,
    Field::RefusedSeriesLimit,
    Field::BytesCompressed,
    Field::BytesDecoded,
];

fn count_write(usage: &TenantUsage) {
    let today = usage.today();
    for (index, field) in WRITE_FIELDS.iter().enumerate() {
        today.add(*field, black_box(index as u64 + 1));
    }
}

fn plain_write(counters: &[AtomicU64; 7]) {
    for (index, counter) in counters.iter().enumerate() {
        counter.fetch_add(black_box(index as u64 + 1), Ordering::Relaxed);
    }
}

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("usage_per_request");
    group.measurement_time(Duration::from_secs(3));
    let usage = TenantUsage::new();
    group.bench_function("count_write", |b| b.iter(|| count_write(&usage)));
    let counters: [AtomicU64; 7] = std::array::from_fn(|_| AtomicU64::new(0));
    group.bench_function("baseline_plain_atomics", |b| {
        b.iter(|| plain_write(&counters))
    });
    group.bench_function("baseline_clock_read", |b| {
        b.iter(|| black_box(SystemTime::now()))
    });
    group.finish();
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("usage_four_threads");
    group.measurement_time(Duration::from_secs(3));
    const PER_THREAD: usize = 10_000;
    let usage = Arc::new(TenantUsage::new());
    group.bench_function("count_write", |b| {
        b.iter(|| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let usage = Arc::clone(&usage);
                    std::thread::spawn(move || {
                        for _ in 0..PER_THREAD {
                            count_write(&usage);
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("thread");
            }
        })
    });
    let counters = Arc::new(std::array::from_fn::<AtomicU64, 7, _>(|_| {
        AtomicU64::new(0)
    }));
    group.bench_function("baseline_plain_atomics", |b| {
        b.iter(|| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let counters = Arc::clone(&counters);
                    std::thread::spawn(move || {
                        for _ in 0..PER_THREAD {
                            plain_write(&counters);
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("thread");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, per_request, contended);
criterion_main!(benches);
