//! [`FleetModel`]: a model as the fleet plans it (kernels with signatures, tensors between
//! them, independent of any device), built from a coarsened ONNX model, and the costed
//! [`Graph`] for a set of online agents ([`FleetModel::graph_for`]): measured times where the
//! profile store has them, the roofline of the agent's board elsewhere, and transfers
//! through the broker at the agents' measured link rates.

use moirai_shared::cost::resident_bytes;
use moirai_shared::graph::{Device, Edge, Op};
use moirai_shared::kernel::KernelSignature;
use moirai_shared::wire::life::LinkStats;
use moirai_shared::{Graph, OpId};

use super::store::ProfileStore;
use crate::coarsen::CoarseGraph;
use crate::replan::ReplanError;

/// One online agent as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanDevice {
    pub name: String,
    pub board: String,
    pub memory_bytes: u64,
    pub peak_gflops: f64,
    pub mem_gbps: f64,
    pub link: Option<LinkStats>,
}

/// One kernel of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelOp {
    pub name: String,
    pub signature: KernelSignature,
    /// Bytes it keeps resident (its weights).
    pub memory_bytes: u64,
}

/// A tensor from one kernel to another.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEdge {
    pub src: usize,
    pub dst: usize,
    pub tensor: String,
    pub bytes: u64,
}

/// A model as the fleet plans it: coarsened kernels with signatures, independent of devices.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetModel {
    pub name: String,
    pub ops: Vec<ModelOp>,
    pub edges: Vec<ModelEdge>,
}

/// Link assumed for an agent that has not measured its own yet (bytes per second).
pub const DEFAULT_LINK_BPS: f64 = 12.5e6;
/// Latency of one hop through the broker, added to every transfer (ms).
pub const HOP_LATENCY_MS: f64 = 0.5;

/// How many op costs came from measurements and how many from the roofline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub measured: usize,
    pub roofline: usize,
}

impl FleetModel {
    /// Distinct kernel signatures, by key, in first-use order.
    pub fn signatures(&self) -> Vec<KernelSignature> {
        let mut seen = std::collections::BTreeSet::new();
        self.ops
            .iter()
            .filter(|o| seen.insert(o.signature.key()))
            .map(|o| o.signature.clone())
            .collect()
    }

    /// Roofline time of a kernel on a device: the slower of compute and memory traffic.
    pub fn roofline_ms(sig: &KernelSignature, d: &PlanDevice) -> f64 {
        let compute = sig.flops as f64 / (d.peak_gflops.max(1e-3) * 1e9);
        let memory = sig.bytes as f64 / (d.mem_gbps.max(1e-3) * 1e9);
        compute.max(memory) * 1e3
    }

    /// The costed graph on `devices`.
    pub fn graph_for(
        &self,
        devices: &[PlanDevice],
        store: &ProfileStore,
    ) -> Result<(Graph, Coverage), ReplanError> {
        let mut cov = Coverage::default();
        let ops = self
            .ops
            .iter()
            .map(|o| {
                let key = o.signature.key();
                let time_ms = devices
                    .iter()
                    .map(|d| match store.get(&d.board, &key) {
                        Some(m) => {
                            cov.measured += 1;
                            m.time_ms
                        }
                        None => {
                            cov.roofline += 1;
                            Self::roofline_ms(&o.signature, d)
                        }
                    })
                    .collect();
                Op {
                    name: o.name.clone(),
                    time_ms,
                    memory_bytes: o.memory_bytes,
                    kernel: Some(key),
                }
            })
            .collect();
        let k = devices.len();
        let bps = |d: &PlanDevice, up: bool| {
            d.link
                .map(|l| if up { l.up_bps } else { l.down_bps } as f64)
                .filter(|b| *b > 0.0)
                .unwrap_or(DEFAULT_LINK_BPS)
        };
        let edges = self
            .edges
            .iter()
            .map(|e| {
                let mut transfer_ms = vec![0.0; k * k];
                for (a, da) in devices.iter().enumerate() {
                    for (b, db) in devices.iter().enumerate() {
                        if a != b {
                            // Through the broker: up from a, then down to b.
                            transfer_ms[a * k + b] = e.bytes as f64 / bps(da, true) * 1e3
                                + e.bytes as f64 / bps(db, false) * 1e3
                                + HOP_LATENCY_MS;
                        }
                    }
                }
                Edge {
                    src: OpId::from(e.src),
                    dst: OpId::from(e.dst),
                    transfer_ms,
                    tensor: Some(e.tensor.clone()),
                }
            })
            .collect();
        let devs = devices
            .iter()
            .map(|d| Device {
                name: d.name.clone(),
                memory_bytes: d.memory_bytes,
            })
            .collect();
        let g = Graph::new(self.name.clone(), devs, ops, edges)
            .map_err(|source| ReplanError::Graph { devices: k, source })?;
        Ok((g, cov))
    }
}

impl FleetModel {
    /// The fused groups of a coarsened model as kernels, the tensors between them as edges.
    pub fn from_coarse(c: &CoarseGraph) -> FleetModel {
        FleetModel {
            name: c.model.clone(),
            ops: c
                .groups
                .iter()
                .map(|g| ModelOp {
                    name: g.name.clone(),
                    signature: g.signature.clone(),
                    memory_bytes: resident_bytes(g.param_bytes, g.output_bytes),
                })
                .collect(),
            edges: c
                .edges
                .iter()
                .map(|e| ModelEdge {
                    src: e.src,
                    dst: e.dst,
                    tensor: e.tensor.clone(),
                    bytes: e.bytes,
                })
                .collect(),
        }
    }
}
