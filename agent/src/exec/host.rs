//! Host tensors and the sample inputs the profiler and tests feed kernels.

use moirai_core::kernel::{DType, KernelSignature};

use crate::gpu::buffers::{BufferPool, GpuTensor};
use crate::gpu::context::{GpuContext, GpuError};
use crate::kernels::node_inputs;

/// Elements of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dims: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn f32(dims: &[usize], data: Vec<f32>) -> Self {
        HostTensor {
            dims: dims.to_vec(),
            data: HostData::F32(data),
        }
    }

    pub fn i64(dims: &[usize], data: Vec<i64>) -> Self {
        HostTensor {
            dims: dims.to_vec(),
            data: HostData::I64(data),
        }
    }

    /// Copies the tensor to the device (`int64` narrowed to `i32`).
    pub fn upload(&self, ctx: &GpuContext, pool: &BufferPool) -> Result<GpuTensor, GpuError> {
        match &self.data {
            HostData::F32(v) => pool.upload_f32(ctx, &self.dims, v),
            HostData::I64(v) => {
                let narrowed: Vec<i32> = v
                    .iter()
                    .map(|&x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                    .collect();
                pool.upload_i32(ctx, &self.dims, &narrowed)
            }
        }
    }
}

/// The role an input plays, which decides what sample data it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRole {
    /// Activations and weights: random normal-ish floats.
    Data,
    /// Gather indices into an axis of this size.
    Indices(usize),
    /// Clip lower and upper bounds.
    ClipMin,
    ClipMax,
    /// Exponent of a Pow.
    Exponent,
    /// BatchNormalization variance (must be positive).
    Variance,
    /// BatchNormalization scale, bias and mean (tract wants them constant).
    BnParam,
    /// Constants the output's shape or indexing depends on (Reshape shape, Squeeze axes,
    /// Split sizes, reduction axes, Slice bounds, Pad widths and value, Range bounds, Trilu
    /// diagonal): the GPU kernels take shapes from the signature; the CPU executor derives
    /// them from the boundary shapes where those say them, else bakes the value it is given.
    ShapeConst,
    /// Integer data (e.g. an attention mask before its Cast): small integers.
    IntData,
    /// A boolean tensor: 0 or 1.
    Mask,
}

/// The role of each signature input.
pub fn input_roles(sig: &KernelSignature) -> Vec<InputRole> {
    let mut roles = vec![InputRole::Data; sig.inputs.len()];
    for (j, t) in sig.inputs.iter().enumerate() {
        roles[j] = match t.dtype {
            DType::F32 | DType::F16 => InputRole::Data,
            DType::Bool => InputRole::Mask,
            _ => InputRole::IntData,
        };
    }
    let Ok(operands) = node_inputs(sig) else {
        return roles;
    };
    for (i, node) in sig.nodes.iter().enumerate() {
        // The signature input that is ONNX operand `k` of this node, if it is one.
        let at = |k: usize| -> Option<usize> {
            let present = crate::kernels::present_index(node, k)?;
            operands[i].get(present).copied().flatten()
        };
        match node.op_type.as_str() {
            // Operands that are shapes, axes or sizes.
            "Reshape" | "Expand" | "Squeeze" | "Unsqueeze" | "Split" | "Tile" | "Trilu"
            | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd"
            | "ReduceL1" | "ReduceL2" | "ReduceSumSquare" | "ReduceLogSum" | "ReduceLogSumExp" => {
                if let Some(j) = at(1) {
                    roles[j] = InputRole::ShapeConst;
                }
            }
            "ConstantOfShape" => {
                if let Some(j) = at(0) {
                    roles[j] = InputRole::ShapeConst;
                }
            }
            "Slice" | "Pad" => {
                for k in 1..5 {
                    if let Some(j) = at(k) {
                        roles[j] = InputRole::ShapeConst;
                    }
                }
            }
            // Dropout's ratio and training_mode: constants of the model; the CPU executor
            // refuses training mode.
            "Dropout" => {
                for k in 1..3 {
                    if let Some(j) = at(k) {
                        roles[j] = InputRole::ShapeConst;
                    }
                }
            }
            "Range" => {
                for k in 0..3 {
                    if let Some(j) = at(k) {
                        roles[j] = InputRole::ShapeConst;
                    }
                }
            }
            "Gather" => {
                if let (Some(d), Some(ix)) = (at(0), at(1)) {
                    let a = crate::kernels::axis(
                        crate::kernels::attr_i(node, "axis", 0),
                        sig.inputs[d].dims.len(),
                    );
                    roles[ix] = InputRole::Indices(sig.inputs[d].dims.get(a).copied().unwrap_or(1));
                }
            }
            "Clip" => {
                if let Some(j) = at(1) {
                    roles[j] = InputRole::ClipMin;
                }
                if let Some(j) = at(2) {
                    roles[j] = InputRole::ClipMax;
                }
            }
            "Pow" => {
                if let Some(j) = at(1) {
                    roles[j] = InputRole::Exponent;
                }
            }
            "BatchNormalization" => {
                for k in 1..4 {
                    if let Some(j) = at(k) {
                        roles[j] = InputRole::BnParam;
                    }
                }
                if let Some(j) = at(4) {
                    roles[j] = InputRole::Variance;
                }
            }
            _ => {}
        }
    }
    roles
}

/// Deterministic sample inputs of the signature's shapes.
pub fn sample_inputs(sig: &KernelSignature, seed: u64) -> Vec<HostTensor> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let roles = input_roles(sig);
    sig.inputs
        .iter()
        .zip(roles)
        .map(|(t, role)| {
            let n = t.elements();
            match role {
                InputRole::Data | InputRole::BnParam => {
                    HostTensor::f32(&t.dims, (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect())
                }
                InputRole::Variance => {
                    HostTensor::f32(&t.dims, (0..n).map(|_| 0.5 + rng.f32()).collect())
                }
                InputRole::ClipMin => HostTensor::f32(&t.dims, vec![0.0; n]),
                InputRole::ClipMax => HostTensor::f32(&t.dims, vec![0.5; n]),
                InputRole::Exponent => HostTensor::f32(&t.dims, vec![2.0; n]),
                InputRole::Indices(d) => HostTensor::i64(
                    &t.dims,
                    (0..n).map(|_| rng.i64(0..d.max(1) as i64)).collect(),
                ),
                InputRole::ShapeConst => HostTensor::i64(&t.dims, vec![0; n]),
                InputRole::IntData => {
                    HostTensor::i64(&t.dims, (0..n).map(|_| rng.i64(-3..=3)).collect())
                }
                InputRole::Mask => {
                    HostTensor::i64(&t.dims, (0..n).map(|_| rng.i64(0..=1)).collect())
                }
            }
        })
        .collect()
}
