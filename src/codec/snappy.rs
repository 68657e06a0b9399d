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

/// The decoded length a block starts with (a little-endian base-128 varint of at most
/// five bytes) and the length of that preamble.
fn preamble(block: &[u8]) -> Result<(u64, usize), CodecError> {
    let mut value = 0u64;
    for (index, byte) in block.iter().take(5).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    Err(CodecError::Snappy("snappy preamble is not a varint".into()))
}

/// One snappy block that decodes to what `blocks` decode to, one after the other, made
/// without decompressing anything: a block is its decoded length followed by literal and
/// copy elements whose copies reach back only into the block's own output, so the
/// element streams still decode the same after a new preamble with the summed length.
pub fn concat_blocks(blocks: &[&[u8]]) -> Result<Vec<u8>, CodecError> {
    let mut total = 0u64;
    let mut elements = Vec::with_capacity(blocks.len());
    for block in blocks {
        let (decoded, header) = preamble(block)?;
        total += decoded;
        elements.push(&block[header..]);
    }
    if total > u64::from(u32::MAX) {
        return Err(CodecError::DecodedTooLarge {
            claimed: total,
            limit: u64::from(u32::MAX),
        });
    }
    let mut out = Vec::with_capacity(5 + elements.iter().map(|e| e.len()).sum::<usize>());
    let mut rest = total;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    for element in elements {
        out.extend_from_slice(element);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_blocks_decode_to_the_joined_inputs() {
        let parts: [&[u8]; 4] = [b"", b"abcabcabcabcabcabc", &[7u8; 300], b"xyzxyz"];
        let blocks: Vec<Vec<u8>> = parts.iter().map(|part| compress(part)).collect();
        let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
        let joined = concat_blocks(&refs).expect("join");
        assert_eq!(
            decompress_capped(&joined, 1 << 20).expect("decodes"),
            parts.concat()
        );
        assert!(concat_blocks(&[&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_blocks_join(parts in proptest::collection::vec(
            proptest::collection::vec(0u8..4, 0..3000), 1..6)
        ) {
            let blocks: Vec<Vec<u8>> = parts.iter().map(|part| compress(part)).collect();
            let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
            let joined = concat_blocks(&refs).expect("join");
            proptest::prop_assert_eq!(decompress_capped(&joined, 1 << 24).expect("decodes"), parts.concat());
        }
    }

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
