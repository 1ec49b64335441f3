//! The lifecycle messages, Sparkplug B adapted to Moirai.
//!
//! - The orchestrator publishes a retained [`OrchState`] (`online: true` with a fresh
//!   `session`) and registers `online: false` as its own Last Will. Agents announce themselves
//!   only while the orchestrator is online, and again whenever its `session` changes, so a
//!   restarted orchestrator learns the whole fleet.
//! - An agent's [`Birth`] carries a `bd_seq` that increases on every connection. The same
//!   `bd_seq` is in the [`Death`] registered as that connection's Last Will, so a death
//!   delivered late (the broker noticing a dead TCP socket after the agent reconnected) names
//!   an older session and is ignored.
//! - [`Heartbeat`]s carry the `bd_seq` too; the orchestrator declares an agent dead when they
//!   stop, whether or not its Last Will arrives.
//! - [`Command::Rebirth`] asks an agent to announce itself again (sent when the orchestrator
//!   sees heartbeats from a session it has no birth for).

use serde::{Deserialize, Serialize};

use super::codec::WireMessage;
use super::{AgentName, MessageKind, NAME_LEN};

/// Longest adapter name (as wgpu reports it).
pub const ADAPTER_LEN: usize = 64;
/// Longest backend or version string.
pub const SHORT_LEN: usize = 16;

/// The orchestrator's retained state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrchState {
    pub online: bool,
    /// Changes on every orchestrator start; agents re-announce when it does.
    pub session: u64,
}

impl WireMessage for OrchState {
    const KIND: MessageKind = MessageKind::OrchState;
    const MAX_SIZE: usize = 16;
}

/// What an agent announces when it connects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Birth {
    pub name: AgentName,
    /// Board class, the `firmware-configs/` file stem (`jetson-orin-nano`); boards of one
    /// class share profiles.
    pub board: heapless::String<NAME_LEN>,
    /// GPU adapter name, or `cpu` when the agent runs kernels on the CPU.
    pub adapter: heapless::String<ADAPTER_LEN>,
    /// wgpu backend (`vulkan`, `metal`, `gl`) or `cpu`.
    pub backend: heapless::String<SHORT_LEN>,
    /// Memory available for resident tensors.
    pub memory_bytes: u64,
    /// Peak compute rate of the board class.
    pub peak_gflops: f32,
    /// Peak memory bandwidth of the board class.
    pub mem_gbps: f32,
    /// When the agent runs on a faster machine and emulates its board: the factor its
    /// measured times are multiplied by (ratio of peaks), so the reader knows.
    pub emulation_scale: Option<f32>,
    pub agent_version: heapless::String<SHORT_LEN>,
    /// The [`super::PROTOCOL_VERSION`] the agent speaks (also the first payload byte; kept
    /// here so the registry can show it).
    pub protocol: u8,
    /// Birth/death sequence number of this connection.
    pub bd_seq: u64,
}

impl WireMessage for Birth {
    const KIND: MessageKind = MessageKind::Birth;
    const MAX_SIZE: usize = 256;
}

/// An agent's Last Will (also published on a clean shutdown).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Death {
    pub bd_seq: u64,
}

impl WireMessage for Death {
    const KIND: MessageKind = MessageKind::Death;
    const MAX_SIZE: usize = 16;
}

/// Measured link between an agent and the broker.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Agent to broker, bytes per second.
    pub up_bps: u64,
    /// Broker to agent, bytes per second.
    pub down_bps: u64,
    /// Round trip of a small message through the broker, microseconds.
    pub rtt_us: u64,
}

/// Sent periodically; proves the session `bd_seq` is alive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub bd_seq: u64,
    /// Counts heartbeats within the session.
    pub seq: u64,
    /// True while the agent is profiling.
    pub busy: bool,
    /// The latest link measurement, once one finished.
    pub link: Option<LinkStats>,
}

impl WireMessage for Heartbeat {
    const KIND: MessageKind = MessageKind::Heartbeat;
    const MAX_SIZE: usize = 64;
}

/// Orders from the orchestrator to one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Publish a fresh birth (same connection, same `bd_seq`).
    Rebirth,
    /// Measure the link to the broker again.
    ProbeLink,
    /// Session `bd_seq` is over for the orchestrator (its death was delivered: a Last Will
    /// the broker fired for a connection that is in fact alive), yet it still speaks: start
    /// a new session (new `bd_seq`, new will, new birth). Carries the session so that a late
    /// copy cannot end the next one.
    NewSession { bd_seq: u64 },
}

impl WireMessage for Command {
    const KIND: MessageKind = MessageKind::Command;
    const MAX_SIZE: usize = 16;
}

/// Link-probe payload an agent publishes to its own probe topic and reads back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub seq: u32,
    pub padding: Vec<u8>,
}

impl WireMessage for Probe {
    const KIND: MessageKind = MessageKind::Probe;
    const MAX_SIZE: usize = (1 << 20) + 16;
}

/// One agent in a [`FleetSnapshot`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetRow {
    pub name: AgentName,
    pub board: heapless::String<NAME_LEN>,
    pub adapter: heapless::String<ADAPTER_LEN>,
    pub backend: heapless::String<SHORT_LEN>,
    pub online: bool,
    /// Why it is offline (`last will`, `heartbeat timeout`), empty when online.
    pub cause: heapless::String<SHORT_LEN>,
    pub bd_seq: u64,
    /// Milliseconds since its last message, when the snapshot was taken.
    pub last_seen_ms: u64,
    pub heartbeats: u64,
    pub busy: bool,
    pub emulation_scale: Option<f32>,
    pub link: Option<LinkStats>,
    /// Ops it runs in the current plan.
    pub ops: u32,
}

/// The orchestrator's registry, published retained whenever it changes (and every few
/// seconds) so `moirai fleet` can show it from anywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetSnapshot {
    /// Wall clock of the orchestrator when taken (Unix ms).
    pub taken_at_ms: u64,
    /// Epoch of the plan in force (0: none yet).
    pub epoch: u64,
    pub makespan_ms: f64,
    pub model: String,
    pub agents: Vec<FleetRow>,
    /// Payloads dropped because they did not decode.
    pub dropped: u64,
}

impl WireMessage for FleetSnapshot {
    const KIND: MessageKind = MessageKind::FleetSnapshot;
    const MAX_SIZE: usize = 1 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::testing::round_trip;
    use crate::wire::{decode, truncated};
    use proptest::prelude::*;

    fn full<const N: usize>() -> heapless::String<N> {
        truncated(&"x".repeat(N))
    }

    fn largest_birth() -> Birth {
        Birth {
            name: full(),
            board: full(),
            adapter: full(),
            backend: full(),
            memory_bytes: u64::MAX,
            peak_gflops: f32::MAX,
            mem_gbps: f32::MAX,
            emulation_scale: Some(f32::MAX),
            agent_version: full(),
            protocol: u8::MAX,
            bd_seq: u64::MAX,
        }
    }

    #[test]
    fn the_largest_birth_fits_its_limit_and_round_trips() {
        let bytes = round_trip(&largest_birth());
        assert!(bytes.len() <= Birth::MAX_SIZE, "{}", bytes.len());
    }

    #[test]
    fn the_largest_fixed_messages_fit_their_limits() {
        round_trip(&Death { bd_seq: u64::MAX });
        round_trip(&OrchState {
            online: true,
            session: u64::MAX,
        });
        round_trip(&Heartbeat {
            bd_seq: u64::MAX,
            seq: u64::MAX,
            busy: true,
            link: Some(LinkStats {
                up_bps: u64::MAX,
                down_bps: u64::MAX,
                rtt_us: u64::MAX,
            }),
        });
        round_trip(&Command::Rebirth);
        round_trip(&Command::ProbeLink);
        round_trip(&Command::NewSession { bd_seq: u64::MAX });
        round_trip(&Probe {
            seq: 3,
            padding: vec![0xAB; 1000],
        });
        let largest = crate::wire::encode(&Probe {
            seq: u32::MAX,
            padding: vec![0xAB; 1 << 20],
        })
        .unwrap();
        assert!(largest.len() <= Probe::MAX_SIZE);
    }

    #[test]
    fn a_fleet_snapshot_round_trips() {
        let b = largest_birth();
        round_trip(&FleetSnapshot {
            taken_at_ms: 5,
            epoch: 2,
            makespan_ms: 3.5,
            model: "demo-cnn".into(),
            agents: vec![FleetRow {
                name: b.name,
                board: b.board,
                adapter: b.adapter,
                backend: b.backend,
                online: false,
                cause: truncated("last will"),
                bd_seq: 9,
                last_seen_ms: 1200,
                heartbeats: 4,
                busy: false,
                emulation_scale: Some(2.5),
                link: None,
                ops: 3,
            }],
            dropped: 1,
        });
    }

    #[test]
    fn death_bytes_are_version_then_varint() {
        let bytes = crate::wire::encode(&Death { bd_seq: 300 }).unwrap();
        assert_eq!(bytes, vec![crate::wire::PROTOCOL_VERSION, 0xAC, 0x02]);
    }

    #[test]
    fn a_birth_naming_an_over_long_string_does_not_decode() {
        // Hand-build a birth whose name claims 33 bytes: heapless refuses it.
        let mut bytes = vec![crate::wire::PROTOCOL_VERSION, 33];
        bytes.extend(std::iter::repeat_n(b'a', 33));
        bytes.extend(std::iter::repeat_n(0u8, 64));
        assert!(decode::<Birth>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_any_lifecycle_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<OrchState>(&bytes);
            let _ = decode::<Birth>(&bytes);
            let _ = decode::<Death>(&bytes);
            let _ = decode::<Heartbeat>(&bytes);
            let _ = decode::<Command>(&bytes);
            let _ = decode::<Probe>(&bytes);
            let _ = decode::<FleetSnapshot>(&bytes);
        }

        #[test]
        fn versioned_arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![crate::wire::PROTOCOL_VERSION];
            bytes.extend(body);
            let _ = decode::<Birth>(&bytes);
            let _ = decode::<Heartbeat>(&bytes);
            let _ = decode::<Probe>(&bytes);
        }

        #[test]
        fn births_round_trip(bd_seq in any::<u64>(), mem in any::<u64>(), name in "[a-z0-9-]{1,32}") {
            let mut b = largest_birth();
            b.bd_seq = bd_seq;
            b.memory_bytes = mem;
            b.name = truncated(&name);
            round_trip(&b);
        }
    }
}
