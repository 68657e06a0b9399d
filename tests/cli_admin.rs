//! `promgate tenant …` and `promgate token …` against a running promgate binary: every
//! command through the admin API, `--output json` parsed, the token secret alone on
//! stdout and usable for a remote write, revocation and disabling seen by the data
//! listener at once, and every refusal one line on stderr with exit status 1.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::binary::PromgateBinary;
use common::{backends_toml, label_value, simple_body, FakeBackend};
use serde_json::Value;

struct Cli {
    admin_url: String,
    token_file: PathBuf,
}

impl Cli {
    fn for_binary(promgate: &PromgateBinary, root: &std::path::Path) -> Cli {
        Cli {
            admin_url: promgate.admin_url.clone(),
            token_file: root.join("promgate-admin.token"),
        }
    }

    /// Runs `promgate ARGS` with the admin URL from the environment and the token file
    /// given on the line, after the subcommand.
    async fn run(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_promgate"));
        command
            .args(args)
            .arg("--admin-token-file")
            .arg(&self.token_file)
            .env("PROMGATE_ADMIN_URL", &self.admin_url)
            .env_remove("PROMGATE_ADMIN_TOKEN_FILE");
        command.output().await.expect("run promgate")
    }

    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "promgate {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    async fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{args:?}: {err}: {stdout}"))
    }

    /// Exit status 1 and exactly one line on stderr, which is returned.
    async fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert_eq!(
            output.status.code(),
            Some(1),
            "promgate {args:?} should fail"
        );
        let stderr = String::from_utf8(output.stderr).expect("utf-8");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(output.stdout.is_empty(), "nothing on stdout");
        stderr
    }
}

async fn write(promgate: &PromgateBinary, token: &str) -> u16 {
    promgate
        .http
        .post(promgate.write_url())
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(simple_body(&[]))
        .send()
        .await
        .expect("write")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_tenants_and_tokens_through_the_admin_api() {
    let root = tempfile::tempdir().expect("tempdir");
    let backend = FakeBackend::start().await;
    let promgate = PromgateBinary::start(root.path(), "", &backends_toml(&[&backend])).await;
    let cli = Cli::for_binary(&promgate, root.path());

    // create: the table shows the tenant; a second create is the API's 409, one line.
    let created = cli
        .ok(&[
            "tenant",
            "create",
            "alpha",
            "--extra-label",
            "env=prod",
            "--limit",
            "requests_per_second=50",
            "--limit",
            "max_future_skew=5m",
        ])
        .await;
    assert!(
        created.contains("id:") && created.contains("alpha"),
        "{created}"
    );
    assert!(created.contains("env=prod"), "{created}");
    let conflict = cli.fails(&["tenant", "create", "alpha"]).await;
    assert!(
        conflict.starts_with("error: ") && conflict.contains("(409)"),
        "{conflict}"
    );
    cli.ok(&["tenant", "create", "beta", "--disabled", "--backend", "b0"])
        .await;

    // list, as a table and as JSON (the flag before the subcommand as well as after).
    let table = cli.ok(&["tenant", "list"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[2].contains("beta") && lines[2].contains("disabled"),
        "{table}"
    );
    let listed = cli.json(&["--output", "json", "tenant", "list"]).await;
    let tenants = listed["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), 2);
    assert_eq!(tenants[0]["id"], "alpha");
    assert_eq!(tenants[0]["limits"]["requests_per_second"], 50);
    assert_eq!(tenants[0]["limits"]["max_future_skew"], "5m");
    assert_eq!(tenants[1]["status"], "disabled");
    assert_eq!(tenants[1]["backends"][0], "b0");

    // get and update: the update merges into what the tenant holds.
    let alpha = cli
        .json(&["tenant", "get", "alpha", "--output", "json"])
        .await;
    assert_eq!(alpha["extra_labels"]["env"], "prod");
    assert_eq!(alpha["version"], 1);
    let updated = cli
        .json(&[
            "tenant",
            "--output",
            "json",
            "update",
            "alpha",
            "--label-value",
            "alpha-team",
            "--limit",
            "max_series_per_request=10",
            "--unset-limit",
            "max_future_skew",
            "--extra-label",
            "region=eu",
        ])
        .await;
    assert_eq!(updated["label_value"], "alpha-team");
    assert_eq!(updated["limits"]["requests_per_second"], 50, "kept");
    assert_eq!(updated["limits"]["max_series_per_request"], 10);
    assert!(updated["limits"].get("max_future_skew").is_none());
    assert_eq!(updated["extra_labels"]["env"], "prod");
    assert_eq!(updated["extra_labels"]["region"], "eu");
    assert_eq!(updated["version"], 2);
    let invalid = cli
        .fails(&[
            "tenant",
            "update",
            "alpha",
            "--limit",
            "max_series_per_request=lots",
        ])
        .await;
    assert!(invalid.contains("(400)"), "{invalid}");

    // token issue: the secret alone on stdout, what it is on stderr.
    let output = cli
        .run(&[
            "token",
            "issue",
            "alpha",
            "--description",
            "ci",
            "--ttl",
            "30d",
        ])
        .await;
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let secret = stdout.trim_end_matches('\n');
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(secret.split('.').count(), 3, "a JWT: {secret}");
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert!(
        stderr.starts_with("token ") && stderr.contains("for tenant alpha"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "the secret only on stdout");

    // The token writes through the data listener, with the tenant's labels.
    assert_eq!(write(&promgate, secret).await, 204);
    let received = backend.requests();
    let series = &received
        .last()
        .expect("forwarded")
        .write_request()
        .timeseries[0];
    assert_eq!(label_value(series, "tenant_id"), ["alpha-team"]);
    assert_eq!(label_value(series, "env"), ["prod"]);
    assert_eq!(label_value(series, "region"), ["eu"]);

    // disable / enable take effect on the data listener at once.
    let disabled = cli.ok(&["tenant", "disable", "alpha"]).await;
    assert!(disabled.contains("disabled"), "{disabled}");
    assert_eq!(write(&promgate, secret).await, 403);
    cli.ok(&["tenant", "enable", "alpha"]).await;
    assert_eq!(write(&promgate, secret).await, 204);

    // token list shows it; revoke ends it.
    let tokens = cli
        .json(&["token", "list", "alpha", "--output", "json"])
        .await;
    let tokens = tokens["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["status"], "active");
    assert_eq!(tokens[0]["description"], "ci");
    let token_id = tokens[0]["id"].as_str().expect("id").to_string();
    assert!(stderr.contains(&token_id), "issue named the token's id");
    let table = cli.ok(&["token", "list", "alpha"]).await;
    assert!(
        table.starts_with("ID") && table.contains(&token_id),
        "{table}"
    );
    cli.ok(&["token", "revoke", "alpha", &token_id]).await;
    assert_eq!(write(&promgate, secret).await, 401);
    let tokens = cli
        .json(&["--output", "json", "token", "list", "alpha"])
        .await;
    assert_eq!(tokens["tokens"][0]["status"], "revoked");

    // delete; the tenant is gone.
    let deleted = cli
        .json(&["tenant", "delete", "alpha", "--output", "json"])
        .await;
    assert_eq!(deleted["deleted"], "alpha");
    let missing = cli.fails(&["tenant", "get", "alpha"]).await;
    assert!(
        missing.contains("not found") && missing.contains("(404)"),
        "{missing}"
    );
    let listed = cli.json(&["tenant", "list", "--output", "json"]).await;
    assert_eq!(listed["tenants"].as_array().map(Vec::len), Some(1));

    // A wrong admin token and an unreachable admin URL: one line each, exit 1.
    let wrong = root.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").expect("file");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args(["tenant", "list", "--admin-url", &promgate.admin_url])
        .env("PROMGATE_ADMIN_TOKEN_FILE", &wrong)
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("(401)"), "{stderr}");
    let unreachable = Cli {
        admin_url: format!("http://127.0.0.1:{}", common::process::free_port()),
        token_file: cli.token_file.clone(),
    };
    let refused = unreachable.fails(&["tenant", "list"]).await;
    assert!(refused.contains("cannot reach the admin API"), "{refused}");
    let no_file = Cli {
        admin_url: promgate.admin_url.clone(),
        token_file: root.path().join("missing.token"),
    };
    let missing = no_file.fails(&["token", "list", "beta"]).await;
    assert!(missing.contains("cannot read the admin token"), "{missing}");
}
