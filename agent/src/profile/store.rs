//! The profile store on disk: a [`ProfileTable`] (`moirai-profiles/v1` JSON, the form the cost
//! model reads) at a path, loaded, merged into and written back atomically.

use std::path::{Path, PathBuf};

use moirai_shared::cost::{CostError, ProfileTable};

use super::KernelProfile;

/// Why the store could not be read or written.
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
pub struct ProfileStore {
    pub path: PathBuf,
    pub table: ProfileTable,
}

impl ProfileStore {
    /// Opens the store at `path`; a missing file is an empty table.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let table = match std::fs::read_to_string(path) {
            Ok(text) => ProfileTable::from_json(&text).map_err(|source| StoreError::Parse {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProfileTable::new(),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(ProfileStore {
            path: path.to_path_buf(),
            table,
        })
    }

    /// Records the medians of `profiles` for `board`, replacing older figures.
    pub fn record(&mut self, board: &str, profiles: &[KernelProfile]) {
        for p in profiles {
            self.table.insert(board, &p.key, p.median_ms);
        }
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
    use crate::profile::Clock;
    use moirai_shared::kernel::KernelClass;

    fn profile(key: &str, ms: f64) -> KernelProfile {
        KernelProfile {
            key: key.into(),
            pattern: "Relu".into(),
            class: KernelClass::Eltwise,
            median_ms: ms,
            min_ms: ms,
            max_ms: ms,
            spread: 0.0,
            runs: 1,
            clock: Clock::WallClock,
            flops: 0,
            bytes: 0,
        }
    }

    #[test]
    fn a_saved_store_reopens_with_the_same_medians_and_newer_figures_replace_older() {
        let dir = std::env::temp_dir().join(format!("moirai-store-{}", std::process::id()));
        let path = dir.join("profiles.json");
        let mut s = ProfileStore::open(&path).unwrap();
        assert!(s.table.is_empty());
        s.record("lavapipe", &[profile("a", 1.5), profile("b", 2.0)]);
        s.record("lavapipe", &[profile("a", 1.0)]);
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
        let e = ProfileStore::open(&path).err().expect("must fail");
        assert!(e.to_string().contains("moirai-bad"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
