//! The profiler: times fused kernels on this board, and checks that fusion pays.
//!
//! On the GPU each run is one compute pass bracketed by timestamp queries when the adapter has
//! them (`Features::TIMESTAMP_QUERY`); otherwise each run is submitted alone and timed by the
//! wall clock until the queue drains. Warm-up runs (pipeline JIT, first-touch allocation) are
//! discarded; the table keeps the median of the timed runs and their spread. The CPU backend
//! times the tract plan the same way by wall clock.
//!
//! The fusion test follows nn-Meter: for a fused kernel `A+B+...`, time the head `A` and the
//! epilogue `B+...` as separate kernels; the fusion rule pays on this device when
//! `T_AB < T_A + T_B`.

pub mod bench;
pub mod probe;
pub mod store;

use std::time::Instant;

use moirai_core::kernel::{KernelClass, KernelSignature, TensorShape};
use serde::{Deserialize, Serialize};

use crate::exec::cpu::{CpuError, CpuKernel};
use crate::exec::host::{sample_inputs, HostTensor};
use crate::gpu::buffers::{read_bytes, BufferPool, GpuTensor};
use crate::gpu::context::{GpuContext, GpuError};
use crate::kernels::epilogue::is_elementwise;
use crate::kernels::{wire, GpuKernel, KernelError};

/// Why a kernel could not be profiled.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("kernel {kernel}: cannot split for the fusion test: {why}")]
    NoSplit { kernel: String, why: String },
}

/// How a time was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Clock {
    /// GPU timestamp queries around the pass.
    Timestamp,
    /// Host wall clock around submit-and-wait (includes submission overhead).
    WallClock,
}

/// Where kernels run.
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    Gpu(&'a GpuContext),
    Cpu,
}

impl Backend<'_> {
    pub fn name(&self) -> String {
        match self {
            Backend::Gpu(ctx) => format!("wgpu:{}", ctx.info.name),
            Backend::Cpu => "cpu:tract".into(),
        }
    }
}

/// The timing of one kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelProfile {
    /// [`KernelSignature::key`].
    pub key: String,
    pub pattern: String,
    pub class: KernelClass,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// (max - min) / median over the timed runs.
    pub spread: f64,
    pub runs: usize,
    pub clock: Clock,
    pub flops: u64,
    pub bytes: u64,
}

impl KernelProfile {
    pub fn gflops(&self) -> f64 {
        self.flops as f64 / (self.median_ms * 1e6)
    }
    pub fn gbytes(&self) -> f64 {
        self.bytes as f64 / (self.median_ms * 1e6)
    }
}

/// The verdict of the fusion test on one fused kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusionVerdict {
    pub pattern: String,
    pub fused_ms: f64,
    /// (pattern, median ms) of each part run alone.
    pub parts: Vec<(String, f64)>,
    pub pays: bool,
}

impl FusionVerdict {
    pub fn parts_ms(&self) -> f64 {
        self.parts.iter().map(|p| p.1).sum()
    }
}

/// Times kernels: `warmups` discarded runs, then `runs` timed ones.
pub struct Profiler<'a> {
    pub backend: Backend<'a>,
    pub warmups: usize,
    pub runs: usize,
    pool: BufferPool,
}

fn stats(mut t: Vec<f64>) -> (f64, f64, f64, f64) {
    t.sort_by(f64::total_cmp);
    let n = t.len();
    if n == 0 {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let med = if n % 2 == 1 {
        t[n / 2]
    } else {
        0.5 * (t[n / 2 - 1] + t[n / 2])
    };
    let (lo, hi) = (t[0], t[n - 1]);
    let spread = if med > 0.0 { (hi - lo) / med } else { 0.0 };
    (med, lo, hi, spread)
}

impl<'a> Profiler<'a> {
    pub fn new(backend: Backend<'a>, warmups: usize, runs: usize) -> Self {
        Profiler {
            backend,
            warmups,
            runs: runs.max(1),
            pool: BufferPool::default(),
        }
    }

    /// Times one kernel on random inputs of its shapes.
    pub fn profile(&self, sig: &KernelSignature) -> Result<KernelProfile, ProfileError> {
        let (times, clock) = match self.backend {
            Backend::Gpu(ctx) => self.time_gpu(ctx, sig)?,
            Backend::Cpu => (self.time_cpu(sig)?, Clock::WallClock),
        };
        let (median_ms, min_ms, max_ms, spread) = stats(times);
        Ok(KernelProfile {
            key: sig.key(),
            pattern: sig.pattern(),
            class: sig.class,
            median_ms,
            min_ms,
            max_ms,
            spread,
            runs: self.runs,
            clock,
            flops: sig.flops,
            bytes: sig.bytes,
        })
    }

    fn time_cpu(&self, sig: &KernelSignature) -> Result<Vec<f64>, ProfileError> {
        let k = CpuKernel::build(sig)?;
        let inputs = sample_inputs(sig, 1);
        for _ in 0..self.warmups {
            k.run(&inputs)?;
        }
        let mut times = Vec::with_capacity(self.runs);
        for _ in 0..self.runs {
            let t0 = Instant::now();
            k.run(&inputs)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(times)
    }

    fn upload(&self, ctx: &GpuContext, inputs: &[HostTensor]) -> Result<Vec<GpuTensor>, GpuError> {
        inputs.iter().map(|h| h.upload(ctx, &self.pool)).collect()
    }

    fn time_gpu(
        &self,
        ctx: &GpuContext,
        sig: &KernelSignature,
    ) -> Result<(Vec<f64>, Clock), ProfileError> {
        let kernel = GpuKernel::build(ctx, sig)?;
        let inputs = self.upload(ctx, &sample_inputs(sig, 1))?;
        let outputs = kernel.alloc_outputs(ctx, &self.pool, &inputs)?;
        let bound = kernel.bind(ctx, &inputs, &outputs);
        let submit = |ts: Option<(&wgpu::QuerySet, u32)>, n: usize| {
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            for r in 0..n {
                bound.encode(&mut enc, ts.map(|(q, base)| (q, base + 2 * r as u32)));
            }
            enc
        };
        if self.warmups > 0 {
            ctx.queue.submit([submit(None, self.warmups).finish()]);
            ctx.wait()?;
        }
        let times = if ctx.timestamps && kernel.dispatches() > 0 {
            let n = self.runs as u32;
            let qs = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("moirai-profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * n,
            });
            let bytes = 16 * n as u64;
            let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("moirai-timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = submit(Some((&qs, 0)), self.runs);
            enc.resolve_query_set(&qs, 0..2 * n, &resolve, 0);
            ctx.queue.submit([enc.finish()]);
            let raw = read_bytes(ctx, &resolve, bytes)?;
            let ticks: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            let period_ns = ctx.queue.get_timestamp_period() as f64;
            (0..self.runs)
                .map(|r| ticks[2 * r + 1].saturating_sub(ticks[2 * r]) as f64 * period_ns * 1e-6)
                .collect()
        } else {
            let mut v = Vec::with_capacity(self.runs);
            for _ in 0..self.runs {
                let t0 = Instant::now();
                ctx.queue.submit([submit(None, 1).finish()]);
                ctx.wait()?;
                v.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            v
        };
        let clock = if ctx.timestamps && kernel.dispatches() > 0 {
            Clock::Timestamp
        } else {
            Clock::WallClock
        };
        drop(bound);
        for t in inputs.into_iter().chain(outputs) {
            self.pool.release(t.buffer);
        }
        Ok((times, clock))
    }

    /// The nn-Meter fusion test for one fused kernel.
    pub fn fusion_test(&self, sig: &KernelSignature) -> Result<FusionVerdict, ProfileError> {
        let (head, tail) = split_fused(sig)?;
        let fused = self.profile(sig)?;
        let a = self.profile(&head)?;
        let b = self.profile(&tail)?;
        let parts = vec![(a.pattern, a.median_ms), (b.pattern, b.median_ms)];
        let parts_ms: f64 = parts.iter().map(|p| p.1).sum();
        Ok(FusionVerdict {
            pattern: sig.pattern(),
            fused_ms: fused.median_ms,
            pays: fused.median_ms < parts_ms,
            parts,
        })
    }
}

/// Broadcast shape of several shapes (numpy rules).
fn broadcast(shapes: &[&[usize]]) -> Vec<usize> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..rank)
        .map(|d| {
            shapes
                .iter()
                .filter_map(|s| {
                    let off = rank - s.len();
                    (d >= off).then(|| s[d - off])
                })
                .max()
                .unwrap_or(1)
        })
        .collect()
}

/// Splits `A+B+...` into the head `A` and the element-wise rest `B+...` as two signatures.
pub fn split_fused(
    sig: &KernelSignature,
) -> Result<(KernelSignature, KernelSignature), ProfileError> {
    let no = |why: &str| ProfileError::NoSplit {
        kernel: sig.pattern(),
        why: why.into(),
    };
    if sig.nodes.len() < 2 {
        return Err(no("a single op"));
    }
    if !sig.nodes[1..].iter().all(|n| is_elementwise(&n.op_type)) || sig.outputs.len() != 1 {
        return Err(no("the tail is not element-wise"));
    }
    let wiring = wire(sig)?;
    let out = &sig.outputs[0];
    let mid_dims = if sig.class == KernelClass::Eltwise {
        let shapes: Vec<&[usize]> = wiring[0]
            .iter()
            .map(|&j| sig.inputs[j].dims.as_slice())
            .collect();
        broadcast(&shapes)
    } else {
        out.dims.clone()
    };
    let mid = TensorShape {
        dims: mid_dims,
        dtype: out.dtype,
    };
    let head_inputs: Vec<TensorShape> = wiring[0].iter().map(|&j| sig.inputs[j].clone()).collect();
    let mut tail_inputs = vec![mid.clone()];
    for w in &wiring[1..] {
        tail_inputs.extend(w.iter().map(|&j| sig.inputs[j].clone()));
    }
    let elems = |t: &[TensorShape]| t.iter().map(|x| x.bytes() as u64).sum::<u64>();
    let tail_flops = (sig.nodes.len() as u64 - 1) * out.elements() as u64;
    let head = KernelSignature {
        class: sig.class,
        nodes: vec![sig.nodes[0].clone()],
        bytes: elems(&head_inputs) + mid.bytes() as u64,
        inputs: head_inputs,
        outputs: vec![mid],
        flops: sig.flops.saturating_sub(tail_flops),
        dag: None,
        shapes: Vec::new(),
    };
    let tail = KernelSignature {
        class: KernelClass::Eltwise,
        nodes: sig.nodes[1..].to_vec(),
        bytes: elems(&tail_inputs) + out.bytes() as u64,
        inputs: tail_inputs,
        outputs: vec![out.clone()],
        flops: tail_flops,
        dag: None,
        shapes: Vec::new(),
    };
    Ok((head, tail))
}

#[cfg(test)]
mod tests;
