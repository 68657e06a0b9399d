//! Property tests of the streamed remote-read framing (PROTOCOL.md §4.2): any payloads
//! round-trip through encode → decode however the bytes are split, and arbitrary bytes
//! never panic the decoder nor yield a frame over its limit.

use bytes::BytesMut;
use promgate::read::frame::{encode_frame, FrameDecoder, FrameError};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip_across_any_split(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..12),
        split in 1usize..97,
    ) {
        let mut stream = BytesMut::new();
        for payload in &payloads {
            encode_frame(payload, &mut stream);
        }
        let mut decoder = FrameDecoder::new(1024);
        let mut decoded = Vec::new();
        for piece in stream.chunks(split) {
            decoder.push(piece);
            while let Some(frame) = decoder.next_frame().expect("valid stream") {
                decoded.push(frame.to_vec());
            }
        }
        prop_assert_eq!(decoder.finish(), Ok(()));
        prop_assert_eq!(decoded, payloads);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_exceed_the_limit(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut decoder = FrameDecoder::new(256);
        decoder.push(&bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => prop_assert!(frame.len() <= 256),
                Ok(None) => break,
                Err(err) => {
                    let expected = matches!(
                        err,
                        FrameError::BadLength | FrameError::TooLarge { .. } | FrameError::Checksum
                    );
                    prop_assert!(expected, "unexpected error {:?}", err);
                    break;
                }
            }
        }
    }

    #[test]
    fn any_flipped_bit_is_caught(payload in prop::collection::vec(any::<u8>(), 1..300), bit in any::<prop::sample::Index>()) {
        let mut stream = BytesMut::new();
        encode_frame(&payload, &mut stream);
        let mut corrupted = stream.to_vec();
        let position = bit.index(corrupted.len() * 8);
        corrupted[position / 8] ^= 1 << (position % 8);
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&corrupted);
        // A flipped bit in the data or CRC fails the checksum; in the length it fails the
        // checksum too, or leaves the decoder waiting for bytes that never come.
        let outcome = decoder.next_frame();
        let accepted = matches!(outcome, Ok(Some(_)));
        prop_assert!(!accepted, "a corrupted frame was accepted: {:?}", outcome);
    }
}
