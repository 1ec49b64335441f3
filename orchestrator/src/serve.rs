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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moirai_shared::wire::life::OrchState;
use moirai_shared::wire::topic::Topics;
use moirai_shared::wire::{encode, BrokerAddr, TopicKind, WireError, WireMessage};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::{self, BrokerError};
use crate::bus;
use crate::fleet::life::Liveness;
use crate::fleet::model::{FleetModel, PlanDevice};
use crate::fleet::store::ProfileStore;
use crate::fleet::{view, Fleet, FleetConfig, Outbound};
use crate::replan::{CurrentPlan, PlaceFn, ReplanError, Replanner};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("model {path}: {source}")]
    Model {
        path: PathBuf,
        source: Box<crate::import::onnx::ImportError>,
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
    Store(#[from] crate::fleet::store::StoreError),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("inference: {0}")]
    Infer(String),
}

/// Everything `serve` needs.
pub struct ServeOptions {
    pub model: FleetModel,
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
    pub security: crate::security::ServeSecurityArgs,
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
}

/// The fleet snapshot is republished at least this often (for its "last seen" column).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
    opts: ServeOptions,
    events: mpsc::UnboundedSender<ServeEvent>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let topics = Topics::new(&opts.prefix)?;
    let (addr, embedded, security) = match &opts.broker {
        Some(url) => {
            let (_, url) = crate::security::split_tls_scheme(url);
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
    let store = ProfileStore::load(&opts.store_path)?;
    let session = now_ms();
    let client_id = format!("moirai-orchestrator-{}", std::process::id());
    let mut mqtt = bus::options(&addr, &client_id, &topics, session);
    security.apply(&mut mqtt);
    let (client, mut eventloop) = bus::connect(mqtt);
    let signatures = opts.model.signatures();
    info!(broker = %addr, embedded, kernels = signatures.len(), "orchestrator starting");
    let mut fleet = Fleet::new(opts.fleet.clone(), store, signatures);
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
                        now_ms(),
                        current.as_ref().map(|p| (p.epoch, p.schedule.makespan_ms, p.graph.name.as_str())),
                        |n| current.as_ref().and_then(|p| p.assignments.get(n)).map_or(0, |a| a.ops.len() as u32),
                    );
                    publish(&client, topics.orch_fleet(), &snap, true);
                    snapshot_at = now;
                    snapshot_dirty = false;
                }
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
                    if let Err(e) = fleet.store().save(&opts.store_path) {
                        warn!(error = %e, "profile store not saved");
                    }
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
pub fn plan_devices(fleet: &Fleet) -> Vec<PlanDevice> {
    fleet
        .registry()
        .online()
        .map(|(name, r)| PlanDevice {
            name: name.to_string(),
            board: r.birth.board.to_string(),
            memory_bytes: r.birth.memory_bytes,
            peak_gflops: r.birth.peak_gflops as f64,
            mem_gbps: r.birth.mem_gbps as f64,
            link: r.link,
        })
        .collect()
}

/// `moirai serve` options.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// ONNX model to place on the fleet.
    #[arg(long)]
    pub model: PathBuf,
    /// External broker (mqtt://host:port, e.g. mosquitto); default: start the embedded one.
    #[arg(long)]
    pub broker: Option<String>,
    /// Where the embedded broker listens.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub security: crate::security::ServeSecurityArgs,
    /// Also serve distributed inference on agents started with `--infer`: HTTP
    /// `POST /v1/infer` and `GET /v1/metrics` on this address (plain MQTT only).
    #[arg(long)]
    pub infer_listen: Option<SocketAddr>,
}

/// Fleet timing and storage options shared by `serve` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct FleetArgs {
    /// Topic prefix.
    #[arg(long, default_value = moirai_shared::wire::topic::DEFAULT_PREFIX)]
    pub prefix: String,
    /// An agent silent this long (ms) is declared dead, Last Will or not.
    #[arg(long, default_value_t = 6000)]
    pub heartbeat_timeout_ms: u64,
    /// Replan once membership has been quiet this long (ms)...
    #[arg(long, default_value_t = 500)]
    pub debounce_ms: u64,
    /// ...but at most this long after the first change (ms).
    #[arg(long, default_value_t = 5000)]
    pub max_debounce_ms: u64,
    /// Profiling slower than this (ms) is abandoned; the roofline stands in.
    #[arg(long, default_value_t = 90_000)]
    pub profile_timeout_ms: u64,
    /// Timed runs per kernel when profiling.
    #[arg(long, default_value_t = 5)]
    pub profile_runs: u32,
    /// Profile store file (measured times by board class and kernel).
    #[arg(long, default_value = "moirai-profiles.json")]
    pub store: PathBuf,
    /// Placer time limit per replan (ms).
    #[arg(long, default_value_t = 2000)]
    pub time_limit_ms: u64,
}

impl FleetArgs {
    pub fn fleet_config(&self) -> FleetConfig {
        FleetConfig {
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            debounce: Duration::from_millis(self.debounce_ms),
            max_debounce: Duration::from_millis(self.max_debounce_ms.max(self.debounce_ms)),
            profile_timeout: Duration::from_millis(self.profile_timeout_ms),
            profile_runs: self.profile_runs.max(1),
        }
    }

    /// Options for [`run`], given the model, broker and placer.
    pub fn options(
        &self,
        model: FleetModel,
        broker: Option<String>,
        listen: SocketAddr,
        place: PlaceFn,
    ) -> ServeOptions {
        ServeOptions {
            model,
            broker,
            listen,
            prefix: self.prefix.clone(),
            fleet: self.fleet_config(),
            store_path: self.store.clone(),
            time_limit: Duration::from_millis(self.time_limit_ms),
            tick: Duration::from_millis((self.heartbeat_timeout_ms / 10).clamp(5, 100)),
            max_connections: 1024,
            place,
            security: Default::default(),
        }
    }
}

/// One line per event, for `moirai serve` (stdout: what a user follows; logs go to stderr).
pub fn describe(ev: &ServeEvent) -> Option<String> {
    Some(match ev {
        ServeEvent::Connected { broker, embedded } => format!(
            "connected to {} broker {broker}",
            if *embedded { "embedded" } else { "external" }
        ),
        ServeEvent::Joined {
            name,
            board,
            bd_seq,
            emulation_scale,
        } => match emulation_scale {
            Some(s) => format!("joined {name} ({board}, emulated: times x{s:.2}) bd_seq={bd_seq}"),
            None => format!("joined {name} ({board}) bd_seq={bd_seq}"),
        },
        ServeEvent::Restarted {
            name,
            bd_seq,
            previous,
        } => format!("restarted {name} bd_seq={bd_seq} (was {previous})"),
        ServeEvent::Left { name, why } => format!("left {name} ({why})"),
        ServeEvent::ProfileProgress {
            board,
            agent,
            done,
            total,
        } => {
            if done < total && *done != 0 {
                return None;
            }
            format!("profiling {board} on {agent}: {done}/{total} kernels")
        }
        ServeEvent::Replanning { reasons } => format!("replanning: {}", reasons.join("; ")),
        ServeEvent::Planned { plan, previous } => {
            let mut s = format!(
                "plan epoch={} agents={} makespan_ms={:.3} measured={} roofline={} solve_ms={:.1}",
                plan.epoch,
                plan.agents.join(","),
                plan.schedule.makespan_ms,
                plan.coverage.measured,
                plan.coverage.roofline,
                plan.solve.as_secs_f64() * 1e3
            );
            if let Some(p) = previous {
                s.push_str(&format!(
                    " replaces={} (makespan_ms={:.3})",
                    p.epoch, p.schedule.makespan_ms
                ));
            }
            s.push_str(&format!(" why={:?}", plan.reasons));
            s
        }
        ServeEvent::PlanFailed(e) => format!("plan failed: {e}"),
        ServeEvent::Refused { name, reason } => format!("refused {name}: {reason}"),
        ServeEvent::Dropped { total } => format!("dropped {total} undecodable payloads so far"),
    })
}

/// A per-agent table of a plan.
pub fn plan_table(plan: &CurrentPlan) -> String {
    let mut out = format!(
        "plan epoch {} for {}: makespan {:.3} ms on {} agents ({} op costs measured, {} roofline)\n",
        plan.epoch,
        plan.graph.name,
        plan.schedule.makespan_ms,
        plan.agents.len(),
        plan.coverage.measured,
        plan.coverage.roofline
    );
    let w = plan
        .agents
        .iter()
        .map(|a| a.len())
        .max()
        .unwrap_or(5)
        .max(5);
    out.push_str(&format!(
        "{:<w$}  {:>4}  {:>9}  {:>4}  {:>4}  ops\n",
        "agent", "ops", "busy ms", "recv", "send"
    ));
    for (name, a) in &plan.assignments {
        let busy: f64 = a.ops.iter().map(|o| o.end_ms - o.start_ms).sum::<f64>() + 0.0; // + 0.0: an empty sum is -0.0, printed "-0.000"
        let mut names: Vec<&str> = a.ops.iter().map(|o| o.name.as_str()).collect();
        if names.len() > 6 {
            let n = names.len();
            names.truncate(5);
            names.push("…");
            out.push_str(&format!(
                "{name:<w$}  {:>4}  {busy:>9.3}  {:>4}  {:>4}  {} ({n})\n",
                a.ops.len(),
                a.receive.len(),
                a.send.len(),
                names.join(", ")
            ));
        } else {
            out.push_str(&format!(
                "{name:<w$}  {:>4}  {busy:>9.3}  {:>4}  {:>4}  {}\n",
                a.ops.len(),
                a.receive.len(),
                a.send.len(),
                names.join(", ")
            ));
        }
    }
    out
}

/// Loads an ONNX model and coarsens it with the wgpu rule set (the kernels agents profile
/// and run), as the fleet plans it.
pub fn load_model(path: &std::path::Path) -> Result<FleetModel, ServeError> {
    let (_, coarse) = crate::coarsen::coarsen_file(
        path,
        moirai_shared::device::Backend::Wgpu,
        &crate::import::onnx::ImportOptions::default(),
    )
    .map_err(|source| ServeError::Model {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    Ok(FleetModel::from_coarse(&coarse))
}

/// The placer replans use: the Moirai placer, warm-started from the plan in force, through
/// the validating `place` entry point.
pub fn placer() -> PlaceFn {
    Box::new(|g, warm, limit| {
        // The bound is part of the replan's budget: a quarter of it at most.
        let t0 = std::time::Instant::now();
        let bound = crate::place::lower_bound_within(g, limit / 4);
        let opts = crate::place::PlaceOptions {
            time_limit: limit.saturating_sub(t0.elapsed()).max(limit / 2),
            warm_start: warm.cloned(),
            ..Default::default()
        };
        crate::place::place(g, crate::place::Method::Moirai, &opts, &bound)
            .map(|p| p.schedule)
            .map_err(|e| e.to_string())
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signalled() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `moirai serve`: runs until SIGINT/SIGTERM, printing one line per event on stdout and
/// each new plan as a table.
pub fn run_blocking(args: ServeArgs) -> Result<(), ServeError> {
    let model = load_model(&args.model)?;
    println!(
        "model {}: {} kernels ({} distinct), {} tensors between them",
        model.name,
        model.ops.len(),
        model.signatures().len(),
        model.edges.len()
    );
    let mut opts = args
        .fleet
        .options(model, args.broker.clone(), args.listen, placer());
    opts.security = args.security.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let infer = match args.infer_listen {
        Some(addr) => Some((
            addr,
            Arc::new(
                crate::infer::model::InferModel::load(&args.model)
                    .map_err(|e| ServeError::Infer(e.to_string()))?,
            ),
            args.fleet.prefix.clone(),
        )),
        None => None,
    };
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            use std::io::Write;
            let mut infer = infer;
            while let Some(ev) = rx.recv().await {
                if let (ServeEvent::Connected { broker, .. }, Some((addr, model, prefix))) =
                    (&ev, infer.take())
                {
                    crate::infer::session::serve_http(broker.clone(), prefix, model, addr).await;
                }
                if let Some(line) = describe(&ev) {
                    println!("{line}");
                }
                if let ServeEvent::Planned { plan, .. } = &ev {
                    print!("{}", plan_table(plan));
                }
                let _ = std::io::stdout().flush();
            }
        });
        let r = run(opts, tx, signalled()).await;
        let _ = printer.await;
        r
    })
}

/// `moirai fleet` options.
#[derive(clap::Args, Clone, Debug)]
pub struct FleetViewArgs {
    /// The orchestrator's broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    #[arg(long, default_value = moirai_shared::wire::topic::DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long to wait for the orchestrator's retained registry (ms).
    #[arg(long, default_value_t = 3000)]
    pub wait_ms: u64,
}

/// `moirai fleet`: prints the orchestrator's registry as a table and, where an inference
/// session serves, its measured latency next to the plan's prediction. `Ok(false)`: no
/// orchestrator has published either on that broker and prefix.
pub fn show_fleet(args: FleetViewArgs) -> Result<bool, ServeError> {
    let addr = BrokerAddr::parse(&args.broker)?;
    let topics = Topics::new(&args.prefix)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let v = rt
        .block_on(bus::fetch_view(
            &addr,
            &topics,
            Duration::from_millis(args.wait_ms),
            true,
        ))
        .map_err(ServeError::Fetch)?;
    if let Some(s) = &v.snapshot {
        print!("{}", view::table(s, now_ms()));
    }
    if let Some(s) = &v.serving {
        print!("{}", view::serving(s, now_ms()));
    }
    if v.snapshot.is_none() && v.serving.is_none() {
        println!(
            "no fleet registry on {addr} under `{}` (is `moirai serve` running?)",
            args.prefix
        );
        return Ok(false);
    }
    Ok(true)
}
