//! The `promgate` command: `serve` and `check-config` (DESIGN §2). The only place
//! that exits the process. `check-config` also warns, without failing, about tenants in
//! the registry that name backends the config does not have (DESIGN §9).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use promgate::config::Config;
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
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (on built-in defaults when no config file is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print every problem at once; exit 1 on any.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Serve { config } => {
            promgate::telemetry::init_logging();
            let config = match config {
                Some(path) => match Config::load(&path) {
                    Ok(config) => config,
                    Err(errors) => {
                        for problem in &errors.problems {
                            tracing::error!(config = %path.display(), problem = %problem, "invalid configuration");
                        }
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::defaults(),
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "promgate stopped with an error");
                    ExitCode::FAILURE
                }
            }
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

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listeners = promgate::bind(&config).await?;
        promgate::run(listeners, config, shutdown_signal()).await
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
