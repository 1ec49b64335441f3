//! Execution of kernels on the host: tensors in host memory ([`host::HostTensor`]), sample
//! inputs for a signature ([`host::sample_inputs`]), and the tract CPU executor
//! ([`cpu::CpuKernel`]); a plan's share run for real with its weights, on tract
//! ([`subgraph`]) or on wgpu with per-group CPU fallback ([`gpu_share`]), and the inference
//! loop that feeds it over MQTT ([`worker`]), with an optional direct TCP path between agents
//! ([`direct`]); the two executors timed side by side ([`compare`]); tensor values of every
//! boundary dtype into and out of both executors ([`values`]).

pub mod compare;
pub mod constants;
pub mod cpu;
pub mod direct;
pub mod gpu_share;
pub mod group;
pub mod host;
pub mod subgraph;
pub mod values;
pub mod watch;
pub mod worker;
