//! An agent's sub-model: the ONNX nodes of its share of the plan with exactly the weights
//! they read, as a standalone ONNX model whose inputs are the tensors it receives and whose
//! outputs are the tensors it sends. Built the same way by an agent from its local copy of
//! the model (after checking the copy's SHA-256) and by the orchestrator when it streams the
//! weights.

use std::collections::{HashMap, HashSet};

use moirai_core::kernel::TensorShape;
use moirai_core::wire::data::{SubgraphSpec, TensorSpec};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// Why a sub-model cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SubmodelError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("no node of the model produces `{0}` (the spec names a node by its first output)")]
    UnknownNode(String),
    #[error("node `{node}` reads `{tensor}`, which is neither computed in the subgraph, nor received, nor a weight")]
    Dangling { node: String, tensor: String },
    #[error(
        "node `{node}` has a sub-graph attribute (If/Loop/Scan): not supported across devices"
    )]
    Subgraph { node: String },
    #[error("weight `{0}` is stored in an external file: embed the weights to run the model")]
    External(String),
    #[error("cannot encode the sub-model: {0}")]
    Encode(String),
}

/// Reads a whole model file's protobuf.
pub fn decode_model(bytes: &[u8]) -> Result<pb::ModelProto, SubmodelError> {
    tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| SubmodelError::Encode(format!("{e:#}")))
}

/// The value_info of a boundary tensor: its element type and shape.
fn value_info(t: &TensorSpec) -> pb::ValueInfoProto {
    let shape = TensorShape {
        dims: t.dims.iter().map(|&d| d as usize).collect(),
        dtype: t.dtype,
    };
    crate::import::onnx::value_info(&t.name, &shape)
}

/// The nodes of a graph by their first output (the name a `SubgraphSpec` gives a node).
pub fn nodes_by_output(graph: &pb::GraphProto) -> HashMap<&str, &pb::NodeProto> {
    graph
        .node
        .iter()
        .filter_map(|n| {
            n.output
                .iter()
                .find(|o| !o.is_empty())
                .map(|o| (o.as_str(), n))
        })
        .collect()
}

/// The sub-model of `spec` cut out of `model`.
pub fn extract(
    model: &pb::ModelProto,
    spec: &SubgraphSpec,
) -> Result<pb::ModelProto, SubmodelError> {
    let graph = model.graph.as_ref().ok_or(SubmodelError::NoGraph)?;
    let by_output = nodes_by_output(graph);
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let received: HashSet<&str> = spec.inputs.iter().map(|t| t.name.as_str()).collect();
    let mut nodes = Vec::with_capacity(spec.nodes.len());
    let mut produced: HashSet<String> = HashSet::new();
    let mut used_inits: Vec<pb::TensorProto> = Vec::new();
    let mut seen_inits: HashSet<&str> = HashSet::new();
    for key in &spec.nodes {
        let n = by_output
            .get(key.as_str())
            .ok_or_else(|| SubmodelError::UnknownNode(key.clone()))?;
        if n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            return Err(SubmodelError::Subgraph { node: key.clone() });
        }
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if produced.contains(i) || received.contains(i.as_str()) {
                continue;
            }
            match inits.get(i.as_str()) {
                Some(t) => {
                    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
                        return Err(SubmodelError::External(i.clone()));
                    }
                    if seen_inits.insert(t.name.as_str()) {
                        used_inits.push((*t).clone());
                    }
                }
                None => {
                    return Err(SubmodelError::Dangling {
                        node: key.clone(),
                        tensor: i.clone(),
                    })
                }
            }
        }
        produced.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
        nodes.push((*n).clone());
    }
    let sub = pb::GraphProto {
        name: format!("{}-epoch{}", spec.model, spec.epoch),
        node: nodes,
        initializer: used_inits,
        input: spec.inputs.iter().map(value_info).collect(),
        output: spec.outputs.iter().map(|o| value_info(&o.tensor)).collect(),
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: "moirai".into(),
        graph: Some(sub),
        ..Default::default()
    })
}

/// The sub-model as ONNX bytes (what the orchestrator streams).
pub fn encode_model(model: &pb::ModelProto) -> Vec<u8> {
    use prost::Message;
    model.encode_to_vec()
}

/// Bytes of the initializers the nodes of `spec` read.
pub fn weight_bytes(model: &pb::ModelProto, nodes: &[String]) -> u64 {
    let Some(graph) = model.graph.as_ref() else {
        return 0;
    };
    let wanted: HashSet<&str> = nodes.iter().map(String::as_str).collect();
    let mut names: HashSet<&str> = HashSet::new();
    for n in &graph.node {
        if n.output
            .iter()
            .find(|o| !o.is_empty())
            .is_some_and(|o| wanted.contains(o.as_str()))
        {
            names.extend(n.input.iter().map(String::as_str));
        }
    }
    graph
        .initializer
        .iter()
        .filter(|t| names.contains(t.name.as_str()))
        .map(tensor_bytes)
        .sum()
}

/// Bytes of one initializer's data.
pub fn tensor_bytes(t: &pb::TensorProto) -> u64 {
    if !t.raw_data.is_empty() {
        return t.raw_data.len() as u64;
    }
    (t.float_data.len() * 4
        + t.int32_data.len() * 4
        + t.int64_data.len() * 8
        + t.double_data.len() * 8
        + t.uint64_data.len() * 8) as u64
}
