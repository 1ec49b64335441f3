//! A coarsened model on a cluster: the costed [`Graph`] the placer takes.
//!
//! Each fused group becomes an op whose run time on every device comes from the cost model
//! (a measured profile for that board and kernel signature, else the roofline), whose
//! resident memory is its parameters plus the outputs it keeps, and whose `kernel` is the
//! signature key. Each tensor between groups becomes an edge carrying the tensor's name, so
//! one output read by several ops on the same device travels once.

use std::path::Path;

use moirai_shared::cost::{resident_bytes, CostModel, ProfileTable, TimeSource};
use moirai_shared::device::{Backend, Cluster};
use moirai_shared::graph::{Device, Edge, GraphError, Op};
use moirai_shared::{DeviceId, Graph, OpId};
use thiserror::Error;

use crate::cluster::{self, ClusterError};
use crate::coarsen::{self, CoarseGraph};
use crate::import::onnx::{ImportError, ImportOptions, OnnxModel};

/// Why a model could not be turned into a costed graph.
#[derive(Debug, Error)]
pub enum CostingError {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("profile table {path}: {message}")]
    Profiles { path: String, message: String },
    #[error("model `{model}`: the costed graph is invalid: {error}")]
    Graph { model: String, error: GraphError },
}

/// How many op times came from profiles and how many from the roofline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CostSources {
    pub profiled: usize,
    pub roofline: usize,
}

/// The costed graph of a coarsened model on a cluster.
pub fn costed_graph(
    coarse: &CoarseGraph,
    cluster: &Cluster,
    profiles: Option<&ProfileTable>,
) -> Result<(Graph, CostSources), CostingError> {
    let model = match profiles {
        Some(p) => CostModel::with_profiles(p),
        None => CostModel::roofline(),
    };
    let mut sources = CostSources::default();
    let ops = coarse
        .groups
        .iter()
        .map(|g| {
            let time_ms = cluster
                .devices()
                .iter()
                .map(|d| {
                    let (t, src) = model.op_time_ms(&d.board, &g.signature);
                    match src {
                        TimeSource::Profiled => sources.profiled += 1,
                        TimeSource::Roofline => sources.roofline += 1,
                    }
                    t
                })
                .collect();
            Op {
                name: g.name.clone(),
                time_ms,
                memory_bytes: resident_bytes(g.param_bytes, g.output_bytes),
                kernel: Some(g.signature.key()),
            }
        })
        .collect();
    let k = cluster.len();
    let edges = coarse
        .edges
        .iter()
        .map(|e| Edge {
            src: OpId::from(e.src),
            dst: OpId::from(e.dst),
            transfer_ms: (0..k)
                .flat_map(|a| (0..k).map(move |b| (a, b)))
                .map(|(a, b)| cluster.transfer_ms(DeviceId::from(a), DeviceId::from(b), e.bytes))
                .collect(),
            tensor: Some(e.tensor.clone()),
        })
        .collect();
    let devices: Vec<Device> = cluster.graph_devices();
    let graph = Graph::new(coarse.model.clone(), devices, ops, edges).map_err(|error| {
        CostingError::Graph {
            model: coarse.model.clone(),
            error,
        }
    })?;
    Ok((graph, sources))
}

/// Everything from files: import, coarsen, cost.
pub struct Pipeline {
    pub model: OnnxModel,
    pub coarse: CoarseGraph,
    pub cluster: Cluster,
    pub graph: Graph,
    pub sources: CostSources,
}

/// Imports `model_path`, coarsens it for `backend`, loads the cluster and costs the result.
pub fn from_files(
    model_path: &Path,
    cluster_path: &Path,
    boards_dir: Option<&Path>,
    backend: Backend,
    profiles_path: Option<&Path>,
    opts: &ImportOptions,
) -> Result<Pipeline, CostingError> {
    let cluster = cluster::load_cluster(cluster_path, boards_dir)?;
    let profiles = match profiles_path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| CostingError::Profiles {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            Some(
                ProfileTable::from_json(&text).map_err(|e| CostingError::Profiles {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?,
            )
        }
        None => None,
    };
    let (model, coarse) = coarsen::coarsen_file(model_path, backend, opts)?;
    let (graph, sources) = costed_graph(&coarse, &cluster, profiles.as_ref())?;
    Ok(Pipeline {
        model,
        coarse,
        cluster,
        graph,
        sources,
    })
}
