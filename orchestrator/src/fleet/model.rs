//! The online agents as the placer costs them. An [`OnlineAgent`] is what the fleet knows of
//! an agent: its board class and figures (from its Birth) and the link rates it measured.
//! [`graph_for`] turns them into [`PlanDevice`]s and [`Links`] through the broker and builds
//! the costed graph the one way every caller does ([`moirai_core::cost::plan::costed_graph`]):
//! `moirai plan` on a cluster file with the same boards, table and links costs every kernel
//! and transfer identically.

use moirai_core::cost::plan::{costed_graph, CostSources, PlanDevice, PlanError, PlanModel};
use moirai_core::cost::ProfileTable;
use moirai_core::device::{Backend, BoardSpec, ComputeSpec, MemorySpec, NetworkSpec, RuntimeSpec};
use moirai_core::link::Links;
use moirai_core::wire::life::{Birth, LinkStats};
use moirai_core::Graph;

/// One online agent as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineAgent {
    pub name: String,
    /// Its board class: the figures its kernels are costed with and the key of its profiles.
    pub board: BoardSpec,
    /// Memory it offers the plan.
    pub memory_bytes: u64,
    /// The rates it measured to and from the broker, once it has.
    pub link: Option<LinkStats>,
}

impl OnlineAgent {
    /// An agent as its Birth declares it, with the link it measured (if any).
    pub fn from_birth(birth: &Birth, link: Option<LinkStats>) -> OnlineAgent {
        OnlineAgent {
            name: birth.name.to_string(),
            board: declared_board(
                &birth.board,
                &birth.backend,
                f64::from(birth.peak_gflops),
                f64::from(birth.mem_gbps),
                birth.memory_bytes,
            ),
            memory_bytes: birth.memory_bytes,
            link,
        }
    }
}

/// Link assumed for an agent that has not measured its own yet (bytes per second).
pub const DEFAULT_LINK_BPS: f64 = 12.5e6;
/// Latency of one hop through the broker, added to every transfer (ms).
pub const HOP_LATENCY_MS: f64 = 0.5;

/// A board class from what an agent declares of it: the figures of its Birth (peak FP32 rate,
/// memory bandwidth, memory), everything else neutral (no launch overhead, the NIC as fast as
/// the measured link).
pub fn declared_board(
    class: &str,
    backend: &str,
    peak_gflops: f64,
    mem_gbps: f64,
    memory_bytes: u64,
) -> BoardSpec {
    let mb = memory_bytes >> 20;
    BoardSpec {
        name: class.to_string(),
        description: "declared by the agent".into(),
        backend: if backend == "cpu" {
            Backend::Cpu
        } else {
            Backend::Wgpu
        },
        compute: ComputeSpec {
            f32_gflops: peak_gflops,
            f16_gflops: None,
            int8_gops: None,
        },
        memory: MemorySpec {
            bandwidth_gbps: mem_gbps,
            capacity_mb: mb,
            usable_mb: mb,
        },
        runtime: RuntimeSpec {
            launch_overhead_us: 0.0,
        },
        network: NetworkSpec {
            nic_mbps: f64::INFINITY,
        },
    }
}

/// Each agent's measured rates (Mbit/s) up to and down from the broker.
fn rates(agents: &[OnlineAgent]) -> (Vec<f64>, Vec<f64>) {
    let mbps = |d: &OnlineAgent, up: bool| {
        let bps = d
            .link
            .map(|l| if up { l.up_bps } else { l.down_bps } as f64)
            .filter(|b| *b > 0.0)
            .unwrap_or(DEFAULT_LINK_BPS);
        bps * 8.0 / 1e6
    };
    (
        agents.iter().map(|d| mbps(d, true)).collect(),
        agents.iter().map(|d| mbps(d, false)).collect(),
    )
}

/// The paths between the agents: through the broker, at their measured rates.
pub fn broker_links(agents: &[OnlineAgent]) -> Links {
    let (up, down) = rates(agents);
    Links::through_broker(&up, &down, HOP_LATENCY_MS)
}

/// The costed graph of `model` on the online `agents`.
pub fn graph_for(
    model: &PlanModel,
    agents: &[OnlineAgent],
    profiles: &ProfileTable,
) -> Result<(Graph, CostSources), PlanError> {
    let devices: Vec<PlanDevice> = agents
        .iter()
        .map(|a| PlanDevice {
            name: a.name.clone(),
            board: a.board.clone(),
            memory_bytes: a.memory_bytes,
        })
        .collect();
    costed_graph(model, &devices, &broker_links(agents), Some(profiles))
}
