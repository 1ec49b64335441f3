//! The signature of a fused kernel: the unit the coarsener emits, agents profile and execute,
//! and the profile store is keyed by.
//!
//! A signature is the ordered list of the ONNX ops fused into one kernel (with their
//! attributes) plus the shapes and dtypes at its boundary. Two fused ops with equal
//! signatures cost the same on a given board, so a board class needs profiling once per
//! distinct signature.
//!
//! How the nodes connect is implicit for chains (the wgpu fusion rules only make chains: each
//! node after the first reads the previous one's output plus the next boundary inputs) and
//! explicit, in [`KernelSignature::dag`], for the other groups the CPU rules fuse (a GELU
//! written out as Div/Erf/Add/Mul/Mul reads the MatMul's output twice).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Element type of a tensor at a kernel boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
            DType::I64 => 8,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

/// Shape and element type of a tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TensorShape {
    pub dims: Vec<usize>,
    pub dtype: DType,
}

impl TensorShape {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.elements() * self.dtype.size_bytes()
    }
}

/// An attribute value of an ONNX node, kept in a form that hashes and serialises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    Str(String),
}

/// Which family of kernels executes a fused op (one WGSL template per class).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KernelClass {
    /// Gemm / MatMul with an epilogue (bias, activation, residual add).
    MatMul,
    /// Conv (any stride, padding, dilation, groups) with an epilogue.
    Conv,
    /// Max / Average / GlobalAverage pooling.
    Pool,
    /// Chains of element-wise ops with broadcasting.
    Eltwise,
    Softmax,
    LayerNorm,
    /// Concat / Split / Transpose / Reshape: copies or views.
    Copy,
    /// Gather for embeddings.
    Gather,
    /// Reductions and anything the rule set did not classify.
    Other,
}

/// One ONNX node inside a fused kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusedNode {
    pub op_type: String,
    pub attrs: BTreeMap<String, AttrValue>,
}

/// A fused kernel as the agents see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelSignature {
    pub class: KernelClass,
    /// The fused nodes in execution order.
    pub nodes: Vec<FusedNode>,
    /// Tensors entering the kernel (activations and parameters).
    pub inputs: Vec<TensorShape>,
    /// Tensors leaving it.
    pub outputs: Vec<TensorShape>,
    /// Floating-point operations (a multiply-add counts 2).
    pub flops: u64,
    /// Bytes read plus bytes written at the kernel boundary.
    pub bytes: u64,
    /// The edges, for a group that is not a chain; `None`: the chain convention.
    #[serde(default)]
    pub dag: Option<Dag>,
    /// The output shape of each node, in [`KernelSignature::nodes`] order (its first output
    /// for a node with several). Boundary shapes alone do not say what a view in the middle
    /// of a chain reshapes to, or at which shape an epilogue operand broadcasts, so the kernel
    /// generators and the CPU executor read them here. Empty in signatures that predate them
    /// (tables written before wire protocol 3): [`KernelSignature::node_shape`] then assumes
    /// every node keeps the output's shape.
    #[serde(default)]
    pub shapes: Vec<TensorShape>,
}

/// Where a node operand or a kernel output comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operand {
    /// Boundary input `i` ([`KernelSignature::inputs`]).
    Input(u32),
    /// Output `output` of node `node` ([`KernelSignature::nodes`]).
    Node { node: u32, output: u32 },
}

/// The edges of a fused group that is not a chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dag {
    /// Per node, its operands in ONNX order (absent optional inputs left out).
    pub operands: Vec<Vec<Operand>>,
    /// Per kernel output, the node output it is.
    pub results: Vec<Operand>,
}

impl Dag {
    /// "n1=i0,n0.0" style text for keys: equal texts, equal wiring.
    fn describe(&self) -> String {
        let op = |o: &Operand| match o {
            Operand::Input(i) => format!("i{i}"),
            Operand::Node { node, output } => format!("n{node}.{output}"),
        };
        let mut parts: Vec<String> = self
            .operands
            .iter()
            .enumerate()
            .map(|(n, ops)| format!("n{n}={}", ops.iter().map(op).collect::<Vec<_>>().join(",")))
            .collect();
        parts.push(format!(
            "out={}",
            self.results.iter().map(op).collect::<Vec<_>>().join(",")
        ));
        parts.join(" ")
    }
}

impl KernelSignature {
    /// The output shape of node `i` ([`KernelSignature::shapes`]), or the first output's when
    /// the signature does not say.
    pub fn node_shape(&self, i: usize) -> Option<&TensorShape> {
        self.shapes.get(i).or_else(|| self.outputs.first())
    }

    /// Whether the boundary leaves some node's shape open: a view whose target is a tensor
    /// value rather than an attribute (Reshape; Squeeze and Unsqueeze with their axes as an
    /// input) with a node other than a view after it. Every other node's shape follows from
    /// its inputs' by shape inference, and a view at the end reshapes to the kernel's output;
    /// such a view in front of or inside the computation reshapes to a value the signature does
    /// not hold, so then the key names every node's shape.
    fn shapes_matter(&self) -> bool {
        const VIEWS: [&str; 4] = ["Reshape", "Flatten", "Squeeze", "Unsqueeze"];
        let open = |n: &FusedNode| match n.op_type.as_str() {
            "Reshape" => true,
            "Squeeze" | "Unsqueeze" => !n.attrs.contains_key("axes"),
            _ => false,
        };
        !self.shapes.is_empty()
            && self
                .nodes
                .iter()
                .rposition(|n| !VIEWS.contains(&n.op_type.as_str()))
                .is_some_and(|last| self.nodes[..last].iter().any(open))
    }

    /// "Conv+BatchNormalization+Relu".
    pub fn pattern(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.op_type.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// A stable, human-readable key: pattern, boundary shapes and the attributes that change
    /// the cost. Used as the profile-store key and as `kernel` in profiled-graph JSON.
    pub fn key(&self) -> String {
        let shapes = |ts: &[TensorShape]| {
            ts.iter()
                .map(|t| {
                    let d: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
                    format!("{:?}[{}]", t.dtype, d.join("x")).to_lowercase()
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut attrs = Vec::new();
        for n in &self.nodes {
            for (k, v) in &n.attrs {
                let v = match v {
                    AttrValue::Int(i) => i.to_string(),
                    AttrValue::Ints(v) => v
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("."),
                    AttrValue::Float(f) => f.to_string(),
                    AttrValue::Floats(v) => v
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("."),
                    AttrValue::Str(s) => s.clone(),
                };
                attrs.push(format!("{}.{k}={v}", n.op_type));
            }
        }
        let mut key = format!(
            "{}({})->({}){{{}}}",
            self.pattern(),
            shapes(&self.inputs),
            shapes(&self.outputs),
            attrs.join(";")
        );
        if let Some(d) = &self.dag {
            key.push_str(&format!("[{}]", d.describe()));
        }
        if self.shapes_matter() {
            key.push_str(&format!("<{}>", shapes(&self.shapes)));
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_pattern_shapes_and_attributes() {
        let sig = KernelSignature {
            class: KernelClass::Conv,
            nodes: vec![
                FusedNode {
                    op_type: "Conv".into(),
                    attrs: BTreeMap::from([("strides".into(), AttrValue::Ints(vec![2, 2]))]),
                },
                FusedNode {
                    op_type: "Relu".into(),
                    attrs: BTreeMap::new(),
                },
            ],
            inputs: vec![TensorShape {
                dims: vec![1, 3, 224, 224],
                dtype: DType::F32,
            }],
            outputs: vec![TensorShape {
                dims: vec![1, 64, 112, 112],
                dtype: DType::F32,
            }],
            flops: 1,
            bytes: 1,
            dag: None,
            shapes: Vec::new(),
        };
        assert_eq!(
            sig.key(),
            "Conv+Relu(f32[1x3x224x224])->(f32[1x64x112x112]){Conv.strides=2.2}"
        );
    }
}
