//! Importers: turn what a user brings into a [`moirai_shared::Graph`].
//!
//! - [`profiled`]: `profiled-graph/v1` JSON files (already coarsened and profiled).

pub mod profiled;
