//! The `promgate` command: `serve`, `check-config`, `queue inspect|verify` and the admin
//! client `tenant …` / `token …` / `usage` (DESIGN §2; the client itself is `promgate::cli`).
//! The only place that exits the process. `check-config` also warns, without failing,
//! about tenants in the registry that name backends the config does not have (DESIGN §9).
//! `queue inspect|verify` read the durable queues offline and never change them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use promgate::config::units::HumanSize;
use promgate::config::Config;
use promgate::delivery::lanes::{tenant_of_lane, LANES_DIR};
use promgate::delivery::queue::offline::{inspect_queue, QueueInspection};
use promgate::tenant::store::Store;

#[derive(Parser)]
#[command(
    name = "promgate",
    version,
    about = "Authenticated Prometheus remote-write relay with tenant isolation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    admin: promgate::cli::AdminArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (on built-in defaults when no config file is given). SIGHUP, or
    /// `POST /-/reload` on the admin listener, re-reads the config file.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print every problem at once; exit 1 on any.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read the durable delivery queues offline, without starting the relay.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Manage tenants through the admin API of a running promgate.
    Tenant {
        #[command(subcommand)]
        command: promgate::cli::TenantCommand,
    },
    /// Issue, list and revoke a tenant's tokens through the admin API.
    Token {
        #[command(subcommand)]
        command: promgate::cli::TokenCommand,
    },
    /// Each tenant's usage per UTC day, summed over every replica (a table, --output
    /// json, or --output csv for spreadsheets).
    Usage {
        #[command(flatten)]
        query: promgate::cli::UsageArgs,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Per backend: records, bytes, oldest age, reader position, segments.
    Inspect {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check every record's checksum; one line per problem, exit 1 on any damage.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Tenant { command } => {
            admin_command(&cli.admin, promgate::cli::AdminCommand::Tenant(command))
        }
        Command::Token { command } => {
            admin_command(&cli.admin, promgate::cli::AdminCommand::Token(command))
        }
        Command::Usage { query } => {
            admin_command(&cli.admin, promgate::cli::AdminCommand::Usage(query))
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(loaded) => {
                println!("{}: OK", config.display());
                // Warnings only: the file itself is valid whatever the registry holds.
                check_registry(&loaded);
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for problem in &errors.problems {
                    eprintln!("{}: {problem}", config.display());
                }
                eprintln!("{} problem(s) found", errors.problems.len());
                ExitCode::FAILURE
            }
        },
        Command::Queue { command } => match command {
            QueueCommand::Inspect { config } => queue_command(&config, QueueAction::Inspect),
            QueueCommand::Verify { config } => queue_command(&config, QueueAction::Verify),
        },
        Command::Serve { config } => {
            promgate::telemetry::init_logging();
            let (config, path) = match config {
                Some(path) => match Config::load(&path) {
                    Ok(config) => (config, Some(path)),
                    Err(errors) => {
                        for problem in &errors.problems {
                            tracing::error!(config = %path.display(), problem = %problem, "invalid configuration");
                        }
                        return ExitCode::FAILURE;
                    }
                },
                None => (Config::defaults(), None),
            };
            match serve(config, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "promgate stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Exit 0, or 1 with the one-line reason on stderr.
fn admin_command(
    args: &promgate::cli::AdminArgs,
    command: promgate::cli::AdminCommand,
) -> ExitCode {
    match promgate::cli::run(args, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// How long `check-config` waits for the registry database.
const REGISTRY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Warns about every tenant in the registry that names a backend the config does not have
/// (those writes go nowhere; a tenant left with no backend is refused with 503). Opens the
/// database read-only, never creates it, and says so in one line when it cannot be read.
/// Never changes the exit code: the file itself is valid whatever the registry holds.
fn check_registry(config: &Config) {
    let loaded = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                let read = async {
                    Store::open_read_only(&config.storage.database_url, REGISTRY_CHECK_TIMEOUT)
                        .await?
                        .tenant_backends()
                        .await
                };
                match tokio::time::timeout(REGISTRY_CHECK_TIMEOUT, read).await {
                    Ok(result) => result.map_err(|err| err.to_string()),
                    Err(_) => Err(format!(
                        "no answer within {}s",
                        REGISTRY_CHECK_TIMEOUT.as_secs()
                    )),
                }
            })
        });
    let tenants = match loaded {
        Ok(tenants) => tenants,
        Err(reason) => {
            eprintln!("note: registry database not checked, so tenants' backends are unverified: {reason}");
            return;
        }
    };
    let configured: Vec<&str> = config.backend_names().collect();
    for (tenant, backends) in tenants {
        let unknown: Vec<&String> = backends
            .iter()
            .filter(|backend| !configured.contains(&backend.as_str()))
            .collect();
        let consequence = if unknown.len() == backends.len() {
            "its writes will be refused with 503"
        } else {
            "its writes go to its other backends only"
        };
        for backend in unknown {
            eprintln!("warning: tenant {tenant:?} names backend {backend:?}, which is not configured; {consequence}");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum QueueAction {
    Inspect,
    Verify,
}

/// `promgate queue inspect|verify`: every sub-folder of `[queue] directory` is one
/// backend's queue, with its tenants' lanes under `tenants/`. Read-only: nothing is created, truncated or deleted, and damage is
/// reported, never repaired (the relay repairs at start).
fn queue_command(config_path: &Path, action: QueueAction) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(errors) => {
            for problem in &errors.problems {
                eprintln!("{}: {problem}", config_path.display());
            }
            return ExitCode::FAILURE;
        }
    };
    let directory = &config.queue.directory;
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "{}: no queues (the directory does not exist)",
                directory.display()
            );
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{}: cannot read: {err}", directory.display());
            return ExitCode::FAILURE;
        }
    };
    // A queue that cannot be read fails the command (on stderr), whatever the action.
    let mut unreadable = false;
    let mut queue_dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        match entry.and_then(|entry| entry.file_type().map(|kind| (entry, kind))) {
            Ok((entry, kind)) if kind.is_dir() => queue_dirs.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            )),
            Ok(_) => {}
            Err(err) => {
                eprintln!("{}: cannot read an entry: {err}", directory.display());
                unreadable = true;
            }
        }
    }
    queue_dirs.sort();
    if queue_dirs.is_empty() && !unreadable {
        println!("{}: no queues", directory.display());
        return ExitCode::SUCCESS;
    }
    // Each backend's own queue, then its tenants' lanes: (backend, label, directory).
    let mut queues: Vec<(String, String, PathBuf)> = Vec::new();
    for (backend, backend_dir) in queue_dirs {
        queues.push((backend.clone(), backend.clone(), backend_dir.clone()));
        match tenant_lanes(&backend_dir) {
            Ok(lanes) => queues.extend(lanes.into_iter().map(|(tenant, lane_dir)| {
                (
                    backend.clone(),
                    format!("{backend} tenant {tenant}"),
                    lane_dir,
                )
            })),
            Err(err) => {
                eprintln!("{backend}: cannot read its tenants' lanes: {err}");
                unreadable = true;
            }
        }
    }
    let configured: Vec<&str> = config.backend_names().collect();
    let mut damaged = false;
    for (backend, label, queue_dir) in queues {
        let inspection = match inspect_queue(&queue_dir) {
            Ok(inspection) => inspection,
            Err(err) => {
                eprintln!("{label}: cannot read {}: {err}", queue_dir.display());
                unreadable = true;
                continue;
            }
        };
        let note = if configured.contains(&backend.as_str()) {
            ""
        } else {
            " (not a configured backend)"
        };
        let problems = inspection.problems();
        damaged |= !problems.is_empty();
        match action {
            QueueAction::Inspect => {
                println!("{label}{note}: {}", describe_queue(&inspection));
                if !problems.is_empty() {
                    println!(
                        "{label}: {} problem(s); run `promgate queue verify` for each",
                        problems.len()
                    );
                }
            }
            QueueAction::Verify => {
                for problem in &problems {
                    println!("{label}: {problem}");
                }
                let checked: u64 = inspection
                    .segments
                    .iter()
                    .map(|segment| segment.valid_records)
                    .sum();
                let verdict = if problems.is_empty() { "OK" } else { "DAMAGED" };
                println!(
                    "{label}{note}: {checked} records in {} segment(s) checked: {verdict}",
                    inspection.segments.len()
                );
            }
        }
    }
    // Damage the relay repairs at start is shown by `inspect` and fails only `verify`.
    match action {
        _ if unreadable => ExitCode::FAILURE,
        QueueAction::Verify if damaged => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// The per-tenant lanes of a backend's queue directory, by tenant id (none before the
/// relay first opened it).
fn tenant_lanes(backend_dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let lanes_dir = backend_dir.join(LANES_DIR);
    let entries = match std::fs::read_dir(&lanes_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut lanes = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(tenant) = name.to_str().and_then(tenant_of_lane) {
            if entry.file_type()?.is_dir() {
                lanes.push((tenant, entry.path()));
            }
        }
    }
    lanes.sort();
    Ok(lanes)
}

/// One line: records, bytes, oldest age, reader position, segments.
fn describe_queue(inspection: &QueueInspection) -> String {
    let oldest = match inspection.oldest_pending_appended_at {
        Some(appended_at) => {
            let age = SystemTime::now()
                .duration_since(appended_at)
                .unwrap_or_default();
            let age = Duration::from_secs(age.as_secs());
            format!("oldest {} ago", humantime::format_duration(age))
        }
        None => "nothing pending".to_string(),
    };
    format!(
        "{} records, {}, {oldest}, reader at {} (last record {}), {} segment(s)",
        inspection.pending_records,
        HumanSize(inspection.bytes),
        inspection.acked_through,
        inspection.last_seq.unwrap_or(0),
        inspection.segments.len()
    )
}

fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listeners = promgate::bind(&config).await?;
        match path {
            Some(path) => promgate::run_from_file(listeners, config, path, shutdown_signal()).await,
            None => promgate::run(listeners, config, shutdown_signal()).await,
        }
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
