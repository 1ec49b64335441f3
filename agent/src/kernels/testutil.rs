//! Test helpers: the shared GPU context, signature builders, and the GPU-vs-tract check.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::OnceLock;

use moirai_core::kernel::{AttrValue, DType, FusedNode, KernelClass, KernelSignature, TensorShape};

use crate::exec::cpu::CpuKernel;
use crate::exec::host::{sample_inputs, HostData, HostTensor};
use crate::gpu::buffers::{readback_f32, readback_words, BufferPool};
use crate::gpu::context::{AdapterChoice, GpuContext};
use crate::kernels::GpuKernel;

/// Set to run without any adapter (the GPU tests then pass vacuously, saying so).
pub const SKIP_ENV: &str = "MOIRAI_SKIP_GPU_TESTS";

/// The adapter all kernel tests share. Panics when there is none, unless `SKIP_ENV` is set.
pub fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::open(&AdapterChoice::from_env()) {
        Ok(ctx) => {
            // Straight to stderr: the test harness captures print macros, and the log must
            // say which adapter ran the kernel tests.
            let _ = writeln!(
                std::io::stderr(),
                "moirai-agent kernel tests run on: {}",
                ctx.report()
            );
            Some(ctx)
        }
        Err(e) => {
            if std::env::var_os(SKIP_ENV).is_some() {
                let _ = writeln!(
                    std::io::stderr(),
                    "moirai-agent kernel tests: no adapter ({e}); skipped because {SKIP_ENV} is set"
                );
                None
            } else {
                panic!("no wgpu adapter for the kernel tests: {e}. Install mesa-vulkan-drivers (lavapipe) or set {SKIP_ENV}=1");
            }
        }
    })
    .as_ref()
}

pub fn f32s(dims: &[&[usize]]) -> Vec<TensorShape> {
    dims.iter()
        .map(|d| TensorShape {
            dims: d.to_vec(),
            dtype: DType::F32,
        })
        .collect()
}

pub fn node(op: &str, attrs: &[(&str, AttrValue)]) -> FusedNode {
    FusedNode {
        op_type: op.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

pub fn sig(
    class: KernelClass,
    nodes: Vec<FusedNode>,
    inputs: Vec<TensorShape>,
    outputs: Vec<TensorShape>,
) -> KernelSignature {
    KernelSignature {
        class,
        nodes,
        inputs,
        outputs,
        flops: 0,
        bytes: 0,
        dag: None,
        shapes: Vec::new(),
    }
}

/// Runs the signature on the GPU and with tract on the same sample inputs and compares every
/// output element. Returns the largest absolute difference.
pub fn check(sig: &KernelSignature) -> f32 {
    check_with(sig, sample_inputs(sig, 7))
}

/// [`check`] on given inputs.
pub fn check_with(sig: &KernelSignature, inputs: Vec<HostTensor>) -> f32 {
    let Some(ctx) = gpu() else {
        return 0.0;
    };
    let pool = BufferPool::default();
    let kernel = GpuKernel::build(ctx, sig).unwrap_or_else(|e| panic!("build: {e}"));
    let dev: Vec<_> = inputs
        .iter()
        .map(|h| h.upload(ctx, &pool).expect("upload"))
        .collect();
    let outs = kernel.run(ctx, &pool, &dev).expect("run");
    let cpu = CpuKernel::build_with(sig, &inputs).unwrap_or_else(|e| panic!("cpu build: {e}"));
    let want = cpu.run(&inputs).unwrap_or_else(|e| panic!("cpu run: {e}"));
    assert_eq!(outs.len(), want.len(), "output count");
    let mut worst = 0.0f32;
    for (o, (g, w)) in outs.iter().zip(&want).enumerate() {
        // Integer and boolean outputs are i32 on the device.
        let got: Vec<f32> = match sig.outputs[o].dtype {
            DType::F32 | DType::F16 => readback_f32(ctx, g).expect("readback"),
            _ => readback_words(ctx, g)
                .expect("readback")
                .into_iter()
                .map(|w| w as i32 as f32)
                .collect(),
        };
        let HostData::F32(w) = &w.data else {
            panic!("tract output is not f32")
        };
        assert_eq!(got.len(), w.len(), "output {o} length");
        for (i, (a, b)) in got.iter().zip(w).enumerate() {
            let d = (a - b).abs();
            let tol = 1e-3 + 1e-3 * b.abs();
            assert!(
                d <= tol || (a.is_nan() && b.is_nan()),
                "{}: output {o}[{i}]: gpu {a} vs tract {b}",
                sig.key()
            );
            worst = worst.max(d);
        }
    }
    worst
}

/// Tensor shapes of one element type.
pub fn typed(dtype: DType, dims: &[&[usize]]) -> Vec<TensorShape> {
    dims.iter()
        .map(|d| TensorShape {
            dims: d.to_vec(),
            dtype,
        })
        .collect()
}
