//! The operator DAG the placer works on.
//!
//! A [`Graph`] holds devices, ops and data edges, each op annotated with its run time on every
//! device and the memory it keeps resident, each edge with the time to move its tensor between
//! every pair of devices. It is built once through [`Graph::new`], which checks every
//! structural rule (ids in range, matrices of the right size, finite non-negative numbers, no
//! cycle), so code holding a `Graph` never re-checks.
//!
//! Adjacency is stored as petgraph's `DiGraph` (node index = op index, edge weight = edge
//! index) for the graph algorithms, plus flat in/out edge lists and a topological order,
//! because the simulator walks them millions of times during a search.

pub mod format;
pub mod sample;

use petgraph::graph::{DiGraph, NodeIndex};
use thiserror::Error;

use crate::ids::{DeviceId, EdgeId, OpId};

/// A device of the cluster the graph was profiled on.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub name: String,
    /// Capacity for the static sum of the resident memory of its ops.
    pub memory_bytes: u64,
}

/// One (possibly fused) operator.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// The user-facing id (the JSON `id`).
    pub name: String,
    /// Run time on each device, indexed by [`DeviceId`].
    pub time_ms: Vec<f64>,
    /// What the op keeps resident on the device it runs on.
    pub memory_bytes: u64,
    /// Signature key of the fused kernel, when the graph came from an ONNX model.
    pub kernel: Option<String>,
}

/// A data edge `src -> dst`.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub src: OpId,
    pub dst: OpId,
    /// `transfer_ms[a * k + b]`: time to move the tensor from device a to device b.
    pub transfer_ms: Vec<f64>,
    /// Edges with the same `src` and `tensor` going to the same device share one transfer.
    pub tensor: Option<String>,
}

/// Why a set of devices, ops and edges is not a valid graph.
#[derive(Debug, Error, PartialEq)]
pub enum GraphError {
    #[error("the graph has no ops")]
    Empty,
    #[error("the graph has no devices")]
    NoDevices,
    #[error("op `{op}`: `{field}` has {found} entries, expected one per device ({expected})")]
    OpTimeSize {
        op: String,
        field: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("op `{op}`: `{field}`[{device}] is {value}, expected a finite number >= 0")]
    BadOpTime {
        op: String,
        field: &'static str,
        device: usize,
        value: f64,
    },
    #[error("edge {edge} ({src} -> {dst}): `transfer_ms` is {rows}x{cols}, expected {k}x{k}")]
    TransferSize {
        edge: usize,
        src: String,
        dst: String,
        rows: usize,
        cols: usize,
        k: usize,
    },
    #[error("edge {edge} ({src} -> {dst}): `transfer_ms`[{from}][{to}] is {value}, expected a finite number >= 0")]
    BadTransfer {
        edge: usize,
        src: String,
        dst: String,
        from: usize,
        to: usize,
        value: f64,
    },
    #[error("edge {edge}: `{end}` refers to op index {index}, but there are only {count} ops")]
    EdgeOutOfRange {
        edge: usize,
        end: &'static str,
        index: usize,
        count: usize,
    },
    #[error("edge {edge} ({op} -> {op}) is a self-loop")]
    SelfLoop { edge: usize, op: String },
    #[error("the graph has a cycle through op `{op}`")]
    Cycle { op: String },
}

/// A validated operator DAG with per-device costs.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    devices: Vec<Device>,
    ops: Vec<Op>,
    edges: Vec<Edge>,
    dag: DiGraph<OpId, EdgeId>,
    topo: Vec<OpId>,
    in_edges: Vec<Vec<EdgeId>>,
    out_edges: Vec<Vec<EdgeId>>,
}

impl Graph {
    /// Checks every structural rule and builds the adjacency.
    pub fn new(
        name: impl Into<String>,
        devices: Vec<Device>,
        ops: Vec<Op>,
        edges: Vec<Edge>,
    ) -> Result<Self, GraphError> {
        let k = devices.len();
        if k == 0 {
            return Err(GraphError::NoDevices);
        }
        if ops.is_empty() {
            return Err(GraphError::Empty);
        }
        for op in &ops {
            if op.time_ms.len() != k {
                return Err(GraphError::OpTimeSize {
                    op: op.name.clone(),
                    field: "time_ms",
                    found: op.time_ms.len(),
                    expected: k,
                });
            }
            if let Some((d, &t)) = op
                .time_ms
                .iter()
                .enumerate()
                .find(|(_, t)| !t.is_finite() || **t < 0.0)
            {
                return Err(GraphError::BadOpTime {
                    op: op.name.clone(),
                    field: "time_ms",
                    device: d,
                    value: t,
                });
            }
        }
        let mut dag = DiGraph::with_capacity(ops.len(), edges.len());
        for i in 0..ops.len() {
            dag.add_node(OpId::from(i));
        }
        let mut in_edges = vec![Vec::new(); ops.len()];
        let mut out_edges = vec![Vec::new(); ops.len()];
        for (e, edge) in edges.iter().enumerate() {
            for (end, id) in [("src", edge.src), ("dst", edge.dst)] {
                if id.index() >= ops.len() {
                    return Err(GraphError::EdgeOutOfRange {
                        edge: e,
                        end,
                        index: id.index(),
                        count: ops.len(),
                    });
                }
            }
            let (src, dst) = (&ops[edge.src.index()].name, &ops[edge.dst.index()].name);
            if edge.src == edge.dst {
                return Err(GraphError::SelfLoop {
                    edge: e,
                    op: src.clone(),
                });
            }
            if edge.transfer_ms.len() != k * k {
                return Err(GraphError::TransferSize {
                    edge: e,
                    src: src.clone(),
                    dst: dst.clone(),
                    rows: edge.transfer_ms.len() / k.max(1),
                    cols: k,
                    k,
                });
            }
            if let Some((i, &v)) = edge
                .transfer_ms
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                return Err(GraphError::BadTransfer {
                    edge: e,
                    src: src.clone(),
                    dst: dst.clone(),
                    from: i / k,
                    to: i % k,
                    value: v,
                });
            }
            dag.add_edge(
                NodeIndex::new(edge.src.index()),
                NodeIndex::new(edge.dst.index()),
                EdgeId::from(e),
            );
            out_edges[edge.src.index()].push(EdgeId::from(e));
            in_edges[edge.dst.index()].push(EdgeId::from(e));
        }
        let topo = petgraph::algo::toposort(&dag, None)
            .map_err(|c| GraphError::Cycle {
                op: ops[c.node_id().index()].name.clone(),
            })?
            .into_iter()
            .map(|n| OpId::from(n.index()))
            .collect();
        Ok(Self {
            name: name.into(),
            devices,
            ops,
            edges,
            dag,
            topo,
            in_edges,
            out_edges,
        })
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }
    pub fn num_devices(&self) -> usize {
        self.devices.len()
    }
    pub fn num_ops(&self) -> usize {
        self.ops.len()
    }
    pub fn op(&self, op: OpId) -> &Op {
        &self.ops[op.index()]
    }
    pub fn edge(&self, e: EdgeId) -> &Edge {
        &self.edges[e.index()]
    }
    /// Run time of `op` on `device`.
    #[inline]
    pub fn time(&self, op: OpId, device: DeviceId) -> f64 {
        self.ops[op.index()].time_ms[device.index()]
    }
    /// Time to move edge `e`'s tensor from `from` to `to` (0 when equal).
    #[inline]
    pub fn transfer(&self, e: EdgeId, from: DeviceId, to: DeviceId) -> f64 {
        if from == to {
            0.0
        } else {
            self.edges[e.index()].transfer_ms[from.index() * self.devices.len() + to.index()]
        }
    }
    /// Edges entering `op`.
    #[inline]
    pub fn in_edges(&self, op: OpId) -> &[EdgeId] {
        &self.in_edges[op.index()]
    }
    /// Edges leaving `op`.
    #[inline]
    pub fn out_edges(&self, op: OpId) -> &[EdgeId] {
        &self.out_edges[op.index()]
    }
    /// Ops in a topological order (every edge goes forward).
    pub fn topo_order(&self) -> &[OpId] {
        &self.topo
    }
    /// The petgraph view, for algorithms (node index = op index, edge weight = edge id).
    pub fn dag(&self) -> &DiGraph<OpId, EdgeId> {
        &self.dag
    }
    /// Device ids `0..k`.
    pub fn device_ids(&self) -> impl Iterator<Item = DeviceId> + Clone {
        (0..self.devices.len()).map(DeviceId::from)
    }
    /// Op ids `0..n`.
    pub fn op_ids(&self) -> impl Iterator<Item = OpId> + Clone {
        (0..self.ops.len()).map(OpId::from)
    }
    /// Looks an op up by its user-facing id.
    pub fn find_op(&self, name: &str) -> Option<OpId> {
        self.ops.iter().position(|o| o.name == name).map(OpId::from)
    }
    /// The transfer-sharing key of an edge: edges with the same key and destination device
    /// travel once. Edges without a tensor name get a key of their own.
    #[inline]
    pub fn share_key(&self, e: EdgeId) -> Option<(OpId, &str)> {
        let edge = &self.edges[e.index()];
        edge.tensor.as_deref().map(|t| (edge.src, t))
    }

    /// A copy of the graph restricted to `keep` devices (in that order), e.g. the subset of a
    /// fleet that is online. Ops keep their ids.
    pub fn with_devices(&self, keep: &[DeviceId]) -> Graph {
        let k = self.devices.len();
        let devices = keep
            .iter()
            .map(|d| self.devices[d.index()].clone())
            .collect();
        let ops = self
            .ops
            .iter()
            .map(|o| Op {
                time_ms: keep.iter().map(|d| o.time_ms[d.index()]).collect(),
                ..o.clone()
            })
            .collect();
        let edges = self
            .edges
            .iter()
            .map(|e| Edge {
                transfer_ms: keep
                    .iter()
                    .flat_map(|a| keep.iter().map(move |b| (a, b)))
                    .map(|(a, b)| e.transfer_ms[a.index() * k + b.index()])
                    .collect(),
                ..e.clone()
            })
            .collect();
        Graph::new(self.name.clone(), devices, ops, edges)
            .expect("a device subset of a valid graph is valid")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::sample::diamond;

    #[test]
    fn topo_order_puts_every_edge_forward() {
        let g = diamond();
        let pos: Vec<usize> = {
            let mut p = vec![0; g.num_ops()];
            for (i, o) in g.topo_order().iter().enumerate() {
                p[o.index()] = i;
            }
            p
        };
        for e in g.edges() {
            assert!(pos[e.src.index()] < pos[e.dst.index()]);
        }
    }

    #[test]
    fn a_cycle_is_refused_naming_an_op_on_it() {
        let g = diamond();
        let mut edges = g.edges().to_vec();
        edges.push(Edge {
            src: OpId(3),
            dst: OpId(0),
            transfer_ms: vec![0.0; 4],
            tensor: None,
        });
        let err = Graph::new("c", g.devices().to_vec(), g.ops().to_vec(), edges).unwrap_err();
        assert!(matches!(err, GraphError::Cycle { .. }), "{err}");
    }

    #[test]
    fn device_subset_keeps_the_right_columns() {
        let g = diamond().with_devices(&[DeviceId(1)]);
        assert_eq!(g.num_devices(), 1);
        assert_eq!(g.time(OpId(1), DeviceId(0)), 8.0);
    }
}
