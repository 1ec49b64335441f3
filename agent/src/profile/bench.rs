//! `bench-kernels`: one representative kernel per class at a typical size, its achieved
//! GFLOP/s and GB/s, tract's matmul at the same size side by side, and the device's copy
//! bandwidth as the reference a memory-bound kernel should approach.

use std::time::Instant;

use moirai_core::kernel::{
    AttrValue as A, DType, FusedNode, KernelClass as C, KernelSignature, TensorShape,
};

use super::{Backend, KernelProfile, ProfileError, Profiler};
use crate::gpu::buffers::BufferPool;
use crate::gpu::context::GpuContext;

fn t(dims: &[usize]) -> TensorShape {
    TensorShape {
        dims: dims.to_vec(),
        dtype: DType::F32,
    }
}

fn n(op: &str, attrs: &[(&str, A)]) -> FusedNode {
    FusedNode {
        op_type: op.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn with_bytes(mut s: KernelSignature, flops: u64) -> KernelSignature {
    s.flops = flops;
    s.bytes = s
        .inputs
        .iter()
        .chain(&s.outputs)
        .map(|x| x.bytes() as u64)
        .sum();
    s
}

/// A plain `n x n x n` matmul.
pub fn matmul(n: usize) -> KernelSignature {
    with_bytes(
        KernelSignature {
            class: C::MatMul,
            nodes: vec![n_op("MatMul")],
            inputs: vec![t(&[n, n]), t(&[n, n])],
            outputs: vec![t(&[n, n])],
            flops: 0,
            bytes: 0,
            dag: None,
            shapes: Vec::new(),
        },
        2 * (n as u64).pow(3),
    )
}

fn n_op(op: &str) -> FusedNode {
    n(op, &[])
}

/// The representative kernels, one or two per class.
pub fn suite(mm: usize) -> Vec<(&'static str, KernelSignature)> {
    let conv = |x: [usize; 4], oc: usize, k: usize, s: usize, g: usize| {
        let oh = (x[2] + 2 * (k / 2) - k) / s + 1;
        let ow = (x[3] + 2 * (k / 2) - k) / s + 1;
        let out = [x[0], oc, oh, ow];
        with_bytes(
            KernelSignature {
                class: C::Conv,
                nodes: vec![
                    n(
                        "Conv",
                        &[
                            ("pads", A::Ints(vec![(k / 2) as i64; 4])),
                            ("strides", A::Ints(vec![s as i64; 2])),
                            ("group", A::Int(g as i64)),
                        ],
                    ),
                    n_op("Relu"),
                ],
                inputs: vec![t(&x), t(&[oc, x[1] / g, k, k]), t(&[oc])],
                outputs: vec![t(&out)],
                flops: 0,
                bytes: 0,
                dag: None,
                shapes: Vec::new(),
            },
            2 * (out.iter().product::<usize>() * (x[1] / g) * k * k) as u64,
        )
    };
    let ew = [1, 64, 56, 56];
    let ew_n = ew.iter().product::<usize>() as u64;
    vec![
        ("matmul", matmul(mm)),
        (
            "gemm+bias (classifier)",
            with_bytes(
                KernelSignature {
                    class: C::MatMul,
                    nodes: vec![n("Gemm", &[("transB", A::Int(1))])],
                    inputs: vec![t(&[1, 512]), t(&[1000, 512]), t(&[1000])],
                    outputs: vec![t(&[1, 1000])],
                    flops: 0,
                    bytes: 0,
                    dag: None,
                    shapes: Vec::new(),
                },
                2 * 512 * 1000,
            ),
        ),
        ("conv3x3+relu", conv([1, 64, 56, 56], 64, 3, 1, 1)),
        ("conv1x1+relu", conv([1, 64, 56, 56], 256, 1, 1, 1)),
        ("depthwise3x3+relu", conv([1, 144, 56, 56], 144, 3, 1, 144)),
        (
            "maxpool3x3s2",
            with_bytes(
                KernelSignature {
                    class: C::Pool,
                    nodes: vec![n(
                        "MaxPool",
                        &[
                            ("kernel_shape", A::Ints(vec![3, 3])),
                            ("strides", A::Ints(vec![2, 2])),
                            ("pads", A::Ints(vec![1; 4])),
                        ],
                    )],
                    inputs: vec![t(&[1, 64, 112, 112])],
                    outputs: vec![t(&[1, 64, 56, 56])],
                    flops: 0,
                    bytes: 0,
                    dag: None,
                    shapes: Vec::new(),
                },
                64 * 56 * 56 * 9,
            ),
        ),
        (
            "add+relu",
            with_bytes(
                KernelSignature {
                    class: C::Eltwise,
                    nodes: vec![n_op("Add"), n_op("Relu")],
                    inputs: vec![t(&ew), t(&ew)],
                    outputs: vec![t(&ew)],
                    flops: 0,
                    bytes: 0,
                    dag: None,
                    shapes: Vec::new(),
                },
                2 * ew_n,
            ),
        ),
        (
            "softmax",
            with_bytes(
                KernelSignature {
                    class: C::Softmax,
                    nodes: vec![n("Softmax", &[("axis", A::Int(-1))])],
                    inputs: vec![t(&[1, 12, 128, 128])],
                    outputs: vec![t(&[1, 12, 128, 128])],
                    flops: 0,
                    bytes: 0,
                    dag: None,
                    shapes: Vec::new(),
                },
                4 * 12 * 128 * 128,
            ),
        ),
        (
            "layernorm",
            with_bytes(
                KernelSignature {
                    class: C::LayerNorm,
                    nodes: vec![n("LayerNormalization", &[("axis", A::Int(-1))])],
                    inputs: vec![t(&[1, 128, 768]), t(&[768]), t(&[768])],
                    outputs: vec![t(&[1, 128, 768])],
                    flops: 0,
                    bytes: 0,
                    dag: None,
                    shapes: Vec::new(),
                },
                8 * 128 * 768,
            ),
        ),
        (
            "transpose",
            with_bytes(
                KernelSignature {
                    class: C::Copy,
                    nodes: vec![n("Transpose", &[("perm", A::Ints(vec![0, 2, 1, 3]))])],
                    inputs: vec![t(&[1, 128, 12, 64])],
                    outputs: vec![t(&[1, 12, 128, 64])],
                    flops: 0,
                    bytes: 0,
                    dag: None,
                    shapes: Vec::new(),
                },
                0,
            ),
        ),
        (
            "gather (embedding)",
            with_bytes(
                KernelSignature {
                    class: C::Gather,
                    nodes: vec![n("Gather", &[("axis", A::Int(0))])],
                    inputs: vec![
                        t(&[8192, 768]),
                        TensorShape {
                            dims: vec![1, 128],
                            dtype: DType::I64,
                        },
                    ],
                    outputs: vec![t(&[1, 128, 768])],
                    flops: 0,
                    bytes: 0,
                    dag: None,
                    shapes: Vec::new(),
                },
                0,
            ),
        ),
    ]
}

fn row(label: &str, shape: &str, p: &KernelProfile) -> String {
    format!(
        "{:<24} {:<26} {:>10.3} {:>7.1}% {:>9.2} {:>8.2}  {:?}",
        label,
        shape,
        p.median_ms,
        100.0 * p.spread,
        p.gflops(),
        p.gbytes(),
        p.clock
    )
}

fn shape_of(s: &KernelSignature) -> String {
    s.inputs
        .first()
        .map(|t| {
            t.dims
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        })
        .unwrap_or_default()
}

/// Device-to-device copy bandwidth in GB/s (read + write), wall clock, median of `runs`.
pub fn copy_bandwidth(ctx: &GpuContext, runs: usize) -> f64 {
    let pool = BufferPool::default();
    let bytes: u64 = (64u64 << 20).min(ctx.limits.max_storage_buffer_binding_size / 2);
    let (Ok(a), Ok(b)) = (pool.acquire(ctx, bytes), pool.acquire(ctx, bytes)) else {
        return 0.0;
    };
    let mut times = Vec::new();
    for r in 0..runs + 1 {
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
        let t0 = Instant::now();
        ctx.queue.submit([enc.finish()]);
        if ctx.wait().is_err() {
            return 0.0;
        }
        if r > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let (med, ..) = super::stats(times);
    2.0 * bytes as f64 / med / 1e9
}

/// Runs the bench, handing each line of its tables to `out` as it is measured.
pub fn run(
    ctx: Option<&GpuContext>,
    mm: usize,
    warmups: usize,
    runs: usize,
    tract_threads: usize,
    only: Option<&str>,
    out: &mut dyn FnMut(String),
) -> Result<(), ProfileError> {
    let picked = |label: &str| only.is_none_or(|o| label.contains(o));
    let header = || {
        format!(
            "{:<24} {:<26} {:>10} {:>8} {:>9} {:>8}  clock",
            "kernel", "input", "median ms", "spread", "GFLOP/s", "GB/s"
        )
    };
    if let Some(ctx) = ctx {
        let bw = copy_bandwidth(ctx, runs);
        out(format!(
            "adapter figures: {}; measured buffer copy {:.2} GB/s; wgpu reports no peak FLOP/s",
            ctx.report(),
            bw
        ));
        let p = Profiler::new(Backend::Gpu(ctx), warmups, runs);
        out(format!("\n== wgpu kernels on {} ==", ctx.info.name));
        out(header());
        for (label, s) in suite(mm).into_iter().filter(|(l, _)| picked(l)) {
            match p.profile(&s) {
                Ok(r) => out(row(label, &shape_of(&s), &r)),
                Err(e) => out(format!("{label:<24} FAILED: {e}")),
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if tract_threads == 0 {
        cores
    } else {
        tract_threads
    };
    out(format!(
        "\n== tract (CPU executor) side by side, {cores} cores on this host =="
    ));
    out(header());
    let cpu = Profiler::new(Backend::Cpu, warmups, runs);
    let mm_sig = matmul(mm);
    let mut configs = if picked("matmul") { vec![1] } else { vec![] };
    if threads > 1 && !configs.is_empty() {
        configs.push(threads);
    }
    for th in configs {
        let exec = if th == 1 {
            tract_linalg::multithread::Executor::SingleThread
        } else {
            tract_linalg::multithread::Executor::multithread(th)
        };
        tract_linalg::multithread::set_default_executor(exec);
        let label = format!("tract matmul {th} thr");
        match cpu.profile(&mm_sig) {
            Ok(r) => out(row(&label, &shape_of(&mm_sig), &r)),
            Err(e) => out(format!("{label:<24} FAILED: {e}")),
        }
    }
    tract_linalg::multithread::set_default_executor(
        tract_linalg::multithread::Executor::SingleThread,
    );
    if ctx.is_none() {
        for (label, s) in suite(mm).into_iter().skip(1).filter(|(l, _)| picked(l)) {
            match cpu.profile(&s) {
                Ok(r) => out(row(label, &shape_of(&s), &r)),
                Err(e) => out(format!("{label:<24} FAILED: {e}")),
            }
        }
    }
    Ok(())
}
