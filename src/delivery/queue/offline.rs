//! The offline view of a queue directory behind `promgate queue inspect|verify`
//! (DESIGN §2): reads every segment and the cursor read-only, checks every record's
//! checksum with the same scanner recovery uses, and changes nothing — no file is
//! created, truncated or deleted, and nothing is repaired. Beside a running relay it is
//! safe but approximate: a batch being written may show as a torn tail.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cursor::{read_cursor, StoredCursor, CURSOR_FILE};
use super::list_segments_by_records;
use super::record::{scan_segment, Damage};

/// One segment as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub first_seq: u64,
    pub bytes: u64,
    pub valid_records: u64,
    pub damage: Vec<Damage>,
}

/// What a queue directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInspection {
    pub dir: PathBuf,
    pub cursor: StoredCursor,
    /// The reader position: records at or below it were delivered.
    pub acked_through: u64,
    /// Valid records above the reader position.
    pub pending_records: u64,
    /// Bytes of segment files.
    pub bytes: u64,
    pub oldest_pending_appended_at: Option<SystemTime>,
    /// The highest valid sequence number in any segment.
    pub last_seq: Option<u64>,
    pub segments: Vec<SegmentSummary>,
}

impl QueueInspection {
    /// One line per problem: each damaged stretch and a damaged cursor.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.cursor == StoredCursor::Damaged {
            problems.push(format!(
                "{}: not a valid cursor (checksum or size); the position falls back to the oldest segment",
                self.dir.join(CURSOR_FILE).display()
            ));
        }
        for segment in &self.segments {
            for damage in &segment.damage {
                let what = match damage {
                    Damage::Corrupt { .. } => "damaged records skipped",
                    Damage::TornTail { .. } => "torn or damaged tail after the last valid record",
                };
                problems.push(format!(
                    "{}: offset {}: {} bytes: {what}",
                    segment.path.display(),
                    damage.offset(),
                    damage.byte_len()
                ));
            }
        }
        problems
    }
}

/// Reads the queue in `dir` without changing anything.
pub fn inspect_queue(dir: &Path) -> io::Result<QueueInspection> {
    let cursor = read_cursor(dir)?;
    let mut payload = Vec::new();
    let listed = list_segments_by_records(dir, &mut payload)?;
    let oldest_possible = listed.first().map_or(0, |(first_seq, _)| first_seq - 1);
    let acked_through = match cursor {
        StoredCursor::AckedThrough(seq) => seq.max(oldest_possible),
        StoredCursor::Missing | StoredCursor::Damaged => oldest_possible,
    };
    let mut inspection = QueueInspection {
        dir: dir.to_path_buf(),
        cursor,
        acked_through,
        pending_records: 0,
        bytes: 0,
        oldest_pending_appended_at: None,
        last_seq: None,
        segments: Vec::new(),
    };
    for (first_seq, path) in listed {
        let file = File::open(&path)?;
        let end = file.metadata()?.len();
        // Recovery's rule: the records' own sequence numbers, never the file name.
        let after_seq = inspection.last_seq.unwrap_or(0);
        let mut pending = 0;
        let mut oldest = inspection.oldest_pending_appended_at;
        let scan = scan_segment(&file, end, after_seq, &mut payload, |_, header, _| {
            if header.seq > acked_through {
                pending += 1;
                oldest.get_or_insert(UNIX_EPOCH + Duration::from_millis(header.appended_at_ms));
            }
        })?;
        inspection.pending_records += pending;
        inspection.oldest_pending_appended_at = oldest;
        inspection.bytes += end;
        inspection.last_seq = scan.last_seq.or(inspection.last_seq);
        inspection.segments.push(SegmentSummary {
            path,
            first_seq,
            bytes: end,
            valid_records: scan.records,
            damage: scan.damage,
        });
    }
    Ok(inspection)
}
