//! Several replicas on one PostgreSQL registry (DESIGN §4, §11): a tenant created through
//! replica 1 writes through replica 3; a token revoked through replica 2 is refused by all
//! three within 2 s; with the database down, cached tenants keep writing, an identity the
//! cache does not know gets 503 (not 401), the admin API 503, and all recovers when the
//! database returns. Also the admin API's behaviour on PostgreSQL, and admin writes through
//! two replicas at the same moment: no change lost, a label value won once.

mod common;

use std::time::{Duration, Instant};

use common::binary::PromgateBinary;
use common::concurrency::{
    simultaneous_creates_share_no_label_value, simultaneous_patches_keep_both_changes,
    until_every_replica_shows, AdminEndpoint,
};
use common::postgres::Postgres;
use common::{backends_toml, simple_body, FakeBackend};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// `count` promgate replicas on one fresh PostgreSQL, sharing the admin token and the
/// signing key, forwarding to one fake backend.
struct Cluster {
    postgres: Postgres,
    replicas: Vec<PromgateBinary>,
    /// Holds the shared admin token and signing key.
    shared: tempfile::TempDir,
    _backend: FakeBackend,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(count: usize) -> Cluster {
        let postgres = Postgres::start().await;
        let backend = FakeBackend::start().await;
        let shared = tempfile::tempdir().expect("tempdir");
        let admin_toml = format!(
            "token_file = \"{}\"",
            shared.path().join("admin.token").display()
        );
        let extra = format!(
            "[auth.tokens]\nsigning_key_file = \"{}\"\n{}",
            shared.path().join("signing.key").display(),
            backends_toml(&[&backend])
        );
        // The tests poll with refused tokens; keep the per-address failure limit out of the way.
        let server_toml = "auth_failures_per_minute = 100000";
        let mut replicas = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..count {
            let dir = tempfile::tempdir().expect("tempdir");
            replicas.push(
                PromgateBinary::start_full(
                    dir.path(),
                    server_toml,
                    &admin_toml,
                    &postgres.url,
                    &extra,
                )
                .await,
            );
            dirs.push(dir);
        }
        Cluster {
            postgres,
            replicas,
            shared,
            _backend: backend,
            _dirs: dirs,
        }
    }
}

async fn write(http: &reqwest::Client, replica: &PromgateBinary, token: &str) -> u16 {
    http.post(replica.write_url())
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .body(simple_body(&[]))
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

async fn admin(
    http: &reqwest::Client,
    replica: &PromgateBinary,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(method, format!("{}{path}", replica.admin_url))
        .bearer_auth(&replica.admin_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls until every replica answers `expected` for `token`; returns how long it took.
async fn until_all(
    http: &reqwest::Client,
    replicas: &[PromgateBinary],
    token: &str,
    expected: u16,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for replica in replicas {
            statuses.push(write(http, replica, token).await);
        }
        if statuses.iter().all(|status| *status == expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replicas answer {statuses:?}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_tenants_revocations_and_survive_a_database_outage() {
    let Cluster {
        mut postgres,
        replicas,
        shared,
        _backend,
        _dirs,
    } = Cluster::start(3).await;
    let http = reqwest::Client::new();

    // Created through replica 1, written through replica 3.
    let (status, _) = admin(
        &http,
        &replicas[0],
        reqwest::Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "alpha"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, issued) = admin(
        &http,
        &replicas[0],
        reqwest::Method::POST,
        "/admin/v1/tenants/alpha/tokens",
        None,
    )
    .await;
    assert_eq!(status, 201);
    let token = issued["token"].as_str().expect("token").to_string();
    let token_id = issued["id"].as_str().expect("id").to_string();
    let visible_after = until_all(&http, &replicas, &token, 204).await;
    println!("replicas: a new tenant and token were usable on all three after {visible_after:?}");
    assert!(visible_after <= Duration::from_secs(2), "{visible_after:?}");

    // Revoked through replica 2: refused everywhere within 2 s.
    let (status, _) = admin(
        &http,
        &replicas[1],
        reqwest::Method::DELETE,
        &format!("/admin/v1/tenants/alpha/tokens/{token_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let refused_after = until_all(&http, &replicas, &token, 401).await;
    println!("replicas: the revoked token was refused by all three after {refused_after:?}");
    assert!(refused_after <= Duration::from_secs(2), "{refused_after:?}");

    // Database outage.
    let (_, issued) = admin(
        &http,
        &replicas[0],
        reqwest::Method::POST,
        "/admin/v1/tenants/alpha/tokens",
        None,
    )
    .await;
    let cached = issued["token"].as_str().expect("token").to_string();
    until_all(&http, &replicas, &cached, 204).await;
    postgres.stop();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for replica in &replicas {
        assert_eq!(
            write(&http, replica, &cached).await,
            204,
            "cached tenants keep writing"
        );
    }
    // A correctly signed token whose id no cache knows: it may have been issued during
    // the outage, so the sender must retry.
    let signing_pem = std::fs::read(shared.path().join("signing.key")).expect("signing key");
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let unknown = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &json!({"iss": "promgate", "aud": "promgate", "sub": "alpha", "jti": "issued-during-outage", "iat": now, "exp": now + 600}),
        &EncodingKey::from_ed_pem(&signing_pem).expect("key"),
    )
    .expect("token");
    for replica in &replicas {
        assert_eq!(
            write(&http, replica, &unknown).await,
            503,
            "unknown identity during the outage"
        );
    }
    let (status, _) = admin(
        &http,
        &replicas[2],
        reqwest::Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "beta"})),
    )
    .await;
    assert_eq!(status, 503, "admin API during the outage");

    // Recovery.
    postgres.run().await;
    let recovered = Instant::now();
    loop {
        let (status, _) = admin(
            &http,
            &replicas[2],
            reqwest::Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "beta"})),
        )
        .await;
        if status == 201 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(15),
            "admin API did not recover: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_all(&http, &replicas, &unknown, 401).await;
    until_all(&http, &replicas, &cached, 204).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_behaves_the_same_on_postgresql() {
    let postgres = Postgres::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_toml = format!(
        "token_file = \"{}\"",
        dir.path().join("admin.token").display()
    );
    let extra = format!(
        "[auth.tokens]\nsigning_key_file = \"{}\"\n",
        dir.path().join("signing.key").display()
    );
    let replica =
        PromgateBinary::start_full(dir.path(), "", &admin_toml, &postgres.url, &extra).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        admin(
            &http,
            &replica,
            reqwest::Method::POST,
            "/admin/v1/tenants",
            Some(body),
        )
    };
    assert_eq!(post(json!({"id": "alpha", "identities": ["spiffe://example.org/a"], "extra_labels": {"env": "prod"}})).await.0, 201);
    assert_eq!(post(json!({"id": "alpha"})).await.0, 409);
    assert_eq!(
        post(json!({"id": "beta", "identities": ["spiffe://example.org/a"]}))
            .await
            .0,
        409
    );
    assert_eq!(
        post(json!({"id": "x'; DROP TABLE tenants; --"})).await.0,
        400
    );
    let (status, tenant) = admin(
        &http,
        &replica,
        reqwest::Method::GET,
        "/admin/v1/tenants/alpha",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tenant["extra_labels"], json!({"env": "prod"}));
    let (status, issued) = admin(
        &http,
        &replica,
        reqwest::Method::POST,
        "/admin/v1/tenants/alpha/tokens",
        None,
    )
    .await;
    assert_eq!(status, 201);
    let signature = issued["token"]
        .as_str()
        .expect("token")
        .rsplit('.')
        .next()
        .expect("jwt")
        .to_string();
    // Only the token's id is stored, never the token.
    let pool = sqlx::postgres::PgPool::connect(&postgres.url)
        .await
        .expect("connect");
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, description FROM tokens")
        .fetch_all(&pool)
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM tokens t")
        .fetch_one(&pool)
        .await
        .expect("dump");
    assert!(!dump.contains(&signature));
    let (status, _) = admin(
        &http,
        &replica,
        reqwest::Method::DELETE,
        "/admin/v1/tenants/alpha",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, listed) = admin(
        &http,
        &replica,
        reqwest::Method::GET,
        "/admin/v1/tenants",
        None,
    )
    .await;
    assert_eq!((status, listed["tenants"].clone()), (200, json!([])));
}

/// Sends 100-sample writes every 20 ms (5000 samples/s, over any share below) to every
/// replica at once for `seconds`; returns the samples each accepted.
async fn accepted_samples(
    http: &reqwest::Client,
    replicas: &[&PromgateBinary],
    token: &str,
    seconds: u64,
) -> Vec<u64> {
    let body = bytes::Bytes::from(common::snappy_body(&promgate::proto::WriteRequest {
        timeseries: (0..100)
            .map(|i| {
                common::series(
                    &[("__name__", "shared_rate"), ("i", &i.to_string())],
                    1.0,
                    common::now_ms(),
                )
            })
            .collect(),
        metadata: vec![],
    }));
    let mut tasks = Vec::new();
    for replica in replicas {
        let (http, url, token, body) = (
            http.clone(),
            replica.write_url(),
            token.to_string(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            let mut accepted = 0;
            while Instant::now() < until {
                ticks.tick().await;
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("Content-Encoding", "snappy")
                    .body(body.clone())
                    .send()
                    .await;
                if response.is_ok_and(|response| response.status() == 204) {
                    accepted += 100;
                }
            }
            accepted
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.expect("join"));
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_rate_is_shared_among_the_live_replicas() {
    let Cluster {
        postgres: _postgres,
        mut replicas,
        _backend,
        _dirs,
        ..
    } = Cluster::start(3).await;
    let http = reqwest::Client::new();
    let limits =
        json!({"samples_per_second": 3000, "burst_samples": 1000, "requests_per_second": 100000});
    let (status, _) = admin(
        &http,
        &replicas[0],
        reqwest::Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "alpha", "limits": limits})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, issued) = admin(
        &http,
        &replicas[0],
        reqwest::Method::POST,
        "/admin/v1/tenants/alpha/tokens",
        None,
    )
    .await;
    let token = issued["token"].as_str().expect("token").to_string();
    until_all(&http, &replicas, &token, 204).await;
    // Let every replica count the others (heartbeats every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let seconds = 4;
    let three =
        accepted_samples(&http, &replicas.iter().collect::<Vec<_>>(), &token, seconds).await;
    // Each replica: its share of 1000/s over the window, plus at most one burst.
    println!(
        "replicas: 3 live, global 3000 samples/s: accepted per replica in {seconds} s: {three:?}"
    );
    for accepted in &three {
        assert!(
            (3000..=6000).contains(accepted),
            "with 3 replicas each should take ≈1000/s: {three:?}"
        );
    }
    let mut stopped = replicas.pop().expect("third replica");
    assert!(stopped.process.terminate(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let two = accepted_samples(&http, &replicas.iter().collect::<Vec<_>>(), &token, seconds).await;
    println!(
        "replicas: 2 live, global 3000 samples/s: accepted per replica in {seconds} s: {two:?}"
    );
    for accepted in &two {
        assert!(
            (5000..=8000).contains(accepted),
            "with 2 replicas each should take ≈1500/s: {two:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_admin_writes_through_two_replicas_never_lose_a_change() {
    let cluster = Cluster::start(2).await;
    let endpoints: Vec<AdminEndpoint> = cluster
        .replicas
        .iter()
        .map(|replica| AdminEndpoint::new(&replica.admin_url, &replica.admin_token))
        .collect();
    let (first, second) = (&endpoints[0], &endpoints[1]);
    let (status, body) = first
        .call(
            reqwest::Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "alpha"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    until_every_replica_shows(&[first, second], "alpha", "created", |tenant| {
        tenant["id"] == "alpha"
    })
    .await;
    simultaneous_patches_keep_both_changes(first, second, "alpha", 15).await;
    simultaneous_creates_share_no_label_value(first, second, 10).await;
}
