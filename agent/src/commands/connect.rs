//! `moirai-agent --broker URL --config firmware-configs/BOARD.toml --name NAME`: the agent's
//! connected mode (the default when no subcommand is given), as a library function so test
//! harnesses run exactly what the binary runs.

use moirai_link::tls::ClientSecurity;
use std::path::PathBuf;
use std::time::Duration;

use moirai_core::wire::topic::DEFAULT_PREFIX;
use thiserror::Error;

use moirai_agent::config::{load_board, AgentConfig, ConfigError};
use moirai_agent::exec::worker::{DirectOptions, ExecutorChoice, WorkerOptions};
use moirai_agent::gpu::AdapterChoice;
use moirai_agent::link;
use moirai_agent::process::{self, AgentError, AgentParts};
use moirai_agent::rollout::{self, Install, RolloutSetup, TrialEnv};
use moirai_core::wire::rollout::{UpgradeState, UpgradeStatus};
use moirai_core::wire::truncated;

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("connect mode needs --broker URL --config firmware-configs/BOARD.toml --name NAME (or a subcommand; see --help)")]
    MissingArgs,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Security(#[from] moirai_link::tls::TlsError),
    #[error("broker {0} asks for TLS: give --ca-file (the CA that signed its certificate)")]
    TlsWithoutCa(String),
    #[error(transparent)]
    Rollout(#[from] rollout::RolloutError),
}

/// How a connected agent ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT or SIGTERM.
    Stopped,
    /// A rolled-out release is online in its own process and is now `current`.
    Switched { version: String, pid: u32 },
}

impl Ended {
    /// The process exit status: 0, or [`rollout::SWITCHED_EXIT`] so that systemd starts the
    /// new `current` (a plain exit 0 would not be restarted).
    pub fn exit_status(&self) -> u8 {
        match self {
            Ended::Stopped => 0,
            Ended::Switched { .. } => rollout::SWITCHED_EXIT,
        }
    }
}

impl ConnectError {
    /// The process exit status for this error: [`link::REFUSED_EXIT`] when the orchestrator
    /// refused the agent (systemd must not restart it), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            ConnectError::Agent(AgentError::Link(link::LinkError::Refused(_))) => {
                link::REFUSED_EXIT
            }
            _ => 1,
        }
    }
}

/// An MQTT client's TLS trust and login, as flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientSecurityArgs {
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// MQTT username (default: the agent's name).
    #[arg(long)]
    pub username: Option<String>,
    /// File whose first line is the MQTT password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Broker to connect to: mqtt://host:port.
    #[arg(long)]
    pub broker: Option<String>,
    /// Board file of the class this agent stands for (firmware-configs/BOARD.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Agent name: its MQTT client id and topic segment (letters, digits, - _ .).
    #[arg(long)]
    pub name: Option<String>,
    /// Topic prefix shared with the orchestrator.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Board file of the machine this agent really runs on: measured times are scaled by the
    /// ratio of peaks so the agent emulates the (slower) `--config` board.
    #[arg(long)]
    pub emulate_on: Option<PathBuf>,
    /// Heartbeat period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// MQTT keep-alive in seconds (the broker publishes the Last Will after 1.5x this).
    #[arg(long, default_value_t = 5)]
    pub keep_alive_s: u64,
    /// Profile and run shares on the CPU executor (tract) even when a GPU adapter exists.
    #[arg(long)]
    pub cpu: bool,
    /// Bytes of the link probe.
    #[arg(long, default_value_t = 256 << 10)]
    pub probe_bytes: usize,
    /// TLS (--ca-file) and login (--username, default the agent name; --password-file).
    #[command(flatten)]
    pub security: ClientSecurityArgs,
    /// A local copy of a model file (repeatable): its weights are used when its SHA-256
    /// matches the share's; without one the orchestrator streams them.
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// Memory for shares in MiB instead of the board's usable memory (announced in the birth).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Skip the check of every GPU kernel against tract before it serves (by default a
    /// kernel that differs runs on tract; the check costs load time).
    #[arg(long)]
    pub no_verify_kernels: bool,
    /// The board class's profile store (moirai-profiles/v1): kernel verdicts are read from
    /// and written to it, so each kernel signature is checked once per board class.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Milliseconds a request may run on the executor before it fails (default: 20x the
    /// plan's predicted makespan, at least 30 s).
    #[arg(long)]
    pub run_deadline_ms: Option<u64>,
    /// Also take activations from peers over TCP here (port 0 picks one) and send to peers
    /// that do the same directly; MQTT stays the fallback. No TLS.
    #[arg(long)]
    pub direct_listen: Option<std::net::SocketAddr>,
    /// The host:port peers dial for the direct path (default: the listen address).
    #[arg(long, requires = "direct_listen")]
    pub direct_advertise: Option<String>,
}

impl ConnectArgs {
    /// The share executor these arguments ask for, on `board` with `choice` of adapter.
    pub fn worker(&self, cfg: &AgentConfig, choice: &AdapterChoice) -> WorkerOptions {
        WorkerOptions {
            name: cfg.name.to_string(),
            prefix: self.prefix.clone(),
            board: cfg.board.name.clone(),
            memory_bytes: cfg.memory_bytes(),
            models: self.model.clone(),
            slowdown: Duration::ZERO,
            executor: if self.cpu {
                ExecutorChoice::Tract
            } else {
                ExecutorChoice::Wgpu {
                    adapter: choice.clone(),
                    verify: !self.no_verify_kernels,
                }
            },
            direct: self.direct_listen.map(|listen| DirectOptions {
                listen,
                advertise: self.direct_advertise.clone(),
            }),
            direct_stats: Default::default(),
            profiles: self.profiles.clone(),
            run_deadline: self.run_deadline_ms.map(Duration::from_millis),
            fault: None,
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM, or until a rolled-out release took over.
pub fn run(args: ConnectArgs, adapter: Option<String>) -> Result<Ended, ConnectError> {
    let (Some(broker), Some(config), Some(name)) = (&args.broker, &args.config, &args.name) else {
        return Err(ConnectError::MissingArgs);
    };
    let board = load_board(config)?;
    // `mqtts://host` means TLS on port 8883 unless a port is given; TLS needs --ca-file.
    let (tls_scheme, broker_url) = moirai_link::tls::split_tls_scheme(broker);
    let mut cfg = AgentConfig::new(name, board, &broker_url, &args.prefix)?;
    cfg.security = ClientSecurity::load(
        args.security.ca_file.as_deref(),
        args.security.username.as_deref(),
        args.security.password_file.as_deref(),
        Some(name),
    )?;
    if tls_scheme && !cfg.security.is_tls() {
        return Err(ConnectError::TlsWithoutCa(broker.clone()));
    }
    cfg.heartbeat = Duration::from_millis(args.heartbeat_ms.max(10));
    cfg.keep_alive = Duration::from_secs(args.keep_alive_s.max(1));
    cfg.probe_bytes = args.probe_bytes;
    cfg.memory_mb = args.memory_mb;
    if let Some(host) = &args.emulate_on {
        cfg = cfg.emulate_on(load_board(host)?)?;
    }
    let choice = match adapter {
        Some(a) => AdapterChoice::NameContains(a),
        None => AdapterChoice::from_env(),
    };
    let (info, timer) = link::timer::open(&choice, args.cpu);
    match cfg.scale() {
        Some(s) => println!(
            "agent {name}: board {} emulated on {} ({}, {}): measured times x{s:.2} (ratio of peaks)",
            cfg.board.name,
            cfg.host.as_ref().map_or("?", |h| h.name.as_str()),
            info.name,
            info.backend
        ),
        None => println!(
            "agent {name}: board {} on {} ({})",
            cfg.board.name, info.name, info.backend
        ),
    }
    cfg.rollout = RolloutSetup {
        install: Install::of_this_process(),
        exe_name: std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "moirai-agent".into()),
        trial: TrialEnv::from_env(),
        report: None,
    };
    // The trial process of a later rollout gets exactly these arguments.
    let own_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut first = Some((info, timer));
    loop {
        let (info, timer) = first
            .take()
            .unwrap_or_else(|| link::timer::open(&choice, args.cpu));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ConnectError::Runtime)?;
        let parts = AgentParts {
            worker: Some(args.worker(&cfg, &choice)),
            config: cfg.clone(),
            adapter: info,
            timer,
            events: None,
        };
        let staged = rt.block_on(process::run(parts, moirai_link::shutdown::signalled()))?;
        let Some(staged) = staged else {
            return Ok(Ended::Stopped);
        };
        let rollout_id = staged.offer.rollout;
        let version = staged.offer.version.to_string();
        let install = cfg
            .rollout
            .install
            .clone()
            .ok_or(rollout::RolloutError::NoInstall)?;
        println!("agent {name}: trying release {version}");
        match rollout::trial(&install, staged, &own_args) {
            rollout::TrialOutcome::Switched { pid } => {
                println!("agent {name}: release {version} is online (pid {pid}) and current; this process steps down");
                return Ok(Ended::Switched { version, pid });
            }
            rollout::TrialOutcome::RolledBack { reason } => {
                println!("agent {name}: release {version} rolled back: {reason}");
                tracing::warn!(%version, %reason, "rolled back");
                cfg.rollout.trial = None;
                cfg.rollout.report = Some(UpgradeStatus {
                    rollout: rollout_id,
                    state: UpgradeState::RolledBack {
                        reason: truncated(&reason),
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        c: ConnectArgs,
    }

    #[test]
    fn the_flags_choose_the_share_executor_and_the_memory_the_birth_announces() {
        let config = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../firmware-configs/raspberry-pi-5.toml"
        );
        let parse = |extra: &[&str]| {
            let base = ["x", "--broker", "mqtt://127.0.0.1:1883", "--name", "a"];
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let args = Cli::try_parse_from(args).expect("parses").c;
            let mut cfg = AgentConfig::new(
                "a",
                load_board(std::path::Path::new(config)).expect("board"),
                "mqtt://127.0.0.1:1883",
                DEFAULT_PREFIX,
            )
            .expect("config");
            cfg.memory_mb = args.memory_mb;
            (
                args.worker(&cfg, &AdapterChoice::from_env()),
                cfg.memory_bytes(),
            )
        };
        let (w, _) = parse(&[]);
        assert!(matches!(
            w.executor,
            ExecutorChoice::Wgpu { verify: true, .. }
        ));
        let (w, _) = parse(&["--no-verify-kernels"]);
        assert!(matches!(
            w.executor,
            ExecutorChoice::Wgpu { verify: false, .. }
        ));
        let (w, _) = parse(&["--cpu"]);
        assert!(matches!(w.executor, ExecutorChoice::Tract));
        let (w, announced) = parse(&["--memory-mb", "64"]);
        assert_eq!(w.memory_bytes, 64 << 20);
        assert_eq!(
            announced,
            64 << 20,
            "the birth announces what the worker accepts"
        );
    }
}
