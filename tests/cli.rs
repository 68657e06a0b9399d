//! The `promgate` command line: `check-config` reports every problem at once and exits 1;
//! a valid file exits 0.

use std::process::Command;

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
