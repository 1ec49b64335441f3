use moirai_core::kernel::{AttrValue as A, KernelClass as C};

use super::*;
use crate::kernels::testutil::{f32s, gpu, node, sig};

fn conv_relu() -> KernelSignature {
    sig(
        C::Conv,
        vec![
            node("Conv", &[("pads", A::Ints(vec![1; 4]))]),
            node("Relu", &[]),
        ],
        f32s(&[&[1, 4, 10, 10], &[8, 4, 3, 3], &[8]]),
        f32s(&[&[1, 8, 10, 10]]),
    )
}

#[test]
fn stats_take_the_median_and_relative_spread() {
    let (med, lo, hi, spread) = stats(vec![3.0, 1.0, 2.0, 10.0, 2.0]);
    assert_eq!((med, lo, hi), (2.0, 1.0, 10.0));
    assert!((spread - 4.5).abs() < 1e-12);
}

#[test]
fn a_fused_kernel_splits_into_head_and_elementwise_tail() {
    let (head, tail) = split_fused(&conv_relu()).unwrap();
    assert_eq!(head.pattern(), "Conv");
    assert_eq!(head.inputs.len(), 3);
    assert_eq!(tail.pattern(), "Relu");
    assert_eq!(tail.inputs[0].dims, vec![1, 8, 10, 10]);
    assert!(split_fused(&sig(
        C::Eltwise,
        vec![node("Relu", &[])],
        f32s(&[&[4]]),
        f32s(&[&[4]])
    ))
    .is_err());
}

#[test]
fn profiling_on_the_cpu_gives_positive_medians_for_every_run() {
    let p = Profiler::new(Backend::Cpu, 1, 3);
    let r = p.profile(&conv_relu()).unwrap();
    assert!(r.median_ms > 0.0 && r.min_ms <= r.median_ms && r.median_ms <= r.max_ms);
    assert_eq!(r.key, conv_relu().key());
}

#[test]
fn profiling_on_the_gpu_times_each_kernel_and_runs_the_fusion_test() {
    let Some(ctx) = gpu() else { return };
    let p = Profiler::new(Backend::Gpu(ctx), 1, 3);
    let r = p.profile(&conv_relu()).unwrap();
    assert!(r.median_ms > 0.0, "{r:?}");
    let v = p.fusion_test(&conv_relu()).unwrap();
    assert_eq!(v.parts.len(), 2);
    assert!(v.fused_ms > 0.0 && v.parts_ms() > 0.0);
    assert_eq!(v.pays, v.fused_ms < v.parts_ms());
}
