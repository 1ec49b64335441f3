//! The CPU executor: a fused kernel as a small ONNX graph run by tract.
//!
//! Boards without a wgpu adapter run their kernels here, and the kernel tests use it as the
//! reference. The graph is built in memory from the signature with the same wiring convention
//! as the GPU kernels ([`crate::kernels::wire`]); integer shape-like inputs (Reshape shapes,
//! Squeeze axes, Split sizes) become constants derived from the boundary shapes, views become
//! one Reshape each. Groups that are not chains (the CPU rules fuse a written-out GELU or
//! LayerNorm) carry their edges in the signature's DAG and become their nodes as they are.

use std::sync::Arc;

use moirai_core::kernel::{
    AttrValue, DType, Dag, FusedNode, KernelSignature, Operand, TensorShape,
};
use moirai_model::import::onnx::value_info;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::host::{input_roles, HostData, HostTensor, InputRole};
use crate::kernels::{
    absent_inputs, attr_i, attr_is, axis, node_inputs, onnx_position, wire, KernelError,
};

/// What went wrong building or running a CPU kernel.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    // The wiring error names the kernel already.
    #[error("{source}")]
    Wiring {
        kernel: String,
        #[source]
        source: KernelError,
    },
    #[error("kernel {kernel}: {what}")]
    Unsupported { kernel: String, what: String },
    #[error("kernel {kernel}: tract: {message}")]
    Tract { kernel: String, message: String },
}

/// A fused kernel compiled by tract.
pub struct CpuKernel {
    pub signature: KernelSignature,
    plan: Arc<TypedRunnableModel>,
    /// Signature inputs fed at run time (the others are baked-in constants).
    runtime_inputs: Vec<usize>,
}

fn i64_initializer(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: vec![values.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn attribute(name: &str, v: &AttrValue) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as A;
    let mut a = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match v {
        AttrValue::Int(i) => {
            a.i = *i;
            a.r#type = A::Int as i32;
        }
        AttrValue::Ints(v) => {
            a.ints = v.clone();
            a.r#type = A::Ints as i32;
        }
        AttrValue::Float(f) => {
            a.f = *f;
            a.r#type = A::Float as i32;
        }
        AttrValue::Floats(v) => {
            a.floats = v.clone();
            a.r#type = A::Floats as i32;
        }
        AttrValue::Str(s) => {
            a.s = s.as_bytes().to_vec();
            a.r#type = A::String as i32;
        }
    }
    a
}

/// A signature node's attributes as ONNX attributes (without the coarsener's own).
fn onnx_attributes(node: &FusedNode) -> Vec<pb::AttributeProto> {
    node.attrs
        .iter()
        .filter(|(k, _)| k.as_str() != moirai_model::coarsen::ABSENT_INPUTS)
        .map(|(k, v)| attribute(k, v))
        .collect()
}

/// Puts the empty names of absent optional inputs back between the present ones.
fn absent_as_empty(node: &FusedNode, ins: &mut Vec<String>) {
    for p in absent_inputs(node) {
        if p <= ins.len() {
            ins.insert(p, String::new());
        }
    }
}

fn is_view(op: &str) -> bool {
    matches!(op, "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze")
}

fn f32_initializer(name: &str, t: &HostTensor) -> Option<pb::TensorProto> {
    let HostData::F32(v) = &t.data else {
        return None;
    };
    Some(pb::TensorProto {
        name: name.to_string(),
        dims: t.dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: v.clone(),
        ..Default::default()
    })
}

/// A constant operand the boundary shapes determine: operand `pos` of chain node `i`
/// (Split sizes, Expand and ConstantOfShape shapes, Tile repeats). `None`: only its value says.
fn derived_operand(
    sig: &KernelSignature,
    wiring: &[Vec<usize>],
    i: usize,
    pos: usize,
) -> Option<Vec<i64>> {
    let node = &sig.nodes[i];
    let last = i + 1 == sig.nodes.len();
    let out = &sig.outputs.first()?.dims;
    let dims = |d: &[usize]| d.iter().map(|&x| x as i64).collect::<Vec<i64>>();
    match (node.op_type.as_str(), pos) {
        ("Split", 1) if last => {
            let a = axis(attr_i(node, "axis", 0), out.len());
            sig.outputs
                .iter()
                .map(|t| t.dims.get(a).map(|&d| d as i64))
                .collect()
        }
        // The node's own shape when the signature says it (in the middle of a chain too).
        ("Expand", 1) | ("ConstantOfShape", 0) => match sig.shapes.get(i) {
            Some(s) => Some(dims(&s.dims)),
            None if last => Some(dims(out)),
            None => None,
        },
        ("Tile", 1) if last && i == 0 => {
            let x = &sig.inputs[*wiring[0].first()?].dims;
            (x.len() == out.len()).then(|| {
                x.iter()
                    .zip(out)
                    .map(|(&a, &b)| b.checked_div(a).map_or(1, |r| r as i64))
                    .collect()
            })
        }
        _ => None,
    }
}

/// `value` as an initializer of `shape`'s element type, if it has that shape.
fn initializer(name: &str, shape: &TensorShape, value: &HostTensor) -> Option<pb::TensorProto> {
    use pb::tensor_proto::DataType as D;
    if value.dims.iter().product::<usize>() != shape.elements() {
        return None;
    }
    let floats: Vec<f32> = match &value.data {
        HostData::F32(v) => v.clone(),
        HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    };
    let ints: Vec<i64> = match &value.data {
        HostData::F32(v) => v.iter().map(|&x| x as i64).collect(),
        HostData::I64(v) => v.clone(),
    };
    let mut t = pb::TensorProto {
        name: name.to_string(),
        dims: shape.dims.iter().map(|&d| d as i64).collect(),
        ..Default::default()
    };
    match shape.dtype {
        DType::F32 => {
            t.data_type = D::Float as i32;
            t.float_data = floats;
        }
        DType::F16 => {
            t.data_type = D::Float16 as i32;
            t.int32_data = floats
                .iter()
                .map(|&x| i32::from(f16::from_f32(x).to_bits()))
                .collect();
        }
        DType::I64 => {
            t.data_type = D::Int64 as i32;
            t.int64_data = ints;
        }
        DType::I32 | DType::I8 | DType::U8 | DType::Bool => {
            t.data_type = match shape.dtype {
                DType::I32 => D::Int32,
                DType::I8 => D::Int8,
                DType::U8 => D::Uint8,
                _ => D::Bool,
            } as i32;
            t.int32_data = ints
                .iter()
                .map(|&x| {
                    if shape.dtype == DType::Bool {
                        i32::from(x != 0)
                    } else {
                        x as i32
                    }
                })
                .collect();
        }
    }
    Some(t)
}

/// The opset the rebuilt models declare. A signature does not say which opset its model
/// used, so every node is written in this opset's form ([`to_opset`]): reductions, Split,
/// Squeeze, Unsqueeze, Slice, Pad and Clip take their axes, sizes and bounds as inputs.
const OPSET: i64 = 18;

/// GroupNormalization's scale and bias are per group before opset 21 and per channel from
/// it; the scale's length says which form the model used.
fn opset_of(sig: &KernelSignature) -> i64 {
    let Ok(operands) = node_inputs(sig) else {
        return OPSET;
    };
    let per_channel = sig.nodes.iter().zip(&operands).any(|(n, ops)| {
        let shape = |k: usize| ops.get(k).copied().flatten().map(|j| &sig.inputs[j]);
        n.op_type == "GroupNormalization"
            && match (shape(0), shape(1)) {
                (Some(x), Some(scale)) => {
                    x.dims.get(1) == Some(&scale.elements())
                        && attr_i(n, "num_groups", 0) as usize != scale.elements()
                }
                _ => false,
            }
    });
    if per_channel {
        21
    } else {
        OPSET
    }
}

/// Removes attribute `name`, returning it.
fn take_attr(n: &mut pb::NodeProto, name: &str) -> Option<pb::AttributeProto> {
    let at = n.attribute.iter().position(|a| a.name == name)?;
    Some(n.attribute.remove(at))
}

/// Rewrites a node of an older opset's form into [`OPSET`]'s: the attributes that became
/// inputs (reduction and squeeze axes, Split sizes, Slice bounds, Pad widths and value, Clip
/// bounds) become initializers named after the node.
fn to_opset(n: &mut pb::NodeProto, inits: &mut Vec<pb::TensorProto>) {
    // Attribute `attr` (a list of ints, or a float) as input `pos`, absent ones before it "".
    fn as_input(n: &mut pb::NodeProto, inits: &mut Vec<pb::TensorProto>, attr: &str, pos: usize) {
        let Some(a) = take_attr(n, attr) else {
            return;
        };
        let name = format!("{}_{attr}", n.name);
        inits.push(
            if a.r#type == pb::attribute_proto::AttributeType::Float as i32 {
                pb::TensorProto {
                    name: name.clone(),
                    data_type: pb::tensor_proto::DataType::Float as i32,
                    float_data: vec![a.f],
                    ..Default::default()
                }
            } else {
                i64_initializer(&name, &a.ints)
            },
        );
        n.input.resize(pos.max(n.input.len()), String::new());
        n.input.push(name);
    }
    if n.input.len() != 1 {
        return;
    }
    match n.op_type.as_str() {
        o if o.starts_with("Reduce") => as_input(n, inits, "axes", 1),
        "Squeeze" | "Unsqueeze" => as_input(n, inits, "axes", 1),
        "Split" => as_input(n, inits, "split", 1),
        "Slice" => {
            as_input(n, inits, "starts", 1);
            as_input(n, inits, "ends", 2);
            as_input(n, inits, "axes", 3);
        }
        "Pad" => {
            as_input(n, inits, "pads", 1);
            as_input(n, inits, "value", 2);
        }
        "Clip" => {
            as_input(n, inits, "min", 1);
            as_input(n, inits, "max", 2);
        }
        _ => {}
    }
}

/// Refuses a node tract would run with other semantics than the model's, or that the
/// signature cannot describe.
fn refuse_unfaithful(node: &FusedNode) -> Result<(), &'static str> {
    match node.op_type.as_str() {
        // The importer keeps no tensor attributes, so the fill value is unknown.
        "ConstantOfShape" => {
            Err("ConstantOfShape: its value (a tensor attribute) is not in the signature")
        }
        // SpaceToDepth's `mode` (opset 28) is ignored by tract 0.23, which does DCR.
        "SpaceToDepth" if crate::kernels::attr_s(node, "mode").is_some_and(|m| m != "DCR") => {
            Err("SpaceToDepth in CRD mode (tract 0.23 computes DCR)")
        }
        _ => Ok(()),
    }
}

/// Inputs tract needs as constants (BatchNormalization statistics).
fn baked(role: InputRole) -> bool {
    matches!(role, InputRole::BnParam | InputRole::Variance)
}

/// The in-memory ONNX model of a signature, and which inputs stay runtime inputs. `values`
/// supplies the inputs that must be constants (see [`CpuKernel::build_with`]).
pub fn onnx_model(
    sig: &KernelSignature,
    values: &[HostTensor],
) -> Result<(pb::ModelProto, Vec<usize>), CpuError> {
    if let Some(dag) = &sig.dag {
        return dag_model(sig, dag, values);
    }
    let kernel = sig.pattern();
    let wiring = wire(sig).map_err(|source| CpuError::Wiring {
        kernel: kernel.clone(),
        source,
    })?;
    let roles = input_roles(sig);
    let unsupported = |what: String| CpuError::Unsupported {
        kernel: kernel.clone(),
        what,
    };
    let out_dims = &sig.outputs[0].dims;
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut prev: Vec<String> = Vec::new();
    let last = sig.nodes.len() - 1;
    for (i, node) in sig.nodes.iter().enumerate() {
        let mut ins: Vec<String> = Vec::new();
        if i > 0 {
            ins.push(prev[0].clone());
        }
        let mut op = node.op_type.clone();
        let mut attrs = onnx_attributes(node);
        refuse_unfaithful(node).map_err(|what| unsupported(what.into()))?;
        if is_view(&op) {
            // Target shape: the output if this is the last node, else (before a Transpose)
            // the Transpose's input shape.
            let rest_keeps_shape = sig.nodes[i + 1..]
                .iter()
                .all(|n| is_view(&n.op_type) || crate::kernels::epilogue::is_unary(&n.op_type));
            // The signature says each node's shape; older signatures leave it to be
            // inferred from the boundary.
            let target: Vec<usize> = if let Some(s) = sig.shapes.get(i) {
                s.dims.clone()
            } else if i == 0 && op == "Flatten" {
                let d = &sig.inputs[wiring[0][0]].dims;
                let a = attr_i(node, "axis", 1);
                let a =
                    if a < 0 { a + d.len() as i64 } else { a }.clamp(0, d.len() as i64) as usize;
                vec![d[..a].iter().product(), d[a..].iter().product()]
            } else if i == last || rest_keeps_shape {
                out_dims.clone()
            } else if sig.nodes[..=i].iter().all(|n| is_view(&n.op_type))
                && matches!(
                    sig.nodes.get(i + 1).map(|n| n.op_type.as_str()),
                    Some("MatMul" | "Gemm")
                )
            {
                crate::kernels::matmul_operand_dims(sig, &wiring)
                    .ok_or_else(|| unsupported(format!("cannot infer the shape after {op}")))?
            } else if sig.nodes[i + 1].op_type == "Transpose"
                && sig.nodes[i + 2..]
                    .iter()
                    .all(|n| crate::kernels::epilogue::is_elementwise(&n.op_type))
            {
                let t = &sig.nodes[i + 1];
                let rank = out_dims.len();
                let perm: Vec<usize> = match attr_is(t, "perm") {
                    Some(p) => p.iter().map(|&a| axis(a, rank)).collect(),
                    None => (0..rank).rev().collect(),
                };
                let mut inp = vec![0; rank];
                for (o, &p) in perm.iter().enumerate() {
                    inp[p] = out_dims[o];
                }
                inp
            } else {
                return Err(unsupported(format!("cannot infer the shape after {op}")));
            };
            if i == 0 {
                let j = wiring[0][0];
                ins.push(format!("in{j}"));
            }
            let name = format!("shape{i}");
            let t: Vec<i64> = target.iter().map(|&d| d as i64).collect();
            inits.push(i64_initializer(&name, &t));
            ins.push(name);
            op = "Reshape".into();
            // The target is the literal shape: a 0 in it is a zero-sized axis, not "copy".
            attrs = vec![attribute("allowzero", &AttrValue::Int(1))];
        } else {
            for (k, &j) in wiring[i].iter().enumerate() {
                // A chained node's first ONNX operand is the previous output.
                let pos = onnx_position(node, k + usize::from(i > 0));
                if op == "Dropout" && pos == 2 {
                    let training = values.get(j).is_some_and(|v| match &v.data {
                        HostData::F32(x) => x.iter().any(|&x| x != 0.0),
                        HostData::I64(x) => x.iter().any(|&x| x != 0),
                    });
                    if training {
                        return Err(unsupported(
                            "Dropout in training mode (a random mask)".into(),
                        ));
                    }
                }
                if roles[j] == InputRole::ShapeConst && op != "Gather" {
                    let name = format!("c{i}_{pos}");
                    let init = match derived_operand(sig, &wiring, i, pos) {
                        Some(v) => i64_initializer(&name, &v),
                        None => values
                            .get(j)
                            .and_then(|v| initializer(&name, &sig.inputs[j], v))
                            .ok_or_else(|| {
                                unsupported(format!(
                                    "operand {pos} of {op} must be a constant, and no value of shape {:?} was given",
                                    sig.inputs[j].dims
                                ))
                            })?,
                    };
                    inits.push(init);
                    ins.push(name);
                    continue;
                }
                if baked(roles[j]) {
                    let name = format!("in{j}");
                    let init = values
                        .get(j)
                        .and_then(|v| f32_initializer(&name, v))
                        .ok_or_else(|| {
                            unsupported(format!("no f32 value for constant input {j}"))
                        })?;
                    if !inits.iter().any(|t: &pb::TensorProto| t.name == name) {
                        inits.push(init);
                    }
                }
                ins.push(format!("in{j}"));
            }
            absent_as_empty(node, &mut ins);
            // Split sizes come from the outputs: exact for uneven splits too, whichever form
            // (input, `split` or `num_outputs` attribute) the model used.
            if op == "Split" && i == last {
                attrs.retain(|a| a.name != "split" && a.name != "num_outputs");
                if ins.len() == 1 {
                    if let Some(v) = derived_operand(sig, &wiring, i, 1) {
                        let name = format!("c{i}_1");
                        inits.push(i64_initializer(&name, &v));
                        ins.push(name);
                    }
                }
            }
        }
        let outs: Vec<String> = if i == last {
            (0..sig.outputs.len()).map(|o| format!("out{o}")).collect()
        } else {
            vec![format!("n{i}")]
        };
        // tract reduces numbers only: ReduceMax/ReduceMin of booleans (any / all) go
        // through uint8, whose empty max (0) and min (255) are the identities of any and all.
        let bool_reduce = matches!(op.as_str(), "ReduceMax" | "ReduceMin")
            && i == 0
            && wiring[0]
                .first()
                .is_some_and(|&j| sig.inputs[j].dtype == DType::Bool);
        let cast = |name: String, input: String, output: String, to: pb::tensor_proto::DataType| {
            pb::NodeProto {
                input: vec![input],
                output: vec![output],
                name,
                op_type: "Cast".into(),
                attribute: vec![attribute("to", &AttrValue::Int(to as i64))],
                ..Default::default()
            }
        };
        let node_outs = if bool_reduce {
            let as_int = format!("n{i}_u8");
            nodes.push(cast(
                format!("node{i}_in"),
                std::mem::replace(&mut ins[0], as_int.clone()),
                as_int,
                pb::tensor_proto::DataType::Uint8,
            ));
            vec![format!("n{i}_reduced")]
        } else {
            outs.clone()
        };
        nodes.push(pb::NodeProto {
            input: ins,
            output: node_outs.clone(),
            name: format!("node{i}"),
            op_type: op,
            attribute: attrs,
            ..Default::default()
        });
        if bool_reduce {
            nodes.push(cast(
                format!("node{i}_out"),
                node_outs[0].clone(),
                outs[0].clone(),
                pb::tensor_proto::DataType::Bool,
            ));
        }
        prev = outs;
    }
    Ok(assemble(sig, nodes, inits, &roles))
}

/// The model of a group that is not a chain: its nodes as they are, wired by the DAG.
/// Shape-like operands have no value in a signature, so a DAG that needs one (a Reshape whose
/// target is not the output's) is refused; the groups the CPU rules fuse as DAGs (written-out
/// GELU, LayerNorm, masking) have none.
fn dag_model(
    sig: &KernelSignature,
    dag: &Dag,
    values: &[HostTensor],
) -> Result<(pb::ModelProto, Vec<usize>), CpuError> {
    let kernel = sig.pattern();
    let unsupported = |what: String| CpuError::Unsupported {
        kernel: kernel.clone(),
        what,
    };
    if dag.operands.len() != sig.nodes.len() || dag.results.len() != sig.outputs.len() {
        return Err(unsupported(
            "DAG does not match the nodes and outputs".into(),
        ));
    }
    let roles = input_roles(sig);
    let name = |o: &Operand| match *o {
        Operand::Input(j) => format!("in{j}"),
        Operand::Node { node, output } => format!("n{node}_{output}"),
    };
    // Each node has as many outputs as anything reads.
    let mut n_out = vec![1u32; sig.nodes.len()];
    for o in dag.operands.iter().flatten().chain(&dag.results) {
        if let Operand::Node { node, output } = *o {
            let slot = n_out
                .get_mut(node as usize)
                .ok_or_else(|| unsupported(format!("no node {node}")))?;
            *slot = (*slot).max(output + 1);
        }
    }
    let mut nodes = Vec::new();
    let mut inits: Vec<pb::TensorProto> = Vec::new();
    for (i, node) in sig.nodes.iter().enumerate() {
        let mut ins = Vec::new();
        for o in &dag.operands[i] {
            if let Operand::Input(j) = *o {
                let j = j as usize;
                match roles.get(j) {
                    None => return Err(unsupported(format!("no input {j}"))),
                    Some(InputRole::ShapeConst) => {
                        return Err(unsupported(format!(
                            "a shape operand of {} inside a fused DAG",
                            node.op_type
                        )))
                    }
                    Some(&r) if baked(r) => {
                        let n = format!("in{j}");
                        let init = values
                            .get(j)
                            .and_then(|v| f32_initializer(&n, v))
                            .ok_or_else(|| {
                                unsupported(format!("no f32 value for constant input {j}"))
                            })?;
                        if !inits.iter().any(|t| t.name == n) {
                            inits.push(init);
                        }
                    }
                    Some(_) => {}
                }
            }
            ins.push(name(o));
        }
        absent_as_empty(node, &mut ins);
        nodes.push(pb::NodeProto {
            input: ins,
            output: (0..n_out[i]).map(|o| format!("n{i}_{o}")).collect(),
            name: format!("node{i}"),
            op_type: node.op_type.clone(),
            attribute: onnx_attributes(node),
            ..Default::default()
        });
    }
    // Graph outputs by their kernel names.
    for (o, r) in dag.results.iter().enumerate() {
        nodes.push(pb::NodeProto {
            input: vec![name(r)],
            output: vec![format!("out{o}")],
            name: format!("result{o}"),
            op_type: "Identity".into(),
            ..Default::default()
        });
    }
    Ok(assemble(sig, nodes, inits, &roles))
}

/// The model around `nodes`: graph inputs (the runtime inputs those nodes read), outputs
/// `out0..`, the initializers.
fn assemble(
    sig: &KernelSignature,
    mut nodes: Vec<pb::NodeProto>,
    mut inits: Vec<pb::TensorProto>,
    roles: &[InputRole],
) -> (pb::ModelProto, Vec<usize>) {
    for n in &mut nodes {
        to_opset(n, &mut inits);
    }
    let runtime: Vec<usize> = (0..sig.inputs.len())
        .filter(|&j| roles[j] != InputRole::ShapeConst && !baked(roles[j]))
        .filter(|&j| {
            nodes
                .iter()
                .any(|n| n.input.iter().any(|s| *s == format!("in{j}")))
        })
        .collect();
    let graph = pb::GraphProto {
        node: nodes,
        name: "kernel".into(),
        initializer: inits,
        input: runtime
            .iter()
            .map(|&j| value_info(&format!("in{j}"), &sig.inputs[j]))
            .collect(),
        output: sig
            .outputs
            .iter()
            .enumerate()
            .map(|(o, t)| value_info(&format!("out{o}"), t))
            .collect(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset_of(sig),
        }],
        producer_name: "moirai-agent".into(),
        graph: Some(graph),
        ..Default::default()
    };
    (model, runtime)
}

impl CpuKernel {
    /// Builds with sample values for the inputs tract needs constant (BatchNormalization
    /// statistics): right for profiling; to execute real weights use [`CpuKernel::build_with`].
    pub fn build(sig: &KernelSignature) -> Result<Self, CpuError> {
        Self::build_with(sig, &super::host::sample_inputs(sig, 1))
    }

    /// Builds with `values[j]` baked in for every input tract needs constant; the other
    /// entries of `values` are ignored (they are fed at run time).
    pub fn build_with(sig: &KernelSignature, values: &[HostTensor]) -> Result<Self, CpuError> {
        let kernel = sig.pattern();
        let tract_err = |e: TractError| CpuError::Tract {
            kernel: kernel.clone(),
            message: format!("{e:#}"),
        };
        let (proto, runtime_inputs) = onnx_model(sig, values)?;
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(tract_err)?;
        Ok(CpuKernel {
            signature: sig.clone(),
            plan,
            runtime_inputs,
        })
    }

    /// Runs on all signature inputs (constants among them are ignored: they are baked in).
    /// Every output comes back as `f32`; [`CpuKernel::run_exact`] keeps integers exact.
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, CpuError> {
        Ok(self
            .run_exact(inputs)?
            .into_iter()
            .map(|(t, _)| match t.data {
                HostData::I64(v) => {
                    HostTensor::f32(&t.dims, v.into_iter().map(|x| x as f32).collect())
                }
                HostData::F32(_) => t,
            })
            .collect())
    }

    /// Runs like [`CpuKernel::run`], but integer and boolean outputs come back as `i64`
    /// (exact, where `f32` would round beyond 2^24), each with the element type tract gave it
    /// (`None`: one a signature cannot name, e.g. `f64`).
    pub fn run_exact(
        &self,
        inputs: &[HostTensor],
    ) -> Result<Vec<(HostTensor, Option<DType>)>, CpuError> {
        let kernel = self.signature.pattern();
        let tract_err = |e: TractError| CpuError::Tract {
            kernel: kernel.clone(),
            message: format!("{e:#}"),
        };
        let mut feed: TVec<TValue> = TVec::new();
        for &j in &self.runtime_inputs {
            let h = inputs.get(j).ok_or_else(|| CpuError::Unsupported {
                kernel: kernel.clone(),
                what: format!("input {j} missing"),
            })?;
            feed.push(
                tract_tensor(h, self.signature.inputs[j].dtype)
                    .map_err(tract_err)?
                    .into(),
            );
        }
        let outs = self.plan.run(feed).map_err(tract_err)?;
        outs.into_iter()
            .map(|v| {
                let t = v.into_tensor();
                let dims = t.shape().to_vec();
                let dtype = signature_dtype(t.datum_type());
                let host = if t.datum_type().is_float() {
                    let t = t.cast_to::<f32>().map_err(tract_err)?;
                    let v = t.to_plain_array_view::<f32>().map_err(tract_err)?;
                    HostTensor::f32(&dims, v.iter().copied().collect())
                } else {
                    let t = t.cast_to::<i64>().map_err(tract_err)?;
                    let v = t.to_plain_array_view::<i64>().map_err(tract_err)?;
                    HostTensor::i64(&dims, v.iter().copied().collect())
                };
                Ok((host, dtype))
            })
            .collect()
    }
}

/// The signature's name for a tract element type, if it has one.
fn signature_dtype(d: DatumType) -> Option<DType> {
    Some(match d {
        DatumType::F32 => DType::F32,
        DatumType::F16 => DType::F16,
        DatumType::I64 => DType::I64,
        DatumType::I32 => DType::I32,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

/// A host tensor as the tract tensor of the signature's element type: the graph input is
/// declared with that type, and tract refuses a tensor of another. Host integers are `i64` and
/// host floats `f32` whatever the signature says, so they are converted here.
fn tract_tensor(h: &HostTensor, dtype: DType) -> TractResult<Tensor> {
    fn ints<T: Datum + Copy>(
        h: &HostTensor,
        v: &[i64],
        f: impl Fn(i64) -> T,
    ) -> TractResult<Tensor> {
        let v: Vec<T> = v.iter().map(|&x| f(x)).collect();
        Tensor::from_shape(&h.dims, &v)
    }
    match (&h.data, dtype) {
        (HostData::F32(v), DType::F16) => {
            let v: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            Tensor::from_shape(&h.dims, &v)
        }
        (HostData::F32(v), _) => Tensor::from_shape(&h.dims, v),
        (HostData::I64(v), DType::Bool) => ints(h, v, |x| x != 0),
        (HostData::I64(v), DType::I32) => ints(h, v, |x| x as i32),
        (HostData::I64(v), DType::I8) => ints(h, v, |x| x as i8),
        (HostData::I64(v), DType::U8) => ints(h, v, |x| x as u8),
        (HostData::I64(v), DType::F32) => ints(h, v, |x| x as f32),
        (HostData::I64(v), DType::F16) => ints(h, v, |x| f16::from_f32(x as f32)),
        (HostData::I64(v), DType::I64) => Tensor::from_shape(&h.dims, v),
    }
}

#[cfg(test)]
mod tests {
    use moirai_core::kernel::{Dag, FusedNode, KernelClass, Operand, TensorShape};

    use super::*;

    fn f32s(dims: &[usize], n: usize) -> Vec<TensorShape> {
        vec![
            TensorShape {
                dims: dims.to_vec(),
                dtype: DType::F32,
            };
            n
        ]
    }

    fn node(op: &str) -> FusedNode {
        FusedNode {
            op_type: op.into(),
            attrs: Default::default(),
        }
    }

    /// SiLU written out, `x * Sigmoid(x)`: the Mul reads the kernel input a second time, which
    /// no chain can say.
    fn silu() -> KernelSignature {
        KernelSignature {
            class: KernelClass::Eltwise,
            nodes: vec![node("Sigmoid"), node("Mul")],
            inputs: f32s(&[2, 5], 1),
            outputs: f32s(&[2, 5], 1),
            flops: 0,
            bytes: 0,
            dag: Some(Dag {
                operands: vec![
                    vec![Operand::Input(0)],
                    vec![Operand::Input(0), Operand::Node { node: 0, output: 0 }],
                ],
                results: vec![Operand::Node { node: 1, output: 0 }],
            }),
            shapes: Vec::new(),
        }
    }

    #[test]
    fn a_fused_dag_runs_as_its_nodes() {
        let sig = silu();
        let x: Vec<f32> = (0..10).map(|i| i as f32 * 0.7 - 3.0).collect();
        let k = CpuKernel::build(&sig).expect("the DAG compiles");
        let out = k.run(&[HostTensor::f32(&[2, 5], x.clone())]).expect("runs");
        let HostData::F32(y) = &out[0].data else {
            panic!("f32 out")
        };
        for (a, b) in x.iter().zip(y) {
            let want = a / (1.0 + (-a).exp());
            assert!((want - b).abs() < 1e-5, "{a}: {b} vs {want}");
        }
        // The GPU generators are for chains: the DAG is refused with a reason, not miswired.
        let e = crate::kernels::wire(&sig).unwrap_err().to_string();
        assert!(e.contains("not a chain"), "{e}");
    }

    #[test]
    fn narrow_integer_inputs_are_fed_in_their_own_type_and_come_back_exact() {
        // Host integers are i64; tract refuses an i64 tensor for an input declared int8.
        let mut sig = silu();
        sig.nodes = vec![node("Neg")];
        sig.dag = None;
        sig.inputs[0].dtype = DType::I8;
        sig.outputs[0].dtype = DType::I8;
        let k = CpuKernel::build(&sig).expect("compiles");
        let x: Vec<i64> = (0..10).map(|i| i * 12 - 60).collect();
        let out = k
            .run_exact(&[HostTensor::i64(&[2, 5], x.clone())])
            .expect("runs");
        let want: Vec<i64> = x.iter().map(|v| -v).collect();
        assert_eq!(out, vec![(HostTensor::i64(&[2, 5], want), Some(DType::I8))]);
        // Large int64 values stay exact, where f32 would round them.
        sig.inputs[0].dtype = DType::I64;
        sig.outputs[0].dtype = DType::I64;
        let k = CpuKernel::build(&sig).expect("compiles");
        let big: Vec<i64> = (0..10).map(|i| (1i64 << 40) + i).collect();
        let out = k
            .run_exact(&[HostTensor::i64(&[2, 5], big.clone())])
            .expect("runs");
        let want: Vec<i64> = big.iter().map(|v| -v).collect();
        assert_eq!(out[0].0, HostTensor::i64(&[2, 5], want));
    }

    #[test]
    fn a_dag_with_a_shape_operand_is_refused_by_name() {
        let mut sig = silu();
        sig.nodes[0] = node("Reshape");
        sig.inputs.push(TensorShape {
            dims: vec![2],
            dtype: DType::I64,
        });
        sig.dag = Some(Dag {
            operands: vec![
                vec![Operand::Input(0), Operand::Input(1)],
                vec![Operand::Input(0), Operand::Node { node: 0, output: 0 }],
            ],
            results: vec![Operand::Node { node: 1, output: 0 }],
        });
        let e = CpuKernel::build(&sig).err().expect("refused").to_string();
        assert!(e.contains("shape operand of Reshape"), "{e}");
    }

    fn shape(dims: &[usize], dtype: DType) -> TensorShape {
        TensorShape {
            dims: dims.to_vec(),
            dtype,
        }
    }

    /// One node with these attributes, inputs and outputs, as a chain signature.
    fn one(
        op: &str,
        attrs: &[(&str, AttrValue)],
        inputs: Vec<TensorShape>,
        outputs: Vec<TensorShape>,
    ) -> KernelSignature {
        KernelSignature {
            class: KernelClass::Other,
            nodes: vec![FusedNode {
                op_type: op.into(),
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            }],
            inputs,
            outputs,
            flops: 0,
            bytes: 0,
            dag: None,
            shapes: Vec::new(),
        }
    }

    fn run(sig: &KernelSignature, values: &[HostTensor]) -> Vec<HostTensor> {
        let k = CpuKernel::build_with(sig, values).unwrap_or_else(|e| panic!("{e}"));
        k.run_exact(values)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    fn iota(dims: &[usize]) -> HostTensor {
        let n: usize = dims.iter().product();
        HostTensor::f32(dims, (0..n).map(|i| i as f32).collect())
    }

    /// Reduction axes as an operand (opset 18) were refused as an "integer operand"; as an
    /// attribute (opset 13 and before) they are turned into the operand. Non-last and
    /// negative axes, with and without keepdims.
    #[test]
    fn reductions_take_their_axes_from_the_values_or_the_attribute() {
        let f = DType::F32;
        let x = iota(&[2, 3, 2]);
        let sum = one(
            "ReduceSum",
            &[],
            vec![shape(&[2, 3, 2], f), shape(&[1], DType::I64)],
            vec![shape(&[2, 1, 2], f)],
        );
        let axes = HostTensor::i64(&[1], vec![1]);
        assert_eq!(
            run(&sum, &[x.clone(), axes]),
            vec![HostTensor::f32(&[2, 1, 2], vec![6.0, 9.0, 24.0, 27.0])]
        );
        let max = one(
            "ReduceMax",
            &[("keepdims", AttrValue::Int(0))],
            vec![shape(&[2, 3, 2], f), shape(&[1], DType::I64)],
            vec![shape(&[2, 2], f)],
        );
        let axes = HostTensor::i64(&[1], vec![-2]);
        assert_eq!(
            run(&max, &[x.clone(), axes]),
            vec![HostTensor::f32(&[2, 2], vec![4.0, 5.0, 10.0, 11.0])]
        );
        let mean = one(
            "ReduceMean",
            &[
                ("axes", AttrValue::Ints(vec![0])),
                ("keepdims", AttrValue::Int(0)),
            ],
            vec![shape(&[2, 3, 2], f)],
            vec![shape(&[3, 2], f)],
        );
        assert_eq!(
            run(&mean, &[x]),
            vec![HostTensor::f32(&[3, 2], (3..9).map(|i| i as f32).collect())]
        );
    }

    /// Older opsets' attribute forms mean the same under the opset the model is rebuilt in:
    /// Clip bounds (ignored before: nothing was clipped), an uneven `split` attribute (split
    /// evenly before), Slice bounds and Pad widths given as values.
    #[test]
    fn attribute_forms_and_constant_operands_of_other_opsets_are_honoured() {
        let f = DType::F32;
        let clip = one(
            "Clip",
            &[
                ("min", AttrValue::Float(0.0)),
                ("max", AttrValue::Float(6.0)),
            ],
            vec![shape(&[4], f)],
            vec![shape(&[4], f)],
        );
        let x = HostTensor::f32(&[4], vec![-3.0, 0.5, 3.0, 9.0]);
        assert_eq!(
            run(&clip, &[x]),
            vec![HostTensor::f32(&[4], vec![0.0, 0.5, 3.0, 6.0])]
        );
        let split = one(
            "Split",
            &[("split", AttrValue::Ints(vec![1, 3]))],
            vec![shape(&[4], f)],
            vec![shape(&[1], f), shape(&[3], f)],
        );
        assert_eq!(
            run(&split, &[iota(&[4])]),
            vec![
                HostTensor::f32(&[1], vec![0.0]),
                HostTensor::f32(&[3], vec![1.0, 2.0, 3.0])
            ]
        );
        let i = |n: usize| shape(&[n], DType::I64);
        let slice = one(
            "Slice",
            &[],
            vec![shape(&[2, 5], f), i(1), i(1), i(1), i(1)],
            vec![shape(&[2, 2], f)],
        );
        let v = |x: i64| HostTensor::i64(&[1], vec![x]);
        assert_eq!(
            run(&slice, &[iota(&[2, 5]), v(1), v(4), v(1), v(2)]),
            vec![HostTensor::f32(&[2, 2], vec![1.0, 3.0, 6.0, 8.0])]
        );
        let pad = one(
            "Pad",
            &[],
            vec![shape(&[2], f), i(2), shape(&[], f)],
            vec![shape(&[4], f)],
        );
        let pads = HostTensor::i64(&[2], vec![1, 1]);
        let value = HostTensor::f32(&[], vec![9.0]);
        assert_eq!(
            run(&pad, &[iota(&[2]), pads, value]),
            vec![HostTensor::f32(&[4], vec![9.0, 0.0, 1.0, 9.0])]
        );
    }

    /// tract reduces numbers only: ReduceMax / ReduceMin of booleans are any / all, false
    /// and true over an empty axis.
    #[test]
    fn boolean_max_and_min_reduce_as_any_and_all() {
        let b = DType::Bool;
        for (op, want, empty) in [("ReduceMax", [1, 0], 0), ("ReduceMin", [0, 0], 1)] {
            let s = one(
                op,
                &[("keepdims", AttrValue::Int(0))],
                vec![shape(&[2, 3], b), shape(&[1], DType::I64)],
                vec![shape(&[2], b)],
            );
            let x = HostTensor::i64(&[2, 3], vec![1, 0, 1, 0, 0, 0]);
            let axes = HostTensor::i64(&[1], vec![1]);
            assert_eq!(
                run(&s, &[x, axes.clone()]),
                vec![HostTensor::i64(&[2], want.to_vec())]
            );
            let s = one(
                op,
                &[("keepdims", AttrValue::Int(0))],
                vec![shape(&[2, 0], b), shape(&[1], DType::I64)],
                vec![shape(&[2], b)],
            );
            let x = HostTensor::i64(&[2, 0], vec![]);
            assert_eq!(
                run(&s, &[x, axes]),
                vec![HostTensor::i64(&[2], vec![empty; 2])]
            );
        }
    }

    /// What tract would run with other semantics, or the signature cannot describe, is
    /// refused by reason.
    #[test]
    fn nodes_tract_would_misread_are_refused_by_reason() {
        let f = DType::F32;
        let dropout = one(
            "Dropout",
            &[],
            vec![shape(&[2], f), shape(&[], f), shape(&[], DType::Bool)],
            vec![shape(&[2], f)],
        );
        let values = [
            iota(&[2]),
            HostTensor::f32(&[], vec![0.5]),
            HostTensor::i64(&[], vec![1]),
        ];
        let crd = one(
            "SpaceToDepth",
            &[
                ("blocksize", AttrValue::Int(2)),
                ("mode", AttrValue::Str("CRD".into())),
            ],
            vec![shape(&[1, 1, 2, 2], f)],
            vec![shape(&[1, 4, 1, 1], f)],
        );
        let fill = one(
            "ConstantOfShape",
            &[],
            vec![shape(&[1], DType::I64)],
            vec![shape(&[3], f)],
        );
        for (s, v, why) in [
            (&dropout, &values[..], "training mode"),
            (&crd, &[iota(&[1, 1, 2, 2])][..], "CRD"),
            (
                &fill,
                &[HostTensor::i64(&[1], vec![3])][..],
                "tensor attribute",
            ),
        ] {
            let e = CpuKernel::build_with(s, v)
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    /// A view becomes a Reshape to the literal output shape: its zero-sized axes are kept
    /// (without allowzero, tract read the 0 as "copy the input's axis").
    #[test]
    fn a_reshape_to_a_shape_with_a_zero_keeps_the_empty_axis() {
        let f = DType::F32;
        let s = one(
            "Reshape",
            &[],
            vec![shape(&[0, 3, 4], f), shape(&[3], DType::I64)],
            vec![shape(&[3, 4, 0], f)],
        );
        let values = [
            HostTensor::f32(&[0, 3, 4], vec![]),
            HostTensor::i64(&[3], vec![3, 4, 0]),
        ];
        assert_eq!(run(&s, &values), vec![HostTensor::f32(&[3, 4, 0], vec![])]);
    }
}
