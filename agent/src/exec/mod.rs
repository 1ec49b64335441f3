//! Execution of kernels on the host: tensors in host memory ([`host::HostTensor`]), sample
//! inputs for a signature ([`host::sample_inputs`]), and the tract CPU executor
//! ([`cpu::CpuKernel`]).

pub mod cpu;
pub mod host;
