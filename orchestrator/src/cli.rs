//! The command line, as clap parses it (raw values; checks happen in the commands).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Plan(PlanArgs),
    /// Run every method on every profiled graph in a folder; print Markdown and CSV.
    Bench(BenchArgs),
    /// How the Moirai placer's quality and time scale: sub-graphs of one graph (the first N
    /// ops in topological order) at several sizes.
    BenchScale(BenchScaleArgs),
    /// Import ONNX models, fuse what the backend fuses at run time, print the fused kernels;
    /// with --cluster, cost them and (--out) write the profiled-graph/v1 JSON.
    Coarsen(CoarsenArgs),
    /// The edge orchestrator: embedded MQTT broker (or --broker), fleet registry, profiling, replanning.
    Serve(moirai_orchestrator::serve::ServeArgs),
    /// Everything on this machine: broker, three emulated boards, profiling, a plan, a join and the replan.
    Demo {
        #[command(flatten)]
        demo: moirai_orchestrator::demo::DemoArgs,
        #[command(flatten)]
        fleet: moirai_orchestrator::serve::FleetArgs,
    },
    /// Show the orchestrator's fleet registry as a table.
    Fleet(moirai_orchestrator::serve::FleetViewArgs),
    /// Send a new agent binary to a share of the fleet; each agent tries it and rolls back
    /// on its own if it does not come online. Exit status 0 only if the whole stage switched.
    Rollout(moirai_orchestrator::rollout::RolloutArgs),
    /// One distributed inference on a local fleet (embedded broker, N agents), output as TensorProto.
    Run(moirai_orchestrator::infer::run::RunArgs),
    /// Requests against a running `moirai run --serve` (HTTP).
    Infer(moirai_orchestrator::infer::client::InferArgs),
    /// Time from a new agent's birth to the new plan, with simulated agents.
    BenchFleet {
        #[command(flatten)]
        bench: moirai_orchestrator::fleet_bench::BenchArgs,
        #[command(flatten)]
        fleet: moirai_orchestrator::serve::FleetArgs,
    },
}

/// Where the graph comes from and how to place it.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// A profiled-graph/v1 JSON file.
    #[arg(long, conflicts_with = "model")]
    pub graph: Option<PathBuf>,
    /// An ONNX model (needs --cluster).
    #[arg(long, requires = "cluster")]
    pub model: Option<PathBuf>,
    /// A cluster TOML naming devices and links (with --model).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    #[command(flatten)]
    pub onnx: OnnxArgs,
    /// Method name (single, heft, mtopo, metf, msct, getf, moirai) or `all`.
    #[arg(long, default_value = "moirai")]
    pub method: String,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Write the schedule of the chosen method (with `all`, the best) as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw that schedule as an SVG Gantt chart.
    #[arg(long)]
    pub gantt: Option<PathBuf>,
    /// Print the final schedule as JSON on stdout (and the table on stderr).
    #[arg(long)]
    pub json: bool,
}

/// Budget and determinism of the anytime placer.
#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Wall-clock budget of the Moirai placer, in seconds (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub time_limit: f64,
    /// Seed of the search (same seed and threads, same plan).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop each search thread after this many simulated schedules: the plan then depends
    /// only on the seed, the threads and this count, not on the machine's speed (give a
    /// generous --time-limit).
    #[arg(long)]
    pub max_evals: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// A folder of profiled-graph/v1 JSON files.
    pub dir: PathBuf,
    /// Methods to run, comma-separated (default: all).
    #[arg(long)]
    pub methods: Option<String>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Also write the CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

/// How an ONNX model becomes a costed graph (with --model).
#[derive(Args, Debug, Clone)]
pub struct OnnxArgs {
    /// Fusion rules of this backend: wgpu or cpu.
    #[arg(long, default_value = "wgpu")]
    pub backend: String,
    /// Folder of board files (default: beside the cluster file, then its parent).
    #[arg(long)]
    pub boards: Option<PathBuf>,
    /// Measured kernel times (moirai-profiles/v1 JSON) replacing the roofline.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Value of a symbolic input dimension, NAME=VALUE (repeatable).
    #[arg(long)]
    pub dim: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct CoarsenArgs {
    /// ONNX model(s) to coarsen.
    #[arg(long, required = true, num_args = 1..)]
    pub model: Vec<PathBuf>,
    /// A cluster TOML: cost the fused ops on its devices.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    #[command(flatten)]
    pub onnx: OnnxArgs,
    /// Write the costed profiled-graph/v1 JSON here (one model, needs --cluster).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// One Markdown table row per model instead of the signature lists.
    #[arg(long)]
    pub table: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BenchScaleArgs {
    /// A profiled-graph/v1 JSON file (e.g. the transformer sample).
    #[arg(long)]
    pub graph: PathBuf,
    /// Sub-graph sizes, comma-separated.
    #[arg(long, default_value = "100,300,700,1373")]
    pub sizes: String,
    #[command(flatten)]
    pub search: SearchArgs,
}
