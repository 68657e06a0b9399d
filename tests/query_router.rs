//! The query API's request and answer handling against a recording fake backend
//! (DESIGN §13): what reaches the backend (promgate's own request from the scoped
//! parameters only, promgate's headers only), what comes back (foreign series dropped and
//! counted, errors in Prometheus' shape), the tenant's query slots and timeout, and mTLS
//! client certificates as the credential.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use common::pki::{ca, leaf, server_leaf, uri, LeafSpec};
use common::Relay;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One request the fake query backend received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct FakeQuery {
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<(u16, String)>>,
    delay: Arc<Mutex<Duration>>,
}

impl FakeQuery {
    async fn start() -> (FakeQuery, String) {
        let fake = FakeQuery {
            seen: Arc::default(),
            answer: Arc::new(Mutex::new((200, success(json!([]))))),
            delay: Arc::default(),
        };
        let router = Router::new().fallback(record).with_state(fake.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (fake, url)
    }

    fn answer(&self, status: u16, body: String) {
        *self.answer.lock().expect("lock") = (status, body);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn record(State(fake): State<FakeQuery>, request: Request) -> impl IntoResponse {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    fake.seen.lock().expect("lock").push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    });
    let delay = *fake.delay.lock().expect("lock");
    tokio::time::sleep(delay).await;
    let (status, mut body) = fake.answer.lock().expect("lock").clone();
    // The default list answer, as a query answers it.
    let queries =
        parts.uri.path().ends_with("/query") || parts.uri.path().ends_with("/query_range");
    if queries && body == success(json!([])) {
        body = success(json!({"resultType": "vector", "result": []}));
    }
    (
        StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        body,
    )
}

fn success(data: Value) -> String {
    json!({"status": "success", "data": data}).to_string()
}

fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

async fn relay_with(fake_url: &str, server_toml: &str) -> Relay {
    Relay::start_with_server(
        server_toml,
        &format!(
            "[[backends]]\nname = \"q\"\nwrite_url = \"{fake_url}/api/v1/write\"\nquery_url = \"{fake_url}/prefix\"\ntenant_header = \"X-Scope-OrgID\"\ntimeout = \"5s\"\n"
        ),
    )
    .await
}

#[tokio::test]
async fn the_backend_gets_promgates_own_request_from_scoped_parameters() {
    let (fake, url) = FakeQuery::start().await;
    let relay = relay_with(&url, "").await;
    let token = relay.tenant_with_token("alpha").await;
    let response = relay
        .http
        .post(format!(
            "http://{}/api/v1/query_range?start=1&end=2",
            relay.data_addr
        ))
        .bearer_auth(&token)
        .header("X-Scope-OrgID", "beta")
        .header("Cookie", "session=secret")
        .form(&[
            ("query", r#"sum(rate(up{tenant_id="beta"}[5m]))"#),
            ("step", "15"),
            ("tenant", "beta"),
            ("dedup", "false"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/prefix/api/v1/query_range")
    );
    assert_eq!(
        request.query, None,
        "parameters go in promgate's form body only"
    );
    assert_eq!(
        form_pairs(&request.body),
        vec![
            (
                "query".to_string(),
                r#"sum(rate(up{tenant_id="alpha"}[5m]))"#.to_string()
            ),
            ("start".into(), "1".into()),
            ("end".into(), "2".into()),
            ("step".into(), "15".into()),
            ("timeout".into(), "120".into()),
        ]
    );
    // promgate's headers only: its tenant header, no client credential or cookie.
    assert_eq!(request.headers["x-scope-orgid"], "alpha");
    assert!(request.headers.get("authorization").is_none());
    assert!(request.headers.get("cookie").is_none());

    // Label values: a GET, with the tenant's selector when the client sent none.
    let response = relay
        .http
        .get(format!(
            "http://{}/api/v1/label/job/values",
            relay.data_addr
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let request = fake.seen().pop().expect("seen");
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/prefix/api/v1/label/job/values");
    assert_eq!(
        form_pairs(request.query.as_deref().unwrap_or_default().as_bytes()),
        vec![("match[]".to_string(), r#"{tenant_id="alpha"}"#.to_string())]
    );
}

#[tokio::test]
async fn foreign_series_are_dropped_and_counted_and_errors_keep_prometheus_shape() {
    let (fake, url) = FakeQuery::start().await;
    let relay = relay_with(&url, "").await;
    let token = relay.tenant_with_token("alpha").await;
    let query = |relay: &Relay| {
        relay
            .http
            .get(format!("http://{}/api/v1/query", relay.data_addr))
            .query(&[("query", "up")])
            .bearer_auth(&token)
            .send()
    };
    // A backend that ignores the matcher.
    fake.answer(
        200,
        success(json!({"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "tenant_id": "alpha"}, "value": [1, "1"]},
            {"metric": {"__name__": "up", "tenant_id": "beta"}, "value": [1, "2"]},
        ]})),
    );
    let answer: Value = query(&relay)
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(
        answer["data"]["result"],
        json!([{"metric": {"__name__": "up"}, "value": [1, "1"]}])
    );
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains(
            r#"promgate_read_foreign_series_dropped_total{tenant="alpha",backend="q"} 1"#
        ),
        "{metrics}"
    );

    // The backend's own JSON error passes with its status.
    let error = json!({"status": "error", "errorType": "execution", "error": "query processing would load too many samples"});
    fake.answer(422, error.to_string());
    let response = query(&relay).await.expect("query");
    assert_eq!(response.status(), 422);
    assert_eq!(response.json::<Value>().await.expect("json"), error);

    // promgate's credentials or path refused: our misconfiguration.
    fake.answer(404, "404 page not found".into());
    let response = query(&relay).await.expect("query");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        (body["status"].as_str(), body["errorType"].as_str()),
        (Some("error"), Some("internal"))
    );

    // A plain-text 5xx: unavailable, with Retry-After.
    fake.answer(500, "boom".into());
    let response = query(&relay).await.expect("query");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errorType"], "unavailable");

    // Not a Prometheus answer at all.
    fake.answer(200, "<html>".into());
    assert_eq!(query(&relay).await.expect("query").status(), 502);
}

#[tokio::test]
async fn query_slots_and_timeout_hold_one_tenant_without_touching_another() {
    let (fake, url) = FakeQuery::start().await;
    let relay = relay_with(&url, "").await;
    let alpha = relay.tenant_with_token("alpha").await;
    let beta = relay.tenant_with_token("beta").await;
    relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"limits": {"max_concurrent_queries": 1, "max_queued_queries": 0, "query_timeout": "1s"}})),
        )
        .await;
    *fake.delay.lock().expect("lock") = Duration::from_secs(3);
    let send = |token: String| {
        let http = relay.http.clone();
        let url = format!("http://{}/api/v1/query", relay.data_addr);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .get(url)
                .query(&[("query", "up")])
                .bearer_auth(token)
                .send()
                .await
                .expect("request");
            (response.status().as_u16(), started.elapsed())
        })
    };
    let first = send(alpha.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Alpha's one slot is taken and it may queue none: throttled at once.
    let (status, _) = send(alpha.clone()).await.expect("join");
    assert_eq!(status, 429);
    // Beta has slots of its own.
    let other = send(beta);
    // Alpha's query runs into its 1 s timeout: 503, long before the backend's 3 s.
    let (status, elapsed) = first.await.expect("join");
    assert_eq!(status, 503);
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    let (status, elapsed) = other.await.expect("join");
    assert_eq!(status, 200, "beta's query");
    assert!(elapsed >= Duration::from_secs(3));
}

#[tokio::test]
async fn a_client_certificate_is_a_credential_for_the_query_api() {
    let (fake, url) = FakeQuery::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("query client CA");
    let server = server_leaf(&ca);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let server_toml = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nclient_auth = \"optional\"\n",
        write("server.pem", &server.pem).display(),
        write("server.key", &server.key_pem).display(),
        write("ca.pem", &ca.pem).display(),
    );
    let relay = relay_with(&url, &server_toml).await;
    relay
        .create_tenant(json!({"id": "alpha", "identities": ["spiffe://example.org/alpha"]}))
        .await;
    let client_leaf = leaf(
        &ca,
        LeafSpec::client(vec![uri("spiffe://example.org/alpha")], 7),
    );
    let client = |identity: bool| {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("ca"));
        if identity {
            let pem = format!("{}{}", client_leaf.pem, client_leaf.key_pem);
            builder =
                builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
        }
        builder.build().expect("client")
    };
    let url = format!("https://127.0.0.1:{}/api/v1/series", relay.data_addr.port());
    let response = client(true)
        .get(&url)
        .query(&[("match[]", "up")])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let request = fake.seen().pop().expect("seen");
    assert_eq!(
        form_pairs(&request.body),
        vec![(
            "match[]".to_string(),
            r#"up{tenant_id="alpha"}"#.to_string()
        )]
    );
    // Without the certificate (and no token): 401 in Prometheus' error shape.
    let response = client(false).get(&url).send().await.expect("request");
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.expect("json")["status"],
        "error"
    );
    assert_eq!(fake.seen().len(), 1);
}
