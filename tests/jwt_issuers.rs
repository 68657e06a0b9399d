//! External JWT issuers (DESIGN §4b; SECURITY.md T1–T5, test group "JWT"): tokens of a
//! configured issuer map to the tenant in their claim; forged, expired, misaddressed and
//! algorithm-confused tokens are 401 and reach no backend; JWKS rotation is picked up;
//! during a JWKS outage known keys keep working and unknown key ids get 503; sprayed key
//! ids fetch the JWKS at most once per cooldown, even when they arrive all at once; a JWKS
//! body is dropped as soon as it passes its 1 MiB cap.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{backends_toml, simple_body, FakeBackend, Relay};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "promgate";

struct TestKey {
    encoding: EncodingKey,
    public: [u8; 32],
}

fn test_key(seed: u8) -> TestKey {
    let signing = SigningKey::from_bytes(&[seed; 32]);
    let pem = signing.to_pkcs8_pem(Default::default()).expect("pem");
    TestKey {
        encoding: EncodingKey::from_ed_pem(pem.as_bytes()).expect("key"),
        public: signing.verifying_key().to_bytes(),
    }
}

fn jwk(key: &TestKey, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(key.public), "kid": kid, "alg": "EdDSA", "use": "sig"})
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(tenant: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "prometheus-eu-1", "tenant": tenant, "iat": now(), "exp": now() + 600})
}

fn sign(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("token")
}

#[derive(Clone)]
struct Jwks {
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    /// Milliseconds every answer waits: a slow identity provider.
    delay_ms: Arc<AtomicU64>,
}

async fn serve_jwks(State(jwks): State<Jwks>) -> Response {
    jwks.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = jwks.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if jwks.failing.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    Json(jwks.document.lock().expect("lock").clone()).into_response()
}

async fn start_jwks(keys: Vec<Value>) -> (Jwks, String) {
    let jwks = Jwks {
        document: Arc::new(Mutex::new(json!({ "keys": keys }))),
        fetches: Arc::new(AtomicUsize::new(0)),
        failing: Arc::new(AtomicBool::new(false)),
        delay_ms: Arc::new(AtomicU64::new(0)),
    };
    let router = Router::new()
        .route("/jwks.json", get(serve_jwks))
        .with_state(jwks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (jwks, format!("http://{addr}/jwks.json"))
}

fn issuer_toml(source: &str, cooldown: &str) -> String {
    format!(
        "[[auth.issuers]]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{source}\nalgorithms = [\"EdDSA\"]\ntenant_claim = \"tenant\"\njwks_cooldown = \"{cooldown}\"\n"
    )
}

async fn setup(cooldown: &str) -> (Relay, FakeBackend, Jwks, TestKey) {
    let key = test_key(1);
    let (jwks, url) = start_jwks(vec![jwk(&key, "k1")]).await;
    let backend = FakeBackend::start().await;
    let toml = format!(
        "{}{}",
        issuer_toml(&format!("jwks_url = \"{url}\""), cooldown),
        backends_toml(&[&backend])
    );
    let relay = Relay::start(&toml).await;
    relay.create_tenant(json!({"id": "alpha"})).await;
    (relay, backend, jwks, key)
}

async fn status(relay: &Relay, token: &str) -> u16 {
    relay.write(token, simple_body(&[])).await.status().as_u16()
}

#[tokio::test]
async fn issuer_tokens_map_to_the_tenant_in_their_claim() {
    let (relay, backend, _jwks, key) = setup("30s").await;
    assert_eq!(
        status(&relay, &sign(&key, Some("k1"), &claims("alpha"))).await,
        204
    );
    assert_eq!(backend.requests().len(), 1);
    let forwarded = backend.requests()[0].write_request();
    assert_eq!(
        common::label_value(&forwarded.timeseries[0], "tenant_id"),
        ["alpha"]
    );
    // A registered-but-disabled tenant and an unregistered one: valid identity, 403.
    assert_eq!(
        status(&relay, &sign(&key, Some("k1"), &claims("ghost"))).await,
        403
    );
    relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(
        status(&relay, &sign(&key, Some("k1"), &claims("alpha"))).await,
        403
    );
    relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"status": "active"})),
        )
        .await;
    // Tokens promgate issues keep working beside the issuer's.
    let (_, issued) = relay.issue_token("alpha").await;
    assert_eq!(status(&relay, &issued).await, 204);
}

#[tokio::test]
async fn bad_claims_are_401_and_reach_no_backend() {
    let (relay, backend, _jwks, key) = setup("30s").await;
    let with = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut claims = claims("alpha");
        change(claims.as_object_mut().expect("object"));
        sign(&key, Some("k1"), &claims)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "wrong audience",
            with(&|c| {
                c.insert("aud".into(), json!("someone-else"));
            }),
        ),
        (
            "no audience",
            with(&|c| {
                c.remove("aud");
            }),
        ),
        (
            "unknown issuer",
            with(&|c| {
                c.insert("iss".into(), json!("https://evil.example"));
            }),
        ),
        (
            "no issuer",
            with(&|c| {
                c.remove("iss");
            }),
        ),
        (
            "promgate as issuer",
            with(&|c| {
                c.insert("iss".into(), json!("promgate"));
            }),
        ),
        (
            "expired",
            with(&|c| {
                c.insert("exp".into(), json!(now() - 3600));
            }),
        ),
        (
            "no exp",
            with(&|c| {
                c.remove("exp");
            }),
        ),
        (
            "exp as a string",
            with(&|c| {
                c.insert("exp".into(), json!("tomorrow"));
            }),
        ),
        (
            "not yet valid",
            with(&|c| {
                c.insert("nbf".into(), json!(now() + 3600));
            }),
        ),
        (
            "no sub",
            with(&|c| {
                c.remove("sub");
            }),
        ),
        (
            "no tenant claim",
            with(&|c| {
                c.remove("tenant");
            }),
        ),
        (
            "tenant claim not a string",
            with(&|c| {
                c.insert("tenant".into(), json!(["alpha"]));
            }),
        ),
    ];
    for (name, token) in cases {
        assert_eq!(status(&relay, &token).await, 401, "{name}");
    }
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn algorithm_and_key_confusion_is_refused() {
    let (relay, backend, _jwks, key) = setup("30s").await;
    let payload = URL_SAFE_NO_PAD.encode(claims("alpha").to_string());
    // alg "none" with no signature.
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#)
    );
    // HS256 keyed with the issuer's public key bytes (the classic confusion).
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims("alpha"),
        &EncodingKey::from_secret(&key.public),
    )
    .expect("token");
    // ES256, a real asymmetric algorithm, but not in the issuer's allow-list.
    let es_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let mut es_header = Header::new(Algorithm::ES256);
    es_header.kid = Some("k1".into());
    let es256 = jsonwebtoken::encode(
        &es_header,
        &claims("alpha"),
        &EncodingKey::from_ec_pem(es_key.serialize_pem().as_bytes()).expect("ec"),
    )
    .expect("token");
    // Another key presented under the real kid, with its public key embedded as `jwk`
    // and a `jku` pointing elsewhere: both headers are ignored.
    let attacker = test_key(9);
    let mut forged_header = Header::new(Algorithm::EdDSA);
    forged_header.kid = Some("k1".into());
    forged_header.jku = Some("https://evil.example/jwks.json".into());
    forged_header.jwk = Some(serde_json::from_value(jwk(&attacker, "k1")).expect("jwk"));
    let forged =
        jsonwebtoken::encode(&forged_header, &claims("alpha"), &attacker.encoding).expect("token");
    for (name, token) in [
        ("none", none),
        ("HS256 with the public key", hs256),
        ("ES256", es256),
        ("wrong key, real kid", forged),
    ] {
        assert_eq!(status(&relay, &token).await, 401, "{name}");
    }
    let oversized = format!("{}.{}.x", "a".repeat(6000), "b".repeat(6000));
    assert_eq!(status(&relay, &oversized).await, 401, "oversized token");
    assert_eq!(status(&relay, "not.a.jwt").await, 401);
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn rotation_is_picked_up_and_outages_answer_503_for_unknown_kids() {
    let (relay, _backend, jwks, key) = setup("1s").await;
    assert_eq!(
        status(&relay, &sign(&key, Some("k1"), &claims("alpha"))).await,
        204
    );
    // Rotation: the IdP publishes k2 next to k1; a k2 token triggers a refetch.
    let next = test_key(2);
    *jwks.document.lock().expect("lock") = json!({"keys": [jwk(&key, "k1"), jwk(&next, "k2")]});
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        status(&relay, &sign(&next, Some("k2"), &claims("alpha"))).await,
        204
    );

    // Outage: cached kids keep working, an unknown kid is 503 (retryable), never 401.
    jwks.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let third = test_key(3);
    let unknown = sign(&third, Some("k3"), &claims("alpha"));
    let response = relay.write(&unknown, simple_body(&[])).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        status(&relay, &sign(&next, Some("k2"), &json!(claims("alpha")))).await,
        204,
        "cached kid"
    );
    // Within the cooldown no new fetch is made; the answer stays 503.
    assert_eq!(
        status(&relay, &sign(&third, Some("k3"), &claims("alpha"))).await,
        503
    );
    // Recovery: the IdP is back with k3.
    *jwks.document.lock().expect("lock") = json!({"keys": [jwk(&next, "k2"), jwk(&third, "k3")]});
    jwks.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(status(&relay, &unknown).await, 204);
}

#[tokio::test]
async fn sprayed_key_ids_fetch_the_jwks_at_most_once_per_cooldown() {
    let (relay, backend, jwks, _key) = setup("30s").await;
    let before = jwks.fetches.load(Ordering::SeqCst);
    let stranger = test_key(7);
    for attempt in 0..30 {
        let token = sign(
            &stranger,
            Some(&format!("spray-{attempt}")),
            &claims("alpha"),
        );
        assert_eq!(status(&relay, &token).await, 401);
    }
    let fetched = jwks.fetches.load(Ordering::SeqCst) - before;
    assert!(
        fetched <= 1,
        "the JWKS was fetched {fetched} times for 30 sprayed kids"
    );
    assert!(backend.requests().is_empty());
}

/// The JWKS cooldown of [`spray_target`]'s issuer.
const COOLDOWN: std::time::Duration = std::time::Duration::from_secs(3);

/// A relay with tenant alpha and an external issuer whose JWKS (served here, key "k1")
/// has a 3 s cooldown, for spraying tokens at it; the per-address failure limiter is out
/// of the way, or it would answer most of a spray itself.
async fn spray_target() -> (Arc<Relay>, Jwks, FakeBackend, TestKey) {
    let key = test_key(1);
    let (jwks, url) = start_jwks(vec![jwk(&key, "k1")]).await;
    let backend = FakeBackend::start().await;
    let toml = format!(
        "{}{}",
        issuer_toml(&format!("jwks_url = \"{url}\""), "3s"),
        backends_toml(&[&backend])
    );
    let relay = Relay::start_with_server("auth_failures_per_minute = 100000", &toml).await;
    relay.create_tenant(json!({"id": "alpha"})).await;
    (Arc::new(relay), jwks, backend, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sprayed_key_ids_share_one_slow_fetch() {
    let (relay, jwks, backend, key) = spray_target().await;
    // Let the start-up fetch's cooldown run out, then make the identity provider slow.
    tokio::time::sleep(COOLDOWN + std::time::Duration::from_millis(100)).await;
    jwks.delay_ms.store(300, Ordering::SeqCst);
    let before = jwks.fetches.load(Ordering::SeqCst);
    let started = std::time::Instant::now();

    let stranger = Arc::new(test_key(7));
    let spray: Vec<_> = (0..200)
        .map(|_| {
            let relay = Arc::clone(&relay);
            let stranger = Arc::clone(&stranger);
            tokio::spawn(async move {
                let token = sign(&stranger, Some(&random_kid()), &claims("alpha"));
                status(&relay, &token).await
            })
        })
        .collect();
    // A real tenant keeps writing while the spray waits on the identity provider.
    let real = sign(&key, Some("k1"), &claims("alpha"));
    let mut real_answers = Vec::new();
    for _ in 0..10 {
        real_answers.push(status(&relay, &real).await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut spray_answers = Vec::new();
    for task in spray {
        spray_answers.push(task.await.expect("join"));
    }
    let elapsed = started.elapsed();

    assert!(
        real_answers.iter().all(|&code| code == 204),
        "{real_answers:?}"
    );
    assert!(
        spray_answers.iter().all(|&code| code == 401),
        "every unknown kid is 401 once the JWKS was fetched: {spray_answers:?}"
    );
    let fetched = jwks.fetches.load(Ordering::SeqCst) - before;
    if elapsed < COOLDOWN {
        assert_eq!(
            fetched, 1,
            "200 concurrent unknown kids fetched the JWKS {fetched} times"
        );
    } else {
        // The cooldown ran out before the spray ended: one more fetch is allowed.
        assert!(fetched <= 2, "fetched {fetched} times in {elapsed:?}");
    }
    assert_eq!(backend.requests().len(), real_answers.len());
}

/// A random key id, as a stranger spraying tokens would send.
fn random_kid() -> String {
    let mut bytes = [0u8; 12];
    getrandom::getrandom(&mut bytes).expect("random");
    hex::encode(bytes)
}

#[tokio::test]
async fn jwks_files_work_and_oct_keys_are_ignored() {
    let key = test_key(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    let oct = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(b"shared secret"), "kid": "shared", "alg": "HS256"});
    std::fs::write(
        &path,
        json!({"keys": [jwk(&key, "file-key"), oct]}).to_string(),
    )
    .expect("jwks file");
    let backend = FakeBackend::start().await;
    let toml = format!(
        "{}{}",
        issuer_toml(&format!("jwks_file = \"{}\"", path.display()), "30s"),
        backends_toml(&[&backend])
    );
    let relay = Relay::start(&toml).await;
    relay.create_tenant(json!({"id": "alpha"})).await;
    assert_eq!(
        status(&relay, &sign(&key, Some("file-key"), &claims("alpha"))).await,
        204
    );
    // No kid, one key of the family: that key.
    assert_eq!(
        status(&relay, &sign(&key, None, &claims("alpha"))).await,
        204
    );
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("shared".into());
    let hs = jsonwebtoken::encode(
        &header,
        &claims("alpha"),
        &EncodingKey::from_secret(b"shared secret"),
    )
    .expect("token");
    assert_eq!(status(&relay, &hs).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_verified_at_once_are_capped_and_known_ones_pass() {
    let (relay, jwks, _backend, key) = spray_target().await;
    // The tenant's token is verified (and cached) before the spray.
    let real = sign(&key, Some("k1"), &claims("alpha"));
    assert_eq!(status(&relay, &real).await, 204);
    tokio::time::sleep(COOLDOWN + std::time::Duration::from_millis(100)).await;
    // A slow identity provider: every unknown kid waits for the one fetch in flight.
    jwks.delay_ms.store(2000, Ordering::SeqCst);
    let stranger = Arc::new(test_key(7));
    let spray: Vec<_> = (0..400)
        .map(|_| {
            let relay = Arc::clone(&relay);
            let stranger = Arc::clone(&stranger);
            tokio::spawn(async move {
                let token = sign(&stranger, Some(&random_kid()), &claims("alpha"));
                status(&relay, &token).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        status(&relay, &real).await,
        204,
        "a known-good token needs no verification permit"
    );
    let mut answers = std::collections::BTreeMap::<u16, u32>::new();
    for task in spray {
        *answers.entry(task.await.expect("join")).or_default() += 1;
    }
    assert!(
        answers.keys().all(|code| *code == 401 || *code == 503),
        "{answers:?}"
    );
    assert!(
        answers.get(&401).copied().unwrap_or(0) <= 256,
        "at most 256 unknown tokens wait for verification at once: {answers:?}"
    );
    assert!(
        answers.get(&503).copied().unwrap_or(0) >= 100,
        "the rest are turned away at once, retryable: {answers:?}"
    );
}

/// A JWKS URL that streams a chunked body past the cap and then never ends it.
async fn endless_jwks() -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                for _ in 0..24 {
                    let frame = format!("{:x}\r\n", chunk.len());
                    if socket.write_all(frame.as_bytes()).await.is_err()
                        || socket.write_all(&chunk).await.is_err()
                        || socket.write_all(b"\r\n").await.is_err()
                    {
                        return;
                    }
                }
                // The body never ends: only a reader that stops at the cap returns soon.
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            });
        }
    });
    format!("http://{addr}/jwks.json")
}

#[tokio::test]
async fn a_jwks_body_is_refused_as_soon_as_it_passes_the_cap() {
    use promgate::auth::issuers::Issuer;
    use promgate::config::{IssuerConfig, JwksSource};
    let url = endless_jwks().await;
    let issuer = Issuer::new(IssuerConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::Url(url.parse().expect("url")),
        algorithms: vec![Algorithm::EdDSA],
        tenant_claim: "tenant".into(),
        jwks_refresh: std::time::Duration::from_secs(600),
        jwks_cooldown: std::time::Duration::from_secs(30),
        jwks_timeout: std::time::Duration::from_secs(20),
    })
    .expect("a JWKS client");
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), issuer.refresh())
        .await
        .expect("the read stops at the cap, not at the timeout");
    let err = result.expect_err("larger than the cap");
    assert!(err.contains("larger than 1 MiB"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Claims no token before had: an identity provider's tokens rotate every few minutes.
fn fresh_claims(tenant: &str) -> Value {
    let mut claims = claims(tenant);
    claims["jti"] = json!(random_kid());
    claims
}

/// The value of one sample line of the admin listener's `/metrics`, 0 when absent.
async fn metric(relay: &Relay, series: &str) -> u64 {
    relay
        .metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Behind a shared address (NAT, proxy), the users of an identity provider must not be
/// locked out by whoever else failed to authenticate from it: their tokens rotate, so each
/// is new to promgate. Such a token is still verified; a forged one naming the issuer is
/// refused and counted, and the signature checks from a restricted address are bounded.
#[tokio::test]
async fn a_fresh_issuer_token_passes_from_an_address_over_its_failure_budget() {
    let key = test_key(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [jwk(&key, "k1")]}).to_string()).expect("jwks file");
    let backend = FakeBackend::start().await;
    let toml = format!(
        "{}{}",
        issuer_toml(&format!("jwks_file = \"{}\"", path.display()), "30s"),
        common::read_backends_toml(&[&backend])
    );
    let relay = Relay::start_with_server("auth_failures_per_minute = 3", &toml).await;
    relay.create_tenant(json!({"id": "alpha"})).await;
    for attempt in 0..3 {
        assert_eq!(
            status(&relay, "not-a-token").await,
            401,
            "attempt {attempt}"
        );
    }
    assert_eq!(
        status(&relay, "not-a-token").await,
        429,
        "the address is restricted"
    );

    let fresh = sign(&key, Some("k1"), &fresh_claims("alpha"));
    assert_eq!(
        status(&relay, &fresh).await,
        204,
        "a fresh token of a configured issuer is verified"
    );
    assert_eq!(backend.requests().len(), 1);
    let read = relay
        .read_request(
            &sign(&key, Some("k1"), &fresh_claims("alpha")),
            common::read_body(vec![]),
        )
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 200, "and on read");

    // A forged token naming the issuer: verified, refused, counted as a failure.
    let invalid = "promgate_auth_failures_total{cause=\"invalid_token\"}";
    let before = metric(&relay, invalid).await;
    let forged = sign(&test_key(6), Some("k1"), &fresh_claims("alpha"));
    assert_eq!(status(&relay, &forged).await, 401);
    assert_eq!(metric(&relay, invalid).await, before + 1);
    // Not verified at all: an algorithm the issuer does not allow, another issuer.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(
        &header,
        &fresh_claims("alpha"),
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("token");
    assert_eq!(status(&relay, &hs).await, 429);
    let mut elsewhere = fresh_claims("alpha");
    elsewhere["iss"] = json!("https://other.example");
    assert_eq!(
        status(&relay, &sign(&key, Some("k1"), &elsewhere)).await,
        429
    );
    assert_eq!(metric(&relay, invalid).await, before + 1);

    // A flood of forged tokens naming the issuer gets a bounded number of signature
    // checks, then 429 like any other stranger's token.
    let mut checked = 0;
    loop {
        let forged = sign(&test_key(6), Some("k1"), &fresh_claims("alpha"));
        match status(&relay, &forged).await {
            401 => checked += 1,
            429 => break,
            other => panic!("forged token answered {other}"),
        }
        assert!(
            checked < 40,
            "signature checks from a restricted address are bounded"
        );
    }
    assert_eq!(
        status(&relay, &fresh).await,
        204,
        "a token verified before needs no check"
    );
}
