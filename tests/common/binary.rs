//! The promgate binary as its own process on free loopback ports, with a throwaway
//! data directory, and the admin calls the end-to-end tests make.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::process::{free_port, wait_ready, Process};

pub struct PromgateBinary {
    pub process: Process,
    pub data_url: String,
    pub admin_url: String,
    pub admin_token: String,
    pub http: reqwest::Client,
    root: PathBuf,
    config_path: PathBuf,
    starts: usize,
}

impl PromgateBinary {
    /// Starts `promgate serve` with its database and secrets in `root`; `server_toml`
    /// adds lines to `[server]`, `extra_toml` adds other sections (backends, limits).
    pub async fn start(root: &Path, server_toml: &str, extra_toml: &str) -> PromgateBinary {
        let database_url = format!("sqlite://{}", root.join("promgate.db").display());
        PromgateBinary::start_full(root, server_toml, "", &database_url, extra_toml).await
    }

    /// As `start`, with lines for `[admin]` and another database (PostgreSQL). The admin
    /// token is read from `admin.token_file` when `admin_toml` names one.
    pub async fn start_full(
        root: &Path,
        server_toml: &str,
        admin_toml: &str,
        database_url: &str,
        extra_toml: &str,
    ) -> PromgateBinary {
        let (data_port, admin_port) = (free_port(), free_port());
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{data_port}\"\n{server_toml}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{admin_toml}\n[storage]\ndatabase_url = \"{database_url}\"\n{extra_toml}"
        );
        let config_path = root.join("promgate.toml");
        std::fs::write(&config_path, config).expect("config");
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let process = spawn_ready(&config_path, root, "promgate", &admin_url).await;
        let token_file = admin_toml
            .lines()
            .find_map(|line| line.strip_prefix("token_file = "))
            .map(|quoted| PathBuf::from(quoted.trim_matches('"')))
            .unwrap_or_else(|| root.join("promgate-admin.token"));
        let admin_token = std::fs::read_to_string(token_file)
            .expect("admin token")
            .trim()
            .to_string();
        PromgateBinary {
            process,
            data_url: format!("http://127.0.0.1:{data_port}"),
            admin_url,
            admin_token,
            http: reqwest::Client::new(),
            root: root.to_path_buf(),
            config_path,
            starts: 1,
        }
    }

    /// Kills promgate with SIGKILL: no drain, no flush, no clean-up.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts promgate again on the same config, ports, database and queues (its log in
    /// `promgate-<n>.log`).
    pub async fn restart(&mut self) {
        self.starts += 1;
        let name = format!("promgate-{}", self.starts);
        self.process = spawn_ready(&self.config_path, &self.root, &name, &self.admin_url).await;
    }

    /// The relay's `/metrics` exposition, from its admin listener.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.data_url)
    }

    /// Registers `tenant` with `limits`, issues a token, writes it to `<tenant>.token`
    /// and returns it.
    pub async fn add_tenant(&self, tenant: &str, limits: Value) -> String {
        let created = self
            .http
            .post(format!("{}/admin/v1/tenants", self.admin_url))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "id": tenant, "limits": limits }))
            .send()
            .await
            .expect("create tenant");
        assert_eq!(created.status(), 201);
        let issued: Value = self
            .http
            .post(format!(
                "{}/admin/v1/tenants/{tenant}/tokens",
                self.admin_url
            ))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "description": "e2e" }))
            .send()
            .await
            .expect("issue token")
            .json()
            .await
            .expect("json");
        let token = issued["token"].as_str().expect("token").to_string();
        std::fs::write(self.token_path(tenant), &token).expect("token file");
        token
    }

    pub fn token_path(&self, tenant: &str) -> PathBuf {
        self.root.join(format!("{tenant}.token"))
    }

    /// Overrides some of `tenant`'s limits through the admin API.
    pub async fn set_limits(&self, tenant: &str, limits: Value) {
        let response = self
            .http
            .patch(format!("{}/admin/v1/tenants/{tenant}", self.admin_url))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "limits": limits }))
            .send()
            .await
            .expect("patch tenant");
        assert_eq!(response.status(), 200);
    }
}

/// `promgate serve --config <config_path>`, once its admin listener says it is ready.
async fn spawn_ready(config_path: &Path, root: &Path, name: &str, admin_url: &str) -> Process {
    let mut process = Process::spawn(
        name,
        env!("CARGO_BIN_EXE_promgate"),
        &[
            "serve".into(),
            "--config".into(),
            config_path.display().to_string(),
        ],
        root,
    );
    wait_ready(
        &mut process,
        &format!("{admin_url}/-/ready"),
        Duration::from_secs(30),
    )
    .await;
    process
}
