//! Queries built to crash or stall promgate (SECURITY.md T23), sent to the promgate
//! binary with a fake query backend: deep nesting, long operator chains, a duration the
//! parser would panic on, regexes over their budgets. Each is a 400 with a reason, the
//! process lives on, and a query at the nesting bound still works (the parse threads'
//! stack holds it, in this debug build too).

mod common;

use common::query::{ask, fake_query_backend};

use std::sync::atomic::Ordering;

use common::binary::PromgateBinary;
use promgate::query::guard::{MAX_QUERY_BYTES, MAX_QUERY_NESTING, MAX_QUERY_REGEX_BYTES};
use serde_json::json;

async fn start(root: &std::path::Path, backend: &str) -> PromgateBinary {
    PromgateBinary::start(
        root,
        "",
        &format!(
            "[[backends]]\nname = \"q\"\nwrite_url = \"{backend}/api/v1/write\"\nquery_url = \"{backend}\"\ntimeout = \"5s\"\n"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_queries_are_refused_and_the_process_lives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, seen) = fake_query_backend().await;
    let mut relay = start(dir.path(), &backend).await;
    let token = relay.add_tenant("alpha", json!({})).await;

    let minus = format!("{}up", "-".repeat(10_000));
    let parens = format!("{}up{}", "(".repeat(7_500), ")".repeat(7_500));
    let sum = vec!["up"; 10_000].join("+");
    let minus_error = "-".repeat(40_000);
    let huge_minus = format!("{}up", "-".repeat(100_000));
    let too_long = format!("up{{a=\"{}\"}}", "x".repeat(MAX_QUERY_BYTES));
    let regex_heavy = format!(
        "up{{a=~\"{}\"}}",
        (0..MAX_QUERY_REGEX_BYTES / 8 + 10)
            .map(|i| format!("v{i:06}"))
            .collect::<Vec<_>>()
            .join("|")
    );
    let expressions: Vec<&str> = vec![
        &minus,
        &parens,
        &sum,
        &minus_error,
        &too_long,
        &regex_heavy,
        "rate(up[25e00150])",
        "up offset 1e300",
        r#"up{a=~"(x{1000}){1000}"}"#,
    ];
    for path in [
        "/api/v1/query",
        "/api/v1/query_range",
        "/api/v1/query_exemplars",
    ] {
        for expression in &expressions {
            let mut form = vec![("query", *expression)];
            if path != "/api/v1/query" {
                form.extend([("start", "1"), ("end", "2"), ("step", "1")]);
            }
            let (status, body) = ask(&relay, &token, path, &form).await;
            assert_eq!(
                status,
                400,
                "{path} with {}…: {body}",
                &expression[..expression.len().min(40)]
            );
            assert_eq!(body["errorType"], "bad_data", "{body}");
            assert!(!body["error"].as_str().unwrap_or_default().is_empty());
        }
    }
    for selector in [huge_minus.as_str(), parens.as_str(), "{a=~\"(\"}"] {
        let (status, body) = ask(&relay, &token, "/api/v1/series", &[("match[]", selector)]).await;
        assert_eq!(status, 400, "series: {body}");
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "nothing refused reached the backend"
    );
    relay.process.assert_running();

    // At the bound: as deep as allowed, parsed, scoped and forwarded.
    let deepest_minus = format!("{}up", "-".repeat(MAX_QUERY_NESTING - 1));
    let deepest_parens = format!(
        "{}up{}",
        "(".repeat(MAX_QUERY_NESTING - 1),
        ")".repeat(MAX_QUERY_NESTING - 1)
    );
    let longest_sum = vec!["up"; MAX_QUERY_NESTING].join("+");
    for expression in [&deepest_minus, &deepest_parens, &longest_sum] {
        let (status, body) = ask(&relay, &token, "/api/v1/query", &[("query", expression)]).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = ask(
        &relay,
        &token,
        "/api/v1/query",
        &[("query", "sum(rate(up[5m]))")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen.load(Ordering::SeqCst), 4);
    relay.process.assert_running();
}
