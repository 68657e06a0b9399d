//! End to end over mutual TLS with real Prometheus 2.42 processes: a sender with
//! `tls_config` (client certificate, no token) writes through promgate's HTTPS listener;
//! its series land in the backend labelled with the tenant its certificate's URI SAN is
//! registered to; a reader Prometheus with a client certificate reads them back.

mod common;

use std::time::{Duration, Instant};

use common::pki::{ca, leaf, server_leaf, uri, LeafSpec};
use common::process::{free_port, wait_ready};
use common::stack::{instant_query, series, start_prometheus, value_of, Stack};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_writes_and_reads_with_a_client_certificate() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("promgate e2e CA");
    let server = server_leaf(&ca);
    let client = leaf(
        &ca,
        LeafSpec::client(vec![uri("spiffe://example.org/prometheus-alpha")], 7),
    );
    let write = |name: &str, text: &str| {
        let path = pki_dir.path().join(name);
        std::fs::write(&path, text).expect("pki file");
        path.display().to_string()
    };
    let (ca_file, server_cert, server_key) = (
        write("ca.pem", &ca.pem),
        write("server.pem", &server.pem),
        write("server.key", &server.key_pem),
    );
    let (client_cert, client_key) = (
        write("client.pem", &client.pem),
        write("client.key", &client.key_pem),
    );
    let stack = Stack::start_with(
        false,
        &format!(
            "[server.tls]\ncert_file = \"{server_cert}\"\nkey_file = \"{server_key}\"\nclient_ca_file = \"{ca_file}\"\nclient_auth = \"optional\"\n"
        ),
    )
    .await;
    let created = stack
        .http
        .post(format!("{}/admin/v1/tenants", stack.promgate.admin_url))
        .bearer_auth(&stack.promgate.admin_token)
        .json(&json!({"id": "alpha", "identities": ["spiffe://example.org/prometheus-alpha"]}))
        .send()
        .await
        .expect("create tenant");
    assert_eq!(created.status(), 201);

    let tls_config = format!("    tls_config:\n      cert_file: {client_cert}\n      key_file: {client_key}\n      ca_file: {ca_file}\n");
    let port = free_port();
    let sender_config = format!(
        "global:\n  scrape_interval: 1s\n  external_labels:\n    sender: alpha\n\
scrape_configs:\n  - job_name: alpha-self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
remote_write:\n  - url: {}/api/v1/write\n{tls_config}    queue_config:\n      batch_send_deadline: 1s\n",
        stack.promgate.data_url
    );
    let mut sender = start_prometheus(stack.root(), "sender-mtls", port, &sender_config, false);
    wait_ready(
        &mut sender,
        &format!("http://127.0.0.1:{port}/-/ready"),
        Duration::from_secs(30),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let held = series(&stack.http, &stack.prometheus_url, "{__name__=\"up\"}").await;
        if held
            .iter()
            .any(|labels| value_of(labels, "sender") == Some("alpha"))
        {
            for labels in &held {
                assert_eq!(value_of(labels, "tenant_id"), Some("alpha"), "{labels:?}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no series arrived over mTLS:\npromgate:\n{}\nsender:\n{}",
            stack.promgate.process.log_tail(),
            sender.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Read back through a Prometheus that presents the same certificate.
    let reader_port = free_port();
    let reader_config = format!(
        "global:\n  scrape_interval: 1m\nremote_read:\n  - url: {}/api/v1/read\n    read_recent: true\n{tls_config}",
        stack.promgate.data_url
    );
    let mut reader = start_prometheus(
        stack.root(),
        "reader-mtls",
        reader_port,
        &reader_config,
        false,
    );
    let reader_url = format!("http://127.0.0.1:{reader_port}");
    wait_ready(
        &mut reader,
        &format!("{reader_url}/-/ready"),
        Duration::from_secs(30),
    )
    .await;
    let metrics = instant_query(&stack.http, &reader_url, "up").await;
    assert!(
        !metrics.is_empty(),
        "read back over mTLS\npromgate:\n{}",
        stack.promgate.process.log_tail()
    );
    for metric in &metrics {
        assert_eq!(
            metric.get("sender").and_then(Value::as_str),
            Some("alpha"),
            "{metric:?}"
        );
        assert!(
            metric.get("tenant_id").is_none(),
            "tenant label stripped: {metric:?}"
        );
    }
}
