//! Reads `profiled-graph/v1` JSON files from disk.

use std::path::{Path, PathBuf};

use moirai_core::graph::format::{self, FormatError};
use moirai_core::Graph;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProfiledError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: FormatError },
}

/// Loads and validates a profiled graph.
pub fn load(path: &Path) -> Result<Graph, ProfiledError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfiledError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    format::from_json(&text).map_err(|source| ProfiledError::Format {
        path: path.to_path_buf(),
        source,
    })
}
