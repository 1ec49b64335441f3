//! `moirai demo`: the whole system on one machine, end to end.
//!
//! 1. The orchestrator starts with its embedded broker and its inference session; three
//!    agents start as child processes, each standing for a different board class (they run
//!    on this machine and scale their measured times by the ratio of peaks host/board, and
//!    say so), and profile the model that ships with the repository.
//! 2. The plan is printed with its predicted latency and its Gantt chart written.
//! 3. Requests stream (`--requests`, one every `--interval-ms`, at most `--in-flight` at
//!    once), each answer checked against the reference output of onnx's own evaluator
//!    (`models/demo-cnn/test_data_set_0`).
//! 4. A fourth agent joins a third of the way in, and the fleet replans.
//! 5. Two thirds of the way in, an agent with a share is killed with SIGKILL, and the fleet
//!    replans again; the requests it held run again.
//! 6. At the end, a table per epoch: requests answered, re-run, lost (must be 0), measured
//!    p50/p90 next to the prediction, and a Gantt chart per epoch.
//!
//! Progress bars follow profiling and solving. `moirai fleet --broker <the printed address>`
//! shows the registry and the serving figures while it runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use thiserror::Error;
use tokio::sync::mpsc;

use super::serve::{describe, plan_table, FleetArgs};
use moirai_core::stats::percentile;
use moirai_model::loaded::LoadedModel;
use moirai_model::tensor_proto::{self as tensor, NamedTensor};
use moirai_orchestrator::infer::session::{InferEvent, InferOutcome, SessionHandle};
use moirai_orchestrator::infer::InferError;
use moirai_orchestrator::local_agent::AgentProcess;
use moirai_orchestrator::replan::CurrentPlan;
use moirai_orchestrator::serve::{self, ServeError, ServeEvent, ServeInference};

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
    #[error("reference data {path}: {reason}")]
    Reference { path: PathBuf, reason: String },
    #[error("{lost} request(s) lost and {wrong} answered wrong out of {sent}")]
    Answers {
        lost: usize,
        wrong: usize,
        sent: usize,
    },
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
    /// Agents profile and run their shares on the GPU adapter. By default they use tract:
    /// on a machine whose only adapter is lavapipe (a CPU rasterizer, CI's), the fused WGSL
    /// kernels run about 8x slower than tract and the stream takes minutes instead of
    /// seconds. (Choosing per kernel between the two is issue 14's next step.)
    #[arg(long)]
    pub gpu: bool,
    /// Keep the profile store of an earlier run (default: start fresh, so profiling shows).
    #[arg(long)]
    pub keep_profiles: bool,
    /// Requests to stream once the first plan is in force.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// One request every this many milliseconds...
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// ...with at most this many in flight.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 115)]
    pub timeout_s: u64,
}

/// Relative tolerance of an answer against the reference: max|got - want| / max|want|.
const TOLERANCE: f64 = 1e-4;

/// The model's reference input and output: `<model without .onnx>/test_data_set_0/`.
fn reference_case(
    model_path: &Path,
    model: &LoadedModel,
) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>), DemoError> {
    let dir = model_path.with_extension("").join("test_data_set_0");
    let read = |kind: &str, names: Vec<String>| -> Result<Vec<NamedTensor>, DemoError> {
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let path = dir.join(format!("{kind}_{i}.pb"));
                let mut t = tensor::read(&path).map_err(|e| DemoError::Reference {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                t.name = name;
                Ok(t)
            })
            .collect()
    };
    let inputs = read(
        "input",
        model.inputs().iter().map(|t| t.name.clone()).collect(),
    )?;
    let outputs = read(
        "output",
        model.outputs().iter().map(|t| t.name.clone()).collect(),
    )?;
    Ok((inputs, outputs))
}

/// Whether every output matches its reference within [`TOLERANCE`].
fn correct(got: &[NamedTensor], want: &[NamedTensor]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            moirai_core::tensor::rel_diff(&g.value, &w.value).is_some_and(|d| d <= TOLERANCE)
        })
}

/// The answers of one epoch.
#[derive(Default)]
struct EpochRow {
    predicted_ms: f64,
    shares: String,
    answered: usize,
    wrong: usize,
    reruns: u32,
    /// Dispatch on the epoch to the last output, ms.
    run_ms: Vec<f64>,
    /// Submission to the last output (queueing included), ms.
    total_ms: Vec<f64>,
}

/// The per-epoch table the demo ends with.
fn epoch_table(rows: &BTreeMap<u64, EpochRow>, lost: usize) -> String {
    let mut out = String::from(
        "| epoch | shares (groups) | answered | wrong | re-run | predicted ms | p50 ms | p90 ms | p50 / predicted | p50 incl. queue ms |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (epoch, r) in rows {
        if r.answered == 0 && r.shares.is_empty() {
            continue;
        }
        let mut run = r.run_ms.clone();
        run.sort_by(f64::total_cmp);
        let mut total = r.total_ms.clone();
        total.sort_by(f64::total_cmp);
        let q = |v: &[f64], p| {
            if v.is_empty() {
                f64::NAN
            } else {
                percentile(v, p)
            }
        };
        out.push_str(&format!(
            "| {epoch} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
            r.shares,
            r.answered,
            r.wrong,
            r.reruns,
            r.predicted_ms,
            q(&run, 50.0),
            q(&run, 90.0),
            q(&run, 50.0) / r.predicted_ms,
            q(&total, 50.0),
        ));
    }
    out.push_str(&format!("lost: {lost}\n"));
    out
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
    if !args.gpu {
        cmd.arg("--cpu");
    }
    let child = cmd.spawn().map_err(|source| DemoError::Spawn {
        name: name.to_string(),
        source,
    })?;
    Ok(AgentProcess::new(child))
}

/// One line on stdout, above the progress bars (which indicatif hides when stdout is not a
/// terminal; the line is printed either way).
fn say(bars: &MultiProgress, line: impl std::fmt::Display) {
    bars.suspend(|| println!("{line}"));
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
    // Imported and coarsened once: the fleet plans its groups, the agents run them.
    let loaded = Arc::new(LoadedModel::load(&args.model).map_err(ServeError::from)?);
    let model = loaded.plan.clone();
    println!(
        "model {} ({}): {} kernels, {} distinct signatures, {} tensors",
        model.name,
        args.model.display(),
        model.ops.len(),
        model.signatures().len(),
        model.edges.len()
    );
    let (input, reference) = reference_case(&args.model, &loaded)?;
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
    let mut opts = fleet.options(
        model,
        None,
        "127.0.0.1:0".parse().expect("a socket address"),
        moirai_orchestrator::replan::moirai_placer(),
    );
    opts.inference = Some(ServeInference {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        model: loaded.clone(),
        min_agents: args.boards.len(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;
    let timeout = Duration::from_secs(args.timeout_s);
    let store_shown = fleet_store_display(&args);
    let out_shown = args.out.display().to_string();
    let n = args.requests.max(1);
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
        let mut agents: BTreeMap<String, AgentProcess> = BTreeMap::new();
        let mut broker = String::new();
        let mut handle: Option<SessionHandle> = None;
        let mut fleet_plans = 0usize;
        let mut late_birth: Option<Instant> = None;
        let mut late_spawned = false;
        let mut killed: Option<String> = None;
        // The inference epochs: predicted makespan and shares, then the answers.
        let mut rows: BTreeMap<u64, EpochRow> = BTreeMap::new();
        // Agents with a share in the newest epoch (a SIGKILL victim must have work).
        let mut working: Vec<String> = Vec::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<InferOutcome, InferError>>();
        let mut streaming = false;
        let mut stream_started: Option<Instant> = None;
        let mut sent = 0usize;
        let mut in_flight = 0usize;
        let mut lost = 0usize;
        let mut answered = 0usize;
        let mut send_tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
        send_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::Instant::now() + timeout;
        let first_names: Vec<String> = args
            .boards
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{b}-{}", i + 1))
            .collect();
        let late_name = format!("{}-late", args.join);
        let result: Result<(), DemoError> = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    break Err(DemoError::Timeout(timeout, format!("{answered} of {n} requests answered, {lost} lost")));
                }
                Some(r) = done_rx.recv() => {
                    in_flight -= 1;
                    match r {
                        Ok(o) => {
                            answered += 1;
                            let row = rows.entry(o.epoch).or_default();
                            row.answered += 1;
                            row.reruns += o.reruns;
                            row.run_ms.push(o.run_latency.as_secs_f64() * 1e3);
                            row.total_ms.push(o.latency.as_secs_f64() * 1e3);
                            if !correct(&o.outputs, &reference) {
                                row.wrong += 1;
                            }
                        }
                        Err(e) => {
                            lost += 1;
                            say(&bars, format!("request lost: {e}"));
                        }
                    }
                    if answered + lost == n {
                        break Ok(());
                    }
                }
                _ = send_tick.tick(), if streaming && sent < n && in_flight < args.in_flight.max(1) => {
                    let Some(h) = handle.clone() else { continue };
                    let inputs = input.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let _ = done.send(h.infer(inputs).await);
                    });
                    sent += 1;
                    in_flight += 1;
                    if sent == n / 3 && !late_spawned {
                        say(&bars, format!("request {sent}/{n}: a {} agent joins: {late_name}", args.join));
                        match spawn_agent(&bin, &args, &broker, &late_name, &args.join) {
                            Ok(a) => { agents.insert(late_name.clone(), a); }
                            Err(e) => break Err(e),
                        }
                        late_spawned = true;
                    }
                    if sent == 2 * n / 3 && killed.is_none() {
                        let victim = working
                            .iter()
                            .find(|a| **a != late_name && agents.contains_key(*a))
                            .cloned()
                            .or_else(|| first_names.iter().find(|a| agents.contains_key(*a)).cloned());
                        if let Some(v) = victim {
                            if let Some(a) = agents.remove(&v) {
                                say(&bars, format!("request {sent}/{n}: SIGKILL {v} (pid {}) with {in_flight} request(s) in flight", a.id()));
                                a.kill();
                            }
                            killed = Some(v);
                        }
                    }
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else {
                        break Err(DemoError::Timeout(timeout, "the orchestrator stopped".into()));
                    };
                    match &ev {
                        ServeEvent::Connected { broker: b, .. } => {
                            if broker.is_empty() {
                                broker = b.to_string();
                                say(&bars, format!("embedded broker at {broker} (`moirai fleet --broker {broker}` shows the fleet); starting {} agents", first_names.len()));
                                let mut failed = None;
                                for (name, board) in first_names.iter().zip(&args.boards) {
                                    match spawn_agent(&bin, &args, &broker, name, board) {
                                        Ok(a) => { agents.insert(name.clone(), a); }
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
                        ServeEvent::InferenceListening { addr, handle: h } => {
                            say(&bars, format!("inference: POST /v1/infer on http://{addr}"));
                            handle = Some(h.clone());
                        }
                        ServeEvent::InferenceFailed(e) => {
                            break Err(DemoError::Timeout(timeout, format!("inference not served: {e}")));
                        }
                        ServeEvent::Inference(InferEvent::Planned { epoch, plan, .. }) => {
                            let mut shares: BTreeMap<String, usize> = BTreeMap::new();
                            for op in &plan.schedule.ops {
                                if let Some(name) = plan.agents.get(op.device as usize) {
                                    *shares.entry(name.clone()).or_default() += 1;
                                }
                            }
                            working = plan
                                .split
                                .specs
                                .iter()
                                .filter(|(_, s)| !s.nodes.is_empty())
                                .map(|(a, _)| a.clone())
                                .collect();
                            let row = rows.entry(*epoch).or_default();
                            row.predicted_ms = plan.predicted_ms;
                            row.shares = shares.iter().map(|(a, g)| format!("{a}:{g}")).collect::<Vec<_>>().join(" ");
                            let svg = moirai_orchestrator::report::gantt::svg(&plan.graph, &plan.schedule);
                            let p = args.out.join(format!("epoch-{epoch}.svg"));
                            if let Err(e) = write(p.clone(), &svg) {
                                break Err(e);
                            }
                            say(&bars, format!("inference epoch {epoch}: predicted {:.1} ms, shares {}; Gantt chart {}", plan.predicted_ms, row.shares, p.display()));
                        }
                        ServeEvent::Inference(InferEvent::Ready { epoch }) => {
                            say(&bars, format!("inference epoch {epoch} in force (every agent with a share loaded it)"));
                        }
                        ServeEvent::Inference(InferEvent::Rerun { ids, agent }) => {
                            say(&bars, format!("{agent} died: {} request(s) it held run again on the next epoch", ids.len()));
                        }
                        ServeEvent::Inference(_) => {}
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
                            fleet_plans += 1;
                            let svg = moirai_orchestrator::report::gantt::svg(&plan.graph, &plan.schedule);
                            let p = args.out.join(format!("plan-{fleet_plans}.svg"));
                            if let Err(e) = write(p.clone(), &svg) {
                                break Err(e);
                            }
                            bars.suspend(|| {
                                println!();
                                print!("{}", plan_table(plan));
                                println!("Gantt chart: {}", p.display());
                                if let Some(old) = previous {
                                    let m = moved(old, plan);
                                    println!(
                                        "replanned: epoch {} replaces {} (makespan {:.3} -> {:.3} ms), {} op(s) moved, because: {}",
                                        plan.epoch, old.epoch, old.schedule.makespan_ms, plan.schedule.makespan_ms, m.len(), plan.reasons.join("; ")
                                    );
                                    for (op, from, to) in m.iter().take(12) {
                                        println!("  {op}: {from} -> {to}");
                                    }
                                }
                            });
                            if let (Some(b), true) = (late_birth.take(), plan.agents.contains(&late_name)) {
                                say(&bars, format!(
                                    "{late_name}: birth received -> new plan published in {:.0} ms (debounce {} ms, solve {:.1} ms)",
                                    b.elapsed().as_secs_f64() * 1e3,
                                    fleet_debounce,
                                    plan.solve.as_secs_f64() * 1e3
                                ));
                            }
                            // Profiled and planned on every first agent: the stream starts.
                            if !streaming && first_names.iter().all(|a| plan.agents.contains(a)) {
                                say(&bars, format!("streaming {n} requests, one every {} ms, at most {} in flight", args.interval_ms, args.in_flight));
                                streaming = true;
                                stream_started = Some(Instant::now());
                            }
                        }
                        ServeEvent::Joined { name, board, emulation_scale, .. } => {
                            if *name == late_name {
                                late_birth = Some(Instant::now());
                            }
                            let how = emulation_scale
                                .map(|s| format!(", emulated: measured times x{s:.2}"))
                                .unwrap_or_default();
                            say(&bars, format!("joined: {name} ({board}{how})"));
                        }
                        other => {
                            if let Some(line) = describe(other) {
                                if matches!(other, ServeEvent::Left { .. } | ServeEvent::PlanFailed(_)) {
                                    say(&bars, line);
                                }
                            }
                        }
                    }
                }
            }
        };
        drop(agents);
        let _ = stop_tx.send(());
        let _ = server.await;
        result?;
        let wrong: usize = rows.values().map(|r| r.wrong).sum();
        println!();
        println!(
            "{n} requests in {:.1} s; per inference epoch (latency from dispatch on the epoch; queue included in the last column):",
            stream_started.map_or(0.0, |t| t.elapsed().as_secs_f64())
        );
        print!("{}", epoch_table(&rows, lost));
        if lost > 0 || wrong > 0 {
            return Err(DemoError::Answers { lost, wrong, sent: n });
        }
        println!("every answer matches the reference (max |got - want| / max |want| <= {TOLERANCE:e})");
        Ok(())
    })?;
    println!(
        "demo finished in {:.1} s; profiles in {}, plans and agent logs in {}",
        t_start.elapsed().as_secs_f64(),
        store_shown,
        out_shown
    );
    Ok(())
}

fn fleet_store_display(args: &DemoArgs) -> String {
    args.out.join("profiles.json").display().to_string()
}
