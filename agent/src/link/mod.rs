//! The agent's MQTT loop: connects with rumqttc (reconnecting with backoff), follows the
//! pure lifecycle of [`life::AgentLife`], answers profile requests, measures its link to the
//! broker and keeps the assignment it was sent.
//!
//! Profiling runs on its own thread with the [`KernelTimer`] created there; it sends report
//! chunks back through a channel, so heartbeats never wait for a kernel. Link probes publish
//! a payload to the agent's own probe topic: the time to the broker's PUBACK gives the upload
//! rate, the time from there to the payload coming back the download rate, and a tiny probe
//! the round trip.
//!
//! The same session carries the inference worker's traffic ([`crate::port`]): the loop subscribes to
//! its topics, hands it what arrives there and publishes what it sends.

pub mod life;
pub mod probe;
pub mod timer;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use moirai_core::kernel::KernelSignature;
use moirai_core::wire::assign::Assignment;
use moirai_core::wire::life::{Birth, Command, Death, LinkStats, OrchState, Probe};
use moirai_core::wire::profile::{ProfileEntry, ProfileFailure, ProfileReport, ProfileRequest};
use moirai_core::wire::{
    decode, encode, truncated, Topic, TopicKind, WireMessage, PROTOCOL_VERSION,
};
use rumqttc::{AsyncClient, Event, LastWill, Outgoing, Packet, QoS};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::port::{DataIn, DataLink};
use crate::rollout::{Receiving, RolloutError, Staged};
use life::{AgentLife, LifeAction};
use moirai_core::wire::rollout::{UpgradeChunk, UpgradeOffer, UpgradeState, UpgradeStatus};
use probe::{LinkProbe, ProbeStep};

#[derive(Debug, Error)]
pub enum LinkError {
    #[error("cannot start the profiling thread: {0}")]
    Thread(std::io::Error),
    /// The orchestrator will not serve this agent (e.g. another wire protocol); retrying
    /// cannot help, so the agent stops (exit status [`REFUSED_EXIT`]).
    #[error("the orchestrator refused this agent: {0}")]
    Refused(String),
}

/// Exit status of an agent the orchestrator refused; the systemd unit does not restart on
/// it (`RestartPreventExitStatus`).
pub const REFUSED_EXIT: u8 = 78;

/// Times one kernel on this machine.
pub trait KernelTimer {
    /// Median time of `sig` over `runs` timed runs (after a warm-up), in milliseconds, as
    /// measured here (the loop applies the emulation scale).
    fn time_ms(&mut self, sig: &KernelSignature, runs: u32) -> Result<f64, String>;
}

/// Builds the timer on the profiling thread (GPU contexts stay on the thread that made them).
pub type TimerFactory = Box<dyn FnOnce() -> Box<dyn KernelTimer> + Send>;

/// What the agent tells about its hardware in its birth.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    pub name: String,
    pub backend: String,
}

/// What the loop reports to its caller (tests and the demo watch these).
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    Announced { bd_seq: u64 },
    Assigned { epoch: u64, ops: usize },
    Profiled { kernels: u32 },
    LinkMeasured(LinkStats),
    Disconnected,
}

/// Kernels per report chunk: keeps chunks far below the size limit and gives progress.
const CHUNK: usize = 16;

struct Profiling {
    request: ProfileRequest,
}

/// Runs the agent until `shutdown` resolves, or until a rolled-out binary arrived whole
/// (returned, for the caller to try it after this loop left the broker). Never returns an
/// error for network trouble: it reconnects. With `data`, the session also carries an
/// inference worker's topics.
pub async fn run(
    cfg: AgentConfig,
    adapter: AdapterInfo,
    timer: TimerFactory,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
    data: Option<DataLink>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Option<Staged>, LinkError> {
    let name = cfg.name.to_string();
    let topics = cfg.topics.clone();
    let scale = cfg.scale();
    let emit = |e: AgentEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };

    // Profiling thread: requests in, report chunks out.
    let (job_tx, job_rx) = std::sync::mpsc::channel::<Profiling>();
    let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<ProfileReport>();
    std::thread::Builder::new()
        .name("moirai-profiler".into())
        .spawn(move || profile_worker(timer, job_rx, chunk_tx, scale))
        .map_err(LinkError::Thread)?;

    let mut life = AgentLife::new(moirai_link::clock::now_ms());
    let will_topic = topics.agent(&name, TopicKind::Death);
    let will = |life: &AgentLife| {
        LastWill::new(
            will_topic.clone(),
            encode(&life.death()).unwrap_or_default(),
            QoS::AtLeastOnce,
            false,
        )
    };
    let mut opts = moirai_link::mqtt::options(name.clone(), &cfg.broker);
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_last_will(will(&life));
    // Activations of many requests in flight share the session with the heartbeats.
    opts.set_inflight(1000);
    cfg.security.apply(&mut opts);
    let (client, mut eventloop) = AsyncClient::new(opts, 65536);
    // Activations are latency-bound: no Nagle delay on the way to the broker.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (data_subscriptions, to_worker, mut from_worker) = match data {
        Some(d) => (d.subscriptions, Some(d.to_worker), Some(d.from_worker)),
        None => (Vec::new(), None, None),
    };

    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    let mut busy = false;
    let mut link: Option<LinkStats> = None;
    let mut probe: Option<LinkProbe> = None;
    let mut probe_to_send: Option<u32> = None;
    let mut probe_seq = 0u32;
    // Kind of each publish handed to rumqttc, in order: true for a large probe. Matched
    // against `Outgoing::Publish` events to learn the probe's packet id.
    let mut publishes: VecDeque<bool> = VecDeque::new();
    let mut assignment: Option<Assignment> = None;
    let mut refused: Option<String> = None;
    let mut rollout = cfg.rollout.clone();
    let mut receiving: Option<Receiving> = None;
    let mut staged: Option<Staged> = None;
    let upgrade_status = |rollout: u64, state: UpgradeState| {
        let msg = UpgradeStatus { rollout, state };
        match encode(&msg) {
            Ok(b) => {
                if let Err(e) = client.try_publish(
                    topics.agent(&name, TopicKind::UpgradeStatus),
                    QoS::AtLeastOnce,
                    false,
                    b,
                ) {
                    warn!(error = %e, "upgrade status dropped");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode an upgrade status"),
        }
    };
    tokio::pin!(shutdown);

    // Every publish of the session goes through here, the worker's too, so the kinds queued
    // match rumqttc's outgoing publishes one for one.
    let publish_as = |publishes: &mut VecDeque<bool>,
                      topic: String,
                      qos: QoS,
                      retain: bool,
                      bytes: Vec<u8>,
                      is_probe: bool| {
        match client.try_publish(topic.clone(), qos, retain, bytes) {
            Ok(()) => publishes.push_back(is_probe),
            Err(e) => warn!(%topic, error = %e, "publish dropped"),
        }
    };
    let publish =
        |publishes: &mut VecDeque<bool>,
         topic: String,
         qos: QoS,
         bytes: Vec<u8>,
         is_probe: bool| { publish_as(publishes, topic, qos, false, bytes, is_probe) };
    let encoded = |m: &dyn Fn() -> Result<Vec<u8>, moirai_core::wire::WireError>| match m() {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(error = %e, "cannot encode");
            None
        }
    };
    fn enc<M: WireMessage>(m: &M) -> Result<Vec<u8>, moirai_core::wire::WireError> {
        encode(m)
    }

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    publishes.clear();
                    for a in life.on_connected() {
                        if a == LifeAction::Subscribe {
                            let mut subs = vec![topics.orch_state()];
                            for k in [TopicKind::Command, TopicKind::ProfileRequest, TopicKind::Assign, TopicKind::Probe, TopicKind::Refused, TopicKind::UpgradeOffer, TopicKind::UpgradeChunk, TopicKind::Death] {
                                subs.push(topics.agent(&name, k));
                            }
                            subs.extend(data_subscriptions.iter().cloned());
                            for s in subs {
                                if let Err(e) = client.try_subscribe(s, QoS::AtLeastOnce) {
                                    warn!(error = %e, "subscribe failed");
                                }
                            }
                            if let Some(w) = &to_worker {
                                let _ = w.send(DataIn::Connected).await;
                            }
                        }
                    }
                    info!(bd_seq = life.bd_seq(), broker = %cfg.broker, "connected");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(w) = to_worker.as_ref().filter(|_| topics.parse_infer(&p.topic).is_ok()) {
                        // Waits while the worker is busy: it reads on its own task.
                        let _ = w.send(DataIn::Message(p)).await;
                        continue;
                    }
                    let parsed = topics.parse(&p.topic);
                    let mut actions = Vec::new();
                    let mut new_session = false;
                    match parsed {
                        Ok(Topic::OrchState) => match decode::<OrchState>(&p.payload) {
                            Ok(s) => actions = life.on_orch_state(&s),
                            Err(e) => debug!(error = %e, "orchestrator state dropped"),
                        },
                        Ok(Topic::Agent { name: n, kind: TopicKind::Refused }) if n.as_str() == name => {
                            let why = moirai_core::wire::refusal::read(&p.payload);
                            tracing::error!(reason = %why, "refused by the orchestrator; stopping");
                            refused = Some(why);
                            break;
                        }
                        Ok(Topic::Agent { name: n, kind: TopicKind::Death })
                            if n.as_str() == name
                                && decode::<Death>(&p.payload).is_ok_and(|d| life.is_announced() && d.bd_seq == life.bd_seq()) =>
                        {
                            // A death of the session in progress: the broker fired this client
                            // id's Last Will for a live connection. The orchestrator now holds
                            // this session dead and will refuse its birth: start a new one.
                            new_session = true;
                        }
                        Ok(Topic::Agent { name: n, kind: TopicKind::UpgradeOffer }) if n.as_str() == name => match decode::<UpgradeOffer>(&p.payload) {
                            Ok(offer) => {
                                if let Some(r) = receiving.take() {
                                    r.abandon();
                                }
                                let id = offer.rollout;
                                info!(rollout = id, version = %offer.version, bytes = offer.size, "upgrade offered");
                                let started = match &rollout.install {
                                    Some(i) => Receiving::start(i, offer, &rollout.exe_name),
                                    None => Err(RolloutError::NoInstall),
                                };
                                match started {
                                    Ok(r) => receiving = Some(r),
                                    Err(e) => {
                                        warn!(error = %e, "upgrade refused");
                                        upgrade_status(id, UpgradeState::Refused { reason: truncated(&e.to_string()) });
                                    }
                                }
                            }
                            Err(e) => warn!(error = %e, "upgrade offer dropped"),
                        },
                        Ok(Topic::Agent { name: n, kind: TopicKind::UpgradeChunk }) if n.as_str() == name => match (decode::<UpgradeChunk>(&p.payload), receiving.as_mut()) {
                            (Ok(c), Some(r)) if c.rollout == r.offer.rollout => match r.chunk(&c, &rollout.exe_name) {
                                Ok(None) => {}
                                Ok(Some(s)) => {
                                    info!(version = %s.offer.version, binary = %s.binary.display(), "upgrade staged; trying it");
                                    upgrade_status(s.offer.rollout, UpgradeState::Staged);
                                    staged = Some(s);
                                    break;
                                }
                                Err(e) => {
                                    warn!(error = %e, "upgrade refused");
                                    upgrade_status(c.rollout, UpgradeState::Refused { reason: truncated(&e.to_string()) });
                                    if let Some(r) = receiving.take() {
                                        r.abandon();
                                    }
                                }
                            },
                            (Ok(_), _) => debug!("chunk of no current upgrade dropped"),
                            (Err(e), _) => warn!(error = %e, "upgrade chunk dropped"),
                        },
                        Ok(Topic::Agent { name: n, kind }) if n.as_str() == name => match kind {
                            TopicKind::Command => match decode::<Command>(&p.payload) {
                                Ok(Command::Rebirth) => actions = life.on_rebirth(),
                                Ok(Command::ProbeLink) => probe_to_send = Some(start_probe(&mut probe, &mut probe_seq, cfg.probe_bytes)),
                                Ok(Command::NewSession { bd_seq }) => new_session |= bd_seq == life.bd_seq(),
                                Err(e) => debug!(error = %e, "command dropped"),
                            },
                            TopicKind::ProfileRequest => match decode::<ProfileRequest>(&p.payload) {
                                Ok(request) => {
                                    info!(request_id = request.request_id, kernels = request.signatures.len(), "profiling");
                                    busy = true;
                                    let _ = job_tx.send(Profiling { request });
                                }
                                Err(e) => warn!(error = %e, "profile request dropped"),
                            },
                            TopicKind::Assign => match decode::<Assignment>(&p.payload) {
                                Ok(a) if assignment.as_ref().is_some_and(|c| c.epoch > a.epoch) => {
                                    debug!(epoch = a.epoch, "older assignment ignored");
                                }
                                Ok(a) => {
                                    info!(epoch = a.epoch, ops = a.ops.len(), receive = a.receive.len(), send = a.send.len(), "assignment");
                                    emit(AgentEvent::Assigned { epoch: a.epoch, ops: a.ops.len() });
                                    assignment = Some(a);
                                }
                                Err(e) => warn!(error = %e, "assignment dropped"),
                            },
                            TopicKind::Probe => {
                                if let (Ok(pr), Some(run)) = (decode::<Probe>(&p.payload), probe.as_mut()) {
                                    match run.on_echo(pr.seq, Instant::now()) {
                                        Some(ProbeStep::SendLarge { seq, bytes }) => {
                                            if let Ok(b) = encode(&Probe { seq, padding: vec![0x5A; bytes] }) {
                                                publish(&mut publishes, topics.agent(&name, TopicKind::Probe), QoS::AtLeastOnce, b, true);
                                            }
                                        }
                                        Some(ProbeStep::Done(stats)) => {
                                            info!(up_bps = stats.up_bps, down_bps = stats.down_bps, rtt_us = stats.rtt_us, "link measured");
                                            emit(AgentEvent::LinkMeasured(stats));
                                            link = Some(stats);
                                            probe = None;
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        },
                        _ => {}
                    }
                    for a in actions {
                        if a == LifeAction::Announce {
                            let birth = make_birth(&cfg, &adapter, life.bd_seq());
                            if let Some(b) = encoded(&|| enc(&birth)) {
                                publish(&mut publishes, topics.agent(&name, TopicKind::Birth), QoS::AtLeastOnce, b, false);
                                info!(bd_seq = life.bd_seq(), "announced");
                                emit(AgentEvent::Announced { bd_seq: life.bd_seq() });
                            }
                            if let Some(report) = rollout.report.take() {
                                upgrade_status(report.rollout, report.state);
                            }
                            if let Some(t) = rollout.trial.take() {
                                match t.report_online() {
                                    Ok(()) => upgrade_status(t.rollout, UpgradeState::Online { version: truncated(&t.version) }),
                                    Err(e) => warn!(error = %e, marker = %t.marker.display(), "cannot tell the previous release we are online"),
                                }
                            }
                            if link.is_none() && probe.is_none() {
                                probe_to_send = Some(start_probe(&mut probe, &mut probe_seq, cfg.probe_bytes));
                            }
                        }
                    }
                    if new_session {
                        warn!(bd_seq = life.bd_seq(), "this session was declared dead while connected; reconnecting as a new one");
                        life.on_disconnected(moirai_link::clock::now_ms());
                        eventloop.mqtt_options.set_last_will(will(&life));
                        eventloop.network = None;
                        eventloop.pending.clear();
                        publishes.clear();
                        probe = None;
                        emit(AgentEvent::Disconnected);
                        continue;
                    }
                    if let Some(seq) = probe_to_send.take() {
                        if let Ok(b) = encode(&Probe { seq, padding: vec![0; 8] }) {
                            publish(&mut publishes, topics.agent(&name, TopicKind::Probe), QoS::AtMostOnce, b, false);
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if publishes.pop_front() == Some(true) {
                        if let Some(run) = probe.as_mut() {
                            run.on_large_sent(pkid);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(run) = probe.as_mut() {
                        run.on_puback(ack.pkid, Instant::now());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    life.on_disconnected(moirai_link::clock::now_ms());
                    eventloop.mqtt_options.set_last_will(will(&life));
                    publishes.clear();
                    probe = None;
                    emit(AgentEvent::Disconnected);
                    warn!(error = %e, retry_in = ?backoff, next_bd_seq = life.bd_seq(), "broker connection lost");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
            _ = heartbeat.tick() => {
                if let Some(hb) = life.heartbeat(busy, link) {
                    if let Some(b) = encoded(&|| enc(&hb)) {
                        publish(&mut publishes, topics.agent(&name, TopicKind::Heartbeat), QoS::AtMostOnce, b, false);
                    }
                }
            }
            Some(out) = async { match from_worker.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                publish_as(&mut publishes, out.topic, QoS::AtLeastOnce, out.retain, out.payload, false);
            }
            Some(mut chunk) = chunk_rx.recv() => {
                chunk.bd_seq = life.bd_seq();
                if chunk.is_last() {
                    busy = false;
                    emit(AgentEvent::Profiled { kernels: chunk.total });
                }
                if let Some(b) = encoded(&|| enc(&chunk)) {
                    publish(&mut publishes, topics.agent(&name, TopicKind::ProfileReport), QoS::AtLeastOnce, b, false);
                }
            }
        }
    }
    // What the worker sent last (it stops before the link), then a clean goodbye: the
    // death of this session, then disconnect.
    if let Some(rx) = from_worker.as_mut() {
        while let Ok(out) = rx.try_recv() {
            let _ = client.try_publish(out.topic, QoS::AtLeastOnce, out.retain, out.payload);
        }
    }
    if life.is_announced() {
        if let Ok(b) = encode(&life.death()) {
            let _ = client.try_publish(will_topic.clone(), QoS::AtLeastOnce, false, b);
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    match refused {
        Some(why) => Err(LinkError::Refused(why)),
        None => Ok(staged),
    }
}

/// Starts a probe; returns the sequence number of the small message to publish.
fn start_probe(probe: &mut Option<LinkProbe>, seq: &mut u32, bytes: usize) -> u32 {
    *seq += 1;
    let (p, _) = LinkProbe::start(*seq, bytes, Instant::now());
    *probe = Some(p);
    *seq
}

fn make_birth(cfg: &AgentConfig, adapter: &AdapterInfo, bd_seq: u64) -> Birth {
    Birth {
        name: cfg.name.clone(),
        board: truncated(&cfg.board.name),
        adapter: truncated(&adapter.name),
        backend: truncated(&adapter.backend),
        memory_bytes: cfg.memory_bytes(),
        peak_gflops: cfg.board.compute.f32_gflops as f32,
        mem_gbps: cfg.board.memory.bandwidth_gbps as f32,
        emulation_scale: cfg.scale().map(|s| s as f32),
        agent_version: truncated(env!("CARGO_PKG_VERSION")),
        protocol: PROTOCOL_VERSION,
        bd_seq,
    }
}

/// The profiling thread: times every kernel of each request, sending a chunk every
/// [`CHUNK`] kernels.
fn profile_worker(
    factory: TimerFactory,
    jobs: std::sync::mpsc::Receiver<Profiling>,
    chunks: mpsc::UnboundedSender<ProfileReport>,
    scale: Option<f64>,
) {
    let mut timer = factory();
    while let Ok(Profiling { request }) = jobs.recv() {
        let total = request.signatures.len() as u32;
        let mut entries = Vec::new();
        let mut failures = Vec::new();
        let mut done = 0u32;
        let flush = |entries: &mut Vec<ProfileEntry>, failures: &mut Vec<ProfileFailure>, done| {
            ProfileReport {
                request_id: request.request_id,
                bd_seq: 0,
                done,
                total,
                entries: std::mem::take(entries),
                failures: std::mem::take(failures),
                emulation_scale: scale.map(|s| s as f32),
            }
        };
        for sig in &request.signatures {
            let key = sig.key();
            match timer.time_ms(sig, request.runs.max(1)) {
                Ok(t) if t.is_finite() && t >= 0.0 => entries.push(ProfileEntry {
                    key,
                    time_ms: t * scale.unwrap_or(1.0),
                    runs: request.runs.max(1),
                }),
                Ok(t) => failures.push(ProfileFailure {
                    key,
                    reason: format!("timer returned {t}"),
                }),
                Err(reason) => failures.push(ProfileFailure { key, reason }),
            }
            done += 1;
            if entries.len() + failures.len() >= CHUNK
                && done < total
                && chunks
                    .send(flush(&mut entries, &mut failures, done))
                    .is_err()
            {
                return;
            }
        }
        if chunks
            .send(flush(&mut entries, &mut failures, done))
            .is_err()
        {
            return;
        }
    }
}
