//! `moirai run --model M.onnx --input x.pb --agents N [--out y.pb]`: one distributed
//! inference on a local fleet: the embedded broker, N `moirai-agent` processes
//! standing for different board classes, a plan, the request, the output as an ONNX
//! TensorProto. With `--repeat` and `--in-flight` it sends several requests, pipelined.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moirai_core::wire::BrokerAddr;
use tokio::sync::mpsc;

use moirai_core::stats::percentile;
use moirai_model::loaded::LoadedModel;
use moirai_model::tensor_proto as tensor;
use moirai_orchestrator::infer::model::Placement;
use moirai_orchestrator::infer::run::{
    agent_binary, bench, bench_table, pipelined, spawn_agent, RunError,
};
use moirai_orchestrator::infer::session::{self, InferEvent, InferOutcome, SessionOptions};
use moirai_orchestrator::infer::InferError;

/// How `moirai run` places the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlacementArg {
    /// The Moirai placer on the boards' roofline costs (may keep everything on one board).
    Moirai,
    /// Equal FLOP shares in topological order: every agent runs a stage.
    Pipeline,
}

/// `moirai run` options.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The ONNX model (weights inside).
    #[arg(long)]
    pub model: PathBuf,
    /// Input tensors (ONNX TensorProto), in the model's input order.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// Local agents to start.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Where to write the output tensor (TensorProto; a model with several outputs gets
    /// `_1`, `_2`... before the extension for the others).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Reference outputs (TensorProto), in the model's output order (repeat the flag; fewer
    /// than the outputs compares the first ones): prints the largest difference relative to
    /// each reference's scale (max|got - want| / max|want|) and fails above --tolerance.
    #[arg(long)]
    pub reference: Vec<PathBuf>,
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    /// Board classes of the agents, cycled (file stems in --configs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raspberry-pi-5,jetson-orin-nano,raspberry-pi-4,x86-cpu"
    )]
    pub boards: Vec<String>,
    #[arg(long, default_value = "firmware-configs")]
    pub configs: PathBuf,
    /// Measured kernel times (`moirai-profiles/v1`, from `moirai-agent profile --backend
    /// <the agents' backend> --board BOARD`) the plan uses instead of the roofline where it
    /// has them.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "pipeline")]
    pub placement: PlacementArg,
    /// Placer time limit (ms) with --placement moirai.
    #[arg(long, default_value_t = 1000)]
    pub time_limit_ms: u64,
    /// Agents get no local copy of the model: the orchestrator streams their weights.
    #[arg(long)]
    pub stream_weights: bool,
    /// Requests to send (the same input each time).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// The moirai-agent binary (default: next to this one).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Executor of the agents' shares: wgpu (fused WGSL kernels on the machine's adapter;
    /// tract when it has none) or cpu (tract).
    #[arg(long, default_value = "wgpu", value_parser = ["wgpu", "cpu"])]
    pub agent_backend: String,
    /// How activations cross between agents: mqtt (through the broker) or tcp (direct
    /// connections between the agents, the broker as fallback).
    #[arg(long, default_value = "mqtt", value_parser = ["mqtt", "tcp"])]
    pub data_path: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// After the run, measure throughput with 1, 4 and 16 requests in flight (this many
    /// requests each), latency percentiles and measured/predicted latency.
    #[arg(long)]
    pub bench: Option<usize>,
    /// Then keep the fleet up and serve `POST /v1/infer` and `GET /v1/metrics` on this
    /// address until Ctrl-C (`moirai infer --url` talks to it).
    #[arg(long)]
    pub serve: Option<std::net::SocketAddr>,
}

impl RunArgs {
    /// The agent flags these options ask for: the share executor and the data path.
    pub fn worker_flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.agent_backend == "cpu" {
            f.push("--cpu".to_string());
        }
        if self.data_path == "tcp" {
            f.extend(["--direct-listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        f
    }
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    if i == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("pb");
    path.with_file_name(format!("{stem}_{i}.{ext}"))
}

/// Runs `moirai run`; prints to stdout.
pub fn run(args: RunArgs) -> Result<(), RunError> {
    if args.agents == 0 {
        return Err(RunError::NoAgents);
    }
    let t_start = Instant::now();
    let bin = agent_binary(args.agent_bin.as_deref())?;
    let executor = if args.agent_backend == "cpu" {
        moirai_core::device::Backend::Cpu
    } else {
        moirai_core::device::Backend::Wgpu
    };
    let model = Arc::new(LoadedModel::load_for(&args.model, executor).map_err(InferError::from)?);
    if args.input.len() != model.inputs().len() {
        return Err(RunError::Inputs {
            model: model.inputs().len(),
            given: args.input.len(),
        });
    }
    let mut inputs = Vec::new();
    for (path, spec) in args.input.iter().zip(model.inputs()) {
        let mut t = tensor::read(path).map_err(InferError::from)?;
        t.name = spec.name.clone();
        inputs.push(t);
    }
    println!(
        "model {} ({}): {} ONNX nodes in {} fused groups, sha256 {}",
        model.onnx.name,
        args.model.display(),
        model.onnx.nodes.len(),
        model.coarse.groups.len(),
        &moirai_core::digest::hex(&model.sha256)[..16]
    );
    let logs = std::env::temp_dir().join(format!("moirai-run-{}", std::process::id()));
    std::fs::create_dir_all(&logs).map_err(|source| RunError::Spawn {
        name: "log folder".into(),
        source,
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let broker =
        moirai_orchestrator::broker::start("127.0.0.1:0".parse().expect("an address"), 64)?;
    let addr = BrokerAddr {
        host: broker.addr.ip().to_string(),
        port: broker.addr.port(),
    };
    if args.serve.is_some() {
        println!(
            "embedded broker on mqtt://{}:{} (`moirai fleet --broker mqtt://{}:{}` shows the serving figures)",
            addr.host, addr.port, addr.host, addr.port
        );
    }
    let opts = SessionOptions {
        broker: addr.clone(),
        prefix: moirai_core::wire::topic::DEFAULT_PREFIX.into(),
        placement: match args.placement {
            PlacementArg::Moirai => Placement::Moirai {
                time_limit: Duration::from_millis(args.time_limit_ms),
            },
            PlacementArg::Pipeline => Placement::Pipeline,
        },
        min_agents: args.agents,
        request_timeout: Duration::from_secs(args.timeout_s),
        debounce: Duration::from_millis(200),
        measured: session::Measured::fixed(match &args.profiles {
            Some(p) => moirai_orchestrator::infer::model::load_profiles(p)?,
            None => Default::default(),
        }),
        security: Default::default(),
        // No fleet loop runs here: the session says the orchestrator is online, so the
        // agents announce themselves.
        announce: true,
    };
    let timeout = Duration::from_secs(args.timeout_s);
    let outcomes = rt.block_on(async {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (handle, task) = session::start(opts, model.clone(), ev_tx, async {
            let _ = stop_rx.await;
        })?;
        let printer = tokio::spawn(async move {
            while let Some(ev) = ev_rx.recv().await {
                match ev {
                    InferEvent::Joined { name, board } => println!("joined: {name} ({board})"),
                    InferEvent::Left { name } => println!("left: {name}"),
                    InferEvent::Planned { summary, .. } => println!("plan {summary}"),
                    InferEvent::Ready { epoch } => println!("epoch {epoch}: every agent loaded its share"),
                    InferEvent::Refused { agent, reason } => println!("refused by {agent}: {reason}"),
                    InferEvent::StreamingWeights { agent, bytes } => {
                        println!("streaming {bytes} bytes of sub-model to {agent}")
                    }
                    InferEvent::Rerun { ids, agent } => {
                        println!("{agent} died: {} request(s) run again", ids.len())
                    }
                    InferEvent::Connected => {}
                }
            }
        });
        // Agents start once the session listens, so their hellos are heard.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut agents = Vec::new();
        for i in 0..args.agents {
            let board = &args.boards[i % args.boards.len().max(1)];
            let name = format!("{board}-{}", i + 1);
            let config = args.configs.join(format!("{board}.toml"));
            let local = (!args.stream_weights).then_some(args.model.as_path());
            agents.push(spawn_agent(
                &bin,
                &addr,
                &name,
                &config,
                local,
                &args.worker_flags(),
                &logs.join(format!("{name}.log")),
            )?);
        }
        let inputs_again = inputs.clone();
        let result = tokio::time::timeout(
            timeout,
            pipelined(&handle, inputs, args.repeat.max(1), args.in_flight),
        )
        .await
        .map_err(|_| InferError::Timeout(timeout));
        let bench = match (&result, args.bench) {
            (Ok(_), Some(n)) => Some(bench(&handle, &inputs_again, n.max(1)).await),
            _ => None,
        };
        if let (Ok(_), Some(addr)) = (&result, args.serve) {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    println!("serving POST /v1/infer and GET /v1/metrics on http://{addr} (Ctrl-C stops)");
                    tokio::select! {
                        _ = moirai_orchestrator::infer::http::serve(l, handle.clone(), model.inputs().to_vec()) => {}
                        _ = moirai_link::shutdown::signalled() => {}
                    }
                }
                Err(e) => eprintln!("cannot listen on {addr}: {e}"),
            }
        }
        let metrics = handle.metrics.lock().map(|m| m.clone()).unwrap_or_default();
        let _ = stop_tx.send(());
        let _ = task.await;
        drop(agents);
        printer.abort();
        Ok::<_, RunError>((result?, metrics, bench))
    })?;
    let (results, _metrics, bench) = outcomes;
    let mut ok: Vec<InferOutcome> = Vec::new();
    for r in results {
        ok.push(r?);
    }
    // Latency on a ready plan: a first request also waits for the agents and the plan.
    let mut lat: Vec<f64> = ok
        .iter()
        .map(|o| o.run_latency.as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(f64::total_cmp);
    let first = ok.first().ok_or(InferError::Stopped)?;
    println!(
        "{} request(s) on epoch {}: latency on the ready plan p50 {:.1} ms, p90 {:.1} ms (the plan predicted {:.2} ms)",
        ok.len(),
        first.epoch,
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        first.predicted_ms
    );
    for t in &first.outputs {
        let head: Vec<String> = t
            .value
            .to_f64()
            .iter()
            .take(5)
            .map(|v| format!("{v:.5}"))
            .collect();
        println!(
            "output {} {:?}{:?}: [{} ...]",
            t.name,
            t.value.dtype(),
            t.value.dims,
            head.join(", ")
        );
    }
    if let Some(out) = &args.out {
        for (i, t) in first.outputs.iter().enumerate() {
            let p = numbered(out, i);
            tensor::write(&p, t).map_err(InferError::from)?;
            println!("wrote {}", p.display());
        }
    }
    if args.reference.len() > first.outputs.len() {
        return Err(RunError::References {
            outputs: first.outputs.len(),
            given: args.reference.len(),
        });
    }
    for (r, got) in args.reference.iter().zip(&first.outputs) {
        let want = tensor::read(r).map_err(InferError::from)?;
        // Relative to the tensor's scale: max|got - want| / max|want|.
        let diff = moirai_core::tensor::rel_diff(&got.value, &want.value).ok_or_else(|| {
            RunError::Shape {
                name: got.name.clone(),
                got: format!("{:?}{:?}", got.value.dtype(), got.value.dims),
                want: format!("{:?}{:?}", want.value.dtype(), want.value.dims),
            }
        })?;
        println!(
            "output {}: largest relative difference to {}: {diff:e}",
            got.name,
            r.display()
        );
        if diff > f64::from(args.tolerance) {
            return Err(RunError::Mismatch {
                diff,
                tol: args.tolerance,
            });
        }
    }
    if let Some(rows) = bench {
        print!("{}", bench_table(&rows?));
    }
    println!(
        "done in {:.1} s; agent logs in {}",
        t_start.elapsed().as_secs_f64(),
        logs.display()
    );
    Ok(())
}
