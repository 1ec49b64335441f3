//! `moirai demo`: the whole system on one machine.
//!
//! Starts the orchestrator with its embedded broker, three agents as child processes, each
//! standing for a different board class (they run on this machine and scale their measured
//! times by the ratio of peaks host/board, and say so), lets them profile the model that
//! ships with the repository, prints the plan as a table and writes its Gantt chart; then a
//! fourth agent (a second board of a class already profiled) joins and the replanned
//! placement is printed. Progress bars follow profiling and solving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use thiserror::Error;
use tokio::sync::mpsc;

use super::serve::{describe, plan_table, FleetArgs};
use moirai_orchestrator::local_agent::AgentProcess;
use moirai_orchestrator::replan::CurrentPlan;
use moirai_orchestrator::serve::{self, ServeError, ServeEvent};

#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("agent binary {path} not found: build it with `cargo build --release -p moirai-agent` or pass --agent-bin")]
    NoAgent { path: PathBuf },
    #[error("board file {path}: {reason}")]
    Board { path: PathBuf, reason: String },
    #[error("cannot start agent {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the demo did not finish within {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// `moirai demo` options.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// The model to place (ships with the repository).
    #[arg(long, default_value = "models/demo-cnn.onnx")]
    pub model: PathBuf,
    /// Directory of board files.
    #[arg(long, default_value = "firmware-configs")]
    pub configs: PathBuf,
    /// Board classes of the first agents, one agent each (file stems in --configs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raspberry-pi-4,raspberry-pi-5,jetson-nano"
    )]
    pub boards: Vec<String>,
    /// Board class of the agent that joins later.
    #[arg(long, default_value = "raspberry-pi-5")]
    pub join: String,
    /// Board file of this machine: agents scale their times by its peaks over their board's.
    #[arg(long, default_value = "firmware-configs/x86-cpu.toml")]
    pub host: PathBuf,
    /// Where the plans, Gantt charts, profile store and agent logs go.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// The moirai-agent binary (default: next to this one).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Agents profile on the CPU executor instead of the GPU adapter.
    #[arg(long)]
    pub cpu: bool,
    /// Keep the profile store of an earlier run (default: start fresh, so profiling shows).
    #[arg(long)]
    pub keep_profiles: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 115)]
    pub timeout_s: u64,
}

fn agent_binary(args: &DemoArgs) -> Result<PathBuf, DemoError> {
    moirai_orchestrator::local_agent::agent_binary(args.agent_bin.as_deref())
        .map_err(|path| DemoError::NoAgent { path })
}

fn spawn_agent(
    bin: &Path,
    args: &DemoArgs,
    broker: &str,
    name: &str,
    board: &str,
) -> Result<AgentProcess, DemoError> {
    let config = args.configs.join(format!("{board}.toml"));
    if !config.is_file() {
        return Err(DemoError::Board {
            path: config,
            reason: "no such board file".into(),
        });
    }
    let log = args.out.join(format!("agent-{name}.log"));
    let file = std::fs::File::create(&log).map_err(|source| DemoError::Write {
        path: log.clone(),
        source,
    })?;
    let err = file.try_clone().map_err(|source| DemoError::Write {
        path: log.clone(),
        source,
    })?;
    let mut cmd = Command::new(bin);
    cmd.args(["--broker", broker, "--name", name])
        .arg("--config")
        .arg(&config)
        .arg("--emulate-on")
        .arg(&args.host)
        .args(["--heartbeat-ms", "500"])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    if args.cpu {
        cmd.arg("--cpu");
    }
    let child = cmd.spawn().map_err(|source| DemoError::Spawn {
        name: name.to_string(),
        source,
    })?;
    Ok(AgentProcess::new(child))
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, DemoError> {
    std::fs::write(&path, text).map_err(|source| DemoError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Ops that moved between two plans, by op name.
fn moved(old: &CurrentPlan, new: &CurrentPlan) -> Vec<(String, String, String)> {
    let before = old.placement_by_name();
    new.placement_by_name()
        .into_iter()
        .filter_map(|(op, agent)| match before.get(&op) {
            Some(a) if *a != agent => Some((op, a.clone(), agent)),
            _ => None,
        })
        .collect()
}

/// Runs the demo; prints to stdout.
pub fn run(args: DemoArgs, fleet: FleetArgs) -> Result<(), DemoError> {
    let t_start = Instant::now();
    let bin = agent_binary(&args)?;
    std::fs::create_dir_all(&args.out).map_err(|source| DemoError::Write {
        path: args.out.clone(),
        source,
    })?;
    let mut fleet = fleet;
    fleet.store = args.out.join("profiles.json");
    if !args.keep_profiles {
        let _ = std::fs::remove_file(&fleet.store);
    }
    let model = serve::load_model(&args.model)?;
    println!(
        "model {} ({}): {} kernels, {} distinct signatures, {} tensors",
        model.name,
        args.model.display(),
        model.ops.len(),
        model.signatures().len(),
        model.edges.len()
    );
    let host = std::fs::read_to_string(&args.host)
        .ok()
        .and_then(|t| moirai_core::device::BoardSpec::from_toml(&t, "host").ok())
        .ok_or_else(|| DemoError::Board {
            path: args.host.clone(),
            reason: "cannot read the host board".into(),
        })?;
    println!(
        "agents run on this machine and emulate their boards: each multiplies its measured \
         times by host peak / board peak (host described by {}, {} GFLOP/s, {} GB/s)",
        args.host.display(),
        host.compute.f32_gflops,
        host.memory.bandwidth_gbps
    );
    let fleet_debounce = fleet.debounce_ms;
    let opts = fleet.options(
        model,
        None,
        "127.0.0.1:0".parse().expect("a socket address"),
        moirai_orchestrator::replan::moirai_placer(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;
    let timeout = Duration::from_secs(args.timeout_s);
    let store_shown = fleet_store_display(&args);
    let out_shown = args.out.display().to_string();
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve::run(opts, tx, async {
            let _ = stop_rx.await;
        }));
        let bars = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let spin = ProgressStyle::with_template("{prefix:>28} {spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let mut profile_bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
        let mut solving: Option<ProgressBar> = None;
        let mut agents: Vec<AgentProcess> = Vec::new();
        let mut broker = String::new();
        let mut plans: Vec<Arc<CurrentPlan>> = Vec::new();
        let mut joined_late = false;
        let mut late_birth: Option<Instant> = None;
        let deadline = tokio::time::Instant::now() + timeout;
        let first_names: Vec<String> = args
            .boards
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{b}-{}", i + 1))
            .collect();
        let late_name = format!("{}-late", args.join);
        let result: Result<(), DemoError> = loop {
            let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => break Err(DemoError::Timeout(timeout, "the orchestrator stopped".into())),
                Err(_) => break Err(DemoError::Timeout(timeout, "waiting for the plans".into())),
            };
            match &ev {
                ServeEvent::Connected { broker: b, .. } => {
                    if broker.is_empty() {
                        broker = b.to_string();
                        bars.println(format!("embedded broker at {broker}; starting {} agents", first_names.len())).ok();
                        let mut failed = None;
                        for (name, board) in first_names.iter().zip(&args.boards) {
                            match spawn_agent(&bin, &args, &broker, name, board) {
                                Ok(a) => agents.push(a),
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        if let Some(e) = failed {
                            break Err(e);
                        }
                    }
                }
                ServeEvent::ProfileProgress { board, agent, done, total } => {
                    let bar = profile_bars.entry(board.clone()).or_insert_with(|| {
                        let b = bars.add(ProgressBar::new(u64::from(*total)));
                        b.set_style(style.clone());
                        b.set_prefix(format!("profiling {board}"));
                        b.set_message(format!("on {agent}"));
                        b
                    });
                    bar.set_position(u64::from(*done));
                    if done >= total {
                        bar.finish_with_message(format!("on {agent}: done"));
                    }
                }
                ServeEvent::Replanning { reasons } => {
                    let b = bars.add(ProgressBar::new_spinner());
                    b.set_style(spin.clone());
                    b.set_prefix("solving");
                    b.set_message(format!("({} change(s))", reasons.len()));
                    b.enable_steady_tick(Duration::from_millis(100));
                    solving = Some(b);
                }
                ServeEvent::Planned { plan, previous } => {
                    if let Some(b) = solving.take() {
                        b.finish_with_message(format!("epoch {} in {:.1} ms", plan.epoch, plan.solve.as_secs_f64() * 1e3));
                    }
                    let all_first = first_names.iter().all(|n| plan.agents.contains(n));
                    if !joined_late && all_first && plan.agents.len() == first_names.len() {
                        bars.suspend(|| {
                            println!();
                            print!("{}", plan_table(plan));
                        });
                        let svg = moirai_orchestrator::report::gantt::svg(&plan.graph, &plan.schedule);
                        let p = args.out.join("plan-1.svg");
                        if let Err(e) = write(p.clone(), &svg) {
                            break Err(e);
                        }
                        bars.println(format!("Gantt chart: {}", p.display())).ok();
                        plans.push(plan.clone());
                        bars.println(format!("a {} agent joins: {late_name}", args.join)).ok();
                        match spawn_agent(&bin, &args, &broker, &late_name, &args.join) {
                            Ok(a) => agents.push(a),
                            Err(e) => break Err(e),
                        }
                        joined_late = true;
                    } else if joined_late && plan.agents.contains(&late_name) {
                        bars.suspend(|| {
                            println!();
                            print!("{}", plan_table(plan));
                            if let Some(old) = previous {
                                let m = moved(old, plan);
                                println!(
                                    "replanned: epoch {} replaces {} (makespan {:.3} -> {:.3} ms), {} op(s) moved, because: {}",
                                    plan.epoch,
                                    old.epoch,
                                    old.schedule.makespan_ms,
                                    plan.schedule.makespan_ms,
                                    m.len(),
                                    plan.reasons.join("; ")
                                );
                                for (op, from, to) in m.iter().take(12) {
                                    println!("  {op}: {from} -> {to}");
                                }
                            }
                        });
                        let svg = moirai_orchestrator::report::gantt::svg(&plan.graph, &plan.schedule);
                        let p = args.out.join("plan-2.svg");
                        if let Err(e) = write(p.clone(), &svg) {
                            break Err(e);
                        }
                        println!("Gantt chart: {}", p.display());
                        if let Some(b) = late_birth {
                            println!(
                                "{late_name}: birth received -> new plan published in {:.0} ms (debounce {} ms, solve {:.1} ms)",
                                b.elapsed().as_secs_f64() * 1e3,
                                fleet_debounce,
                                plan.solve.as_secs_f64() * 1e3
                            );
                        }
                        plans.push(plan.clone());
                        break Ok(());
                    }
                }
                ServeEvent::Joined { name, board, emulation_scale, .. } => {
                    if *name == late_name {
                        late_birth = Some(Instant::now());
                    }
                    let how = emulation_scale
                        .map(|s| format!(", emulated: measured times x{s:.2}"))
                        .unwrap_or_default();
                    bars.println(format!("joined: {name} ({board}{how})")).ok();
                }
                other => {
                    if let Some(line) = describe(other) {
                        if matches!(other, ServeEvent::Left { .. } | ServeEvent::PlanFailed(_)) {
                            bars.println(line).ok();
                        }
                    }
                }
            }
        };
        drop(agents);
        let _ = stop_tx.send(());
        let _ = server.await;
        result
    })?;
    println!(
        "demo finished in {:.1} s; profiles in {}, agent logs in {}",
        t_start.elapsed().as_secs_f64(),
        store_shown,
        out_shown
    );
    Ok(())
}

fn fleet_store_display(args: &DemoArgs) -> String {
    args.out.join("profiles.json").display().to_string()
}
