//! The orchestrator's side of distributed inference: one MQTT loop that tracks the agents
//! that said hello, plans the model on them (a new plan epoch on every join or death), sends
//! each agent its [`SubgraphSpec`](moirai_core::wire::data::SubgraphSpec), streams weights
//! to agents without a local copy, feeds request inputs, collects outputs and answers each
//! request once.
//!
//! An epoch is used for new requests once every agent with a share reported ready; a
//! request runs on the epoch it was dispatched on. When an agent dies, every request whose
//! epoch gave it work goes back to the queue and is dispatched again on the next epoch.
//! Callers talk to the loop through a [`SessionHandle`] (a channel, as rumqttc's client).

use moirai_link::mqtt::publish;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moirai_core::wire::data::{
    activation_chunks, weight_chunks, ActivationChunk, ExecStatus, ServingStats, TensorSpec,
};
use moirai_core::wire::life::{Birth, Death};
use moirai_core::wire::topic::{InferKind, InferTopic, Topics};
use moirai_core::wire::{decode, encode, BrokerAddr};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::model::{plan_epoch, EpochPlan, Placement};
use super::requests::{ChunkOutcome, Requests};
use super::InferError;
use crate::fleet::model::OnlineAgent;
use moirai_core::stats::percentile;
use moirai_model::loaded::LoadedModel;
use moirai_model::submodel;
use moirai_model::tensor_proto::NamedTensor;

/// Session settings.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub broker: BrokerAddr,
    pub prefix: String,
    pub placement: Placement,
    /// No first plan before this many agents said hello (later plans use whoever is left).
    pub min_agents: usize,
    /// A request not answered within this is failed.
    pub request_timeout: Duration,
    /// Quiet time after a join or death before replanning.
    pub debounce: Duration,
    /// Measured kernel times by board class (the roofline stands in elsewhere).
    pub profiles: Arc<moirai_core::cost::ProfileTable>,
}

/// Latency samples kept for the metrics (the latest ones).
pub const MAX_SAMPLES: usize = 10_000;

/// A finished request.
#[derive(Clone, Debug)]
pub struct InferOutcome {
    pub id: u64,
    pub epoch: u64,
    pub outputs: Vec<NamedTensor>,
    /// From submission (waiting for a plan included) to the last output.
    pub latency: Duration,
    /// From the (last) dispatch on a ready plan to the last output.
    pub run_latency: Duration,
    /// The plan's predicted makespan for the epoch that answered.
    pub predicted_ms: f64,
    pub reruns: u32,
}

/// Latency next to prediction, per request, and counters.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub completed: u64,
    pub failed: u64,
    pub reruns: u64,
    /// (measured end-to-end ms, predicted makespan ms) of each completed request.
    pub samples: Vec<(f64, f64)>,
    pub epoch: u64,
    pub agents: usize,
}

impl Metrics {
    /// The measured latencies, and measured over predicted (where a prediction exists), each
    /// sorted: what quantiles are read from.
    pub fn sorted(&self) -> (Vec<f64>, Vec<f64>) {
        let mut measured: Vec<f64> = self.samples.iter().map(|s| s.0).collect();
        measured.sort_by(f64::total_cmp);
        let mut ratio: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.1 > 0.0)
            .map(|s| s.0 / s.1)
            .collect();
        ratio.sort_by(f64::total_cmp);
        (measured, ratio)
    }

    /// The figures `moirai fleet` shows: latency quantiles over the kept samples next to the
    /// prediction of the plan that answered last.
    pub fn stats(&self, taken_at_ms: u64) -> ServingStats {
        let (measured, ratio) = self.sorted();
        let q = |v: &[f64], p: f64| if v.is_empty() { 0.0 } else { percentile(v, p) };
        ServingStats {
            taken_at_ms,
            epoch: self.epoch,
            agents: u32::try_from(self.agents).unwrap_or(u32::MAX),
            completed: self.completed,
            failed: self.failed,
            reruns: self.reruns,
            latency_ms: [q(&measured, 50.0), q(&measured, 90.0), q(&measured, 99.0)],
            predicted_ms: self.samples.last().map_or(0.0, |s| s.1),
            ratio_p50: q(&ratio, 50.0),
        }
    }
}

/// [`ServingStats`] are republished at most this often.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What happened, for whoever prints progress.
#[derive(Clone, Debug)]
pub enum InferEvent {
    Connected,
    Joined { name: String, board: String },
    Left { name: String },
    Planned { epoch: u64, summary: String },
    Ready { epoch: u64 },
    Refused { agent: String, reason: String },
    StreamingWeights { agent: String, bytes: usize },
    Rerun { ids: Vec<u64>, agent: String },
}

enum Cmd {
    Infer {
        inputs: Vec<NamedTensor>,
        reply: oneshot::Sender<Result<InferOutcome, InferError>>,
    },
}

/// Talks to a running session.
#[derive(Clone)]
pub struct SessionHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    pub metrics: Arc<Mutex<Metrics>>,
}

impl SessionHandle {
    /// Runs one request; waits for a plan if none is ready yet.
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Result<InferOutcome, InferError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Infer { inputs, reply })
            .map_err(|_| InferError::Stopped)?;
        rx.await.map_err(|_| InferError::Stopped)?
    }
}

struct EpochState {
    plan: EpochPlan,
    ready: BTreeSet<String>,
}

/// Starts the session loop on the current runtime; it runs until `shutdown` resolves.
pub fn start(
    opts: SessionOptions,
    model: Arc<LoadedModel>,
    events: mpsc::UnboundedSender<InferEvent>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SessionHandle, tokio::task::JoinHandle<()>), InferError> {
    let topics = Topics::new(&opts.prefix)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let handle = SessionHandle {
        tx,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(run(opts, topics, model, rx, events, metrics, shutdown));
    Ok((handle, task))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    opts: SessionOptions,
    topics: Topics,
    model: Arc<LoadedModel>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<InferEvent>,
    metrics: Arc<Mutex<Metrics>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let id = format!("moirai-infer-{}-{}", std::process::id(), session_nonce());
    let mut mo = moirai_link::mqtt::options(id, &opts.broker);
    mo.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(mo, 65536);
    // Activations are latency-bound: no Nagle delay on the way to the broker.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let t0 = Instant::now();
    let mut agents: BTreeMap<String, Birth> = BTreeMap::new();
    let mut epochs: BTreeMap<u64, EpochState> = BTreeMap::new();
    let mut next_epoch = 0u64;
    let mut active: Option<u64> = None;
    let mut requests = Requests::default();
    let mut replies: BTreeMap<u64, oneshot::Sender<Result<InferOutcome, InferError>>> =
        BTreeMap::new();
    let mut replan_at: Option<Instant> = None;
    let mut planning = false;
    let mut refusal: Option<(String, String)> = None;
    let (plan_tx, mut plan_rx) = mpsc::unbounded_channel::<Result<EpochPlan, InferError>>();
    // Serving figures changed since they were last published, and when that was.
    let mut stats_dirty = false;
    let mut stats_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            cmd = cmds.recv() => match cmd {
                None => break,
                Some(Cmd::Infer { inputs, reply }) => {
                    if let Some((agent, reason)) = refusal.clone().filter(|_| active.is_none()) {
                        let _ = reply.send(Err(InferError::Refused { agent, reason }));
                        continue;
                    }
                    if let Err(e) = check_inputs(model.inputs(), &inputs) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let id = requests.submit(inputs, t0.elapsed());
                    replies.insert(id, reply);
                    if let Some(e) = active {
                        dispatch(&client, &topics, &mut requests, &epochs, id, e, t0.elapsed());
                    }
                }
            },
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for k in [InferKind::Hello, InferKind::Gone, InferKind::Status] {
                        let _ = client.try_subscribe(topics.infer_all(k), QoS::AtLeastOnce);
                    }
                    let _ = client.try_subscribe(topics.infer_result(), QoS::AtLeastOnce);
                    let _ = events.send(InferEvent::Connected);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {}
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(topic) = topics.parse_infer(&p.topic) else { continue };
                    match topic {
                        InferTopic::Result => {
                            let Ok(c) = decode::<ActivationChunk>(&p.payload) else {
                                debug!("undecodable result chunk dropped");
                                continue;
                            };
                            match requests.on_chunk(c, model.outputs(), t0.elapsed()) {
                                ChunkOutcome::Completed(done) => {
                                    let predicted_ms = epochs.get(&done.epoch).map_or(0.0, |e| e.plan.predicted_ms);
                                    {
                                        let mut m = metrics.lock().unwrap_or_else(|e| e.into_inner());
                                        stats_dirty = true;
                                        m.completed += 1;
                                        m.reruns += u64::from(done.reruns);
                                        m.samples.push((done.run_latency.as_secs_f64() * 1e3, predicted_ms));
                                        // A long-running server keeps the latest samples only.
                                        if m.samples.len() > 2 * MAX_SAMPLES {
                                            m.samples.drain(..MAX_SAMPLES);
                                        }
                                    }
                                    if let Some(r) = replies.remove(&done.id) {
                                        let _ = r.send(Ok(InferOutcome {
                                            id: done.id,
                                            epoch: done.epoch,
                                            outputs: done.outputs,
                                            latency: done.latency,
                                            run_latency: done.run_latency,
                                            predicted_ms,
                                            reruns: done.reruns,
                                        }));
                                    }
                                    forget_old_epochs(&mut epochs, active, &requests);
                                }
                                ChunkOutcome::Bad(e) => warn!(error = %e, "bad output chunk"),
                                ChunkOutcome::Mismatch { id, tensor, what } => {
                                    warn!(request = id, %tensor, %what, "output of the wrong type or shape");
                                    if requests.fail(id) {
                                        if let Some(r) = replies.remove(&id) {
                                            let _ = r.send(Err(InferError::BadOutput { tensor, what }));
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                        InferTopic::Agent { name, kind } => match kind {
                            InferKind::Hello => {
                                let Ok(b) = decode::<Birth>(&p.payload) else { continue };
                                if b.name != name { continue; }
                                info!(agent = %name, board = %b.board, "agent ready for inference");
                                let _ = events.send(InferEvent::Joined { name: name.to_string(), board: b.board.to_string() });
                                agents.insert(name.to_string(), b);
                                replan_at = Some(Instant::now() + opts.debounce);
                            }
                            InferKind::Gone => {
                                let Ok(d) = decode::<Death>(&p.payload) else { continue };
                                let name = name.to_string();
                                if agents.get(&name).is_none_or(|b| b.bd_seq != d.bd_seq) {
                                    continue;
                                }
                                agents.remove(&name);
                                let _ = events.send(InferEvent::Left { name: name.clone() });
                                let touched: BTreeSet<u64> = epochs
                                    .iter()
                                    .filter(|(_, e)| e.plan.split.specs.get(&name).is_some_and(|s| !s.nodes.is_empty()))
                                    .map(|(&k, _)| k)
                                    .collect();
                                if active.is_some_and(|a| touched.contains(&a)) {
                                    active = None;
                                }
                                let ids = requests.rerun_where(|e| touched.contains(&e));
                                if !ids.is_empty() {
                                    info!(agent = %name, requests = ids.len(), "agent died: its requests run again on the next plan");
                                    let _ = events.send(InferEvent::Rerun { ids, agent: name.clone() });
                                }
                                replan_at = Some(Instant::now() + opts.debounce);
                            }
                            InferKind::Status => {
                                let Ok(s) = decode::<ExecStatus>(&p.payload) else { continue };
                                let name = name.to_string();
                                match s {
                                    ExecStatus::Ready { epoch, load_ms, gpu_groups, tract_groups, differ } => {
                                        info!(agent = %name, epoch, load_ms, gpu_groups, tract_groups, differ, "ready");
                                        if differ > 0 {
                                            warn!(agent = %name, epoch, differ, "GPU kernels that differ from tract run on tract");
                                        }
                                        let Some(e) = epochs.get_mut(&epoch) else { continue };
                                        e.ready.insert(name);
                                        let all = e.plan.split.specs.keys().all(|a| e.ready.contains(a));
                                        if all && active.is_none_or(|a| a < epoch) && epoch == next_epoch {
                                            active = Some(epoch);
                                            refusal = None;
                                            let _ = events.send(InferEvent::Ready { epoch });
                                            metrics.lock().unwrap_or_else(|e| e.into_inner()).epoch = epoch;
                                            stats_dirty = true;
                                            for id in requests.waiting() {
                                                dispatch(&client, &topics, &mut requests, &epochs, id, epoch, t0.elapsed());
                                            }
                                            forget_old_epochs(&mut epochs, active, &requests);
                                        }
                                    }
                                    ExecStatus::Refused { epoch, reason } => {
                                        warn!(agent = %name, epoch, %reason, "assignment refused");
                                        let _ = events.send(InferEvent::Refused { agent: name.clone(), reason: reason.clone() });
                                        if active.is_none() {
                                            for id in requests.waiting() {
                                                requests.fail(id);
                                                if let Some(r) = replies.remove(&id) {
                                                    let _ = r.send(Err(InferError::Refused { agent: name.clone(), reason: reason.clone() }));
                                                }
                                            }
                                        }
                                        refusal = Some((name, reason));
                                    }
                                    ExecStatus::NeedWeights { epoch, reason } => {
                                        let Some(spec) = epochs.get(&epoch).and_then(|e| e.plan.split.specs.get(&name)) else { continue };
                                        info!(agent = %name, epoch, %reason, "streaming the agent's weights");
                                        match submodel::extract(model.proto(), spec) {
                                            Ok(sub) => {
                                                let bytes = submodel::encode_model(&sub);
                                                let sha = moirai_core::digest::sha256(&bytes);
                                                let _ = events.send(InferEvent::StreamingWeights { agent: name.clone(), bytes: bytes.len() });
                                                for c in weight_chunks(epoch, sha, &bytes) {
                                                    publish(&client, topics.infer(&name, InferKind::Weights), &c);
                                                }
                                            }
                                            Err(e) => warn!(agent = %name, error = %e, "cannot cut the sub-model"),
                                        }
                                    }
                                    ExecStatus::Failed { epoch, request, reason } => {
                                        warn!(agent = %name, epoch, request, %reason, "request failed on an agent");
                                        if requests.fail(request) {
                                            metrics.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
                                            stats_dirty = true;
                                            if let Some(r) = replies.remove(&request) {
                                                let _ = r.send(Err(InferError::AgentFailed { agent: name, reason }));
                                            }
                                        }
                                    }
                                }
                            }
                            _ => {}
                        },
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "broker connection lost; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            Some(result) = plan_rx.recv() => {
                planning = false;
                match result {
                    Ok(plan) => {
                        let epoch = plan.epoch;
                        // Agents that left while it was solved make it stale: plan again.
                        if plan.split.specs.keys().any(|a| !agents.contains_key(a)) {
                            replan_at = Some(Instant::now());
                            continue;
                        }
                        info!(epoch, predicted_ms = plan.predicted_ms, "{}", plan.summary);
                        let _ = events.send(InferEvent::Planned { epoch, summary: plan.summary.clone() });
                        for (agent, spec) in &plan.split.specs {
                            publish(&client, topics.infer(agent, InferKind::Subgraph), spec);
                        }
                        metrics.lock().unwrap_or_else(|e| e.into_inner()).agents = plan.split.specs.len();
                        epochs.insert(epoch, EpochState { plan, ready: BTreeSet::new() });
                    }
                    Err(e) => {
                        warn!(error = %e, "planning failed");
                        refusal = Some(("orchestrator".into(), e.to_string()));
                        if active.is_none() {
                            for id in requests.waiting() {
                                requests.fail(id);
                                if let Some(r) = replies.remove(&id) {
                                    let _ = r.send(Err(InferError::Plan(e.to_string())));
                                }
                            }
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if stats_dirty && stats_at.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
                    let stats = metrics.lock().unwrap_or_else(|e| e.into_inner()).stats(moirai_link::clock::now_ms());
                    match encode(&stats) {
                        Ok(bytes) => {
                            if let Err(e) = client.try_publish(topics.orch_serving(), QoS::AtLeastOnce, true, bytes) {
                                warn!(error = %e, "serving stats dropped");
                            }
                        }
                        Err(e) => warn!(error = %e, "serving stats not encodable"),
                    }
                    stats_dirty = false;
                    stats_at = Some(Instant::now());
                }
                // `min_agents` only holds the first plan back; later ones use whoever is left.
                let enough = agents.len() >= if next_epoch == 0 { opts.min_agents.max(1) } else { 1 };
                if !planning && enough && replan_at.is_some_and(|t| Instant::now() >= t) {
                    replan_at = None;
                    planning = true;
                    next_epoch += 1;
                    let epoch = next_epoch;
                    let devices: Vec<OnlineAgent> =
                        agents.values().map(|b| OnlineAgent::from_birth(b, None)).collect();
                    let model = model.clone();
                    let placement = opts.placement.clone();
                    let profiles = opts.profiles.clone();
                    let tx = plan_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let _ = tx.send(plan_epoch(&model, devices, &placement, &profiles, epoch));
                    });
                }
                let cutoff = t0.elapsed().saturating_sub(opts.request_timeout);
                for id in requests.older_than(cutoff) {
                    requests.fail(id);
                    metrics.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
                    stats_dirty = true;
                    if let Some(r) = replies.remove(&id) {
                        let _ = r.send(Err(InferError::Timeout(opts.request_timeout)));
                    }
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Drops plans no request runs on any more, except the active one.
fn forget_old_epochs(
    epochs: &mut BTreeMap<u64, EpochState>,
    active: Option<u64>,
    requests: &Requests,
) {
    let Some(active) = active else { return };
    let used = requests.epochs_in_use();
    epochs.retain(|&e, _| e >= active || used.contains(&e));
}

fn dispatch(
    client: &AsyncClient,
    topics: &Topics,
    requests: &mut Requests,
    epochs: &BTreeMap<u64, EpochState>,
    id: u64,
    epoch: u64,
    now: Duration,
) {
    let Some(state) = epochs.get(&epoch) else {
        return;
    };
    let Some(inputs) = requests.dispatch(id, epoch, now) else {
        return;
    };
    for (spec, readers) in &state.plan.split.inputs {
        let Some(t) = inputs.iter().find(|t| t.name == spec.name) else {
            continue;
        };
        let chunks = activation_chunks(id, epoch, &t.name, &t.value);
        for agent in readers {
            for c in &chunks {
                publish(client, topics.infer(agent, InferKind::Act), c);
            }
        }
    }
}

/// Every model input present, with the model's element type and shape.
pub fn check_inputs(specs: &[TensorSpec], inputs: &[NamedTensor]) -> Result<(), InferError> {
    for s in specs {
        let t = inputs
            .iter()
            .find(|t| t.name == s.name)
            .ok_or_else(|| InferError::MissingInput(s.name.clone()))?;
        if t.value.dtype() != s.dtype || t.value.dims != s.dims {
            return Err(InferError::InputMismatch {
                name: s.name.clone(),
                got: format!("{:?}{:?}", t.value.dtype(), t.value.dims),
                want: format!("{:?}{:?}", s.dtype, s.dims),
            });
        }
    }
    Ok(())
}

/// Distinguishes sessions of one process in their MQTT client ids.
fn session_nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000)
        .unwrap_or(0)
}
