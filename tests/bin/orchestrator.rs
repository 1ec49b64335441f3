//! `moirai-test-orchestrator serve ...`: the orchestrator's `serve` entry point as a binary
//! of this package, so the integration tests can start it by `CARGO_BIN_EXE_` path; it runs
//! the same library function as `moirai serve`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
enum Cli {
    Serve(moirai_orchestrator::serve::ServeArgs),
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
    let Cli::Serve(args) = Cli::parse();
    match moirai_orchestrator::serve::run_blocking(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moirai-test-orchestrator: {e}");
            ExitCode::FAILURE
        }
    }
}
