//! TLS towards a backend, against a real Prometheus 2.42 receiver behind its own
//! `--web.config.file` that requires a client certificate from its client CA, with a
//! server certificate issued for a name other than 127.0.0.1 (so `server_name` must say
//! it). A backend with the client certificate, the right CA and the name gets the write
//! (queried back over TLS with the client certificate) and serves remote read and the
//! query API through the same client; without the client certificate, with the wrong CA or without the name,
//! the handshake fails and promgate answers 503 + Retry-After (the sender keeps the data
//! and retries). `insecure_skip_verify` is refused by `check-config`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::pki::{self, dns, leaf, LeafSpec};
use common::process::{free_port, Process};
use common::{read_body, simple_body};
use promgate::proto::ReadResponse;
use prost::Message;
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{json, Value};

/// The name on the receiver's certificate; it does not name 127.0.0.1.
const SERVER_NAME: &str = "tsdb.internal";

struct Files {
    backend_ca: String,
    other_ca: String,
    client_cert: String,
    client_key: String,
}

/// Writes the PKI and Prometheus' web config into `root`.
fn pki(root: &Path) -> Files {
    let backend_ca = pki::ca("backend CA");
    let clients_ca = pki::ca("clients CA");
    let other_ca = pki::ca("someone else's CA");
    let server = leaf(
        &backend_ca,
        LeafSpec {
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            common_name: "tsdb",
            ..LeafSpec::client(vec![dns(SERVER_NAME)], 2)
        },
    );
    let client = leaf(&clients_ca, LeafSpec::client(vec![dns("promgate")], 3));
    let write = |name: &str, text: &str| {
        let path = root.join(name);
        std::fs::write(&path, text).expect("pki file");
        path.display().to_string()
    };
    let server_cert = write("server.pem", &server.pem);
    let server_key = write("server.key", &server.key_pem);
    let clients_ca_file = write("clients-ca.pem", &clients_ca.pem);
    write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {server_cert}\n  key_file: {server_key}\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {clients_ca_file}\n"
        ),
    );
    Files {
        backend_ca: write("backend-ca.pem", &backend_ca.pem),
        other_ca: write("other-ca.pem", &other_ca.pem),
        client_cert: write("client.pem", &client.pem),
        client_key: write("client.key", &client.key_pem),
    }
}

/// An HTTPS client as an operator would query the receiver: its CA, the client
/// certificate, and the certificate's name resolved to the loopback port.
fn query_client(files: &Files, port: u16) -> reqwest::Client {
    let identity = format!(
        "{}{}",
        std::fs::read_to_string(&files.client_cert).expect("cert"),
        std::fs::read_to_string(&files.client_key).expect("key")
    );
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&files.backend_ca).expect("ca"))
                .expect("ca"),
        )
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("identity"))
        .resolve(SERVER_NAME, ([127, 0, 0, 1], port).into())
        .build()
        .expect("client")
}

async fn wait_receiver_ready(process: &mut Process, http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        process.assert_running();
        if let Ok(response) = http.get(format!("{base}/-/ready")).send().await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus over TLS not ready: {}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn backend(name: &str, port: u16, lines: &str) -> String {
    format!(
        "[[backends]]\nname = \"{name}\"\nwrite_url = \"https://127.0.0.1:{port}/api/v1/write\"\n\
         read_url = \"https://127.0.0.1:{port}/api/v1/read\"\nquery_url = \"https://127.0.0.1:{port}\"\n\
         timeout = \"5s\"\n{lines}"
    )
}

async fn write(promgate: &PromgateBinary, token: &str) -> reqwest::Response {
    promgate
        .http
        .post(promgate.write_url())
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(simple_body(&[]))
        .send()
        .await
        .expect("write")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_get_client_certificates_their_ca_and_server_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let files = pki(root.path());
    let port = free_port();
    let mut receiver = common::stack::start_prometheus_with(
        root.path(),
        "receiver",
        port,
        "global:\n  scrape_interval: 1m\n",
        true,
        &[&format!(
            "--web.config.file={}",
            root.path().join("web.yml").display()
        )],
    );
    let http = query_client(&files, port);
    let base = format!("https://{SERVER_NAME}:{port}");
    wait_receiver_ready(&mut receiver, &http, &base).await;

    let client_cert = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.client_cert, files.client_key
    );
    let backends = [
        backend(
            "good",
            port,
            &format!(
                "ca_file = \"{}\"\n{client_cert}server_name = \"{SERVER_NAME}\"\n",
                files.backend_ca
            ),
        ),
        backend(
            "nocert",
            port,
            &format!(
                "ca_file = \"{}\"\nserver_name = \"{SERVER_NAME}\"\n",
                files.backend_ca
            ),
        ),
        backend(
            "wrongca",
            port,
            &format!(
                "ca_file = \"{}\"\n{client_cert}server_name = \"{SERVER_NAME}\"\n",
                files.other_ca
            ),
        ),
        backend(
            "noname",
            port,
            &format!("ca_file = \"{}\"\n{client_cert}", files.backend_ca),
        ),
    ]
    .concat();
    let promgate = PromgateBinary::start(root.path(), "", &backends).await;
    let mut tokens = Vec::new();
    for name in ["good", "nocert", "wrongca", "noname"] {
        let token = promgate.add_tenant(name, json!({})).await;
        let response = promgate
            .http
            .patch(format!("{}/admin/v1/tenants/{name}", promgate.admin_url))
            .bearer_auth(&promgate.admin_token)
            .json(&json!({ "backends": [name] }))
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status(), 200);
        tokens.push(token);
    }

    // With the client certificate, the CA and the name: the write lands.
    let response = write(&promgate, &tokens[0]).await;
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body: Value = http
            .get(format!("{base}/api/v1/series"))
            .query(&[("match[]", "up{tenant_id=\"good\"}"), ("start", "0")])
            .send()
            .await
            .expect("query over TLS")
            .json()
            .await
            .expect("json");
        if body["data"]
            .as_array()
            .is_some_and(|series| !series.is_empty())
        {
            assert_eq!(body["data"][0]["job"], "test");
            break;
        }
        assert!(Instant::now() < deadline, "the write never arrived: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Remote read goes through the same TLS client and finds it.
    let response = promgate
        .http
        .post(format!("{}/api/v1/read", promgate.data_url))
        .bearer_auth(&tokens[0])
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Read-Version", "0.1.0")
        .body(read_body(vec![]))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 200);
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&response.bytes().await.expect("body"))
        .expect("snappy");
    let answer = ReadResponse::decode(raw.as_slice()).expect("ReadResponse");
    assert_eq!(answer.results[0].timeseries.len(), 1, "{answer:?}");

    // So does the query API (`query_url`).
    let answer: Value = promgate
        .http
        .get(format!("{}/api/v1/query", promgate.data_url))
        .bearer_auth(&tokens[0])
        .query(&[("query", "up")])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(
        answer["data"]["result"][0]["metric"]["job"], "test",
        "{answer}"
    );

    // No client certificate, someone else's CA, the URL's address as the name: the
    // handshake fails, and the sender is told to retry.
    for (index, name) in ["nocert", "wrongca", "noname"].iter().enumerate() {
        let response = write(&promgate, &tokens[index + 1]).await;
        assert_eq!(response.status(), 503, "{name}");
        assert!(response.headers().contains_key("retry-after"), "{name}");
        let text = response.text().await.expect("text");
        assert!(
            text.contains(&format!("backend {name} is unavailable")) && text.contains("TLS: "),
            "{name}: {text}"
        );
        let expected = match *name {
            // TLS 1.3: the receiver checks the client's certificate after the client's
            // side of the handshake, and answers with an alert.
            "nocert" => "alert",
            "wrongca" => "UnknownIssuer",
            _ => "not valid for name \"127.0.0.1\"",
        };
        assert!(text.contains(expected), "{name}: {text}");
    }
    let series: Value = http
        .get(format!("{base}/api/v1/series"))
        .query(&[("match[]", "up"), ("start", "0")])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(
        series["data"].as_array().map(Vec::len),
        Some(1),
        "only the good backend's write landed: {series}"
    );
}

#[test]
fn check_config_refuses_insecure_skip_verify() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().join("promgate.toml");
    std::fs::write(
        &path,
        "[[backends]]\nname = \"b\"\nwrite_url = \"https://tsdb.example/api/v1/write\"\ninsecure_skip_verify = true\n",
    )
    .expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "backends[0].insecure_skip_verify: promgate always verifies a backend's certificate"
        ),
        "{stderr}"
    );
}
