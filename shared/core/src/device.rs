//! Boards and clusters: the figures the cost model needs about each device, and the network
//! between them.
//!
//! A [`BoardSpec`] describes a board class (one TOML file in `firmware-configs/`): peak
//! arithmetic rate per precision, memory bandwidth and capacity, kernel launch overhead, NIC
//! speed, and which backend executes kernels on it. A [`Cluster`] is a list of named devices,
//! each with its board, plus the link between every ordered pair. Reading files is the
//! orchestrator's job (`cluster.rs`); this module parses text and checks figures.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::graph;
use crate::ids::DeviceId;
use crate::link::{LinkSpec, Links};

/// Which inference backend executes the fused kernels on a board. The coarsener has one rule
/// set per backend, because what gets fused at run time depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The agent's WGSL kernels through wgpu (GPU, or lavapipe on a CPU).
    Wgpu,
    /// A CPU runtime (tract-style kernels).
    Cpu,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Wgpu, Backend::Cpu];

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Wgpu => "wgpu",
            Backend::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wgpu" => Ok(Backend::Wgpu),
            "cpu" => Ok(Backend::Cpu),
            other => Err(DeviceError::UnknownBackend(other.to_string())),
        }
    }
}

/// Arithmetic precision of a kernel, to pick the peak rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    F32,
    F16,
    Int8,
}

/// Peak arithmetic rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSpec {
    /// Peak FP32 rate in GFLOP/s (a fused multiply-add counts 2).
    pub f32_gflops: f64,
    /// Peak FP16 rate in GFLOP/s; FP32's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f16_gflops: Option<f64>,
    /// Peak INT8 rate in GOP/s; FP32's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8_gops: Option<f64>,
}

/// Memory of the processor that runs the kernels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// Peak memory bandwidth in GB/s (10^9 bytes per second).
    pub bandwidth_gbps: f64,
    /// Installed memory in MiB.
    pub capacity_mb: u64,
    /// What is left for model parameters and activations after the OS and runtime, in MiB.
    pub usable_mb: u64,
}

/// Run-time overheads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Fixed cost of launching one kernel (dispatch, synchronisation), in microseconds.
    pub launch_overhead_us: f64,
}

/// Network interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Line rate of the board's network interface, in Mbit/s.
    pub nic_mbps: f64,
}

/// A board class: everything the roofline cost model needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoardSpec {
    /// The board class id, e.g. `jetson-orin-nano` (the profile store is keyed by it).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The backend that executes kernels on this board.
    pub backend: Backend,
    pub compute: ComputeSpec,
    pub memory: MemorySpec,
    pub runtime: RuntimeSpec,
    pub network: NetworkSpec,
}

/// Why a board, cluster or backend name was refused.
#[derive(Debug, Error, PartialEq)]
pub enum DeviceError {
    #[error("{origin}: {message}")]
    Toml { origin: String, message: String },
    #[error("board `{board}`: `{field}` is {value}, expected {expected}")]
    BadFigure {
        board: String,
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error(
        "board `{board}`: usable memory ({usable_mb} MiB) exceeds capacity ({capacity_mb} MiB)"
    )]
    UsableOverCapacity {
        board: String,
        usable_mb: u64,
        capacity_mb: u64,
    },
    #[error("unknown backend `{0}` (expected `wgpu` or `cpu`)")]
    UnknownBackend(String),
    #[error("cluster `{0}` has no devices")]
    EmptyCluster(String),
    #[error("cluster `{cluster}`: device `{device}` is defined twice")]
    DuplicateDevice { cluster: String, device: String },
    #[error("cluster `{cluster}`: link {from} -> {to}: bandwidth {bandwidth_mbps} Mbit/s and latency {latency_ms} ms; expected bandwidth > 0 and latency >= 0")]
    BadLink {
        cluster: String,
        from: String,
        to: String,
        bandwidth_mbps: f64,
        latency_ms: f64,
    },
}

impl BoardSpec {
    /// Parses a board TOML document; `origin` (a path) goes into error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<BoardSpec, DeviceError> {
        let board: BoardSpec = toml::from_str(text).map_err(|e| DeviceError::Toml {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        board.validate()?;
        Ok(board)
    }

    /// Checks that every figure is finite and positive where it must be.
    pub fn validate(&self) -> Result<(), DeviceError> {
        let positive = |field: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(DeviceError::BadFigure {
                    board: self.name.clone(),
                    field,
                    value,
                    expected: "a finite number > 0",
                })
            }
        };
        positive("compute.f32_gflops", self.compute.f32_gflops)?;
        if let Some(v) = self.compute.f16_gflops {
            positive("compute.f16_gflops", v)?;
        }
        if let Some(v) = self.compute.int8_gops {
            positive("compute.int8_gops", v)?;
        }
        positive("memory.bandwidth_gbps", self.memory.bandwidth_gbps)?;
        positive("memory.usable_mb", self.memory.usable_mb as f64)?;
        positive("network.nic_mbps", self.network.nic_mbps)?;
        let o = self.runtime.launch_overhead_us;
        if !(o.is_finite() && o >= 0.0) {
            return Err(DeviceError::BadFigure {
                board: self.name.clone(),
                field: "runtime.launch_overhead_us",
                value: o,
                expected: "a finite number >= 0",
            });
        }
        if self.memory.usable_mb > self.memory.capacity_mb {
            return Err(DeviceError::UsableOverCapacity {
                board: self.name.clone(),
                usable_mb: self.memory.usable_mb,
                capacity_mb: self.memory.capacity_mb,
            });
        }
        Ok(())
    }

    /// Peak rate in FLOP/s for a precision (FP32's when the board gives none for it).
    pub fn peak_flops(&self, p: Precision) -> f64 {
        let g = match p {
            Precision::F32 => self.compute.f32_gflops,
            Precision::F16 => self.compute.f16_gflops.unwrap_or(self.compute.f32_gflops),
            Precision::Int8 => self.compute.int8_gops.unwrap_or(self.compute.f32_gflops),
        };
        g * 1e9
    }

    /// Memory bandwidth in bytes per second.
    pub fn bandwidth_bytes_per_s(&self) -> f64 {
        self.memory.bandwidth_gbps * 1e9
    }

    /// Memory available to the ops placed on the board, in bytes.
    pub fn usable_memory_bytes(&self) -> u64 {
        self.memory.usable_mb.saturating_mul(1024 * 1024)
    }
}

/// One device of a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterDevice {
    pub name: String,
    pub board: BoardSpec,
}

/// Devices and the network between them. Built through [`Cluster::new`], which checks names
/// and links, so a `Cluster` always has a usable link for every ordered pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    devices: Vec<ClusterDevice>,
    /// `links[a * k + b]`: the path from device a to device b, capped by both NICs.
    links: Vec<LinkSpec>,
}

impl Cluster {
    /// `default_link` applies to every pair not in `links` (`(from, to, link)`, directed: give
    /// both directions for a symmetric link). Each pair's bandwidth is capped by both ends'
    /// NIC speed.
    pub fn new(
        name: impl Into<String>,
        devices: Vec<ClusterDevice>,
        default_link: LinkSpec,
        links: &[(DeviceId, DeviceId, LinkSpec)],
    ) -> Result<Cluster, DeviceError> {
        let name = name.into();
        if devices.is_empty() {
            return Err(DeviceError::EmptyCluster(name));
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].iter().any(|o| o.name == d.name) {
                return Err(DeviceError::DuplicateDevice {
                    cluster: name,
                    device: d.name.clone(),
                });
            }
            d.board.validate()?;
        }
        let k = devices.len();
        let bad = |from: usize, to: usize, l: &LinkSpec| DeviceError::BadLink {
            cluster: name.clone(),
            from: devices[from].name.clone(),
            to: devices[to].name.clone(),
            bandwidth_mbps: l.bandwidth_mbps,
            latency_ms: l.latency_ms,
        };
        if !default_link.is_valid() {
            return Err(DeviceError::BadLink {
                cluster: name.clone(),
                from: "*".into(),
                to: "*".into(),
                bandwidth_mbps: default_link.bandwidth_mbps,
                latency_ms: default_link.latency_ms,
            });
        }
        let mut matrix = vec![default_link; k * k];
        for &(a, b, l) in links {
            if !l.is_valid() {
                return Err(bad(a.index(), b.index(), &l));
            }
            matrix[a.index() * k + b.index()] = l;
        }
        for a in 0..k {
            for b in 0..k {
                let cap = devices[a]
                    .board
                    .network
                    .nic_mbps
                    .min(devices[b].board.network.nic_mbps);
                matrix[a * k + b] = matrix[a * k + b].capped(cap);
            }
        }
        Ok(Cluster {
            name,
            devices,
            links: matrix,
        })
    }

    pub fn devices(&self) -> &[ClusterDevice] {
        &self.devices
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The path between every ordered pair of devices (NIC caps applied).
    pub fn links(&self) -> Links {
        let k = self.devices.len();
        Links::from_fn(k, |a, b| self.links[a * k + b])
    }

    /// The path from `a` to `b` (NIC caps applied).
    pub fn link(&self, a: DeviceId, b: DeviceId) -> LinkSpec {
        self.links[a.index() * self.devices.len() + b.index()]
    }

    /// Time in ms to move `bytes` from `a` to `b`; 0 on the same device.
    pub fn transfer_ms(&self, a: DeviceId, b: DeviceId, bytes: u64) -> f64 {
        if a == b {
            0.0
        } else {
            self.link(a, b).transfer_ms(bytes)
        }
    }

    /// The devices as the placer's graph names them (memory = the board's usable memory).
    pub fn graph_devices(&self) -> Vec<graph::Device> {
        self.devices
            .iter()
            .map(|d| graph::Device {
                name: d.name.clone(),
                memory_bytes: d.board.usable_memory_bytes(),
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const BOARD: &str = r#"
        name = "test-board"
        backend = "wgpu"
        [compute]
        f32_gflops = 1000.0
        f16_gflops = 2000.0
        [memory]
        bandwidth_gbps = 50.0
        capacity_mb = 4096
        usable_mb = 3000
        [runtime]
        launch_overhead_us = 10.0
        [network]
        nic_mbps = 1000.0
    "#;

    pub(crate) fn board() -> BoardSpec {
        BoardSpec::from_toml(BOARD, "test").unwrap()
    }

    #[test]
    fn a_board_parses_and_reports_its_peaks() {
        let b = board();
        assert_eq!(b.peak_flops(Precision::F32), 1e12);
        assert_eq!(b.peak_flops(Precision::F16), 2e12);
        // No int8 figure: FP32's rate stands in.
        assert_eq!(b.peak_flops(Precision::Int8), 1e12);
        assert_eq!(b.usable_memory_bytes(), 3000 * 1024 * 1024);
    }

    #[test]
    fn a_negative_bandwidth_names_board_and_field() {
        let text = BOARD.replace("bandwidth_gbps = 50.0", "bandwidth_gbps = -5.0");
        let e = BoardSpec::from_toml(&text, "x.toml").unwrap_err();
        assert!(
            e.to_string()
                .contains("board `test-board`: `memory.bandwidth_gbps` is -5"),
            "{e}"
        );
    }

    #[test]
    fn a_misspelt_field_is_refused_naming_the_file() {
        let text = BOARD.replace("f32_gflops", "f32_glops");
        let e = BoardSpec::from_toml(&text, "boards/x.toml").unwrap_err();
        assert!(e.to_string().starts_with("boards/x.toml:"), "{e}");
        assert!(e.to_string().contains("f32_glops"), "{e}");
    }

    #[test]
    fn usable_memory_cannot_exceed_capacity() {
        let text = BOARD.replace("usable_mb = 3000", "usable_mb = 5000");
        assert!(matches!(
            BoardSpec::from_toml(&text, "x"),
            Err(DeviceError::UsableOverCapacity { .. })
        ));
    }

    fn two_devices(nic1: f64) -> Vec<ClusterDevice> {
        let mut slow = board();
        slow.network.nic_mbps = nic1;
        vec![
            ClusterDevice {
                name: "a".into(),
                board: board(),
            },
            ClusterDevice {
                name: "b".into(),
                board: slow,
            },
        ]
    }

    #[test]
    fn links_default_then_override_and_are_capped_by_nics() {
        let default = LinkSpec {
            bandwidth_mbps: 940.0,
            latency_ms: 0.2,
        };
        let fast = LinkSpec {
            bandwidth_mbps: 10_000.0,
            latency_ms: 0.1,
        };
        let c = Cluster::new(
            "c",
            two_devices(100.0),
            default,
            &[(DeviceId(0), DeviceId(1), fast)],
        )
        .unwrap();
        // Override applies one way, capped by b's 100 Mbit/s NIC.
        assert_eq!(c.link(DeviceId(0), DeviceId(1)).bandwidth_mbps, 100.0);
        assert_eq!(c.link(DeviceId(0), DeviceId(1)).latency_ms, 0.1);
        assert_eq!(c.link(DeviceId(1), DeviceId(0)).latency_ms, 0.2);
        assert_eq!(c.transfer_ms(DeviceId(1), DeviceId(1), 1 << 20), 0.0);
    }

    #[test]
    fn a_duplicate_device_name_is_refused() {
        let mut devs = two_devices(1000.0);
        devs[1].name = "a".into();
        let default = LinkSpec {
            bandwidth_mbps: 1.0,
            latency_ms: 0.0,
        };
        assert!(matches!(
            Cluster::new("c", devs, default, &[]),
            Err(DeviceError::DuplicateDevice { .. })
        ));
    }

    #[test]
    fn backend_names_parse_and_unknown_ones_are_named() {
        assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!(
            "cuda".parse::<Backend>().unwrap_err(),
            DeviceError::UnknownBackend("cuda".into())
        );
    }
}
