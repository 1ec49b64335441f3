//! `moirai rollout`: its options; the rollout itself is the library's.

use std::path::PathBuf;

use moirai_orchestrator::rollout::{self, RolloutError, RolloutOptions};

use super::serve::ClientLoginArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct RolloutArgs {
    /// The orchestrator's broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    #[arg(long, default_value = moirai_core::wire::topic::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Release name the agents install the binary under (`releases/<VERSION>/`).
    #[arg(long)]
    pub to: String,
    /// The agent binary for the boards of this stage (e.g. from `cross/build.sh aarch64`).
    #[arg(long)]
    pub binary: PathBuf,
    /// Share of the online agents to switch, e.g. `10%` (at least one agent).
    #[arg(long, default_value = "100%")]
    pub stage: String,
    /// Exactly these agents (comma-separated) instead of a share of the registry.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// Seconds the new binary has to come online before its agent rolls it back.
    #[arg(long, default_value_t = 60)]
    pub online_within_s: u32,
    /// How long to wait for the registry (ms).
    #[arg(long, default_value_t = 5000)]
    pub wait_ms: u64,
    /// TLS and login (the orchestrator's credentials: agents accept offers from it only).
    #[command(flatten)]
    pub security: ClientLoginArgs,
}

impl From<RolloutArgs> for RolloutOptions {
    fn from(a: RolloutArgs) -> Self {
        RolloutOptions {
            broker: a.broker,
            prefix: a.prefix,
            to: a.to,
            binary: a.binary,
            stage: a.stage,
            agents: a.agents,
            online_within_s: a.online_within_s,
            wait_ms: a.wait_ms,
            security: a.security.into(),
        }
    }
}

/// Prints each step as it happens; `Ok(true)` when the whole stage switched.
pub fn run(args: RolloutArgs) -> Result<bool, RolloutError> {
    rollout::run(args.into(), &mut |line| println!("{line}"))
}
