//! An agent's share of a plan executed for real: its sub-model (its ONNX nodes with their
//! weights, see `moirai_model::submodel`) compiled by tract, fed the tensors it
//! receives, returning the tensors it sends.
//!
//! Every check happens when the assignment arrives, not at the first request: the memory the
//! share needs against the board's, every op against the executor's op set, and the
//! compilation itself.

use std::collections::HashMap;
use std::sync::Arc;

use moirai_core::tensor::TensorValue;
use moirai_core::wire::data::{SubgraphSpec, TensorSpec};

use super::values::{from_tract, to_tract};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Why a share is refused or a request fails.
#[derive(Debug, thiserror::Error)]
pub enum SubgraphError {
    #[error("epoch {epoch}: the share needs {need} (weights {weights}, activations {act} for {in_flight} requests in flight) but the board has {have}")]
    Memory {
        epoch: u64,
        need: String,
        weights: String,
        act: String,
        in_flight: u64,
        have: String,
    },
    #[error("epoch {epoch}: unsupported op(s) for the CPU executor: {ops}")]
    UnsupportedOps { epoch: u64, ops: String },
    #[error("epoch {epoch}: tract cannot compile the share: {message}")]
    Compile { epoch: u64, message: String },
    #[error("input `{0}` missing")]
    MissingInput(String),
    #[error("input `{name}` is {got}; the share takes {want}")]
    InputShape {
        name: String,
        got: String,
        want: String,
    },
    #[error("tensor `{name}`: {source}")]
    Value {
        name: String,
        #[source]
        source: super::values::ValueError,
    },
    #[error("tract: {0}")]
    Run(String),
}

/// Requests an agent is sized to hold at once (activations are counted this many times).
pub const IN_FLIGHT: u64 = 4;

/// Bytes for a message: B, KiB or MiB.
fn human(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

/// Refuses a share that does not fit `memory_bytes`.
pub fn check_memory(spec: &SubgraphSpec, memory_bytes: u64) -> Result<(), SubgraphError> {
    let need = spec.weight_bytes + spec.activation_bytes * IN_FLIGHT;
    if need > memory_bytes {
        return Err(SubgraphError::Memory {
            epoch: spec.epoch,
            need: human(need),
            weights: human(spec.weight_bytes),
            act: human(spec.activation_bytes * IN_FLIGHT),
            in_flight: IN_FLIGHT,
            have: human(memory_bytes),
        });
    }
    Ok(())
}

/// Refuses a sub-model with an op the executor does not implement, naming each.
pub fn check_ops(model: &pb::ModelProto, epoch: u64) -> Result<(), SubgraphError> {
    let onnx = tract_onnx::onnx();
    let mut bad: Vec<String> = Vec::new();
    for n in model.graph.iter().flat_map(|g| &g.node) {
        let default = n.domain.is_empty() || n.domain == "ai.onnx";
        if !default || !onnx.op_register.0.contains_key(&n.op_type) {
            let what = format!("{} (node `{}`)", n.op_type, n.name);
            if !bad.contains(&what) {
                bad.push(what);
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(SubgraphError::UnsupportedOps {
            epoch,
            ops: bad.join(", "),
        })
    }
}

/// Tensors by name: what a share writes for one request.
pub type NamedTensors = Vec<(String, TensorValue)>;

/// Checks that `inputs` has each tensor of `specs` with its element type and shape.
pub fn check_inputs<'a>(
    specs: &'a [TensorSpec],
    inputs: &'a HashMap<String, TensorValue>,
) -> Result<Vec<(&'a TensorSpec, &'a TensorValue)>, SubgraphError> {
    specs
        .iter()
        .map(|spec| {
            let v = inputs
                .get(&spec.name)
                .ok_or_else(|| SubgraphError::MissingInput(spec.name.clone()))?;
            if v.dtype() != spec.dtype || v.dims != spec.dims {
                return Err(SubgraphError::InputShape {
                    name: spec.name.clone(),
                    got: format!("{:?}{:?} ({} values)", v.dtype(), v.dims, v.elements()),
                    want: format!("{:?}{:?}", spec.dtype, spec.dims),
                });
            }
            Ok((spec, v))
        })
        .collect()
}

/// A compiled share.
pub struct SubgraphExec {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<String>,
}

impl SubgraphExec {
    /// Checks and compiles the sub-model of `spec`.
    pub fn load(model: &pb::ModelProto, spec: &SubgraphSpec) -> Result<Self, SubgraphError> {
        check_ops(model, spec.epoch)?;
        let compile = |e: TractError| SubgraphError::Compile {
            epoch: spec.epoch,
            message: format!("{e:#}"),
        };
        let plan = tract_onnx::onnx()
            .model_for_proto_model(model)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(compile)?;
        Ok(SubgraphExec {
            plan,
            inputs: spec.inputs.clone(),
            outputs: spec.outputs.iter().map(|o| o.tensor.name.clone()).collect(),
        })
    }

    /// Runs one request: `inputs` by tensor name; returns the outputs by name.
    pub fn run(
        &self,
        inputs: &HashMap<String, TensorValue>,
    ) -> Result<NamedTensors, SubgraphError> {
        let mut feed: TVec<TValue> = TVec::new();
        for (spec, v) in check_inputs(&self.inputs, inputs)? {
            let t = to_tract(v).map_err(|source| SubgraphError::Value {
                name: spec.name.clone(),
                source,
            })?;
            feed.push(t.into());
        }
        let outs = self
            .plan
            .run(feed)
            .map_err(|e| SubgraphError::Run(format!("{e:#}")))?;
        outs.into_iter()
            .zip(&self.outputs)
            .map(|(v, name)| {
                let value = from_tract(v.into_tensor()).map_err(|source| SubgraphError::Value {
                    name: name.clone(),
                    source,
                })?;
                Ok((name.clone(), value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(weight_bytes: u64, activation_bytes: u64) -> SubgraphSpec {
        SubgraphSpec {
            epoch: 1,
            model: "m".into(),
            model_sha256: [0; 32],
            nodes: vec!["y".into()],
            inputs: vec![],
            outputs: vec![],
            weight_bytes,
            activation_bytes,
            predicted_ms: 1.0,
        }
    }

    #[test]
    fn a_share_larger_than_the_board_is_refused_with_the_figures() {
        let e = check_memory(&spec(3 << 20, 1 << 20), 4 << 20).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("needs 7.0 MiB"), "{msg}");
        assert!(msg.contains("has 4.0 MiB"), "{msg}");
        assert!(check_memory(&spec(3 << 20, 1 << 18), 4 << 20).is_ok());
    }

    #[test]
    fn an_op_outside_the_executor_is_refused_by_name() {
        let model = pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![
                    pb::NodeProto {
                        name: "ok".into(),
                        op_type: "Relu".into(),
                        ..Default::default()
                    },
                    pb::NodeProto {
                        name: "weird".into(),
                        op_type: "FancyAttention".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let msg = check_ops(&model, 2).unwrap_err().to_string();
        assert!(msg.contains("FancyAttention (node `weird`)"), "{msg}");
        assert!(!msg.contains("Relu"), "{msg}");
    }
}
