//! `moirai-test-orchestrator serve ...` and `... fleet ...`: the orchestrator's `serve` and
//! `fleet` commands as a binary of this package, so the integration tests can start them by
//! `CARGO_BIN_EXE_` path. It compiles the very command module `moirai` does (options,
//! printing and all), so the tests drive the same code a user runs.

use std::process::ExitCode;

use clap::Parser;

#[path = "../../orchestrator/src/commands/serve.rs"]
mod serve;

#[derive(Parser)]
enum Cli {
    Serve(Box<serve::ServeArgs>),
    Fleet(serve::FleetViewArgs),
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
            return match serve::fleet(args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("moirai-test-orchestrator: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match serve::serve(*args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moirai-test-orchestrator: {e}");
            ExitCode::FAILURE
        }
    }
}
