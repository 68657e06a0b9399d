//! A throwaway PostgreSQL server from Debian's `postgresql` package: initdb into a temp
//! directory, started on a free loopback port (as the `postgres` user when the tests run
//! as root, since PostgreSQL refuses to run as root), stopped by PID.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{free_port, Process};

pub struct Postgres {
    pub process: Option<Process>,
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|_| panic!("PostgreSQL is not installed: apt-get install postgresql (CI's scripts/test.sh does)"))
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server binary under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0"))
}

/// `program args…`, as the postgres user when running as root.
fn as_postgres(program: &Path, args: &[String]) -> (String, Vec<String>) {
    if is_root() {
        let mut all = vec![
            "--reuid=postgres".to_string(),
            "--regid=postgres".to_string(),
            "--init-groups".to_string(),
            "--".to_string(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        ("setpriv".to_string(), all)
    } else {
        (program.display().to_string(), args.to_vec())
    }
}

impl Postgres {
    pub async fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let (program, args) = as_postgres(
            &bin.join("initdb"),
            &[
                "-D".into(),
                data.display().to_string(),
                "-U".into(),
                "postgres".into(),
                "--auth=trust".into(),
                "-E".into(),
                "UTF8".into(),
            ],
        );
        let output = Command::new(program)
            .args(args)
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = free_port();
        let mut postgres = Postgres {
            process: None,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
            bin,
        };
        postgres.run().await;
        postgres
    }

    /// Starts the server on its data directory and port, and waits until it accepts.
    pub async fn run(&mut self) {
        let (program, args) = as_postgres(
            &self.bin.join("postgres"),
            &[
                "-D".into(),
                self.dir.path().join("data").display().to_string(),
                "-p".into(),
                self.port.to_string(),
                "-k".into(),
                self.dir.path().display().to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
                "-c".into(),
                "fsync=off".into(),
            ],
        );
        let mut process = Process::spawn("postgres", &program, &args, self.dir.path());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            process.assert_running();
            if sqlx::postgres::PgPool::connect(&self.url).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.process = Some(process);
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(10));
        }
    }
}
