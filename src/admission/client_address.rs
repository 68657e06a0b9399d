//! The real client address (SECURITY.md T16): per-address failed-authentication
//! throttling and the audit log must name the client, not the load balancer in front
//! of promgate, or every tenant behind that balancer shares one address.
//!
//! Two sources, both believed only from a listener's `trusted_proxies`:
//! - at the connection, a PROXY protocol header (v1 text or v2 binary), parsed here by
//!   [`parse_proxy_header`] and read by the accept loop before TLS and HTTP;
//! - at the request, `X-Forwarded-For`, resolved by [`client_ip`].
//!
//! Everything here is pure: no sockets, no clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::header::HeaderMap;

use crate::config::TrustedProxies;

/// The header each proxy appends the address it received the request from to.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The address a request is attributed to.
///
/// `peer` is the connection's peer (the `ConnectInfo` address, already the PROXY
/// header's source when the listener speaks PROXY protocol). When it is not a trusted
/// proxy it is the client, whatever the headers say. When it is, `X-Forwarded-For`
/// (every instance of the header, in order, each a comma-separated list) is walked
/// from the right, skipping trusted proxies; the first address that is not one is the
/// client. An entry that is not an address stops the walk and the last trusted hop is
/// the client; an all-trusted chain gives its leftmost hop. Entries left of the first
/// untrusted one were written by the client and are never believed.
///
/// IPv4-mapped IPv6 addresses come back as IPv4.
pub fn client_ip(trusted_proxies: &TrustedProxies, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.contains(peer) {
        return peer;
    }
    let mut last_trusted_hop = peer;
    // Right to left: the last header instance first, and in each its last entry first.
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(list) = value.to_str() else {
            return last_trusted_hop;
        };
        for entry in list.rsplit(',') {
            let Some(hop) = parse_forwarded_hop(entry.trim()) else {
                return last_trusted_hop;
            };
            if !trusted_proxies.contains(hop) {
                return hop;
            }
            last_trusted_hop = hop;
        }
    }
    last_trusted_hop
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`192.0.2.1:443`, `[2001:db8::1]:443`) or in brackets (`[2001:db8::1]`).
fn parse_forwarded_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(address) = entry.parse::<SocketAddr>() {
        return Some(address.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|address| IpAddr::V6(address).to_canonical())
}

// ---------------------------------------------------------------------------
// PROXY protocol (haproxy.org `proxy-protocol.txt`, versions 1 and 2).

/// A v1 header is one line of at most this many bytes, CRLF included.
pub const MAX_V1_HEADER_BYTES: usize = 107;
/// The v2 signature, version and command, family and length.
const V2_FIXED_BYTES: usize = 16;
/// A v2 header (fixed part, addresses and TLVs) longer than this is refused: 536 bytes
/// is the size the specification tells receivers to be ready for (the smallest TCP MSS).
pub const MAX_V2_HEADER_BYTES: usize = 536;
/// The most bytes any acceptable header takes; a reader never needs more.
pub const MAX_PROXY_HEADER_BYTES: usize = MAX_V2_HEADER_BYTES;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a PROXY header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The proxy relays a client connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy speaks for itself (v2 LOCAL, health checks) or cannot name the client
    /// (v1 UNKNOWN, v2 UNSPEC or UNIX): keep the peer address.
    Local,
}

/// Why no header could be taken from the bytes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The bytes so far are the start of a valid header: read more.
    #[error("the PROXY header is incomplete")]
    Incomplete,
    /// Not a PROXY header, or not one promgate accepts: close the connection.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
}

/// Parses a PROXY protocol header (v1 or v2) at the start of `bytes`.
///
/// On success, returns the header and how many bytes it took; the bytes after it belong
/// to TLS or HTTP. [`ProxyHeaderError::Incomplete`] means every byte so far fits a
/// header and more are needed; it is never returned once `bytes` holds
/// [`MAX_PROXY_HEADER_BYTES`], so a reader bounded by that size always ends.
pub fn parse_proxy_header(bytes: &[u8]) -> Result<(ProxyHeader, usize), ProxyHeaderError> {
    if bytes.starts_with(V2_SIGNATURE) {
        parse_v2(bytes)
    } else if bytes.starts_with(V1_PREFIX) {
        parse_v1(bytes)
    } else if V2_SIGNATURE.starts_with(bytes) || V1_PREFIX.starts_with(bytes) {
        Err(ProxyHeaderError::Incomplete)
    } else {
        Err(ProxyHeaderError::Invalid(
            "the connection does not start with a PROXY header",
        ))
    }
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 51234 443\r\n`, `PROXY TCP6 …` or
/// `PROXY UNKNOWN …\r\n`.
fn parse_v1(bytes: &[u8]) -> Result<(ProxyHeader, usize), ProxyHeaderError> {
    let window = &bytes[..bytes.len().min(MAX_V1_HEADER_BYTES)];
    let Some(line_end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if window.len() < MAX_V1_HEADER_BYTES && !window.contains(&b'\n') {
            Err(ProxyHeaderError::Incomplete)
        } else {
            Err(ProxyHeaderError::Invalid(
                "the v1 header line is too long or has a bare LF",
            ))
        };
    };
    let consumed = line_end + 2;
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..line_end])
        .map_err(|_| ProxyHeaderError::Invalid("the v1 header is not ASCII"))?;
    if !line.is_ascii() {
        return Err(ProxyHeaderError::Invalid("the v1 header is not ASCII"));
    }
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or_default();
    if protocol == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok((ProxyHeader::Local, consumed));
    }
    let (source, destination, source_port, destination_port) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(source), Some(destination), Some(source_port), Some(destination_port), None) => {
            (source, destination, source_port, destination_port)
        }
        _ => {
            return Err(ProxyHeaderError::Invalid(
                "a v1 header has exactly five fields",
            ))
        }
    };
    let (source, destination): (IpAddr, IpAddr) = match protocol {
        "TCP4" => (
            IpAddr::V4(parse_v1_field::<Ipv4Addr>(source)?),
            IpAddr::V4(parse_v1_field::<Ipv4Addr>(destination)?),
        ),
        "TCP6" => (
            IpAddr::V6(parse_v1_field::<Ipv6Addr>(source)?),
            IpAddr::V6(parse_v1_field::<Ipv6Addr>(destination)?),
        ),
        _ => {
            return Err(ProxyHeaderError::Invalid(
                "the v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let source = SocketAddr::new(source, parse_v1_port(source_port)?);
    let destination = SocketAddr::new(destination, parse_v1_port(destination_port)?);
    Ok((
        ProxyHeader::Proxied {
            source,
            destination,
        },
        consumed,
    ))
}

fn parse_v1_field<T: std::str::FromStr>(text: &str) -> Result<T, ProxyHeaderError> {
    text.parse()
        .map_err(|_| ProxyHeaderError::Invalid("a v1 address does not match its protocol"))
}

/// Decimal, no sign, no leading zero (as the specification writes them).
fn parse_v1_port(text: &str) -> Result<u16, ProxyHeaderError> {
    let invalid = ProxyHeaderError::Invalid("a v1 port is not a number from 0 to 65535");
    let well_formed = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !well_formed {
        return Err(invalid);
    }
    text.parse().map_err(|_| invalid)
}

/// The binary header: signature, version/command, family/protocol, length, addresses,
/// then TLVs (skipped: promgate needs only the source address).
fn parse_v2(bytes: &[u8]) -> Result<(ProxyHeader, usize), ProxyHeaderError> {
    let Some(fixed) = bytes.get(..V2_FIXED_BYTES) else {
        return Err(ProxyHeaderError::Incomplete);
    };
    let version = fixed[12] >> 4;
    let command = fixed[12] & 0x0f;
    let family = fixed[13] >> 4;
    let protocol = fixed[13] & 0x0f;
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if version != 2 {
        return Err(ProxyHeaderError::Invalid(
            "the v2 header's version is not 2",
        ));
    }
    let total = V2_FIXED_BYTES + length;
    if total > MAX_V2_HEADER_BYTES {
        return Err(ProxyHeaderError::Invalid(
            "the v2 header is longer than 536 bytes",
        ));
    }
    let Some(block) = bytes.get(V2_FIXED_BYTES..total) else {
        return Err(ProxyHeaderError::Incomplete);
    };
    const LOCAL: u8 = 0x0;
    const PROXY: u8 = 0x1;
    const UNSPEC: u8 = 0x0;
    const INET: u8 = 0x1;
    const INET6: u8 = 0x2;
    const UNIX: u8 = 0x3;
    const STREAM: u8 = 0x1;
    match command {
        LOCAL => return Ok((ProxyHeader::Local, total)),
        PROXY => {}
        _ => {
            return Err(ProxyHeaderError::Invalid(
                "the v2 command is neither LOCAL nor PROXY",
            ))
        }
    }
    match (family, protocol) {
        (UNSPEC, _) | (UNIX, _) => Ok((ProxyHeader::Local, total)),
        (INET, STREAM) => {
            let Some(addresses) = block.get(..12) else {
                return Err(ProxyHeaderError::Invalid(
                    "the v2 IPv4 address block is short",
                ));
            };
            let source = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let destination = Ipv4Addr::new(addresses[4], addresses[5], addresses[6], addresses[7]);
            let source_port = u16::from_be_bytes([addresses[8], addresses[9]]);
            let destination_port = u16::from_be_bytes([addresses[10], addresses[11]]);
            Ok((
                ProxyHeader::Proxied {
                    source: SocketAddr::new(IpAddr::V4(source), source_port),
                    destination: SocketAddr::new(IpAddr::V4(destination), destination_port),
                },
                total,
            ))
        }
        (INET6, STREAM) => {
            let Some(addresses) = block.get(..36) else {
                return Err(ProxyHeaderError::Invalid(
                    "the v2 IPv6 address block is short",
                ));
            };
            let mut source = [0u8; 16];
            source.copy_from_slice(&addresses[..16]);
            let mut destination = [0u8; 16];
            destination.copy_from_slice(&addresses[16..32]);
            let source_port = u16::from_be_bytes([addresses[32], addresses[33]]);
            let destination_port = u16::from_be_bytes([addresses[34], addresses[35]]);
            Ok((
                ProxyHeader::Proxied {
                    source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(source)), source_port),
                    destination: SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::from(destination)),
                        destination_port,
                    ),
                },
                total,
            ))
        }
        _ => Err(ProxyHeaderError::Invalid(
            "the v2 header is not TCP over IPv4 or IPv6",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpNetwork;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).expect("networks")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                X_FORWARDED_FOR,
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn resolve(proxies: &[&str], peer: &str, values: &[&str]) -> IpAddr {
        client_ip(&trusted(proxies), ip(peer), &forwarded(values))
    }

    const LB: &[&str] = &["10.0.0.0/8", "2001:db8:ffff::/48"];

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        assert_eq!(
            resolve(LB, "203.0.113.7", &["198.51.100.1"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            resolve(&[], "203.0.113.7", &["10.0.0.1"]),
            ip("203.0.113.7")
        );
        assert_eq!(resolve(&[], "::ffff:203.0.113.7", &[]), ip("203.0.113.7"));
    }

    #[test]
    fn a_trusted_peer_names_the_client_to_its_left() {
        assert_eq!(
            resolve(LB, "10.0.0.1", &["198.51.100.1"]),
            ip("198.51.100.1")
        );
        assert_eq!(resolve(LB, "10.0.0.1", &[]), ip("10.0.0.1"), "no header");
        assert_eq!(
            resolve(LB, "10.0.0.1", &[""]),
            ip("10.0.0.1"),
            "empty header"
        );
        // Two trusted hops, then the client.
        assert_eq!(
            resolve(LB, "10.0.0.1", &["198.51.100.1, 10.0.0.2"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn spoofed_leftmost_entries_never_win() {
        // The client sent `X-Forwarded-For: 1.1.1.1`; the load balancer appended it.
        assert_eq!(
            resolve(LB, "10.0.0.1", &["1.1.1.1, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        // A client claiming to be a trusted proxy is still only believed up to itself.
        assert_eq!(
            resolve(LB, "10.0.0.1", &["1.1.1.1, 10.9.9.9, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        // The client's own header instance comes first, the proxy's last.
        assert_eq!(
            resolve(LB, "10.0.0.1", &["1.1.1.1", "198.51.100.1"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn an_all_trusted_chain_gives_its_leftmost_hop() {
        assert_eq!(
            resolve(LB, "10.0.0.1", &["10.0.0.3, 10.0.0.2"]),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        assert_eq!(resolve(LB, "10.0.0.1", &["unknown"]), ip("10.0.0.1"));
        assert_eq!(
            resolve(LB, "10.0.0.1", &["1.1.1.1, garbage, 10.0.0.2"]),
            ip("10.0.0.2")
        );
        assert_eq!(resolve(LB, "10.0.0.1", &["1.1.1.1,,"]), ip("10.0.0.1"));
        assert_eq!(
            resolve(LB, "10.0.0.1", &["1.1.1.1", "_hidden"]),
            ip("10.0.0.1"),
            "an obfuscated identifier"
        );
        let mut headers = forwarded(&["1.1.1.1"]);
        headers.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe").expect("opaque value"),
        );
        assert_eq!(
            client_ip(&trusted(LB), ip("10.0.0.1"), &headers),
            ip("10.0.0.1"),
            "a value that is not text"
        );
    }

    #[test]
    fn ipv6_ports_brackets_and_mapped_addresses() {
        assert_eq!(
            resolve(LB, "2001:db8:ffff::1", &["2001:db8:1::7"]),
            ip("2001:db8:1::7")
        );
        assert_eq!(
            resolve(LB, "10.0.0.1", &["[2001:db8:1::7]:443"]),
            ip("2001:db8:1::7")
        );
        assert_eq!(
            resolve(LB, "10.0.0.1", &["[2001:db8:1::7]"]),
            ip("2001:db8:1::7")
        );
        assert_eq!(
            resolve(LB, "10.0.0.1", &["198.51.100.1:5000"]),
            ip("198.51.100.1")
        );
        // A mapped peer is IPv4 and so trusted; a mapped hop is IPv4 too.
        assert_eq!(
            resolve(LB, "::ffff:10.0.0.1", &["::ffff:198.51.100.1"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            resolve(LB, "::ffff:10.0.0.1", &["198.51.100.1, ::ffff:10.0.0.2"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn many_header_instances_are_one_list() {
        let values: Vec<String> = (2..=40).map(|n| format!("10.0.0.{n}")).collect();
        let mut all: Vec<&str> = vec!["198.51.100.1"];
        all.extend(values.iter().map(String::as_str));
        assert_eq!(resolve(LB, "10.0.0.1", &all), ip("198.51.100.1"));
    }

    fn v2(command: u8, family_protocol: u8, block: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family_protocol);
        bytes.extend_from_slice(&u16::try_from(block.len()).expect("short").to_be_bytes());
        bytes.extend_from_slice(block);
        bytes
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: source.parse().expect("source"),
            destination: destination.parse().expect("destination"),
        }
    }

    #[test]
    fn v1_headers() {
        let tcp4 = b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse_proxy_header(tcp4),
            Ok((proxied("203.0.113.7:51234", "198.51.100.1:443"), 47))
        );
        let tcp6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n";
        assert_eq!(
            parse_proxy_header(tcp6),
            Ok((
                proxied("[2001:db8::7]:65535", "[2001:db8::1]:0"),
                tcp6.len()
            ))
        );
        assert_eq!(
            parse_proxy_header(b"PROXY UNKNOWN\r\n"),
            Ok((ProxyHeader::Local, 15))
        );
        assert_eq!(
            parse_proxy_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n\x16\x03"),
            Ok((ProxyHeader::Local, 35))
        );
        // The longest headers the specification allows: 107 bytes with UNKNOWN.
        let widest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let longest = format!("PROXY UNKNOWN {widest} {widest} 65535 65535\r\n");
        assert_eq!(longest.len(), MAX_V1_HEADER_BYTES);
        assert_eq!(
            parse_proxy_header(longest.as_bytes()),
            Ok((ProxyHeader::Local, MAX_V1_HEADER_BYTES))
        );
        let longest_tcp6 = format!("PROXY TCP6 {widest} {widest} 65535 65535\r\n");
        assert!(matches!(
            parse_proxy_header(longest_tcp6.as_bytes()),
            Ok((ProxyHeader::Proxied { .. }, 104))
        ));
        // One byte more and the line is refused.
        let too_long = format!("PROXY UNKNOWN {widest} {widest} 65535 655350\r\n");
        assert!(matches!(
            parse_proxy_header(too_long.as_bytes()),
            Err(ProxyHeaderError::Invalid(_))
        ));
    }

    #[test]
    fn bad_v1_headers_are_invalid() {
        for bytes in [
            &b"PROXY TCP4 203.0.113.7 198.51.100.1 51234\r\n"[..],
            b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443 9\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 51234 443\r\n",
            b"PROXY TCP6 203.0.113.7 2001:db8::1 51234 443\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 +1 443\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 0443 443\r\n",
            b"PROXY TCP4  203.0.113.7 198.51.100.1 1 443\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 1 443 \r\n",
            b"PROXY UDP4 203.0.113.7 198.51.100.1 1 443\r\n",
            b"PROXY tcp4 203.0.113.7 198.51.100.1 1 443\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 1 443\n",
            b"PROXY TCP4 203.0.113.\xff 198.51.100.1 1 443\r\n",
            b"PROXY \r\n",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"proxy TCP4",
        ] {
            assert!(
                matches!(parse_proxy_header(bytes), Err(ProxyHeaderError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            parse_proxy_header(&endless),
            Err(ProxyHeaderError::Invalid(_))
        ));
    }

    #[test]
    fn truncated_headers_are_incomplete() {
        // Every prefix, up to the line's CR without its LF.
        let full = b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n";
        for end in 0..full.len() {
            assert_eq!(
                parse_proxy_header(&full[..end]),
                Err(ProxyHeaderError::Incomplete),
                "{end}"
            );
        }
        let full = v2(
            1,
            0x11,
            &[203, 0, 113, 7, 198, 51, 100, 1, 0xc8, 0x22, 1, 187],
        );
        for end in 0..full.len() {
            assert_eq!(
                parse_proxy_header(&full[..end]),
                Err(ProxyHeaderError::Incomplete),
                "{end}"
            );
        }
    }

    #[test]
    fn v2_headers() {
        let mut ipv4 = vec![203, 0, 113, 7, 198, 51, 100, 1, 0xc8, 0x22, 1, 187];
        let header = v2(1, 0x11, &ipv4);
        let mut with_data = header.clone();
        with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse_proxy_header(&with_data),
            Ok((
                proxied("203.0.113.7:51234", "198.51.100.1:443"),
                header.len()
            ))
        );
        // TLVs after the addresses are skipped (here an ALPN and an AWS VPC endpoint id).
        ipv4.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        ipv4.extend_from_slice(&[0xea, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e']);
        let with_tlvs = v2(1, 0x11, &ipv4);
        assert_eq!(
            parse_proxy_header(&with_tlvs),
            Ok((
                proxied("203.0.113.7:51234", "198.51.100.1:443"),
                with_tlvs.len()
            ))
        );
        let mut ipv6 = Vec::new();
        ipv6.extend_from_slice(&ip6("2001:db8::7"));
        ipv6.extend_from_slice(&ip6("2001:db8::1"));
        ipv6.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        let header = v2(1, 0x21, &ipv6);
        assert_eq!(
            parse_proxy_header(&header),
            Ok((
                proxied("[2001:db8::7]:12345", "[2001:db8::1]:443"),
                header.len()
            ))
        );
        // LOCAL: the proxy's own connection (health checks); addresses are ignored.
        let local = v2(0, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(
            parse_proxy_header(&local),
            Ok((ProxyHeader::Local, local.len()))
        );
        assert_eq!(
            parse_proxy_header(&v2(0, 0x00, &[])),
            Ok((ProxyHeader::Local, 16))
        );
        // PROXY with UNSPEC or UNIX addresses: nothing to use, keep the peer.
        assert_eq!(
            parse_proxy_header(&v2(1, 0x00, &[])),
            Ok((ProxyHeader::Local, 16))
        );
        let unix = v2(1, 0x31, &[0u8; 216]);
        assert_eq!(
            parse_proxy_header(&unix),
            Ok((ProxyHeader::Local, unix.len()))
        );
    }

    fn ip6(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>().expect("ipv6").octets()
    }

    #[test]
    fn bad_v2_headers_are_invalid() {
        let ipv4 = [203, 0, 113, 7, 198, 51, 100, 1, 0xc8, 0x22, 1, 187];
        let mut version_one = v2(1, 0x11, &ipv4);
        version_one[12] = 0x11;
        let cases = [
            ("version 1 in a v2 header", version_one),
            ("command 2", v2(2, 0x11, &ipv4)),
            ("UDP", v2(1, 0x12, &ipv4)),
            ("family 4", v2(1, 0x41, &ipv4)),
            ("short IPv4 block", v2(1, 0x11, &ipv4[..11])),
            ("short IPv6 block", v2(1, 0x21, &[0u8; 35])),
            ("longer than 536 bytes", v2(1, 0x11, &[0u8; 521])),
        ];
        for (name, bytes) in cases {
            assert!(
                matches!(
                    parse_proxy_header(&bytes),
                    Err(ProxyHeaderError::Invalid(_))
                ),
                "{name}"
            );
        }
        // The length field alone is enough to refuse a huge header: no waiting for it.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            parse_proxy_header(&huge),
            Err(ProxyHeaderError::Invalid(_))
        ));
        assert_eq!(
            parse_proxy_header(&v2(1, 0x11, &[0u8; 520])).map(|(_, used)| used),
            Ok(MAX_V2_HEADER_BYTES)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_never_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            match parse_proxy_header(&bytes) {
                Ok((_, used)) => prop_assert!(used <= bytes.len() && used <= MAX_PROXY_HEADER_BYTES),
                Err(ProxyHeaderError::Incomplete) => prop_assert!(bytes.len() < MAX_PROXY_HEADER_BYTES),
                Err(ProxyHeaderError::Invalid(_)) => {}
            }
        }

        #[test]
        fn random_bytes_after_a_signature_never_panic(
            v2_header in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..700),
        ) {
            let prefix: &[u8] = if v2_header { V2_SIGNATURE } else { V1_PREFIX };
            let bytes = [prefix, &tail].concat();
            match parse_proxy_header(&bytes) {
                Ok((_, used)) => prop_assert!(used <= bytes.len() && used <= MAX_PROXY_HEADER_BYTES),
                Err(ProxyHeaderError::Incomplete) => prop_assert!(bytes.len() < MAX_PROXY_HEADER_BYTES),
                Err(ProxyHeaderError::Invalid(_)) => {}
            }
        }

        #[test]
        fn every_v1_tcp4_header_round_trips(
            source in any::<Ipv4Addr>(),
            destination in any::<Ipv4Addr>(),
            source_port in any::<u16>(),
            destination_port in any::<u16>(),
        ) {
            let line = format!("PROXY TCP4 {source} {destination} {source_port} {destination_port}\r\n");
            let expected = ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V4(source), source_port),
                destination: SocketAddr::new(IpAddr::V4(destination), destination_port),
            };
            prop_assert_eq!(parse_proxy_header(line.as_bytes()), Ok((expected, line.len())));
        }

        /// Whatever the client prepends, with any number of trusted hops after the
        /// client's real address, the answer is that address.
        #[test]
        fn client_written_entries_never_win(
            spoofed in proptest::collection::vec(any::<IpAddr>(), 0..6),
            client_octets in any::<[u8; 4]>(),
            trusted_hops in proptest::collection::vec(any::<u8>(), 0..6),
            split_headers in any::<bool>(),
        ) {
            // A public client address (never inside 10.0.0.0/8).
            let client = IpAddr::V4(Ipv4Addr::new(
                if client_octets[0] == 10 { 11 } else { client_octets[0] },
                client_octets[1], client_octets[2], client_octets[3],
            ));
            let mut entries: Vec<String> = spoofed.iter().map(IpAddr::to_string).collect();
            entries.push(client.to_string());
            entries.extend(trusted_hops.iter().map(|n| format!("10.0.1.{n}")));
            let values: Vec<String> = if split_headers {
                entries
            } else {
                vec![entries.join(", ")]
            };
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            prop_assert_eq!(resolve(LB, "10.0.0.1", &refs), client);
        }

        /// The answer is always the peer or an address from the header, and an
        /// untrusted answer is only ever the rightmost untrusted entry.
        #[test]
        fn garbage_headers_never_panic(
            peer in any::<IpAddr>(),
            values in proptest::collection::vec("[0-9a-f:., \\[\\]x]{0,40}", 0..4),
        ) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let proxies = TrustedProxies::new(vec![
                IpNetwork::new(ip("0.0.0.0"), 1).expect("network"),
                IpNetwork::new(ip("::"), 1).expect("network"),
            ]);
            let answer = client_ip(&proxies, peer, &forwarded(&refs));
            let peer = peer.to_canonical();
            let mentioned = values
                .iter()
                .flat_map(|value| value.split(','))
                .filter_map(|entry| parse_forwarded_hop(entry.trim()))
                .any(|hop| hop == answer);
            prop_assert!(answer == peer || mentioned);
        }
    }
}
