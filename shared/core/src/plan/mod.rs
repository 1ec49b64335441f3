//! Plans: where each op runs ([`Placement`]) and when ([`Schedule`]), the validator that
//! checks a schedule against every rule of the cost model ([`check`]), and simple lower
//! bounds on the makespan ([`bound`]).
//!
//! The JSON form of a [`Schedule`] is exactly the one in `../shared/benchmarks/README.md`.

pub mod bound;
pub mod check;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;
use crate::Graph;

/// The device of every op, indexed by op.
pub type Placement = Vec<DeviceId>;

/// One op on the time axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpSlot {
    /// The op's user-facing id.
    pub id: String,
    pub device: u16,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// One transfer on the time axis: the tensor of one or more edges (same producer and tensor,
/// same destination device) moving from device `from` to device `to`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferSlot {
    /// Indices into the graph's `edges`.
    pub edges: Vec<u32>,
    pub from: u16,
    pub to: u16,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// A complete plan for one inference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub graph: String,
    pub method: String,
    pub makespan_ms: f64,
    pub lower_bound_ms: f64,
    pub solve_seconds: f64,
    pub ops: Vec<OpSlot>,
    pub transfers: Vec<TransferSlot>,
}

impl Schedule {
    /// The placement this schedule implies, in the graph's op order. `None` when an op of
    /// the graph is missing from the schedule.
    pub fn placement(&self, g: &Graph) -> Option<Placement> {
        let mut p = vec![None; g.num_ops()];
        for slot in &self.ops {
            let op = g.find_op(&slot.id)?;
            p[op.index()] = Some(DeviceId(slot.device));
        }
        p.into_iter().collect()
    }

    /// Devices that run at least one op.
    pub fn devices_used(&self) -> Vec<u16> {
        let mut d: Vec<u16> = self.ops.iter().map(|o| o.device).collect();
        d.sort_unstable();
        d.dedup();
        d
    }
}
