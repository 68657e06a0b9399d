//! The real client address behind proxies (SECURITY.md T16): with PROXY protocol on, a
//! listener takes the client address from the v1 or v2 header its trusted proxy sends,
//! closes connections from anyone else or without a valid header, and the admin
//! listener believes `X-Forwarded-For` only from trusted proxies. Observed through the
//! admin audit log's `source` and the per-address failed-authentication limiter.

mod common;

use std::collections::HashSet;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{raw_request, Relay};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn v1(source: &str) -> Vec<u8> {
    let protocol = if source.contains(':') { "TCP6" } else { "TCP4" };
    let destination = if source.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {protocol} {source} {destination} 51234 9202\r\n").into_bytes()
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v2_ipv6(source: Ipv6Addr) -> Vec<u8> {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[0x21, 0x21, 0, 36 + 5]);
    bytes.extend_from_slice(&source.octets());
    bytes.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    bytes.extend_from_slice(&[0xc8, 0x22, 0x23, 0xfa]);
    // One TLV (ALPN "h2"), which promgate skips.
    bytes.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
    bytes
}

fn v2_local() -> Vec<u8> {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[0x20, 0x00, 0, 0]);
    bytes
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: promgate\r\n{headers}\r\n").into_bytes()
}

fn bad_write() -> Vec<u8> {
    b"POST /api/v1/write HTTP/1.1\r\nHost: promgate\r\nAuthorization: Bearer not-a-token\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: 0\r\n\r\n".to_vec()
}

/// True when the relay closes the connection without answering.
async fn closed_without_answer(addr: SocketAddr, prefix: &[u8], request: &[u8]) -> bool {
    raw_request(addr, prefix, request).await.is_none()
}

#[tokio::test]
async fn the_admin_audit_log_records_the_address_the_proxy_names() {
    let trusted_proxy_header = v1("198.51.100.250");
    let relay = Relay::start_with_sections(
        "",
        "auth_failures_per_minute = 1000\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]",
        "",
        &trusted_proxy_header,
    )
    .await;
    let admin = relay.admin_addr;

    // v1 header naming a client, no credentials.
    let answer = raw_request(admin, &v1("203.0.113.7"), &get("/admin/v1/tenants", "")).await;
    assert_eq!(answer.map(|(status, _)| status), Some(401));
    // v2 header (IPv6, with a TLV), a wrong token.
    let client6: Ipv6Addr = "2001:db8::7".parse().expect("ipv6");
    let answer = raw_request(
        admin,
        &v2_ipv6(client6),
        &get("/admin/v1/tenants", "Authorization: Bearer wrong\r\n"),
    )
    .await;
    assert_eq!(answer.map(|(status, _)| status), Some(401));
    // The header names a trusted proxy: X-Forwarded-For is walked from the right and a
    // client-written leftmost entry is not believed.
    let answer = raw_request(
        admin,
        &v1("127.0.0.1"),
        &get(
            "/admin/v1/tenants",
            "X-Forwarded-For: 1.1.1.1, 192.0.2.44\r\n",
        ),
    )
    .await;
    assert_eq!(answer.map(|(status, _)| status), Some(401));
    // The header names an untrusted client: its X-Forwarded-For is ignored.
    let answer = raw_request(
        admin,
        &v1("203.0.113.8"),
        &get("/admin/v1/tenants", "X-Forwarded-For: 192.0.2.99\r\n"),
    )
    .await;
    assert_eq!(answer.map(|(status, _)| status), Some(401));
    // LOCAL: the proxy speaks for itself; the peer address stays.
    let answer = raw_request(admin, &v2_local(), &get("/admin/v1/tenants", "")).await;
    assert_eq!(answer.map(|(status, _)| status), Some(401));
    // No header from a trusted peer, or a garbled one: closed, nothing answered.
    assert!(closed_without_answer(admin, b"", &get("/admin/v1/tenants", "")).await);
    assert!(
        closed_without_answer(
            admin,
            b"PROXY TCP4 203.0.113.9 127.0.0.1 1 2 3\r\n",
            &get("/admin/v1/tenants", "")
        )
        .await
    );

    let (status, body) = raw_request(
        admin,
        &trusted_proxy_header,
        &get(
            "/admin/v1/audit?limit=100",
            &format!("Authorization: Bearer {}\r\n", relay.admin_token),
        ),
    )
    .await
    .expect("audit answer");
    assert_eq!(status, 200, "{body}");
    let audit: Value = serde_json::from_str(&body).expect("audit JSON");
    let sources: HashSet<String> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|entry| entry["result"] == 401)
        .map(|entry| entry["source"].as_str().expect("source").to_string())
        .collect();
    let expected: HashSet<String> = [
        "203.0.113.7",
        "2001:db8::7",
        "192.0.2.44",
        "203.0.113.8",
        "127.0.0.1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(sources, expected);
}

#[tokio::test]
async fn the_data_listener_throttles_the_address_the_proxy_names() {
    let relay = Relay::start_with_server(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nauth_failures_per_minute = 1",
        "",
    )
    .await;
    let data = relay.data_addr;
    let status = |answer: Option<(u16, String)>| answer.map(|(status, _)| status);
    let first = v1("203.0.113.7");
    assert_eq!(
        status(raw_request(data, &first, &bad_write()).await),
        Some(401)
    );
    assert_eq!(
        status(raw_request(data, &first, &bad_write()).await),
        Some(429),
        "the named client used up its failures"
    );
    // Another client behind the same proxy is not locked out with it.
    assert_eq!(
        status(raw_request(data, &v1("203.0.113.8"), &bad_write()).await),
        Some(401)
    );
    assert_eq!(
        status(
            raw_request(
                data,
                &v2_ipv6("2001:db8::8".parse().expect("ipv6")),
                &bad_write()
            )
            .await
        ),
        Some(401)
    );
    // A trusted peer without a header is closed.
    assert!(closed_without_answer(data, b"", &bad_write()).await);
}

#[tokio::test]
async fn untrusted_peers_and_stalled_headers_are_closed() {
    let relay = Relay::start_with_server(
        "proxy_protocol = true\ntrusted_proxies = [\"192.0.2.1/32\"]\nheader_read_timeout = \"1s\"",
        "",
    )
    .await;
    // The loopback peer is not a trusted proxy: a perfectly good header does not help.
    assert!(closed_without_answer(relay.data_addr, &v1("203.0.113.7"), &bad_write()).await);

    let relay = Relay::start_with_server(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/8\"]\nheader_read_timeout = \"1s\"",
        "",
    )
    .await;
    // Half a header and then silence: closed once the header-read timeout passes.
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(relay.data_addr)
        .await
        .expect("connect");
    stream.write_all(b"PROXY TCP4 203.0.").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the relay closed the stalled connection");
    assert!(read.is_err() || answer.is_empty(), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client address the header names is used as the request's address, and the
    // header alone is not an answer: this still needs a valid token.
    let answer = raw_request(relay.data_addr, &v1("203.0.113.7"), &bad_write()).await;
    assert_eq!(answer.map(|(status, _)| status), Some(401));
}
