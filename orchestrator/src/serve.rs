//! `moirai serve`: the edge orchestrator's main loop.
//!
//! Starts the embedded broker unless an external one is named, connects, publishes its
//! retained `online` state (its Last Will says `offline`), and then only translates: MQTT
//! publishes become [`crate::fleet::Inbound`] messages for the pure [`Fleet`], a clock tick drives its
//! timeouts and debounce, and its [`Outbound`] actions become publishes or replans. Replans run
//! on a blocking thread so heartbeats keep flowing while the placer searches; a replan asked
//! for while one runs waits for it and runs next, with the reasons of both.
//!
//! What happens is also sent as [`ServeEvent`]s, which `moirai serve` prints and `moirai
//! demo` turns into progress bars and tables.
//!
//! With [`ServeOptions::inference`], the inference session ([`crate::infer::session`]) runs
//! beside this loop under the same login, and plans on what this loop measured: the profile
//! store and each agent's link ([`Measured`], a watch channel updated at each tick).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moirai_core::wire::life::OrchState;
use moirai_core::wire::topic::Topics;
use moirai_core::wire::{encode, BrokerAddr, TopicKind, WireError, WireMessage};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::{self, BrokerError};
use crate::bus;
use crate::fleet::life::Liveness;
use crate::fleet::model::OnlineAgent;
use crate::fleet::{view, Fleet, FleetConfig, Outbound};
use crate::infer::session::{InferEvent, Measured};
use crate::replan::{CurrentPlan, PlaceFn, ReplanError, Replanner};
use moirai_core::cost::plan::PlanModel;
use moirai_model::loaded::LoadedModel;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("model {path}: {source}")]
    Model {
        path: PathBuf,
        source: Box<moirai_model::import::onnx::ImportError>,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Fetch(#[from] bus::FetchError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("bad broker address: {0}")]
    Address(#[from] WireError),
    #[error(transparent)]
    Store(#[from] moirai_model::profiles::StoreError),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error(transparent)]
    Load(#[from] moirai_model::loaded::LoadError),
}

/// Everything `serve` needs.
pub struct ServeOptions {
    pub model: PlanModel,
    /// External broker; `None` starts the embedded one on `listen`.
    pub broker: Option<String>,
    pub listen: SocketAddr,
    pub prefix: String,
    pub fleet: FleetConfig,
    /// The profile store file.
    pub store_path: PathBuf,
    /// Placer time limit per replan.
    pub time_limit: Duration,
    /// How often the fleet's clock advances.
    pub tick: Duration,
    /// Connections the embedded broker accepts.
    pub max_connections: usize,
    pub place: PlaceFn,
    /// TLS and credentials: the embedded broker's, or the orchestrator's login to `broker`.
    pub security: crate::security::ServeSecurity,
    /// Also serve inference requests over HTTP.
    pub inference: Option<ServeInference>,
}

/// Distributed inference beside the fleet loop.
pub struct ServeInference {
    /// `POST /v1/infer` and `GET /v1/metrics` here.
    pub listen: SocketAddr,
    /// The model as loaded once: its plan model is [`ServeOptions::model`].
    pub model: Arc<LoadedModel>,
    /// No first inference plan before this many agents were born.
    pub min_agents: usize,
}

/// What happened, for whoever shows progress.
#[derive(Clone, Debug)]
pub enum ServeEvent {
    /// Connected to the broker (embedded or not) at this address.
    Connected {
        broker: BrokerAddr,
        embedded: bool,
    },
    Joined {
        name: String,
        board: String,
        bd_seq: u64,
        emulation_scale: Option<f32>,
    },
    /// A newer session of an online agent (it restarted before its death was seen).
    Restarted {
        name: String,
        bd_seq: u64,
        previous: u64,
    },
    Left {
        name: String,
        why: String,
    },
    ProfileProgress {
        board: String,
        agent: String,
        done: u32,
        total: u32,
    },
    Replanning {
        reasons: Vec<String>,
    },
    /// A plan was published to every agent.
    Planned {
        plan: Arc<CurrentPlan>,
        /// The plan it replaced.
        previous: Option<Arc<CurrentPlan>>,
    },
    PlanFailed(String),
    /// An agent that cannot be served (another wire protocol); it was told why.
    Refused {
        name: String,
        reason: String,
    },
    /// Undecodable or oversized payloads dropped so far.
    Dropped {
        total: u64,
    },
    /// The inference endpoint listens here; requests can also go through `handle`.
    InferenceListening {
        addr: SocketAddr,
        handle: crate::infer::session::SessionHandle,
    },
    /// The inference session could not start.
    InferenceFailed(String),
    /// What the inference session did.
    Inference(InferEvent),
}

/// The fleet snapshot is republished at least this often (for its "last seen" column).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// Publishes without waiting: the request channel is large, and the loop must never block
/// on it while it is the one draining the event loop.
fn publish<M: WireMessage>(client: &AsyncClient, topic: String, msg: &M, retain: bool) {
    match encode(msg) {
        Ok(bytes) => {
            if let Err(e) = client.try_publish(&topic, QoS::AtLeastOnce, retain, bytes) {
                warn!(%topic, error = %e, "publish dropped");
            }
        }
        Err(e) => warn!(%topic, error = %e, "cannot encode"),
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(
    mut opts: ServeOptions,
    events: mpsc::UnboundedSender<ServeEvent>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let topics = Topics::new(&opts.prefix)?;
    let (addr, embedded, security) = match &opts.broker {
        Some(url) => {
            let (_, url) = moirai_link::tls::split_tls_scheme(url);
            (BrokerAddr::parse(&url)?, false, opts.security.external()?)
        }
        None => {
            let (broker_security, client_security) = opts.security.embedded()?;
            let b = broker::start_secured(opts.listen, opts.max_connections, &broker_security)?;
            if let Some(tls) = b.tls_addr {
                info!(%tls, "embedded broker serves MQTT over TLS to the devices");
            }
            (
                BrokerAddr {
                    host: b.addr.ip().to_string(),
                    port: b.addr.port(),
                },
                true,
                client_security,
            )
        }
    };
    let store = moirai_model::profiles::read_table(&opts.store_path)?;
    let (measured_tx, measured_rx) = tokio::sync::watch::channel(Measured {
        profiles: Arc::new(store.clone()),
        links: BTreeMap::new(),
    });
    // The inference session subscribes before this loop says it is online: births are not
    // retained, and agents announce themselves as soon as they see the orchestrator online.
    if let Some(inf) = opts.inference.take() {
        start_inference(inf, &addr, &topics, &security, measured_rx, &events).await;
    }
    let session = moirai_link::clock::now_ms();
    let client_id = format!("moirai-orchestrator-{}", std::process::id());
    let mut mqtt = bus::options(&addr, &client_id, &topics, session);
    security.apply(&mut mqtt);
    let (client, mut eventloop) = bus::connect(mqtt);
    let signatures = opts.model.signatures();
    info!(broker = %addr, embedded, kernels = signatures.len(), "orchestrator starting");
    let mut fleet = Fleet::new(opts.fleet.clone(), store, signatures);
    let mut profiles_changed = false;
    let mut replanner = Some(Replanner::new(opts.model, opts.place, opts.time_limit));
    let mut queued: Option<Vec<String>> = None;
    let mut current: Option<Arc<CurrentPlan>> = None;
    let (done_tx, mut done_rx) =
        mpsc::unbounded_channel::<(Replanner, Result<Arc<CurrentPlan>, ReplanError>)>();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut backoff = Duration::from_millis(100);
    let mut dropped_reported = 0u64;
    let mut snapshot_at = Duration::ZERO;
    let mut snapshot_dirty = true;
    tokio::pin!(shutdown);

    loop {
        let mut outs: Vec<Outbound> = Vec::new();
        tokio::select! {
            _ = &mut shutdown => break,
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    for f in bus::filters(&topics) {
                        if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                            warn!(error = %e, "subscribe failed");
                        }
                    }
                    publish(&client, topics.orch_state(), &OrchState { online: true, session }, true);
                    info!(broker = %addr, "connected; announced online");
                    let _ = events.send(ServeEvent::Connected { broker: addr.clone(), embedded });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    match bus::decode_inbound(&topics, &p.topic, &p.payload) {
                        Ok(Some(msg)) => {
                            let now = start.elapsed();
                            let before = online_sessions(&fleet);
                            outs = fleet.handle(msg, now);
                            snapshot_dirty |= membership_events(&fleet, &before, &events);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            fleet.count_undecodable();
                            debug!(topic = %p.topic, error = %e, "payload dropped");
                            if let Some((agent, text)) = bus::refusal_for(&topics, &p.topic, &e) {
                                warn!(%agent, reason = %text, "agent refused");
                                let to = topics.agent(&agent, TopicKind::Refused);
                                if let Err(e) = client.try_publish(&to, QoS::AtLeastOnce, false, text.clone()) {
                                    warn!(topic = %to, error = %e, "refusal not sent");
                                }
                                let _ = events.send(ServeEvent::Refused { name: agent, reason: text });
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "broker connection lost");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            },
            _ = ticker.tick() => {
                let now = start.elapsed();
                let before = online_sessions(&fleet);
                outs = fleet.tick(now);
                snapshot_dirty |= membership_events(&fleet, &before, &events);
                if snapshot_dirty || now.saturating_sub(snapshot_at) >= SNAPSHOT_EVERY {
                    let snap = view::snapshot(
                        &fleet,
                        now,
                        moirai_link::clock::now_ms(),
                        current.as_ref().map(|p| (p.epoch, p.schedule.makespan_ms, p.graph.name.as_str())),
                        |n| current.as_ref().and_then(|p| p.assignments.get(n)).map_or(0, |a| a.ops.len() as u32),
                    );
                    publish(&client, topics.orch_fleet(), &snap, true);
                    snapshot_at = now;
                    snapshot_dirty = false;
                }
                update_measured(&fleet, &measured_tx, std::mem::take(&mut profiles_changed));
                if fleet.drops.undecodable != dropped_reported {
                    dropped_reported = fleet.drops.undecodable;
                    let _ = events.send(ServeEvent::Dropped { total: dropped_reported });
                }
            }
            Some((r, result)) = done_rx.recv() => {
                replanner = Some(r);
                match result {
                    Ok(plan) => {
                        for (agent, a) in &plan.assignments {
                            publish(&client, topics.agent(agent, TopicKind::Assign), a, false);
                        }
                        let previous = current.replace(plan.clone());
                        snapshot_dirty = true;
                        let _ = events.send(ServeEvent::Planned { plan, previous });
                    }
                    Err(e) => {
                        warn!(error = %e, "replan failed");
                        let _ = events.send(ServeEvent::PlanFailed(e.to_string()));
                    }
                }
                if let Some(reasons) = queued.take() {
                    outs.push(Outbound::Replan { reasons });
                }
            }
        }
        for out in outs {
            match out {
                Outbound::Command { name, command } => publish(
                    &client,
                    topics.agent(&name, TopicKind::Command),
                    &command,
                    false,
                ),
                Outbound::Profile { name, request } => publish(
                    &client,
                    topics.agent(&name, TopicKind::ProfileRequest),
                    &request,
                    false,
                ),
                Outbound::ProfileProgress {
                    board,
                    agent,
                    done,
                    total,
                } => {
                    let _ = events.send(ServeEvent::ProfileProgress {
                        board,
                        agent,
                        done,
                        total,
                    });
                }
                Outbound::SaveProfiles => {
                    let file = moirai_model::profiles::ProfileStore {
                        path: opts.store_path.clone(),
                        table: fleet.store().clone(),
                    };
                    if let Err(e) = file.save() {
                        warn!(error = %e, "profile store not saved");
                    }
                    profiles_changed = true;
                }
                Outbound::Resend { name } => {
                    if let Some(a) = current.as_ref().and_then(|p| p.assignments.get(&name)) {
                        publish(&client, topics.agent(&name, TopicKind::Assign), a, false);
                    }
                }
                Outbound::Replan { reasons } => {
                    let Some(mut r) = replanner.take() else {
                        // One is running: run again after it, for all reasons.
                        queued.get_or_insert_with(Vec::new).extend(reasons);
                        continue;
                    };
                    let devices = plan_devices(&fleet);
                    let store = fleet.store().clone();
                    let tx = done_tx.clone();
                    let _ = events.send(ServeEvent::Replanning {
                        reasons: reasons.clone(),
                    });
                    tokio::task::spawn_blocking(move || {
                        let result = r
                            .replan(devices, &store, reasons)
                            .map(|p| Arc::new(p.clone()));
                        let _ = tx.send((r, result));
                    });
                }
            }
        }
    }
    publish(
        &client,
        topics.orch_state(),
        &OrchState {
            online: false,
            session,
        },
        true,
    );
    let _ = client.try_disconnect();
    // Let the event loop flush the offline state and the disconnect.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// How long `serve` waits for its inference session to subscribe before it announces itself.
const SESSION_CONNECT: Duration = Duration::from_secs(10);

/// Starts the inference session and its HTTP endpoint, and waits until it subscribed; its
/// events become [`ServeEvent`]s.
async fn start_inference(
    inf: ServeInference,
    broker: &BrokerAddr,
    topics: &Topics,
    security: &moirai_link::tls::ClientSecurity,
    measured: tokio::sync::watch::Receiver<Measured>,
    events: &mpsc::UnboundedSender<ServeEvent>,
) {
    match crate::infer::http::serve_session(
        broker.clone(),
        topics.prefix().to_string(),
        security.clone(),
        measured,
        inf.model,
        inf.listen,
        inf.min_agents,
    )
    .await
    {
        Ok(served) => {
            let _ = events.send(ServeEvent::InferenceListening {
                addr: served.addr,
                handle: served.handle,
            });
            let mut rx = served.events;
            // Until it subscribed (or a broker that never answers: then go on regardless).
            let _ = tokio::time::timeout(SESSION_CONNECT, async {
                while let Some(e) = rx.recv().await {
                    let connected = matches!(e, InferEvent::Connected);
                    let _ = events.send(ServeEvent::Inference(e));
                    if connected {
                        break;
                    }
                }
            })
            .await;
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if events.send(ServeEvent::Inference(e)).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => {
            warn!(error = %e, "inference not served");
            let _ = events.send(ServeEvent::InferenceFailed(e.to_string()));
        }
    }
}

/// Hands the session what the fleet measured, when it changed: the links at every tick,
/// the profile store when it was saved.
fn update_measured(
    fleet: &Fleet,
    tx: &tokio::sync::watch::Sender<Measured>,
    profiles_changed: bool,
) {
    let links: BTreeMap<String, moirai_core::wire::life::LinkStats> = fleet
        .registry()
        .online()
        .filter_map(|(n, r)| Some((n.to_string(), r.link?)))
        .collect();
    tx.send_if_modified(|m| {
        let mut changed = false;
        if m.links != links {
            m.links = links;
            changed = true;
        }
        if profiles_changed {
            m.profiles = Arc::new(fleet.store().clone());
            changed = true;
        }
        changed
    });
}

/// Online agents and their sessions.
fn online_sessions(fleet: &Fleet) -> BTreeMap<String, u64> {
    fleet
        .registry()
        .online()
        .map(|(n, r)| (n.to_string(), r.session.bd_seq))
        .collect()
}

/// Sends joined/restarted/left events for what changed since `before`; true if anything did.
fn membership_events(
    fleet: &Fleet,
    before: &BTreeMap<String, u64>,
    events: &mpsc::UnboundedSender<ServeEvent>,
) -> bool {
    let mut changed = false;
    for (name, r) in fleet.registry().all() {
        let was = before.get(name);
        if r.is_online() && was != Some(&r.session.bd_seq) {
            changed = true;
            let _ = events.send(match was {
                None => ServeEvent::Joined {
                    name: name.to_string(),
                    board: r.birth.board.to_string(),
                    bd_seq: r.session.bd_seq,
                    emulation_scale: r.birth.emulation_scale,
                },
                Some(&previous) => ServeEvent::Restarted {
                    name: name.to_string(),
                    bd_seq: r.session.bd_seq,
                    previous,
                },
            });
        }
        if let (false, Some(_), Liveness::Dead(cause)) = (r.is_online(), was, r.session.liveness) {
            changed = true;
            let _ = events.send(ServeEvent::Left {
                name: name.to_string(),
                why: cause.to_string(),
            });
        }
    }
    changed
}

/// The online agents as the planner sees them.
pub fn plan_devices(fleet: &Fleet) -> Vec<OnlineAgent> {
    fleet
        .registry()
        .online()
        .map(|(_, r)| OnlineAgent::from_birth(&r.birth, r.link))
        .collect()
}

/// Loads an ONNX model and coarsens it with the wgpu rule set (the kernels agents profile
/// and run), as the fleet plans it.
pub fn load_model(path: &std::path::Path) -> Result<PlanModel, ServeError> {
    let (_, coarse) = moirai_model::coarsen::coarsen_file(
        path,
        moirai_core::device::Backend::Wgpu,
        &moirai_model::import::onnx::ImportOptions::default(),
    )
    .map_err(|source| ServeError::Model {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    Ok(coarse.plan_model())
}
