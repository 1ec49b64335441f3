//! Every constant the groups of a share read, as exact values: initializers as stored, and
//! the outputs of the shape-only nodes the coarsener folds, computed once by tract (the
//! activations a `Shape` node reads are fed as zeros: only their static shapes matter).
//!
//! The GPU executor uploads them once; a group run on tract takes them as initializers.

use std::collections::{BTreeSet, HashMap, HashSet};

use moirai_core::kernel::{DType, TensorShape};
use moirai_core::tensor::TensorValue;
use moirai_model::coarsen::CoarseGraph;
use moirai_model::import::onnx::{value_info, OnnxModel};
use moirai_model::submodel::nodes_by_output;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::values::from_tract;

/// Why a constant cannot be had.
#[derive(Debug, thiserror::Error)]
#[error("epoch {epoch}: constant `{tensor}`: {message}")]
pub struct ConstantError {
    pub epoch: u64,
    pub tensor: String,
    pub message: String,
}

/// The tract element type of a dtype.
pub fn datum(d: DType) -> DatumType {
    match d {
        DType::F32 => f32::datum_type(),
        DType::F16 => f16::datum_type(),
        DType::I64 => i64::datum_type(),
        DType::I32 => i32::datum_type(),
        DType::I8 => i8::datum_type(),
        DType::U8 => u8::datum_type(),
        DType::Bool => bool::datum_type(),
    }
}

/// The constants of every group of `coarse`, by tensor name.
pub fn share_constants(
    proto: &pb::ModelProto,
    model: &OnnxModel,
    coarse: &CoarseGraph,
    epoch: u64,
) -> Result<HashMap<String, TensorValue>, ConstantError> {
    let err = |tensor: &str, message: String| ConstantError {
        epoch,
        tensor: tensor.to_string(),
        message,
    };
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| err("(graph)", "the sub-model has no graph".into()))?;
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let resolver = tract_onnx::data_resolver::default();
    let mut out = HashMap::new();
    let mut folded_outputs: BTreeSet<&str> = BTreeSet::new();
    let mut folded_nodes: BTreeSet<usize> = BTreeSet::new();
    for g in &coarse.groups {
        folded_nodes.extend(g.folded.iter().copied());
        for p in &g.params {
            if out.contains_key(p) {
                continue;
            }
            match inits.get(p.as_str()) {
                Some(t) => {
                    let v = tract_onnx::tensor::load_tensor(&*resolver, t, None)
                        .map_err(|e| err(p, format!("{e:#}")))
                        .and_then(|t| from_tract(t).map_err(|e| err(p, e.to_string())))?;
                    out.insert(p.clone(), v);
                }
                None => {
                    folded_outputs.insert(p.as_str());
                }
            }
        }
    }
    if folded_outputs.is_empty() {
        return Ok(out);
    }
    // The folded nodes as a model of their own.
    let by_output = nodes_by_output(graph);
    let mut nodes = Vec::new();
    let mut produced: HashSet<&str> = HashSet::new();
    for &i in &folded_nodes {
        let n = &model.nodes[i];
        let first = n.outputs.iter().find(|o| !o.is_empty());
        let pbn = first
            .and_then(|o| by_output.get(o.as_str()))
            .ok_or_else(|| err(&n.name, "folded node missing from the sub-model".into()))?;
        produced.extend(n.outputs.iter().map(String::as_str));
        nodes.push((*pbn).clone());
    }
    let mut feeds: Vec<(String, TensorShape)> = Vec::new();
    let mut initializer = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for n in &nodes {
        for t in n.input.iter().filter(|t| !t.is_empty()) {
            if produced.contains(t.as_str()) || !seen.insert(t.as_str()) {
                continue;
            }
            match inits.get(t.as_str()) {
                Some(init) => initializer.push((*init).clone()),
                None => {
                    let shape = model
                        .shape(t)
                        .ok_or_else(|| err(t, "read by a folded node, shape unknown".into()))?;
                    feeds.push((t.clone(), shape.clone()));
                }
            }
        }
    }
    let mut wanted = Vec::new();
    for t in &folded_outputs {
        let shape = model
            .shape(t)
            .ok_or_else(|| err(t, "no static shape".into()))?;
        wanted.push(value_info(t, shape));
    }
    let sub = pb::ModelProto {
        ir_version: proto.ir_version,
        opset_import: proto.opset_import.clone(),
        producer_name: "moirai-agent".into(),
        graph: Some(pb::GraphProto {
            name: "folded".into(),
            node: nodes,
            initializer,
            input: feeds.iter().map(|(n, s)| value_info(n, s)).collect(),
            output: wanted,
            ..Default::default()
        }),
        ..Default::default()
    };
    let what = folded_outputs
        .iter()
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let values = (|| -> TractResult<TVec<TValue>> {
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&sub)?
            .into_optimized()?
            .into_runnable()?;
        let feed: TVec<TValue> = feeds
            .iter()
            .map(|(_, s)| Tensor::zero_dt(datum(s.dtype), &s.dims).map(TValue::from))
            .collect::<TractResult<_>>()?;
        plan.run(feed)
    })()
    .map_err(|e| err(&what, format!("evaluating folded nodes: {e:#}")))?;
    for (name, v) in folded_outputs.iter().zip(values) {
        let v = from_tract(v.into_tensor()).map_err(|e| err(name, e.to_string()))?;
        out.insert(name.to_string(), v);
    }
    Ok(out)
}

/// A constant as an initializer (raw little-endian data).
pub fn initializer(name: &str, v: &TensorValue) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: v.dims.iter().map(|&d| d as i64).collect(),
        data_type: moirai_model::import::onnx::onnx_code(v.dtype()),
        raw_data: v.to_le_bytes(),
        ..Default::default()
    }
}
