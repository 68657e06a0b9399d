//! The end-to-end stack: a backend Prometheus 2.42 (remote-write receiver and
//! remote-read server), optionally a VictoriaMetrics single node, the promgate binary
//! in front of them, tenants with token files, and sender Prometheus instances.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::binary::PromgateBinary;
use super::process::{free_port, wait_ready, Process};

pub type LabelSet = Vec<(String, String)>;

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub backend: Process,
    pub prometheus_url: String,
    pub victoria: Option<(Process, String)>,
    pub promgate: PromgateBinary,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start(with_victoria: bool) -> Stack {
        Stack::start_with(with_victoria, "").await
    }

    /// With `server_toml` lines in promgate's `[server]` (a `[server.tls]` table makes the
    /// data URL https).
    pub async fn start_with(with_victoria: bool, server_toml: &str) -> Stack {
        Stack::start_configured(with_victoria, server_toml, "", "").await
    }

    /// As `start_with`, with `backend_toml` lines added to the Prometheus backend's
    /// `[[backends]]` entry (`delivery = "queued"`) and `extra_toml` after the backends.
    pub async fn start_configured(
        with_victoria: bool,
        server_toml: &str,
        backend_toml: &str,
        extra_toml: &str,
    ) -> Stack {
        Stack::start_with_backend_flags(with_victoria, server_toml, backend_toml, extra_toml, &[])
            .await
    }

    /// As `start_configured`, with `backend_flags` added to the backend Prometheus'
    /// command line (e.g. `--enable-feature=native-histograms,exemplar-storage`).
    pub async fn start_with_backend_flags(
        with_victoria: bool,
        server_toml: &str,
        backend_toml: &str,
        extra_toml: &str,
        backend_flags: &[&str],
    ) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let backend_port = free_port();
        let mut backend = start_backend_prometheus_with(&root, backend_port, backend_flags);
        let prometheus_url = format!("http://127.0.0.1:{backend_port}");
        wait_ready(
            &mut backend,
            &format!("{prometheus_url}/-/ready"),
            Duration::from_secs(30),
        )
        .await;
        let mut backends_toml = format!(
            "[[backends]]\nname = \"prometheus\"\nwrite_url = \"{prometheus_url}/api/v1/write\"\nread_url = \"{prometheus_url}/api/v1/read\"\ntimeout = \"10s\"\n{backend_toml}\n"
        );
        let victoria = if with_victoria {
            let port = free_port();
            let mut process = Process::spawn(
                "victoria-metrics",
                "victoria-metrics",
                &[
                    format!("-storageDataPath={}", root.join("vm-data").display()),
                    format!("-httpListenAddr=127.0.0.1:{port}"),
                    "-search.latencyOffset=1s".into(),
                    "-search.disableCache".into(),
                ],
                &root,
            );
            let url = format!("http://127.0.0.1:{port}");
            wait_ready(
                &mut process,
                &format!("{url}/health"),
                Duration::from_secs(30),
            )
            .await;
            backends_toml.push_str(&format!(
                "[[backends]]\nname = \"victoria\"\nwrite_url = \"{url}/api/v1/write\"\ntimeout = \"10s\"\n"
            ));
            Some((process, url))
        } else {
            None
        };
        backends_toml.push_str(extra_toml);
        let mut promgate = PromgateBinary::start(&root, server_toml, &backends_toml).await;
        if server_toml.contains("[server.tls]") {
            promgate.data_url = promgate.data_url.replace("http://", "https://");
        }
        Stack {
            dir,
            backend,
            prometheus_url,
            victoria,
            promgate,
            http: reqwest::Client::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Registers `tenant`, issues a token and writes it to `<tenant>.token`.
    pub async fn add_tenant(&self, tenant: &str) -> PathBuf {
        self.promgate.add_tenant(tenant, json!({})).await;
        self.promgate.token_path(tenant)
    }

    /// A Prometheus scraping itself every second as job `<tenant>-self` and writing
    /// through promgate with the tenant's token.
    pub async fn start_sender(&self, tenant: &str, external_labels: &[(&str, &str)]) -> Process {
        let port = free_port();
        let labels: String = external_labels
            .iter()
            .map(|(name, value)| format!("    {name}: {value}\n"))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  external_labels:\n{labels}\
scrape_configs:\n  - job_name: {tenant}-self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
remote_write:\n  - url: {}/api/v1/write\n    authorization:\n      credentials_file: {}\n    queue_config:\n      batch_send_deadline: 1s\n",
            self.promgate.data_url,
            self.root().join(format!("{tenant}.token")).display(),
        );
        let mut sender = start_prometheus(
            self.root(),
            &format!("sender-{tenant}"),
            port,
            &config,
            false,
        );
        wait_ready(
            &mut sender,
            &format!("http://127.0.0.1:{port}/-/ready"),
            Duration::from_secs(30),
        )
        .await;
        sender
    }

    /// A Prometheus with no scrape targets whose only data is what it reads back from
    /// promgate with `tenant`'s token (`read_recent: true`). Returns it and its URL.
    pub async fn start_reader(&self, tenant: &str) -> (Process, String) {
        let port = free_port();
        let config = format!(
            "global:\n  scrape_interval: 1m\nremote_read:\n  - url: {}/api/v1/read\n    read_recent: true\n    authorization:\n      credentials_file: {}\n",
            self.promgate.data_url,
            self.root().join(format!("{tenant}.token")).display(),
        );
        let mut reader = start_prometheus(
            self.root(),
            &format!("reader-{tenant}"),
            port,
            &config,
            false,
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(
            &mut reader,
            &format!("{url}/-/ready"),
            Duration::from_secs(30),
        )
        .await;
        (reader, url)
    }
}

/// The backend Prometheus of a stack, as `Stack::start` runs it (again, on the same port
/// and data directory after it was stopped).
pub fn start_backend_prometheus(root: &Path, port: u16) -> Process {
    start_backend_prometheus_with(root, port, &[])
}

/// As `start_backend_prometheus`, with `flags` added to its command line.
pub fn start_backend_prometheus_with(root: &Path, port: u16, flags: &[&str]) -> Process {
    start_prometheus_with(
        root,
        "backend",
        port,
        "global:\n  scrape_interval: 1s\n",
        true,
        flags,
    )
}

pub fn start_prometheus(
    root: &Path,
    name: &str,
    port: u16,
    config: &str,
    receiver: bool,
) -> Process {
    start_prometheus_with(root, name, port, config, receiver, &[])
}

/// As `start_prometheus`, with `flags` added to its command line.
pub fn start_prometheus_with(
    root: &Path,
    name: &str,
    port: u16,
    config: &str,
    receiver: bool,
    flags: &[&str],
) -> Process {
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
    args.extend(flags.iter().map(|flag| flag.to_string()));
    Process::spawn(name, "prometheus", &args, root)
}

/// Every series' label set, sorted, from `/api/v1/series` of Prometheus or VictoriaMetrics.
pub async fn series(http: &reqwest::Client, base: &str, selector: &str) -> BTreeSet<LabelSet> {
    let response = http
        .get(format!("{base}/api/v1/series"))
        .query(&[("match[]", selector), ("start", "0")])
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
                .map(label_set)
                .collect()
        })
        .unwrap_or_default()
}

pub fn label_set(object: &serde_json::Map<String, Value>) -> LabelSet {
    let mut labels: LabelSet = object
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_string()))
        .collect();
    labels.sort();
    labels
}

pub fn value_of<'a>(labels: &'a LabelSet, name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The label sets of a PromQL instant query's result.
pub async fn instant_query(
    http: &reqwest::Client,
    base: &str,
    query: &str,
) -> Vec<serde_json::Map<String, Value>> {
    let body: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(body["status"], "success", "{body}");
    body["data"]["result"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|item| item["metric"].as_object().expect("metric").clone())
        .collect()
}
