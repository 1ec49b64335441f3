//! Device tensors: storage buffers with a shape, a pool that recycles them, upload and readback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::context::{GpuContext, GpuError};

/// Element type as stored on the device. WGSL has no 64-bit integers: ONNX `int64` indices are
/// narrowed to `i32` on upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuDType {
    F32,
    I32,
}

/// A tensor resident on the device. Cloning shares the buffer: reshapes are views.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    pub dims: Vec<usize>,
    pub dtype: GpuDType,
}

impl GpuTensor {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The same bytes under another shape with as many elements.
    pub fn view(&self, dims: &[usize]) -> Option<GpuTensor> {
        (dims.iter().product::<usize>() == self.elements()).then(|| GpuTensor {
            buffer: self.buffer.clone(),
            dims: dims.to_vec(),
            dtype: self.dtype,
        })
    }
}

// UNIFORM too: CPU adapters read some matmul operands through uniform bindings (see
// kernels::matmul).
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::UNIFORM)
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Recycles storage buffers by byte size, so repeated runs of the same kernels (profiling,
/// inference with fixed shapes) allocate nothing after the first.
#[derive(Clone, Default)]
pub struct BufferPool {
    free: Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>,
}

/// Sizes are rounded up to 256 bytes (and never zero) so nearby sizes share buffers.
fn rounded(bytes: u64) -> u64 {
    bytes.max(4).div_ceil(256) * 256
}

impl BufferPool {
    /// A storage buffer of at least `bytes` bytes, contents undefined.
    pub fn acquire(&self, ctx: &GpuContext, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let size = rounded(bytes);
        let limit = ctx.limits.max_storage_buffer_binding_size;
        if size > limit {
            return Err(GpuError::TooLarge { bytes: size, limit });
        }
        if let Ok(mut free) = self.free.lock() {
            if let Some(b) = free.get_mut(&size).and_then(|v| v.pop()) {
                return Ok(b);
            }
        }
        Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("moirai-tensor"),
            size,
            usage: USAGE,
            mapped_at_creation: false,
        }))
    }

    /// Gives a buffer back for reuse. Only do this once nothing in flight reads it.
    pub fn release(&self, buffer: wgpu::Buffer) {
        if let Ok(mut free) = self.free.lock() {
            free.entry(buffer.size()).or_default().push(buffer);
        }
    }

    pub fn tensor(
        &self,
        ctx: &GpuContext,
        dims: &[usize],
        dtype: GpuDType,
    ) -> Result<GpuTensor, GpuError> {
        let n: usize = dims.iter().product();
        Ok(GpuTensor {
            buffer: self.acquire(ctx, 4 * n as u64)?,
            dims: dims.to_vec(),
            dtype,
        })
    }

    pub fn upload_f32(
        &self,
        ctx: &GpuContext,
        dims: &[usize],
        data: &[f32],
    ) -> Result<GpuTensor, GpuError> {
        let t = self.tensor(ctx, dims, GpuDType::F32)?;
        ctx.queue
            .write_buffer(&t.buffer, 0, bytemuck::cast_slice(&data[..t.elements()]));
        Ok(t)
    }

    pub fn upload_i32(
        &self,
        ctx: &GpuContext,
        dims: &[usize],
        data: &[i32],
    ) -> Result<GpuTensor, GpuError> {
        let t = self.tensor(ctx, dims, GpuDType::I32)?;
        ctx.queue
            .write_buffer(&t.buffer, 0, bytemuck::cast_slice(&data[..t.elements()]));
        Ok(t)
    }
}

/// Copies the first `bytes` bytes (a multiple of 4) of a buffer back to the host (blocking).
pub fn read_bytes(ctx: &GpuContext, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
    let size = bytes.max(4);
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("moirai-readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
    ctx.queue.submit([enc.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    let map_err = |reason: String| GpuError::Map {
        label: "moirai-readback".into(),
        reason,
    };
    rx.recv()
        .map_err(|e| map_err(e.to_string()))?
        .map_err(|e| map_err(e.to_string()))?;
    let view = staging
        .get_mapped_range(..)
        .map_err(|e| map_err(e.to_string()))?;
    let out = view[..bytes as usize].to_vec();
    drop(view);
    staging.unmap();
    Ok(out)
}

/// Copies a tensor back to the host (blocking) as raw 32-bit words.
pub fn readback_words(ctx: &GpuContext, t: &GpuTensor) -> Result<Vec<u32>, GpuError> {
    let bytes = read_bytes(ctx, &t.buffer, 4 * t.elements() as u64)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub fn readback_f32(ctx: &GpuContext, t: &GpuTensor) -> Result<Vec<f32>, GpuError> {
    Ok(readback_words(ctx, t)?
        .into_iter()
        .map(f32::from_bits)
        .collect())
}
