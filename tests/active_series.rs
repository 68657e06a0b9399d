//! Active series limits (DESIGN §14): a series' identity is its labels as they reach the
//! backend, whichever write path produced them; and against a real Prometheus receiver
//! behind the promgate binary, a tenant at its limit gets 400 for new series while its
//! active series in the same request are written, other tenants, a per-tenant override
//! and 0 = unlimited are unaffected, and idle series expire and make room.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::stack::{series, value_of, Stack};
use promgate::codec::splice::{label_fields, rewrite_tracked, SeriesLog};
use promgate::codec::write::LabelPolicy;
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::{Label, Sample, TimeSeries, WriteRequest};
use promgate::series::{SeriesKey, SeriesSpan};
use prost::Message;
use serde_json::json;

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(name, value)| Label {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn identity_is_the_labels_as_written_whatever_path_wrote_them() {
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    let sample = Sample {
        value: 1.0,
        timestamp: now_ms(),
    };
    let request = WriteRequest {
        timeseries: vec![
            // Canonical: spliced on the zero-copy path.
            TimeSeries {
                labels: labels(&[("__name__", "m"), ("job", "a")]),
                samples: vec![sample],
                ..TimeSeries::default()
            },
            // Unsorted, and naming another tenant: written anew after enforcement.
            TimeSeries {
                labels: labels(&[("job", "a"), ("tenant_id", "beta"), ("__name__", "m")]),
                samples: vec![sample, sample],
                ..TimeSeries::default()
            },
            TimeSeries {
                labels: labels(&[("__name__", "m"), ("job", "b")]),
                samples: vec![sample],
                ..TimeSeries::default()
            },
        ],
        ..WriteRequest::default()
    };
    let key = SeriesKey::derive(b"test");
    let mut spans: Vec<SeriesSpan> = Vec::new();
    let mut out = Vec::new();
    let rewritten = rewrite_tracked(
        &request.encode_to_vec(),
        &policy,
        &Limits::default(),
        now_ms(),
        &mut out,
        Some(SeriesLog {
            key: &key,
            spans: &mut spans,
        }),
    )
    .expect("valid");
    assert_eq!(spans.len(), 3);
    assert_eq!(
        spans[0].identity, spans[1].identity,
        "same labels once enforced"
    );
    assert_ne!(spans[0].identity, spans[2].identity);
    // The identity is the hash of the label fields as written.
    for span in &spans {
        assert_eq!(
            span.identity,
            key.identity(label_fields(&out[span.start..span.end]))
        );
    }
    assert_eq!((spans[0].samples, spans[1].samples), (1, 2));
    assert_eq!(spans[2].end, rewritten.series_end);
    assert_eq!(spans[0].start, 0);
    assert_eq!(spans[0].end, spans[1].start);
    // Another key gives other identities.
    let mut other = Vec::new();
    rewrite_tracked(
        &request.encode_to_vec(),
        &policy,
        &Limits::default(),
        now_ms(),
        &mut out,
        Some(SeriesLog {
            key: &SeriesKey::derive(b"other"),
            spans: &mut other,
        }),
    )
    .expect("valid");
    assert_ne!(spans[0].identity, other[0].identity);
}

/// A remote write 1.0 body with series `metric{n="<i>"}` for `range`, one sample each.
fn body(range: std::ops::Range<u32>) -> Vec<u8> {
    let timestamp = now_ms();
    let request = WriteRequest {
        timeseries: range
            .map(|i| TimeSeries {
                labels: labels(&[("__name__", "limited_metric"), ("n", &format!("{i:04}"))]),
                samples: vec![Sample {
                    value: f64::from(i),
                    timestamp,
                }],
                ..TimeSeries::default()
            })
            .collect(),
        ..WriteRequest::default()
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

async fn write(stack: &Stack, token: &str, range: std::ops::Range<u32>) -> (u16, String) {
    let response = stack
        .http
        .post(stack.promgate.write_url())
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body(range))
        .send()
        .await
        .expect("promgate answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The `n` values of the tenant's series in the backend.
async fn stored(stack: &Stack, tenant: &str) -> BTreeSet<u32> {
    series(
        &stack.http,
        &stack.prometheus_url,
        &format!(r#"limited_metric{{tenant_id="{tenant}"}}"#),
    )
    .await
    .iter()
    .filter_map(|labels| value_of(labels, "n")?.parse().ok())
    .collect()
}

fn range_set(range: std::ops::Range<u32>) -> BTreeSet<u32> {
    range.collect()
}

async fn metric_value(stack: &Stack, line_start: &str) -> Option<f64> {
    stack
        .promgate
        .metrics()
        .await
        .lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_limit_gets_400_for_new_series_and_keeps_writing_active_ones() {
    let stack = Stack::start_configured(
        false,
        "",
        "",
        "[limits]\nmax_active_series = 120\nactive_series_idle_timeout = \"3s\"\n",
    )
    .await;
    let alpha = stack
        .promgate
        .add_tenant("alpha", json!({"max_active_series": 100}))
        .await;
    let beta = stack.promgate.add_tenant("beta", json!({})).await;
    let gamma = stack
        .promgate
        .add_tenant("gamma", json!({"max_active_series": 0}))
        .await;

    assert_eq!(write(&stack, &alpha, 0..80).await.0, 204);
    // 20 active, 60 new of which 20 fit: 40 refused, the rest written.
    let (status, reason) = write(&stack, &alpha, 60..140).await;
    assert_eq!(status, 400, "{reason}");
    assert!(
        reason.contains(
            "per-tenant active series limit of 100 reached: 40 of 60 series in this request are new and were refused"
        ),
        "{reason}"
    );
    // At the limit, a request of active series only is written whole.
    assert_eq!(write(&stack, &alpha, 0..100).await.0, 204);
    // The admin API's tenant answer carries the count and the limit.
    let tenant: serde_json::Value = stack
        .http
        .get(format!(
            "{}/admin/v1/tenants/alpha",
            stack.promgate.admin_url
        ))
        .bearer_auth(&stack.promgate.admin_token)
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(
        tenant["active_series"],
        json!({"active": 100, "limit": 100}),
        "{tenant}"
    );

    // Beta has the config default (120); gamma is unlimited.
    let (status, reason) = write(&stack, &beta, 0..140).await;
    assert_eq!(status, 400);
    assert!(
        reason.contains("limit of 120 reached: 20 of 140"),
        "{reason}"
    );
    assert_eq!(write(&stack, &gamma, 0..1000).await.0, 204);

    let expected = [
        ("alpha", range_set(0..100)),
        ("beta", range_set(0..120)),
        ("gamma", range_set(0..1000)),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (tenant, want) in &expected {
        loop {
            let got = stored(&stack, tenant).await;
            if &got == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{tenant}: backend holds {} series, {:?}…",
                got.len(),
                got.iter().rev().take(3).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_eq!(
        metric_value(
            &stack,
            r#"promgate_refused_samples_total{tenant="alpha",reason="series_limit"}"#
        )
        .await,
        Some(40.0)
    );

    // Idle series expire (3 s, swept every 5 s) and make room for new ones.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active = metric_value(&stack, r#"promgate_tenant_active_series{tenant="alpha"}"#).await;
        if active == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alpha still has {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        metric_value(
            &stack,
            r#"promgate_tenant_active_series_limit{tenant="alpha"}"#
        )
        .await,
        Some(100.0)
    );
    assert_eq!(write(&stack, &alpha, 200..300).await.0, 204);
    let (status, reason) = write(&stack, &alpha, 300..301).await;
    assert_eq!(status, 400, "{reason}");
}
