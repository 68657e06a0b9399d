//! The queue's crash-safety contract, each test one promise of DESIGN §9.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::offline::inspect_queue;
use super::record::{Damage, HEADER_BYTES};
use super::*;

const ROOMY: u64 = 1024 * 1024 * 1024;

fn open(dir: &Path, options: QueueOptions) -> (Arc<Queue>, RecoveryReport) {
    let (queue, report) = Queue::open(dir, options).expect("open queue");
    (Arc::new(queue), report)
}

fn read_all(queue: &Arc<Queue>) -> Vec<(u64, Vec<u8>)> {
    let mut reader = queue.reader();
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().expect("read") {
        records.push((record.seq, record.payload));
    }
    records
}

fn only_segment(dir: &Path) -> PathBuf {
    let segments = list_segments(dir).expect("list");
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments[0].1.clone()
}

fn payload(index: usize) -> Vec<u8> {
    format!("record-{index}-{}", "x".repeat(index % 7)).into_bytes()
}

#[test]
fn appended_records_read_back_in_order_and_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, report) = open(dir.path(), QueueOptions::new(ROOMY));
    assert_eq!(
        report,
        RecoveryReport {
            segments: 1,
            ..RecoveryReport::default()
        }
    );
    assert_eq!(
        queue.append(&[payload(0), payload(1)]).expect("append"),
        1..3
    );
    assert_eq!(queue.append(&[payload(2)]).expect("append"), 3..4);
    let records = read_all(&queue);
    assert_eq!(
        records,
        vec![(1, payload(0)), (2, payload(1)), (3, payload(2))]
    );
    let stats = queue.stats();
    assert_eq!(stats.pending_records, 3);
    assert_eq!(stats.last_seq, 3);
    assert!(stats.oldest_appended_at.is_some());
    let expected_bytes: u64 = (0..3).map(|i| HEADER_BYTES + payload(i).len() as u64).sum();
    assert_eq!(stats.bytes, expected_bytes);
}

#[test]
fn a_reader_that_caught_up_sees_later_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    let mut reader = queue.reader();
    assert_eq!(reader.next_record().expect("read"), None);
    queue.append(&[b"late".to_vec()]).expect("append");
    let record = reader.next_record().expect("read").expect("a record");
    assert_eq!((record.seq, record.payload.as_slice()), (1, &b"late"[..]));
    assert_eq!(reader.next_record().expect("read"), None);
}

/// Writes `count` records into a fresh queue and returns the segment's bytes and the
/// end offset of each record.
fn segment_with(count: usize) -> (Vec<u8>, Vec<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    let mut ends = Vec::new();
    let mut end = 0;
    for index in 0..count {
        queue.append(&[payload(index)]).expect("append");
        end += HEADER_BYTES + payload(index).len() as u64;
        ends.push(end);
    }
    let bytes = std::fs::read(only_segment(dir.path())).expect("read segment");
    (bytes, ends)
}

/// What a recovery read, reported, and the queue and directory to go on with.
type Recovered = (
    Vec<(u64, Vec<u8>)>,
    RecoveryReport,
    Arc<Queue>,
    tempfile::TempDir,
);

/// Recovers a queue whose only segment holds `bytes`; returns what it reads and reports.
fn recover(bytes: &[u8]) -> Recovered {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(segment_file_name(1)), bytes).expect("write segment");
    let (queue, report) = open(dir.path(), QueueOptions::new(ROOMY));
    (read_all(&queue), report, queue, dir)
}

#[test]
fn every_truncation_point_recovers_exactly_the_complete_records() {
    let (bytes, ends) = segment_with(4);
    for cut in 0..=bytes.len() as u64 {
        let complete = ends.iter().filter(|end| **end <= cut).count();
        let valid_end = if complete == 0 { 0 } else { ends[complete - 1] };
        let (records, report, queue, dir) = recover(&bytes[..cut as usize]);
        let expected: Vec<(u64, Vec<u8>)> =
            (0..complete).map(|i| (i as u64 + 1, payload(i))).collect();
        assert_eq!(records, expected, "cut at {cut}");
        assert_eq!(report.truncated_bytes, cut - valid_end, "cut at {cut}");
        assert_eq!(report.corrupt_regions, 0, "cut at {cut}");
        let file_len = std::fs::metadata(only_segment(dir.path()))
            .expect("stat")
            .len();
        assert_eq!(file_len, valid_end, "the torn tail is cut off at {cut}");
        // The queue goes on right after the last complete record.
        let next = complete as u64 + 1;
        assert_eq!(
            queue.append(&[b"after".to_vec()]).expect("append"),
            next..next + 1
        );
        let records = read_all(&queue);
        assert_eq!(records.len(), complete + 1, "cut at {cut}");
    }
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_skipped_and_counted() {
    let (bytes, ends) = segment_with(5);
    // Every byte of the third record: header (length, checksum, sequence, time) and payload.
    for position in ends[1]..ends[2] {
        let mut damaged = bytes.clone();
        damaged[position as usize] ^= 0x40;
        let (records, report, queue, _dir) = recover(&damaged);
        let seqs: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, vec![1, 2, 4, 5], "flip at {position}");
        assert_eq!(records[2].1, payload(3));
        assert_eq!(report.corrupt_regions, 1, "flip at {position}");
        assert_eq!(
            report.corrupt_bytes,
            ends[2] - ends[1],
            "flip at {position}"
        );
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(
            queue.stats().pending_records,
            4,
            "the skipped record is not counted"
        );
        assert_eq!(queue.append(&[b"next".to_vec()]).expect("append"), 6..7);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A crash leaves any prefix of the last write, possibly followed by garbage:
    /// recovery keeps exactly the complete records and appends right after them.
    #[test]
    fn a_torn_tail_with_garbage_keeps_every_complete_record(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
        cut_fraction in 0.0f64..=1.0,
        garbage in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (index, payload) in payloads.iter().enumerate() {
            record::encode_record(&mut bytes, index as u64 + 1, 1_700_000_000_000, payload);
            ends.push(bytes.len());
        }
        let last_start = if ends.len() >= 2 { ends[ends.len() - 2] } else { 0 };
        // Cut inside (or at either end of) the last record, then add garbage.
        let cut = last_start + ((bytes.len() - last_start) as f64 * cut_fraction) as usize;
        let mut torn = bytes[..cut].to_vec();
        torn.extend_from_slice(&garbage);
        let complete = ends.iter().filter(|end| **end <= cut).count();
        let (records, report, queue, _dir) = recover(&torn);
        let expected: Vec<(u64, Vec<u8>)> = payloads[..complete]
            .iter()
            .enumerate()
            .map(|(index, payload)| (index as u64 + 1, payload.clone()))
            .collect();
        prop_assert_eq!(records, expected);
        prop_assert_eq!(report.corrupt_regions, 0);
        let next = complete as u64 + 1;
        prop_assert_eq!(queue.append(&[b"after".to_vec()]).expect("append"), next..next + 1);
    }

    /// Damage anywhere inside one middle record loses that record only.
    #[test]
    fn damage_inside_a_middle_record_loses_only_that_record(
        count in 3usize..7,
        victim_choice in any::<prop::sample::Index>(),
        position_choice in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (mut bytes, ends) = segment_with(count);
        let victim = 1 + victim_choice.index(count - 2);
        let start = ends[victim - 1];
        let position = start + position_choice.index((ends[victim] - start) as usize) as u64;
        bytes[position as usize] ^= xor;
        let (records, report, _queue, _dir) = recover(&bytes);
        let expected: Vec<(u64, Vec<u8>)> = (0..count)
            .filter(|index| *index != victim)
            .map(|index| (index as u64 + 1, payload(index)))
            .collect();
        prop_assert_eq!(records, expected);
        prop_assert_eq!(report.corrupt_regions, 1);
    }
}

#[test]
fn reopening_after_an_ack_keeps_the_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
        for index in 0..10 {
            queue.append(&[payload(index)]).expect("append");
        }
        queue.ack(6).expect("ack");
        assert!(matches!(
            queue.ack(11),
            Err(QueueError::AckBeyondEnd { seq: 11, last: 10 })
        ));
    }
    let (queue, report) = open(dir.path(), QueueOptions::new(ROOMY));
    assert_eq!(report.pending_records, 4);
    let stats = queue.stats();
    assert_eq!(
        (stats.acked_through, stats.pending_records, stats.last_seq),
        (6, 4, 10)
    );
    let seqs: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    // An older ack changes nothing.
    queue.ack(3).expect("ack");
    assert_eq!(queue.stats().acked_through, 6);
}

#[test]
fn the_oldest_append_time_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = SystemTime::now();
    {
        let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
        queue.append(&[payload(0), payload(1)]).expect("append");
    }
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    let oldest = queue.stats().oldest_appended_at.expect("an oldest record");
    let skew = before.duration_since(oldest).unwrap_or_default();
    assert!(skew < Duration::from_secs(1), "{oldest:?} vs {before:?}");
    queue.ack(2).expect("ack");
    assert_eq!(queue.stats().oldest_appended_at, None);
}

/// A queue whose 300-byte segments roll every few records.
fn small_segments() -> QueueOptions {
    QueueOptions {
        max_bytes: ROOMY,
        segment_bytes: 300,
    }
}

#[test]
fn segments_are_deleted_only_after_the_cursor_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), small_segments());
    for index in 0..30 {
        queue.append(&[payload(index)]).expect("append");
    }
    let segments_before = list_segments(dir.path()).expect("list");
    assert!(segments_before.len() >= 4, "{segments_before:?}");

    // The cursor cannot be written: the ack fails and every segment stays.
    let cursor_path = dir.path().join("cursor");
    std::fs::remove_file(&cursor_path).expect("the cursor file exists from the open");
    std::fs::create_dir(&cursor_path).expect("block the cursor");
    assert!(matches!(queue.ack(25), Err(QueueError::Io(_))));
    assert_eq!(list_segments(dir.path()).expect("list"), segments_before);
    assert_eq!(queue.stats().acked_through, 0);
    std::fs::remove_dir(&cursor_path).expect("unblock");

    queue.ack(25).expect("ack");
    assert_eq!(
        cursor::read_cursor(dir.path()).expect("cursor"),
        cursor::StoredCursor::AckedThrough(25)
    );
    let remaining = list_segments(dir.path()).expect("list");
    assert!(remaining.len() < segments_before.len());
    // Every remaining segment but the first starts above the cursor; the first holds 26.
    assert!(remaining[0].0 <= 26);
    assert!(remaining
        .iter()
        .skip(1)
        .all(|(first_seq, _)| *first_seq > 26));
    let seqs: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (26..=30).collect::<Vec<_>>());
    drop(queue);

    let (queue, report) = open(dir.path(), small_segments());
    assert_eq!(report.pending_records, 5);
    let seqs: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (26..=30).collect::<Vec<_>>());
}

#[test]
fn a_reader_crosses_segments_and_a_stop_before_deletion_is_finished_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), small_segments());
        for index in 0..30 {
            queue.append(&[payload(index)]).expect("append");
        }
        assert_eq!(read_all(&queue).len(), 30);
    }
    // As if a stop came after the cursor write and before the deletions.
    cursor::write_cursor(dir.path(), 20).expect("cursor");
    let segments_before = list_segments(dir.path()).expect("list").len();
    let (queue, report) = open(dir.path(), small_segments());
    assert!(report.deleted_segments > 0);
    assert_eq!(report.segments + report.deleted_segments, segments_before);
    let seqs: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (21..=30).collect::<Vec<_>>());
}

#[test]
fn damage_in_an_older_segment_is_skipped_by_the_reader_and_never_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), small_segments());
        for index in 0..30 {
            queue.append(&[payload(index)]).expect("append");
        }
    }
    let segments = list_segments(dir.path()).expect("list");
    let (first_seq, oldest) = &segments[0];
    assert_eq!(*first_seq, 1);
    let mut bytes = std::fs::read(oldest).expect("read");
    let oldest_len = bytes.len();
    // The payload of record 2 and the tail of the segment's last record.
    bytes[HEADER_BYTES as usize + payload(0).len() + HEADER_BYTES as usize] ^= 0xFF;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(oldest, &bytes).expect("damage");
    let records_in_oldest = segments[1].0 - 1;

    let (queue, report) = open(dir.path(), small_segments());
    assert_eq!(report.corrupt_regions, 2);
    assert_eq!(
        report.truncated_bytes, 0,
        "only the newest segment's tail is cut"
    );
    assert_eq!(
        std::fs::metadata(oldest).expect("stat").len() as usize,
        oldest_len
    );
    let mut reader = queue.reader();
    let mut seqs = Vec::new();
    while let Some(record) = reader.next_record().expect("read") {
        seqs.push(record.seq);
    }
    let expected: Vec<u64> = (1..=30)
        .filter(|seq| *seq != 2 && *seq != records_in_oldest)
        .collect();
    assert_eq!(seqs, expected);
    assert_eq!(reader.skipped_regions(), 2);
    assert_eq!(queue.stats().pending_records, 28);
}

#[test]
fn a_queue_is_open_in_one_place_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    // flock locks belong to the open file description, so a second open in the same
    // process is refused just as another process would be.
    assert!(matches!(
        Queue::open(dir.path(), QueueOptions::new(ROOMY)),
        Err(QueueError::Locked(_))
    ));
    drop(queue);
    open(dir.path(), QueueOptions::new(ROOMY));
}

#[test]
fn a_damaged_cursor_falls_back_to_the_oldest_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
        queue
            .append(&[payload(0), payload(1), payload(2)])
            .expect("append");
        queue.ack(2).expect("ack");
    }
    std::fs::write(dir.path().join("cursor"), b"garbage").expect("damage cursor");
    let (queue, report) = open(dir.path(), QueueOptions::new(ROOMY));
    assert!(report.cursor_damaged);
    // Delivered again rather than lost.
    assert_eq!(read_all(&queue).len(), 3);
}

#[test]
fn a_full_queue_refuses_and_never_drops_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        max_bytes: 1000,
        segment_bytes: 250,
    };
    let (queue, _) = open(dir.path(), options);
    let record = vec![7u8; 76]; // 100 bytes with its header
    for _ in 0..10 {
        queue.append(std::slice::from_ref(&record)).expect("append");
    }
    let stats = queue.stats();
    assert_eq!(stats.bytes, 1000);
    match queue.append(std::slice::from_ref(&record)) {
        Err(QueueError::Full {
            used: 1000,
            needed: 100,
            max_bytes: 1000,
        }) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(queue.stats(), stats, "a refused batch writes nothing");
    assert_eq!(
        read_all(&queue).len(),
        10,
        "nothing was dropped to make room"
    );
    // Delivering and acknowledging makes room again.
    queue.ack(6).expect("ack");
    assert!(queue.stats().bytes < 1000);
    assert_eq!(
        queue.append(std::slice::from_ref(&record)).expect("append"),
        11..12
    );
}

#[test]
fn concurrent_appenders_get_a_gap_free_order_and_share_fsyncs() {
    const THREADS: usize = 8;
    const APPENDS_PER_THREAD: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    let per_thread: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let queue = &queue;
                scope.spawn(move || {
                    (0..APPENDS_PER_THREAD)
                        .map(|index| {
                            let body = format!("{thread}:{index}").into_bytes();
                            let range = queue.append(&[body]).expect("append");
                            assert_eq!(range.end - range.start, 1);
                            range.start
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    let total = (THREADS * APPENDS_PER_THREAD) as u64;
    let mut all: Vec<u64> = per_thread.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "gap-free, each once");
    for seqs in &per_thread {
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "each thread's order kept"
        );
    }
    // The reader returns the same order, each payload at the sequence its append got.
    let records = read_all(&queue);
    assert_eq!(records.len() as u64, total);
    let mut seen = HashSet::new();
    for (seq, body) in &records {
        let text = String::from_utf8(body.clone()).expect("utf-8");
        let (thread, index) = text.split_once(':').expect("thread:index");
        let thread: usize = thread.parse().expect("thread");
        let index: usize = index.parse().expect("index");
        assert_eq!(per_thread[thread][index], *seq);
        assert!(seen.insert(*seq));
    }
    let fsyncs = queue.stats().segment_fsyncs;
    eprintln!("{total} appends from {THREADS} threads took {fsyncs} fsyncs");
    assert!(fsyncs * 2 <= total, "{fsyncs} fsyncs for {total} appends");
}

#[test]
fn payloads_beyond_the_record_cap_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    let too_large = vec![0u8; (MAX_PAYLOAD_BYTES + 1) as usize];
    assert!(matches!(
        queue.append(&[too_large]),
        Err(QueueError::PayloadTooLarge { .. })
    ));
    assert_eq!(queue.stats().last_seq, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_face_appends_and_acks_off_the_async_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    let queue = AsyncQueue::new(queue);
    let tasks: Vec<_> = (0..16)
        .map(|index| {
            let queue = queue.clone();
            tokio::spawn(async move {
                queue
                    .append(vec![bytes::Bytes::from(payload(index))])
                    .await
                    .expect("append")
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(queue.queue().stats().pending_records, 16);
    queue.ack(16).await.expect("ack");
    assert_eq!(queue.queue().stats().pending_records, 0);
}

#[test]
fn inspection_is_read_only_and_sees_what_recovery_would_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
        for index in 0..5 {
            queue.append(&[payload(index)]).expect("append");
        }
        queue.ack(1).expect("ack");
    }
    let segment = only_segment(dir.path());
    let mut bytes = std::fs::read(&segment).expect("read");
    let second_record = HEADER_BYTES as usize + payload(0).len();
    bytes[second_record + 30] ^= 0x01; // inside record 2's payload
    bytes.extend_from_slice(b"torn");
    std::fs::write(&segment, &bytes).expect("write");

    let inspection = inspect_queue(dir.path()).expect("inspect");
    assert_eq!(inspection.acked_through, 1);
    assert_eq!(inspection.pending_records, 3, "records 3, 4, 5");
    assert_eq!(inspection.last_seq, Some(5));
    assert!(inspection.oldest_pending_appended_at.is_some());
    let damage = &inspection.segments[0].damage;
    assert!(matches!(damage[0], Damage::Corrupt { .. }));
    assert_eq!(
        damage[1],
        Damage::TornTail {
            offset: bytes.len() as u64 - 4,
            len: 4
        }
    );
    assert_eq!(inspection.problems().len(), 2);
    assert_eq!(
        std::fs::read(&segment).expect("read"),
        bytes,
        "nothing repaired"
    );

    // A fresh directory: nothing created.
    let empty = tempfile::tempdir().expect("tempdir");
    let inspection = inspect_queue(empty.path()).expect("inspect");
    assert_eq!(inspection.pending_records, 0);
    assert_eq!(std::fs::read_dir(empty.path()).expect("list").count(), 0);
}

#[derive(Clone, Debug)]
enum Operation {
    Append(Vec<Vec<u8>>),
    /// Acknowledge this fraction of what is pending.
    Ack(f64),
    Reopen,
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..4)
            .prop_map(Operation::Append),
        2 => (0.0f64..=1.0).prop_map(Operation::Ack),
        1 => Just(Operation::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any mix of appends, acks and restarts on rolling segments behaves like an
    /// in-memory list: the reader returns exactly the unacknowledged records in order,
    /// the counts agree, and no segment file is left that holds only acknowledged records.
    #[test]
    fn appends_acks_and_restarts_match_an_in_memory_model(
        operations in prop::collection::vec(operation(), 1..40),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut queue, _) = open(dir.path(), small_segments());
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut acked_through = 0;
        for operation in operations {
            match operation {
                Operation::Append(payloads) => {
                    let range = queue.append(&payloads).expect("append");
                    let first = model.last().map_or(acked_through, |(seq, _)| *seq) + 1;
                    prop_assert_eq!(range.clone(), first..first + payloads.len() as u64);
                    model.extend(range.zip(payloads));
                }
                Operation::Ack(fraction) => {
                    let count = (model.len() as f64 * fraction) as usize;
                    if count > 0 {
                        acked_through = model[count - 1].0;
                        queue.ack(acked_through).expect("ack");
                        model.drain(..count);
                    }
                }
                Operation::Reopen => {
                    drop(queue);
                    let (reopened, report) = open(dir.path(), small_segments());
                    prop_assert_eq!(report.truncated_bytes, 0);
                    prop_assert_eq!(report.corrupt_regions, 0);
                    queue = reopened;
                }
            }
            prop_assert_eq!(&read_all(&queue), &model);
            let stats = queue.stats();
            prop_assert_eq!(stats.pending_records, model.len() as u64);
            prop_assert_eq!(stats.acked_through, acked_through);
            prop_assert_eq!(stats.oldest_appended_at.is_some(), !model.is_empty());
            let segments = list_segments(dir.path()).expect("list");
            for pair in segments.windows(2) {
                prop_assert!(pair[1].0 - 1 > acked_through, "a wholly acknowledged segment was kept");
            }
            let on_disk: u64 = segments
                .iter()
                .map(|(_, path)| std::fs::metadata(path).expect("stat").len())
                .sum();
            prop_assert_eq!(stats.bytes, on_disk);
        }
    }
}

/// Set in the child process of the kill test: the queue directory it appends to.
const CRASH_CHILD_DIR: &str = "PROMGATE_QUEUE_CRASH_CHILD_DIR";

/// In the child process of [`kill_9_loses_no_acknowledged_record`] (and a no-op in a
/// normal run): appends from four threads until killed, printing each acknowledged
/// sequence number only once `append` has returned.
#[test]
fn crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
        return;
    };
    let (queue, _) = open(Path::new(&dir), QueueOptions::new(ROOMY));
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let queue = &queue;
            scope.spawn(move || loop {
                let body = vec![thread as u8; 2000];
                let range = queue.append(&[body]).expect("append");
                println!("acked {}", range.start);
            });
        }
    });
}

/// A process killed mid-append (the page cache survives, so this is the process-crash
/// half of DESIGN §9; power loss is what the fsync before each return is for): every
/// sequence number an `append` returned is recovered, and the recovered ones have no gap.
#[test]
fn kill_9_loses_no_acknowledged_record() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "delivery::queue::tests::crash_child_appends_until_killed",
            "--nocapture",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the appending child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acknowledged = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(seq) = line.strip_prefix("acked ") {
            acknowledged.push(seq.parse::<u64>().expect("seq"));
            if acknowledged.len() >= 2000 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(acknowledged.len() >= 2000, "the child stopped early");

    let (queue, report) = open(dir.path(), QueueOptions::new(ROOMY));
    assert_eq!(report.corrupt_regions, 0, "{report:?}");
    let recovered: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    let last = recovered.last().copied().unwrap_or(0);
    assert_eq!(
        recovered,
        (1..=last).collect::<Vec<_>>(),
        "gap-free after the kill"
    );
    let missing: Vec<&u64> = acknowledged.iter().filter(|seq| **seq > last).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

#[test]
fn acknowledgements_write_the_cursor_at_most_every_interval_and_at_a_clean_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stored = || cursor::read_cursor(dir.path()).expect("cursor");
    let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
    for index in 0..10 {
        queue.append(&[payload(index)]).expect("append");
    }
    // The open wrote the starting position; acks within the interval write nothing.
    assert_eq!(stored(), cursor::StoredCursor::AckedThrough(0));
    queue.ack(1).expect("ack");
    queue.ack(2).expect("ack");
    assert_eq!(stored(), cursor::StoredCursor::AckedThrough(0));
    assert_eq!(queue.stats().acked_through, 2);
    std::thread::sleep(CURSOR_WRITE_INTERVAL);
    queue.ack(3).expect("ack");
    assert_eq!(stored(), cursor::StoredCursor::AckedThrough(3));
    queue.ack(4).expect("ack");
    assert_eq!(
        stored(),
        cursor::StoredCursor::AckedThrough(3),
        "within the interval"
    );
    queue.flush_cursor().expect("flush");
    assert_eq!(stored(), cursor::StoredCursor::AckedThrough(4));
    queue.ack(7).expect("ack");
    drop(queue);
    assert_eq!(
        stored(),
        cursor::StoredCursor::AckedThrough(7),
        "written at close"
    );
    let (queue, report) = open(dir.path(), QueueOptions::new(ROOMY));
    assert_eq!(report.pending_records, 3);
    assert_eq!(queue.stats().acked_through, 7);
}

/// Renames the segment named `from` to be named `to`.
fn rename_segment(dir: &Path, from: u64, to: u64) {
    std::fs::rename(
        dir.join(segment_file_name(from)),
        dir.join(segment_file_name(to)),
    )
    .expect("rename segment");
}

#[test]
fn a_segment_named_past_its_records_is_read_by_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), QueueOptions::new(ROOMY));
        for index in 0..5 {
            queue.append(&[payload(index)]).expect("append");
        }
        queue.ack(1).expect("ack");
    }
    rename_segment(dir.path(), 1, 4);
    let segment_bytes = std::fs::metadata(only_segment(dir.path()))
        .expect("stat")
        .len();

    let inspection = inspect_queue(dir.path()).expect("inspect");
    assert_eq!(
        (inspection.pending_records, inspection.last_seq),
        (4, Some(5))
    );
    assert!(
        inspection.problems().is_empty(),
        "{:?}",
        inspection.problems()
    );

    let (queue, report) = open(dir.path(), QueueOptions::new(ROOMY));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.pending_records, 4);
    let segment = only_segment(dir.path());
    assert_eq!(
        std::fs::metadata(&segment).expect("stat").len(),
        segment_bytes
    );
    assert_eq!(
        segment,
        dir.path().join(segment_file_name(1)),
        "named by its records again"
    );
    let seqs: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    assert_eq!(queue.append(&[payload(5)]).expect("append"), 6..7);
}

#[test]
fn misnamed_segments_are_ordered_by_their_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), small_segments());
        for index in 0..30 {
            queue.append(&[payload(index)]).expect("append");
        }
    }
    let names: Vec<u64> = list_segments(dir.path())
        .expect("list")
        .into_iter()
        .map(|(first_seq, _)| first_seq)
        .collect();
    assert!(names.len() >= 3, "{names:?}");
    // The oldest segment takes a name beyond every record; a middle one a name past its
    // first record. No record is lost, none is delivered out of order.
    rename_segment(dir.path(), names[0], 1000);
    rename_segment(dir.path(), names[1], names[1] + 1);

    let inspection = inspect_queue(dir.path()).expect("inspect");
    assert_eq!(inspection.pending_records, 30);
    assert!(
        inspection.problems().is_empty(),
        "{:?}",
        inspection.problems()
    );

    let (queue, report) = open(dir.path(), small_segments());
    assert_eq!(
        (
            report.pending_records,
            report.truncated_bytes,
            report.corrupt_regions
        ),
        (30, 0, 0)
    );
    let seqs: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    // Appending on rolls past the name the oldest segment had.
    for index in 30..1100 {
        queue.append(&[payload(index)]).expect("append");
    }
    queue.ack(1000).expect("ack");
    let seqs: Vec<u64> = read_all(&queue).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (1001..=1100).collect::<Vec<_>>());
}
