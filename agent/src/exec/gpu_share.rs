//! An agent's share of a plan executed on wgpu: its sub-model coarsened with the wgpu fusion
//! rules, one fused WGSL kernel ([`GpuKernel`]) per group, weights resident on the device.
//!
//! Everything is decided when the assignment arrives ([`GpuShareExec::load`]), not at the
//! first request: the sub-model is imported and coarsened, every constant a kernel reads (the
//! initializers, and the values of the shape-only nodes the coarsener folds) is computed and
//! uploaded once, every kernel is generated, compiled and recorded once on its tensors (a
//! validation error shows here), and every activation gets its device buffer (a buffer is
//! reused by a later tensor once its last reader has run). A group whose GPU kernel cannot
//! be built runs on the CPU executor ([`CpuKernel`]) instead, alone: its inputs are read
//! back, tract runs it, its outputs are written back. [`GpuShareExec::placements`] says
//! which groups run where; [`GpuShareExec::verify`] (optional) also checks every GPU kernel
//! against tract and moves a kernel that differs to the CPU.
//!
//! A request ([`GpuShareExec::run`]) writes the share's inputs into their buffers, records
//! every kernel into one command buffer (split only around CPU groups), and reads back the
//! share's outputs: activations stay on the device between kernels.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use moirai_orchestrator::coarsen::rules::RuleSet;
use moirai_orchestrator::coarsen::{coarsen, CoarseGraph};
use moirai_orchestrator::import::onnx::{self, value_info, ImportError, ImportOptions, OnnxModel};
use moirai_shared::device::Backend;
use moirai_shared::kernel::{DType, TensorShape};
use moirai_shared::wire::data::{SubgraphSpec, TensorSpec};
use tracing::{debug, info, instrument, warn};
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::cpu::{CpuError, CpuKernel};
use super::host::{HostData, HostTensor};
use super::subgraph::{check_ops, NamedTensors, SubgraphError};
use crate::gpu::buffers::{read_bytes, BufferPool, GpuDType, GpuTensor};
use crate::gpu::context::{GpuContext, GpuError};
use crate::kernels::{gpu_dtype, GpuKernel};

/// Why a share cannot run on the GPU executor, or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuShareError {
    #[error(transparent)]
    Share(#[from] SubgraphError),
    #[error("epoch {epoch}: importing the sub-model: {source}")]
    Import {
        epoch: u64,
        #[source]
        source: ImportError,
    },
    #[error("epoch {epoch}: constant `{tensor}`: {message}")]
    Constant {
        epoch: u64,
        tensor: String,
        message: String,
    },
    #[error("epoch {epoch}: group `{group}`: {what}")]
    Group {
        epoch: u64,
        group: String,
        what: String,
    },
    #[error("epoch {epoch}: group `{group}` runs on neither executor: GPU: {gpu}; CPU: {cpu}")]
    NoExecutor {
        epoch: u64,
        group: String,
        gpu: String,
        cpu: String,
    },
    #[error("group `{group}` (CPU): {source}")]
    Cpu {
        group: String,
        #[source]
        source: Box<CpuError>,
    },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Where a group runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    Gpu,
    /// On tract, because its GPU kernel cannot be built (the reason).
    Cpu(String),
}

/// A group of the share and where it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlacement {
    /// The group's name (its first node that is not a view).
    pub group: String,
    /// Its kernel pattern, e.g. `Conv+Relu`.
    pub pattern: String,
    pub on: Where,
}

enum Runner {
    Gpu(GpuKernel),
    /// Tract. `host` holds its inputs: the constants, and the activations read back per
    /// request into their slots ([`Step::is_const`] says which is which).
    Cpu {
        kernel: CpuKernel,
        host: Mutex<Vec<HostTensor>>,
    },
}

/// One group ready to run: its kernel and the device tensors it reads and writes.
struct Step {
    group: String,
    runner: Runner,
    inputs: Vec<GpuTensor>,
    outputs: Vec<GpuTensor>,
    /// Which inputs are constants (weights, folded values).
    is_const: Vec<bool>,
}

/// A GPU kernel whose outputs differ from tract's on the same inputs (see
/// [`GpuShareExec::verify`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub group: String,
    pub pattern: String,
    /// max|gpu - tract| / max|tract| over its outputs (infinite for a NaN or a length
    /// mismatch).
    pub rel_diff: f32,
}

/// max|got - want| / max|want| over tensors pairwise; NaN against NaN agrees.
fn host_rel_diff(got: &[HostTensor], want: &[HostTensor]) -> f32 {
    if got.len() != want.len() {
        return f32::INFINITY;
    }
    let mut worst = 0.0f32;
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (f32_values(g.clone()), f32_values(w.clone()));
        if g.len() != w.len() {
            return f32::INFINITY;
        }
        let scale = w
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(1e-12);
        for (a, b) in g.iter().zip(&w) {
            let d = if a.is_nan() && b.is_nan() || a == b {
                0.0
            } else if a.is_finite() && b.is_finite() {
                (a - b).abs() / scale
            } else {
                f32::INFINITY
            };
            worst = worst.max(d);
        }
    }
    worst
}

/// Binds and records a kernel on its tensors without submitting anything, so that a
/// validation error (a binding too small, a grid over the adapter's limits) shows at load
/// rather than at the first request.
fn dry_run(
    ctx: &GpuContext,
    k: &GpuKernel,
    inputs: &[GpuTensor],
    outputs: &[GpuTensor],
) -> Result<(), String> {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("moirai-dry-run"),
        });
    k.bind(ctx, inputs, outputs).encode(&mut enc, None);
    drop(enc.finish());
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(format!("validation: {e}")),
        None => Ok(()),
    }
}

/// Runs a CPU step: reads its activations back, runs tract, writes its outputs.
fn run_on_cpu(
    ctx: &GpuContext,
    epoch: u64,
    step: &Step,
    kernel: &CpuKernel,
    host: &Mutex<Vec<HostTensor>>,
) -> Result<(), GpuShareError> {
    let mut host = host.lock().unwrap_or_else(|p| p.into_inner());
    for ((t, &c), slot) in step.inputs.iter().zip(&step.is_const).zip(host.iter_mut()) {
        if !c {
            *slot = read(ctx, t)?;
        }
    }
    let outs = kernel.run(&host).map_err(|source| GpuShareError::Cpu {
        group: step.group.clone(),
        source: Box::new(source),
    })?;
    for (t, h) in step.outputs.iter().zip(&outs) {
        write(ctx, t, h).map_err(|what| GpuShareError::Group {
            epoch,
            group: step.group.clone(),
            what,
        })?;
    }
    Ok(())
}

/// A share compiled for one device.
pub struct GpuShareExec {
    ctx: Arc<GpuContext>,
    epoch: u64,
    steps: Vec<Step>,
    inputs: Vec<(TensorSpec, GpuTensor)>,
    outputs: Vec<(String, GpuTensor)>,
    placements: Vec<GroupPlacement>,
    /// Bytes of the constants uploaded at load.
    pub weight_bytes: u64,
    /// Bytes of the activation buffers (after reuse).
    pub activation_bytes: u64,
}

fn datum(d: DType) -> DatumType {
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

/// A tract tensor as a host tensor: floats as f32, everything else as i64.
fn host_tensor(t: &Tensor) -> TractResult<HostTensor> {
    let dims = t.shape().to_vec();
    if t.datum_type().is_float() {
        let v: Vec<f32> = t
            .cast_to::<f32>()?
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect();
        Ok(HostTensor::f32(&dims, v))
    } else {
        let v: Vec<i64> = t
            .cast_to::<i64>()?
            .to_plain_array_view::<i64>()?
            .iter()
            .copied()
            .collect();
        Ok(HostTensor::i64(&dims, v))
    }
}

/// Every constant a group reads: initializers as stored, outputs of folded shape-only nodes
/// computed by tract (the activations a `Shape` node reads are fed as zeros: only their
/// static shapes matter).
fn constants(
    proto: &pb::ModelProto,
    model: &OnnxModel,
    coarse: &CoarseGraph,
    epoch: u64,
) -> Result<HashMap<String, HostTensor>, GpuShareError> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| GpuShareError::Constant {
            epoch,
            tensor: "(graph)".into(),
            message: "the sub-model has no graph".into(),
        })?;
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let err = |tensor: &str, message: String| GpuShareError::Constant {
        epoch,
        tensor: tensor.to_string(),
        message,
    };
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
                    let t = tract_onnx::tensor::load_tensor(&*resolver, t, None)
                        .and_then(|t| host_tensor(&t))
                        .map_err(|e| err(p, format!("{e:#}")))?;
                    out.insert(p.clone(), t);
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
    let by_output = moirai_orchestrator::infer::submodel::nodes_by_output(graph);
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
        let t = host_tensor(&v).map_err(|e| err(name, format!("{e:#}")))?;
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// Zeros of a shape (placeholders for inputs a CPU kernel is fed at run time).
fn zeros(s: &TensorShape) -> HostTensor {
    let n = s.elements();
    match s.dtype {
        DType::F32 | DType::F16 => HostTensor::f32(&s.dims, vec![0.0; n]),
        _ => HostTensor::i64(&s.dims, vec![0; n]),
    }
}

/// Writes host values into a device tensor (f32, or integers as i32).
fn write(ctx: &GpuContext, t: &GpuTensor, h: &HostTensor) -> Result<(), String> {
    let n = t.elements();
    let words: Vec<u32> = if let HostData::F32(v) = &h.data {
        match t.dtype {
            GpuDType::F32 => v.iter().map(|x| x.to_bits()).collect(),
            GpuDType::I32 => v.iter().map(|&x| (x.round() as i32) as u32).collect(),
        }
    } else if let HostData::I64(v) = &h.data {
        match t.dtype {
            GpuDType::F32 => v.iter().map(|&x| (x as f32).to_bits()).collect(),
            GpuDType::I32 => v
                .iter()
                .map(|&x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32 as u32)
                .collect(),
        }
    } else {
        return Err("host tensor of an unsupported element type".into());
    };
    if words.len() != n {
        return Err(format!(
            "{} values for the {n} of shape {:?}",
            words.len(),
            t.dims
        ));
    }
    ctx.queue
        .write_buffer(&t.buffer, 0, bytemuck::cast_slice(&words));
    Ok(())
}

/// Reads a device tensor back (blocking).
fn read(ctx: &GpuContext, t: &GpuTensor) -> Result<HostTensor, GpuError> {
    let bytes = read_bytes(ctx, &t.buffer, 4 * t.elements() as u64)?;
    let words = bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    Ok(match t.dtype {
        GpuDType::F32 => HostTensor::f32(&t.dims, words.map(f32::from_le_bytes).collect()),
        GpuDType::I32 => HostTensor::i64(
            &t.dims,
            words.map(|w| i32::from_le_bytes(w) as i64).collect(),
        ),
    })
}

fn f32_values(h: HostTensor) -> Vec<f32> {
    if let HostData::F32(v) = h.data {
        v
    } else if let HostData::I64(v) = h.data {
        v.into_iter().map(|x| x as f32).collect()
    } else {
        Vec::new()
    }
}

impl GpuShareExec {
    /// Checks, coarsens and compiles the sub-model of `spec` on `ctx`, uploading its weights.
    pub fn load(
        ctx: Arc<GpuContext>,
        model: &pb::ModelProto,
        spec: &SubgraphSpec,
    ) -> Result<Self, GpuShareError> {
        Self::load_with(ctx, model, spec, &|_| false)
    }

    /// [`GpuShareExec::load`], with the groups whose kernel pattern `on_cpu` accepts sent to
    /// the CPU executor whatever the GPU could do (to compare, or to route around a kernel).
    #[instrument(skip_all, fields(epoch = spec.epoch, model = %spec.model))]
    // Sets of buffers: `wgpu::Buffer` hashes and compares by identity, not by its contents.
    #[allow(clippy::mutable_key_type)]
    pub fn load_with(
        ctx: Arc<GpuContext>,
        model: &pb::ModelProto,
        spec: &SubgraphSpec,
        on_cpu: &dyn Fn(&str) -> bool,
    ) -> Result<Self, GpuShareError> {
        let epoch = spec.epoch;
        check_ops(model, epoch)?;
        let opts = ImportOptions {
            require_weights: true,
            ..Default::default()
        };
        let onnx = onnx::from_proto(model, Path::new(&spec.model), &opts)
            .map_err(|source| GpuShareError::Import { epoch, source })?;
        let coarse = coarsen(&onnx, &RuleSet::for_backend(Backend::Wgpu));
        let consts = constants(model, &onnx, &coarse, epoch)?;
        let pool = BufferPool::default();
        let mut dev: HashMap<String, GpuTensor> = HashMap::new();
        // Buffers never given back: weights, the share's inputs and outputs.
        let mut pinned: HashSet<wgpu::Buffer> = HashSet::new();
        let mut weight_bytes = 0;
        for (name, h) in &consts {
            let t = h.upload(&ctx, &pool)?;
            weight_bytes += t.buffer.size();
            pinned.insert(t.buffer.clone());
            dev.insert(name.clone(), t);
        }
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for s in &spec.inputs {
            let shape = onnx.shape(&s.name).cloned().unwrap_or(TensorShape {
                dims: s.dims.iter().map(|&d| d as usize).collect(),
                dtype: DType::F32,
            });
            let t = pool.tensor(&ctx, &shape.dims, gpu_dtype(shape.dtype))?;
            pinned.insert(t.buffer.clone());
            dev.insert(s.name.clone(), t.clone());
            inputs.push((s.clone(), t));
        }
        let share_outputs: HashSet<&str> = spec
            .outputs
            .iter()
            .map(|o| o.tensor.name.as_str())
            .collect();
        // The last group reading each tensor (a tensor nobody reads dies where it is made).
        let mut last_use: HashMap<&str, usize> = HashMap::new();
        for (gi, g) in coarse.groups.iter().enumerate() {
            for t in g.operands.iter().chain(&g.outputs) {
                last_use.insert(t.as_str(), gi);
            }
        }
        let mut steps = Vec::with_capacity(coarse.groups.len());
        let mut placements = Vec::with_capacity(coarse.groups.len());
        let mut activation_bytes = inputs.iter().map(|(_, t)| t.buffer.size()).sum::<u64>();
        let mut allocated: HashSet<wgpu::Buffer> = HashSet::new();
        for (gi, g) in coarse.groups.iter().enumerate() {
            let sig = &g.signature;
            let group_err = |what: String| GpuShareError::Group {
                epoch,
                group: g.name.clone(),
                what,
            };
            if g.operands.len() != sig.inputs.len() || g.outputs.len() != sig.outputs.len() {
                return Err(group_err(format!(
                    "{} operands and {} outputs for a signature of {} inputs and {} outputs",
                    g.operands.len(),
                    g.outputs.len(),
                    sig.inputs.len(),
                    sig.outputs.len()
                )));
            }
            let mut ins = Vec::with_capacity(g.operands.len());
            for (j, t) in g.operands.iter().enumerate() {
                let d = dev
                    .get(t)
                    .ok_or_else(|| group_err(format!("operand `{t}` is not available")))?;
                if d.elements() != sig.inputs[j].elements() {
                    return Err(group_err(format!(
                        "operand `{t}` has shape {:?}, the signature says {:?}",
                        d.dims, sig.inputs[j].dims
                    )));
                }
                ins.push(d.clone());
            }
            let gpu = if on_cpu(&sig.pattern()) {
                Err("sent to the CPU by the caller".to_string())
            } else {
                GpuKernel::build(&ctx, sig)
                    .and_then(|k| {
                        let outs = k.alloc_outputs(&ctx, &pool, &ins)?;
                        Ok((k, outs))
                    })
                    .map_err(|e| e.to_string())
                    .and_then(|(k, outs)| {
                        dry_run(&ctx, &k, &ins, &outs)?;
                        Ok((k, outs))
                    })
            };
            let (runner, outs, on) = match gpu {
                Ok((k, outs)) => (Runner::Gpu(k), outs, Where::Gpu),
                Err(gpu_err) => {
                    let consts_of: Vec<Option<HostTensor>> =
                        g.operands.iter().map(|t| consts.get(t).cloned()).collect();
                    let values: Vec<HostTensor> = consts_of
                        .iter()
                        .zip(&sig.inputs)
                        .map(|(c, s)| c.clone().unwrap_or_else(|| zeros(s)))
                        .collect();
                    let kernel = CpuKernel::build_with(sig, &values).map_err(|cpu_err| {
                        GpuShareError::NoExecutor {
                            epoch,
                            group: g.name.clone(),
                            gpu: gpu_err.clone(),
                            cpu: cpu_err.to_string(),
                        }
                    })?;
                    let mut outs = Vec::with_capacity(sig.outputs.len());
                    for s in &sig.outputs {
                        outs.push(pool.tensor(&ctx, &s.dims, gpu_dtype(s.dtype))?);
                    }
                    warn!(group = %g.name, pattern = %sig.pattern(), reason = %gpu_err, "group runs on the CPU executor");
                    (
                        Runner::Cpu {
                            kernel,
                            host: Mutex::new(values),
                        },
                        outs,
                        Where::Cpu(gpu_err),
                    )
                }
            };
            for (name, t) in g.outputs.iter().zip(&outs) {
                if share_outputs.contains(name.as_str()) {
                    pinned.insert(t.buffer.clone());
                }
                if allocated.insert(t.buffer.clone()) && !pinned.contains(&t.buffer) {
                    activation_bytes += t.buffer.size();
                }
                dev.insert(name.clone(), t.clone());
            }
            debug!(group = %g.name, pattern = %sig.pattern(), on = ?on, "group ready");
            placements.push(GroupPlacement {
                group: g.name.clone(),
                pattern: sig.pattern(),
                on,
            });
            steps.push(Step {
                group: g.name.clone(),
                runner,
                inputs: ins,
                outputs: outs,
                is_const: g.operands.iter().map(|t| consts.contains_key(t)).collect(),
            });
            // Tensors read for the last time here give their buffer back, unless a live
            // tensor (a view) shares it.
            let dead: Vec<String> = dev
                .keys()
                .filter(|t| last_use.get(t.as_str()).is_some_and(|&u| u <= gi))
                .filter(|t| !share_outputs.contains(t.as_str()))
                .cloned()
                .collect();
            let mut freed: Vec<wgpu::Buffer> = Vec::new();
            for t in dead {
                if let Some(d) = dev.remove(&t) {
                    if !pinned.contains(&d.buffer) && !freed.contains(&d.buffer) {
                        freed.push(d.buffer);
                    }
                }
            }
            for b in freed {
                if !dev.values().any(|t| t.buffer == b) {
                    pool.release(b);
                }
            }
        }
        let mut outputs = Vec::with_capacity(spec.outputs.len());
        for o in &spec.outputs {
            let t = dev
                .get(&o.tensor.name)
                .ok_or_else(|| GpuShareError::Group {
                    epoch,
                    group: "(share outputs)".into(),
                    what: format!("no group produces `{}`", o.tensor.name),
                })?;
            outputs.push((o.tensor.name.clone(), t.clone()));
        }
        let on_cpu = placements
            .iter()
            .filter(|p| matches!(p.on, Where::Cpu(_)))
            .count();
        info!(
            groups = placements.len(),
            on_gpu = placements.len() - on_cpu,
            on_cpu,
            weight_bytes,
            activation_bytes,
            adapter = %ctx.info.name,
            "share loaded on the GPU executor"
        );
        Ok(GpuShareExec {
            ctx,
            epoch,
            steps,
            inputs,
            outputs,
            placements,
            weight_bytes,
            activation_bytes,
        })
    }

    /// Checks every GPU kernel against tract on the same inputs: runs the share once on
    /// deterministic sample inputs, group by group, and moves each group whose outputs
    /// differ from tract's by more than `tol` (relative to the output's largest magnitude)
    /// to the CPU executor. Returns those groups; [`GpuShareExec::placements`] then says why
    /// they run on the CPU. A group tract cannot run alone stays unchecked on the GPU.
    pub fn verify(&mut self, tol: f32) -> Result<Vec<Mismatch>, GpuShareError> {
        let ctx = self.ctx.clone();
        let mut rng = fastrand::Rng::with_seed(11);
        for (_, t) in &self.inputs {
            let n = t.elements();
            let h = match t.dtype {
                GpuDType::F32 => {
                    HostTensor::f32(&t.dims, (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect())
                }
                GpuDType::I32 => HostTensor::i64(&t.dims, vec![0; n]),
            };
            write(&ctx, t, &h).map_err(|what| GpuShareError::Group {
                epoch: self.epoch,
                group: "(sample inputs)".into(),
                what,
            })?;
        }
        let mut found = Vec::new();
        for (step, placement) in self.steps.iter_mut().zip(&mut self.placements) {
            let kernel = match &step.runner {
                Runner::Cpu { kernel, host } => {
                    run_on_cpu(&ctx, self.epoch, step, kernel, host)?;
                    continue;
                }
                Runner::Gpu(k) => k,
            };
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("moirai-verify"),
                });
            kernel
                .bind(&ctx, &step.inputs, &step.outputs)
                .encode(&mut enc, None);
            ctx.queue.submit([enc.finish()]);
            let inputs = step
                .inputs
                .iter()
                .map(|t| read(&ctx, t))
                .collect::<Result<Vec<_>, _>>()?;
            let got = step
                .outputs
                .iter()
                .map(|t| read(&ctx, t))
                .collect::<Result<Vec<_>, _>>()?;
            let sig = &kernel.signature;
            let tract = CpuKernel::build_with(sig, &inputs)
                .and_then(|c| c.run(&inputs).map(|want| (c, want)));
            let (cpu, want) = match tract {
                Ok(r) => r,
                Err(e) => {
                    debug!(group = %step.group, error = %e, "tract cannot check this kernel");
                    continue;
                }
            };
            let d = host_rel_diff(&got, &want);
            if d.is_nan() || d > tol {
                warn!(group = %step.group, pattern = %sig.pattern(), rel_diff = d, "the GPU kernel differs from tract; the group runs on the CPU");
                found.push(Mismatch {
                    group: step.group.clone(),
                    pattern: sig.pattern(),
                    rel_diff: d,
                });
                placement.on = Where::Cpu(format!("differs from tract by {d:e} (relative)"));
                // Later groups see tract's values, as they will at run time.
                for (t, h) in step.outputs.iter().zip(&want) {
                    write(&ctx, t, h).map_err(|what| GpuShareError::Group {
                        epoch: self.epoch,
                        group: step.group.clone(),
                        what,
                    })?;
                }
                step.runner = Runner::Cpu {
                    kernel: cpu,
                    host: Mutex::new(inputs),
                };
            }
        }
        ctx.wait()?;
        Ok(found)
    }

    /// Which groups run where, in execution order.
    pub fn placements(&self) -> &[GroupPlacement] {
        &self.placements
    }

    /// One line: groups on the GPU, and each group on the CPU with its pattern.
    pub fn summary(&self) -> String {
        let cpu: Vec<String> = self
            .placements
            .iter()
            .filter(|p| matches!(p.on, Where::Cpu(_)))
            .map(|p| format!("{} ({})", p.group, p.pattern))
            .collect();
        let gpu = self.placements.len() - cpu.len();
        if cpu.is_empty() {
            format!("{gpu} groups, all on {}", self.ctx.info.name)
        } else {
            format!(
                "{} groups: {gpu} on {}, {} on the CPU: {}",
                self.placements.len(),
                self.ctx.info.name,
                cpu.len(),
                cpu.join(", ")
            )
        }
    }

    /// Runs one request: `inputs` by tensor name; returns the outputs by name.
    pub fn run(
        &self,
        inputs: &HashMap<String, (Vec<u64>, Vec<f32>)>,
    ) -> Result<NamedTensors, GpuShareError> {
        let ctx = &*self.ctx;
        for (spec, t) in &self.inputs {
            let (dims, values) = inputs
                .get(&spec.name)
                .ok_or_else(|| SubgraphError::MissingInput(spec.name.clone()))?;
            let shape_err = || SubgraphError::InputShape {
                name: spec.name.clone(),
                dims: dims.clone(),
                got: values.len(),
            };
            if dims.iter().product::<u64>() != t.elements() as u64 || values.len() != t.elements() {
                return Err(shape_err().into());
            }
            let h = HostTensor::f32(&t.dims, values.clone());
            write(ctx, t, &h).map_err(|_| shape_err())?;
        }
        let encoder = || {
            ctx.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("moirai-share"),
                })
        };
        let mut enc = encoder();
        for step in &self.steps {
            match &step.runner {
                Runner::Gpu(k) => {
                    k.bind(ctx, &step.inputs, &step.outputs)
                        .encode(&mut enc, None);
                }
                Runner::Cpu { kernel, host } => {
                    let done = std::mem::replace(&mut enc, encoder());
                    ctx.queue.submit([done.finish()]);
                    run_on_cpu(ctx, self.epoch, step, kernel, host)?;
                }
            }
        }
        ctx.queue.submit([enc.finish()]);
        let mut out = Vec::with_capacity(self.outputs.len());
        for (name, t) in &self.outputs {
            let h = read(ctx, t)?;
            let dims = h.dims.iter().map(|&d| d as u64).collect();
            out.push((name.clone(), dims, f32_values(h)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use moirai_orchestrator::infer::model::InferModel;
    use moirai_orchestrator::infer::tensor;

    use super::*;
    use crate::exec::compare::{absorb, stage_shares, Feed};
    use crate::exec::subgraph::SubgraphExec;

    /// The kernel tests' adapter, shared (same device and queue).
    fn ctx() -> Option<Arc<GpuContext>> {
        let c = crate::kernels::testutil::gpu()?;
        Some(Arc::new(GpuContext {
            adapter: c.adapter.clone(),
            device: c.device.clone(),
            queue: c.queue.clone(),
            info: c.info.clone(),
            limits: c.limits.clone(),
            timestamps: c.timestamps,
        }))
    }

    fn repo() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    /// A model directory of the ONNX test-data convention: model, input, expected output.
    struct Case {
        model: InferModel,
        input: (String, Vec<u64>, Vec<f32>),
        want: Vec<f32>,
    }

    fn case(dir: &Path) -> Case {
        let model = InferModel::load(&dir.join("model.onnx")).expect("model loads");
        let data = dir.join("test_data_set_0");
        let input = tensor::read(&data.join("input_0.pb")).expect("input_0.pb");
        let want = tensor::read(&data.join("output_0.pb")).expect("output_0.pb");
        let name = model.inputs()[0].name.clone();
        Case {
            model,
            input: (name, input.dims, input.values),
            want: want.values,
        }
    }

    /// Runs the shares in order, feeding each the tensors the earlier ones produced.
    fn run_shares(execs: &[GpuShareExec], input: &(String, Vec<u64>, Vec<f32>)) -> Feed {
        let mut known = Feed::new();
        known.insert(input.0.clone(), (input.1.clone(), input.2.clone()));
        for e in execs {
            let out = e.run(&known).expect("request runs");
            absorb(&mut known, out);
        }
        known
    }

    fn one_share(model: &InferModel) -> (SubgraphSpec, pb::ModelProto) {
        stage_shares(model, 1).expect("one share").remove(0)
    }

    /// max|got - want| / max|want|.
    fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len(), "output length");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        got.iter()
            .zip(want)
            .map(|(a, b)| {
                if a.is_nan() {
                    f32::INFINITY
                } else {
                    (a - b).abs()
                }
            })
            .fold(0.0, f32::max)
            / scale
    }

    fn whole_model_matches_its_reference(dir: &Path) {
        let Some(ctx) = ctx() else { return };
        let c = case(dir);
        let (spec, sub) = one_share(&c.model);
        let exec = GpuShareExec::load(ctx, &sub, &spec).expect("loads on the GPU executor");
        let out = run_shares(std::slice::from_ref(&exec), &c.input);
        let got = &out[&c.model.outputs()[0].name].1;
        let d = rel_diff(got, &c.want);
        eprintln!(
            "{}: {}; relative difference {d:e}",
            dir.display(),
            exec.summary()
        );
        assert!(d <= 1e-4, "{}: relative difference {d:e}", dir.display());
        // Twice: buffers reused across requests hold no stale state.
        let again = run_shares(std::slice::from_ref(&exec), &c.input);
        assert_eq!(&again[&c.model.outputs()[0].name].1, got);
    }

    #[test]
    fn the_tiny_cnn_as_one_share_matches_its_reference_output() {
        whole_model_matches_its_reference(&repo().join("tests/fixtures/onnx/tiny-cnn"));
    }

    #[test]
    fn cnn_families_as_one_share_match_onnxruntime() {
        // Squeeze-excitation gates, grouped convolutions, HardSwish, ConvNeXt's LayerNorm
        // and ViT's attention: the models/make_se_cnn_models.py fixtures.
        for m in [
            "tiny-effnet",
            "tiny-regnet",
            "tiny-mobilenetv3",
            "tiny-convnext",
            "tiny-vit",
        ] {
            whole_model_matches_its_reference(&repo().join("tests/fixtures/onnx").join(m));
        }
    }

    #[test]
    fn the_reference_models_as_one_share_match_their_reference_outputs() {
        let shared = repo().join("../shared/models/with-weights");
        for m in ["squeezenet1_1", "mobilenet_v2"] {
            let dir = shared.join(m);
            if !dir.join("model.onnx").is_file() {
                eprintln!("skipping {m}: {} is absent", dir.display());
                continue;
            }
            whole_model_matches_its_reference(&dir);
        }
    }

    #[test]
    fn a_share_split_in_two_gives_the_whole_models_output() {
        let Some(ctx) = ctx() else { return };
        let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
        let n = c.model.coarse.groups.len();
        assert!(n >= 2, "the fixture has {n} groups");
        let parts = stage_shares(&c.model, 2).expect("two shares");
        assert!(
            parts[1].0.inputs.iter().all(|t| t.name != c.input.0),
            "stage 2 reads the model input"
        );
        let execs: Vec<GpuShareExec> = parts
            .iter()
            .map(|(spec, sub)| GpuShareExec::load(ctx.clone(), sub, spec).expect("loads"))
            .collect();
        let out = run_shares(&execs, &c.input);
        let d = rel_diff(&out[&c.model.outputs()[0].name].1, &c.want);
        assert!(d <= 1e-4, "relative difference {d:e}");
    }

    #[test]
    fn groups_sent_to_the_cpu_run_there_and_give_the_same_output() {
        let Some(ctx) = ctx() else { return };
        let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
        let (spec, sub) = one_share(&c.model);
        // Every other kernel pattern on the CPU: activations cross host and device both ways.
        let exec =
            GpuShareExec::load_with(ctx, &sub, &spec, &|p| p.starts_with("Conv")).expect("loads");
        let on_cpu: Vec<&GroupPlacement> = exec
            .placements()
            .iter()
            .filter(|p| matches!(p.on, Where::Cpu(_)))
            .collect();
        assert!(!on_cpu.is_empty(), "{}", exec.summary());
        assert!(on_cpu.len() < exec.placements().len(), "{}", exec.summary());
        assert!(exec.summary().contains("on the CPU"), "{}", exec.summary());
        let out = run_shares(std::slice::from_ref(&exec), &c.input);
        let d = rel_diff(&out[&c.model.outputs()[0].name].1, &c.want);
        assert!(d <= 1e-4, "relative difference {d:e}");
        // Same answer as tract running the whole share.
        let tract = SubgraphExec::load(&sub, &spec).expect("tract loads");
        let mut feed = HashMap::new();
        feed.insert(c.input.0.clone(), (c.input.1.clone(), c.input.2.clone()));
        let want = tract.run(&feed).expect("tract runs");
        assert!(rel_diff(&out[&want[0].0].1, &want[0].2) <= 1e-4);
    }

    #[test]
    fn verifying_the_kernels_against_tract_finds_no_difference_on_the_fixture() {
        let Some(ctx) = ctx() else { return };
        let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
        let (spec, sub) = one_share(&c.model);
        let mut exec = GpuShareExec::load(ctx, &sub, &spec).expect("loads");
        let found = exec.verify(1e-3).expect("verifies");
        assert!(found.is_empty(), "{found:?}");
        assert!(exec.placements().iter().all(|p| p.on == Where::Gpu));
    }

    #[test]
    fn kernels_failing_verification_move_to_the_cpu_and_the_answer_stays_right() {
        let Some(ctx) = ctx() else { return };
        let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
        let (spec, sub) = one_share(&c.model);
        let mut exec = GpuShareExec::load(ctx, &sub, &spec).expect("loads");
        // A tolerance no kernel meets: every group tract can check fails it.
        let found = exec.verify(-1.0).expect("verifies");
        assert!(!found.is_empty());
        for m in &found {
            let p = exec
                .placements()
                .iter()
                .find(|p| p.group == m.group)
                .expect("placed");
            assert!(
                matches!(&p.on, Where::Cpu(why) if why.contains("differs from tract")),
                "{p:?}"
            );
        }
        let out = run_shares(std::slice::from_ref(&exec), &c.input);
        let d = rel_diff(&out[&c.model.outputs()[0].name].1, &c.want);
        assert!(d <= 1e-4, "relative difference {d:e}");
    }

    #[test]
    fn a_request_without_its_input_is_refused_by_name() {
        let Some(ctx) = ctx() else { return };
        let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
        let (spec, sub) = one_share(&c.model);
        let exec = GpuShareExec::load(ctx, &sub, &spec).expect("loads");
        let msg = exec.run(&HashMap::new()).unwrap_err().to_string();
        assert!(msg.contains(&c.input.0), "{msg}");
        let mut short = HashMap::new();
        short.insert(c.input.0.clone(), (c.input.1.clone(), vec![0.0; 3]));
        let msg = exec.run(&short).unwrap_err().to_string();
        assert!(msg.contains("3 values"), "{msg}");
    }
}
