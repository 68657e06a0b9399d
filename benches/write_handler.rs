//! The whole write handler: the data router driven with `oneshot` (no socket on the way
//! in), token authentication, limits, the zero-copy codec, and the forward to a no-op
//! backend on loopback that reads the body and answers 204. Beside it, in the same run,
//! the floor of the same HTTP stack: an axum route that only reads the body and answers
//! 204. 20 captured Prometheus 2.42 bodies (2000 samples each) per iteration, on a
//! single-threaded runtime, so the figures are one core's.
//!
//! Run: `cargo bench --bench write_handler`

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::BodyExt;
use promgate::config::Config;
use tower::ServiceExt;

mod common;

const SAMPLES_PER_BODY: u64 = 2000;

fn bodies() -> Vec<Bytes> {
    common::captured_bodies()
        .into_iter()
        .map(Bytes::from)
        .collect()
}

fn write_request(body: Bytes, token: &str) -> Request<Body> {
    Request::post("/api/v1/write")
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .header("user-agent", "Prometheus/2.42.0")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body))
        .expect("request")
}

/// Reads the body and answers 204: the no-op backend, and the HTTP floor.
fn sink() -> Router {
    Router::new().route(
        "/api/v1/write",
        post(|body: Bytes| async move {
            std::hint::black_box(body.len());
            StatusCode::NO_CONTENT
        }),
    )
}

async fn admin_call(
    admin: &Router,
    admin_token: &str,
    path: &str,
    json: &str,
) -> serde_json::Value {
    let response = admin
        .clone()
        .oneshot(
            Request::post(path)
                .header("authorization", format!("Bearer {admin_token}"))
                .header("content-type", "application/json")
                .body(Body::from(json.to_string()))
                .expect("request"),
        )
        .await
        .expect("admin");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}

/// promgate's data router with tenant `alpha`, its backend a no-op sink; and a token.
async fn relay(dir: &std::path::Path) -> (Router, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sink_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, sink()).await });
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         token_file = \"{dir}/admin.token\"\n[storage]\ndatabase_url = \"sqlite://{dir}/promgate.db\"\n\
         [auth.tokens]\nsigning_key_file = \"{dir}/signing.key\"\n\
         [limits]\nsamples_per_second = 1000000000\nburst_samples = 1000000000\nrequests_per_second = 1000000000\n\
         [[backends]]\nname = \"sink\"\nwrite_url = \"http://{sink_addr}/api/v1/write\"\n",
        dir = dir.display()
    );
    let config = Config::from_toml_str(&text, &BTreeMap::new()).expect("config");
    let state = promgate::build_state(config).await.expect("state");
    let admin = promgate::admin::admin_router(state.clone());
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).expect("admin token");
    let admin_token = admin_token.trim();
    admin_call(
        &admin,
        admin_token,
        "/admin/v1/tenants",
        r#"{"id": "alpha"}"#,
    )
    .await;
    let issued = admin_call(&admin, admin_token, "/admin/v1/tenants/alpha/tokens", "{}").await;
    let token = issued["token"].as_str().expect("token").to_string();
    (promgate::server::data_router(state), token)
}

async fn send_all(router: &Router, bodies: &[Bytes], token: &str) {
    for body in bodies {
        let response = router
            .clone()
            .oneshot(write_request(body.clone(), token))
            .await
            .expect("infallible");
        if response.status() != StatusCode::NO_CONTENT {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            panic!("{status}: {}", String::from_utf8_lossy(&body));
        }
    }
}

fn write_handler(c: &mut Criterion) {
    let bodies = bodies();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (router, token) = runtime.block_on(relay(dir.path()));
    let floor = sink();
    let mut group = c.benchmark_group("write_handler");
    group.throughput(Throughput::Elements(SAMPLES_PER_BODY * bodies.len() as u64));
    group.bench_function("baseline_read_body_204", |b| {
        b.iter(|| runtime.block_on(send_all(&floor, &bodies, &token)))
    });
    group.bench_function("promgate_write_handler", |b| {
        b.iter(|| runtime.block_on(send_all(&router, &bodies, &token)))
    });
    group.finish();
}

criterion_group!(benches, write_handler);
criterion_main!(benches);
