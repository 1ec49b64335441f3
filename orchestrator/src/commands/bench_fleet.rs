//! `moirai bench-fleet`: how long from a new agent's birth to the new plan being published.
//!
//! Runs the orchestrator in-process on its embedded broker with simulated agents: real MQTT
//! clients that announce themselves, send heartbeats and answer profile requests at once with
//! roofline-like figures (the benchmark measures the control plane, not kernels). Once the
//! initial fleet has its plan, agents of an already profiled class join one at a time; each
//! join is timed from the birth being published to (a) the orchestrator publishing the new
//! plan and (b) the new agent receiving its assignment. Each joined agent then leaves again
//! (the replan that follows is waited for, not timed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use moirai_core::wire::assign::Assignment;
use moirai_core::wire::life::{Birth, Heartbeat, OrchState};
use moirai_core::wire::profile::{ProfileEntry, ProfileReport, ProfileRequest};
use moirai_core::wire::topic::Topics;
use moirai_core::wire::{decode, encode, truncated, Topic, TopicKind, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use thiserror::Error;
use tokio::sync::mpsc;

use super::serve::FleetArgs;
use moirai_orchestrator::serve::{self, ServeError, ServeEvent};

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}

/// `moirai bench-fleet` options.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "models/demo-cnn.onnx")]
    pub model: std::path::PathBuf,
    /// Simulated agents in the initial fleet.
    #[arg(long, default_value_t = 200)]
    pub agents: usize,
    /// Joins to time.
    #[arg(long, default_value_t = 5)]
    pub joins: usize,
    /// Board classes the agents cycle through.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raspberry-pi-4,raspberry-pi-5,jetson-nano,jetson-orin-nano,x86-cpu"
    )]
    pub boards: Vec<String>,
    /// Heartbeat period of the simulated agents (ms).
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
}

/// (peak GFLOP/s, GB/s, usable MiB) of a few board classes, for simulated births.
fn peaks(board: &str) -> (f32, f32, u64) {
    match board {
        "raspberry-pi-4" => (48.0, 12.8, 3328),
        "raspberry-pi-5" => (153.6, 17.1, 7168),
        "jetson-nano" => (235.9, 25.6, 2816),
        "jetson-orin-nano" => (1280.0, 68.0, 6144),
        "x86-rtx3060" => (12740.0, 360.0, 11264),
        _ => (972.8, 51.2, 28672),
    }
}

#[derive(Debug)]
enum SimEvent {
    /// The agent published its birth at this instant.
    Born { name: String, at: Instant },
    Assigned {
        name: String,
        epoch: u64,
        at: Instant,
    },
}

/// One simulated agent until `stop` fires.
async fn sim_agent(
    port: u16,
    topics: Topics,
    name: String,
    board: String,
    heartbeat: Duration,
    events: mpsc::UnboundedSender<SimEvent>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    // One session per simulated agent.
    let bd_seq = 1;
    let broker = moirai_core::wire::BrokerAddr {
        host: "127.0.0.1".into(),
        port,
    };
    let mut o = moirai_link::mqtt::options(name.clone(), &broker);
    // Hundreds of simulated agents share two cores: a long keep-alive spares the broker.
    o.set_keep_alive(Duration::from_secs(30));
    o.set_last_will(rumqttc::LastWill::new(
        topics.agent(&name, TopicKind::Death),
        encode(&moirai_core::wire::life::Death { bd_seq }).unwrap_or_default(),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut el) = AsyncClient::new(o, 256);
    let (gflops, gbps, mb) = peaks(&board);
    let birth = Birth {
        name: truncated(&name),
        board: truncated(&board),
        adapter: truncated("simulated"),
        backend: truncated("sim"),
        memory_bytes: mb << 20,
        peak_gflops: gflops,
        mem_gbps: gbps,
        emulation_scale: None,
        agent_version: truncated(env!("CARGO_PKG_VERSION")),
        protocol: PROTOCOL_VERSION,
        bd_seq,
    };
    let mut tick = tokio::time::interval(heartbeat);
    let mut seq = 0;
    let mut announced = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => if announced {
                let hb = Heartbeat { bd_seq, seq, busy: false, link: None };
                seq += 1;
                if let Ok(b) = encode(&hb) {
                    let _ = client.try_publish(topics.agent(&name, TopicKind::Heartbeat), QoS::AtMostOnce, false, b);
                }
            },
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(topics.orch_state(), QoS::AtLeastOnce);
                    let _ = client.try_subscribe(topics.agent(&name, TopicKind::ProfileRequest), QoS::AtLeastOnce);
                    let _ = client.try_subscribe(topics.agent(&name, TopicKind::Assign), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => match topics.parse(&p.topic) {
                    Ok(Topic::OrchState) if !announced && decode::<OrchState>(&p.payload).is_ok_and(|s| s.online) => {
                        announced = true;
                        if let Ok(b) = encode(&birth) {
                            let _ = client.try_publish(topics.agent(&name, TopicKind::Birth), QoS::AtLeastOnce, false, b);
                            let _ = events.send(SimEvent::Born { name: name.clone(), at: Instant::now() });
                        }
                    }
                    Ok(Topic::Agent { kind: TopicKind::ProfileRequest, .. }) => {
                        if let Ok(req) = decode::<ProfileRequest>(&p.payload) {
                            let entries: Vec<ProfileEntry> = req.signatures.iter().map(|s| ProfileEntry {
                                key: s.key(),
                                time_ms: (s.flops as f64 / (f64::from(gflops) * 1e6)).max(s.bytes as f64 / (f64::from(gbps) * 1e6)) * 1.5,
                                runs: 1,
                            }).collect();
                            let n = entries.len() as u32;
                            let report = ProfileReport { request_id: req.request_id, bd_seq, done: n, total: n, entries, failures: vec![], emulation_scale: None };
                            if let Ok(b) = encode(&report) {
                                let _ = client.try_publish(topics.agent(&name, TopicKind::ProfileReport), QoS::AtLeastOnce, false, b);
                            }
                        }
                    }
                    Ok(Topic::Agent { kind: TopicKind::Assign, .. }) => {
                        if let Ok(a) = decode::<Assignment>(&p.payload) {
                            let _ = events.send(SimEvent::Assigned { name: name.clone(), epoch: a.epoch, at: Instant::now() });
                        }
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    }
    if let Ok(b) = encode(&moirai_core::wire::life::Death { bd_seq }) {
        let _ = client.try_publish(
            topics.agent(&name, TopicKind::Death),
            QoS::AtLeastOnce,
            false,
            b,
        );
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

fn stats(xs: &[f64]) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    format!(
        "median {:.1} ms (min {:.1}, max {:.1}, n={})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        v.len()
    )
}

/// Runs the benchmark; prints the figures.
pub fn run(args: BenchArgs, fleet: FleetArgs) -> Result<(), BenchError> {
    let model = serve::load_model(&args.model)?;
    let mut fleet = fleet;
    let dir = std::env::temp_dir().join(format!("moirai-bench-fleet-{}", std::process::id()));
    fleet.store = dir.join("profiles.json");
    let _ = std::fs::remove_file(&fleet.store);
    let mut opts = fleet.options(
        model,
        None,
        "127.0.0.1:0".parse().expect("address"),
        moirai_orchestrator::replan::moirai_placer(),
    );
    opts.max_connections = args.agents + args.joins + 64;
    let topics = Topics::new(&fleet.prefix).map_err(ServeError::from)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve::run(opts, tx, async {
            let _ = stop_rx.await;
        }));
        let (sim_tx, mut sim_rx) = mpsc::unbounded_channel();
        let mut stops = BTreeMap::new();
        let port;
        let wait = |what: &str| BenchError::Timeout(what.to_string());
        // The broker address.
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(ServeEvent::Connected { broker, .. })) => {
                    port = broker.port;
                    break;
                }
                Ok(Some(_)) => {}
                _ => return Err(wait("the orchestrator connecting")),
            }
        }
        let t0 = Instant::now();
        let start_agent = |i: usize, name: String, stops: &mut BTreeMap<String, tokio::sync::oneshot::Sender<()>>| {
            let board = args.boards[i % args.boards.len().max(1)].clone();
            let (s_tx, s_rx) = tokio::sync::oneshot::channel();
            stops.insert(name.clone(), s_tx);
            tokio::spawn(sim_agent(port, topics.clone(), name, board, heartbeat, sim_tx.clone(), s_rx));
        };
        for i in 0..args.agents {
            start_agent(i, format!("sim-{i:04}"), &mut stops);
        }
        let mut epoch;
        // Wait for the plan on the whole initial fleet.
        loop {
            match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
                Ok(Some(ServeEvent::Planned { plan, .. })) if plan.agents.len() == args.agents => {
                    epoch = plan.epoch;
                    println!(
                        "initial fleet: {} simulated agents, plan epoch {} after {:.2} s (solve {:.1} ms, makespan {:.3} ms)",
                        args.agents, plan.epoch, t0.elapsed().as_secs_f64(), plan.solve.as_secs_f64() * 1e3, plan.schedule.makespan_ms
                    );
                    break;
                }
                Ok(Some(_)) => {}
                _ => return Err(wait("the initial plan")),
            }
        }
        while sim_rx.try_recv().is_ok() {}
        let mut published = Vec::new();
        let mut received = Vec::new();
        let mut solve = Vec::new();
        for j in 0..args.joins {
            let name = format!("join-{j:02}");
            // A class already profiled: no profiling in the measured path.
            start_agent(j, name.clone(), &mut stops);
            let mut born: Option<Instant> = None;
            let mut got: Option<Instant> = None;
            let mut plan_at: Option<Instant> = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while got.is_none() || plan_at.is_none() {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ServeEvent::Planned { plan, .. }) if plan.agents.contains(&name) => {
                            plan_at = Some(Instant::now());
                            epoch = plan.epoch;
                            solve.push(plan.solve.as_secs_f64() * 1e3);
                        }
                        Some(_) => {}
                        None => return Err(wait("events")),
                    },
                    ev = sim_rx.recv() => match ev {
                        Some(SimEvent::Born { name: n, at }) if n == name => born = Some(at),
                        Some(SimEvent::Assigned { name: n, epoch: e, at }) if n == name && e >= epoch => got = Some(at),
                        _ => {}
                    },
                    _ = tokio::time::sleep_until(deadline) => return Err(wait("a join's plan")),
                }
            }
            let b = born.ok_or_else(|| wait("a birth"))?;
            if let (Some(p), Some(g)) = (plan_at, got) {
                published.push(p.saturating_duration_since(b).as_secs_f64() * 1e3);
                received.push(g.saturating_duration_since(b).as_secs_f64() * 1e3);
            }
            // It leaves again; wait for that replan before the next join.
            if let Some(s) = stops.remove(&name) {
                let _ = s.send(());
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Some(ServeEvent::Planned { plan, .. })) if !plan.agents.contains(&name) => {
                        epoch = plan.epoch;
                        break;
                    }
                    Ok(Some(_)) => {}
                    _ => return Err(wait("the replan after a leave")),
                }
            }
        }
        println!(
            "join of agent {} (debounce {} ms, max {} ms, placer time limit {} ms):",
            args.agents + 1, fleet.debounce_ms, fleet.max_debounce_ms, fleet.time_limit_ms
        );
        println!("  birth -> new plan published:            {}", stats(&published));
        println!("  birth -> assignment at the new agent:   {}", stats(&received));
        println!("  of which solving:                        {}", stats(&solve));
        for (_, s) in stops {
            let _ = s.send(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop_tx.send(());
        let _ = server.await;
        Ok(())
    })
}
