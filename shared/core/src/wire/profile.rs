//! Profiling: the orchestrator sends an agent the kernel signatures its board class has no
//! measurement for; the agent times them and answers in chunks, so the orchestrator can show
//! progress and a long table never hits the size limit.

use serde::{Deserialize, Serialize};

use super::codec::WireMessage;
use super::MessageKind;
use crate::kernel::KernelSignature;

/// Kernels to time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileRequest {
    /// Echoed in every report chunk.
    pub request_id: u64,
    pub signatures: Vec<KernelSignature>,
    /// Timed runs per kernel (after a warm-up); the report holds their median.
    pub runs: u32,
}

impl WireMessage for ProfileRequest {
    const KIND: MessageKind = MessageKind::ProfileRequest;
    const MAX_SIZE: usize = 4 << 20;
}

/// The median time of one kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    /// [`KernelSignature::key`].
    pub key: String,
    /// Median time, already multiplied by the agent's emulation scale if it has one.
    pub time_ms: f64,
    pub runs: u32,
}

/// A kernel the agent could not run, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileFailure {
    pub key: String,
    pub reason: String,
}

/// One chunk of the answer to a [`ProfileRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    pub request_id: u64,
    /// Session of the agent that measured.
    pub bd_seq: u64,
    /// Kernels finished so far, this chunk included.
    pub done: u32,
    /// Kernels in the request.
    pub total: u32,
    pub entries: Vec<ProfileEntry>,
    pub failures: Vec<ProfileFailure>,
    /// The emulation scale applied to `time_ms`, if any.
    pub emulation_scale: Option<f32>,
}

impl ProfileReport {
    /// True for the chunk that completes the request.
    pub fn is_last(&self) -> bool {
        self.done >= self.total
    }
}

impl WireMessage for ProfileReport {
    const KIND: MessageKind = MessageKind::ProfileReport;
    const MAX_SIZE: usize = 1 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{AttrValue, DType, FusedNode, KernelClass, TensorShape};
    use crate::wire::codec::testing::round_trip;
    use crate::wire::{decode, encode, WireError};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn conv() -> KernelSignature {
        KernelSignature {
            class: KernelClass::Conv,
            nodes: vec![FusedNode {
                op_type: "Conv".into(),
                attrs: BTreeMap::from([
                    ("strides".into(), AttrValue::Ints(vec![2, 2])),
                    ("alpha".into(), AttrValue::Float(0.5)),
                ]),
            }],
            inputs: vec![TensorShape {
                dims: vec![1, 3, 32, 32],
                dtype: DType::F32,
            }],
            outputs: vec![TensorShape {
                dims: vec![1, 8, 16, 16],
                dtype: DType::F32,
            }],
            flops: 1_000_000,
            bytes: 20_000,
            dag: None,
            shapes: Vec::new(),
        }
    }

    #[test]
    fn a_request_with_signatures_round_trips() {
        round_trip(&ProfileRequest {
            request_id: 9,
            signatures: vec![conv(), conv()],
            runs: 5,
        });
    }

    #[test]
    fn report_chunks_round_trip_and_know_when_they_are_last() {
        let mut r = ProfileReport {
            request_id: 9,
            bd_seq: 4,
            done: 1,
            total: 2,
            entries: vec![ProfileEntry {
                key: conv().key(),
                time_ms: 0.25,
                runs: 5,
            }],
            failures: vec![ProfileFailure {
                key: "X".into(),
                reason: "no kernel".into(),
            }],
            emulation_scale: Some(4.0),
        };
        round_trip(&r);
        assert!(!r.is_last());
        r.done = 2;
        assert!(r.is_last());
    }

    #[test]
    fn a_request_over_the_limit_is_refused_on_both_sides() {
        let mut sig = conv();
        sig.nodes[0].op_type = "x".repeat(ProfileRequest::MAX_SIZE);
        let req = ProfileRequest {
            request_id: 1,
            signatures: vec![sig],
            runs: 1,
        };
        assert!(matches!(encode(&req), Err(WireError::TooLarge { .. })));
        let bytes = vec![0u8; ProfileRequest::MAX_SIZE + 1];
        assert!(matches!(
            decode::<ProfileRequest>(&bytes),
            Err(WireError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_profile_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode::<ProfileRequest>(&bytes);
            let _ = decode::<ProfileReport>(&bytes);
        }

        #[test]
        fn flipping_a_byte_of_a_request_never_panics(i in 0usize..200, v in any::<u8>()) {
            let mut bytes = encode(&ProfileRequest { request_id: 3, signatures: vec![conv()], runs: 3 }).unwrap();
            let i = i % bytes.len();
            bytes[i] = v;
            let _ = decode::<ProfileRequest>(&bytes);
        }
    }
}
