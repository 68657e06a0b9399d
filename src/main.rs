//! The `promgate` command: `serve` and `check-config` (DESIGN §2). The only place
//! that exits the process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use promgate::config::Config;

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
            Ok(_) => {
                println!("{}: OK", config.display());
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
