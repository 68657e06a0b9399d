//! Start-up recovery of a queue's segments: each read by its records' own sequence
//! numbers, a torn tail of the newest cut back to its last valid record, damage
//! elsewhere counted and skipped, gaps noted, and each segment named after its first
//! record.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::{
    note_append_time, rename_without_replacing, scan_segment, segment_file_name, Damage,
    QueueError, RecoveryReport, Segment,
};

/// What reading every segment at start-up found.
pub(super) struct Recovered {
    pub(super) segments: VecDeque<Segment>,
    pub(super) append_times: VecDeque<(u64, u64)>,
    pub(super) missing_seqs: Vec<std::ops::Range<u64>>,
    pub(super) last_valid_seq: u64,
    pub(super) expected_seq: u64,
    pub(super) pending_records: u64,
    pub(super) renamed: bool,
}

/// Reads each listed segment (oldest first): its records' own sequence numbers, the
/// gaps between them, a torn tail of the newest cut off, damage elsewhere counted and
/// skipped, and each segment renamed after its first record.
pub(super) fn recover_segments(
    dir: &Path,
    listed: Vec<(u64, PathBuf)>,
    acked_through: u64,
    payload: &mut Vec<u8>,
    report: &mut RecoveryReport,
) -> Result<Recovered, QueueError> {
    let segment_count = listed.len();
    let mut segments = VecDeque::new();
    let mut append_times: VecDeque<(u64, u64)> = VecDeque::new();
    let mut missing_seqs = Vec::new();
    let mut last_valid_seq = 0;
    let mut expected_seq = listed.first().map_or(1, |(first_seq, _)| *first_seq);
    let mut pending_records = 0;
    let mut renamed = false;
    for (index, (first_seq, path)) in listed.into_iter().enumerate() {
        let is_newest = index + 1 == segment_count;
        let file = OpenOptions::new().read(true).write(is_newest).open(&path)?;
        let end = file.metadata()?.len();
        // The records' own sequence numbers decide what is new, never the name.
        let mut first_record_seq = None;
        let scan = scan_segment(&file, end, last_valid_seq, payload, |_, header, _| {
            first_record_seq.get_or_insert(header.seq);
            if header.seq > expected_seq {
                missing_seqs.push(expected_seq..header.seq);
            }
            expected_seq = header.seq + 1;
            note_append_time(&mut append_times, header.seq, header.appended_at_ms);
            if header.seq > acked_through {
                pending_records += 1;
            }
        })?;
        let first_seq = first_record_seq.unwrap_or(first_seq.max(last_valid_seq + 1));
        last_valid_seq = scan.last_seq.unwrap_or(last_valid_seq);
        let mut len = end;
        for damage in &scan.damage {
            match damage {
                Damage::TornTail { .. } if is_newest => {
                    report.truncated_bytes += damage.byte_len();
                    len = scan.valid_end;
                }
                _ => {
                    report.corrupt_regions += 1;
                    report.corrupt_bytes += damage.byte_len();
                }
            }
        }
        if len < end {
            file.set_len(len)?;
            file.sync_all()?;
        }
        // Named by its first record, so later segments (named by the sequence that
        // opens them) can never take its name.
        let path = match rename_without_replacing(&path, &dir.join(segment_file_name(first_seq)))? {
            Some(renamed_path) => {
                report.renamed_segments += 1;
                renamed = true;
                renamed_path
            }
            None => path,
        };
        segments.push_back(Segment {
            first_seq,
            path,
            len,
            durable_len: len,
        });
    }
    Ok(Recovered {
        segments,
        append_times,
        missing_seqs,
        last_valid_seq,
        expected_seq,
        pending_records,
        renamed,
    })
}
