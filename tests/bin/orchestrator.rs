//! `moirai-test-orchestrator serve ...` and `... fleet ...`: the orchestrator's `serve` and
//! `fleet` entry points as a binary of this package, so the integration tests can start them
//! by `CARGO_BIN_EXE_` path; they run the same library functions as `moirai serve` and
//! `moirai fleet`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
enum Cli {
    Serve(Box<moirai_orchestrator::serve::ServeArgs>),
    Fleet(moirai_orchestrator::serve::FleetViewArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,moirai_orchestrator=info")
            }),
        )
        .init();
    let args = match Cli::parse() {
        Cli::Serve(args) => args,
        Cli::Fleet(args) => {
            return match moirai_orchestrator::serve::show_fleet(args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("moirai-test-orchestrator: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match moirai_orchestrator::serve::run_blocking(*args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moirai-test-orchestrator: {e}");
            ExitCode::FAILURE
        }
    }
}
