//! Importers: turn what a user brings into a [`moirai_core::Graph`].
//!
//! - [`profiled`]: `profiled-graph/v1` JSON files (already coarsened and profiled).
//! - [`onnx`]: ONNX models, with shapes, dtypes and per-node costs.

pub mod onnx;
pub mod profiled;
