//! The durable per-backend delivery queue (DESIGN §9, SECURITY T20/T21 and §4
//! "Persistent queue"): a segment log of checksummed records on local disk, appended with
//! group commit, read in order from a durable cursor, and recovered after any stop
//! without losing a valid record. Pure and synchronous; [`AsyncQueue`] moves the blocking
//! calls off the async workers. Sending, retrying and metrics belong to the delivery
//! worker, not here.
//!
//! # On disk
//! One directory per queued backend:
//!
//! ```text
//! <directory>/<backend>/segment-<first-seq, 20 digits>.log   records, see `record`
//! <directory>/<backend>/cursor                                acknowledged-through seq, see `cursor`
//! <directory>/<backend>/lock                                  held (flock) by the process that has it open
//! ```
//!
//! A record is `[payload len u32][crc32c u32][seq u64][append time ms u64][payload]`,
//! little-endian, the CRC32C covering sequence, time and payload. Sequence numbers start
//! at 1 and increase by one per record across segments; a segment's name is the first
//! sequence it may hold, but only a hint: at open (and in `queue inspect`) segments are
//! ordered and placed by their records' own sequence numbers, and a segment whose name
//! disagrees with its first record is renamed to match it. A segment is rolled when the next batch would take it past the
//! segment size (64 MiB, or a quarter of `max_bytes` for small quotas).
//!
//! # Guarantees
//! - [`Queue::append`] returns only once its records are fsynced. Concurrent appenders
//!   share fsyncs: one caller at a time syncs everything written so far while the others
//!   wait on a condition variable, so the cost is one fsync per batch window.
//! - A failed write is cut back off the file; a failed fsync stops the queue (every later
//!   call fails until a restart recovers from what is really on disk), because after a
//!   failed fsync the page cache no longer says what the disk holds.
//! - [`Queue::open`] never fails because of damaged data: a torn tail of the newest
//!   segment is truncated to the last valid record, a damaged stretch anywhere else is
//!   skipped up to the next valid record and counted ([`RecoveryReport`]).
//! - [`Queue::ack`] makes the cursor durable before it deletes a segment, and otherwise
//!   at most every 250 ms ([`CURSOR_WRITE_INTERVAL`]) and at a clean stop: after a crash
//!   up to 250 ms of delivered records is delivered again, never one lost.
//! - One process at a time: [`Queue::open`] takes an exclusive `flock` on the `lock`
//!   file and fails with [`QueueError::Locked`] when another process holds it (two relays
//!   pointed at one directory would interleave their appends). The kernel drops the lock
//!   when the process dies, so a `kill -9` leaves nothing to clean up.
//! - `max_bytes` counts the segment files on disk; a batch that would pass it fails with
//!   [`QueueError::Full`] and nothing is ever dropped to make room.
//! - Memory is bounded: a reader holds one record, recovery one record plus one append
//!   time per second of queued data.

mod cursor;
pub mod offline;
pub mod record;
mod recovery;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, MutexGuard};

use cursor::{read_cursor, remove_leftover_temp, sync_dir, write_cursor, StoredCursor};
use record::{
    encode_record, find_next_valid, first_valid_seq, read_record_at, scan_segment, Damage,
    RecordRead, HEADER_BYTES, MAX_PAYLOAD_BYTES,
};
use recovery::{recover_segments, Recovered};

/// The size at which a segment is rolled, unless the quota is small.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest segment size, whatever the quota.
const MIN_SEGMENT_BYTES: u64 = 4096;
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The quota is reached: the caller answers 503 + Retry-After.
    #[error("queue is full: {used} of {max_bytes} bytes used, {needed} more needed")]
    Full {
        used: u64,
        needed: u64,
        max_bytes: u64,
    },
    /// The disk itself is full: the caller answers 503 + Retry-After.
    #[error("no space left on the queue's disk")]
    NoSpace,
    /// The tenant's backlog holds its share of a queue over half full: the caller answers
    /// this tenant (and only it) 503 + Retry-After.
    #[error("the tenant's share of the queue is full: {used} of {share} bytes used, {needed} more needed")]
    TenantShareFull { used: u64, needed: u64, share: u64 },
    #[error("a payload of {len} bytes is larger than a record may be ({max} bytes)")]
    PayloadTooLarge { len: u64, max: u64 },
    #[error("acknowledging {seq} but the queue holds records only through {last}")]
    AckBeyondEnd { seq: u64, last: u64 },
    #[error("{0} is open in another process")]
    Locked(PathBuf),
    #[error("queue i/o: {0}")]
    Io(#[from] io::Error),
    /// A write or fsync failed earlier; nothing more is accepted until a restart.
    #[error("queue stopped after a failed write or fsync: {0}")]
    Stopped(String),
}

/// Sizes of one queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueOptions {
    /// Bytes of segment files the queue may hold on disk.
    pub max_bytes: u64,
    /// Size at which a segment is rolled.
    pub segment_bytes: u64,
}

impl QueueOptions {
    pub fn new(max_bytes: u64) -> Self {
        QueueOptions {
            max_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES.min((max_bytes / 4).max(MIN_SEGMENT_BYTES)),
        }
    }

    /// For one tenant's lane of a backend whose queues share `max_bytes`: smaller
    /// segments (a sixteenth of the quota, at most the default), because the segment being
    /// appended to keeps its delivered records on disk until it is rolled.
    pub fn for_lane(max_bytes: u64) -> Self {
        QueueOptions {
            max_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES.min((max_bytes / 16).max(MIN_SEGMENT_BYTES)),
        }
    }
}

/// What [`Queue::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Valid records not yet acknowledged.
    pub pending_records: u64,
    /// Bytes cut off the end of the newest segment (a write cut short).
    pub truncated_bytes: u64,
    /// Damaged stretches skipped (each may have held one or more records).
    pub corrupt_regions: u64,
    pub corrupt_bytes: u64,
    /// The cursor file was unreadable; the position was taken from the oldest segment
    /// (records may be delivered again, none is lost).
    pub cursor_damaged: bool,
    /// Fully acknowledged segments left by an earlier stop and deleted now.
    pub deleted_segments: usize,
    /// Segment files whose name was not their first record's sequence number, renamed.
    pub renamed_segments: usize,
}

/// A snapshot of a queue's size and position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStats {
    /// Valid records not yet acknowledged.
    pub pending_records: u64,
    /// Bytes of segment files on disk (what `max_bytes` limits).
    pub bytes: u64,
    /// When the oldest pending record was appended, to the second.
    pub oldest_appended_at: Option<SystemTime>,
    pub acked_through: u64,
    /// The last sequence number appended (0 for none).
    pub last_seq: u64,
    pub segments: usize,
    /// fsyncs of segment data since open (group commit makes this far below appends).
    pub segment_fsyncs: u64,
}

/// A record handed to the delivery worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedRecord {
    pub seq: u64,
    pub appended_at: SystemTime,
    pub payload: Vec<u8>,
}

/// One segment file. The last one in the queue is the one appended to.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Bytes written.
    len: u64,
    /// Bytes known to be fsynced: what readers may see.
    durable_len: u64,
}

/// Everything appenders, the syncing appender, acks and readers share.
struct State {
    segments: VecDeque<Segment>,
    /// The write handle of the last segment (shared with the syncing appender, which
    /// fsyncs it without holding the lock).
    active_file: Arc<File>,
    next_seq: u64,
    written_through: u64,
    synced_through: u64,
    /// An appender is fsyncing right now; the others wait for it.
    sync_in_progress: bool,
    /// Set by a failed fsync or write: the queue accepts nothing more.
    stopped: Option<String>,
    acked_through: u64,
    bytes_on_disk: u64,
    /// (first seq appended in a second, its append time in ms): bounded by the seconds the
    /// queue spans, not by its records.
    append_times: VecDeque<(u64, u64)>,
    /// Sequence ranges with no valid record (damage found at open), for exact counts.
    missing_seqs: Vec<Range<u64>>,
    /// A write failed for want of disk space: once the active segment is wholly
    /// acknowledged it is rolled so that it can be deleted (otherwise a queue that filled
    /// its disk would stay full after delivering everything).
    out_of_space: bool,
    last_appended_ms: u64,
    /// Reused for encoding a batch.
    encode_buffer: Vec<u8>,
}

/// How often, at most, acknowledgements alone write the cursor file.
pub const CURSOR_WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// What the cursor file on disk says, and when it was written.
struct CursorFile {
    durable_through: u64,
    written_at: Instant,
}

/// A durable queue of one backend. Share it with `Arc`; every method takes `&self`.
pub struct Queue {
    dir: PathBuf,
    options: QueueOptions,
    state: Mutex<State>,
    synced: Condvar,
    /// Serialises acknowledgements so cursor writes never go backwards; holds what the
    /// cursor file says.
    cursor: Mutex<CursorFile>,
    segment_fsyncs: AtomicU64,
    /// Told how long each fsync of segment data took (for `/metrics`).
    fsync_observer: OnceLock<Box<dyn Fn(Duration) + Send + Sync>>,
    /// Holds the exclusive `flock` on the directory's lock file while the queue is open.
    _process_lock: File,
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`, recovering from whatever an earlier
    /// stop left. Only I/O errors fail; damaged data is repaired and reported.
    pub fn open(dir: &Path, options: QueueOptions) -> Result<(Queue, RecoveryReport), QueueError> {
        std::fs::create_dir_all(dir)?;
        let process_lock = lock_directory(dir)?;
        remove_leftover_temp(dir)?;
        let mut payload = Vec::new();
        let listed = list_segments_by_records(dir, &mut payload)?;
        let mut report = RecoveryReport::default();
        let oldest_possible = listed.first().map_or(0, |(first_seq, _)| first_seq - 1);
        let (acked_through, cursor_is_durable) = match read_cursor(dir)? {
            StoredCursor::AckedThrough(seq) => (seq.max(oldest_possible), true),
            StoredCursor::Missing => (oldest_possible, false),
            StoredCursor::Damaged => {
                report.cursor_damaged = true;
                (oldest_possible, false)
            }
        };

        let segment_count = listed.len();
        let Recovered {
            mut segments,
            append_times,
            mut missing_seqs,
            last_valid_seq,
            expected_seq,
            pending_records,
            renamed,
        } = recover_segments(dir, listed, acked_through, &mut payload, &mut report)?;

        let mut deleted = Vec::new();
        if cursor_is_durable {
            while segments.len() >= 2 && segments[1].first_seq - 1 <= acked_through {
                if let Some(segment) = segments.pop_front() {
                    deleted.push(segment.path);
                }
            }
        }
        report.deleted_segments = deleted.len();
        for path in &deleted {
            std::fs::remove_file(path)?;
        }
        if !cursor_is_durable {
            // From now on there is always a cursor file to overwrite in place.
            write_cursor(dir, acked_through)?;
        }

        let mut next_seq = (last_valid_seq + 1).max(acked_through + 1);
        if let Some(newest) = segments.back() {
            next_seq = next_seq.max(newest.first_seq);
        }
        if next_seq > expected_seq {
            missing_seqs.push(expected_seq..next_seq);
        }
        let active_file = match segments.back() {
            Some(newest) => OpenOptions::new()
                .read(true)
                .write(true)
                .open(&newest.path)?,
            None => {
                let (segment, file) = create_segment(dir, next_seq)?;
                segments.push_back(segment);
                file
            }
        };
        if !deleted.is_empty() || segment_count == 0 || renamed {
            sync_dir(dir)?;
        }
        report.segments = segments.len();
        report.pending_records = pending_records;

        let bytes_on_disk = segments.iter().map(|segment| segment.len).sum();
        let last_appended_ms = append_times.back().map_or(0, |(_, ms)| *ms);
        let mut state = State {
            segments,
            active_file: Arc::new(active_file),
            next_seq,
            written_through: next_seq - 1,
            synced_through: next_seq - 1,
            sync_in_progress: false,
            stopped: None,
            acked_through,
            bytes_on_disk,
            append_times,
            missing_seqs,
            out_of_space: false,
            last_appended_ms,
            encode_buffer: Vec::new(),
        };
        state.forget_acknowledged();
        let queue = Queue {
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(state),
            synced: Condvar::new(),
            cursor: Mutex::new(CursorFile {
                durable_through: acked_through,
                written_at: Instant::now(),
            }),
            segment_fsyncs: AtomicU64::new(0),
            fsync_observer: OnceLock::new(),
            _process_lock: process_lock,
        };
        Ok((queue, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `payloads` as consecutive records and returns their sequence numbers once
    /// they are on disk. Fails with [`QueueError::Full`] when the batch does not fit in
    /// `max_bytes`, with nothing written.
    pub fn append<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>, QueueError> {
        let mut needed = 0;
        for payload in payloads {
            let len = payload.as_ref().len() as u64;
            if len > MAX_PAYLOAD_BYTES {
                return Err(QueueError::PayloadTooLarge {
                    len,
                    max: MAX_PAYLOAD_BYTES,
                });
            }
            needed += HEADER_BYTES + len;
        }
        let mut state = self.state.lock();
        if let Some(reason) = &state.stopped {
            return Err(QueueError::Stopped(reason.clone()));
        }
        if payloads.is_empty() {
            return Ok(state.next_seq..state.next_seq);
        }
        if state.bytes_on_disk + needed > self.options.max_bytes {
            return Err(QueueError::Full {
                used: state.bytes_on_disk,
                needed,
                max_bytes: self.options.max_bytes,
            });
        }
        let active_len = state.active().len;
        if active_len > 0 && active_len + needed > self.options.segment_bytes {
            self.roll_segment(&mut state)?;
        }

        let first_seq = state.next_seq;
        let appended_at_ms = now_ms().max(state.last_appended_ms);
        let mut buffer = std::mem::take(&mut state.encode_buffer);
        buffer.clear();
        for (index, payload) in payloads.iter().enumerate() {
            encode_record(
                &mut buffer,
                first_seq + index as u64,
                appended_at_ms,
                payload.as_ref(),
            );
        }
        let offset = state.active().len;
        let written = state.active_file.write_all_at(&buffer, offset);
        state.encode_buffer = buffer;
        if let Err(err) = written {
            // Cut the partial batch back off so no torn record sits before later ones.
            let cut = state.active_file.set_len(offset);
            return Err(match cut {
                Ok(()) if is_out_of_space(&err) => {
                    state.out_of_space = true;
                    QueueError::NoSpace
                }
                _ => {
                    let reason = format!("write to {}: {err}", state.active().path.display());
                    state.stopped = Some(reason.clone());
                    QueueError::Stopped(reason)
                }
            });
        }
        let last_seq = first_seq + payloads.len() as u64 - 1;
        state.next_seq = last_seq + 1;
        state.written_through = last_seq;
        state.last_appended_ms = appended_at_ms;
        state.bytes_on_disk += needed;
        if let Some(active) = state.segments.back_mut() {
            active.len += needed;
        }
        note_append_time(&mut state.append_times, first_seq, appended_at_ms);

        self.wait_until_synced(&mut state, last_seq)?;
        Ok(first_seq..last_seq + 1)
    }

    /// Group commit: returns once everything through `seq` is fsynced, fsyncing itself
    /// when no other appender is.
    fn wait_until_synced(
        &self,
        state: &mut MutexGuard<'_, State>,
        seq: u64,
    ) -> Result<(), QueueError> {
        loop {
            if state.synced_through >= seq {
                return Ok(());
            }
            if let Some(reason) = &state.stopped {
                return Err(QueueError::Stopped(reason.clone()));
            }
            if state.sync_in_progress {
                self.synced.wait(state);
                continue;
            }
            state.sync_in_progress = true;
            let target_seq = state.written_through;
            let target_len = state.active().len;
            let target_segment = state.active().first_seq;
            let file = Arc::clone(&state.active_file);
            let synced = MutexGuard::unlocked(state, || self.timed_fsync(&file));
            state.sync_in_progress = false;
            match synced {
                Ok(()) => {
                    state.synced_through = state.synced_through.max(target_seq);
                    if let Some(segment) = state
                        .segments
                        .iter_mut()
                        .find(|segment| segment.first_seq == target_segment)
                    {
                        segment.durable_len = segment.durable_len.max(target_len);
                    }
                }
                Err(err) => {
                    state.stopped = Some(format!("fsync of the queue: {err}"));
                }
            }
            self.synced.notify_all();
        }
    }

    /// fsyncs segment data, counted and timed.
    fn timed_fsync(&self, file: &File) -> io::Result<()> {
        let started = Instant::now();
        let synced = file.sync_data();
        self.segment_fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = self.fsync_observer.get() {
            observe(started.elapsed());
        }
        synced
    }

    /// Has `observe` told the duration of every later fsync of segment data; the first
    /// observer set stays.
    pub fn observe_fsyncs(&self, observe: impl Fn(Duration) + Send + Sync + 'static) {
        let _ = self.fsync_observer.set(Box::new(observe));
    }

    /// Whether records of these payload sizes would fit in `max_bytes` now: a cheap check
    /// before work that would be wasted on a full queue ([`Queue::append`] decides).
    pub fn has_room_for(&self, payload_bytes: &[usize]) -> bool {
        let needed: u64 = payload_bytes
            .iter()
            .map(|len| HEADER_BYTES + *len as u64)
            .sum();
        let state = self.state.lock();
        state.stopped.is_none() && state.bytes_on_disk + needed <= self.options.max_bytes
    }

    /// Closes the active segment (fsynced) and starts a new one (its directory entry
    /// fsynced), under the lock.
    fn roll_segment(&self, state: &mut State) -> Result<(), QueueError> {
        let stop = |state: &mut State, err: io::Error| {
            let reason = format!("rolling a segment: {err}");
            state.stopped = Some(reason.clone());
            QueueError::Stopped(reason)
        };
        if let Err(err) = self.timed_fsync(&state.active_file) {
            return Err(stop(state, err));
        }
        if let Some(active) = state.segments.back_mut() {
            active.durable_len = active.len;
        }
        let (segment, file) = match create_segment(&self.dir, state.next_seq) {
            Ok(created) => created,
            Err(err) if is_out_of_space(&err) => {
                state.out_of_space = true;
                return Err(QueueError::NoSpace);
            }
            Err(err) => return Err(QueueError::Io(err)),
        };
        if let Err(err) = sync_dir(&self.dir) {
            return Err(stop(state, err));
        }
        state.segments.push_back(segment);
        state.active_file = Arc::new(file);
        Ok(())
    }

    /// Records that the backend accepted everything through `seq`, then deletes the
    /// segments wholly at or below it. The cursor file is written (and fsynced) before any
    /// deletion, and otherwise at most every [`CURSOR_WRITE_INTERVAL`]: a crash may then
    /// deliver up to that much again (backends absorb an identical re-send), and the cost
    /// is not two fsyncs per delivered record. A clean stop ([`Queue::flush_cursor`], or
    /// dropping the queue) writes it.
    pub fn ack(&self, seq: u64) -> Result<(), QueueError> {
        let mut cursor = self.cursor.lock();
        let (must_write, roll_full_segment) = {
            let state = self.state.lock();
            if seq <= state.acked_through {
                return Ok(());
            }
            if seq > state.synced_through {
                return Err(QueueError::AckBeyondEnd {
                    seq,
                    last: state.synced_through,
                });
            }
            let roll_full_segment = state.out_of_space
                && state.active().len > 0
                && state.next_seq.saturating_sub(1) <= seq;
            let frees_a_segment =
                state.segments.len() >= 2 && state.segments[1].first_seq - 1 <= seq;
            (
                frees_a_segment
                    || roll_full_segment
                    || cursor.written_at.elapsed() >= CURSOR_WRITE_INTERVAL,
                roll_full_segment,
            )
        };
        if must_write {
            write_cursor(&self.dir, seq)?;
            *cursor = CursorFile {
                durable_through: seq,
                written_at: Instant::now(),
            };
        }
        let deletable = {
            let mut state = self.state.lock();
            state.acked_through = seq;
            if roll_full_segment && self.roll_segment(&mut state).is_ok() {
                state.out_of_space = false;
            }
            let mut deletable = Vec::new();
            while state.segments.len() >= 2 && state.segments[1].first_seq - 1 <= seq {
                if let Some(segment) = state.segments.pop_front() {
                    state.bytes_on_disk -= segment.len;
                    deletable.push(segment.path);
                }
            }
            state.forget_acknowledged();
            deletable
        };
        drop(cursor);
        if !deletable.is_empty() {
            for path in &deletable {
                // A file left behind here is deleted at the next open.
                std::fs::remove_file(path)?;
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// When every record is acknowledged, rolls the segment being appended to and deletes
    /// it, so a caught-up queue holds no disk (cursor written first, as in
    /// [`Queue::ack`]). Does nothing while a record is pending or the segment is empty.
    pub fn release_delivered(&self) -> Result<(), QueueError> {
        let mut cursor = self.cursor.lock();
        let mut state = self.state.lock();
        let last_seq = state.next_seq.saturating_sub(1);
        if state.stopped.is_some()
            || state.active().len == 0
            || state.acked_through < last_seq
            || state.synced_through < last_seq
        {
            return Ok(());
        }
        let acked_through = state.acked_through;
        if cursor.durable_through < acked_through {
            write_cursor(&self.dir, acked_through)?;
            *cursor = CursorFile {
                durable_through: acked_through,
                written_at: Instant::now(),
            };
        }
        self.roll_segment(&mut state)?;
        let mut deletable = Vec::new();
        while state.segments.len() >= 2 && state.segments[1].first_seq - 1 <= acked_through {
            if let Some(segment) = state.segments.pop_front() {
                state.bytes_on_disk -= segment.len;
                deletable.push(segment.path);
            }
        }
        state.forget_acknowledged();
        drop(state);
        drop(cursor);
        for path in &deletable {
            // A file left behind here is deleted at the next open.
            std::fs::remove_file(path)?;
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Bytes of segment files on disk (what `max_bytes` limits).
    pub fn bytes_on_disk(&self) -> u64 {
        self.state.lock().bytes_on_disk
    }

    /// Writes the cursor file when it is behind the acknowledged position.
    pub fn flush_cursor(&self) -> Result<(), QueueError> {
        let mut cursor = self.cursor.lock();
        let acked_through = self.state.lock().acked_through;
        if cursor.durable_through < acked_through {
            write_cursor(&self.dir, acked_through)?;
            *cursor = CursorFile {
                durable_through: acked_through,
                written_at: Instant::now(),
            };
        }
        Ok(())
    }

    pub fn stats(&self) -> QueueStats {
        let state = self.state.lock();
        let pending_records = state.pending_records();
        QueueStats {
            pending_records,
            bytes: state.bytes_on_disk,
            oldest_appended_at: if pending_records == 0 {
                None
            } else {
                state
                    .append_times
                    .front()
                    .map(|(_, ms)| UNIX_EPOCH + Duration::from_millis(*ms))
            },
            acked_through: state.acked_through,
            last_seq: state.synced_through,
            segments: state.segments.len(),
            segment_fsyncs: self.segment_fsyncs.load(Ordering::Relaxed),
        }
    }

    /// A reader of the records after the cursor, in order.
    pub fn reader(self: &Arc<Self>) -> QueueReader {
        let acked_through = self.state.lock().acked_through;
        QueueReader {
            queue: Arc::clone(self),
            delivered_through: acked_through,
            last_seen_seq: 0,
            position: None,
            payload: Vec::new(),
            skipped_regions: 0,
        }
    }
}

impl Drop for Queue {
    /// A clean stop keeps the acknowledged position (a failure only means records are
    /// delivered again).
    fn drop(&mut self) {
        if let Err(err) = self.flush_cursor() {
            tracing::warn!(dir = %self.dir.display(), error = %err, "could not write the queue cursor at close");
        }
    }
}

impl State {
    fn active(&self) -> &Segment {
        // A queue always has an active segment: open creates one when there is none and
        // acks never remove the last one.
        &self.segments[self.segments.len() - 1]
    }

    fn pending_records(&self) -> u64 {
        let missing: u64 = self
            .missing_seqs
            .iter()
            .map(|range| {
                let start = range.start.max(self.acked_through + 1);
                let end = range.end.min(self.synced_through + 1);
                end.saturating_sub(start)
            })
            .sum();
        (self.synced_through.saturating_sub(self.acked_through)).saturating_sub(missing)
    }

    /// Drops what only acknowledged records needed.
    fn forget_acknowledged(&mut self) {
        let first_pending = self.acked_through + 1;
        while self.append_times.len() >= 2 && self.append_times[1].0 <= first_pending {
            self.append_times.pop_front();
        }
        self.missing_seqs.retain(|range| range.end > first_pending);
    }
}

/// Keeps one append time per second: the first record appended in it.
fn note_append_time(append_times: &mut VecDeque<(u64, u64)>, seq: u64, appended_at_ms: u64) {
    let same_second = append_times
        .back()
        .is_some_and(|(_, last_ms)| last_ms / 1000 == appended_at_ms / 1000);
    if !same_second {
        append_times.push_back((seq, appended_at_ms));
    }
}

/// Reads a queue's records in order from where it was created, never returning a record
/// twice; holds one record in memory.
pub struct QueueReader {
    queue: Arc<Queue>,
    /// Records at or below this are not returned (acknowledged, or returned already).
    delivered_through: u64,
    /// The highest valid sequence read so far: a valid next record is above it.
    last_seen_seq: u64,
    /// Segment (by first sequence), its open file, and the next offset to read in it.
    position: Option<(u64, File, u64)>,
    payload: Vec<u8>,
    skipped_regions: u64,
}

impl QueueReader {
    /// The next durable record, or `None` when the reader has caught up with the writer.
    /// Damaged stretches are skipped and counted ([`QueueReader::skipped_regions`]).
    pub fn next_record(&mut self) -> Result<Option<QueuedRecord>, QueueError> {
        loop {
            let (readable_end, next_segment) = {
                let state = self.queue.state.lock();
                let current = self.position.as_ref().map(|(first_seq, _, _)| *first_seq);
                let index = match current.and_then(|first_seq| {
                    state
                        .segments
                        .iter()
                        .position(|segment| segment.first_seq == first_seq)
                }) {
                    Some(index) => index,
                    None => {
                        // Start, or the segment was deleted under a lagging reader: go to
                        // the segment that holds the next record to deliver.
                        let wanted = self.delivered_through + 1;
                        let index = state
                            .segments
                            .iter()
                            .rposition(|segment| segment.first_seq <= wanted)
                            .unwrap_or(0);
                        let segment = &state.segments[index];
                        let file = File::open(&segment.path)?;
                        self.last_seen_seq = self.last_seen_seq.max(segment.first_seq - 1);
                        self.position = Some((segment.first_seq, file, 0));
                        index
                    }
                };
                let segment = &state.segments[index];
                let next = state
                    .segments
                    .get(index + 1)
                    .map(|next| (next.first_seq, next.path.clone()));
                (segment.durable_len, next)
            };
            let Some((_, file, offset)) = self.position.as_mut() else {
                return Ok(None);
            };
            if *offset >= readable_end {
                match next_segment {
                    Some((first_seq, path)) => {
                        self.position = match File::open(&path) {
                            Ok(file) => Some((first_seq, file, 0)),
                            // Deleted under a lagging reader: relocate from the cursor.
                            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                            Err(err) => return Err(err.into()),
                        };
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            match read_record_at(
                file,
                *offset,
                readable_end,
                self.last_seen_seq,
                &mut self.payload,
            )? {
                RecordRead::Valid(header) => {
                    *offset += header.encoded_len();
                    self.last_seen_seq = header.seq;
                    if header.seq <= self.delivered_through {
                        continue;
                    }
                    self.delivered_through = header.seq;
                    return Ok(Some(QueuedRecord {
                        seq: header.seq,
                        appended_at: UNIX_EPOCH + Duration::from_millis(header.appended_at_ms),
                        payload: std::mem::take(&mut self.payload),
                    }));
                }
                RecordRead::Incomplete | RecordRead::Invalid => {
                    self.skipped_regions += 1;
                    *offset = find_next_valid(
                        file,
                        *offset + 1,
                        readable_end,
                        self.last_seen_seq,
                        &mut self.payload,
                    )?
                    .unwrap_or(readable_end);
                }
            }
        }
    }

    /// Damaged stretches this reader skipped.
    pub fn skipped_regions(&self) -> u64 {
        self.skipped_regions
    }
}

/// The async face of a queue: each blocking call runs on the blocking pool, so the
/// async workers never wait for an fsync.
#[derive(Clone)]
pub struct AsyncQueue {
    queue: Arc<Queue>,
}

impl AsyncQueue {
    pub fn new(queue: Arc<Queue>) -> Self {
        AsyncQueue { queue }
    }

    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    pub async fn append(&self, payloads: Vec<bytes::Bytes>) -> Result<Range<u64>, QueueError> {
        let queue = Arc::clone(&self.queue);
        tokio::task::spawn_blocking(move || queue.append(&payloads))
            .await
            .map_err(|err| QueueError::Stopped(format!("append task: {err}")))?
    }

    pub async fn ack(&self, seq: u64) -> Result<(), QueueError> {
        let queue = Arc::clone(&self.queue);
        tokio::task::spawn_blocking(move || queue.ack(seq))
            .await
            .map_err(|err| QueueError::Stopped(format!("ack task: {err}")))?
    }
}

pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The segment files of a queue directory, oldest first. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first_seq) = name
            .to_str()
            .and_then(|name| name.strip_prefix(SEGMENT_PREFIX))
            .and_then(|rest| rest.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|digits| digits.parse::<u64>().ok())
            .filter(|first_seq| *first_seq >= 1)
        else {
            continue;
        };
        segments.push((first_seq, entry.path()));
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// The segment files of a queue directory in the order of their records: each keyed by
/// the sequence number of its first valid record, or by its name when it holds none. A
/// name is only a hint: a file renamed past its records would otherwise have them taken
/// for stale ones and cut away.
pub(crate) fn list_segments_by_records(
    dir: &Path,
    payload: &mut Vec<u8>,
) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut keyed = Vec::new();
    for (named_seq, path) in list_segments(dir)? {
        let first_record_seq = File::open(&path).and_then(|file| {
            let end = file.metadata()?.len();
            first_valid_seq(&file, end, payload)
        });
        let first_seq = first_record_seq
            .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))?
            .unwrap_or(named_seq);
        keyed.push(((first_seq, named_seq), path));
    }
    keyed.sort_unstable_by_key(|(key, _)| *key);
    Ok(keyed
        .into_iter()
        .map(|((first_seq, _), path)| (first_seq, path))
        .collect())
}

/// Renames `from` to `to` unless it is already there or `to` exists: `Some(to)` when
/// renamed. A hard link and an unlink, so an existing file is never replaced.
fn rename_without_replacing(from: &Path, to: &Path) -> io::Result<Option<PathBuf>> {
    if from == to {
        return Ok(None);
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            std::fs::remove_file(from)?;
            Ok(Some(to.to_path_buf()))
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(err) => Err(err),
    }
}

/// Takes the exclusive lock that keeps a second process out of the queue.
fn lock_directory(dir: &Path) -> Result<File, QueueError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(err) if err == rustix::io::Errno::WOULDBLOCK => {
            Err(QueueError::Locked(dir.to_path_buf()))
        }
        Err(err) => Err(QueueError::Io(err.into())),
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> io::Result<(Segment, File)> {
    let path = dir.join(segment_file_name(first_seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((
        Segment {
            first_seq,
            path,
            len: 0,
            durable_len: 0,
        },
        file,
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The disk or the user's disk quota is full: a 503, not a stopped queue.
fn is_out_of_space(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests;
