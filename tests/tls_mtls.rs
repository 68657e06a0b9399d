//! TLS and client certificates on the data listener (DESIGN §4c; SECURITY.md T6–T8,
//! test group "TLS / mTLS"), with a test PKI generated here by rcgen: every refusal is
//! asserted together with "nothing reached the backend".

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::pki::{ca, crl, dns, leaf, server_leaf, uri, Ca, Leaf, LeafSpec};
use common::{backends_toml, label_value, simple_body, FakeBackend, Relay};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::json;
use time::OffsetDateTime;

struct Setup {
    relay: Relay,
    backend: FakeBackend,
    ca: Ca,
    dir: tempfile::TempDir,
    crl_path: PathBuf,
    port: u16,
}

async fn setup(client_auth: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("promgate test client CA");
    let server = server_leaf(&ca);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let cert = write("server.pem", &server.pem);
    let key = write("server.key", &server.key_pem);
    let ca_file = write("ca.pem", &ca.pem);
    let crl_path = write(
        "ca.crl",
        &crl(
            &ca,
            &[66],
            OffsetDateTime::now_utc() + time::Duration::days(7),
        ),
    );
    let backend = FakeBackend::start().await;
    let server_toml = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nclient_auth = \"{client_auth}\"\ncrl_files = [\"{}\"]\nreload_interval = \"200ms\"\n",
        cert.display(),
        key.display(),
        ca_file.display(),
        crl_path.display()
    );
    let relay = Relay::start_with_server(&server_toml, &backends_toml(&[&backend])).await;
    relay
        .create_tenant(json!({"id": "alpha", "identities": ["spiffe://example.org/alpha", "alpha.clients.example"]}))
        .await;
    relay
        .create_tenant(json!({"id": "beta", "identities": ["spiffe://example.org/beta"]}))
        .await;
    let port = relay.data_addr.port();
    Setup {
        relay,
        backend,
        ca,
        dir,
        crl_path,
        port,
    }
}

impl Setup {
    fn client(&self, identity: Option<&Leaf>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).expect("ca"),
            )
            .timeout(Duration::from_secs(5));
        if let Some(leaf) = identity {
            let pem = format!("{}{}", leaf.pem, leaf.key_pem);
            builder =
                builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
        }
        builder.build().expect("client")
    }

    /// A write over HTTPS; `Err` when the connection or TLS handshake was refused.
    async fn write(&self, identity: Option<&Leaf>, token: Option<&str>) -> Result<u16, String> {
        let mut request = self
            .client(identity)
            .post(format!("https://127.0.0.1:{}/api/v1/write", self.port))
            .header("Content-Encoding", "snappy")
            .body(simple_body(&[]));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .map(|response| response.status().as_u16())
            .map_err(|err| format!("{err:?}"))
    }

    fn backend_requests(&self) -> usize {
        self.backend.requests().len()
    }
}

#[tokio::test]
async fn registered_sans_authenticate_without_a_token() {
    let setup = setup("required").await;
    let by_uri = leaf(
        &setup.ca,
        LeafSpec::client(vec![uri("spiffe://example.org/alpha")], 10),
    );
    assert_eq!(setup.write(Some(&by_uri), None).await, Ok(204));
    let by_dns = leaf(
        &setup.ca,
        LeafSpec::client(vec![dns("alpha.clients.example")], 11),
    );
    assert_eq!(setup.write(Some(&by_dns), None).await, Ok(204));
    let beta = leaf(
        &setup.ca,
        LeafSpec::client(vec![uri("spiffe://example.org/beta")], 12),
    );
    assert_eq!(setup.write(Some(&beta), None).await, Ok(204));
    let tenants: Vec<String> = setup
        .backend
        .requests()
        .iter()
        .map(|request| {
            label_value(&request.write_request().timeseries[0], "tenant_id")[0].to_string()
        })
        .collect();
    assert_eq!(tenants, ["alpha", "alpha", "beta"]);
}

#[tokio::test]
async fn refused_certificates_never_reach_a_backend() {
    let setup = setup("required").await;
    let now = OffsetDateTime::now_utc();
    let alpha = || vec![uri("spiffe://example.org/alpha")];
    let other_ca = ca("someone else's CA");
    let cases = [
        ("no certificate", None),
        (
            "another CA",
            Some(leaf(&other_ca, LeafSpec::client(alpha(), 20))),
        ),
        (
            "serverAuth only",
            Some(leaf(
                &setup.ca,
                LeafSpec {
                    usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
                    ..LeafSpec::client(alpha(), 21)
                },
            )),
        ),
        (
            "expired",
            Some(leaf(
                &setup.ca,
                LeafSpec {
                    not_before: now - time::Duration::days(30),
                    not_after: now - time::Duration::days(1),
                    ..LeafSpec::client(alpha(), 22)
                },
            )),
        ),
        (
            "not yet valid",
            Some(leaf(
                &setup.ca,
                LeafSpec {
                    not_before: now + time::Duration::days(1),
                    not_after: now + time::Duration::days(30),
                    ..LeafSpec::client(alpha(), 23)
                },
            )),
        ),
        (
            "revoked",
            Some(leaf(&setup.ca, LeafSpec::client(alpha(), 66))),
        ),
    ];
    for (name, identity) in &cases {
        let outcome = setup.write(identity.as_ref(), None).await;
        assert!(
            outcome.is_err(),
            "{name}: the handshake must fail, got {outcome:?}"
        );
    }
    assert_eq!(setup.backend_requests(), 0);
}

#[tokio::test]
async fn identity_rules_ambiguity_cn_and_conflicting_credentials() {
    let setup = setup("required").await;
    let ambiguous = leaf(
        &setup.ca,
        LeafSpec::client(
            vec![
                uri("spiffe://example.org/alpha"),
                uri("spiffe://example.org/beta"),
            ],
            30,
        ),
    );
    assert_eq!(setup.write(Some(&ambiguous), None).await, Ok(401));
    // The CN is never used: a certificate whose only name is in its CN is unregistered.
    let cn_only = leaf(
        &setup.ca,
        LeafSpec {
            common_name: "spiffe://example.org/alpha",
            ..LeafSpec::client(vec![], 31)
        },
    );
    assert_eq!(setup.write(Some(&cn_only), None).await, Ok(401));
    let unregistered = leaf(
        &setup.ca,
        LeafSpec::client(vec![uri("spiffe://example.org/nobody")], 32),
    );
    assert_eq!(setup.write(Some(&unregistered), None).await, Ok(401));
    assert_eq!(setup.backend_requests(), 0);
    let alpha = leaf(
        &setup.ca,
        LeafSpec::client(vec![uri("spiffe://example.org/alpha")], 33),
    );
    let (_, beta_token) = setup.relay.issue_token("beta").await;
    let (_, alpha_token) = setup.relay.issue_token("alpha").await;
    assert_eq!(
        setup.write(Some(&alpha), Some(&beta_token)).await,
        Ok(401),
        "certificate and token disagree"
    );
    assert_eq!(setup.backend_requests(), 0);
    assert_eq!(
        setup.write(Some(&alpha), Some(&alpha_token)).await,
        Ok(204),
        "both name alpha"
    );
    // An unregistered certificate with a valid token: the token decides.
    assert_eq!(
        setup.write(Some(&unregistered), Some(&beta_token)).await,
        Ok(204)
    );
}

#[tokio::test]
async fn optional_client_auth_accepts_tokens_and_plain_http_gets_nothing() {
    let setup = setup("optional").await;
    let (_, token) = setup.relay.issue_token("alpha").await;
    assert_eq!(setup.write(None, Some(&token)).await, Ok(204));
    assert_eq!(setup.write(None, None).await, Ok(401));
    // Plain HTTP on the TLS port: no HTTP answer at all.
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/v1/write", setup.port))
        .bearer_auth(&token)
        .body(simple_body(&[]))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(setup.backend_requests(), 1);
}

#[tokio::test]
async fn crl_changes_are_reloaded_and_an_expired_crl_fails_closed() {
    let setup = setup("required").await;
    let alpha = leaf(
        &setup.ca,
        LeafSpec::client(vec![uri("spiffe://example.org/alpha")], 40),
    );
    assert_eq!(setup.write(Some(&alpha), None).await, Ok(204));
    // Revoke it: the new list is picked up without a restart.
    std::fs::write(
        &setup.crl_path,
        crl(
            &setup.ca,
            &[66, 40],
            OffsetDateTime::now_utc() + time::Duration::days(7),
        ),
    )
    .expect("crl");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        setup.write(Some(&alpha), None).await.is_err(),
        "revoked after reload"
    );
    // An expired list: revocation status unknown, every certificate is refused.
    let fresh = leaf(
        &setup.ca,
        LeafSpec::client(vec![uri("spiffe://example.org/alpha")], 41),
    );
    std::fs::write(
        &setup.crl_path,
        crl(
            &setup.ca,
            &[],
            OffsetDateTime::now_utc() - time::Duration::minutes(30),
        ),
    )
    .expect("crl");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        setup.write(Some(&fresh), None).await.is_err(),
        "expired CRL enforced"
    );
    assert_eq!(setup.backend_requests(), 1);
    drop(setup.dir);
}

#[tokio::test]
async fn tls_below_1_2_is_refused() {
    let setup = setup("optional").await;
    let openssl = common::process::which("openssl")
        .expect("openssl is needed for this test: apt-get install openssl");
    for version in ["-tls1", "-tls1_1"] {
        let output = tokio::process::Command::new(&openssl)
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", setup.port),
                version,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The handshake fails: no cipher was agreed and the server never sent its certificate.
        assert!(
            text.contains("Cipher is (NONE)") && text.contains("no peer certificate available"),
            "{version} must not negotiate:\n{text}"
        );
    }
}
