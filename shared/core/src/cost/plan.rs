//! The costed graph the placer takes, built one way for every caller: `moirai plan` on a
//! cluster file and the fleet's online planning on the agents that are up both describe
//! their devices ([`PlanDevice`]: a board and the memory it offers) and the links between
//! them ([`Links`]: a [`crate::link::LinkSpec`] for every ordered pair), and [`costed_graph`] turns a device-free
//! [`PlanModel`] into the [`Graph`]: each op's time on each device from the [`CostModel`]
//! (a measured profile of that board and kernel, else the roofline), each tensor's transfer
//! time from the link it crosses.

use crate::cost::{CostModel, ProfileTable, TimeSource};
use crate::device::{BoardSpec, Cluster};
use crate::graph::{Device, Edge, GraphError, Op};
use crate::kernel::KernelSignature;
use crate::link::Links;
use crate::{Graph, OpId};

/// One kernel of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOp {
    pub name: String,
    pub signature: KernelSignature,
    /// Bytes it keeps resident (its weights and the outputs it holds).
    pub memory_bytes: u64,
}

/// A tensor from one kernel to another.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanEdge {
    /// Indices into [`PlanModel::ops`].
    pub src: usize,
    pub dst: usize,
    pub tensor: String,
    pub bytes: u64,
}

/// A model as the placer plans it: kernels with their signatures and the tensors between
/// them, independent of any device.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanModel {
    pub name: String,
    pub ops: Vec<PlanOp>,
    pub edges: Vec<PlanEdge>,
}

impl PlanModel {
    /// Distinct kernel signatures, by key, in first-use order: what a board class needs
    /// profiled.
    pub fn signatures(&self) -> Vec<KernelSignature> {
        let mut seen = std::collections::BTreeSet::new();
        self.ops
            .iter()
            .filter(|o| seen.insert(o.signature.key()))
            .map(|o| o.signature.clone())
            .collect()
    }
}

/// A device to place on.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanDevice {
    pub name: String,
    /// Its board class: what its kernels are costed with, and the key of its profiles.
    pub board: BoardSpec,
    /// Memory it offers the plan.
    pub memory_bytes: u64,
}

impl PlanDevice {
    /// The devices of a cluster (memory: each board's usable memory).
    pub fn of_cluster(cluster: &Cluster) -> Vec<PlanDevice> {
        cluster
            .devices()
            .iter()
            .map(|d| PlanDevice {
                name: d.name.clone(),
                board: d.board.clone(),
                memory_bytes: d.board.usable_memory_bytes(),
            })
            .collect()
    }
}

/// How many op costs came from profiles (measurements) and how many from the roofline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CostSources {
    pub profiled: usize,
    pub roofline: usize,
}

/// Why a costed graph cannot be built.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("{devices} devices but links between {links}")]
    Links { devices: usize, links: usize },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The costed graph of `model` on `devices`, tensors moving over `links`.
pub fn costed_graph(
    model: &PlanModel,
    devices: &[PlanDevice],
    links: &Links,
    profiles: Option<&ProfileTable>,
) -> Result<(Graph, CostSources), PlanError> {
    let k = devices.len();
    if links.len() != k {
        return Err(PlanError::Links {
            devices: k,
            links: links.len(),
        });
    }
    let cost = match profiles {
        Some(p) => CostModel::with_profiles(p),
        None => CostModel::roofline(),
    };
    let mut cov = CostSources::default();
    let ops = model
        .ops
        .iter()
        .map(|o| {
            let time_ms = devices
                .iter()
                .map(|d| {
                    let (t, src) = cost.op_time_ms(&d.board, &o.signature);
                    match src {
                        TimeSource::Profiled => cov.profiled += 1,
                        TimeSource::Roofline => cov.roofline += 1,
                    }
                    t
                })
                .collect();
            Op {
                name: o.name.clone(),
                time_ms,
                memory_bytes: o.memory_bytes,
                kernel: Some(o.signature.key()),
            }
        })
        .collect();
    let edges = model
        .edges
        .iter()
        .map(|e| Edge {
            src: OpId::from(e.src),
            dst: OpId::from(e.dst),
            transfer_ms: (0..k)
                .flat_map(|a| (0..k).map(move |b| (a, b)))
                .map(|(a, b)| links.transfer_ms(a, b, e.bytes))
                .collect(),
            tensor: Some(e.tensor.clone()),
        })
        .collect();
    let devs = devices
        .iter()
        .map(|d| Device {
            name: d.name.clone(),
            memory_bytes: d.memory_bytes,
        })
        .collect();
    let g = Graph::new(model.name.clone(), devs, ops, edges)?;
    Ok((g, cov))
}
