//! One fused group run on tract as the model's own ONNX nodes: what the GPU executor falls
//! back to for a group its kernels cannot compute, and the reference each GPU kernel is
//! checked against before it serves.
//!
//! The nodes are cut from the share's model and their constants (folded ones included)
//! become initializers, so the reference is exactly what the group means; it is never
//! rebuilt from the kernel signature, whose wiring is the thing being checked.

use std::collections::HashMap;
use std::sync::Arc;

use moirai_core::tensor::TensorValue;
use moirai_core::wire::data::TensorSpec;
use moirai_model::coarsen::FusedGroup;
use moirai_model::import::onnx::{value_info, OnnxModel};
use moirai_model::submodel::nodes_by_output;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::constants::initializer;
use super::values::{from_tract, to_tract};

/// Why a group cannot run on tract.
#[derive(Debug, thiserror::Error)]
#[error("group `{group}` on tract: {what}")]
pub struct GroupError {
    pub group: String,
    pub what: String,
}

/// A group compiled by tract.
pub struct GroupOnTract {
    pub group: String,
    plan: Arc<TypedRunnableModel>,
    /// The activations it reads, in order.
    pub inputs: Vec<TensorSpec>,
    /// What it writes, in the group's output order.
    pub outputs: Vec<TensorSpec>,
}

fn spec_of(model: &OnnxModel, t: &str) -> Option<TensorSpec> {
    let s = model.shape(t)?;
    Some(TensorSpec {
        name: t.to_string(),
        dtype: s.dtype,
        dims: s.dims.iter().map(|&d| d as u64).collect(),
    })
}

impl GroupOnTract {
    /// Cuts `g` out of `proto` (the share's model, imported as `model`) with the constants
    /// of the share, and compiles it.
    pub fn load(
        proto: &pb::ModelProto,
        model: &OnnxModel,
        g: &FusedGroup,
        consts: &HashMap<String, TensorValue>,
    ) -> Result<Self, GroupError> {
        let err = |what: String| GroupError {
            group: g.name.clone(),
            what,
        };
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| err("the model has no graph".into()))?;
        let by_output = nodes_by_output(graph);
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for &i in &g.nodes {
            let n = &model.nodes[i];
            let node = n
                .outputs
                .iter()
                .find(|o| !o.is_empty())
                .and_then(|o| by_output.get(o.as_str()))
                .ok_or_else(|| err(format!("node `{}` is not in the model", n.name)))?;
            nodes.push((*node).clone());
        }
        let mut initializers = Vec::with_capacity(g.params.len());
        for p in &g.params {
            let v = consts
                .get(p)
                .ok_or_else(|| err(format!("constant `{p}` has no value")))?;
            initializers.push(initializer(p, v));
        }
        let specs = |names: &[String]| -> Result<Vec<TensorSpec>, GroupError> {
            names
                .iter()
                .map(|t| spec_of(model, t).ok_or_else(|| err(format!("`{t}` has no static shape"))))
                .collect()
        };
        let inputs = specs(&g.inputs)?;
        let outputs = specs(&g.outputs)?;
        let info = |s: &TensorSpec| {
            let shape = moirai_core::kernel::TensorShape {
                dims: s.dims.iter().map(|&d| d as usize).collect(),
                dtype: s.dtype,
            };
            value_info(&s.name, &shape)
        };
        let sub = pb::ModelProto {
            ir_version: proto.ir_version,
            opset_import: proto.opset_import.clone(),
            producer_name: "moirai-agent".into(),
            graph: Some(pb::GraphProto {
                name: g.name.clone(),
                node: nodes,
                initializer: initializers,
                input: inputs.iter().map(info).collect(),
                output: outputs.iter().map(info).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&sub)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| err(format!("{e:#}")))?;
        Ok(GroupOnTract {
            group: g.name.clone(),
            plan,
            inputs,
            outputs,
        })
    }

    /// Runs on the group's activations (in [`GroupOnTract::inputs`] order).
    pub fn run(&self, inputs: &[TensorValue]) -> Result<Vec<TensorValue>, GroupError> {
        let err = |what: String| GroupError {
            group: self.group.clone(),
            what,
        };
        let feed = inputs
            .iter()
            .map(|v| {
                to_tract(v)
                    .map(TValue::from)
                    .map_err(|e| err(e.to_string()))
            })
            .collect::<Result<TVec<TValue>, _>>()?;
        let outs = self.plan.run(feed).map_err(|e| err(format!("{e:#}")))?;
        outs.into_iter()
            .map(|v| from_tract(v.into_tensor()).map_err(|e| err(e.to_string())))
            .collect()
    }
}
