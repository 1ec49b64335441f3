//! The agent's inference worker: the share of the plan this board runs.
//!
//! It rides on the agent's one MQTT session ([`crate::port`]): the link subscribes to
//! its topics and publishes what it sends, so it has no connection, client id or Last Will of
//! its own; the orchestrator knows the board by its birth. Then:
//! - on a [`SubgraphSpec`]: refuses it when it does not fit the board's memory; otherwise
//!   loads its weights from a local copy of the model whose SHA-256 matches, or asks the
//!   orchestrator to stream its sub-model and checks every chunk's CRC-32 and the whole's
//!   SHA-256; compiles it (refusing unsupported ops) and says ready. The last few epochs stay
//!   loaded so requests in flight finish on the plan they started on.
//! - on [`ActivationChunk`]s: reassembles the tensors of each (request, epoch); once a
//!   request has all its inputs it runs on the executor thread, and each output goes, in
//!   chunks, to the peers and the orchestrator that need it.
//!
//! Loading and running happen on one executor thread so the loop keeps reading; the loop
//! itself only moves bytes. That thread owns the executor: with [`ExecutorChoice::Wgpu`] (the
//! default) it opens the wgpu adapter and runs shares on [`GpuShareExec`] (fused WGSL kernels,
//! a group the GPU cannot run on tract alone); on a board without an adapter, with `--cpu`,
//! or when a share cannot load on the GPU at all, on tract ([`SubgraphExec`], also the
//! reference).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moirai_core::cost::Verdict;
use moirai_core::tensor::TensorValue;
use moirai_core::wire::data::{
    activation_chunks, ActivationChunk, Destination, DirectAddr, ExecStatus, SubgraphSpec,
    TensorAssembly, WeightAssembly, WeightChunk,
};
use moirai_core::wire::topic::{InferKind, InferTopic, Topics};
use moirai_core::wire::{decode, encode, truncated, WireError};
use moirai_model::submodel;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use tract_onnx::pb;

use super::direct::{DirectLinks, DirectStats};
use super::gpu_share::{Fault, GpuShareExec, LoadOptions, Where, VERIFY_TOL};
use super::subgraph::{check_memory, NamedTensors, SubgraphExec};
use super::watch::{RunKey, RunWatch};
use crate::gpu::context::{AdapterChoice, GpuContext};
use crate::port::{DataIn, DataPort};
use moirai_model::profiles::ProfileStore;

/// Plan epochs kept loaded.
const KEEP_EPOCHS: usize = 3;
/// Requests whose inputs are being collected, at most.
const MAX_PENDING: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{path}: {source}")]
    Model {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("direct data path: {0}")]
    Direct(String),
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub name: String,
    pub prefix: String,
    pub board: String,
    pub memory_bytes: u64,
    /// Local copies of model files (checked by SHA-256 before use).
    pub models: Vec<PathBuf>,
    /// Extra time per request, to emulate a slower board (tests use it to keep requests in
    /// flight long enough to kill an agent under them).
    pub slowdown: Duration,
    /// Which executor runs the shares.
    pub executor: ExecutorChoice,
    /// The direct TCP path between agents, when on.
    pub direct: Option<DirectOptions>,
    /// Chunks per data path (for logs and tests).
    pub direct_stats: Arc<DirectStats>,
    /// The board class's profile store (`moirai-profiles/v1`): the verdicts of the GPU
    /// kernels it has checked are read from it and new ones written back, so a kernel
    /// signature is checked once per board class.
    pub profiles: Option<PathBuf>,
    /// How long a request may run on the executor (from when it starts there, not while it
    /// waits its turn) before it fails: by default 20 times the plan's predicted makespan,
    /// at least 30 s (a software adapter runs a ViT-B/16 share in seconds).
    pub run_deadline: Option<Duration>,
    /// A fault injected on purpose (tests of how failures are answered).
    pub fault: Option<Fault>,
}

/// The deadline of a request of `spec`'s epoch.
fn run_deadline(opts: &WorkerOptions, spec: &SubgraphSpec) -> Duration {
    opts.run_deadline.unwrap_or_else(|| {
        Duration::from_secs_f64((spec.predicted_ms.max(0.0) * 20.0 / 1e3).clamp(30.0, 600.0))
    })
}

/// Where this agent takes activations over TCP ([`super::direct`]).
#[derive(Clone, Debug)]
pub struct DirectOptions {
    pub listen: std::net::SocketAddr,
    /// The `host:port` peers dial; default: the listener's address (which must then not be
    /// 0.0.0.0).
    pub advertise: Option<String>,
}

/// Which executor runs the shares.
#[derive(Clone, Debug, Default)]
pub enum ExecutorChoice {
    /// The wgpu adapter so chosen, or tract when the board has none. With `verify` (the
    /// default), every GPU kernel is checked against its group on tract before it serves.
    Wgpu {
        adapter: AdapterChoice,
        verify: bool,
    },
    /// Tract only.
    #[default]
    Tract,
}

/// A loaded share on one of the two executors.
enum Share {
    Tract(SubgraphExec),
    Gpu(GpuShareExec),
}

impl Share {
    fn run(&self, inputs: &HashMap<String, TensorValue>) -> Result<NamedTensors, String> {
        match self {
            Share::Tract(e) => e
                .run(inputs)
                .map_err(|e| format!("the share on tract: {e}")),
            Share::Gpu(e) => e.run(inputs).map_err(|e| e.to_string()),
        }
    }

    /// What a Ready status says of the share: its groups on the GPU and on tract.
    fn counts(&self) -> (u32, u32, u32) {
        match self {
            Share::Tract(_) => (0, 0, 0),
            Share::Gpu(e) => {
                let tract = e
                    .placements()
                    .iter()
                    .filter(|p| matches!(p.on, Where::Cpu(_)))
                    .count() as u32;
                let all = e.placements().len() as u32;
                (all - tract, tract, e.verified.mismatches.len() as u32)
            }
        }
    }
}

/// The adapter and backend a Birth reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorInfo {
    pub adapter: String,
    pub backend: String,
}

/// Opens the executor `choice` names: the GPU context, or none for tract.
fn open_executor(choice: &ExecutorChoice) -> (Option<Arc<GpuContext>>, ExecutorInfo) {
    let tract = ExecutorInfo {
        adapter: "cpu".into(),
        backend: "cpu".into(),
    };
    match choice {
        ExecutorChoice::Tract => (None, tract),
        ExecutorChoice::Wgpu { adapter, .. } => match GpuContext::open(adapter) {
            Ok(ctx) => {
                let info = ExecutorInfo {
                    adapter: ctx.info.name.clone(),
                    backend: format!("{:?}", ctx.info.backend).to_lowercase(),
                };
                info!(adapter = %info.adapter, backend = %info.backend, "shares run on the GPU executor");
                (Some(Arc::new(ctx)), info)
            }
            Err(e) => {
                warn!(error = %e, "no GPU for the shares; they run on tract");
                (None, tract)
            }
        },
    }
}

/// Loads a share on the GPU when there is one (tract for the whole share if the GPU
/// executor refuses it), else on tract. With `verify`, every GPU kernel is checked against
/// tract first, `verdicts` holding what this board class already knows.
fn load_share(
    gpu: Option<&Arc<GpuContext>>,
    verify: bool,
    verdicts: &mut BTreeMap<String, Verdict>,
    sub: &pb::ModelProto,
    spec: &SubgraphSpec,
) -> Result<Share, String> {
    if let Some(ctx) = gpu {
        let opts = LoadOptions {
            verify: verify.then_some(VERIFY_TOL),
            verdicts: Some(verdicts),
            ..LoadOptions::default()
        };
        match GpuShareExec::load_with(ctx.clone(), sub, spec, opts) {
            Ok(exec) => {
                let v = &exec.verified;
                info!(
                    epoch = spec.epoch,
                    placement = %exec.summary(),
                    checked = v.checked,
                    known = v.known,
                    differ = v.mismatches.len(),
                    verify_ms = v.ms,
                    "share on the GPU executor"
                );
                return Ok(Share::Gpu(exec));
            }
            Err(e) => {
                warn!(epoch = spec.epoch, error = %e, "the GPU executor refused the share; it runs on tract")
            }
        }
    }
    SubgraphExec::load(sub, spec)
        .map(Share::Tract)
        .map_err(|e| e.to_string())
}

/// A local model copy: its bytes, decoded once.
struct LocalModel {
    path: PathBuf,
    proto: Arc<pb::ModelProto>,
}

enum Job {
    /// Compile a share, from a local copy or streamed bytes.
    Load {
        spec: Arc<SubgraphSpec>,
        source: ModelSource,
    },
    Run {
        epoch: u64,
        request: u64,
        inputs: HashMap<String, TensorValue>,
    },
}

enum ModelSource {
    Local(Arc<pb::ModelProto>),
    Streamed(Vec<u8>),
}

enum Done {
    Loaded {
        epoch: u64,
        /// Load time and the (GPU, tract, differing) group counts.
        result: Result<(f32, (u32, u32, u32)), String>,
    },
    Ran {
        epoch: u64,
        request: u64,
        result: Result<NamedTensors, String>,
    },
}

/// What the executor thread is set up with.
struct ExecutorSetup {
    choice: ExecutorChoice,
    slowdown: Duration,
    /// The board class and its profile store, for the kernels' verdicts.
    board: String,
    profiles: Option<PathBuf>,
    fault: Option<Fault>,
    /// Where the thread says which group it is running...
    running: Arc<Mutex<String>>,
    /// ...and which request, since when.
    current: Arc<Mutex<Current>>,
}

/// The request the executor thread is running, and since when.
type Current = Option<(RunKey, Instant)>;

/// The verdicts the board class's profile store holds.
fn read_verdicts(board: &str, path: Option<&Path>) -> BTreeMap<String, Verdict> {
    let Some(path) = path else {
        return BTreeMap::new();
    };
    match ProfileStore::open(path) {
        Ok(s) => s.table.verified.get(board).cloned().unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, "kernel verdicts not read");
            BTreeMap::new()
        }
    }
}

/// Writes the verdicts back into the profile store (its other entries kept).
fn save_verdicts(board: &str, path: &Path, verdicts: &BTreeMap<String, Verdict>) {
    let saved = ProfileStore::open(path).and_then(|mut s| {
        for (k, v) in verdicts {
            s.table.insert_verdict(board, k, *v);
        }
        s.save()
    });
    if let Err(e) = saved {
        warn!(error = %e, "kernel verdicts not saved");
    }
}

/// The executor thread: owns the GPU context (if any) and the compiled shares. It reports
/// what runs the shares on `opened` first.
fn executor(
    setup: ExecutorSetup,
    opened: tokio::sync::oneshot::Sender<ExecutorInfo>,
    jobs: std::sync::mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
) {
    let (gpu, info) = open_executor(&setup.choice);
    let verify = matches!(setup.choice, ExecutorChoice::Wgpu { verify: true, .. });
    let _ = opened.send(info);
    let mut verdicts = read_verdicts(&setup.board, setup.profiles.as_deref());
    let mut loaded: VecDeque<(u64, Share)> = VecDeque::new();
    let set_running = |what: &str| {
        let mut r = setup.running.lock().unwrap_or_else(|p| p.into_inner());
        r.clear();
        r.push_str(what);
    };
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Load { spec, source } => {
                let t0 = Instant::now();
                let known = verdicts.len();
                let result = (|| -> Result<Share, String> {
                    let sub = match source {
                        ModelSource::Local(full) => {
                            submodel::extract(&full, &spec).map_err(|e| e.to_string())?
                        }
                        ModelSource::Streamed(bytes) => {
                            submodel::decode_model(&bytes).map_err(|e| e.to_string())?
                        }
                    };
                    let mut share = load_share(gpu.as_ref(), verify, &mut verdicts, &sub, &spec)?;
                    if let (Share::Gpu(e), Some(f)) = (&mut share, &setup.fault) {
                        e.inject(f.clone());
                    }
                    if let Share::Gpu(e) = &mut share {
                        e.report_progress_to(setup.running.clone());
                    }
                    Ok(share)
                })();
                if let (Some(path), true) = (&setup.profiles, verdicts.len() > known) {
                    save_verdicts(&setup.board, path, &verdicts);
                }
                let result = result.map(|exec| {
                    let counts = exec.counts();
                    loaded.retain(|(e, _)| *e != spec.epoch);
                    loaded.push_back((spec.epoch, exec));
                    while loaded.len() > KEEP_EPOCHS {
                        loaded.pop_front();
                    }
                    (t0.elapsed().as_secs_f32() * 1e3, counts)
                });
                let _ = done.send(Done::Loaded {
                    epoch: spec.epoch,
                    result,
                });
            }
            Job::Run {
                epoch,
                request,
                inputs,
            } => {
                std::thread::sleep(setup.slowdown);
                set_running("");
                *setup.current.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(((epoch, request), Instant::now()));
                let result = match loaded.iter().find(|(e, _)| *e == epoch) {
                    Some((_, exec)) => exec.run(&inputs).map_err(|e| e.to_string()),
                    None => Err(format!("epoch {epoch} is not loaded here")),
                };
                *setup.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let _ = done.send(Done::Ran {
                    epoch,
                    request,
                    result,
                });
            }
        }
    }
}

/// One request's inputs being collected.
#[derive(Default)]
struct Pending {
    parts: HashMap<String, TensorAssembly>,
    whole: HashMap<String, TensorValue>,
}

/// Hashes the local model copies.
fn local_models(paths: &[PathBuf]) -> Result<HashMap<[u8; 32], LocalModel>, WorkerError> {
    let mut out = HashMap::new();
    for p in paths {
        let bytes = std::fs::read(p).map_err(|source| WorkerError::Model {
            path: p.clone(),
            source,
        })?;
        let sha = moirai_core::digest::sha256(&bytes);
        match submodel::decode_model(&bytes) {
            Ok(proto) => {
                info!(path = %p.display(), sha256 = %moirai_core::digest::hex(&sha), "local model copy");
                out.insert(
                    sha,
                    LocalModel {
                        path: p.clone(),
                        proto: Arc::new(proto),
                    },
                );
            }
            Err(e) => warn!(path = %p.display(), error = %e, "not a model; ignored"),
        }
    }
    Ok(out)
}

/// The topics the link subscribes to for the worker named `name`.
pub fn subscriptions(topics: &Topics, name: &str) -> Vec<String> {
    let mut subs: Vec<String> = [InferKind::Subgraph, InferKind::Weights, InferKind::Act]
        .into_iter()
        .map(|k| topics.infer(name, k))
        .collect();
    // Peers' direct addresses (retained), whether or not this agent takes any.
    subs.push(topics.infer_all(InferKind::Direct));
    subs
}

/// Runs the worker on `port` until `shutdown` resolves or the link ends.
pub async fn run(
    opts: WorkerOptions,
    port: DataPort,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let topics = Topics::new(&opts.prefix)?;
    let locals = local_models(&opts.models)?;
    let DataPort { mut inbox, outbox } = port;
    // Names this process's direct listener in its hello and address, so a peer dials the
    // listener of the process that is running now.
    let instance = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let exec_running = Arc::new(Mutex::new(String::new()));
    let exec_current = Arc::new(Mutex::new(None));
    let setup = ExecutorSetup {
        current: exec_current.clone(),
        choice: opts.executor.clone(),
        slowdown: opts.slowdown,
        board: opts.board.clone(),
        profiles: opts.profiles.clone(),
        fault: opts.fault.clone(),
        running: exec_running.clone(),
    };
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let exec_thread = std::thread::Builder::new()
        .name(format!("exec-{}", opts.name))
        .spawn(move || executor(setup, opened_tx, job_rx, done_tx))
        .map_err(WorkerError::Runtime)?;
    let exec_info = opened_rx.await.map_err(|_| {
        WorkerError::Runtime(std::io::Error::other("the executor thread ended at start"))
    })?;
    info!(adapter = %exec_info.adapter, backend = %exec_info.backend, "share executor open");
    // The direct path: a listener whose chunks join the MQTT ones, and writers to peers whose
    // chunks come back here when they cannot be written.
    let (direct_tx, mut direct_rx) = mpsc::unbounded_channel::<ActivationChunk>();
    let (fallback_tx, mut fallback_rx) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let mut links = DirectLinks::new(fallback_tx, opts.direct_stats.clone());
    let mut direct_server = None;
    let my_direct = match &opts.direct {
        Some(d) => {
            let listener = tokio::net::TcpListener::bind(d.listen)
                .await
                .map_err(|e| WorkerError::Direct(format!("cannot listen on {}: {e}", d.listen)))?;
            let bound = listener
                .local_addr()
                .map_err(|e| WorkerError::Direct(e.to_string()))?;
            let addr = match &d.advertise {
                Some(a) => a.clone(),
                None if bound.ip().is_unspecified() => {
                    return Err(WorkerError::Direct(format!(
                        "listening on {bound}: say which address peers dial (--direct-advertise HOST:PORT)"
                    )))
                }
                None => bound.to_string(),
            };
            info!(%bound, advertised = %addr, "direct data path listening");
            direct_server = Some(tokio::spawn(super::direct::serve(
                listener,
                super::direct::hello(&opts.name, instance),
                direct_tx.clone(),
                opts.direct_stats.clone(),
            )));
            Some(DirectAddr {
                bd_seq: instance,
                addr: truncated(&addr),
            })
        }
        None => None,
    };
    // Specs by epoch (loaded or loading) and whether each is ready.
    let mut specs: BTreeMap<u64, (Arc<SubgraphSpec>, bool)> = BTreeMap::new();
    let mut weights = WeightAssembly::default();
    let mut pending: BTreeMap<(u64, u64), Pending> = BTreeMap::new();
    let mut finished: VecDeque<(u64, u64)> = VecDeque::new();
    // Epochs whose share did not load, and why: their requests are answered at once.
    let mut refused: BTreeMap<u64, String> = BTreeMap::new();
    let mut watch = RunWatch::default();
    let mut watchdog = tokio::time::interval(Duration::from_millis(100));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let status = |s: &ExecStatus| {
        outbox.send(
            topics.infer(&opts.name, InferKind::Status),
            &bounded_status(s.clone()),
            false,
        )
    };
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            msg = inbox.recv() => match msg {
                // The link ended: so does the worker.
                None => break,
                Some(DataIn::Connected) => {
                    if let Some(d) = &my_direct {
                        outbox.send(topics.infer(&opts.name, InferKind::Direct), d, true);
                    }
                    info!(agent = %opts.name, "inference worker on the agent's session");
                }
                Some(DataIn::Message(p)) => {
                    let Ok(InferTopic::Agent { kind, name: from }) = topics.parse_infer(&p.topic) else { continue };
                    match kind {
                        InferKind::Direct if from.as_str() != opts.name => {
                            // An empty retained payload: that peer left.
                            let addr = if p.payload.is_empty() {
                                None
                            } else {
                                match decode::<DirectAddr>(&p.payload) {
                                    Ok(a) => Some(a),
                                    Err(e) => { warn!(error = %e, peer = %from, "bad direct address dropped"); continue; }
                                }
                            };
                            debug!(peer = %from, ?addr, "peer's direct address");
                            links.learn(from.as_str(), addr);
                        }
                        InferKind::Subgraph => {
                            let spec = match decode::<SubgraphSpec>(&p.payload) {
                                Ok(s) => Arc::new(s),
                                Err(e) => { warn!(error = %e, "bad subgraph spec dropped"); continue; }
                            };
                            let epoch = spec.epoch;
                            info!(epoch, nodes = spec.nodes.len(), weight_bytes = spec.weight_bytes, "assignment");
                            specs.insert(epoch, (spec.clone(), false));
                            while specs.len() > KEEP_EPOCHS {
                                if let Some((old, _)) = specs.pop_first() {
                                    pending.retain(|k, _| k.0 != old);
                                }
                            }
                            if spec.nodes.is_empty() {
                                specs.insert(epoch, (spec, true));
                                status(&ExecStatus::Ready { epoch, load_ms: 0.0, gpu_groups: 0, tract_groups: 0, differ: 0 });
                                continue;
                            }
                            if let Err(e) = check_memory(&spec, opts.memory_bytes) {
                                warn!(error = %e, "assignment refused");
                                status(&ExecStatus::Refused { epoch, reason: e.to_string() });
                                continue;
                            }
                            match locals.get(&spec.model_sha256) {
                                Some(local) => {
                                    debug!(path = %local.path.display(), "weights from the local copy");
                                    let _ = job_tx.send(Job::Load { spec, source: ModelSource::Local(local.proto.clone()) });
                                }
                                None => status(&ExecStatus::NeedWeights {
                                    epoch,
                                    reason: format!("no local copy with sha256 {}", moirai_core::digest::hex(&spec.model_sha256)),
                                }),
                            }
                        }
                        InferKind::Weights => {
                            let c = match decode::<WeightChunk>(&p.payload) {
                                Ok(c) => c,
                                Err(e) => { warn!(error = %e, "bad weight chunk dropped"); continue; }
                            };
                            let epoch = c.epoch;
                            match weights.add(c) {
                                Ok(Some(bytes)) => {
                                    if moirai_core::digest::sha256(&bytes) != weights.sha256 {
                                        status(&ExecStatus::Refused { epoch, reason: "streamed weights fail their SHA-256".into() });
                                        continue;
                                    }
                                    info!(epoch, bytes = bytes.len(), "streamed weights complete, SHA-256 checked");
                                    if let Some((spec, _)) = specs.get(&epoch) {
                                        let _ = job_tx.send(Job::Load { spec: spec.clone(), source: ModelSource::Streamed(bytes) });
                                    }
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    warn!(error = %e, "weight chunk refused");
                                    status(&ExecStatus::NeedWeights { epoch, reason: e.to_string() });
                                }
                            }
                        }
                        InferKind::Act => {
                            let c = match decode::<ActivationChunk>(&p.payload) {
                                Ok(c) => c,
                                Err(e) => { warn!(error = %e, "bad activation chunk dropped"); continue; }
                            };
                            if let Some(epoch_refused) = refused.get(&c.epoch) {
                                debug!(epoch = c.epoch, reason = %epoch_refused, "chunk of a refused epoch");
                                status(&ExecStatus::Failed { epoch: c.epoch, request: c.request, reason: format!("agent {}: the share did not load: {epoch_refused}", opts.name) });
                                continue;
                            }
                            let run = take_chunk(c, &specs, &mut pending, &mut finished);
                            launch(run, &opts, &mut watch, &job_tx, &status);
                        }
                        _ => {}
                    }
                }
            },
            Some(c) = direct_rx.recv() => {
                let run = take_chunk(c, &specs, &mut pending, &mut finished);
                launch(run, &opts, &mut watch, &job_tx, &status);
            }
            Some((peer, frame)) = fallback_rx.recv() => {
                // The direct path failed under this chunk: the broker carries it.
                outbox.send_bytes(topics.infer(&peer, InferKind::Act), frame, false);
            }
            Some(done) = done_rx.recv() => match done {
                Done::Loaded { epoch, result } => match result {
                    Ok((load_ms, (gpu_groups, tract_groups, differ))) => {
                        if let Some((_, ready)) = specs.get_mut(&epoch) {
                            *ready = true;
                        }
                        info!(epoch, load_ms, gpu_groups, tract_groups, differ, "share loaded");
                        status(&ExecStatus::Ready { epoch, load_ms, gpu_groups, tract_groups, differ });
                        let keys: Vec<_> = pending.keys().filter(|k| k.0 == epoch).copied().collect();
                        for key in keys {
                            let run = try_run(&specs, &mut pending, &mut finished, key);
                            launch(run, &opts, &mut watch, &job_tx, &status);
                        }
                    }
                    Err(reason) => {
                        warn!(epoch, %reason, "assignment refused");
                        // Requests of that epoch whose inputs are here are answered now.
                        let held: Vec<_> = pending.keys().filter(|k| k.0 == epoch).copied().collect();
                        for key in held {
                            pending.remove(&key);
                            status(&ExecStatus::Failed { epoch, request: key.1, reason: format!("agent {}: the share did not load: {reason}", opts.name) });
                        }
                        refused.insert(epoch, reason.clone());
                        status(&ExecStatus::Refused { epoch, reason });
                    }
                },
                Done::Ran { epoch, request, result } => {
                    if !watch.finish((epoch, request)) {
                        debug!(epoch, request, "a late result, already answered as failed, dropped");
                        continue;
                    }
                    match result {
                    Ok(outputs) => {
                        let Some((spec, _)) = specs.get(&epoch) else { continue };
                        for (tensor, value) in outputs {
                            let Some(route) = spec.outputs.iter().find(|o| o.tensor.name == tensor) else { continue };
                            let chunks = activation_chunks(request, epoch, &tensor, &value);
                            for to in &route.to {
                                let (peer, topic) = match to {
                                    Destination::Agent(a) => (Some(a.as_str()), topics.infer(a, InferKind::Act)),
                                    Destination::Orchestrator => (None, topics.infer_result()),
                                };
                                for c in &chunks {
                                    let frame = match encode(c) {
                                        Ok(f) => f,
                                        Err(e) => { warn!(error = %e, "activation not encodable"); continue; }
                                    };
                                    // Directly where the peer takes it, else (or on failure) MQTT.
                                    let frame = match peer {
                                        Some(p) => match links.send(p, frame) {
                                            Ok(()) => continue,
                                            Err(f) => f,
                                        },
                                        None => frame,
                                    };
                                    outbox.send_bytes(topic.clone(), frame, false);
                                }
                            }
                        }
                    }
                    Err(reason) => {
                        warn!(epoch, request, %reason, "request failed");
                        status(&ExecStatus::Failed { epoch, request, reason: format!("agent {}: {reason}", opts.name) });
                    }
                    }
                }
            },
            _ = watchdog.tick(), if !watch.is_empty() => {
                let group = exec_running.lock().map(|r| r.clone()).unwrap_or_default();
                let current = *exec_current.lock().unwrap_or_else(|p| p.into_inner());
                let Some((key, since)) = current else { continue };
                let limit = specs.get(&key.0).map_or(Duration::from_secs(60), |(s, _)| run_deadline(&opts, s));
                for ((epoch, request), reason) in watch.overdue(Some((key, since.elapsed())), &group, limit) {
                    warn!(epoch, request, %reason, "request overran its deadline");
                    status(&ExecStatus::Failed { epoch, request, reason: format!("agent {}: {reason}", opts.name) });
                }
            }
        }
    }
    if let Some(server) = direct_server {
        server.abort();
        let (sent, fell_back, received) = opts.direct_stats.snapshot();
        info!(sent, fell_back, received, "direct data path chunks");
        // Peers stop dialling an address that is gone (the link publishes it before it
        // leaves the broker).
        outbox.send_bytes(
            topics.infer(&opts.name, InferKind::Direct),
            Vec::new(),
            true,
        );
    }
    drop(job_tx);
    // The executor finishes its job and ends; one stuck in a hung kernel is left behind (the
    // process ending takes it) rather than holding up the shutdown.
    let joined = tokio::task::spawn_blocking(move || exec_thread.join());
    if tokio::time::timeout(Duration::from_secs(2), joined)
        .await
        .is_err()
    {
        warn!("the executor thread is still busy (a stuck kernel?); not waiting for it");
    }
    Ok(())
}

/// A request ready to run: its key and inputs.
type Runnable = ((u64, u64), HashMap<String, TensorValue>);

/// One chunk from either path: into its request's inputs; the request, once complete.
fn take_chunk(
    c: ActivationChunk,
    specs: &BTreeMap<u64, (Arc<SubgraphSpec>, bool)>,
    pending: &mut BTreeMap<(u64, u64), Pending>,
    finished: &mut VecDeque<(u64, u64)>,
) -> Option<Runnable> {
    let key = (c.epoch, c.request);
    debug!(epoch = c.epoch, request = c.request, tensor = %c.tensor, index = c.index, count = c.count, "activation chunk");
    if finished.contains(&key) {
        return None;
    }
    if !pending.contains_key(&key) && pending.len() >= MAX_PENDING {
        // The oldest request never got all its inputs (its sender died).
        pending.pop_first();
    }
    let entry = pending.entry(key).or_default();
    let tensor = c.tensor.clone();
    match entry.parts.entry(tensor.clone()).or_default().add(c) {
        Ok(Some(t)) => {
            entry.parts.remove(&tensor);
            entry.whole.insert(tensor, t);
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "activation refused"),
    }
    try_run(specs, pending, finished, key)
}

/// Hands a request to the executor thread; when the executor is stuck on an earlier one,
/// answers it as failed at once.
fn launch(
    run: Option<Runnable>,
    opts: &WorkerOptions,
    watch: &mut RunWatch,
    jobs: &std::sync::mpsc::Sender<Job>,
    status: &dyn Fn(&ExecStatus),
) {
    let Some(((epoch, request), inputs)) = run else {
        return;
    };
    debug!(epoch, request, "inputs complete: runs");
    match watch.start((epoch, request)) {
        Ok(()) => {
            let _ = jobs.send(Job::Run {
                epoch,
                request,
                inputs,
            });
        }
        Err(reason) => status(&ExecStatus::Failed {
            epoch,
            request,
            reason: format!("agent {}: {reason}", opts.name),
        }),
    }
}

/// Cuts a status's free text so it fits its size limit.
fn bounded_status(s: ExecStatus) -> ExecStatus {
    const MAX: usize = 2000;
    let cut = |r: String| -> String {
        if r.len() <= MAX {
            return r;
        }
        let mut end = MAX;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &r[..end])
    };
    match s {
        ExecStatus::Refused { epoch, reason } => ExecStatus::Refused {
            epoch,
            reason: cut(reason),
        },
        ExecStatus::NeedWeights { epoch, reason } => ExecStatus::NeedWeights {
            epoch,
            reason: cut(reason),
        },
        ExecStatus::Failed {
            epoch,
            request,
            reason,
        } => ExecStatus::Failed {
            epoch,
            request,
            reason: cut(reason),
        },
        ready => ready,
    }
}

/// A request whose epoch is loaded and whose inputs are all in, taken out of `pending`.
fn try_run(
    specs: &BTreeMap<u64, (Arc<SubgraphSpec>, bool)>,
    pending: &mut BTreeMap<(u64, u64), Pending>,
    finished: &mut VecDeque<(u64, u64)>,
    key: (u64, u64),
) -> Option<Runnable> {
    let Some((spec, true)) = specs.get(&key.0) else {
        return None;
    };
    let p = pending.get(&key)?;
    if !spec.inputs.iter().all(|t| p.whole.contains_key(&t.name)) {
        return None;
    }
    let p = pending.remove(&key)?;
    finished.push_back(key);
    while finished.len() > 4096 {
        finished.pop_front();
    }
    Some((key, p.whole))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{pair, DataLink, DataOut};
    use moirai_core::wire::data::TensorAssembly;
    use moirai_model::tensor_proto as tensor;

    /// The next thing the worker published, within 30 s.
    async fn next_out(rx: &mut mpsc::UnboundedReceiver<DataOut>) -> DataOut {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the worker answers in time")
            .expect("the worker runs")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_runs_its_share_through_its_port_with_no_broker_and_matches_the_reference() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx/tiny-cnn");
        let path = dir.join("model.onnx");
        let model = moirai_model::loaded::LoadedModel::load(&path).expect("model loads");
        // The whole model is this agent's share.
        let placement: BTreeMap<String, String> = model
            .coarse
            .groups
            .iter()
            .map(|g| (g.name.clone(), "a".to_string()))
            .collect();
        let split = moirai_model::split::split(
            &model.onnx,
            &model.coarse,
            &placement,
            1,
            model.sha256,
            1.0,
            |n| model.weight_bytes(n),
        )
        .expect("split");
        let spec = split.specs["a"].clone();
        let topics = Topics::default();
        let (link, port) = pair(subscriptions(&topics, "a"));
        let DataLink {
            subscriptions: subs,
            to_worker,
            mut from_worker,
        } = link;
        for k in [InferKind::Subgraph, InferKind::Weights, InferKind::Act] {
            assert!(subs.contains(&topics.infer("a", k)), "{subs:?}");
        }
        let opts = WorkerOptions {
            name: "a".into(),
            prefix: topics.prefix().to_string(),
            board: "test-board".into(),
            memory_bytes: 1 << 30,
            models: vec![path.clone()],
            slowdown: Duration::ZERO,
            executor: ExecutorChoice::Tract,
            direct: None,
            direct_stats: Arc::default(),
            profiles: None,
            run_deadline: None,
            fault: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(opts, port, async {
            let _ = stopped.await;
        }));
        let message = |topic: String, payload: Vec<u8>| {
            DataIn::Message(rumqttc::Publish::new(
                topic,
                rumqttc::QoS::AtLeastOnce,
                payload,
            ))
        };
        to_worker.send(DataIn::Connected).await.expect("inbox");
        to_worker
            .send(message(
                topics.infer("a", InferKind::Subgraph),
                encode(&spec).expect("spec encodes"),
            ))
            .await
            .expect("inbox");
        let out = next_out(&mut from_worker).await;
        assert_eq!(out.topic, topics.infer("a", InferKind::Status));
        assert!(
            matches!(
                decode::<ExecStatus>(&out.payload),
                Ok(ExecStatus::Ready { epoch: 1, .. })
            ),
            "{:?}",
            decode::<ExecStatus>(&out.payload)
        );
        let mut input = tensor::read(&dir.join("test_data_set_0/input_0.pb")).expect("input");
        input.name = model.inputs()[0].name.clone();
        for c in activation_chunks(7, 1, &input.name, &input.value) {
            to_worker
                .send(message(
                    topics.infer("a", InferKind::Act),
                    encode(&c).expect("chunk"),
                ))
                .await
                .expect("inbox");
        }
        // The output comes back as chunks on the result topic, for the orchestrator.
        let mut assembly = TensorAssembly::default();
        let value = loop {
            let out = next_out(&mut from_worker).await;
            assert_eq!(out.topic, topics.infer_result(), "{out:?}");
            let c = decode::<ActivationChunk>(&out.payload).expect("a chunk");
            assert_eq!((c.request, c.epoch), (7, 1));
            if let Some(v) = assembly.add(c).expect("a valid chunk") {
                break v;
            }
        };
        let want = tensor::read(&dir.join("test_data_set_0/output_0.pb")).expect("reference");
        let d = moirai_core::tensor::rel_diff(&value, &want.value).expect("same shape");
        assert!(
            d <= 1e-4,
            "relative difference {d:e} from onnx's reference evaluator"
        );
        let _ = stop.send(());
        task.await
            .expect("the worker task")
            .expect("the worker ends cleanly");
    }

    #[test]
    fn tract_is_reported_as_cpu_and_an_adapter_by_its_name_and_backend() {
        let (gpu, info) = open_executor(&ExecutorChoice::Tract);
        assert!(gpu.is_none());
        assert_eq!(info.adapter, "cpu");
        assert_eq!(info.backend, "cpu");
        // The kernel tests' convention: no adapter fails unless MOIRAI_SKIP_GPU_TESTS is set.
        let Some(ctx) = crate::kernels::testutil::gpu() else {
            return;
        };
        let (gpu, info) = open_executor(&ExecutorChoice::Wgpu {
            adapter: AdapterChoice::from_env(),
            verify: false,
        });
        assert!(
            gpu.is_some(),
            "an adapter exists but the worker did not open it"
        );
        assert_eq!(info.adapter, ctx.info.name);
        assert_eq!(
            info.backend,
            format!("{:?}", ctx.info.backend).to_lowercase()
        );
        assert_ne!(info.backend, "cpu");
    }
}
