//! The pieces of `moirai run` (one distributed inference on a local fleet): starting
//! `moirai-agent` processes, sending requests pipelined, and the latency
//! benchmark. The command itself (options, printing) is the binary's `commands::run`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use moirai_core::stats::percentile;
use moirai_core::wire::BrokerAddr;

use super::session::{self, InferOutcome};
use super::InferError;
use moirai_model::tensor_proto::NamedTensor;

/// Why `moirai run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("agent binary {0} not found: build it with `cargo build -p moirai-agent` or pass --agent-bin")]
    NoAgent(PathBuf),
    #[error("board file {0} not found")]
    Board(PathBuf),
    #[error("cannot start agent {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the model has {model} input(s) but {given} --input file(s) were given")]
    Inputs { model: usize, given: usize },
    #[error("output differs from the reference by {diff:e} relative (tolerance {tol:e})")]
    Mismatch { diff: f64, tol: f32 },
    #[error("output `{name}` is {got}, the reference {want}")]
    Shape {
        name: String,
        got: String,
        want: String,
    },
    #[error("{given} --reference files for {outputs} model outputs")]
    References { outputs: usize, given: usize },
    #[error("--agents must be at least 1")]
    NoAgents,
}

pub use crate::local_agent::AgentProcess;

/// The agent binary next to the running one, or `given`.
pub fn agent_binary(given: Option<&Path>) -> Result<PathBuf, RunError> {
    crate::local_agent::agent_binary(given).map_err(RunError::NoAgent)
}

/// Starts `moirai-agent --broker .. --name .. --config .. FLAGS...` as a child process
/// (`flags`: the executor and data path, as `moirai run` builds them); logs go to `log`.
pub fn spawn_agent(
    bin: &Path,
    broker: &BrokerAddr,
    name: &str,
    config: &Path,
    model: Option<&Path>,
    flags: &[String],
    log: &Path,
) -> Result<AgentProcess, RunError> {
    if !config.is_file() {
        return Err(RunError::Board(config.to_path_buf()));
    }
    let spawn = |source| RunError::Spawn {
        name: name.to_string(),
        source,
    };
    let file = std::fs::File::create(log).map_err(spawn)?;
    let err = file.try_clone().map_err(spawn)?;
    let mut cmd = Command::new(bin);
    cmd.args(["--broker", &broker.to_string(), "--name", name])
        .arg("--config")
        .arg(config)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    let child = cmd.spawn().map_err(spawn)?;
    Ok(AgentProcess::new(child))
}

/// Sends `repeat` requests with at most `in_flight` at once; outcomes in completion order.
pub async fn pipelined(
    handle: &session::SessionHandle,
    inputs: Vec<NamedTensor>,
    repeat: usize,
    in_flight: usize,
) -> Vec<Result<InferOutcome, InferError>> {
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(repeat);
    let mut sent = 0;
    while out.len() < repeat {
        while sent < repeat && set.len() < in_flight.max(1) {
            let h = handle.clone();
            let inputs = inputs.clone();
            set.spawn(async move { h.infer(inputs).await });
            sent += 1;
        }
        match set.join_next().await {
            Some(Ok(r)) => out.push(r),
            Some(Err(_)) => out.push(Err(InferError::Stopped)),
            None => break,
        }
    }
    out
}

/// One row of the benchmark.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub in_flight: usize,
    pub requests: usize,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Median of (measured run latency / predicted makespan).
    pub ratio: f64,
}

/// Throughput and latency with 1, 4 and 16 requests in flight, `n` requests each.
pub async fn bench(
    handle: &session::SessionHandle,
    inputs: &[NamedTensor],
    n: usize,
) -> Result<Vec<BenchRow>, InferError> {
    let mut rows = Vec::new();
    for k in [1usize, 4, 16] {
        let t0 = Instant::now();
        let results = pipelined(handle, inputs.to_vec(), n, k).await;
        let wall = t0.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        let mut ratios = Vec::new();
        for r in results {
            let o = r?;
            let ms = o.latency.as_secs_f64() * 1e3;
            lat.push(ms);
            if o.predicted_ms > 0.0 {
                ratios.push(ms / o.predicted_ms);
            }
        }
        lat.sort_by(f64::total_cmp);
        ratios.sort_by(f64::total_cmp);
        rows.push(BenchRow {
            in_flight: k,
            requests: n,
            throughput: n as f64 / wall.max(1e-9),
            p50_ms: percentile(&lat, 50.0),
            p90_ms: percentile(&lat, 90.0),
            p99_ms: percentile(&lat, 99.0),
            ratio: percentile(&ratios, 50.0),
        });
    }
    Ok(rows)
}

/// The benchmark as a Markdown table.
pub fn bench_table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| in flight | requests | req/s | p50 ms | p90 ms | p99 ms | measured/predicted (p50) |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            r.in_flight, r.requests, r.throughput, r.p50_ms, r.p90_ms, r.p99_ms, r.ratio
        ));
    }
    s
}
