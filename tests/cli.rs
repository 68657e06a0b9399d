//! The `promgate` command line: `check-config` reports every problem at once and exits 1;
//! a valid file exits 0, with a warning for every tenant in the registry that names a
//! backend the file does not configure. `queue inspect|verify` read a queue written by
//! the queue module, report damage one line each, and change nothing on disk.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{backends_toml, FakeBackend, Relay};
use promgate::config::Config;
use promgate::tenant::store::Store;
use promgate::tenant::Registry;
use serde_json::json;

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("promgate.toml");
    std::fs::write(&path, text).expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run promgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn valid_config_passes() {
    let (ok, output) = check_config(
        r#"
[server]
listen = "127.0.0.1:9201"
[tenancy]
on_conflict = "reject"
[limits]
max_request_bytes = "16MiB"
max_future_skew = "5m"
[[backends]]
name = "mimir"
write_url = "http://mimir:8080/api/v1/push"
tenant_header = "X-Scope-OrgID"
timeout = "15s"
"#,
    );
    assert!(ok, "{output}");
    assert!(output.contains("OK"));
}

#[test]
fn every_problem_is_printed_and_the_exit_code_is_1() {
    let (ok, output) = check_config(
        r#"
[server]
listen = "everywhere"
typo = 1
[limits]
max_request_bytes = "a lot"
[[backends]]
name = "x"
write_url = "http://127.0.0.1:1/api/v1/write"
timeout = "60s"
"#,
    );
    assert!(!ok);
    for needle in [
        "server.listen",
        "server.typo",
        "limits",
        "backends[0].timeout",
        "problem(s) found",
    ] {
        assert!(output.contains(needle), "{needle} missing from:\n{output}");
    }
}

#[test]
fn unreadable_file_is_a_problem_too() {
    let output = Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args(["check-config", "--config", "/nonexistent/promgate.toml"])
        .output()
        .expect("run promgate");
    assert_eq!(output.status.code(), Some(1));
}

/// A registry whose tenants name backend "gone", made by a relay configured with b0 and
/// "gone"; returns the relay's directory (database inside) and the b0-only config lines.
async fn registry_naming_a_gone_backend(b0: &FakeBackend) -> (tempfile::TempDir, String) {
    let gone = FakeBackend::start().await;
    let both = format!(
        "{}[[backends]]\nname = \"gone\"\nwrite_url = \"{}\"\n",
        backends_toml(&[b0]),
        gone.write_url()
    );
    let mut relay = Relay::start(&both).await;
    relay
        .create_tenant(json!({"id": "alpha", "backends": ["gone"]}))
        .await;
    relay
        .create_tenant(json!({"id": "beta", "backends": ["b0", "gone"]}))
        .await;
    relay.create_tenant(json!({"id": "gamma"})).await;
    let dir = relay.stop().await;
    (dir, backends_toml(&[b0]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_warns_about_tenants_naming_unknown_backends() {
    let b0 = FakeBackend::start().await;
    let (dir, b0_only) = registry_naming_a_gone_backend(&b0).await;
    let database = dir.path().join("promgate.db");
    let (ok, output) = check_config(&format!(
        "[storage]\ndatabase_url = \"sqlite://{}\"\n{b0_only}",
        database.display()
    ));
    assert!(ok, "warnings do not fail the check:\n{output}");
    assert!(output.contains("OK"), "{output}");
    assert!(
        output.contains("warning: tenant \"alpha\" names backend \"gone\", which is not configured; its writes will be refused with 503"),
        "{output}"
    );
    assert!(
        output.contains("warning: tenant \"beta\" names backend \"gone\""),
        "{output}"
    );
    assert!(!output.contains("gamma"), "{output}");
    assert_eq!(output.matches("warning:").count(), 2, "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_backends_are_gone_has_none_in_the_registry() {
    let b0 = FakeBackend::start().await;
    let (dir, b0_only) = registry_naming_a_gone_backend(&b0).await;
    let database_url = format!("sqlite://{}/promgate.db", dir.path().display());
    let config = Config::from_toml_str(
        &format!("[storage]\ndatabase_url = \"{database_url}\"\n{b0_only}"),
        &Default::default(),
    )
    .expect("config");
    let registry = Registry::load(Store::open(&database_url).await.expect("store"), &config)
        .await
        .expect("registry");
    let alpha = registry.tenant("alpha").expect("alpha");
    assert!(
        alpha.backends.is_empty(),
        "never every backend when the named ones are gone"
    );
    assert_eq!(alpha.unknown_backends, ["gone"]);
    let beta = registry.tenant("beta").expect("beta");
    assert_eq!(
        (beta.backends.as_slice(), beta.unknown_backends.as_slice()),
        (&[0][..], &["gone".to_string()][..])
    );
    let gamma = registry.tenant("gamma").expect("gamma");
    assert_eq!(gamma.backends, [0]);
    assert!(gamma.unknown_backends.is_empty());
    drop(registry);

    // The relay starts on that config; nothing is dropped, and the tenant can still be
    // changed (disabled) without first fixing its backends.
    let relay = Relay::start_in(dir, &b0_only).await;
    let (status, tenant) = relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["backends"], json!(["gone"]));
    let (status, _) = relay
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"backends": ["gone", "b0"]})),
        )
        .await;
    assert_eq!(status, 400, "a new list of backends is checked");
}

#[test]
fn check_config_without_a_registry_notes_it_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("missing.db");
    let (ok, output) = check_config(&format!(
        "[storage]\ndatabase_url = \"sqlite://{}\"\n",
        database.display()
    ));
    assert!(ok, "{output}");
    assert!(output.contains("registry database not checked"), "{output}");
    assert_eq!(
        output
            .lines()
            .filter(|line| line.contains("registry"))
            .count(),
        1,
        "{output}"
    );
    assert!(!database.exists(), "check-config created the database");
}

#[test]
fn check_config_with_an_unreachable_postgresql_gives_up_quickly() {
    let port = common::process::free_port();
    let started = Instant::now();
    let (ok, output) = check_config(&format!(
        "[storage]\ndatabase_url = \"postgres://promgate@127.0.0.1:{port}/promgate\"\n"
    ));
    assert!(ok, "{output}");
    assert!(output.contains("registry database not checked"), "{output}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Runs `promgate queue <action>` on a config whose `[queue] directory` is `queue_dir`.
fn queue_command(action: &str, queue_dir: &std::path::Path) -> (bool, String) {
    let output = queue_command_output(action, queue_dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `promgate queue <action>`'s exit status and its two streams apart.
fn queue_command_output(action: &str, queue_dir: &std::path::Path) -> std::process::Output {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let path = config_dir.path().join("promgate.toml");
    std::fs::write(
        &path,
        format!(
            "[queue]\ndirectory = {:?}\nmax_bytes = \"64MiB\"\n\n[[backends]]\nname = \"primary\"\nwrite_url = \"http://127.0.0.1:9/api/v1/write\"\n",
            queue_dir.display().to_string()
        ),
    )
    .expect("config");
    Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args(["queue", action, "--config"])
        .arg(&path)
        .output()
        .expect("run promgate")
}

/// Every file under `dir` with its bytes, to prove a command changed nothing.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            let bytes = std::fs::read(&path).expect("read");
            files.push((path, bytes));
        }
    }
    files.sort();
    files
}

fn queue_with_records(queue_dir: &std::path::Path, backend: &str) -> std::path::PathBuf {
    use promgate::delivery::queue::{Queue, QueueOptions};
    let backend_dir = queue_dir.join(backend);
    let (queue, _) = Queue::open(&backend_dir, QueueOptions::new(64 << 20)).expect("open queue");
    for index in 0..5 {
        queue
            .append(&[format!("batch {index}").into_bytes()])
            .expect("append");
    }
    queue.ack(2).expect("ack");
    backend_dir
}

#[test]
fn queue_inspect_shows_each_backend_and_changes_nothing() {
    let queue_dir = tempfile::tempdir().expect("tempdir");
    queue_with_records(queue_dir.path(), "primary");
    queue_with_records(queue_dir.path(), "retired");
    let before = snapshot(queue_dir.path());
    let (ok, output) = queue_command("inspect", queue_dir.path());
    assert!(ok, "{output}");
    assert!(
        output.contains("primary: 3 records, ")
            && output.contains("reader at 2 (last record 5), 1 segment(s)")
            && output.contains(" ago"),
        "{output}"
    );
    assert!(
        output.contains("retired (not a configured backend): 3 records"),
        "{output}"
    );
    assert_eq!(
        snapshot(queue_dir.path()),
        before,
        "inspect changed the queue"
    );

    let (ok, output) = queue_command("verify", queue_dir.path());
    assert!(ok, "{output}");
    assert!(
        output.contains("primary: 5 records in 1 segment(s) checked: OK"),
        "{output}"
    );
    assert_eq!(
        snapshot(queue_dir.path()),
        before,
        "verify changed the queue"
    );
}

#[test]
fn queue_inspect_shows_each_tenants_lane() {
    use promgate::delivery::envelope::QueuedWrite;
    use promgate::delivery::lanes::TenantLanes;
    let queue_dir = tempfile::tempdir().expect("tempdir");
    {
        let (lanes, _) =
            TenantLanes::open(&queue_dir.path().join("primary"), 64 << 20).expect("open lanes");
        for tenant in ["alpha", "alpha", "team.x"] {
            let write = QueuedWrite {
                tenant_id: tenant.into(),
                protocol: promgate::config::WriteProtocol::V1,
                sent: promgate::backend::Written::default(),
                body: bytes::Bytes::from_static(b"body"),
            };
            lanes.append(tenant, &write.encode()).expect("append");
        }
    }
    let (ok, output) = queue_command("inspect", queue_dir.path());
    assert!(ok, "{output}");
    assert!(
        output.contains("primary tenant alpha: 2 records, ")
            && output.contains("primary tenant team.x: 1 records, "),
        "{output}"
    );
    let (ok, output) = queue_command("verify", queue_dir.path());
    assert!(ok, "{output}");
    assert!(
        output.contains("primary tenant alpha: 2 records in 1 segment(s) checked: OK"),
        "{output}"
    );
}

#[test]
fn queue_verify_reports_each_damage_exits_1_and_repairs_nothing() {
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let backend_dir = queue_with_records(queue_dir.path(), "primary");
    let segment = std::fs::read_dir(&backend_dir)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.to_string_lossy().ends_with(".log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[24 + 7 + 30] ^= 0x10; // inside the second record
    bytes.extend_from_slice(b"half a record");
    std::fs::write(&segment, &bytes).expect("damage");
    let before = snapshot(queue_dir.path());

    let (ok, output) = queue_command("verify", queue_dir.path());
    assert!(!ok, "damage must fail verify:\n{output}");
    assert!(
        output.contains("offset 31: 31 bytes: damaged records skipped"),
        "{output}"
    );
    assert!(
        output.contains("13 bytes: torn or damaged tail after the last valid record"),
        "{output}"
    );
    assert!(output.contains("checked: DAMAGED"), "{output}");
    assert_eq!(snapshot(queue_dir.path()), before, "verify must not repair");

    let (ok, output) = queue_command("inspect", queue_dir.path());
    assert!(ok, "{output}");
    assert!(output.contains("primary: 2 problem(s)"), "{output}");
    assert_eq!(
        snapshot(queue_dir.path()),
        before,
        "inspect must not repair"
    );
}

#[test]
fn queue_commands_without_a_queue_directory_create_nothing() {
    let parent = tempfile::tempdir().expect("tempdir");
    let missing = parent.path().join("promgate-queue");
    for action in ["inspect", "verify"] {
        let (ok, output) = queue_command(action, &missing);
        assert!(ok, "{output}");
        assert!(output.contains("no queues"), "{output}");
        assert!(!missing.exists(), "{action} created the directory");
    }
}

#[test]
fn queue_commands_on_an_unreadable_queue_say_why_and_fail() {
    let queue_dir = tempfile::tempdir().expect("tempdir");
    queue_with_records(queue_dir.path(), "primary");
    // A segment that cannot be read: a directory where a segment file should be.
    let unreadable = queue_dir.path().join("broken");
    std::fs::create_dir_all(unreadable.join("segment-00000000000000000001.log"))
        .expect("unreadable segment");
    for action in ["inspect", "verify"] {
        let output = queue_command_output(action, queue_dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{action} exited 0 on an unreadable queue: {stderr}"
        );
        assert!(stderr.contains("broken: cannot read"), "{action}: {stderr}");
        // The readable queue is still shown.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("primary"), "{action}: {stdout}");
    }
}
