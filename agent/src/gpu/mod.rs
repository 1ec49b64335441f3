//! The wgpu side of the agent: one [`GpuContext`] per process (adapter, device, queue) and the
//! device tensors kernels read and write ([`GpuTensor`], [`BufferPool`]).

pub mod buffers;
pub mod context;

pub use buffers::{BufferPool, GpuTensor};
pub use context::{AdapterChoice, GpuContext, GpuError};
