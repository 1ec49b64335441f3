//! The orchestrator's side of distributed inference: one MQTT loop that tracks the agents
//! by their births and deaths (the agents' one session, the messages the fleet reads), plans
//! the model on them (a new plan epoch on every join or death) with the kernel times and link
//! rates the fleet measured ([`Measured`]), sends each agent its
//! [`SubgraphSpec`](moirai_core::wire::data::SubgraphSpec), streams weights to agents
//! without a local copy, feeds request inputs, collects outputs and answers each request
//! once. It logs in as the orchestrator does ([`SessionOptions::security`]).
//!
//! An epoch is used for new requests once every agent with a share reported ready; a
//! request runs on the epoch it was dispatched on. When an agent dies, every request whose
//! epoch gave it work goes back to the queue and is dispatched again on the next epoch.
//! Callers talk to the loop through a [`SessionHandle`] (a channel, as rumqttc's client).

use moirai_link::mqtt::publish;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moirai_core::wire::data::{
    activation_chunks, weight_chunks, ActivationChunk, ExecStatus, ServingStats, TensorSpec,
};
use moirai_core::wire::life::{Birth, Death, LinkStats, OrchState};
use moirai_core::wire::topic::{InferKind, InferTopic, Topic, TopicKind, Topics};
use moirai_core::wire::{decode, encode, BrokerAddr};
use moirai_link::tls::ClientSecurity;
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::epochs::Epochs;
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
    /// What the fleet measured; read at each plan.
    pub measured: watch::Receiver<Measured>,
    /// TLS and login to the broker: the orchestrator's.
    pub security: ClientSecurity,
    /// Publish the orchestrator's online state (retained; the Last Will says offline) so
    /// that agents announce themselves: for a session that runs without `moirai serve`'s
    /// fleet loop, which publishes it otherwise.
    pub announce: bool,
}

/// What the fleet loop measured, for the plans: kernel times by board class (the roofline
/// stands in elsewhere) and each agent's link to the broker (the board's NIC elsewhere).
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub profiles: Arc<moirai_core::cost::ProfileTable>,
    pub links: BTreeMap<String, LinkStats>,
}

impl Measured {
    /// Figures that never change: a standalone session's.
    pub fn fixed(profiles: moirai_core::cost::ProfileTable) -> watch::Receiver<Measured> {
        let (tx, rx) = watch::channel(Measured {
            profiles: Arc::new(profiles),
            links: BTreeMap::new(),
        });
        // The receiver keeps the last value once the sender is gone.
        drop(tx);
        rx
    }
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

/// What `GET /v1/plan` and `GET /v1/fleet` show: the epochs and the agents, as the session
/// holds them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Views {
    /// The epoch requests run on now, if any.
    pub in_force: Option<EpochView>,
    /// The newest plan, which may still wait for its agents.
    pub newest: Option<EpochView>,
    pub agents: Vec<AgentView>,
}

/// One plan epoch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochView {
    pub epoch: u64,
    pub predicted_ms: f64,
    /// The fused groups each agent runs, by agent.
    pub groups: BTreeMap<String, Vec<String>>,
    pub summary: String,
}

impl EpochView {
    fn of(plan: &EpochPlan) -> EpochView {
        let mut groups: BTreeMap<String, Vec<String>> = plan
            .agents
            .iter()
            .map(|a| (a.clone(), Vec::new()))
            .collect();
        for op in &plan.schedule.ops {
            if let Some(a) = plan.agents.get(op.device as usize) {
                groups.entry(a.clone()).or_default().push(op.id.clone());
            }
        }
        EpochView {
            epoch: plan.epoch,
            predicted_ms: plan.predicted_ms,
            groups,
            summary: plan.summary.clone(),
        }
    }
}

/// An agent the session plans on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentView {
    pub name: String,
    pub board: String,
    pub backend: String,
    pub memory_bytes: u64,
    pub bd_seq: u64,
}

fn agent_views(agents: &BTreeMap<String, Birth>) -> Vec<AgentView> {
    agents
        .iter()
        .map(|(n, b)| AgentView {
            name: n.clone(),
            board: b.board.to_string(),
            backend: b.backend.to_string(),
            memory_bytes: b.memory_bytes,
            bd_seq: b.bd_seq,
        })
        .collect()
}

/// [`ServingStats`] are republished at most this often.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What happened, for whoever prints progress.
#[derive(Clone, Debug)]
pub enum InferEvent {
    Connected,
    Joined {
        name: String,
        board: String,
    },
    Left {
        name: String,
    },
    Planned {
        epoch: u64,
        summary: String,
        plan: Arc<EpochPlan>,
    },
    Ready {
        epoch: u64,
    },
    Refused {
        agent: String,
        reason: String,
    },
    StreamingWeights {
        agent: String,
        bytes: usize,
    },
    Rerun {
        ids: Vec<u64>,
        agent: String,
    },
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
    pub views: Arc<Mutex<Views>>,
}

impl SessionHandle {
    /// The epochs and agents now.
    pub fn views(&self) -> Views {
        self.views.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle").finish_non_exhaustive()
    }
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
    let views = Arc::new(Mutex::new(Views::default()));
    let handle = SessionHandle {
        tx,
        metrics: metrics.clone(),
        views: views.clone(),
    };
    let task = tokio::spawn(run(
        opts, topics, model, rx, events, metrics, views, shutdown,
    ));
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
    views: Arc<Mutex<Views>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let set_views = |f: &dyn Fn(&mut Views)| {
        let mut v = views.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut v);
    };
    let id = format!("moirai-infer-{}-{}", std::process::id(), session_nonce());
    let mut mo = moirai_link::mqtt::options(id, &opts.broker);
    mo.set_inflight(1000);
    let orch_session = moirai_link::clock::now_ms();
    if opts.announce {
        mo.set_last_will(LastWill::new(
            topics.orch_state(),
            encode(&OrchState {
                online: false,
                session: orch_session,
            })
            .unwrap_or_default(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    opts.security.apply(&mut mo);
    let (client, mut eventloop) = AsyncClient::new(mo, 65536);
    // Activations are latency-bound: no Nagle delay on the way to the broker.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let t0 = Instant::now();
    let mut agents: BTreeMap<String, Birth> = BTreeMap::new();
    let mut epochs: Epochs<Arc<EpochPlan>> = Epochs::default();
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
    // A finished profile makes a new epoch: plans read the measured times (the links only
    // when they plan for another reason, since every probe changes them a little).
    let mut measured = opts.measured.clone();
    // Held, so the table compared against is never freed and its address reused.
    let mut profiles_seen = measured.borrow().profiles.clone();
    let mut measured_open = true;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            cmd = cmds.recv() => match cmd {
                None => break,
                Some(Cmd::Infer { inputs, reply }) => {
                    if let Some((agent, reason)) = refusal.clone().filter(|_| epochs.active().is_none()) {
                        let _ = reply.send(Err(InferError::Refused { agent, reason }));
                        continue;
                    }
                    if let Err(e) = check_inputs(model.inputs(), &inputs) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let id = requests.submit(inputs, t0.elapsed());
                    replies.insert(id, reply);
                    if let Some(e) = epochs.active() {
                        dispatch(&client, &topics, &mut requests, &epochs, id, e, t0.elapsed());
                    }
                }
            },
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in [topics.all_agents(TopicKind::Birth), topics.all_agents(TopicKind::Death), topics.infer_all(InferKind::Status), topics.infer_result()] {
                        let _ = client.try_subscribe(f, QoS::AtLeastOnce);
                    }
                    if opts.announce {
                        moirai_link::mqtt::publish_retained(&client, topics.orch_state(), &OrchState { online: true, session: orch_session });
                    }
                    let _ = events.send(InferEvent::Connected);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {}
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = match topics.parse_infer(&p.topic) {
                        Ok(t) => t,
                        Err(_) => match topics.parse(&p.topic) {
                            Ok(Topic::Agent { name, kind: TopicKind::Birth }) => {
                                let Ok(b) = decode::<Birth>(&p.payload) else { continue };
                                if b.name != name || agents.get(name.as_str()).is_some_and(|known| known.bd_seq >= b.bd_seq) {
                                    // Someone else's name, or a session already known (a rebirth).
                                    continue;
                                }
                                info!(agent = %name, board = %b.board, "agent joined");
                                let _ = events.send(InferEvent::Joined { name: name.to_string(), board: b.board.to_string() });
                                agents.insert(name.to_string(), b);
                                let list = agent_views(&agents);
                                set_views(&|v| v.agents = list.clone());
                                replan_at = Some(Instant::now() + opts.debounce);
                                continue;
                            }
                            Ok(Topic::Agent { name, kind: TopicKind::Death }) => {
                                let Ok(d) = decode::<Death>(&p.payload) else { continue };
                                let name = name.to_string();
                                if agents.get(&name).is_none_or(|b| b.bd_seq != d.bd_seq) {
                                    continue;
                                }
                                agents.remove(&name);
                                let list = agent_views(&agents);
                                set_views(&|v| v.agents = list.clone());
                                let _ = events.send(InferEvent::Left { name: name.clone() });
                                let touched = epochs.agent_died(&name);
                                if epochs.active().is_none() {
                                    set_views(&|v| v.in_force = None);
                                }
                                let ids = requests.rerun_where(|e| touched.contains(&e));
                                if !ids.is_empty() {
                                    info!(agent = %name, requests = ids.len(), "agent died: its requests run again on the next plan");
                                    let _ = events.send(InferEvent::Rerun { ids, agent: name.clone() });
                                }
                                replan_at = Some(Instant::now() + opts.debounce);
                                continue;
                            }
                            _ => continue,
                        },
                    };
                    match topic {
                        InferTopic::Result => {
                            let Ok(c) = decode::<ActivationChunk>(&p.payload) else {
                                debug!("undecodable result chunk dropped");
                                continue;
                            };
                            match requests.on_chunk(c, model.outputs(), t0.elapsed()) {
                                ChunkOutcome::Completed(done) => {
                                    let predicted_ms = epochs.plan(done.epoch).map_or(0.0, |p| p.predicted_ms);
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
                                    epochs.forget_unused(&requests.epochs_in_use());
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
                        InferTopic::Agent { name, kind: InferKind::Status } => {
                                let Ok(s) = decode::<ExecStatus>(&p.payload) else { continue };
                                let name = name.to_string();
                                match s {
                                    ExecStatus::Ready { epoch, load_ms, gpu_groups, tract_groups, differ } => {
                                        info!(agent = %name, epoch, load_ms, gpu_groups, tract_groups, differ, "ready");
                                        if differ > 0 {
                                            warn!(agent = %name, epoch, differ, "GPU kernels that differ from tract run on tract");
                                        }
                                        if epochs.ready(&name, epoch) {
                                            refusal = None;
                                            if let Some(p) = epochs.plan(epoch) {
                                                let view = EpochView::of(p);
                                                set_views(&|v| v.in_force = Some(view.clone()));
                                            }
                                            let _ = events.send(InferEvent::Ready { epoch });
                                            metrics.lock().unwrap_or_else(|e| e.into_inner()).epoch = epoch;
                                            stats_dirty = true;
                                            for id in requests.waiting() {
                                                dispatch(&client, &topics, &mut requests, &epochs, id, epoch, t0.elapsed());
                                            }
                                            epochs.forget_unused(&requests.epochs_in_use());
                                        }
                                    }
                                    ExecStatus::Refused { epoch, reason } => {
                                        warn!(agent = %name, epoch, %reason, "assignment refused");
                                        let _ = events.send(InferEvent::Refused { agent: name.clone(), reason: reason.clone() });
                                        if epochs.active().is_none() {
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
                                        let Some(spec) = epochs.plan(epoch).and_then(|p| p.split.specs.get(&name)) else { continue };
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
                        InferTopic::Agent { .. } => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "broker connection lost; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            changed = measured.changed(), if measured_open => match changed {
                // The fleet loop is gone (or never ran): the figures stay as they are.
                Err(_) => measured_open = false,
                Ok(()) => {
                    let now = measured.borrow_and_update().profiles.clone();
                    if !Arc::ptr_eq(&now, &profiles_seen) {
                        profiles_seen = now;
                        if !agents.is_empty() {
                            info!("new kernel times measured: planning again");
                            replan_at = Some(Instant::now() + opts.debounce);
                        }
                    }
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
                        let plan = Arc::new(plan);
                        let _ = events.send(InferEvent::Planned { epoch, summary: plan.summary.clone(), plan: plan.clone() });
                        for (agent, spec) in &plan.split.specs {
                            publish(&client, topics.infer(agent, InferKind::Subgraph), spec);
                        }
                        metrics.lock().unwrap_or_else(|e| e.into_inner()).agents = plan.split.specs.len();
                        let view = EpochView::of(&plan);
                        set_views(&|v| v.newest = Some(view.clone()));
                        let members = plan.split.specs.iter().map(|(a, s)| (a.clone(), !s.nodes.is_empty())).collect();
                        epochs.install(epoch, plan, members);
                    }
                    Err(e) => {
                        warn!(error = %e, "planning failed");
                        refusal = Some(("orchestrator".into(), e.to_string()));
                        if epochs.active().is_none() {
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
                let enough = agents.len() >= if epochs.any_started() { 1 } else { opts.min_agents.max(1) };
                if !planning && enough && replan_at.is_some_and(|t| Instant::now() >= t) {
                    replan_at = None;
                    planning = true;
                    let epoch = epochs.start();
                    let measured = measured.borrow().clone();
                    let devices: Vec<OnlineAgent> = agents
                        .iter()
                        .map(|(n, b)| OnlineAgent::from_birth(b, measured.links.get(n).copied()))
                        .collect();
                    let model = model.clone();
                    let placement = opts.placement.clone();
                    let profiles = measured.profiles;
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
    if opts.announce {
        moirai_link::mqtt::publish_retained(
            &client,
            topics.orch_state(),
            &OrchState {
                online: false,
                session: orch_session,
            },
        );
    }
    let _ = client.try_disconnect();
    // Let the event loop flush the offline state and the disconnect.
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

fn dispatch(
    client: &AsyncClient,
    topics: &Topics,
    requests: &mut Requests,
    epochs: &Epochs<Arc<EpochPlan>>,
    id: u64,
    epoch: u64,
    now: Duration,
) {
    let Some(plan) = epochs.plan(epoch) else {
        return;
    };
    let Some(inputs) = requests.dispatch(id, epoch, now) else {
        return;
    };
    for (spec, readers) in &plan.split.inputs {
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
