//! The command line, as clap parses it (raw values; checks happen in the commands).

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "moirai",
    version,
    about = "Places DNN inference across a fleet of heterogeneous edge boards"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Place one graph with one method (or all) and print the comparison table.
    Plan(crate::commands::plan::PlanArgs),
    /// Run every method on every profiled graph in a folder; print Markdown and CSV.
    Bench(crate::commands::bench::BenchArgs),
    /// How the Moirai placer's quality and time scale: sub-graphs of one graph (the first N
    /// ops in topological order) at several sizes.
    BenchScale(crate::commands::bench::BenchScaleArgs),
    /// Import ONNX models, fuse what the backend fuses at run time, print the fused kernels;
    /// with --cluster, cost them and (--out) write the profiled-graph/v1 JSON.
    Coarsen(crate::commands::coarsen::CoarsenArgs),
    /// The edge orchestrator: embedded MQTT broker (or --broker), fleet registry, profiling, replanning.
    Serve(crate::commands::serve::ServeArgs),
    /// Everything on this machine: broker, three emulated boards, profiling, a plan, a join and the replan.
    Demo {
        #[command(flatten)]
        demo: crate::commands::demo::DemoArgs,
        #[command(flatten)]
        fleet: crate::commands::serve::FleetArgs,
    },
    /// Show the orchestrator's fleet registry as a table.
    Fleet(crate::commands::serve::FleetViewArgs),
    /// Send a new agent binary to a share of the fleet; each agent tries it and rolls back
    /// on its own if it does not come online. Exit status 0 only if the whole stage switched.
    Rollout(crate::commands::rollout::RolloutArgs),
    /// One distributed inference on a local fleet (embedded broker, N agents), output as TensorProto.
    Run(crate::commands::run::RunArgs),
    /// Requests against a running `moirai run --serve` (HTTP).
    Infer(crate::commands::infer::InferArgs),
    /// Time from a new agent's birth to the new plan, with simulated agents.
    BenchFleet {
        #[command(flatten)]
        bench: crate::commands::bench_fleet::BenchArgs,
        #[command(flatten)]
        fleet: crate::commands::serve::FleetArgs,
    },
}
