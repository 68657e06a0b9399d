//! Choosing the durable queue's storage (DESIGN §9): durable appends of 50 KB payloads
//! (the size of a compressed Prometheus batch) from 1, 8 and 32 concurrent appenders,
//! every append on disk (fsynced) before it returns, for
//! - `segment_log`: promgate's own queue, which shares one fsync among the appenders
//!   waiting at the same time (group commit);
//! - `redb_txn_per_append`: redb 2 with `Durability::Immediate`, one write transaction
//!   per append, the way a handler would use it directly (redb serialises writers and
//!   has no group commit of its own);
//! - `redb_txn_per_group`: the same table fed by one committer thread that takes every
//!   append waiting and commits them in one transaction: redb given group commit, the
//!   fairest comparison with the segment log.
//!
//! Each store lives in a temporary directory under the build's target directory (a real
//! disk, not tmpfs) and is first filled with 1000 records and emptied, so no store is
//! measured while its file first grows. Between measurement batches the appended records
//! are acknowledged (segment log) or the table is emptied (redb), outside the timed part.
//! Appends and fsyncs (segment log) or commits (redb per group) per appender count are
//! printed to stderr.
//!
//! Run: `cargo bench --bench queue -- --warm-up-time 1 --measurement-time 5`

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use promgate::delivery::queue::{Queue, QueueOptions};
use redb::{Database, Durability, TableDefinition};

const PAYLOAD_BYTES: usize = 50_000;
const APPENDERS: [usize; 3] = [1, 8, 32];
const PREFILL_RECORDS: u64 = 1000;
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");

/// Incompressible bytes, as a snappy-compressed batch is.
fn payload() -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..PAYLOAD_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Runs `iterations` appends spread over `appenders` threads; returns the wall time
/// scaled to exactly `iterations` appends.
fn run_appenders(iterations: u64, appenders: usize, append: impl Fn() + Sync) -> Duration {
    let per_appender = iterations.div_ceil(appenders as u64).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..appenders {
            scope.spawn(|| {
                for _ in 0..per_appender {
                    append();
                }
            });
        }
    });
    let elapsed = started.elapsed();
    elapsed.mul_f64(iterations as f64 / (per_appender * appenders as u64) as f64)
}

fn bench_segment_log(c: &mut Criterion, dir: &Path, payload: &[u8]) {
    let mut group = c.benchmark_group("queue_append_50KB");
    group.throughput(Throughput::Bytes(PAYLOAD_BYTES as u64));
    let (queue, _) =
        Queue::open(&dir.join("segment-log"), QueueOptions::new(1 << 40)).expect("open queue");
    for _ in 0..PREFILL_RECORDS {
        queue.append(&[payload]).expect("prefill");
    }
    queue.ack(queue.stats().last_seq).expect("ack");
    for appenders in APPENDERS {
        let before = queue.stats();
        group.bench_with_input(
            BenchmarkId::new("segment_log", appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iterations| {
                    let elapsed = run_appenders(iterations, appenders, || {
                        queue.append(&[payload]).expect("append");
                    });
                    queue.ack(queue.stats().last_seq).expect("ack");
                    elapsed
                })
            },
        );
        let after = queue.stats();
        eprintln!(
            "segment_log/{appenders}: {} appends, {} fsyncs",
            after.last_seq - before.last_seq,
            after.segment_fsyncs - before.segment_fsyncs
        );
    }
    group.finish();
}

/// A redb file grown by `PREFILL_RECORDS` records, then emptied.
fn open_redb(path: &Path, payload: &[u8]) -> Database {
    let db = Database::create(path).expect("create redb");
    let txn = db.begin_write().expect("begin");
    {
        let mut table = txn.open_table(RECORDS).expect("table");
        for seq in 0..PREFILL_RECORDS {
            table.insert(u64::MAX - seq, payload).expect("prefill");
        }
    }
    txn.commit().expect("commit");
    empty_table(&db);
    db
}

fn empty_table(db: &Database) {
    let txn = db.begin_write().expect("begin");
    txn.delete_table(RECORDS).expect("delete table");
    txn.open_table(RECORDS).expect("table");
    txn.commit().expect("commit");
}

fn bench_redb_per_append(c: &mut Criterion, dir: &Path, payload: &[u8]) {
    let mut group = c.benchmark_group("queue_append_50KB");
    group.throughput(Throughput::Bytes(PAYLOAD_BYTES as u64));
    let db = open_redb(&dir.join("per-append.redb"), payload);
    let next_seq = AtomicU64::new(1);
    for appenders in APPENDERS {
        group.bench_with_input(
            BenchmarkId::new("redb_txn_per_append", appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iterations| {
                    let elapsed = run_appenders(iterations, appenders, || {
                        let mut txn = db.begin_write().expect("begin");
                        txn.set_durability(Durability::Immediate);
                        {
                            let mut table = txn.open_table(RECORDS).expect("table");
                            let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                            table.insert(seq, payload).expect("insert");
                        }
                        txn.commit().expect("commit");
                    });
                    empty_table(&db);
                    elapsed
                })
            },
        );
    }
    group.finish();
}

/// An append waiting for the committer: its payload and where to say it is durable.
type PendingAppend = (Arc<Vec<u8>>, mpsc::SyncSender<()>);

/// One thread committing every waiting append in one Immediate transaction.
fn redb_committer(db: Arc<Database>, incoming: mpsc::Receiver<PendingAppend>) -> Arc<AtomicU64> {
    let commits = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&commits);
    std::thread::spawn(move || {
        let mut next_seq = 1u64;
        while let Ok(first) = incoming.recv() {
            let mut batch = vec![first];
            batch.extend(incoming.try_iter());
            let mut txn = db.begin_write().expect("begin");
            txn.set_durability(Durability::Immediate);
            {
                let mut table = txn.open_table(RECORDS).expect("table");
                for (payload, _) in &batch {
                    table.insert(next_seq, payload.as_slice()).expect("insert");
                    next_seq += 1;
                }
            }
            txn.commit().expect("commit");
            counted.fetch_add(1, Ordering::Relaxed);
            for (_, done) in batch {
                let _ = done.send(());
            }
        }
    });
    commits
}

fn bench_redb_per_group(c: &mut Criterion, dir: &Path, payload: &[u8]) {
    let mut group = c.benchmark_group("queue_append_50KB");
    group.throughput(Throughput::Bytes(PAYLOAD_BYTES as u64));
    let db = Arc::new(open_redb(&dir.join("per-group.redb"), payload));
    let (sender, incoming) = mpsc::sync_channel::<PendingAppend>(1024);
    let commits = redb_committer(Arc::clone(&db), incoming);
    let payload = Arc::new(payload.to_vec());
    let appended = AtomicU64::new(0);
    for appenders in APPENDERS {
        let (appends_before, commits_before) = (
            appended.load(Ordering::Relaxed),
            commits.load(Ordering::Relaxed),
        );
        group.bench_with_input(
            BenchmarkId::new("redb_txn_per_group", appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iterations| {
                    let elapsed = run_appenders(iterations, appenders, || {
                        let (done, durable) = mpsc::sync_channel(1);
                        sender
                            .send((Arc::clone(&payload), done))
                            .expect("committer alive");
                        durable.recv().expect("committed");
                        appended.fetch_add(1, Ordering::Relaxed);
                    });
                    // Every append has returned, so the committer is idle.
                    empty_table(&db);
                    elapsed
                })
            },
        );
        eprintln!(
            "redb_txn_per_group/{appenders}: {} appends, {} commits",
            appended.load(Ordering::Relaxed) - appends_before,
            commits.load(Ordering::Relaxed) - commits_before
        );
    }
    group.finish();
}

fn queue_storage(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let payload = payload();
    bench_segment_log(c, dir.path(), &payload);
    bench_redb_per_append(c, dir.path(), &payload);
    bench_redb_per_group(c, dir.path(), &payload);
}

criterion_group!(benches, queue_storage);
criterion_main!(benches);
