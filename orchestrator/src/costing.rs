//! A coarsened model on a cluster file: the costed [`Graph`] `moirai plan` and `moirai
//! coarsen --cluster` take. The cluster's boards and links go through the one costed-graph
//! builder every caller uses ([`moirai_core::cost::plan::costed_graph`]), so a plan made from
//! a file costs a kernel and a transfer exactly as the fleet's online planning does.

use std::path::Path;

use moirai_core::cost::plan::{self, CostSources, PlanDevice, PlanError};
use moirai_core::cost::ProfileTable;
use moirai_core::device::{Backend, Cluster};
use moirai_core::Graph;
use moirai_model::coarsen::{self, CoarseGraph};
use moirai_model::import::onnx::{ImportError, ImportOptions, OnnxModel};
use thiserror::Error;

use crate::cluster::{self, ClusterError};

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
    Graph { model: String, error: PlanError },
}

/// The costed graph of a coarsened model on a cluster.
pub fn costed_graph(
    coarse: &CoarseGraph,
    cluster: &Cluster,
    profiles: Option<&ProfileTable>,
) -> Result<(Graph, CostSources), CostingError> {
    plan::costed_graph(
        &coarse.plan_model(),
        &PlanDevice::of_cluster(cluster),
        &cluster.links(),
        profiles,
    )
    .map_err(|error| CostingError::Graph {
        model: coarse.model.clone(),
        error,
    })
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
        // A table asked for by name must be there (the store's "missing is empty" is for
        // files a process keeps for itself).
        Some(p) if !p.is_file() => {
            return Err(CostingError::Profiles {
                path: p.display().to_string(),
                message: "no such file".into(),
            })
        }
        Some(p) => {
            Some(
                moirai_model::profiles::read_table(p).map_err(|e| CostingError::Profiles {
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
