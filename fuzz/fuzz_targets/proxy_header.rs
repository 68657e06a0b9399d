//! Bytes a peer sends first on a listener with `proxy_protocol = true`: the PROXY v1/v2
//! header parser never panics, never claims more bytes than it was given or than a header
//! may hold, and a header it accepts parses the same from a longer buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::admission::client_address::{parse_proxy_header, MAX_V2_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, used)) = parse_proxy_header(data) {
        assert!(used <= data.len() && used <= MAX_V2_HEADER_BYTES);
        let mut longer = data[..used].to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse_proxy_header(&longer), Ok((header, used)));
    }
});
