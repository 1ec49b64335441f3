//! `moirai`: the orchestrator's command line. Parses arguments, installs logging, dispatches;
//! the work lives in the library (`moirai_orchestrator`).

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Plan(args) => commands::plan::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::BenchScale(args) => commands::bench::run_scale(args),
        Command::Coarsen(args) => commands::coarsen::run(args),
        Command::Serve(args) => commands::serve::serve(args).map_err(Into::into),
        Command::Run(args) => commands::run::run(args).map_err(Into::into),
        Command::Infer(args) => commands::infer::run(args).map_err(Into::into),
        Command::Demo { demo, fleet } => commands::demo::run(demo, fleet).map_err(Into::into),
        Command::Fleet(args) => commands::serve::fleet(args).map(|_| ()).map_err(Into::into),
        Command::Rollout(args) => match commands::rollout::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => Err(anyhow::anyhow!(
                "the stage did not switch completely (see above)"
            )),
            Err(e) => Err(e.into()),
        },
        Command::BenchFleet { bench, fleet } => {
            commands::bench_fleet::run(bench, fleet).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
