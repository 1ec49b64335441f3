//! A profile table (`moirai-profiles/v1`, [`ProfileTable`]: measured kernel times and GPU
//! kernel verdicts by board class) kept in a file: the agents write it, the orchestrator
//! reads it and keeps its own, the same format on both sides. A missing file is an empty
//! table; saving writes a temporary file and renames it over the old one.

use std::path::{Path, PathBuf};

use moirai_core::cost::{CostError, ProfileTable};

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading profile store {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing profile store {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile store {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: CostError,
    },
}

/// A profile table bound to a file.
#[derive(Clone, Debug)]
pub struct ProfileStore {
    pub path: PathBuf,
    pub table: ProfileTable,
}

/// Reads a profile table; a missing file is an empty table.
pub fn read_table(path: &Path) -> Result<ProfileTable, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => ProfileTable::from_json(&text).map_err(|source| StoreError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProfileTable::new()),
        Err(source) => Err(StoreError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ProfileStore {
    /// Opens the store at `path`; a missing file is an empty table.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(ProfileStore {
            path: path.to_path_buf(),
            table: read_table(path)?,
        })
    }

    /// Writes the table (to a temporary file renamed over the old one).
    pub fn save(&self) -> Result<(), StoreError> {
        let werr = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, self.table.to_json()).map_err(werr)?;
        std::fs::rename(&tmp, &self.path).map_err(werr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_store_reopens_with_the_same_figures_and_newer_ones_replace_older() {
        let dir = std::env::temp_dir().join(format!("moirai-store-{}", std::process::id()));
        let path = dir.join("profiles.json");
        let mut s = ProfileStore::open(&path).unwrap();
        assert!(s.table.is_empty());
        s.table.insert("lavapipe", "a", 1.5);
        s.table.insert("lavapipe", "b", 2.0);
        s.table.insert("lavapipe", "a", 1.0);
        s.save().unwrap();
        let back = ProfileStore::open(&path).unwrap();
        assert_eq!(back.table.get("lavapipe", "a"), Some(1.0));
        assert_eq!(back.table.get("lavapipe", "b"), Some(2.0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_store_is_an_error_naming_the_file() {
        let path = std::env::temp_dir().join(format!("moirai-bad-{}.json", std::process::id()));
        std::fs::write(&path, "{not json").unwrap();
        let Err(e) = ProfileStore::open(&path) else {
            panic!("a corrupt store must fail")
        };
        assert!(e.to_string().contains("moirai-bad"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
