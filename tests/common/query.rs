//! A fake query backend and the query API requests the query tests send.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::binary::PromgateBinary;

/// A query backend that answers every request with an empty vector and counts them.
pub async fn fake_query_backend() -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let router = Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": []}}))
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (url, seen)
}

pub async fn ask(
    relay: &PromgateBinary,
    token: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let response = relay
        .http
        .post(format!("{}{path}", relay.data_url))
        .bearer_auth(token)
        .form(form)
        .send()
        .await
        .expect("promgate answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}
