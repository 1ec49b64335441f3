//! The agent's profile store: the one file-backed `moirai-profiles/v1` table
//! ([`moirai_model::profiles::ProfileStore`]), which the agent fills with the medians it
//! measures.

pub use moirai_model::profiles::{ProfileStore, StoreError};

use super::KernelProfile;

/// Records the medians of `profiles` for `board`, replacing older figures.
pub fn record(store: &mut ProfileStore, board: &str, profiles: &[KernelProfile]) {
    for p in profiles {
        store.table.insert(board, &p.key, p.median_ms);
    }
}
