//! [`KernelTimer`]s over the agent's profiler: the wgpu kernels on the chosen adapter, or
//! the CPU executor when the board has none.

use moirai_core::kernel::KernelSignature;

use super::{AdapterInfo, KernelTimer, TimerFactory};
use crate::gpu::{AdapterChoice, GpuContext};
use crate::profile::{Backend, Profiler};

/// Warm-up runs before the timed ones.
const WARMUPS: usize = 2;

struct GpuTimer(GpuContext);

impl KernelTimer for GpuTimer {
    fn time_ms(&mut self, sig: &KernelSignature, runs: u32) -> Result<f64, String> {
        Profiler::new(Backend::Gpu(&self.0), WARMUPS, runs as usize)
            .profile(sig)
            .map(|p| p.median_ms)
            .map_err(|e| e.to_string())
    }
}

struct CpuTimer;

impl KernelTimer for CpuTimer {
    fn time_ms(&mut self, sig: &KernelSignature, runs: u32) -> Result<f64, String> {
        Profiler::new(Backend::Cpu, WARMUPS, runs as usize)
            .profile(sig)
            .map(|p| p.median_ms)
            .map_err(|e| e.to_string())
    }
}

/// Opens the adapter `choice` (or the CPU executor when `cpu` is set or no adapter opens)
/// and returns what the birth says about it and the timer factory.
pub fn open(choice: &AdapterChoice, cpu: bool) -> (AdapterInfo, TimerFactory) {
    if !cpu {
        match GpuContext::open(choice) {
            Ok(ctx) => {
                let r = ctx.report();
                let info = AdapterInfo {
                    name: r.name.clone(),
                    backend: r.backend.to_lowercase(),
                };
                return (
                    info,
                    Box::new(move || Box::new(GpuTimer(ctx)) as Box<dyn KernelTimer>),
                );
            }
            Err(e) => tracing::warn!(error = %e, "no GPU adapter; profiling on the CPU executor"),
        }
    }
    (
        AdapterInfo {
            name: "cpu".into(),
            backend: "cpu".into(),
        },
        Box::new(|| Box::new(CpuTimer) as Box<dyn KernelTimer>),
    )
}
