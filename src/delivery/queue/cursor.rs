//! The reader position of a queue: the `cursor` file holding the highest sequence number
//! a backend has accepted ("acknowledged through"). It is made durable before a segment
//! below it is deleted (DESIGN §9).
//!
//! Layout, two 20-byte slots, each the magic `PGQCURS1`, a sequence (u64 little-endian)
//! and the CRC32C of those 16 bytes (u32 little-endian). A write overwrites, in place, the
//! slot that does not hold the highest valid sequence, then fsyncs: a torn write damages
//! only that slot and the other still says where delivery stood, and an in-place
//! overwrite needs no new disk blocks, so acknowledging (and then deleting segments)
//! still works on a full disk. The file is created with both slots when the queue opens.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const CURSOR_FILE: &str = "cursor";
/// Left by an earlier layout that replaced the cursor by renaming; removed at open.
const CURSOR_TEMP_FILE: &str = "cursor.tmp";
const MAGIC: &[u8; 8] = b"PGQCURS1";
const SLOT_BYTES: usize = 20;

/// What the cursor file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredCursor {
    /// No cursor file: nothing was acknowledged yet.
    Missing,
    AckedThrough(u64),
    /// No slot is readable (the caller falls back to the oldest segment).
    Damaged,
}

/// The valid sequence of one slot.
fn slot_value(slot: &[u8]) -> Option<u64> {
    if slot.len() != SLOT_BYTES || &slot[..8] != MAGIC {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&slot[8..16]);
    let mut stored_checksum = [0u8; 4];
    stored_checksum.copy_from_slice(&slot[16..20]);
    (crc32c::crc32c(&slot[..16]) == u32::from_le_bytes(stored_checksum))
        .then(|| u64::from_le_bytes(seq))
}

/// The highest valid slot's sequence and its index, or `None`.
fn best_slot(bytes: &[u8]) -> Option<(u64, usize)> {
    bytes
        .chunks(SLOT_BYTES)
        .take(2)
        .enumerate()
        .filter_map(|(index, slot)| slot_value(slot).map(|seq| (seq, index)))
        .max()
}

pub fn read_cursor(queue_dir: &Path) -> io::Result<StoredCursor> {
    let bytes = match std::fs::read(queue_dir.join(CURSOR_FILE)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(StoredCursor::Missing),
        Err(err) => return Err(err),
    };
    Ok(match best_slot(&bytes) {
        Some((seq, _)) => StoredCursor::AckedThrough(seq),
        None => StoredCursor::Damaged,
    })
}

fn encode_slot(acked_through: u64) -> Vec<u8> {
    let mut slot = Vec::with_capacity(SLOT_BYTES);
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&acked_through.to_le_bytes());
    let checksum = crc32c::crc32c(&slot);
    slot.extend_from_slice(&checksum.to_le_bytes());
    slot
}

/// Records `acked_through` durably in the slot that does not hold the highest valid
/// sequence (creating the file, both slots, when there is none).
pub fn write_cursor(queue_dir: &Path, acked_through: u64) -> io::Result<()> {
    let path = queue_dir.join(CURSOR_FILE);
    let slot = encode_slot(acked_through);
    let existing = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 2 * SLOT_BYTES => Some(bytes),
        Ok(_) => None,
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let Some(existing) = existing else {
        // A new (or unusable) file: both slots, then the directory entry.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let mut both = slot.clone();
        both.extend_from_slice(&slot);
        file.write_all_at(&both, 0)?;
        file.set_len(both.len() as u64)?;
        file.sync_all()?;
        return sync_dir(queue_dir);
    };
    let overwrite = match best_slot(&existing) {
        Some((_, best)) => 1 - best,
        None => 0,
    };
    let file = OpenOptions::new().write(true).open(&path)?;
    file.write_all_at(&slot, (overwrite * SLOT_BYTES) as u64)?;
    file.sync_data()
}

/// Makes the directory's entries (created, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a temporary cursor file of the earlier layout.
pub fn remove_leftover_temp(queue_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(queue_dir.join(CURSOR_TEMP_FILE)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_cursor_reads_back_and_damage_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_cursor(dir.path()).expect("read"),
            StoredCursor::Missing
        );
        write_cursor(dir.path(), 42).expect("write");
        assert_eq!(
            read_cursor(dir.path()).expect("read"),
            StoredCursor::AckedThrough(42)
        );
        write_cursor(dir.path(), 43).expect("write");
        write_cursor(dir.path(), 44).expect("write");
        assert_eq!(
            read_cursor(dir.path()).expect("read"),
            StoredCursor::AckedThrough(44)
        );
        let path = dir.path().join(CURSOR_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 2 * SLOT_BYTES, "overwritten in place");
        // A torn write of the newest slot leaves the one before it.
        let newest = best_slot(&bytes).expect("valid").1;
        bytes[newest * SLOT_BYTES + 9] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(
            read_cursor(dir.path()).expect("read"),
            StoredCursor::AckedThrough(43)
        );
        // The next write replaces the damaged slot, not the valid one.
        write_cursor(dir.path(), 45).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(
            slot_value(&bytes[(1 - newest) * SLOT_BYTES..][..SLOT_BYTES]),
            Some(43)
        );
        assert_eq!(
            read_cursor(dir.path()).expect("read"),
            StoredCursor::AckedThrough(45)
        );
        // Both slots damaged: the caller falls back.
        std::fs::write(&path, [0u8; 2 * SLOT_BYTES]).expect("write");
        assert_eq!(
            read_cursor(dir.path()).expect("read"),
            StoredCursor::Damaged
        );
    }
}
