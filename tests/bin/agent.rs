//! `moirai-test-agent --broker ... --config ... --name ...`: the agent's connected mode as a
//! binary of this package, so the integration tests can start it by `CARGO_BIN_EXE_` path.
//! It compiles the very command module `moirai-agent` does, so the tests drive the same code
//! a user runs.

use std::process::ExitCode;

use clap::Parser;

#[path = "../../agent/src/commands/connect.rs"]
mod connect;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    connect: connect::ConnectArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,moirai_agent=info")),
        )
        .init();
    match connect::run(Cli::parse().connect, None) {
        Ok(ended) => ExitCode::from(ended.exit_status()),
        Err(e) => {
            eprintln!("moirai-test-agent: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}
