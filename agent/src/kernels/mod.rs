//! Fused kernels in WGSL, one generator per [`KernelClass`], specialised to the signature's
//! shapes (sizes, strides and tile choices are compile-time constants in the generated WGSL).
//!
//! A [`GpuKernel`] is built once from a [`KernelSignature`] and then [`GpuKernel::run`] on device
//! tensors as often as needed; the profiler binds it once ([`GpuKernel::bind`]) and replays the
//! recorded dispatches.
//!
//! ## How the inputs of a signature are wired
//! A signature lists its fused nodes in execution order and the tensors entering the kernel, but
//! not the edges between the nodes. The convention (shared with the coarsener) is a chain:
//! the first node takes the first inputs of the signature (all of its ONNX inputs, in ONNX
//! order); each later node takes the previous node's output as its first operand and the next
//! signature inputs as its other operands. Optional ONNX inputs (Conv and Gemm bias, Clip
//! bounds) are present when the input count says so. See [`wire`].
//!
//! ## The epilogue
//! Everything after the head op (the matmul, convolution, pooling, normalisation or gather) is
//! an element-wise epilogue applied to each output value in registers before the one store:
//! bias, BatchNormalization (per-channel scale and shift), activations, residual add or any
//! broadcast binary op. See [`epilogue`].

pub mod conv;
pub mod copy;
pub mod epilogue;
pub mod gather;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod shader;

use moirai_core::kernel::{AttrValue, DType, FusedNode, KernelClass, KernelSignature, Operand};

use crate::gpu::buffers::{BufferPool, GpuDType, GpuTensor};
use crate::gpu::context::{GpuContext, GpuError};

/// Why a signature cannot become a GPU kernel, or a run failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel {kernel}: {what} is not supported on the GPU")]
    Unsupported { kernel: String, what: String },
    #[error("kernel {kernel}: signature is malformed: {what}")]
    Malformed { kernel: String, what: String },
    #[error("kernel {kernel}: expected {expected} inputs, got {got}")]
    InputCount {
        kernel: String,
        expected: usize,
        got: usize,
    },
    #[error("kernel {kernel}: {source}")]
    Gpu {
        kernel: String,
        #[source]
        source: GpuError,
    },
}

/// Where a binding of a dispatch points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Input(usize),
    Output(usize),
    /// Bytes `offset..offset + size` of input `i`, bound as a uniform buffer.
    UniformRange {
        input: usize,
        offset: u64,
        size: u64,
    },
    /// Constant `j` of the plan (a small storage buffer the kernel owns).
    Const(usize),
}

/// One compute dispatch of a kernel: a pipeline, its bindings in binding order, and the grid.
pub struct Step {
    pub pipeline: wgpu::ComputePipeline,
    pub bindings: Vec<Slot>,
    pub groups: [u32; 3],
}

/// What a generator hands back: WGSL sources with their bindings and grids, and how each output
/// is produced.
pub struct Plan {
    pub steps: Vec<(String, Vec<Slot>, [u32; 3])>,
    /// `Some(i)`: output is a view of input `i` (reshapes), no dispatch writes it.
    pub aliases: Vec<Option<usize>>,
    /// Small constant buffers ([`Slot::Const`]), e.g. the row block a dispatch handles.
    pub consts: Vec<Vec<u32>>,
}

/// A fused kernel compiled for one device and one signature.
pub struct GpuKernel {
    pub signature: KernelSignature,
    steps: Vec<Step>,
    aliases: Vec<Option<usize>>,
    consts: Vec<wgpu::Buffer>,
}

/// A kernel with its buffers bound: replays without any allocation.
pub struct BoundKernel<'k> {
    kernel: &'k GpuKernel,
    groups: Vec<wgpu::BindGroup>,
}

pub(crate) fn malformed(sig: &KernelSignature, what: impl Into<String>) -> KernelError {
    KernelError::Malformed {
        kernel: sig.pattern(),
        what: what.into(),
    }
}

pub(crate) fn unsupported(sig: &KernelSignature, what: impl Into<String>) -> KernelError {
    KernelError::Unsupported {
        kernel: sig.pattern(),
        what: what.into(),
    }
}

/// Device element type for a signature dtype.
pub fn gpu_dtype(d: DType) -> GpuDType {
    match d {
        DType::I64 | DType::I32 | DType::I8 | DType::U8 | DType::Bool => GpuDType::I32,
        DType::F32 | DType::F16 => GpuDType::F32,
    }
}

impl GpuKernel {
    /// Generates and compiles the kernel for this signature.
    pub fn build(ctx: &GpuContext, sig: &KernelSignature) -> Result<Self, KernelError> {
        Self::build_with(ctx, sig, None)
    }

    /// [`GpuKernel::build`], with each generated WGSL source passed through `edit` before it
    /// compiles (a test corrupting a kernel on purpose).
    pub fn build_with(
        ctx: &GpuContext,
        sig: &KernelSignature,
        edit: Option<&dyn Fn(String) -> String>,
    ) -> Result<Self, KernelError> {
        let mut plan = generate(sig, ctx)?;
        if let Some(edit) = edit {
            for (src, _, _) in &mut plan.steps {
                *src = edit(std::mem::take(src));
            }
        }
        let mut steps = Vec::with_capacity(plan.steps.len());
        // Steps often share a shader (one per row block): compile each source once.
        let mut compiled: Vec<(String, wgpu::ComputePipeline)> = Vec::new();
        for (i, (wgsl, bindings, groups)) in plan.steps.into_iter().enumerate() {
            let pipeline = match compiled.iter().find(|(src, _)| *src == wgsl) {
                Some((_, p)) => p.clone(),
                None => {
                    tracing::trace!(kernel = %sig.pattern(), step = i, %wgsl, "generated WGSL");
                    let p = ctx
                        .pipeline(&format!("{}#{i}", sig.pattern()), &wgsl)
                        .map_err(|source| KernelError::Gpu {
                            kernel: sig.pattern(),
                            source,
                        })?;
                    compiled.push((wgsl, p.clone()));
                    p
                }
            };
            steps.push(Step {
                pipeline,
                bindings,
                groups,
            });
        }
        let consts = plan
            .consts
            .iter()
            .map(|words| {
                let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("moirai-kernel-const"),
                    size: (4 * words.len()).max(16) as u64,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(words));
                b
            })
            .collect();
        Ok(GpuKernel {
            signature: sig.clone(),
            steps,
            aliases: plan.aliases,
            consts,
        })
    }

    pub fn dispatches(&self) -> usize {
        self.steps.len()
    }

    /// Allocates the outputs (or views for aliased outputs).
    pub fn alloc_outputs(
        &self,
        ctx: &GpuContext,
        pool: &BufferPool,
        inputs: &[GpuTensor],
    ) -> Result<Vec<GpuTensor>, KernelError> {
        let sig = &self.signature;
        if inputs.len() != sig.inputs.len() {
            return Err(KernelError::InputCount {
                kernel: sig.pattern(),
                expected: sig.inputs.len(),
                got: inputs.len(),
            });
        }
        let mut outs = Vec::with_capacity(sig.outputs.len());
        for (o, shape) in sig.outputs.iter().enumerate() {
            let t = match self.aliases.get(o).copied().flatten() {
                Some(i) => inputs[i]
                    .view(&shape.dims)
                    .ok_or_else(|| malformed(sig, format!("output {o} cannot view input {i}")))?,
                None => pool
                    .tensor(ctx, &shape.dims, gpu_dtype(shape.dtype))
                    .map_err(|source| KernelError::Gpu {
                        kernel: sig.pattern(),
                        source,
                    })?,
            };
            outs.push(t);
        }
        Ok(outs)
    }

    /// Creates the bind groups for these tensors.
    pub fn bind<'k>(
        &'k self,
        ctx: &GpuContext,
        inputs: &[GpuTensor],
        outputs: &[GpuTensor],
    ) -> BoundKernel<'k> {
        let groups = self
            .steps
            .iter()
            .map(|s| {
                let entries: Vec<wgpu::BindGroupEntry> = s
                    .bindings
                    .iter()
                    .enumerate()
                    .map(|(b, slot)| wgpu::BindGroupEntry {
                        binding: b as u32,
                        resource: match slot {
                            Slot::Input(i) => inputs[*i].buffer.as_entire_binding(),
                            Slot::Output(o) => outputs[*o].buffer.as_entire_binding(),
                            Slot::UniformRange {
                                input,
                                offset,
                                size,
                            } => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &inputs[*input].buffer,
                                offset: *offset,
                                size: wgpu::BufferSize::new(*size),
                            }),
                            Slot::Const(j) => self.consts[*j].as_entire_binding(),
                        },
                    })
                    .collect();
                ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &s.pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
            })
            .collect();
        BoundKernel {
            kernel: self,
            groups,
        }
    }

    /// Runs the kernel once on device tensors (blocking until submitted; not until finished).
    pub fn run(
        &self,
        ctx: &GpuContext,
        pool: &BufferPool,
        inputs: &[GpuTensor],
    ) -> Result<Vec<GpuTensor>, KernelError> {
        let outputs = self.alloc_outputs(ctx, pool, inputs)?;
        let bound = self.bind(ctx, inputs, &outputs);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        bound.encode(&mut enc, None);
        ctx.queue.submit([enc.finish()]);
        Ok(outputs)
    }
}

impl BoundKernel<'_> {
    /// Records the kernel as one compute pass, optionally with timestamps at its start and end
    /// (query indices `q` and `q + 1`).
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder, ts: Option<(&wgpu::QuerySet, u32)>) {
        let timestamp_writes = ts.map(|(qs, q)| wgpu::ComputePassTimestampWrites {
            query_set: qs,
            beginning_of_pass_write_index: Some(q),
            end_of_pass_write_index: Some(q + 1),
        });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes,
        });
        for (s, g) in self.kernel.steps.iter().zip(&self.groups) {
            pass.set_pipeline(&s.pipeline);
            pass.set_bind_group(0, g, &[]);
            pass.dispatch_workgroups(s.groups[0], s.groups[1], s.groups[2]);
        }
    }
}

/// For each node, the signature inputs it reads (for nodes after the first: besides the
/// previous node's output). See the module doc.
pub fn wire(sig: &KernelSignature) -> Result<Vec<Vec<usize>>, KernelError> {
    if sig.dag.is_some() {
        return Err(unsupported(
            sig,
            "a fused group that is not a chain (the GPU kernels are generated for chains)",
        ));
    }
    let n_in = sig.inputs.len();
    // (min, max) operands each node takes from the signature inputs.
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(sig.nodes.len());
    for (i, node) in sig.nodes.iter().enumerate() {
        let (lo, hi) = arity(&node.op_type, n_in);
        let chained = usize::from(i > 0);
        ranges.push((lo.saturating_sub(chained), hi.saturating_sub(chained)));
    }
    let min_total: usize = ranges.iter().map(|r| r.0).sum();
    if min_total > n_in {
        return Err(malformed(
            sig,
            format!("needs at least {min_total} inputs, has {n_in}"),
        ));
    }
    let mut spare = n_in - min_total;
    let mut next = 0;
    let mut out = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        let take = lo + spare.min(hi - lo);
        spare -= take - lo;
        out.push((next..next + take).collect());
        next += take;
    }
    if spare > 0 {
        return Err(malformed(sig, format!("{spare} inputs left unused")));
    }
    Ok(out)
}

/// For each node, where each of its ONNX operands comes from: `Some(j)` for signature input
/// `j`, `None` for another node's output. From the signature's DAG when it has one, else from
/// the chain convention ([`wire`]).
pub fn node_inputs(sig: &KernelSignature) -> Result<Vec<Vec<Option<usize>>>, KernelError> {
    if let Some(dag) = &sig.dag {
        if dag.operands.len() != sig.nodes.len() {
            return Err(malformed(sig, "DAG operands do not match the nodes"));
        }
        return dag
            .operands
            .iter()
            .map(|ops| {
                ops.iter()
                    .map(|o| match *o {
                        Operand::Input(j) if (j as usize) < sig.inputs.len() => {
                            Ok(Some(j as usize))
                        }
                        Operand::Input(j) => Err(malformed(sig, format!("no input {j}"))),
                        Operand::Node { .. } => Ok(None),
                    })
                    .collect()
            })
            .collect();
    }
    Ok(wire(sig)?
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let chained = (i > 0).then_some(None);
            chained.into_iter().chain(w.into_iter().map(Some)).collect()
        })
        .collect())
}

/// (min, max) ONNX operand count of an op, over the opsets (an input that became an
/// attribute or the reverse widens the range).
fn arity(op: &str, n_in: usize) -> (usize, usize) {
    match op {
        "Conv" | "Gemm" | "ConvTranspose" => (2, 3),
        "BatchNormalization" => (5, 5),
        "Clip" => (1, 3),
        "LayerNormalization" => (2, 3),
        "InstanceNormalization" | "GroupNormalization" | "Range" => (3, 3),
        "Concat" | "Sum" | "Max" | "Min" | "Mean" => (1, n_in),
        "Split" | "Squeeze" | "Unsqueeze" | "ReduceMean" | "ReduceSum" | "ReduceMax"
        | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceSumSquare"
        | "ReduceLogSum" | "ReduceLogSumExp" | "Trilu" => (1, 2),
        "Dropout" => (1, 3),
        "Pad" => (1, 4),
        "Tile" => (2, 3),
        "Reshape" | "Gather" | "GatherElements" | "GatherND" | "MatMul" | "Add" | "Sub" | "Mul"
        | "Div" | "Pow" | "PRelu" | "Equal" | "Expand" | "And" | "Or" | "Xor" | "Less"
        | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Mod" | "CastLike" => (2, 2),
        "Where" => (3, 3),
        "Slice" => (3, 5),
        _ => (1, 1),
    }
}

pub(crate) fn attr_i(n: &FusedNode, k: &str, default: i64) -> i64 {
    match n.attrs.get(k) {
        Some(AttrValue::Int(i)) => *i,
        _ => default,
    }
}

pub(crate) fn attr_f(n: &FusedNode, k: &str, default: f32) -> f32 {
    match n.attrs.get(k) {
        Some(AttrValue::Float(f)) => *f,
        Some(AttrValue::Int(i)) => *i as f32,
        _ => default,
    }
}

pub(crate) fn attr_is(n: &FusedNode, k: &str) -> Option<Vec<i64>> {
    match n.attrs.get(k) {
        Some(AttrValue::Ints(v)) => Some(v.clone()),
        Some(AttrValue::Int(i)) => Some(vec![*i]),
        _ => None,
    }
}

pub(crate) fn attr_s<'a>(n: &'a FusedNode, k: &str) -> Option<&'a str> {
    match n.attrs.get(k) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

/// The ONNX input positions of a node that are absent before a present one
/// ([`moirai_model::coarsen::ABSENT_INPUTS`]).
pub fn absent_inputs(n: &FusedNode) -> Vec<usize> {
    attr_is(n, moirai_model::coarsen::ABSENT_INPUTS)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| usize::try_from(p).ok())
        .collect()
}

/// The ONNX input position of a node's `k`-th present operand: `k`, plus the absent optional
/// inputs before it (`Clip(x, "", max)`: operand 1 is at position 2).
pub fn onnx_position(n: &FusedNode, k: usize) -> usize {
    let absent = absent_inputs(n);
    (0..).filter(|p| !absent.contains(p)).nth(k).unwrap_or(k)
}

/// The present operand at ONNX input position `pos`, if that input is not absent.
pub fn present_index(n: &FusedNode, pos: usize) -> Option<usize> {
    let absent = absent_inputs(n);
    (!absent.contains(&pos)).then(|| pos - absent.iter().filter(|&&a| a < pos).count())
}

/// Normalises a possibly negative ONNX axis.
pub(crate) fn axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64).max(0) as usize
    } else {
        (a as usize).min(rank.saturating_sub(1))
    }
}

/// Ops that only reinterpret a shape.
pub fn is_view_op(op: &str) -> bool {
    matches!(
        op,
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity"
    )
}

/// For a signature whose leading views feed a MatMul/Gemm: the shape of the matmul's first
/// operand (the views' output), derived from the other operand and the output.
pub fn matmul_operand_dims(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Option<Vec<usize>> {
    let views = sig
        .nodes
        .iter()
        .take_while(|n| is_view_op(&n.op_type))
        .count();
    let head = sig.nodes.get(views)?;
    let x = &sig.inputs[*wiring.first()?.first()?];
    let b = &sig.inputs[*wiring.get(views)?.first()?].dims;
    let n_x = x.elements();
    let dims = match head.op_type.as_str() {
        "Gemm" => {
            let k = if attr_i(head, "transB", 0) != 0 {
                *b.get(1)?
            } else {
                *b.first()?
            };
            if k == 0 || !n_x.is_multiple_of(k) {
                return None;
            }
            if attr_i(head, "transA", 0) != 0 {
                vec![k, n_x / k]
            } else {
                vec![n_x / k, k]
            }
        }
        "MatMul" => {
            let k = *b.get(b.len().checked_sub(2)?)?;
            let out = &sig.outputs.first()?.dims;
            let mut d = out[..out.len().checked_sub(1)?].to_vec();
            d.push(k);
            d
        }
        _ => return None,
    };
    (dims.iter().product::<usize>() == n_x).then_some(dims)
}

fn generate(sig: &KernelSignature, ctx: &GpuContext) -> Result<Plan, KernelError> {
    if sig.nodes.is_empty() {
        return Err(malformed(sig, "no nodes"));
    }
    if sig.outputs.is_empty() {
        return Err(malformed(sig, "no outputs"));
    }
    let wiring = wire(sig)?;
    let head = sig.nodes[0].op_type.as_str();
    match sig.class {
        KernelClass::MatMul => {
            let views = sig
                .nodes
                .iter()
                .take_while(|n| is_view_op(&n.op_type))
                .count();
            if views == 0 {
                return matmul::plan(sig, &wiring, ctx);
            }
            // Reshape/Flatten in front of the matmul: the matmul reads the same bytes under
            // the shape it needs, so run it on a signature without them and map the inputs back.
            let dims = matmul_operand_dims(sig, &wiring)
                .ok_or_else(|| unsupported(sig, "a view before the matmul with unknown shape"))?;
            let x = wiring[0][0];
            let mut map = vec![x];
            for w in &wiring[views..] {
                map.extend(w.iter().copied());
            }
            let mut inner = sig.clone();
            inner.nodes = sig.nodes[views..].to_vec();
            inner.shapes = sig.shapes.get(views..).unwrap_or_default().to_vec();
            inner.inputs = map.iter().map(|&j| sig.inputs[j].clone()).collect();
            inner.inputs[0].dims = dims;
            let w2 = wire(&inner)?;
            let mut p = matmul::plan(&inner, &w2, ctx)?;
            for (_, slots, _) in &mut p.steps {
                for s in slots.iter_mut() {
                    match s {
                        Slot::Input(i) => *i = map[*i],
                        Slot::UniformRange { input, .. } => *input = map[*input],
                        _ => {}
                    }
                }
            }
            Ok(p)
        }
        KernelClass::Conv => conv::plan(sig, &wiring),
        KernelClass::Pool => pool::plan(sig, &wiring),
        KernelClass::Eltwise => epilogue::plan_eltwise(sig, &wiring),
        KernelClass::Softmax | KernelClass::LayerNorm => norm::plan(sig, &wiring),
        KernelClass::Copy => copy::plan(sig, &wiring),
        KernelClass::Gather => gather::plan(sig, &wiring),
        KernelClass::Other => match head {
            "GlobalAveragePool" | "MaxPool" | "AveragePool" => pool::plan(sig, &wiring),
            _ => Err(unsupported(sig, format!("class Other ({head})"))),
        },
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
