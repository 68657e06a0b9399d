//! Config reload without a restart, against a running promgate binary: after SIGHUP or
//! `POST /-/reload` the next request goes to the backend the file now names and obeys
//! the limits it now sets, and new TLS connections get the certificate
//! it now names; a broken file is refused, the running config kept (requests
//! still go to the old backend) and `promgate_config_last_reload_successful` drops to 0;
//! a fixed file sets it back to 1 with a newer success timestamp. A changed listen
//! address is logged as needing a restart and keeps its running value; a changed queued
//! backend or tenant label refuses the reload. Issuers are added and changed by a reload.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::{label_value, now_ms, series, snappy_body, FakeBackend};
use promgate::proto::WriteRequest;
use serde_json::json;

/// A write of `count` distinct series.
fn body(count: usize) -> Vec<u8> {
    let now = now_ms();
    let names: Vec<String> = (0..count).map(|index| format!("i{index}")).collect();
    snappy_body(&WriteRequest {
        timeseries: names
            .iter()
            .map(|instance| {
                series(
                    &[("__name__", "up"), ("instance", instance.as_str())],
                    1.0,
                    now,
                )
            })
            .collect(),
        metadata: vec![],
    })
}

struct Harness {
    promgate: PromgateBinary,
    config_path: PathBuf,
    /// The generated `[server]`, `[admin]` and `[storage]` sections.
    head: String,
    token: String,
}

impl Harness {
    fn write_config(&self, tail: &str) {
        std::fs::write(&self.config_path, format!("{}{tail}", self.head)).expect("config");
    }

    async fn write(&self, series: usize) -> u16 {
        self.promgate
            .http
            .post(self.promgate.write_url())
            .bearer_auth(&self.token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body(series))
            .send()
            .await
            .expect("write")
            .status()
            .as_u16()
    }

    /// `promgate_config_last_reload_successful` and `…_success_timestamp_seconds`, from
    /// one scrape so the two belong together.
    async fn reload_state(&self) -> (f64, f64) {
        let text = self.promgate.metrics().await;
        let metric = |name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from /metrics"))
                .trim()
                .parse()
                .expect("a number")
        };
        (
            metric("promgate_config_last_reload_successful"),
            metric("promgate_config_last_reload_success_timestamp_seconds"),
        )
    }

    fn sighup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.promgate.process.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits until the reload metrics move off `before` (a SIGHUP is handled a moment
    /// after it is sent).
    async fn until_reloaded(&self, before: (f64, f64)) -> (f64, f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.reload_state().await;
            if now != before {
                return now;
            }
            assert!(Instant::now() < deadline, "no reload seen after SIGHUP");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post_reload(&self, token: Option<&str>) -> (u16, String) {
        let mut request = self
            .promgate
            .http
            .post(format!("{}/-/reload", self.promgate.admin_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("reload");
        let status = response.status().as_u16();
        (status, response.text().await.expect("text"))
    }
}

fn backend_toml(url: &str, max_series: usize) -> String {
    format!(
        "[limits]\nmax_series_per_request = {max_series}\n\
         [[backends]]\nname = \"main\"\nwrite_url = \"{url}\"\ntimeout = \"2s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_backends_and_limits_and_a_broken_file_keeps_the_running_config() {
    let root = tempfile::tempdir().expect("tempdir");
    let (first, second) = (FakeBackend::start().await, FakeBackend::start().await);
    let promgate =
        PromgateBinary::start(root.path(), "", &backend_toml(&first.write_url(), 5)).await;
    let config_path = root.path().join("promgate.toml");
    let text = std::fs::read_to_string(&config_path).expect("config");
    let head = text[..text.find("[limits]").expect("limits")].to_string();
    let token = promgate.add_tenant("alpha", json!({})).await;
    let harness = Harness {
        promgate,
        config_path,
        head,
        token,
    };
    let started = harness.reload_state().await;
    assert_eq!(started.0, 1.0, "the start counts as a successful load");
    assert!(started.1 > 1.0e9, "a Unix time: {}", started.1);

    assert_eq!(harness.write(5).await, 204);
    assert_eq!(first.requests().len(), 1);
    assert_eq!(harness.write(6).await, 400, "max_series_per_request = 5");

    // SIGHUP: the second backend and a lower limit.
    harness.write_config(&backend_toml(&second.write_url(), 2));
    harness.sighup();
    let after_sighup = harness.until_reloaded(started).await;
    assert_eq!(after_sighup.0, 1.0);
    assert!(after_sighup.1 > started.1);
    assert_eq!(harness.write(2).await, 204);
    assert_eq!(
        second.requests().len(),
        1,
        "the next write went to the new backend"
    );
    let forwarded = second.requests()[0].write_request();
    assert_eq!(
        label_value(&forwarded.timeseries[0], "tenant_id"),
        ["alpha"]
    );
    assert_eq!(first.requests().len(), 1, "and not to the old one");
    assert_eq!(harness.write(3).await, 400, "the new limit holds");

    // POST /-/reload: the admin token is required; back to the first backend.
    harness.write_config(&backend_toml(&first.write_url(), 3));
    let (status, _) = harness.post_reload(None).await;
    assert_eq!(status, 401, "reload needs the admin token");
    let (status, _) = harness.post_reload(Some("wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(
        harness.write(3).await,
        400,
        "nothing reloaded without the token"
    );
    let (status, text) = harness
        .post_reload(Some(&harness.promgate.admin_token))
        .await;
    assert_eq!(status, 200, "{text}");
    let after_post = harness.reload_state().await;
    assert!(after_post.1 > after_sighup.1);
    assert_eq!(harness.write(3).await, 204);
    assert_eq!(first.requests().len(), 2);
    assert_eq!(second.requests().len(), 1);

    // A broken file: refused with every problem, the running config kept, metric 0.
    harness.write_config(
        "[limits]\nmax_series_per_request = 1\nmax_requets_bytes = 5\n\
         [[backends]]\nname = \"main\"\nwrite_url = \"ftp://nowhere\"\n",
    );
    let (status, text) = harness
        .post_reload(Some(&harness.promgate.admin_token))
        .await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("2 problem(s)"), "{text}");
    assert!(
        text.contains("unknown key `limits.max_requets_bytes`"),
        "{text}"
    );
    assert!(text.contains("backends[0].write_url"), "{text}");
    let broken = harness.reload_state().await;
    assert_eq!(
        broken,
        (0.0, after_post.1),
        "failed; the last success stays"
    );
    assert_eq!(harness.write(3).await, 204, "the old limit (3) still holds");
    assert_eq!(first.requests().len(), 3, "the old backend still serves");
    // The same through SIGHUP: still refused, still running on the old config.
    harness.sighup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(harness.reload_state().await, broken);
    assert_eq!(harness.write(1).await, 204);
    assert_eq!(first.requests().len(), 4);
    let log = std::fs::read_to_string(&harness.promgate.process.log).expect("log");
    assert!(
        log.contains("configuration reload refused") && log.contains("max_requets_bytes"),
        "every problem is logged"
    );

    // Fixed (the second backend again), with a changed listen address: that one needs a
    // restart, is logged as such, and the data listener stays where it is.
    let moved_head = harness.head.replacen(
        &harness.promgate.data_url.replace("http://", ""),
        &format!("127.0.0.1:{}", common::process::free_port()),
        1,
    );
    assert_ne!(moved_head, harness.head);
    std::fs::write(
        &harness.config_path,
        format!("{moved_head}{}", backend_toml(&second.write_url(), 4)),
    )
    .expect("config");
    harness.sighup();
    let fixed = harness.until_reloaded(broken).await;
    assert_eq!(fixed.0, 1.0);
    assert!(fixed.1 > after_post.1, "a newer success timestamp");
    assert_eq!(harness.write(4).await, 204, "still on the old address");
    assert_eq!(second.requests().len(), 2);
    assert_eq!(harness.write(5).await, 400);
    let log = std::fs::read_to_string(&harness.promgate.process.log).expect("log");
    assert!(
        log.contains("needs a restart") && log.contains("server.listen"),
        "the listen change is logged as needing a restart"
    );
}

/// An HTTPS client that trusts `ca_pem` alone.
fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"))
        .build()
        .expect("client")
}

/// Whether a new TLS connection to the data listener is accepted by a client trusting
/// `ca_pem` alone (a fresh client per call, so no connection is reused).
async fn handshake_ok(ca_pem: &str, url: &str) -> bool {
    trusting(ca_pem)
        .get(format!("{url}/-/healthy"))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_connections_with_the_certificate_the_file_now_names() {
    let root = tempfile::tempdir().expect("tempdir");
    let (old_ca, new_ca) = (common::pki::ca("old CA"), common::pki::ca("new CA"));
    let (old, new) = (
        common::pki::server_leaf(&old_ca),
        common::pki::server_leaf(&new_ca),
    );
    let file = |name: &str, text: &str| {
        let path = root.path().join(name);
        std::fs::write(&path, text).expect("pem");
        path.display().to_string()
    };
    let (old_cert, old_key) = (file("old.pem", &old.pem), file("old.key", &old.key_pem));
    let (new_cert, new_key) = (file("new.pem", &new.pem), file("new.key", &new.key_pem));
    let broken_key = file(
        "broken.key",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let backend = FakeBackend::start().await;
    // reload_interval is long: only the config reload can change the certificate here.
    let promgate = PromgateBinary::start(
        root.path(),
        &format!(
            "[server.tls]\ncert_file = \"{old_cert}\"\nkey_file = \"{old_key}\"\nreload_interval = \"1h\"\n"
        ),
        &backend_toml(&backend.write_url(), 10),
    )
    .await;
    let data_url = promgate.data_url.replace("http://", "https://");
    let config_path = root.path().join("promgate.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    assert!(handshake_ok(&old_ca.pem, &data_url).await);
    assert!(!handshake_ok(&new_ca.pem, &data_url).await);

    let reload = |text: String| {
        std::fs::write(&config_path, text).expect("config");
        let request = promgate
            .http
            .post(format!("{}/-/reload", promgate.admin_url))
            .bearer_auth(&promgate.admin_token);
        async move {
            let response = request.send().await.expect("reload");
            (
                response.status().as_u16(),
                response.text().await.expect("text"),
            )
        }
    };
    // A key file that is there but holds no key: only loading it tells, and the reload
    // is refused whole.
    let (status, text) = reload(
        config
            .replace(&old_cert, &new_cert)
            .replace(&old_key, &broken_key),
    )
    .await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("server.tls: "), "{text}");
    assert!(
        handshake_ok(&old_ca.pem, &data_url).await,
        "the old certificate stays"
    );

    let (status, text) = reload(
        config
            .replace(&old_cert, &new_cert)
            .replace(&old_key, &new_key),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        handshake_ok(&new_ca.pem, &data_url).await,
        "new connections get the new one"
    );
    assert!(!handshake_ok(&old_ca.pem, &data_url).await);
}

/// An EdDSA JWT of `issuer` for `audience`, naming tenant `alpha`, and its JWKS.
fn external_token(issuer: &str, audience: &str) -> (String, serde_json::Value) {
    use base64::Engine;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let pem = signing.to_pkcs8_pem(Default::default()).expect("pem");
    let key = jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).expect("key");
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"iss": issuer, "aud": audience, "sub": "prometheus", "tenant": "alpha", "iat": now, "exp": now + 600});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"}]});
    (token, jwks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_changes_external_issuers() {
    let root = tempfile::tempdir().expect("tempdir");
    let backend = FakeBackend::start().await;
    let tail = backend_toml(&backend.write_url(), 10);
    let promgate = PromgateBinary::start(root.path(), "", &tail).await;
    promgate.add_tenant("alpha", json!({})).await;
    let config_path = root.path().join("promgate.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    let (token, jwks) = external_token("https://idp.example", "promgate");
    let jwks_file = root.path().join("idp-jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).expect("jwks");
    let harness = Harness {
        promgate,
        config_path,
        head: config,
        token,
    };
    assert_eq!(harness.write(1).await, 401, "no such issuer yet");

    let issuer = |audience: &str| {
        format!(
            "[[auth.issuers]]\nissuer = \"https://idp.example\"\naudience = \"{audience}\"\n\
             jwks_file = \"{}\"\nalgorithms = [\"EdDSA\"]\n",
            jwks_file.display()
        )
    };
    harness.write_config(&issuer("promgate"));
    let (status, text) = harness
        .post_reload(Some(&harness.promgate.admin_token))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        harness.write(1).await,
        204,
        "the issuer's token is accepted"
    );
    assert_eq!(backend.requests().len(), 1);

    // Another audience: the token verified before is checked again, and refused.
    harness.write_config(&issuer("someone-else"));
    let (status, text) = harness
        .post_reload(Some(&harness.promgate.admin_token))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(harness.write(1).await, 401);
    assert_eq!(backend.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_queued_backend_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let (queued, synced, other) = (
        FakeBackend::start().await,
        FakeBackend::start().await,
        FakeBackend::start().await,
    );
    let backends = |queued_url: &str, sync_url: &str| {
        format!(
            "[[backends]]\nname = \"queued\"\nwrite_url = \"{queued_url}\"\ntimeout = \"2s\"\ndelivery = \"queued\"\n\
             [[backends]]\nname = \"sync\"\nwrite_url = \"{sync_url}\"\ntimeout = \"2s\"\n"
        )
    };
    let promgate = PromgateBinary::start(
        root.path(),
        "",
        &backends(&queued.write_url(), &synced.write_url()),
    )
    .await;
    let config_path = root.path().join("promgate.toml");
    let text = std::fs::read_to_string(&config_path).expect("config");
    let head = text[..text.find("[[backends]]").expect("backends")].to_string();
    let token = promgate.add_tenant("alpha", json!({})).await;
    let harness = Harness {
        promgate,
        config_path,
        head,
        token,
    };

    // The queued backend elsewhere (and the sync one too): refused whole.
    harness.write_config(&backends(&other.write_url(), &other.write_url()));
    let (status, text) = harness
        .post_reload(Some(&harness.promgate.admin_token))
        .await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("\"queued\" is a queued backend; changing it needs a restart"),
        "{text}"
    );
    assert_eq!(harness.reload_state().await.0, 0.0);
    assert_eq!(harness.write(1).await, 204);
    assert_eq!(
        synced.requests().len(),
        1,
        "the sync backend did not move either"
    );

    // Only the sync backend moved: applied, and the queue keeps delivering.
    harness.write_config(&backends(&queued.write_url(), &other.write_url()));
    let (status, text) = harness
        .post_reload(Some(&harness.promgate.admin_token))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(harness.write(1).await, 204);
    assert_eq!(other.requests().len(), 1);
    // The worker may merge queued writes into one request: count samples.
    let delivered = || -> usize {
        queued
            .requests()
            .iter()
            .flat_map(|request| request.write_request().timeseries)
            .map(|series| series.samples.len())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered() < 2 {
        assert!(
            Instant::now() < deadline,
            "the queue stopped delivering: {} samples delivered",
            delivered()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_tenant_label_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let backend = FakeBackend::start().await;
    let promgate =
        PromgateBinary::start(root.path(), "", &backend_toml(&backend.write_url(), 5)).await;
    let config_path = root.path().join("promgate.toml");
    let text = std::fs::read_to_string(&config_path).expect("config");
    let head = text[..text.find("[limits]").expect("limits")].to_string();
    let token = promgate.add_tenant("alpha", json!({})).await;
    let harness = Harness {
        promgate,
        config_path,
        head,
        token,
    };

    // The label scopes every tenant's series: changing it under running traffic would
    // hand each tenant the series that carry the new label's value. Refused whole, so
    // the lower limit in the same file is not applied either.
    harness.write_config(&format!(
        "{}[tenancy]\nlabel = \"org_id\"\n",
        backend_toml(&backend.write_url(), 1)
    ));
    let (status, text) = harness
        .post_reload(Some(&harness.promgate.admin_token))
        .await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("tenancy.label") && text.contains("needs a restart"),
        "{text}"
    );
    assert_eq!(harness.reload_state().await.0, 0.0);
    assert_eq!(harness.write(2).await, 204, "the running limit (5) holds");
    let forwarded = backend.requests()[0].write_request();
    assert_eq!(
        label_value(&forwarded.timeseries[0], "tenant_id"),
        ["alpha"],
        "the running tenant label"
    );
    assert!(label_value(&forwarded.timeseries[0], "org_id").is_empty());

    // The same file through SIGHUP: refused and logged.
    harness.sighup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = std::fs::read_to_string(&harness.promgate.process.log).expect("log");
    assert!(
        log.matches("tenancy.label").count() >= 2,
        "both refusals are logged"
    );
}
