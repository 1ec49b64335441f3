//! `moirai-agent infer-worker`: its options; the worker itself is the library's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moirai_agent::exec::worker::{
    self, DirectOptions, ExecutorChoice, ShareBackend, WorkerError, WorkerOptions,
};
use moirai_agent::gpu::AdapterChoice;
use moirai_core::wire::BrokerAddr;

/// `moirai-agent infer-worker` options.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    /// The orchestrator's broker: mqtt://host:port.
    #[arg(long)]
    pub broker: String,
    /// Agent name (letters, digits, - _ .).
    #[arg(long)]
    pub name: String,
    /// Board file of the class this agent stands for (its memory bounds what it accepts).
    #[arg(long)]
    pub config: PathBuf,
    /// A local copy of a model file (repeatable): its weights are used when its SHA-256
    /// matches the assignment's; without one the orchestrator streams them.
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// Memory for the share in MiB instead of the board's usable memory.
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Executor of the shares: wgpu (fused WGSL kernels; tract when no adapter exists) or
    /// cpu (tract).
    #[arg(long, default_value = "wgpu")]
    pub backend: ShareBackend,
    /// Pick the adapter whose name contains this text (else MOIRAI_ADAPTER, else: discrete >
    /// integrated > CPU).
    #[arg(long)]
    pub adapter: Option<String>,
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
    /// Also take activations from peers over TCP here (e.g. 0.0.0.0:7070; port 0 picks one),
    /// and send to peers that do the same directly; MQTT stays the fallback. No TLS.
    #[arg(long)]
    pub direct_listen: Option<std::net::SocketAddr>,
    /// The host:port peers dial for the direct path (default: the listen address).
    #[arg(long, requires = "direct_listen")]
    pub direct_advertise: Option<String>,
    #[arg(long, default_value = moirai_core::wire::topic::DEFAULT_PREFIX)]
    pub prefix: String,
}

impl WorkerArgs {
    /// Options from the arguments and the board file.
    pub fn options(&self) -> Result<WorkerOptions, moirai_agent::config::ConfigError> {
        let board = moirai_agent::config::load_board(&self.config)?;
        Ok(WorkerOptions {
            broker: BrokerAddr::parse(&self.broker).map_err(|source| {
                moirai_agent::config::ConfigError::Broker {
                    url: self.broker.clone(),
                    source,
                }
            })?,
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            board: board.name.clone(),
            memory_bytes: self
                .memory_mb
                .map(|m| m << 20)
                .unwrap_or_else(|| board.usable_memory_bytes()),
            peak_gflops: board.compute.f32_gflops as f32,
            mem_gbps: board.memory.bandwidth_gbps as f32,
            models: self.model.clone(),
            slowdown: Duration::ZERO,
            executor: match self.backend {
                ShareBackend::Cpu => ExecutorChoice::Tract,
                ShareBackend::Wgpu => ExecutorChoice::Wgpu {
                    adapter: match &self.adapter {
                        Some(a) => AdapterChoice::NameContains(a.clone()),
                        None => AdapterChoice::from_env(),
                    },
                    verify: !self.no_verify_kernels,
                },
            },
            direct: self.direct_listen.map(|listen| DirectOptions {
                listen,
                advertise: self.direct_advertise.clone(),
            }),
            direct_stats: Arc::default(),
            profiles: self.profiles.clone(),
            run_deadline: self.run_deadline_ms.map(Duration::from_millis),
            fault: None,
        })
    }
}

/// Runs the worker until SIGINT/SIGTERM.
pub fn run(args: WorkerArgs) -> Result<(), WorkerError> {
    let opts = args.options()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?;
    rt.block_on(worker::run(opts, moirai_link::shutdown::signalled()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_backend_chooses_the_executor() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            w: WorkerArgs,
        }
        let config = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../firmware-configs/raspberry-pi-5.toml"
        );
        let base = [
            "x",
            "--broker",
            "mqtt://127.0.0.1:1883",
            "--name",
            "a",
            "--config",
            config,
        ];
        let parse = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            Cli::try_parse_from(args)
                .expect("parses")
                .w
                .options()
                .expect("options")
                .executor
        };
        assert!(matches!(
            parse(&[]),
            ExecutorChoice::Wgpu { verify: true, .. }
        ));
        assert!(matches!(
            parse(&["--no-verify-kernels"]),
            ExecutorChoice::Wgpu { verify: false, .. }
        ));
        assert!(matches!(
            parse(&["--backend", "cpu"]),
            ExecutorChoice::Tract
        ));
        assert!(matches!(
            parse(&["--adapter", "llvm"]),
            ExecutorChoice::Wgpu { adapter: AdapterChoice::NameContains(a), .. } if a == "llvm"
        ));
    }
}
