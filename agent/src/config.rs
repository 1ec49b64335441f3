//! [`AgentConfig`]: who this agent is (name, board class from `firmware-configs/`), where its
//! broker is, its timing, and whether it emulates a slower board.
//!
//! Emulation: an agent on a machine faster than the board it stands for measures on that
//! machine and multiplies its times by the ratio of peak rates (host peak / board peak, the
//! larger of the compute and memory ratios), and says so in its birth and reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moirai_core::device::{BoardSpec, DeviceError};
use moirai_core::wire::topic::{agent_name, Topics};
use moirai_core::wire::{AgentName, BrokerAddr, WireError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read board file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Board(#[from] DeviceError),
    #[error("agent name `{name}`: {source}")]
    Name { name: String, source: WireError },
    #[error("broker `{url}`: {source}")]
    Broker { url: String, source: WireError },
    #[error("prefix: {0}")]
    Prefix(WireError),
    #[error("board `{board}` is faster than the host `{host}` it would be emulated on (scale {scale:.3} < 1)")]
    FasterThanHost {
        board: String,
        host: String,
        scale: f64,
    },
}

/// Reads a board file.
pub fn load_board(path: &Path) -> Result<BoardSpec, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BoardSpec::from_toml(&text, &path.display().to_string())?)
}

/// Everything the link loop needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: AgentName,
    pub board: BoardSpec,
    pub broker: BrokerAddr,
    pub topics: Topics,
    pub heartbeat: Duration,
    /// MQTT keep-alive; the broker delivers the Last Will after 1.5 times this of silence.
    pub keep_alive: Duration,
    /// Host board the agent really runs on, when it emulates `board`.
    pub host: Option<BoardSpec>,
    /// Bytes of each link probe.
    pub probe_bytes: usize,
    /// TLS and login for the broker (default: plain TCP, no login).
    pub security: moirai_link::tls::ClientSecurity,
    /// Rollout: where releases go, and what to report once announced.
    pub rollout: crate::rollout::RolloutSetup,
    /// Memory for shares in MiB, instead of the board's usable memory.
    pub memory_mb: Option<u64>,
}

impl AgentConfig {
    pub fn new(
        name: &str,
        board: BoardSpec,
        broker: &str,
        prefix: &str,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            name: agent_name(name).map_err(|source| ConfigError::Name {
                name: name.to_string(),
                source,
            })?,
            board,
            broker: BrokerAddr::parse(broker).map_err(|source| ConfigError::Broker {
                url: broker.to_string(),
                source,
            })?,
            topics: Topics::new(prefix).map_err(ConfigError::Prefix)?,
            heartbeat: Duration::from_secs(1),
            keep_alive: Duration::from_secs(5),
            host: None,
            probe_bytes: 256 << 10,
            security: Default::default(),
            rollout: Default::default(),
            memory_mb: None,
        })
    }

    /// Sets the host the board is emulated on; refuses a board faster than its host.
    pub fn emulate_on(mut self, host: BoardSpec) -> Result<Self, ConfigError> {
        let scale = emulation_scale(&host, &self.board);
        if scale < 1.0 {
            return Err(ConfigError::FasterThanHost {
                board: self.board.name.clone(),
                host: host.name.clone(),
                scale,
            });
        }
        self.host = Some(host);
        Ok(self)
    }

    /// Memory the agent offers for shares: what its birth announces and what a share must
    /// fit in.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mb.map_or_else(
            || self.board.usable_memory_bytes(),
            |m| m.saturating_mul(1 << 20),
        )
    }

    /// Factor measured times are multiplied by, when emulating.
    pub fn scale(&self) -> Option<f64> {
        self.host.as_ref().map(|h| emulation_scale(h, &self.board))
    }
}

/// Ratio of peaks host/board: the larger of the compute and the memory-bandwidth ratio, so
/// an emulated kernel is never faster than the board's roofline allows.
pub fn emulation_scale(host: &BoardSpec, board: &BoardSpec) -> f64 {
    let compute = host.compute.f32_gflops / board.compute.f32_gflops;
    let memory = host.memory.bandwidth_gbps / board.memory.bandwidth_gbps;
    compute.max(memory)
}
