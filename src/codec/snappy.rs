//! Snappy block format with the decoded length checked against a limit before any
//! buffer is allocated (the "snappy bomb" of PROTOCOL.md §5 #4: a few bytes whose
//! preamble claims gigabytes).

use std::cell::RefCell;

use super::CodecError;

/// Stream identifier chunk that starts every snappy *framed* stream.
const FRAMED_MAGIC: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// The decoded length a snappy block announces, checked against `max_decoded`; nothing
/// is allocated. Empty and framed bodies are named.
pub fn checked_decoded_len(body: &[u8], max_decoded: u64) -> Result<u64, CodecError> {
    if body.is_empty() {
        return Err(CodecError::EmptyBody);
    }
    if body.starts_with(FRAMED_MAGIC) {
        return Err(CodecError::FramedSnappy);
    }
    let claimed =
        snap::raw::decompress_len(body).map_err(|err| CodecError::Snappy(err.to_string()))? as u64;
    if claimed > max_decoded {
        return Err(CodecError::DecodedTooLarge {
            claimed,
            limit: max_decoded,
        });
    }
    Ok(claimed)
}

/// Decompresses a snappy block, refusing before allocation when the preamble claims more
/// than `max_decoded` bytes.
pub fn decompress_capped(body: &[u8], max_decoded: u64) -> Result<Vec<u8>, CodecError> {
    checked_decoded_len(body, max_decoded)?;
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|err| CodecError::Snappy(err.to_string()))
}

/// As [`decompress_capped`], into `buf`, whose allocation is reused: it is only grown
/// (and only the growth zeroed), so a buffer kept from request to request costs no
/// allocation and no clearing.
pub fn decompress_capped_into(
    body: &[u8],
    max_decoded: u64,
    buf: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let claimed = checked_decoded_len(body, max_decoded)? as usize;
    if buf.len() < claimed {
        buf.resize(claimed, 0);
    } else {
        buf.truncate(claimed);
    }
    let written = snap::raw::Decoder::new()
        .decompress(body, buf)
        .map_err(|err| CodecError::Snappy(err.to_string()))?;
    // The decoder refuses a body that decodes to other than its preamble's length.
    buf.truncate(written);
    Ok(())
}

thread_local! {
    /// Room for the worst case of one compression, kept per thread: the result is
    /// copied out at its real size (several times smaller), so no request pays for
    /// allocating and zeroing the worst case.
    static COMPRESS_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Scratch space grown past this by a large request is freed rather than kept.
const KEEP_SCRATCH_BYTES: usize = 8 << 20;

/// Compresses `raw` in the snappy block format.
pub fn compress(raw: &[u8]) -> Vec<u8> {
    COMPRESS_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let worst = snap::raw::max_compress_len(raw.len());
        if scratch.len() < worst {
            scratch.resize(worst, 0);
        }
        // Compression only fails when the input exceeds snappy's 4 GiB bound, far
        // above any decoded-size limit promgate accepts.
        let compressed = snap::raw::Encoder::new()
            .compress(raw, &mut scratch)
            .map(|written| scratch[..written].to_vec())
            .unwrap_or_default();
        if scratch.len() > KEEP_SCRATCH_BYTES {
            *scratch = Vec::new();
        }
        compressed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bomb_is_refused_from_the_preamble() {
        // Varint preamble 0xFFFFFFFF0F = 4 GiB - 1, then two bytes of nothing.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00];
        let err = decompress_capped(&bomb, 32 << 20).expect_err("refused");
        assert_eq!(
            err,
            CodecError::DecodedTooLarge {
                claimed: 4_294_967_295,
                limit: 32 << 20
            }
        );
    }

    #[test]
    fn framed_and_empty_bodies_are_named() {
        let mut framed = FRAMED_MAGIC.to_vec();
        framed.extend_from_slice(&[0x01, 0x05, 0x00, 0x00]);
        assert_eq!(
            decompress_capped(&framed, 1024),
            Err(CodecError::FramedSnappy)
        );
        assert_eq!(decompress_capped(&[], 1024), Err(CodecError::EmptyBody));
        assert_eq!(decompress_capped(&[0x00], 1024), Ok(Vec::new()));
    }

    #[test]
    fn round_trip() {
        let raw = b"hello hello hello hello".repeat(10);
        assert_eq!(decompress_capped(&compress(&raw), 1024), Ok(raw));
    }
}
