//! End to end with real processes from Debian's packages: two sender Prometheus 2.42
//! instances (tenants alpha and beta; beta's external_labels claim `tenant_id: alpha`)
//! write through the promgate binary into a Prometheus 2.42 remote-write receiver and a
//! VictoriaMetrics single node. Asserted through both backends' query APIs: every series
//! carries its sender's tenant, none is unlabelled or cross-tenant, both hold the same.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::stack::{series, value_of, LabelSet, Stack};
use serde_json::Value;

const ALL: &str = "{__name__=~\".+\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_land_in_both_backends_stamped_with_their_own_tenant() {
    let mut stack = Stack::start(true).await;
    let victoria_url = stack.victoria.as_ref().expect("victoria").1.clone();
    let prometheus_url = stack.prometheus_url.clone();
    let http = stack.http.clone();
    for tenant in ["alpha", "beta"] {
        stack.add_tenant(tenant).await;
    }
    let mut senders = vec![
        stack.start_sender("alpha", &[("sender", "alpha")]).await,
        // beta's Prometheus claims to be alpha; promgate must stamp it beta regardless.
        stack
            .start_sender("beta", &[("sender", "beta"), ("tenant_id", "alpha")])
            .await,
    ];

    // Wait until both backends hold series from both senders.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        stack.promgate.process.assert_running();
        let prom = series(&http, &prometheus_url, ALL).await;
        let vm = series(&http, &victoria_url, ALL).await;
        let senders_seen = |all: &BTreeSet<LabelSet>| {
            ["alpha", "beta"].iter().all(|sender| {
                all.iter()
                    .any(|labels| value_of(labels, "sender") == Some(sender))
            })
        };
        if senders_seen(&prom) && senders_seen(&vm) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series did not arrive: prometheus has {}, victoria {}\npromgate log:\n{}\nsender log:\n{}",
            prom.len(),
            vm.len(),
            stack.promgate.process.log_tail(),
            senders[1].log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Stop the senders (they flush on SIGTERM), let the backends settle, then compare.
    for sender in &mut senders {
        sender.terminate(Duration::from_secs(10));
    }
    let mut stable = 0;
    let (mut prom, mut vm) = (BTreeSet::new(), BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while stable < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (next_prom, next_vm) = (
            series(&http, &prometheus_url, ALL).await,
            series(&http, &victoria_url, ALL).await,
        );
        stable = if next_prom == prom && next_vm == vm {
            stable + 1
        } else {
            0
        };
        (prom, vm) = (next_prom, next_vm);
    }

    for (backend_name, all) in [("prometheus", &prom), ("victoria-metrics", &vm)] {
        assert!(
            all.len() > 100,
            "{backend_name} holds only {} series",
            all.len()
        );
        for labels in all.iter() {
            let tenants: Vec<_> = labels
                .iter()
                .filter(|(name, _)| name == "tenant_id")
                .collect();
            assert_eq!(
                tenants.len(),
                1,
                "{backend_name}: {labels:?} must carry exactly one tenant label"
            );
            let sender = value_of(labels, "sender").expect("sender label");
            assert_eq!(
                value_of(labels, "tenant_id"),
                Some(sender),
                "{backend_name}: series {labels:?} was stamped with another tenant"
            );
        }
        let beta = all
            .iter()
            .filter(|labels| value_of(labels, "sender") == Some("beta"))
            .count();
        assert!(beta > 50, "{backend_name}: beta's {beta} series");
    }
    // VictoriaMetrics drops plain NaN samples on ingestion (stale markers aside), so a
    // series whose every sample is NaN (an idle summary's quantiles) exists only in
    // Prometheus. Every other series must be in both.
    let mut only_prometheus = Vec::new();
    for labels in prom.difference(&vm) {
        if !all_samples_nan(&http, &prometheus_url, labels).await {
            only_prometheus.push(labels.clone());
        }
    }
    let only_victoria: Vec<_> = vm.difference(&prom).take(10).collect();
    assert!(
        only_prometheus.is_empty() && only_victoria.is_empty(),
        "both backends must hold the same series ({} vs {}); only in prometheus: {:?}; only in victoria-metrics: {only_victoria:?}",
        prom.len(),
        vm.len(),
        &only_prometheus[..only_prometheus.len().min(10)]
    );
    for base in [&prometheus_url, &victoria_url] {
        let unlabelled = count(&http, base, "{__name__=~\".+\", tenant_id=\"\"}").await;
        assert_eq!(unlabelled, 0, "{base} holds series without a tenant label");
        let stamped = count(&http, base, "{__name__=~\".+\", tenant_id=~\"alpha|beta\"}").await;
        assert!(
            stamped > 100,
            "{base}: the query for stamped series must work ({stamped})"
        );
    }

    assert!(
        stack.promgate.process.terminate(Duration::from_secs(10)),
        "promgate stops cleanly on SIGTERM"
    );
    let log = std::fs::read_to_string(&stack.promgate.process.log).expect("promgate log");
    assert!(log.contains("shutting down"), "graceful shutdown is logged");
    let mut secrets = vec![stack.promgate.admin_token.clone()];
    for tenant in ["alpha", "beta"] {
        secrets.push(
            std::fs::read_to_string(stack.root().join(format!("{tenant}.token"))).expect("token"),
        );
    }
    for secret in &secrets {
        let signature = secret.rsplit('.').next().expect("secret");
        assert!(!log.contains(signature), "a secret reached promgate's log");
    }
}

async fn count(http: &reqwest::Client, base: &str, selector: &str) -> usize {
    let body: Value = http
        .get(format!("{base}/api/v1/series"))
        .query(&[("match[]", selector), ("start", "0")])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    body["data"].as_array().map_or(usize::MAX, Vec::len)
}

/// Whether every sample of the series in the last 10 minutes is NaN.
async fn all_samples_nan(http: &reqwest::Client, base: &str, labels: &LabelSet) -> bool {
    let matchers: Vec<String> = labels
        .iter()
        .map(|(name, value)| {
            format!(
                "{name}=\"{}\"",
                value.replace('\\', "\\\\").replace('"', "\\\"")
            )
        })
        .collect();
    let query = format!("{{{}}}[10m]", matchers.join(","));
    let body: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query.as_str())])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    let values: Vec<&Value> = body["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|result| result["values"].as_array().into_iter().flatten())
        .collect();
    !values.is_empty() && values.iter().all(|pair| pair[1] == "NaN")
}
