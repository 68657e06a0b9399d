//! End to end with real processes from Debian's packages: two sender Prometheus 2.42
//! instances (tenants alpha and beta; beta's external_labels claim `tenant_id: alpha`)
//! write through the promgate binary into a Prometheus 2.42 remote-write receiver and a
//! VictoriaMetrics single node. Asserted through both backends' query APIs: every series
//! carries its sender's tenant, none is unlabelled or cross-tenant, both hold the same.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{free_port, wait_ready, Process};
use serde_json::{json, Value};

type LabelSet = Vec<(String, String)>;

struct Backends {
    prometheus: String,
    victoria: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_land_in_both_backends_stamped_with_their_own_tenant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();

    let backend_port = free_port();
    let mut backend = start_prometheus(
        root,
        "backend",
        backend_port,
        "global:\n  scrape_interval: 1s\n",
        true,
    );
    let vm_port = free_port();
    let mut victoria = Process::spawn(
        "victoria-metrics",
        "victoria-metrics",
        &[
            format!("-storageDataPath={}", root.join("vm-data").display()),
            format!("-httpListenAddr=127.0.0.1:{vm_port}"),
            "-search.latencyOffset=1s".into(),
            "-search.disableCache".into(),
        ],
        root,
    );
    let backends = Backends {
        prometheus: format!("http://127.0.0.1:{backend_port}"),
        victoria: format!("http://127.0.0.1:{vm_port}"),
    };
    wait_ready(
        &mut backend,
        &format!("{}/-/ready", backends.prometheus),
        Duration::from_secs(30),
    )
    .await;
    wait_ready(
        &mut victoria,
        &format!("{}/health", backends.victoria),
        Duration::from_secs(30),
    )
    .await;

    let (data_port, admin_port) = (free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{data_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[storage]
database_url = "sqlite://{db}"
[[backends]]
name = "prometheus"
write_url = "{prom}/api/v1/write"
read_url = "{prom}/api/v1/read"
timeout = "10s"
[[backends]]
name = "victoria"
write_url = "{vm}/api/v1/write"
timeout = "10s"
"#,
        db = root.join("promgate.db").display(),
        prom = backends.prometheus,
        vm = backends.victoria,
    );
    let config_path = root.join("promgate.toml");
    std::fs::write(&config_path, config).expect("config");
    let mut promgate = Process::spawn(
        "promgate",
        env!("CARGO_BIN_EXE_promgate"),
        &[
            "serve".into(),
            "--config".into(),
            config_path.display().to_string(),
        ],
        root,
    );
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_ready(
        &mut promgate,
        &format!("{admin}/-/ready"),
        Duration::from_secs(30),
    )
    .await;
    let admin_token =
        std::fs::read_to_string(root.join("promgate-admin.token")).expect("admin token");
    let http = reqwest::Client::new();
    for tenant in ["alpha", "beta"] {
        let created = http
            .post(format!("{admin}/admin/v1/tenants"))
            .bearer_auth(admin_token.trim())
            .json(&json!({ "id": tenant }))
            .send()
            .await
            .expect("create tenant");
        assert_eq!(created.status(), 201);
        let issued: Value = http
            .post(format!("{admin}/admin/v1/tenants/{tenant}/tokens"))
            .bearer_auth(admin_token.trim())
            .json(&json!({ "description": "e2e sender" }))
            .send()
            .await
            .expect("issue token")
            .json()
            .await
            .expect("json");
        let secret = issued["token"].as_str().expect("token");
        std::fs::write(root.join(format!("{tenant}.token")), secret).expect("token file");
    }

    let write_url = format!("http://127.0.0.1:{data_port}/api/v1/write");
    let mut senders = Vec::new();
    for (tenant, external_labels) in [
        ("alpha", "    sender: alpha\n"),
        // beta's Prometheus claims to be alpha; promgate must stamp it beta regardless.
        ("beta", "    sender: beta\n    tenant_id: alpha\n"),
    ] {
        let port = free_port();
        let sender_config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels:\n{external_labels}\
scrape_configs:\n  - job_name: {tenant}-self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
remote_write:\n  - url: {write_url}\n    authorization:\n      credentials_file: {token}\n    queue_config:\n      batch_send_deadline: 1s\n",
            token = root.join(format!("{tenant}.token")).display(),
        );
        let mut sender = start_prometheus(
            root,
            &format!("sender-{tenant}"),
            port,
            &sender_config,
            false,
        );
        wait_ready(
            &mut sender,
            &format!("http://127.0.0.1:{port}/-/ready"),
            Duration::from_secs(30),
        )
        .await;
        senders.push(sender);
    }

    // Wait until both backends hold series from both senders.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        promgate.assert_running();
        let prom = series(&http, &backends.prometheus).await;
        let vm = series(&http, &backends.victoria).await;
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
            promgate.log_tail(),
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
            series(&http, &backends.prometheus).await,
            series(&http, &backends.victoria).await,
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
        if !all_samples_nan(&http, &backends.prometheus, labels).await {
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
    for base in [&backends.prometheus, &backends.victoria] {
        let unlabelled = count(&http, base, "{__name__=~\".+\", tenant_id=\"\"}").await;
        assert_eq!(unlabelled, 0, "{base} holds series without a tenant label");
        let stamped = count(&http, base, "{__name__=~\".+\", tenant_id=~\"alpha|beta\"}").await;
        assert!(
            stamped > 100,
            "{base}: the query for stamped series must work ({stamped})"
        );
    }

    assert!(
        promgate.terminate(Duration::from_secs(10)),
        "promgate stops cleanly on SIGTERM"
    );
    let log = std::fs::read_to_string(&promgate.log).expect("promgate log");
    assert!(log.contains("shutting down"), "graceful shutdown is logged");
    let mut secrets = vec![admin_token.trim().to_string()];
    for tenant in ["alpha", "beta"] {
        secrets.push(std::fs::read_to_string(root.join(format!("{tenant}.token"))).expect("token"));
    }
    for secret in &secrets {
        let signature = secret.rsplit('.').next().expect("secret");
        assert!(!log.contains(signature), "a secret reached promgate's log");
    }
    backend.terminate(Duration::from_secs(10));
    victoria.terminate(Duration::from_secs(10));
}

fn start_prometheus(root: &Path, name: &str, port: u16, config: &str, receiver: bool) -> Process {
    let config_path = root.join(format!("{name}.yml"));
    std::fs::write(&config_path, config).expect("prometheus config");
    let mut args = vec![
        format!("--config.file={}", config_path.display()),
        format!(
            "--storage.tsdb.path={}",
            root.join(format!("{name}-data")).display()
        ),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    if receiver {
        args.push("--web.enable-remote-write-receiver".into());
    }
    Process::spawn(name, "prometheus", &args, root)
}

/// Every series' label set, sorted, from a backend's `/api/v1/series`.
async fn series(http: &reqwest::Client, base: &str) -> BTreeSet<LabelSet> {
    let response = http
        .get(format!("{base}/api/v1/series"))
        .query(&[("match[]", "{__name__=~\".+\"}"), ("start", "0")])
        .send()
        .await;
    let Ok(response) = response else {
        return BTreeSet::new();
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_object)
                .map(|object| {
                    let mut labels: LabelSet = object
                        .iter()
                        .map(|(name, value)| {
                            (name.clone(), value.as_str().unwrap_or_default().to_string())
                        })
                        .collect();
                    labels.sort();
                    labels
                })
                .collect()
        })
        .unwrap_or_default()
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

fn value_of<'a>(labels: &'a LabelSet, name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}
