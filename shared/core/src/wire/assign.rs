//! An agent's share of a plan.
//!
//! Each plan has an epoch that increases with every replan. An [`Assignment`] lists the ops
//! the agent runs in order (with the planned times, for monitoring), the tensors it receives
//! from which peer and the ones it sends to which peer. Every cross-device transfer has a
//! `transfer` number unique within the epoch, so the activation topics of the executing
//! issue are `<prefix>/agent/<receiver>/act/<epoch>/<transfer>` with no tensor name to
//! escape, and a chunk of an older epoch is recognised and dropped.

use serde::{Deserialize, Serialize};

use super::codec::WireMessage;
use super::{AgentName, MessageKind};

/// One op in the agent's subgraph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssignedOp {
    /// The op's id in the orchestrator's graph.
    pub name: String,
    /// The kernel signature key the agent runs, when the graph came from ONNX.
    pub kernel: Option<String>,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// A tensor crossing between this agent and a peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorRoute {
    /// Unique within the plan epoch; names the activation topic.
    pub transfer: u32,
    /// Tensor name (the producer op's output).
    pub tensor: String,
    /// Producing op.
    pub producer: String,
    /// The other end: the sender for a receive, the receiver for a send.
    pub peer: AgentName,
    pub bytes: u64,
}

/// The plan for one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Increases with every plan the orchestrator publishes.
    pub epoch: u64,
    /// Graph (model) name.
    pub model: String,
    /// Planned makespan of the whole inference.
    pub makespan_ms: f64,
    /// Ops in execution order; empty when the agent is idle in this plan.
    pub ops: Vec<AssignedOp>,
    pub receive: Vec<TensorRoute>,
    pub send: Vec<TensorRoute>,
}

impl WireMessage for Assignment {
    const KIND: MessageKind = MessageKind::Assignment;
    const MAX_SIZE: usize = 1 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::testing::round_trip;
    use crate::wire::{decode, truncated};
    use proptest::prelude::*;

    #[test]
    fn an_assignment_with_routes_round_trips() {
        let route = TensorRoute {
            transfer: 3,
            tensor: "conv1_out".into(),
            producer: "conv1".into(),
            peer: truncated("board-b"),
            bytes: 4096,
        };
        round_trip(&Assignment {
            epoch: 2,
            model: "tiny-cnn".into(),
            makespan_ms: 12.5,
            ops: vec![AssignedOp {
                name: "conv1".into(),
                kernel: Some("Conv(f32[1x3x32x32])->(f32[1x8x32x32]){}".into()),
                start_ms: 0.0,
                end_ms: 1.5,
            }],
            receive: vec![],
            send: vec![route],
        });
    }

    #[test]
    fn an_idle_assignment_round_trips() {
        round_trip(&Assignment {
            epoch: 1,
            model: "m".into(),
            makespan_ms: 0.0,
            ops: vec![],
            receive: vec![],
            send: vec![],
        });
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_assignment_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode::<Assignment>(&bytes);
        }
    }
}
