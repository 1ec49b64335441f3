//! A model file as execution needs it ([`LoadedModel`]): read, hashed, imported and
//! coarsened with the fusion rules of the executor that will run it, with its boundary
//! tensors and, for the placer, its kernels and the tensors between them.

use std::path::{Path, PathBuf};

use moirai_core::cost::plan::PlanModel;
use moirai_core::device::Backend;
use moirai_core::wire::data::TensorSpec;
use tract_onnx::pb;

use crate::coarsen::{self, rules::RuleSet, CoarseGraph};
use crate::import::onnx::{self, ImportError, ImportOptions, OnnxModel};
use crate::split::{spec_of, SplitError};
use crate::submodel::{self, SubmodelError};

/// Why a model file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Decode(#[from] SubmodelError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Boundary(#[from] SplitError),
}

/// A model ready to be planned and cut into shares.
pub struct LoadedModel {
    pub onnx: OnnxModel,
    pub coarse: CoarseGraph,
    /// Its kernels and the tensors between them, as the placer costs them.
    pub plan: PlanModel,
    proto: pb::ModelProto,
    /// SHA-256 of the file (assignments name the model by it).
    pub sha256: [u8; 32],
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl LoadedModel {
    /// Reads, hashes, imports and coarsens the model file with the fusion rules of the
    /// agents' default executor (wgpu: the fused WGSL kernels).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_for(path, Backend::Wgpu)
    }

    /// [`LoadedModel::load`] for agents running `executor`: its fusion rules make the groups,
    /// so the kernel keys match what `moirai-agent profile --backend <executor>` measures.
    pub fn load_for(path: &Path, executor: Backend) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = moirai_core::digest::sha256(&bytes);
        let proto = submodel::decode_model(&bytes)?;
        let opts = ImportOptions {
            require_weights: true,
            ..Default::default()
        };
        let onnx = onnx::from_proto(&proto, path, &opts)?;
        let coarse = coarsen::coarsen(&onnx, &RuleSet::for_backend(executor));
        let plan = coarse.plan_model();
        let inputs = onnx
            .inputs
            .iter()
            .map(|t| spec_of(&onnx, t))
            .collect::<Result<_, _>>()?;
        let outputs = onnx
            .outputs
            .iter()
            .map(|t| spec_of(&onnx, t))
            .collect::<Result<_, _>>()?;
        Ok(LoadedModel {
            onnx,
            coarse,
            plan,
            proto,
            sha256,
            inputs,
            outputs,
        })
    }

    pub fn proto(&self) -> &pb::ModelProto {
        &self.proto
    }

    /// The graph inputs, in the model's order.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The graph outputs, in the model's order.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Weight bytes of a node list (nodes named by their first output).
    pub fn weight_bytes(&self, nodes: &[String]) -> u64 {
        submodel::weight_bytes(&self.proto, nodes)
    }
}
