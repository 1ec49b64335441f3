//! Rolling a new agent binary out to part of the fleet.
//!
//! `moirai rollout` sends an agent an [`UpgradeOffer`] (version, size, SHA-256 and how long
//! the new binary has to come online), then the binary in [`UpgradeChunk`]s. The agent
//! writes it beside its current release, checks size and hash, and starts it on trial; the
//! new process reports [`UpgradeState::Online`] once connected. If it does not within the
//! offer's time, or dies, the old binary stays in place and reports
//! [`UpgradeState::RolledBack`]. Progress and refusals travel as [`UpgradeStatus`].

use serde::{Deserialize, Serialize};

use super::codec::WireMessage;
use super::life::SHORT_LEN;
use super::MessageKind;

/// Bytes of binary per chunk: far below every broker's packet limit, large enough that a
/// 50 MB agent takes a few hundred messages.
pub const CHUNK_BYTES: usize = 256 << 10;
/// Longest reason text in a status.
pub const REASON_LEN: usize = 160;

/// "Switch to this binary": sent first, then the chunks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeOffer {
    /// Identifies this rollout in chunks and statuses.
    pub rollout: u64,
    pub version: heapless::String<SHORT_LEN>,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Number of chunks that follow (`ceil(size / CHUNK_BYTES)`).
    pub chunks: u32,
    /// Seconds the new binary has, from its start, to come online before it is rolled back.
    pub online_within_s: u32,
}

impl WireMessage for UpgradeOffer {
    const KIND: MessageKind = MessageKind::UpgradeOffer;
    const MAX_SIZE: usize = 128;
}

/// One piece of the binary, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeChunk {
    pub rollout: u64,
    pub index: u32,
    pub bytes: Vec<u8>,
}

impl WireMessage for UpgradeChunk {
    const KIND: MessageKind = MessageKind::UpgradeChunk;
    const MAX_SIZE: usize = CHUNK_BYTES + 32;
}

/// Where an agent's upgrade stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UpgradeState {
    /// The binary arrived whole and matches its hash; the trial starts.
    Staged,
    /// The new binary is online, and the switch is permanent.
    Online {
        version: heapless::String<SHORT_LEN>,
    },
    /// The new binary did not come online; the old one runs again.
    RolledBack {
        reason: heapless::String<REASON_LEN>,
    },
    /// Nothing was switched (bad chunk, hash mismatch, no place to install).
    Refused {
        reason: heapless::String<REASON_LEN>,
    },
}

/// An agent's report on a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    pub rollout: u64,
    pub state: UpgradeState,
}

impl WireMessage for UpgradeStatus {
    const KIND: MessageKind = MessageKind::UpgradeStatus;
    const MAX_SIZE: usize = 16 + REASON_LEN;
}

/// Number of chunks for `size` bytes.
pub fn chunk_count(size: u64) -> u32 {
    size.div_ceil(CHUNK_BYTES as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::testing::round_trip;
    use crate::wire::{decode, encode, truncated};

    #[test]
    fn every_message_round_trips_at_its_largest() {
        round_trip(&UpgradeOffer {
            rollout: u64::MAX,
            version: truncated(&"9".repeat(SHORT_LEN)),
            size: u64::MAX,
            sha256: [0xff; 32],
            chunks: u32::MAX,
            online_within_s: u32::MAX,
        });
        round_trip(&UpgradeChunk {
            rollout: u64::MAX,
            index: u32::MAX,
            bytes: vec![0xab; CHUNK_BYTES],
        });
        round_trip(&UpgradeStatus {
            rollout: u64::MAX,
            state: UpgradeState::RolledBack {
                reason: truncated(&"r".repeat(REASON_LEN)),
            },
        });
    }

    #[test]
    fn an_oversized_chunk_is_refused_before_decoding() {
        let bytes = encode(&UpgradeChunk {
            rollout: 1,
            index: 0,
            bytes: vec![0; CHUNK_BYTES],
        })
        .unwrap();
        let mut big = bytes.clone();
        big.extend(vec![0; 64]);
        assert!(decode::<UpgradeChunk>(&big).is_err());
        assert!(decode::<UpgradeChunk>(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn chunk_counts_round_up() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_BYTES as u64), 1);
        assert_eq!(chunk_count(CHUNK_BYTES as u64 + 1), 2);
    }
}
