//! The framing of a STREAMED_XOR_CHUNKS remote-read response (PROTOCOL.md §4.2):
//! `uvarint(len(data)) ‖ crc32c(data) as big-endian u32 ‖ data`. The decoder is
//! incremental (bytes go in as they arrive, frames come out when complete) and refuses
//! a length over its limit before buffering the frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest uvarint: 10 bytes hold 64 bits.
const MAX_VARINT_BYTES: usize = 10;
const CRC_BYTES: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length varint is malformed")]
    BadLength,
    #[error("frame of {length} bytes is over the {limit}-byte limit")]
    TooLarge { length: u64, limit: u64 },
    #[error("frame checksum mismatch (corrupted frame)")]
    Checksum,
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Splits a byte stream into verified frame payloads.
pub struct FrameDecoder {
    buffer: BytesMut,
    max_frame_bytes: u64,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: u64) -> FrameDecoder {
        FrameDecoder {
            buffer: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame's payload, CRC checked; `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((length, header)) = read_uvarint(&self.buffer)? else {
            return Ok(None);
        };
        if length > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                length,
                limit: self.max_frame_bytes,
            });
        }
        // `length` ≤ the limit, which the caller chose to fit in memory.
        let length = usize::try_from(length).map_err(|_| FrameError::BadLength)?;
        let total = header + CRC_BYTES + length;
        if self.buffer.len() < total {
            self.buffer.reserve(total - self.buffer.len());
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(total);
        frame.advance(header);
        let expected = frame.get_u32();
        let data = frame.freeze();
        if crc32c::crc32c(&data) != expected {
            return Err(FrameError::Checksum);
        }
        Ok(Some(data))
    }

    /// Call at the end of the stream: leftover bytes mean the last frame was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

/// `(value, bytes used)`, `None` when the buffer ends inside the varint.
fn read_uvarint(buffer: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (index, &byte) in buffer.iter().take(MAX_VARINT_BYTES).enumerate() {
        let bits = u64::from(byte & 0x7f);
        if index == MAX_VARINT_BYTES - 1 && byte > 1 {
            return Err(FrameError::BadLength);
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if buffer.len() >= MAX_VARINT_BYTES {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

/// Appends one frame holding `data` to `out`.
pub fn encode_frame(data: &[u8], out: &mut BytesMut) {
    out.reserve(MAX_VARINT_BYTES + CRC_BYTES + data.len());
    let mut length = data.len() as u64;
    while length >= 0x80 {
        out.put_u8((length as u8) | 0x80);
        length >>= 7;
    }
    out.put_u8(length as u8);
    out.put_u32(crc32c::crc32c(data));
    out.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md §4.2: one frame with `{__name__="up"}` and the XOR chunk of §1.4.
    const VECTOR: &str = "30 49 55 5b 93 0a 2e 0a 0e 0a 08 5f 5f 6e 61 6d 65 5f 5f 12 02 75 70 12 1c 08 e8 07 10 a0 1f 18 01 22 12 00 04 d0 0f 3f f0 00 00 00 00 00 00 e8 07 30 97 ff c0";

    fn vector() -> Vec<u8> {
        VECTOR
            .split(' ')
            .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
            .collect()
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn decodes_and_reencodes_the_protocol_vector() {
        let bytes = vector();
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&bytes);
        let data = decoder.next_frame().expect("valid").expect("complete");
        assert_eq!(data.len(), 0x30);
        assert_eq!(&data[..], &bytes[5..]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.finish(), Ok(()));
        let mut out = BytesMut::new();
        encode_frame(&data, &mut out);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_frame() {
        let bytes = vector();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        for byte in &bytes {
            decoder.push(std::slice::from_ref(byte));
            if let Some(frame) = decoder.next_frame().expect("valid") {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn corrupt_truncated_and_oversized_frames_are_errors() {
        let mut corrupt = vector();
        *corrupt.last_mut().expect("bytes") ^= 1;
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&corrupt);
        assert_eq!(decoder.next_frame(), Err(FrameError::Checksum));

        let bytes = vector();
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&bytes[..20]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.finish(), Err(FrameError::Truncated));

        let mut decoder = FrameDecoder::new(16);
        decoder.push(&bytes);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                length: 48,
                limit: 16
            })
        );
        // A length of 2^64-1 is refused from the varint alone.
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { .. })
        ));
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&[0xff; 11]);
        assert_eq!(decoder.next_frame(), Err(FrameError::BadLength));
    }
}
