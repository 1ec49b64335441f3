//! `moirai serve` and `moirai fleet`: their options, and one printed line per event.
//!
//! The integration tests build this file into their own test binary (`tests/bin/`), so it
//! names the library only by its crate name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moirai_core::cost::plan::PlanModel;
use moirai_core::wire::topic::Topics;
use moirai_core::wire::BrokerAddr;
use moirai_orchestrator::bus;
use moirai_orchestrator::fleet::{view, FleetConfig};
use moirai_orchestrator::infer::session::InferEvent;
use moirai_orchestrator::replan::{moirai_placer, CurrentPlan, PlaceFn};
use moirai_orchestrator::security::{ClientLogin, ServeSecurity};
use moirai_orchestrator::serve::{self, ServeError, ServeEvent, ServeOptions};
use tokio::sync::mpsc;

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
    pub security: ServeSecurityArgs,
    /// Also serve distributed inference on the fleet's agents: HTTP `POST /v1/infer` and
    /// `GET /v1/metrics` on this address. Shares are planned on the kernel times and link
    /// rates the fleet measured, and travel under the fleet's TLS and logins.
    #[arg(long)]
    pub infer_listen: Option<SocketAddr>,
}

/// Fleet timing and storage options shared by `serve` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct FleetArgs {
    /// Topic prefix.
    #[arg(long, default_value = moirai_core::wire::topic::DEFAULT_PREFIX)]
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
        model: PlanModel,
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
            inference: None,
        }
    }
}

/// The embedded broker's TLS and credentials, and the orchestrator's own client (needed for
/// an external broker).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServeSecurityArgs {
    /// Embedded broker: serve MQTT over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Embedded broker: admit only the devices in this file (`name:password` per line); a
    /// device must use its name as client id and username.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// External broker (--broker): the orchestrator's own TLS trust and login.
    #[command(flatten)]
    pub client: ClientLoginArgs,
}

impl From<ServeSecurityArgs> for ServeSecurity {
    fn from(a: ServeSecurityArgs) -> Self {
        ServeSecurity {
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            credentials: a.credentials,
            client: a.client.into(),
        }
    }
}

/// An MQTT client's TLS trust and login (`moirai serve --broker`, `moirai rollout`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientLoginArgs {
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// MQTT username.
    #[arg(long)]
    pub username: Option<String>,
    /// File whose first line is the MQTT password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

impl From<ClientLoginArgs> for ClientLogin {
    fn from(a: ClientLoginArgs) -> Self {
        ClientLogin {
            ca_file: a.ca_file,
            username: a.username,
            password_file: a.password_file,
        }
    }
}

/// One line per event of the inference session `moirai serve --infer-listen` runs.
fn describe_inference(ev: &InferEvent) -> Option<String> {
    Some(match ev {
        InferEvent::Planned { summary, .. } => format!("inference plan {summary}"),
        InferEvent::Ready { epoch } => format!("inference epoch {epoch} in force"),
        InferEvent::Refused { agent, reason } => {
            format!("inference share refused by {agent}: {reason}")
        }
        InferEvent::Rerun { ids, agent } => {
            format!("{agent} died: {} inference request(s) run again", ids.len())
        }
        InferEvent::StreamingWeights { agent, bytes } => {
            format!("streaming {bytes} bytes of weights to {agent}")
        }
        _ => return None,
    })
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
                plan.coverage.profiled,
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
        ServeEvent::InferenceListening { addr, .. } => {
            format!("inference: POST /v1/infer and GET /v1/metrics on http://{addr}")
        }
        ServeEvent::InferenceFailed(e) => format!("inference not served: {e}"),
        ServeEvent::Inference(e) => return describe_inference(e),
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
        plan.coverage.profiled,
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

/// `moirai serve`: runs until SIGINT/SIGTERM, printing one line per event on stdout and
/// each new plan as a table.
pub fn serve(args: ServeArgs) -> Result<(), ServeError> {
    // With inference, the model is imported and coarsened once: the loaded model's plan
    // model is what the fleet plans, and its groups are what the agents run.
    let loaded = match args.infer_listen {
        Some(_) => Some(Arc::new(moirai_model::loaded::LoadedModel::load(
            &args.model,
        )?)),
        None => None,
    };
    let model = match &loaded {
        Some(l) => l.plan.clone(),
        None => serve::load_model(&args.model)?,
    };
    println!(
        "model {}: {} kernels ({} distinct), {} tensors between them",
        model.name,
        model.ops.len(),
        model.signatures().len(),
        model.edges.len()
    );
    let mut opts = args
        .fleet
        .options(model, args.broker.clone(), args.listen, moirai_placer());
    opts.security = args.security.clone().into();
    opts.inference = args
        .infer_listen
        .zip(loaded)
        .map(|(listen, model)| serve::ServeInference {
            listen,
            model,
            min_agents: 1,
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            use std::io::Write;
            while let Some(ev) = rx.recv().await {
                if let Some(line) = describe(&ev) {
                    println!("{line}");
                }
                if let ServeEvent::Planned { plan, .. } = &ev {
                    print!("{}", plan_table(plan));
                }
                let _ = std::io::stdout().flush();
            }
        });
        let r = serve::run(opts, tx, moirai_link::shutdown::signalled()).await;
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
    #[arg(long, default_value = moirai_core::wire::topic::DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long to wait for the orchestrator's retained registry (ms).
    #[arg(long, default_value_t = 3000)]
    pub wait_ms: u64,
}

/// `moirai fleet`: prints the orchestrator's registry as a table and, where an inference
/// session serves, its measured latency next to the plan's prediction. `Ok(false)`: no
/// orchestrator has published either on that broker and prefix.
pub fn fleet(args: FleetViewArgs) -> Result<bool, ServeError> {
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
        print!("{}", view::table(s, moirai_link::clock::now_ms()));
    }
    if let Some(s) = &v.serving {
        print!("{}", view::serving(s, moirai_link::clock::now_ms()));
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
