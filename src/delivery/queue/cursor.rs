//! The reader position of a queue: the `cursor` file holding the highest sequence number
//! a backend has accepted ("acknowledged through"). It is replaced atomically (write a
//! temporary file, fsync it, rename it over, fsync the directory) and always made durable
//! before a segment below it is deleted (DESIGN §9).
//!
//! Layout, 20 bytes: the magic `PGQCURS1`, the sequence (u64 little-endian), and the
//! CRC32C of those 16 bytes (u32 little-endian).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub const CURSOR_FILE: &str = "cursor";
const CURSOR_TEMP_FILE: &str = "cursor.tmp";
const MAGIC: &[u8; 8] = b"PGQCURS1";
const CURSOR_BYTES: usize = 20;

/// What the cursor file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredCursor {
    /// No cursor yet: nothing was ever acknowledged.
    Missing,
    /// Everything up to and including this sequence was acknowledged.
    AckedThrough(u64),
    /// The file exists but is not a valid cursor.
    Damaged,
}

pub fn read_cursor(queue_dir: &Path) -> io::Result<StoredCursor> {
    let bytes = match std::fs::read(queue_dir.join(CURSOR_FILE)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(StoredCursor::Missing),
        Err(err) => return Err(err),
    };
    if bytes.len() != CURSOR_BYTES || &bytes[..8] != MAGIC {
        return Ok(StoredCursor::Damaged);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let mut stored_checksum = [0u8; 4];
    stored_checksum.copy_from_slice(&bytes[16..20]);
    if crc32c::crc32c(&bytes[..16]) != u32::from_le_bytes(stored_checksum) {
        return Ok(StoredCursor::Damaged);
    }
    Ok(StoredCursor::AckedThrough(u64::from_le_bytes(seq)))
}

/// Makes `acked_through` the durable reader position; returns only once it is on disk.
pub fn write_cursor(queue_dir: &Path, acked_through: u64) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(CURSOR_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&acked_through.to_le_bytes());
    let checksum = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());

    let temp_path = queue_dir.join(CURSOR_TEMP_FILE);
    let mut temp = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)?;
    temp.write_all(&bytes)?;
    temp.sync_all()?;
    drop(temp);
    std::fs::rename(&temp_path, queue_dir.join(CURSOR_FILE))?;
    sync_dir(queue_dir)
}

/// Makes the directory's entries (created, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a temporary cursor left by a stop between its write and its rename.
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
        assert!(!dir.path().join(CURSOR_TEMP_FILE).exists());
        let mut bytes = std::fs::read(dir.path().join(CURSOR_FILE)).expect("read");
        bytes[9] ^= 0x01;
        std::fs::write(dir.path().join(CURSOR_FILE), bytes).expect("write");
        assert_eq!(
            read_cursor(dir.path()).expect("read"),
            StoredCursor::Damaged
        );
    }
}
