//! ONNX models into a list of nodes with shapes, dtypes and costs.
//!
//! tract-onnx decodes the protobuf (its generated `pb` types) and, where the file does not
//! carry every shape in `value_info`, infers the missing ones ([`shapes`]). Weights are never
//! needed for that: an initializer's size comes from its dims, so graph-only files whose
//! external `.weights` file is absent import as well as complete ones; only
//! [`ImportOptions::require_weights`] (set when a model is to be executed) insists on them.
//!
//! Every node comes out with its op type, attributes, input and output shapes and dtypes,
//! FLOPs (a multiply-add counts 2), bytes read and written, and parameter bytes ([`ops`]).

pub mod build;
mod ops;
mod proto;
mod shapes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use moirai_core::kernel::{AttrValue, TensorShape};
use thiserror::Error;
use tracing::{debug, instrument};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

pub use ops::{cost_kind, CostKind};
pub use proto::dtype_of;
use proto::{
    attr_value, checked_shape, constant_shape, tensor_proto_shape, topo_order, value_info_shape,
    weight_data,
};
pub use shapes::{onnx_code, value_info};

/// What the importer insists on.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Refuse a model whose external weight files are absent (set when it will be executed).
    pub require_weights: bool,
    /// Ignore `value_info` and take every shape from tract's inference.
    pub infer_all_shapes: bool,
    /// Values for symbolic dimensions (`dim_param`), e.g. `batch = 1`.
    pub dims: BTreeMap<String, usize>,
}

/// Why an ONNX file was refused. Every variant names the file and the node, tensor or
/// initializer at fault.
#[derive(Debug, Error)]
pub enum ImportError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a valid ONNX protobuf (truncated or corrupted?): {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: the model has no graph")]
    NoGraph { path: PathBuf },
    #[error("{path}: the graph has no nodes")]
    EmptyGraph { path: PathBuf },
    #[error("{path}: the graph declares no outputs")]
    NoOutputs { path: PathBuf },
    #[error("{path}: the model imports no opset of the default ONNX domain")]
    NoOpset { path: PathBuf },
    #[error("{path}: tensor `{tensor}` with dims {dims:?} is larger than 1 TiB")]
    TooLarge {
        path: PathBuf,
        tensor: String,
        dims: Vec<i64>,
    },
    #[error("{path}: node `{node}` has op type `{op_type}` (domain `{domain}`), which the importer does not know")]
    UnknownOp {
        path: PathBuf,
        node: String,
        op_type: String,
        domain: String,
    },
    #[error("{path}: tensor `{tensor}` has element type {dtype}, which is not supported (f32, f16, i64, i32, i8, u8, bool)")]
    UnsupportedDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: tensor `{tensor}` has dimension {dim}, expected >= 0")]
    NegativeDim {
        path: PathBuf,
        tensor: String,
        dim: i64,
    },
    #[error("{path}: tensor `{tensor}` has symbolic dimension `{dim}`; give it a value (e.g. `{dim}=1`)")]
    SymbolicDim {
        path: PathBuf,
        tensor: String,
        dim: String,
    },
    #[error("{path}: node `{node}` reads tensor `{tensor}`, which no node, input or initializer defines")]
    UndefinedInput {
        path: PathBuf,
        node: String,
        tensor: String,
    },
    #[error("{path}: graph output `{tensor}` is never produced")]
    UndefinedOutput { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` is produced twice (second time by node `{node}`)")]
    DuplicateTensor {
        path: PathBuf,
        tensor: String,
        node: String,
    },
    #[error("{path}: the graph has a cycle through node `{node}`")]
    Cycle { path: PathBuf, node: String },
    #[error("{path}: no shape for tensor `{tensor}` (output of node `{node}`): not in value_info and tract could not infer it{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NoShape {
        path: PathBuf,
        node: String,
        tensor: String,
        reason: Option<String>,
    },
    #[error("{path}: initializer `{initializer}` keeps its data in `{}`, which is missing; weights are needed to execute the model", file.display())]
    MissingWeights {
        path: PathBuf,
        initializer: String,
        file: PathBuf,
    },
    #[error("{path}: initializer `{initializer}`: external data `{}` holds {size} bytes, but {needed} are needed", file.display())]
    ExternalDataTooShort {
        path: PathBuf,
        initializer: String,
        file: PathBuf,
        needed: u64,
        size: u64,
    },
    #[error("{path}: initializer `{initializer}`: bad external data description: {message}")]
    BadExternalData {
        path: PathBuf,
        initializer: String,
        message: String,
    },
    #[error("{path}: node `{node}` ({op_type}): {message}")]
    OpShape {
        path: PathBuf,
        node: String,
        op_type: String,
        message: String,
    },
}

/// Where an initializer's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightData {
    /// In the ONNX file itself.
    Inline,
    /// In an external data file, which may be absent (graph-only files).
    External { file: PathBuf, present: bool },
}

/// Where a tensor comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorOrigin {
    /// A graph input fed at run time.
    Input,
    /// A parameter.
    Initializer(WeightData),
    /// Output of node `usize` (index into [`OnnxModel::nodes`]).
    Node(usize),
}

/// A named tensor: shape, dtype and origin.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub shape: TensorShape,
    pub origin: TensorOrigin,
}

/// One ONNX node with its costs.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxNode {
    /// The node's name (`{op_type}_{index}` when the file gives none or repeats one).
    pub name: String,
    pub op_type: String,
    pub domain: String,
    /// Scalar and list attributes; tensor and graph attributes are left out.
    pub attrs: BTreeMap<String, AttrValue>,
    /// Input tensor names; an empty name is an absent optional input.
    pub inputs: Vec<String>,
    /// Output tensor names; an empty name is an unused optional output.
    pub outputs: Vec<String>,
    /// Floating-point operations, a multiply-add counting 2.
    pub flops: u64,
    /// Bytes of every input (activations and parameters).
    pub bytes_read: u64,
    /// Bytes of every output.
    pub bytes_written: u64,
    /// Bytes of the initializers it reads (for `Constant`, the constant it makes).
    pub param_bytes: u64,
}

/// Counts of initializers by where their data is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightsSummary {
    pub inline: usize,
    pub external_present: usize,
    pub external_missing: usize,
    /// External data files that are absent.
    pub missing_files: BTreeSet<PathBuf>,
}

/// An imported model: nodes in a topological order, every tensor with a static shape.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    /// File stem, e.g. `resnet50`.
    pub name: String,
    pub path: PathBuf,
    /// Operator set version of the default domain.
    pub opset: i64,
    pub nodes: Vec<OnnxNode>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Graph inputs fed at run time (initializers listed as inputs are left out).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub weights: WeightsSummary,
    /// Whether shapes missing from `value_info` were inferred by tract.
    pub used_tract_inference: bool,
}

impl OnnxModel {
    pub fn shape(&self, tensor: &str) -> Option<&TensorShape> {
        self.tensors.get(tensor).map(|t| &t.shape)
    }

    /// Whether `tensor` is a parameter (an initializer).
    pub fn is_initializer(&self, tensor: &str) -> bool {
        matches!(
            self.tensors.get(tensor).map(|t| &t.origin),
            Some(TensorOrigin::Initializer(_))
        )
    }

    /// The node producing `tensor`, if a node does.
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        match self.tensors.get(tensor)?.origin {
            TensorOrigin::Node(n) => Some(n),
            _ => None,
        }
    }

    /// For each tensor, the nodes reading it (in node order, each node once).
    pub fn consumers(&self) -> HashMap<&str, Vec<usize>> {
        let mut c: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for t in n.inputs.iter().filter(|t| !t.is_empty()) {
                let v = c.entry(t.as_str()).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        c
    }

    pub fn total_flops(&self) -> u64 {
        self.nodes.iter().map(|n| n.flops).sum()
    }

    /// Bytes of all initializers.
    pub fn param_bytes(&self) -> u64 {
        self.tensors
            .values()
            .filter(|t| matches!(t.origin, TensorOrigin::Initializer(_)))
            .map(|t| t.shape.bytes() as u64)
            .sum()
    }
}

/// Reads and imports an ONNX file.
#[instrument(skip(opts), fields(path = %path.display()))]
pub fn load(path: &Path, opts: &ImportOptions) -> Result<OnnxModel, ImportError> {
    let bytes = std::fs::read(path).map_err(|error| ImportError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| ImportError::Decode {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
    from_proto(&proto, path, opts)
}

/// Builds the model from a decoded protobuf; `path` locates external data and names errors.
pub fn from_proto(
    proto: &pb::ModelProto,
    path: &Path,
    opts: &ImportOptions,
) -> Result<OnnxModel, ImportError> {
    let p = || path.to_path_buf();
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::NoGraph { path: p() })?;
    if graph.node.is_empty() {
        return Err(ImportError::EmptyGraph { path: p() });
    }
    if graph.output.is_empty() {
        return Err(ImportError::NoOutputs { path: p() });
    }
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| ImportError::NoOpset { path: p() })?;
    let model_dir = path.parent().unwrap_or(Path::new("."));

    // Every node must be an op we can cost, before anything else looks at it.
    let mut names = BTreeSet::new();
    let mut node_names = Vec::with_capacity(graph.node.len());
    for (i, n) in graph.node.iter().enumerate() {
        let name = if n.name.is_empty() || names.contains(&n.name) {
            format!("{}_{i}", n.op_type)
        } else {
            n.name.clone()
        };
        names.insert(name.clone());
        let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
        if !default_domain || cost_kind(&n.op_type).is_none() {
            return Err(ImportError::UnknownOp {
                path: p(),
                node: name,
                op_type: n.op_type.clone(),
                domain: if n.domain.is_empty() {
                    "ai.onnx".into()
                } else {
                    n.domain.clone()
                },
            });
        }
        node_names.push(name);
    }

    // Initializers: shape from dims, data inline or in a (possibly absent) external file.
    let mut tensors: HashMap<String, TensorInfo> = HashMap::new();
    let mut weights = WeightsSummary::default();
    let mut missing_external = BTreeSet::new();
    for t in &graph.initializer {
        let shape = tensor_proto_shape(t, path)?;
        let data = weight_data(t, &shape, model_dir, path)?;
        match &data {
            WeightData::Inline => weights.inline += 1,
            WeightData::External { present: true, .. } => weights.external_present += 1,
            WeightData::External {
                file,
                present: false,
            } => {
                if opts.require_weights {
                    return Err(ImportError::MissingWeights {
                        path: p(),
                        initializer: t.name.clone(),
                        file: file.clone(),
                    });
                }
                weights.external_missing += 1;
                weights.missing_files.insert(file.clone());
                missing_external.insert(t.name.clone());
            }
        }
        tensors.insert(
            t.name.clone(),
            TensorInfo {
                shape,
                origin: TensorOrigin::Initializer(data),
            },
        );
    }

    // Declared shapes: graph inputs, value_info, graph outputs.
    let mut declared: HashMap<String, TensorShape> = HashMap::new();
    let value_infos = graph
        .input
        .iter()
        .chain(if opts.infer_all_shapes {
            [].iter()
        } else {
            graph.value_info.iter()
        })
        .chain(graph.output.iter());
    let input_names: BTreeSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    for vi in value_infos {
        // A symbolic dimension the options do not bind is an error on a graph input (the
        // user must say how big it is) and merely "unknown" elsewhere (inference decides).
        let strict = input_names.contains(vi.name.as_str());
        if let Some(shape) = value_info_shape(vi, opts, strict, path)? {
            declared.insert(vi.name.clone(), shape);
        }
    }
    let mut inputs = Vec::new();
    for vi in &graph.input {
        if tensors.contains_key(&vi.name) {
            continue;
        }
        let shape = declared
            .get(&vi.name)
            .cloned()
            .ok_or_else(|| ImportError::NoShape {
                path: p(),
                node: "(graph input)".into(),
                tensor: vi.name.clone(),
                reason: Some("graph inputs need a complete shape and element type".into()),
            })?;
        tensors.insert(
            vi.name.clone(),
            TensorInfo {
                shape,
                origin: TensorOrigin::Input,
            },
        );
        inputs.push(vi.name.clone());
    }

    // Nodes in a topological order (ONNX asks for one; repair files that do not keep it).
    let order = topo_order(graph, &tensors, &node_names, path)?;

    // Constant nodes carry their shape in their value attribute.
    for n in &graph.node {
        if n.op_type == "Constant" {
            if let (Some(out), Some(shape)) = (n.output.first(), constant_shape(n, path)?) {
                if !opts.infer_all_shapes {
                    declared.entry(out.clone()).or_insert(shape);
                }
            }
        }
    }

    // Shapes nobody declared come from tract's inference.
    let missing: Vec<(usize, &str)> = order
        .iter()
        .flat_map(|&i| {
            graph.node[i]
                .output
                .iter()
                .filter(|o| !o.is_empty() && !declared.contains_key(*o))
                .map(move |o| (i, o.as_str()))
        })
        .collect();
    let mut used_tract_inference = false;
    let mut tract_error = None;
    let mut uncarried: HashMap<String, String> = HashMap::new();
    if !missing.is_empty() {
        debug!(
            missing = missing.len(),
            "shapes missing from value_info; running tract inference"
        );
        used_tract_inference = true;
        // tract is a large dependency fed a file from outside: a panic in it must not take
        // the orchestrator down, so it becomes an ordinary "could not infer" reason.
        let inferred = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shapes::infer(proto, model_dir, &missing_external, &tensors, &declared)
        }))
        .unwrap_or_else(|_| Err("tract panicked while inferring shapes".to_string()));
        match inferred {
            Ok(inferred) => {
                uncarried = inferred.uncarried;
                for (name, shape) in inferred.shapes {
                    if let std::collections::hash_map::Entry::Vacant(slot) = declared.entry(name) {
                        let shape = checked_shape(shape.dims, shape.dtype, slot.key(), path)?;
                        slot.insert(shape);
                    }
                }
            }
            Err(e) => tract_error = Some(e),
        }
    }

    let mut nodes = Vec::with_capacity(order.len());
    for &i in &order {
        let n = &graph.node[i];
        let idx = nodes.len();
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            let shape = declared
                .get(o)
                .cloned()
                .ok_or_else(|| match uncarried.get(o) {
                    Some(dtype) => ImportError::UnsupportedDType {
                        path: p(),
                        tensor: o.clone(),
                        dtype: dtype.clone(),
                    },
                    None => ImportError::NoShape {
                        path: p(),
                        node: node_names[i].clone(),
                        tensor: o.clone(),
                        reason: tract_error.clone(),
                    },
                })?;
            if tensors
                .insert(
                    o.clone(),
                    TensorInfo {
                        shape,
                        origin: TensorOrigin::Node(idx),
                    },
                )
                .is_some()
            {
                return Err(ImportError::DuplicateTensor {
                    path: p(),
                    tensor: o.clone(),
                    node: node_names[i].clone(),
                });
            }
        }
        nodes.push(costed_node(n, &node_names[i], &tensors, path)?);
    }
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for o in &outputs {
        if !tensors.contains_key(o) {
            return Err(ImportError::UndefinedOutput {
                path: p(),
                tensor: o.clone(),
            });
        }
    }
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| {
            // `with-weights/<model>/model.onnx`: the folder names the model.
            if s == "model" {
                path.parent()
                    .and_then(|d| d.file_name())
                    .and_then(|d| d.to_str())
                    .unwrap_or(s)
            } else {
                s
            }
        })
        .unwrap_or("model")
        .to_string();
    Ok(OnnxModel {
        name,
        path: path.to_path_buf(),
        opset,
        nodes,
        tensors,
        inputs,
        outputs,
        weights,
        used_tract_inference,
    })
}

fn costed_node(
    n: &pb::NodeProto,
    name: &str,
    tensors: &HashMap<String, TensorInfo>,
    path: &Path,
) -> Result<OnnxNode, ImportError> {
    let attrs: BTreeMap<String, AttrValue> = n
        .attribute
        .iter()
        .filter_map(|a| attr_value(a).map(|v| (a.name.clone(), v)))
        .collect();
    let info = |t: &str| tensors.get(t);
    let inputs: Vec<Option<&TensorShape>> =
        n.input.iter().map(|t| info(t).map(|i| &i.shape)).collect();
    let outputs: Vec<&TensorShape> = n
        .output
        .iter()
        .filter(|o| !o.is_empty())
        .filter_map(|o| info(o).map(|i| &i.shape))
        .collect();
    let kind = cost_kind(&n.op_type).ok_or_else(|| ImportError::UnknownOp {
        path: path.to_path_buf(),
        node: name.to_string(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
    })?;
    let flops =
        ops::flops(kind, &attrs, &inputs, &outputs).map_err(|message| ImportError::OpShape {
            path: path.to_path_buf(),
            node: name.to_string(),
            op_type: n.op_type.clone(),
            message,
        })?;
    let bytes_read = inputs.iter().flatten().map(|t| t.bytes() as u64).sum();
    let bytes_written: u64 = outputs.iter().map(|t| t.bytes() as u64).sum();
    let mut param_bytes = n
        .input
        .iter()
        .filter_map(|t| info(t))
        .filter(|i| matches!(i.origin, TensorOrigin::Initializer(_)))
        .map(|i| i.shape.bytes() as u64)
        .sum();
    if n.op_type == "Constant" {
        param_bytes += bytes_written;
    }
    Ok(OnnxNode {
        name: name.to_string(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
        attrs,
        inputs: n.input.clone(),
        outputs: n.output.clone(),
        flops,
        bytes_read,
        bytes_written,
        param_bytes,
    })
}
