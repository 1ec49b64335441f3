//! The cost model: how long a fused kernel runs on a board, and how much memory it keeps.
//!
//! Until a board has been profiled, run time comes from a roofline:
//! `max(flops / peak, bytes / bandwidth) + launch overhead`, with the peak chosen by the
//! kernel's precision. Measured times replace it through a [`ProfileTable`], keyed by board
//! class and [`KernelSignature::key`]; the agents fill the table (profile reports). Transfer
//! times live in [`crate::link`]; [`plan`] builds the costed graph the placer takes, the one way
//! every caller costs a model on its devices.

pub mod plan;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::device::{BoardSpec, Precision};
use crate::kernel::{DType, KernelSignature};

/// The `format` tag of a profile table's JSON form.
pub const PROFILE_FORMAT: &str = "moirai-profiles/v1";

/// Measured kernel run times, per board class and kernel signature key, and beside them the
/// verdict of checking each GPU kernel against a reference: a board class checks a kernel
/// once, and every agent of that class then knows whether the kernel may serve.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileTable {
    pub format: String,
    /// `boards[board][kernel key]` = median run time in ms.
    pub boards: BTreeMap<String, BTreeMap<String, f64>>,
    /// `verified[board][kernel key]`: how the board's GPU kernel compared with the reference.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verified: BTreeMap<String, BTreeMap<String, Verdict>>,
}

/// How a GPU kernel compared with its reference (tract running the same ONNX nodes on the
/// same inputs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Within tolerance: the kernel may serve.
    pub matches: bool,
    /// max|gpu - reference| / max|reference|; absent when not finite (a NaN, a length
    /// mismatch).
    pub rel_diff: Option<f64>,
}

/// Why a profile table was refused.
#[derive(Debug, Error, PartialEq)]
pub enum CostError {
    #[error("profile table is not valid JSON: {0}")]
    Json(String),
    #[error("profile table `format` is {0:?}, expected \"{PROFILE_FORMAT}\"")]
    WrongFormat(String),
    #[error("profile of kernel `{kernel}` on board `{board}` is {value} ms, expected a finite number >= 0")]
    BadTime {
        board: String,
        kernel: String,
        value: f64,
    },
}

impl ProfileTable {
    pub fn new() -> ProfileTable {
        ProfileTable {
            format: PROFILE_FORMAT.to_string(),
            boards: BTreeMap::new(),
            verified: BTreeMap::new(),
        }
    }

    /// What checking `kernel` on `board` found, if it was checked.
    pub fn verdict(&self, board: &str, kernel: &str) -> Option<Verdict> {
        self.verified.get(board)?.get(kernel).copied()
    }

    /// Records (or replaces) a verdict.
    pub fn insert_verdict(&mut self, board: &str, kernel: &str, verdict: Verdict) {
        self.verified
            .entry(board.to_string())
            .or_default()
            .insert(kernel.to_string(), verdict);
    }

    /// The measured time of `kernel` on `board`, if any.
    pub fn get(&self, board: &str, kernel: &str) -> Option<f64> {
        self.boards.get(board)?.get(kernel).copied()
    }

    /// Records (or replaces) a measurement.
    pub fn insert(&mut self, board: &str, kernel: &str, ms: f64) {
        self.boards
            .entry(board.to_string())
            .or_default()
            .insert(kernel.to_string(), ms);
    }

    /// The keys of `keys` with no measurement for `board`.
    pub fn missing<'k>(
        &self,
        board: &str,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Vec<&'k str> {
        keys.into_iter()
            .filter(|k| self.get(board, k).is_none())
            .collect()
    }

    /// Number of measurements for `board`.
    pub fn count(&self, board: &str) -> usize {
        self.boards.get(board).map_or(0, BTreeMap::len)
    }

    /// Number of measurements.
    pub fn len(&self) -> usize {
        self.boards.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_json(text: &str) -> Result<ProfileTable, CostError> {
        let t: ProfileTable =
            serde_json::from_str(text).map_err(|e| CostError::Json(e.to_string()))?;
        if t.format != PROFILE_FORMAT {
            return Err(CostError::WrongFormat(t.format));
        }
        for (board, kernels) in &t.boards {
            for (kernel, &value) in kernels {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(CostError::BadTime {
                        board: board.clone(),
                        kernel: kernel.clone(),
                        value,
                    });
                }
            }
        }
        Ok(t)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a profile table always serialises")
    }
}

/// Where a run time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSource {
    Profiled,
    Roofline,
}

/// Run-time and memory estimates for fused kernels.
#[derive(Clone, Copy, Debug, Default)]
pub struct CostModel<'a> {
    profiles: Option<&'a ProfileTable>,
}

impl<'a> CostModel<'a> {
    /// Roofline only.
    pub fn roofline() -> CostModel<'static> {
        CostModel { profiles: None }
    }

    /// Measured times where `profiles` has them, roofline elsewhere.
    pub fn with_profiles(profiles: &'a ProfileTable) -> CostModel<'a> {
        CostModel {
            profiles: Some(profiles),
        }
    }

    /// Run time in ms of `sig` on `board`, and where the figure came from.
    pub fn op_time_ms(&self, board: &BoardSpec, sig: &KernelSignature) -> (f64, TimeSource) {
        if let Some(ms) = self.profiles.and_then(|p| p.get(&board.name, &sig.key())) {
            return (ms, TimeSource::Profiled);
        }
        (
            roofline_ms(board, sig.flops, sig.bytes, precision_of(sig)),
            TimeSource::Roofline,
        )
    }
}

/// Roofline run time in ms: the slower of compute and memory traffic, plus one launch.
pub fn roofline_ms(board: &BoardSpec, flops: u64, bytes: u64, precision: Precision) -> f64 {
    let compute_s = flops as f64 / board.peak_flops(precision);
    let memory_s = bytes as f64 / board.bandwidth_bytes_per_s();
    compute_s.max(memory_s) * 1e3 + board.runtime.launch_overhead_us * 1e-3
}

/// The precision a kernel computes in: that of its widest floating output, or INT8 when its
/// outputs are 8-bit integers.
pub fn precision_of(sig: &KernelSignature) -> Precision {
    let mut p = None;
    for t in &sig.outputs {
        match t.dtype {
            DType::F32 => return Precision::F32,
            DType::F16 => p = Some(Precision::F16),
            DType::I8 | DType::U8 => {
                p.get_or_insert(Precision::Int8);
            }
            _ => {}
        }
    }
    p.unwrap_or(Precision::F32)
}

/// Memory a fused op keeps resident on its device: its parameters plus the outputs it holds
/// until consumers have read them.
pub fn resident_bytes(param_bytes: u64, output_bytes: u64) -> u64 {
    param_bytes + output_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::tests::board;
    use crate::kernel::{FusedNode, KernelClass, TensorShape};

    fn sig(flops: u64, bytes: u64, dtype: DType) -> KernelSignature {
        KernelSignature {
            class: KernelClass::MatMul,
            nodes: vec![FusedNode {
                op_type: "MatMul".into(),
                attrs: Default::default(),
            }],
            inputs: vec![],
            outputs: vec![TensorShape {
                dims: vec![4],
                dtype,
            }],
            flops,
            bytes,
            dag: None,
            shapes: Vec::new(),
        }
    }

    #[test]
    fn compute_bound_kernels_take_flops_over_peak_plus_launch() {
        // 1 TFLOP/s board: 1 GFLOP takes 1 ms, plus 10 us launch.
        let (t, src) =
            CostModel::roofline().op_time_ms(&board(), &sig(1_000_000_000, 1, DType::F32));
        assert_eq!(src, TimeSource::Roofline);
        assert!((t - 1.01).abs() < 1e-9, "{t}");
    }

    #[test]
    fn memory_bound_kernels_take_bytes_over_bandwidth() {
        // 50 GB/s: 100 MB takes 2 ms.
        let t = roofline_ms(&board(), 1, 100_000_000, Precision::F32);
        assert!((t - 2.01).abs() < 1e-9, "{t}");
    }

    #[test]
    fn half_precision_uses_the_half_precision_peak() {
        let (t, _) = CostModel::roofline().op_time_ms(&board(), &sig(2_000_000_000, 1, DType::F16));
        assert!((t - 1.01).abs() < 1e-9, "{t}");
    }

    #[test]
    fn a_profile_replaces_the_roofline_for_that_board_only() {
        let s = sig(1_000_000_000, 1, DType::F32);
        let mut p = ProfileTable::new();
        p.insert("test-board", &s.key(), 0.25);
        p.insert("other-board", "Relu(f32[1])->(f32[1]){}", 9.0);
        let m = CostModel::with_profiles(&p);
        assert_eq!(m.op_time_ms(&board(), &s), (0.25, TimeSource::Profiled));
        let mut other = board();
        other.name = "unprofiled".into();
        assert_eq!(m.op_time_ms(&other, &s).1, TimeSource::Roofline);
    }

    #[test]
    fn profile_tables_round_trip_and_refuse_negative_times() {
        let mut p = ProfileTable::new();
        p.insert("b", "k", 1.5);
        let back = ProfileTable::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.len(), 1);
        let bad = p.to_json().replace("1.5", "-1.5");
        assert!(matches!(
            ProfileTable::from_json(&bad),
            Err(CostError::BadTime { .. })
        ));
        let wrong = p.to_json().replace(PROFILE_FORMAT, "profiles/v0");
        assert!(matches!(
            ProfileTable::from_json(&wrong),
            Err(CostError::WrongFormat(_))
        ));
    }
}
