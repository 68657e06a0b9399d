//! Snappy block format with the decoded length checked against a limit before any
//! buffer is allocated (the "snappy bomb" of PROTOCOL.md §5 #4: a few bytes whose
//! preamble claims gigabytes).

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

/// Compresses `raw` in the snappy block format.
pub fn compress(raw: &[u8]) -> Vec<u8> {
    // Compressing into a Vec only fails when the input exceeds snappy's 4 GiB bound,
    // far above any decoded-size limit promgate accepts.
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .unwrap_or_default()
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
