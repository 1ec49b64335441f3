//! An agent's share of a plan executed on wgpu: its sub-model coarsened with the wgpu fusion
//! rules, one fused WGSL kernel ([`GpuKernel`]) per group, weights resident on the device.
//!
//! Everything is decided when the assignment arrives ([`GpuShareExec::load`]), not at the
//! first request:
//! - the sub-model is imported and coarsened, every constant a kernel reads is computed and
//!   uploaded once ([`super::constants`]);
//! - every kernel is generated, compiled and recorded once on its tensors (a validation error
//!   shows here), and every activation gets its device buffer (reused by a later tensor once
//!   its last reader has ran);
//! - every GPU kernel is checked against its group's own ONNX nodes on tract
//!   ([`super::group::GroupOnTract`]) on sample inputs before it serves; a board class checks
//!   a kernel signature once ([`LoadOptions::verdicts`]);
//! - a group whose kernel cannot be built or differs runs on tract instead: its inputs are
//!   read back, tract runs its nodes, its outputs are written back.
//!
//! [`GpuShareExec::placements`] says which groups run where and why. A request
//! ([`GpuShareExec::run`]) writes the share's inputs into their buffers, records every kernel
//! into one command buffer (split only around tract groups), and reads back the share's
//! outputs: activations stay on the device between kernels.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moirai_core::cost::Verdict;
use moirai_core::device::Backend;
use moirai_core::kernel::KernelSignature;
use moirai_core::tensor::{rel_diff, TensorValue};
use moirai_core::wire::data::{SubgraphSpec, TensorSpec};
use moirai_model::coarsen::rules::RuleSet;
use moirai_model::coarsen::{coarsen, FusedGroup};
use moirai_model::import::onnx::{self, ImportError, ImportOptions, OnnxModel};
use tracing::{debug, info, instrument, warn};
use tract_onnx::pb;

use super::constants::{share_constants, ConstantError};
use super::group::{GroupError, GroupOnTract};
use super::subgraph::{check_inputs, check_ops, NamedTensors, SubgraphError};
use super::values::{from_words, to_words, ValueError};
use crate::gpu::buffers::{read_bytes, BufferPool, GpuTensor};
use crate::gpu::context::{GpuContext, GpuError};
use crate::kernels::{gpu_dtype, GpuKernel};

/// Tolerance of the load-time check: max|gpu - tract| / max|tract| per kernel output.
pub const VERIFY_TOL: f32 = 1e-3;

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
    #[error(transparent)]
    Constant(#[from] ConstantError),
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
    #[error(transparent)]
    Tract(#[from] GroupError),
    #[error("group `{group}`: tensor `{tensor}`: {source}")]
    Value {
        group: String,
        tensor: String,
        #[source]
        source: ValueError,
    },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Where a group runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    Gpu,
    /// On tract, and why (its GPU kernel cannot be built, or differs from tract).
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

/// A GPU kernel whose outputs differ from tract's on the same inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub group: String,
    pub pattern: String,
    /// max|gpu - tract| / max|tract| over its outputs (infinite for a NaN or a shape
    /// mismatch).
    pub rel_diff: f32,
}

/// What the load-time check did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyReport {
    /// Kernels compared with tract at this load.
    pub checked: usize,
    /// Kernels whose verdict the board class already had (not run again).
    pub known: usize,
    /// Kernels that differ (checked now or known to), moved to tract.
    pub mismatches: Vec<Mismatch>,
    /// Time the check took.
    pub ms: f64,
}

/// A fault injected on purpose, to test how the agent answers a kernel that fails or hangs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The group fails at run time.
    Fail { group: String },
    /// The group takes this long (a hung kernel, for the deadline).
    Stall { group: String, for_ms: u64 },
}

/// Rewrites the generated WGSL of a kernel of this signature.
pub type Tamper<'a> = dyn Fn(&KernelSignature, String) -> String + 'a;

/// How to load a share.
pub struct LoadOptions<'a> {
    /// Groups whose kernel pattern this accepts run on tract whatever the GPU could do (to
    /// compare, or to route around a kernel).
    pub on_cpu: &'a dyn Fn(&str) -> bool,
    /// Check every GPU kernel against tract at this tolerance before it serves; `None` skips
    /// the check (benchmarks that want the raw kernels).
    pub verify: Option<f32>,
    /// Verdicts this board class already has, by kernel signature key: a kernel with one is
    /// not checked again. New verdicts are added.
    pub verdicts: Option<&'a mut BTreeMap<String, Verdict>>,
    /// Rewrites a kernel's generated WGSL before it compiles (a test corrupting one kernel on
    /// purpose: the check must catch it).
    pub tamper: Option<&'a Tamper<'a>>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            on_cpu: &|_| false,
            verify: Some(VERIFY_TOL),
            verdicts: None,
            tamper: None,
        }
    }
}

enum Runner {
    Gpu(GpuKernel),
    /// The group's own nodes on tract.
    Cpu(GroupOnTract),
}

/// One group ready to run: its kernel and the device tensors it reads and writes.
struct Step {
    group: String,
    signature: KernelSignature,
    runner: Runner,
    /// Buffers of the kernel's signature inputs, in signature order.
    operands: Vec<GpuTensor>,
    /// Buffers of the group's outputs, with what each holds.
    outputs: Vec<(TensorSpec, GpuTensor)>,
    /// The group's activations (what tract reads back), with their buffers.
    reads: Vec<(TensorSpec, GpuTensor)>,
}

/// A share compiled for one device.
pub struct GpuShareExec {
    ctx: Arc<GpuContext>,
    epoch: u64,
    steps: Vec<Step>,
    inputs: Vec<(TensorSpec, GpuTensor)>,
    outputs: Vec<(TensorSpec, GpuTensor)>,
    placements: Vec<GroupPlacement>,
    /// Bytes of the constants uploaded at load.
    pub weight_bytes: u64,
    /// Bytes of the activation buffers (after reuse).
    pub activation_bytes: u64,
    /// What the load-time check found.
    pub verified: VerifyReport,
    /// The group a request is running now (for the message of a request that overruns).
    running: Arc<Mutex<String>>,
    fault: Option<Fault>,
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

/// The words of a device tensor, read back (blocking).
fn read_words(ctx: &GpuContext, t: &GpuTensor) -> Result<Vec<u32>, GpuError> {
    let bytes = read_bytes(ctx, &t.buffer, 4 * t.elements() as u64)?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

/// A device tensor read back as the value `spec` says it holds.
fn read_value(
    ctx: &GpuContext,
    group: &str,
    spec: &TensorSpec,
    t: &GpuTensor,
) -> Result<TensorValue, GpuShareError> {
    let words = read_words(ctx, t)?;
    from_words(&spec.dims, &words, t.dtype, spec.dtype).map_err(|source| GpuShareError::Value {
        group: group.to_string(),
        tensor: spec.name.clone(),
        source,
    })
}

/// Writes a value into a device tensor.
fn write_value(
    ctx: &GpuContext,
    group: &str,
    spec: &TensorSpec,
    t: &GpuTensor,
    v: &TensorValue,
) -> Result<(), GpuShareError> {
    let words = to_words(v, t.dtype).map_err(|source| GpuShareError::Value {
        group: group.to_string(),
        tensor: spec.name.clone(),
        source,
    })?;
    if words.len() != t.elements() {
        return Err(GpuShareError::Group {
            epoch: 0,
            group: group.to_string(),
            what: format!(
                "{} values for the {} of `{}`",
                words.len(),
                t.elements(),
                spec.name
            ),
        });
    }
    ctx.queue
        .write_buffer(&t.buffer, 0, bytemuck::cast_slice(&words));
    Ok(())
}

/// Runs a tract step: reads its activations back, runs its nodes, writes its outputs.
fn run_on_tract(
    ctx: &GpuContext,
    step: &Step,
    tract: &GroupOnTract,
) -> Result<Vec<TensorValue>, GpuShareError> {
    let inputs = step
        .reads
        .iter()
        .map(|(spec, t)| read_value(ctx, &step.group, spec, t))
        .collect::<Result<Vec<_>, _>>()?;
    let outs = tract.run(&inputs)?;
    for ((spec, t), v) in step.outputs.iter().zip(&outs) {
        write_value(ctx, &step.group, spec, t, v)?;
    }
    Ok(outs)
}

/// Deterministic sample values for a share input: floats in [-1, 1); integers 0 (a valid id
/// and index everywhere); booleans true.
fn sample(spec: &TensorSpec, rng: &mut fastrand::Rng) -> TensorValue {
    use moirai_core::kernel::DType;
    use moirai_core::tensor::TensorData;
    let n = spec.elements() as usize;
    let data = match spec.dtype {
        DType::F32 | DType::F16 => {
            let v: Vec<f32> = (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect();
            return TensorValue::f32(&spec.dims, v);
        }
        DType::I64 => TensorData::I64(vec![0; n]),
        DType::I32 => TensorData::I32(vec![0; n]),
        DType::I8 => TensorData::I8(vec![0; n]),
        DType::U8 => TensorData::U8(vec![0; n]),
        DType::Bool => TensorData::Bool(vec![true; n]),
    };
    TensorValue {
        dims: spec.dims.clone(),
        data,
    }
}

/// max rel_diff over pairs of values (infinite when one is missing or differs in shape).
fn worst_diff(got: &[TensorValue], want: &[TensorValue]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(g, w)| rel_diff(g, w).unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max)
}

fn spec_of(model: &OnnxModel, t: &str) -> Result<TensorSpec, String> {
    let s = model
        .shape(t)
        .ok_or_else(|| format!("`{t}` has no static shape"))?;
    Ok(TensorSpec {
        name: t.to_string(),
        dtype: s.dtype,
        dims: s.dims.iter().map(|&d| d as u64).collect(),
    })
}

impl GpuShareExec {
    /// Checks, coarsens and compiles the sub-model of `spec` on `ctx`, uploading its weights
    /// and checking every kernel before it serves ([`LoadOptions::default`]).
    pub fn load(
        ctx: Arc<GpuContext>,
        model: &pb::ModelProto,
        spec: &SubgraphSpec,
    ) -> Result<Self, GpuShareError> {
        Self::load_with(ctx, model, spec, LoadOptions::default())
    }

    /// [`GpuShareExec::load`] with options.
    #[instrument(skip_all, fields(epoch = spec.epoch, model = %spec.model))]
    // Sets of buffers: `wgpu::Buffer` hashes and compares by identity, not by its contents.
    #[allow(clippy::mutable_key_type)]
    pub fn load_with(
        ctx: Arc<GpuContext>,
        model: &pb::ModelProto,
        spec: &SubgraphSpec,
        opts: LoadOptions,
    ) -> Result<Self, GpuShareError> {
        let epoch = spec.epoch;
        check_ops(model, epoch)?;
        let import = ImportOptions {
            require_weights: true,
            ..Default::default()
        };
        let onnx = onnx::from_proto(model, Path::new(&spec.model), &import)
            .map_err(|source| GpuShareError::Import { epoch, source })?;
        let coarse = coarsen(&onnx, &RuleSet::for_backend(Backend::Wgpu));
        let consts = share_constants(model, &onnx, &coarse, epoch)?;
        let pool = BufferPool::default();
        let mut dev: HashMap<String, GpuTensor> = HashMap::new();
        // Buffers never given back: weights, the share's inputs and outputs.
        let mut pinned: HashSet<wgpu::Buffer> = HashSet::new();
        let mut weight_bytes = 0;
        // Constants the GPU's 32-bit words cannot hold (a Slice end of INT64_MAX): a kernel
        // that reads one is refused and its group runs on tract.
        let mut off_gpu: HashMap<String, String> = HashMap::new();
        for (name, v) in &consts {
            let shape: Vec<usize> = v.dims.iter().map(|&d| d as usize).collect();
            let words = match to_words(v, gpu_dtype(v.dtype())) {
                Ok(w) => w,
                Err(e) => {
                    off_gpu.insert(name.clone(), e.to_string());
                    continue;
                }
            };
            let t = pool.tensor(&ctx, &shape, gpu_dtype(v.dtype()))?;
            ctx.queue
                .write_buffer(&t.buffer, 0, bytemuck::cast_slice(&words));
            weight_bytes += t.buffer.size();
            pinned.insert(t.buffer.clone());
            dev.insert(name.clone(), t);
        }
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for s in &spec.inputs {
            let dims: Vec<usize> = s.dims.iter().map(|&d| d as usize).collect();
            let t = pool.tensor(&ctx, &dims, gpu_dtype(s.dtype))?;
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
            for t in g.operands.iter().chain(&g.inputs).chain(&g.outputs) {
                last_use.insert(t.as_str(), gi);
            }
        }
        let mut steps = Vec::with_capacity(coarse.groups.len());
        let mut placements = Vec::with_capacity(coarse.groups.len());
        let mut activation_bytes = inputs.iter().map(|(_, t)| t.buffer.size()).sum::<u64>();
        let mut allocated: HashSet<wgpu::Buffer> = HashSet::new();
        for (gi, g) in coarse.groups.iter().enumerate() {
            let step =
                Self::build_step(&ctx, &pool, model, &onnx, g, &consts, &dev, &off_gpu, &opts)
                    .map_err(|what| match what {
                        StepError::Group(what) => GpuShareError::Group {
                            epoch,
                            group: g.name.clone(),
                            what,
                        },
                        StepError::NoExecutor { gpu, cpu } => GpuShareError::NoExecutor {
                            epoch,
                            group: g.name.clone(),
                            gpu,
                            cpu,
                        },
                        StepError::Gpu(e) => GpuShareError::Gpu(e),
                    })?;
            let (step, on) = step;
            for (spec, t) in &step.outputs {
                if share_outputs.contains(spec.name.as_str()) {
                    pinned.insert(t.buffer.clone());
                }
                if allocated.insert(t.buffer.clone()) && !pinned.contains(&t.buffer) {
                    activation_bytes += t.buffer.size();
                }
                dev.insert(spec.name.clone(), t.clone());
            }
            debug!(group = %g.name, pattern = %g.signature.pattern(), on = ?on, "group ready");
            placements.push(GroupPlacement {
                group: g.name.clone(),
                pattern: g.signature.pattern(),
                on,
            });
            steps.push(step);
            // Tensors read for the last time here give their buffer back, unless a live
            // tensor (a view) shares it.
            let dead: Vec<String> = dev
                .keys()
                .filter(|t| last_use.get(t.as_str()).is_some_and(|&u| u <= gi))
                .filter(|t| !share_outputs.contains(t.as_str()) && !consts.contains_key(*t))
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
            outputs.push((o.tensor.clone(), t.clone()));
        }
        let mut exec = GpuShareExec {
            ctx,
            epoch,
            steps,
            inputs,
            outputs,
            placements,
            weight_bytes,
            activation_bytes,
            verified: VerifyReport::default(),
            running: Arc::new(Mutex::new(String::new())),
            fault: None,
        };
        if let Some(tol) = opts.verify {
            exec.verified =
                exec.verify(model, &onnx, &coarse.groups, &consts, tol, opts.verdicts)?;
        }
        let on_cpu = exec
            .placements
            .iter()
            .filter(|p| matches!(p.on, Where::Cpu(_)))
            .count();
        info!(
            groups = exec.placements.len(),
            on_gpu = exec.placements.len() - on_cpu,
            on_cpu,
            checked = exec.verified.checked,
            known = exec.verified.known,
            differ = exec.verified.mismatches.len(),
            verify_ms = exec.verified.ms,
            weight_bytes = exec.weight_bytes,
            activation_bytes = exec.activation_bytes,
            adapter = %exec.ctx.info.name,
            "share loaded on the GPU executor"
        );
        Ok(exec)
    }

    /// One group: its GPU kernel when it builds and records, else its nodes on tract.
    #[allow(clippy::too_many_arguments)]
    fn build_step(
        ctx: &GpuContext,
        pool: &BufferPool,
        proto: &pb::ModelProto,
        onnx: &OnnxModel,
        g: &FusedGroup,
        consts: &HashMap<String, TensorValue>,
        dev: &HashMap<String, GpuTensor>,
        off_gpu: &HashMap<String, String>,
        opts: &LoadOptions,
    ) -> Result<(Step, Where), StepError> {
        let sig = &g.signature;
        if g.operands.len() != sig.inputs.len() || g.outputs.len() != sig.outputs.len() {
            return Err(StepError::Group(format!(
                "{} operands and {} outputs for a signature of {} inputs and {} outputs",
                g.operands.len(),
                g.outputs.len(),
                sig.inputs.len(),
                sig.outputs.len()
            )));
        }
        let buffer = |t: &String| {
            dev.get(t)
                .cloned()
                .ok_or_else(|| StepError::Group(format!("tensor `{t}` is not available")))
        };
        // The kernel's operands, unless one cannot be on the GPU (the group then runs on
        // tract, which reads only its activations).
        let mut operands = Vec::with_capacity(g.operands.len());
        let mut off = None;
        for (j, t) in g.operands.iter().enumerate() {
            if let Some(why) = off_gpu.get(t) {
                off = Some(format!("constant `{t}`: {why}"));
                break;
            }
            let d = buffer(t)?;
            if d.elements() != sig.inputs[j].elements() {
                return Err(StepError::Group(format!(
                    "operand `{t}` has shape {:?}, the signature says {:?}",
                    d.dims, sig.inputs[j].dims
                )));
            }
            operands.push(d);
        }
        let mut reads = Vec::with_capacity(g.inputs.len());
        for t in &g.inputs {
            reads.push((spec_of(onnx, t).map_err(StepError::Group)?, buffer(t)?));
        }
        let out_specs = g
            .outputs
            .iter()
            .map(|t| spec_of(onnx, t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StepError::Group)?;
        let gpu = if let Some(why) = off {
            Err(why)
        } else if (opts.on_cpu)(&sig.pattern()) {
            Err("sent to the CPU by the caller".to_string())
        } else {
            let edit = opts.tamper.map(|f| move |src: String| f(sig, src));
            GpuKernel::build_with(
                ctx,
                sig,
                edit.as_ref().map(|f| f as &dyn Fn(String) -> String),
            )
            .and_then(|k| {
                let outs = k.alloc_outputs(ctx, pool, &operands)?;
                Ok((k, outs))
            })
            .map_err(|e| e.to_string())
            .and_then(|(k, outs)| {
                dry_run(ctx, &k, &operands, &outs)?;
                Ok((k, outs))
            })
        };
        let (runner, outs, on) = match gpu {
            Ok((k, outs)) => (Runner::Gpu(k), outs, Where::Gpu),
            Err(gpu_err) => {
                let tract = GroupOnTract::load(proto, onnx, g, consts).map_err(|e| {
                    StepError::NoExecutor {
                        gpu: gpu_err.clone(),
                        cpu: e.to_string(),
                    }
                })?;
                let mut outs = Vec::with_capacity(out_specs.len());
                for s in &out_specs {
                    let dims: Vec<usize> = s.dims.iter().map(|&d| d as usize).collect();
                    outs.push(
                        pool.tensor(ctx, &dims, gpu_dtype(s.dtype))
                            .map_err(StepError::Gpu)?,
                    );
                }
                warn!(group = %g.name, pattern = %sig.pattern(), reason = %gpu_err, "group runs on tract");
                (Runner::Cpu(tract), outs, Where::Cpu(gpu_err))
            }
        };
        Ok((
            Step {
                group: g.name.clone(),
                signature: sig.clone(),
                runner,
                operands,
                outputs: out_specs.into_iter().zip(outs).collect(),
                reads,
            },
            on,
        ))
    }

    /// Checks every GPU kernel against its group's own nodes on tract: runs the share once on
    /// deterministic sample inputs, group by group, and moves each group whose outputs differ
    /// by more than `tol` (relative to the output's largest magnitude) to tract. A kernel
    /// whose signature already has a verdict in `verdicts` is not checked again (a known
    /// mismatch moves at once).
    fn verify(
        &mut self,
        proto: &pb::ModelProto,
        onnx: &OnnxModel,
        groups: &[FusedGroup],
        consts: &HashMap<String, TensorValue>,
        tol: f32,
        verdicts: Option<&mut BTreeMap<String, Verdict>>,
    ) -> Result<VerifyReport, GpuShareError> {
        let t0 = Instant::now();
        // Without the board class's verdicts, this load's own: a signature is checked once.
        let mut own = BTreeMap::new();
        let verdicts = verdicts.unwrap_or(&mut own);
        let ctx = self.ctx.clone();
        let mut report = VerifyReport::default();
        let mut rng = fastrand::Rng::with_seed(11);
        for (spec, t) in &self.inputs {
            write_value(&ctx, "(sample inputs)", spec, t, &sample(spec, &mut rng))?;
        }
        for ((step, placement), g) in self.steps.iter_mut().zip(&mut self.placements).zip(groups) {
            let kernel = match &step.runner {
                Runner::Cpu(tract) => {
                    run_on_tract(&ctx, step, tract)?;
                    continue;
                }
                Runner::Gpu(k) => k,
            };
            let key = step.signature.key();
            let known = verdicts.get(&key).copied();
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("moirai-verify"),
                });
            let outs: Vec<GpuTensor> = step.outputs.iter().map(|(_, t)| t.clone()).collect();
            kernel
                .bind(&ctx, &step.operands, &outs)
                .encode(&mut enc, None);
            ctx.queue.submit([enc.finish()]);
            let verdict = match known {
                Some(v) => {
                    report.known += 1;
                    if v.matches {
                        continue;
                    }
                    v
                }
                None => {
                    report.checked += 1;
                    let tract = GroupOnTract::load(proto, onnx, g, consts)?;
                    let inputs = step
                        .reads
                        .iter()
                        .map(|(spec, t)| read_value(&ctx, &step.group, spec, t))
                        .collect::<Result<Vec<_>, _>>()?;
                    let got = step
                        .outputs
                        .iter()
                        .map(|(spec, t)| read_value(&ctx, &step.group, spec, t))
                        .collect::<Result<Vec<_>, _>>()?;
                    let want = tract.run(&inputs)?;
                    let d = worst_diff(&got, &want);
                    let v = Verdict {
                        matches: d <= f64::from(tol),
                        rel_diff: d.is_finite().then_some(d),
                    };
                    verdicts.insert(key.clone(), v);
                    if v.matches {
                        continue;
                    }
                    // Later groups see tract's values, as they will at run time.
                    for ((spec, t), w) in step.outputs.iter().zip(&want) {
                        write_value(&ctx, &step.group, spec, t, w)?;
                    }
                    step.runner = Runner::Cpu(tract);
                    v
                }
            };
            let d = verdict.rel_diff.unwrap_or(f64::INFINITY) as f32;
            warn!(group = %step.group, pattern = %step.signature.pattern(), rel_diff = d, "the GPU kernel differs from tract; the group runs on tract");
            report.mismatches.push(Mismatch {
                group: step.group.clone(),
                pattern: step.signature.pattern(),
                rel_diff: d,
            });
            placement.on = Where::Cpu(format!("differs from tract by {d:e} (relative)"));
            if matches!(step.runner, Runner::Gpu(_)) {
                let tract = GroupOnTract::load(proto, onnx, g, consts)?;
                run_on_tract(&ctx, step, &tract)?;
                step.runner = Runner::Cpu(tract);
            }
        }
        ctx.wait()?;
        report.ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(report)
    }

    /// Which groups run where, in execution order.
    pub fn placements(&self) -> &[GroupPlacement] {
        &self.placements
    }

    /// Says which group a request is running in `to` from now on (the worker's deadline
    /// names it when a request overruns).
    pub fn report_progress_to(&mut self, to: Arc<Mutex<String>>) {
        self.running = to;
    }

    /// Makes one group fail or stall at run time (tests of how failures are answered).
    pub fn inject(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    /// One line: groups on the GPU, and each group on tract with its pattern.
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

    fn set_running(&self, group: &str) {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        r.clear();
        r.push_str(group);
    }

    /// Injected faults for `group`.
    fn faulted(&self, group: &str) -> Result<(), GpuShareError> {
        match &self.fault {
            Some(Fault::Fail { group: g }) if g == group => Err(GpuShareError::Group {
                epoch: self.epoch,
                group: group.to_string(),
                what: "the kernel failed (a fault injected on purpose)".into(),
            }),
            Some(Fault::Stall { group: g, for_ms }) if g == group => {
                std::thread::sleep(Duration::from_millis(*for_ms));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs one request: `inputs` by tensor name; returns the outputs by name.
    pub fn run(
        &self,
        inputs: &HashMap<String, TensorValue>,
    ) -> Result<NamedTensors, GpuShareError> {
        let ctx = &*self.ctx;
        let specs: Vec<TensorSpec> = self.inputs.iter().map(|(s, _)| s.clone()).collect();
        for ((spec, v), (_, t)) in check_inputs(&specs, inputs)?.into_iter().zip(&self.inputs) {
            write_value(ctx, "(share inputs)", spec, t, v)?;
        }
        let encoder = || {
            ctx.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("moirai-share"),
                })
        };
        let mut enc = encoder();
        for step in &self.steps {
            self.set_running(&step.group);
            self.faulted(&step.group)?;
            match &step.runner {
                Runner::Gpu(k) => {
                    let outs: Vec<GpuTensor> =
                        step.outputs.iter().map(|(_, t)| t.clone()).collect();
                    k.bind(ctx, &step.operands, &outs).encode(&mut enc, None);
                }
                Runner::Cpu(tract) => {
                    let done = std::mem::replace(&mut enc, encoder());
                    ctx.queue.submit([done.finish()]);
                    run_on_tract(ctx, step, tract)?;
                }
            }
        }
        self.set_running("(reading the outputs back)");
        ctx.queue.submit([enc.finish()]);
        let mut out = Vec::with_capacity(self.outputs.len());
        for (spec, t) in &self.outputs {
            out.push((
                spec.name.clone(),
                read_value(ctx, "(share outputs)", spec, t)?,
            ));
        }
        self.set_running("");
        Ok(out)
    }
}

/// Why one group could not be set up.
enum StepError {
    Group(String),
    NoExecutor { gpu: String, cpu: String },
    Gpu(GpuError),
}

#[cfg(test)]
mod tests;
