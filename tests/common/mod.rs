//! Shared test harness: promgate started in-process on port 0, recording fake
//! backends, admin API helpers and request builders.

#![allow(dead_code)]

pub mod binary;
pub mod concurrency;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod protobuf_gen;
pub mod query;
pub mod stack;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use promgate::config::Config;
use promgate::proto::{
    Label, QueryResult, ReadRequest, ReadResponse, Sample, TimeSeries, WriteRequest,
};
use prost::Message;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One request a fake backend received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the fake backend answered.
    pub status: u16,
}

impl Recorded {
    pub fn write_request(&self) -> WriteRequest {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&self.body)
            .expect("backend got snappy");
        WriteRequest::decode(raw.as_slice()).expect("backend got a WriteRequest")
    }
}

/// A remote-write receiver that records every request and answers with a settable status.
pub struct FakeBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Recorded>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    v2_counts: Arc<AtomicBool>,
    tenant_status: Arc<Mutex<BTreeMap<String, u16>>>,
    max_body_bytes: Arc<AtomicU64>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone)]
struct FakeState {
    received: Arc<Mutex<Vec<Recorded>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    v2_counts: Arc<AtomicBool>,
    /// Answers for one tenant (by the `X-Scope-OrgID` header), before `status`.
    tenant_status: Arc<Mutex<BTreeMap<String, u16>>>,
    /// Bodies larger than this (compressed) are answered 413 (0: any size).
    max_body_bytes: Arc<AtomicU64>,
}

/// The header a fake backend reads the tenant from for per-tenant answers.
pub const FAKE_TENANT_HEADER: &str = "X-Scope-OrgID";

/// Samples, histograms and exemplars of a snappy remote write 2.0 body.
fn written_v2(body: &[u8]) -> (u64, u64, u64) {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .expect("v2 body is snappy");
    let request = promgate::proto::write_v2::Request::decode(raw.as_slice()).expect("a v2 Request");
    request
        .timeseries
        .iter()
        .fold((0, 0, 0), |(s, h, e), series| {
            (
                s + series.samples.len() as u64,
                h + series.histograms.len() as u64,
                e + series.exemplars.len() as u64,
            )
        })
}

impl FakeBackend {
    pub async fn start() -> FakeBackend {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(204));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let v2_counts = Arc::new(AtomicBool::new(true));
        let tenant_status = Arc::new(Mutex::new(BTreeMap::new()));
        let max_body_bytes = Arc::new(AtomicU64::new(0));
        let state = FakeState {
            max_body_bytes: Arc::clone(&max_body_bytes),
            received: Arc::clone(&received),
            status: Arc::clone(&status),
            delay_ms: Arc::clone(&delay_ms),
            v2_counts: Arc::clone(&v2_counts),
            tenant_status: Arc::clone(&tenant_status),
        };
        let router = Router::new()
            .route("/api/v1/write", post(record))
            .route("/api/v1/read", post(answer_read))
            .route("/api/v1/query", get(answer_query).post(answer_query))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeBackend {
            addr,
            received,
            status,
            delay_ms,
            v2_counts,
            tenant_status,
            max_body_bytes,
            _stop: stop,
        }
    }

    /// Answers 413 to write bodies over `bytes` (as received, compressed), as Thanos,
    /// Mimir and nginx-fronted receivers do above their request caps.
    pub fn refuse_bodies_over(&self, bytes: u64) {
        self.max_body_bytes.store(bytes, Ordering::SeqCst);
    }

    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Its remote-read endpoint: an empty SAMPLES answer per query, after the delay.
    pub fn read_url(&self) -> String {
        format!("http://{}/api/v1/read", self.addr)
    }

    /// Makes every answer wait this long.
    pub fn delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Whether 2.0 answers carry the written counts (a 1.0-only receiver's do not).
    pub fn report_v2_counts(&self, report: bool) {
        self.v2_counts.store(report, Ordering::SeqCst);
    }

    pub fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Answers `status` to requests whose `X-Scope-OrgID` is `tenant` (`None`: as the
    /// others again), as Mimir answers 429 to one tenant over its limits.
    pub fn answer_tenant_with(&self, tenant: &str, status: Option<u16>) {
        let mut by_tenant = self.tenant_status.lock().expect("lock");
        match status {
            Some(status) => by_tenant.insert(tenant.to_string(), status),
            None => by_tenant.remove(tenant),
        };
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().expect("lock").clone()
    }
}

async fn record(
    State(state): State<FakeState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let is_v2 = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("io.prometheus.write.v2.Request"));
    let written = is_v2.then(|| written_v2(&body));
    let tenant_status = headers
        .get(FAKE_TENANT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|tenant| {
            state
                .tenant_status
                .lock()
                .expect("lock")
                .get(tenant)
                .copied()
        });
    let status = tenant_status.unwrap_or_else(|| state.status.load(Ordering::SeqCst));
    let max_body_bytes = state.max_body_bytes.load(Ordering::SeqCst);
    let status = if max_body_bytes > 0 && body.len() as u64 > max_body_bytes {
        413
    } else {
        status
    };
    let status = StatusCode::from_u16(status).expect("status");
    state.received.lock().expect("lock").push(Recorded {
        headers,
        body,
        status: status.as_u16(),
    });
    let mut response_headers = HeaderMap::new();
    // A 2.0 receiver says what it wrote (unless told to behave like a 1.0-only one).
    if let (Some((samples, histograms, exemplars)), true) = (
        written,
        state.v2_counts.load(Ordering::SeqCst) && status.is_success(),
    ) {
        for (name, count) in [
            ("x-prometheus-remote-write-samples-written", samples),
            ("x-prometheus-remote-write-histograms-written", histograms),
            ("x-prometheus-remote-write-exemplars-written", exemplars),
        ] {
            response_headers.insert(name, count.into());
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        response_headers.insert("retry-after", "11".parse().expect("value"));
    }
    let body = if status.is_success() {
        String::new()
    } else {
        format!("fake backend says {}\nsecond line", status.as_u16())
    };
    (status, response_headers, body)
}

/// An instant query's answer of a Prometheus query API: an empty vector.
async fn answer_query() -> (StatusCode, HeaderMap, String) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("value"));
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    (StatusCode::OK, headers, body.to_string())
}

/// A remote-read answer with one empty result per query (after the set delay).
async fn answer_read(
    State(state): State<FakeState>,
    body: Bytes,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("read request is snappy");
    let request = ReadRequest::decode(raw.as_slice()).expect("a ReadRequest");
    let response = ReadResponse {
        results: vec![QueryResult::default(); request.queries.len()],
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "application/x-protobuf".parse().expect("value"),
    );
    headers.insert("content-encoding", "snappy".parse().expect("value"));
    let encoded = snap::raw::Encoder::new()
        .compress_vec(&response.encode_to_vec())
        .expect("compress");
    (StatusCode::OK, headers, encoded)
}

/// A SAMPLES remote-read request for `{__name__="up"}` plus `matchers` over the last hour.
pub fn read_body(matchers: Vec<promgate::proto::LabelMatcher>) -> Vec<u8> {
    let now = now_ms();
    let mut all = vec![promgate::proto::LabelMatcher {
        r#type: 0,
        name: "__name__".into(),
        value: "up".into(),
    }];
    all.extend(matchers);
    let request = ReadRequest {
        queries: vec![promgate::proto::Query {
            start_timestamp_ms: now - 3_600_000,
            end_timestamp_ms: now,
            matchers: all,
            hints: None,
        }],
        accepted_response_types: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("compress")
}

/// promgate running in this process on loopback port 0, with its data in a temp dir.
pub struct Relay {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The PostgreSQL server of a relay started on `Engine::Postgres`.
    _postgres: Option<postgres::Postgres>,
}

/// The registry database a test relay runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    /// A fresh PostgreSQL server of its own.
    Postgres,
}

impl Relay {
    /// Starts promgate with `extra_toml` appended to a config that points storage and
    /// secrets into a fresh temp dir. `extra_toml` usually holds `[[backends]]`.
    pub async fn start(extra_toml: &str) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        Relay::start_in(dir, extra_toml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra_toml: &str) -> Relay {
        Relay::start_with(dir, "", 1000, extra_toml).await
    }

    /// As `start_in`, allowing `failures` failed admin authentications a minute per address.
    pub async fn start_with_admin_limit(
        dir: tempfile::TempDir,
        extra_toml: &str,
        failures: u32,
    ) -> Relay {
        Relay::start_with(dir, "", failures, extra_toml).await
    }

    /// With `server_toml` lines added to `[server]` (timeouts, caps).
    pub async fn start_with_server(server_toml: &str, extra_toml: &str) -> Relay {
        Relay::start_with(
            tempfile::tempdir().expect("tempdir"),
            server_toml,
            1000,
            extra_toml,
        )
        .await
    }

    /// On the given registry engine, allowing `failures` failed admin authentications a
    /// minute per address.
    pub async fn start_on(engine: Engine, failures: u32, extra_toml: &str) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        match engine {
            Engine::Sqlite => Relay::start_with(dir, "", failures, extra_toml).await,
            Engine::Postgres => {
                let postgres = postgres::Postgres::start().await;
                let mut relay =
                    Relay::start_with_database(dir, "", failures, &postgres.url, extra_toml).await;
                relay._postgres = Some(postgres);
                relay
            }
        }
    }

    /// On the registry at `database_url` (which other relays may share), with its
    /// secrets in a fresh temp dir.
    pub async fn start_on_database(database_url: &str, extra_toml: &str) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        Relay::start_with_database(dir, "", 1000, database_url, extra_toml).await
    }

    /// This relay's admin API, for the helpers that drive several replicas.
    pub fn admin_endpoint(&self) -> concurrency::AdminEndpoint {
        concurrency::AdminEndpoint::new(&self.admin_url(""), &self.admin_token)
    }

    async fn start_with(
        dir: tempfile::TempDir,
        server_toml: &str,
        failures: u32,
        extra_toml: &str,
    ) -> Relay {
        let database_url = format!("sqlite://{}/promgate.db", dir.path().display());
        Relay::start_with_database(dir, server_toml, failures, &database_url, extra_toml).await
    }

    async fn start_with_database(
        dir: tempfile::TempDir,
        server_toml: &str,
        failures: u32,
        database_url: &str,
        extra_toml: &str,
    ) -> Relay {
        let admin_toml = format!("auth_failures_per_minute = {failures}");
        Relay::start_configured(dir, server_toml, &admin_toml, database_url, extra_toml, &[]).await
    }

    /// With `server_toml` lines added to `[server]` and `admin_toml` lines to `[admin]`.
    /// When the admin listener expects a PROXY protocol header, `admin_prefix` is the
    /// header the harness sends before each of its own admin requests (use
    /// `raw_request` then, as HTTP clients send no such header).
    pub async fn start_with_sections(
        server_toml: &str,
        admin_toml: &str,
        extra_toml: &str,
        admin_prefix: &[u8],
    ) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = format!("sqlite://{}/promgate.db", dir.path().display());
        Relay::start_configured(
            dir,
            server_toml,
            admin_toml,
            &database_url,
            extra_toml,
            admin_prefix,
        )
        .await
    }

    async fn start_configured(
        dir: tempfile::TempDir,
        server_toml: &str,
        admin_toml: &str,
        database_url: &str,
        extra_toml: &str,
        admin_prefix: &[u8],
    ) -> Relay {
        // Secrets always in the temp dir (with PostgreSQL they would default to the
        // working directory).
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_toml}\ntoken_file = \"{dir}/promgate-admin.token\"\n[storage]\ndatabase_url = \"{database_url}\"\n[auth.tokens]\nsigning_key_file = \"{dir}/promgate-signing.key\"\n{extra_toml}",
            dir = dir.path().display()
        );
        let config = Config::from_toml_str(&text, &BTreeMap::new()).expect("test config is valid");
        let listeners = promgate::bind(&config).await.expect("bind");
        let data_addr = listeners.data.local_addr().expect("addr");
        let admin_addr = listeners.admin.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(promgate::run(listeners, config, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let token_path = dir.path().join("promgate-admin.token");
        let mut relay = Relay {
            data_addr,
            admin_addr,
            admin_token: String::new(),
            dir,
            http,
            stop: Some(stop),
            task: Some(task),
            _postgres: None,
        };
        for _ in 0..200 {
            let ready = if admin_prefix.is_empty() {
                let ready = relay.http.get(relay.admin_url("/-/ready")).send().await;
                ready.is_ok_and(|r| r.status() == 200)
            } else {
                let request = "GET /-/ready HTTP/1.1\r\nHost: promgate\r\n\r\n";
                raw_request(relay.admin_addr, admin_prefix, request.as_bytes())
                    .await
                    .is_some_and(|(status, _)| status == 200)
            };
            if ready {
                relay.admin_token = std::fs::read_to_string(&token_path)
                    .expect("admin token")
                    .trim()
                    .into();
                return relay;
            }
            if relay.task.as_ref().is_some_and(|task| task.is_finished()) {
                let ended = relay.task.take().expect("task").await;
                panic!("promgate ended before it became ready: {ended:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("promgate did not become ready");
    }

    /// Stops serving and waits for the server to finish; keeps the temp dir.
    pub async fn stop(&mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("promgate ran cleanly");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.data_addr)
    }

    /// An admin API call with the admin token; returns status and JSON (Null when empty).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.admin_url(path))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// As `admin`, with extra request headers; also returns the response headers.
    pub async fn admin_with_headers(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .request(method, self.admin_url(path))
            .bearer_auth(&self.admin_token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let response_headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value, response_headers)
    }

    pub async fn create_tenant(&self, spec: Value) {
        let (status, body) = self
            .admin(reqwest::Method::POST, "/admin/v1/tenants", Some(spec))
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Issues a token for `tenant`; returns (token id, secret).
    pub async fn issue_token(&self, tenant: &str) -> (String, String) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/v1/tenants/{tenant}/tokens"),
                Some(json!({"description": "test"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().expect("id").to_string(),
            body["token"].as_str().expect("token").to_string(),
        )
    }

    /// Creates tenant `id` and returns a token for it.
    pub async fn tenant_with_token(&self, id: &str) -> String {
        self.create_tenant(json!({ "id": id })).await;
        self.issue_token(id).await.1
    }

    /// The `/metrics` text of the admin listener.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// POSTs a snappy body as Prometheus does.
    pub async fn write(&self, token: &str, body: Vec<u8>) -> reqwest::Response {
        self.write_request(token, body)
            .send()
            .await
            .expect("write request")
    }

    pub fn read_url(&self) -> String {
        format!("http://{}/api/v1/read", self.data_addr)
    }

    /// A remote-read POST with Prometheus' headers.
    pub fn read_request(&self, token: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.http
            .post(self.read_url())
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Read-Version", "0.1.0")
            .body(body)
    }

    /// A remote-write POST with Prometheus' headers, to add to before sending.
    pub fn write_request(&self, token: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.http
            .post(self.write_url())
            .bearer_auth(token)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `[[backends]]` blocks for fake backends with their read URLs, named b0, b1, …
pub fn read_backends_toml(backends: &[&FakeBackend]) -> String {
    backends
        .iter()
        .enumerate()
        .map(|(index, backend)| {
            format!(
                "[[backends]]\nname = \"b{index}\"\nwrite_url = \"{}\"\nread_url = \"{}\"\ntimeout = \"5s\"\n",
                backend.write_url(),
                backend.read_url()
            )
        })
        .collect()
}

/// Sends `prefix` (a PROXY protocol header, or nothing) and then one HTTP/1.1 request
/// on a fresh connection, which is closed after the answer. Returns the status and
/// body, or `None` when the connection closed without an answer.
pub async fn raw_request(addr: SocketAddr, prefix: &[u8], request: &[u8]) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    // Ask the server to close after answering, so the answer ends at end of stream.
    let request =
        String::from_utf8_lossy(request).replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    stream.write_all(prefix).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .ok()?;
    // A connection the server closed with unread bytes may end in a reset.
    if read.is_err() && answer.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// `[[backends]]` blocks for fake backends, named b0, b1, …
pub fn backends_toml(backends: &[&FakeBackend]) -> String {
    backends
        .iter()
        .enumerate()
        .map(|(index, backend)| {
            format!(
                "[[backends]]\nname = \"b{index}\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\n",
                backend.write_url()
            )
        })
        .collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

pub fn series(labels: &[(&str, &str)], value: f64, timestamp: i64) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(name, value)| Label {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect(),
        samples: vec![Sample { value, timestamp }],
        ..TimeSeries::default()
    }
}

pub fn snappy_body(request: &WriteRequest) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("compress")
}

/// A one-series request `{__name__="up", job="test", ...extra}` at now.
pub fn simple_body(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut labels = vec![("__name__", "up"), ("job", "test")];
    labels.extend_from_slice(extra);
    snappy_body(&WriteRequest {
        timeseries: vec![series(&labels, 1.0, now_ms())],
        metadata: vec![],
    })
}

pub fn label_value<'a>(series: &'a TimeSeries, name: &str) -> Vec<&'a str> {
    series
        .labels
        .iter()
        .filter(|label| label.name == name)
        .map(|label| label.value.as_str())
        .collect()
}
