//! The record format of a queue segment and the one scanner that reads it: recovery at
//! open, the delivery reader and the offline `queue verify` all decide "valid, torn or
//! corrupt" here, so they can never disagree.
//!
//! A record is a 24-byte header and its payload, all integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  payload length in bytes (u32)
//!      4     4  CRC32C of bytes 8.. (sequence, append time and payload)
//!      8     8  sequence number (u64, from 1, strictly increasing across the queue)
//!     16     8  append time, milliseconds since the Unix epoch (u64)
//!     24     n  payload
//! ```
//!
//! The length is outside the checksum so a reader knows how much to check; it is
//! trusted only when the checksum over what it delimits matches. Reads are positional
//! (`pread`) into one caller-owned buffer, so memory is bounded by the largest record,
//! never by a segment.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes before the payload.
pub const HEADER_BYTES: u64 = 24;
/// The largest payload a record may carry. Far above the 32 MiB request cap; a length
/// field beyond it is damage, so a corrupt header never makes a reader allocate more.
pub const MAX_PAYLOAD_BYTES: u64 = 128 * 1024 * 1024;
/// How much of a damaged region the resynchronising scan reads at once.
const RESYNC_WINDOW_BYTES: usize = 64 * 1024;

/// The checked header of a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub seq: u64,
    pub appended_at_ms: u64,
    pub payload_len: u64,
}

impl RecordHeader {
    /// Header and payload: how far the next record starts.
    pub fn encoded_len(&self) -> u64 {
        HEADER_BYTES + self.payload_len
    }
}

/// What lies at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordRead {
    /// A complete record whose checksum matches; its payload is in the caller's buffer.
    Valid(RecordHeader),
    /// The file ends inside the header or inside the payload the header announces.
    Incomplete,
    /// The bytes are not a valid record (checksum mismatch, impossible length or sequence).
    Invalid,
}

/// A damaged stretch of a segment found by [`scan_segment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Bytes between two valid records that are no record: skipped, counted.
    Corrupt { offset: u64, len: u64 },
    /// Bytes after the last valid record that hold no valid record: a write cut short
    /// (or damage there); recovery truncates them.
    TornTail { offset: u64, len: u64 },
}

impl Damage {
    pub fn offset(&self) -> u64 {
        match self {
            Damage::Corrupt { offset, .. } | Damage::TornTail { offset, .. } => *offset,
        }
    }

    /// Bytes the damaged stretch spans (never zero).
    pub fn byte_len(&self) -> u64 {
        match self {
            Damage::Corrupt { len, .. } | Damage::TornTail { len, .. } => *len,
        }
    }
}

/// Appends one encoded record to `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, appended_at_ms: u64, payload: &[u8]) {
    let checksum = checksum(seq, appended_at_ms, payload);
    // Payload lengths are checked against MAX_PAYLOAD_BYTES (< u32::MAX) by the caller.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&appended_at_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(seq: u64, appended_at_ms: u64, payload: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &appended_at_ms.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// The fields of a header as written, before any check.
struct RawHeader {
    payload_len: u64,
    checksum: u32,
    seq: u64,
    appended_at_ms: u64,
}

fn parse_header(bytes: &[u8; HEADER_BYTES as usize]) -> RawHeader {
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    RawHeader {
        payload_len: u64::from(u32_at(0)),
        checksum: u32_at(4),
        seq: u64_at(8),
        appended_at_ms: u64_at(16),
    }
}

/// Reads the record at `offset` of a segment whose readable part ends at `end`, with
/// its payload into `payload` (cleared first). A record must have `seq > after_seq`.
pub fn read_record_at(
    file: &File,
    offset: u64,
    end: u64,
    after_seq: u64,
    payload: &mut Vec<u8>,
) -> io::Result<RecordRead> {
    payload.clear();
    if offset.saturating_add(HEADER_BYTES) > end {
        return Ok(RecordRead::Incomplete);
    }
    let mut header_bytes = [0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut header_bytes, offset)?;
    let header = parse_header(&header_bytes);
    if header.payload_len > MAX_PAYLOAD_BYTES || header.seq == 0 || header.seq <= after_seq {
        return Ok(RecordRead::Invalid);
    }
    let payload_start = offset + HEADER_BYTES;
    if payload_start + header.payload_len > end {
        return Ok(RecordRead::Incomplete);
    }
    // Bounded: at most MAX_PAYLOAD_BYTES and never past the end of the file.
    payload.resize(header.payload_len as usize, 0);
    file.read_exact_at(payload, payload_start)?;
    if checksum(header.seq, header.appended_at_ms, payload) != header.checksum {
        payload.clear();
        return Ok(RecordRead::Invalid);
    }
    Ok(RecordRead::Valid(RecordHeader {
        seq: header.seq,
        appended_at_ms: header.appended_at_ms,
        payload_len: header.payload_len,
    }))
}

/// The offset of the first valid record with `seq > after_seq` in `[from, end)`, read
/// through a fixed window so a damaged stretch costs bounded memory.
pub fn find_next_valid(
    file: &File,
    from: u64,
    end: u64,
    after_seq: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Option<u64>> {
    let mut window = Vec::with_capacity(RESYNC_WINDOW_BYTES);
    let mut window_start = from;
    let mut candidate = from;
    while candidate + HEADER_BYTES <= end {
        let window_end = window_start + window.len() as u64;
        if candidate + HEADER_BYTES > window_end {
            window_start = candidate;
            let want = (end - window_start).min(RESYNC_WINDOW_BYTES as u64) as usize;
            window.resize(want, 0);
            file.read_exact_at(&mut window, window_start)?;
        }
        let at = (candidate - window_start) as usize;
        let mut header_bytes = [0u8; HEADER_BYTES as usize];
        header_bytes.copy_from_slice(&window[at..at + HEADER_BYTES as usize]);
        let header = parse_header(&header_bytes);
        let plausible = header.payload_len <= MAX_PAYLOAD_BYTES
            && header.seq > after_seq
            && candidate + HEADER_BYTES + header.payload_len <= end;
        if plausible {
            if let RecordRead::Valid(_) = read_record_at(file, candidate, end, after_seq, payload)?
            {
                return Ok(Some(candidate));
            }
        }
        candidate += 1;
    }
    Ok(None)
}

/// The sequence number of the first valid record of a segment, if it holds one.
pub fn first_valid_seq(file: &File, end: u64, payload: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let offset = match read_record_at(file, 0, end, 0, payload)? {
        RecordRead::Valid(header) => return Ok(Some(header.seq)),
        RecordRead::Incomplete | RecordRead::Invalid => {
            match find_next_valid(file, 1, end, 0, payload)? {
                Some(offset) => offset,
                None => return Ok(None),
            }
        }
    };
    Ok(match read_record_at(file, offset, end, 0, payload)? {
        RecordRead::Valid(header) => Some(header.seq),
        RecordRead::Incomplete | RecordRead::Invalid => None,
    })
}

/// What a whole-segment scan found.
#[derive(Debug, Default)]
pub struct SegmentScan {
    /// End of the last valid record (0 when there is none): where a torn tail is cut.
    pub valid_end: u64,
    /// Valid records found.
    pub records: u64,
    /// The highest valid sequence number, if any record is valid.
    pub last_seq: Option<u64>,
    pub damage: Vec<Damage>,
}

/// Reads every record of a segment from the start, calling `on_record` for each valid
/// one, skipping damaged stretches (each reported once) up to the next valid record.
pub fn scan_segment(
    file: &File,
    end: u64,
    after_seq: u64,
    payload: &mut Vec<u8>,
    mut on_record: impl FnMut(u64, &RecordHeader, &[u8]),
) -> io::Result<SegmentScan> {
    let mut scan = SegmentScan::default();
    let mut offset = 0;
    let mut last_seq = after_seq;
    while offset < end {
        match read_record_at(file, offset, end, last_seq, payload)? {
            RecordRead::Valid(header) => {
                on_record(offset, &header, payload);
                offset += header.encoded_len();
                last_seq = header.seq;
                scan.valid_end = offset;
                scan.records += 1;
                scan.last_seq = Some(header.seq);
            }
            RecordRead::Incomplete | RecordRead::Invalid => {
                match find_next_valid(file, offset + 1, end, last_seq, payload)? {
                    Some(next) => {
                        scan.damage.push(Damage::Corrupt {
                            offset,
                            len: next - offset,
                        });
                        offset = next;
                    }
                    None => {
                        scan.damage.push(Damage::TornTail {
                            offset,
                            len: end - offset,
                        });
                        break;
                    }
                }
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn segment_of(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (seq, payload) in records {
            encode_record(&mut bytes, *seq, 1_700_000_000_000 + seq, payload);
        }
        bytes
    }

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut named = tempfile::NamedTempFile::new().expect("temp file");
        named.write_all(bytes).expect("write");
        let file = File::open(named.path()).expect("open");
        (named, file)
    }

    #[test]
    fn a_record_reads_back_with_its_header() {
        let bytes = segment_of(&[(7, b"hello")]);
        assert_eq!(bytes.len() as u64, HEADER_BYTES + 5);
        let (_named, file) = file_with(&bytes);
        let mut payload = Vec::new();
        let read = read_record_at(&file, 0, bytes.len() as u64, 0, &mut payload).expect("read");
        assert_eq!(
            read,
            RecordRead::Valid(RecordHeader {
                seq: 7,
                appended_at_ms: 1_700_000_000_007,
                payload_len: 5
            })
        );
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn a_length_beyond_the_cap_is_damage_not_an_allocation() {
        let mut bytes = segment_of(&[(1, b"x")]);
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let (_named, file) = file_with(&bytes);
        let mut payload = Vec::new();
        let read = read_record_at(&file, 0, bytes.len() as u64, 0, &mut payload).expect("read");
        assert_eq!(read, RecordRead::Invalid);
        assert!(payload.capacity() < 1024);
    }

    #[test]
    fn zero_filled_tails_are_not_records() {
        let mut bytes = segment_of(&[(1, b"one")]);
        bytes.extend_from_slice(&[0u8; 100]);
        let (_named, file) = file_with(&bytes);
        let mut payload = Vec::new();
        let scan =
            scan_segment(&file, bytes.len() as u64, 0, &mut payload, |_, _, _| {}).expect("scan");
        assert_eq!(scan.records, 1);
        assert_eq!(scan.valid_end, HEADER_BYTES + 3);
        assert_eq!(
            scan.damage,
            vec![Damage::TornTail {
                offset: HEADER_BYTES + 3,
                len: 100
            }]
        );
    }

    #[test]
    fn a_corrupt_length_field_is_resynchronised_past() {
        let bytes_before = segment_of(&[(1, b"first")]);
        let mut bytes = segment_of(&[(1, b"first"), (2, b"second"), (3, b"third")]);
        // Break the second record's length so it cannot be skipped by trusting it.
        let second = bytes_before.len();
        bytes[second..second + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        let (_named, file) = file_with(&bytes);
        let mut payload = Vec::new();
        let mut seen = Vec::new();
        let scan = scan_segment(
            &file,
            bytes.len() as u64,
            0,
            &mut payload,
            |_, header, _| seen.push(header.seq),
        )
        .expect("scan");
        assert_eq!(seen, vec![1, 3]);
        assert_eq!(
            scan.damage,
            vec![Damage::Corrupt {
                offset: second as u64,
                len: HEADER_BYTES + 6
            }]
        );
    }
}
