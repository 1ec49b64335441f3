//! `moirai-agent`: what runs on each board.
//!
//! - [`gpu`]: the wgpu context ([`gpu::GpuContext`]: adapter choice, limits, timestamp support)
//!   and device buffers ([`gpu::GpuTensor`], [`gpu::BufferPool`]).
//! - [`kernels`]: one WGSL kernel family per [`moirai_core::kernel::KernelClass`], built from a
//!   [`moirai_core::kernel::KernelSignature`] and specialised to its shapes
//!   ([`kernels::GpuKernel`]).
//! - [`exec`]: the CPU executor (tract) for boards without an adapter and the reference the
//!   kernel tests compare against ([`exec::cpu::CpuKernel`]).
//! - [`config`]: who the agent is (name, board file, broker) and whether it emulates a board.
//! - [`link`]: the MQTT loop (rumqttc, reconnects), the pure birth/death/`bd_seq` lifecycle
//!   and link probes; [`port`] carries the inference worker's traffic on that session.
//! - [`process`]: one agent process: the link and the inference worker
//!   ([`exec::worker`]) on one MQTT session.
//! - [`profile`]: the profiler (timestamp queries or wall clock, medians and spread), the
//!   fusion test, and recording into the profile store (`moirai_model::profiles`).
//! - [`selftest`]: `--self-test`: adapter probe, one kernel on the CPU executor (and the GPU),
//!   protocol round trip.
//!
//! The agent depends on the `shared/` crates only (`moirai-core`, `moirai-model`,
//! `moirai-link`); options and printing are the binary's (`src/commands/`, `src/main.rs`).

pub mod config;
pub mod exec;
pub mod gpu;
pub mod kernels;
pub mod link;
pub mod port;
pub mod process;
pub mod profile;
pub mod rollout;
pub mod selftest;
