//! Backend bytes into the streamed remote-read filter: frame reader (length, CRC, size
//! limit), ChunkedReadResponse decoding and tenant filtering. Must never panic, never
//! emit a frame over the limit, and only ever emit alpha's series.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::read::filter::{ReadScope, StreamFilter};
use promgate::read::frame::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data.split_first() {
        Some((split, bytes)) => (usize::from(*split).max(1), bytes),
        None => return,
    };
    let scope = ReadScope {
        label: "tenant_id".into(),
        value: "alpha".into(),
        strip: false,
    };
    let mut filter = StreamFilter::new(scope, 4096, u64::MAX);
    let mut out = bytes::BytesMut::new();
    for piece in bytes.chunks(split) {
        if filter.push(piece, &mut out).is_err() {
            return;
        }
    }
    let _ = filter.finish();
    // Whatever came out is a valid stream of alpha's series.
    let mut decoder = FrameDecoder::new(u64::MAX);
    decoder.push(&out);
    while let Some(frame) = decoder.next_frame().expect("promgate's own frames verify") {
        let response = <promgate::proto::ChunkedReadResponse as prost::Message>::decode(frame).expect("decodes");
        assert!(!response.chunked_series.is_empty());
        for series in response.chunked_series {
            let tenants: Vec<_> = series.labels.iter().filter(|l| l.name == "tenant_id").collect();
            assert!(tenants.len() == 1 && tenants[0].value == "alpha");
        }
    }
});
