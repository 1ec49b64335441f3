//! Adapter choice and device creation.
//!
//! The agent takes the best adapter the board has: a discrete GPU before an integrated one,
//! either before a software rasteriser (lavapipe, llvmpipe) or other CPU adapter. An override by
//! name (`--adapter`, or `MOIRAI_ADAPTER`) picks the first adapter whose name contains the
//! given text. The device is requested with the adapter's own limits rather than WebGPU's
//! defaults: kernels are specialised to the real limits (workgroup size, storage binding size),
//! and the defaults would waste large boards.

use std::fmt;
use std::time::Duration;

use tracing::{debug, info};

/// Everything that can go wrong while opening or using the device.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no wgpu adapter found (backends tried: Vulkan); use the CPU executor (--backend cpu)"
    )]
    NoAdapter,
    #[error("no adapter name contains {wanted:?}; adapters present: {present}")]
    NoSuchAdapter { wanted: String, present: String },
    #[error("requesting a device on adapter {adapter:?}: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("mapping buffer {label:?} for readback failed: {reason}")]
    Map { label: String, reason: String },
    #[error("device poll failed: {0}")]
    Poll(String),
    #[error(
        "tensor of {bytes} bytes exceeds this adapter's storage binding limit of {limit} bytes"
    )]
    TooLarge { bytes: u64, limit: u64 },
    #[error("validation error in {what}: {message}")]
    Validation { what: String, message: String },
}

/// How to choose the adapter.
#[derive(Clone, Debug, Default)]
pub enum AdapterChoice {
    /// Discrete > integrated > virtual > CPU.
    #[default]
    Best,
    /// The first adapter whose name contains this text (case-insensitive).
    NameContains(String),
}

impl AdapterChoice {
    /// `MOIRAI_ADAPTER` if set, else [`AdapterChoice::Best`].
    pub fn from_env() -> Self {
        match std::env::var("MOIRAI_ADAPTER") {
            Ok(s) if !s.trim().is_empty() => AdapterChoice::NameContains(s),
            _ => AdapterChoice::Best,
        }
    }
}

/// What the agent reports about its adapter.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub timestamps: bool,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_invocations: u32,
    pub max_workgroup_storage: u32,
    pub max_storage_buffers_per_stage: u32,
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {}); timestamps: {}; max storage binding {} MiB, \
             workgroup {} invocations / {} KiB shared, {} storage buffers per stage",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            if self.timestamps {
                "yes"
            } else {
                "no (wall clock)"
            },
            self.max_storage_binding >> 20,
            self.max_workgroup_invocations,
            self.max_workgroup_storage >> 10,
            self.max_storage_buffers_per_stage,
        )
    }
}

/// The opened device: adapter info, device, queue.
pub struct GpuContext {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Timestamp queries at pass boundaries are available.
    pub timestamps: bool,
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    /// Opens the chosen adapter (blocking).
    pub fn open(choice: &AdapterChoice) -> Result<Self, GpuError> {
        pollster::block_on(Self::open_async(choice))
    }

    /// All adapters the Vulkan backend sees, best first.
    pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
        let instance = instance();
        let mut v: Vec<_> = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .map(|a| a.get_info())
            .collect();
        v.sort_by_key(|i| rank(i.device_type));
        v
    }

    async fn open_async(choice: &AdapterChoice) -> Result<Self, GpuError> {
        let instance = instance();
        let mut adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        if adapters.is_empty() {
            return Err(GpuError::NoAdapter);
        }
        adapters.sort_by_key(|a| rank(a.get_info().device_type));
        for a in &adapters {
            let i = a.get_info();
            debug!(name = %i.name, backend = ?i.backend, kind = ?i.device_type, "adapter found");
        }
        let adapter = match choice {
            AdapterChoice::Best => adapters.swap_remove(0),
            AdapterChoice::NameContains(wanted) => {
                let w = wanted.to_lowercase();
                match adapters
                    .iter()
                    .position(|a| a.get_info().name.to_lowercase().contains(&w))
                {
                    Some(i) => adapters.swap_remove(i),
                    None => {
                        let present = adapters
                            .iter()
                            .map(|a| a.get_info().name)
                            .collect::<Vec<_>>()
                            .join(", ");
                        return Err(GpuError::NoSuchAdapter {
                            wanted: wanted.clone(),
                            present,
                        });
                    }
                }
            }
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut required_features = wgpu::Features::empty();
        if timestamps {
            required_features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let t0 = std::time::Instant::now();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("moirai-agent"),
                required_features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            })?;
        info!(adapter = %info.name, backend = ?info.backend, ms = t0.elapsed().as_millis() as u64, "device opened");
        Ok(GpuContext {
            adapter,
            device,
            queue,
            info,
            limits,
            timestamps,
        })
    }

    pub fn report(&self) -> AdapterReport {
        AdapterReport {
            name: self.info.name.clone(),
            backend: format!("{:?}", self.info.backend),
            device_type: format!("{:?}", self.info.device_type),
            driver: format!("{} {}", self.info.driver, self.info.driver_info)
                .trim()
                .to_string(),
            timestamps: self.timestamps,
            max_storage_binding: self.limits.max_storage_buffer_binding_size,
            max_buffer: self.limits.max_buffer_size,
            max_workgroup_invocations: self.limits.max_compute_invocations_per_workgroup,
            max_workgroup_storage: self.limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_stage: self.limits.max_storage_buffers_per_shader_stage,
        }
    }

    /// A software adapter (lavapipe, llvmpipe, SwiftShader) runs on the host CPU.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(Duration::from_secs(600)),
            })
            .map(|_| ())
            .map_err(|e| GpuError::Poll(e.to_string()))
    }

    /// Compiles a WGSL compute shader (entry point `main`), reporting WGSL errors as values.
    pub fn pipeline(&self, label: &str, wgsl: &str) -> Result<wgpu::ComputePipeline, GpuError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Kernels initialise what they read from shared memory; skipping the
                    // implicit zeroing saves a pass over it per workgroup.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Validation {
                what: label.to_string(),
                message: e.to_string(),
            });
        }
        Ok(pipeline)
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::VULKAN;
    }
    // Validation layers are slow and usually absent on boards.
    desc.flags = wgpu::InstanceFlags::empty();
    wgpu::Instance::new(desc)
}
