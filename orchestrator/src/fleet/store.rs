//! [`ProfileStore`]: measured kernel times by board class and kernel signature key, kept on
//! disk as JSON so a second board of a known class (or a restarted orchestrator) needs no
//! re-profiling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot read profile store {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile store {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write profile store {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub time_ms: f64,
    /// The agent that measured it.
    pub agent: String,
    /// The emulation scale it applied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulation_scale: Option<f32>,
}

/// Board class -> kernel key -> measurement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileStore {
    format: String,
    boards: BTreeMap<String, BTreeMap<String, Measured>>,
}

const FORMAT: &str = "moirai-profile-store/v1";

impl ProfileStore {
    pub fn new() -> Self {
        Self {
            format: FORMAT.into(),
            boards: BTreeMap::new(),
        }
    }

    /// Loads the store at `path`, or an empty one when the file does not exist.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| StoreError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(source) => Err(StoreError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the store atomically (temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let write = |source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| write(e.into()))?;
        std::fs::write(&tmp, text).map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)
    }

    pub fn insert(&mut self, board: &str, key: &str, m: Measured) {
        self.boards
            .entry(board.to_string())
            .or_default()
            .insert(key.to_string(), m);
    }

    pub fn get(&self, board: &str, key: &str) -> Option<&Measured> {
        self.boards.get(board)?.get(key)
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
        self.boards.get(board).map_or(0, |b| b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_store_loads_back_and_answers_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("moirai-store-{}", std::process::id()));
        let path = dir.join("profiles.json");
        let mut s = ProfileStore::new();
        s.insert(
            "pi5",
            "Conv(a)",
            Measured {
                time_ms: 1.5,
                agent: "a".into(),
                emulation_scale: Some(3.0),
            },
        );
        s.save(&path).unwrap();
        let back = ProfileStore::load(&path).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.missing("pi5", ["Conv(a)", "Relu(b)"]), vec!["Relu(b)"]);
        assert_eq!(back.missing("orin", ["Conv(a)"]), vec!["Conv(a)"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_missing_file_is_an_empty_store_and_a_corrupt_one_an_error() {
        let dir = std::env::temp_dir().join(format!("moirai-store-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            ProfileStore::load(&dir.join("none.json"))
                .unwrap()
                .count("x"),
            0
        );
        std::fs::write(dir.join("bad.json"), "{not json").unwrap();
        assert!(matches!(
            ProfileStore::load(&dir.join("bad.json")),
            Err(StoreError::Parse { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
