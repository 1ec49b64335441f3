//! The data plane: what distributed inference sends.
//!
//! - [`SubgraphSpec`] (orchestrator to agent): the agent's share of a plan epoch as ONNX
//!   nodes (named by their first output), the tensors it receives and where each tensor it
//!   produces goes. The model file is named by its SHA-256 so an agent with a local copy
//!   checks it before loading its weights from there.
//! - [`WeightChunk`] (orchestrator to agent): the agent's sub-model (its nodes and exactly
//!   their weights, as ONNX bytes) in bounded chunks, each with a CRC-32, the whole with its
//!   SHA-256; for agents without a local copy.
//! - [`ExecStatus`] (agent to orchestrator): ready for an epoch, refused (with the reason:
//!   memory, an unsupported op, a bad hash), weights wanted, or a request failed.
//! - [`ActivationChunk`] (agent to agent, orchestrator to agent, agent to orchestrator): a
//!   piece of a tensor of any boundary dtype ([`crate::tensor`]), keyed by request id and plan
//!   epoch.
//! - [`DirectAddr`] (agent, retained): where it takes activations over TCP, for the optional
//!   direct path between agents; the frames there are [`ActivationChunk`]s as on MQTT.
//! - [`ServingStats`] (orchestrator, retained): measured latency next to the plan's
//!   prediction, for `moirai fleet`.
//!
//! Topics are in [`super::topic::Topics::infer`]; all of these travel with QoS 1, so a
//! receiver must accept a chunk twice.

use serde::{Deserialize, Serialize};

use super::codec::WireMessage;
use super::{AgentName, MessageKind};
use crate::kernel::DType;
use crate::tensor::{bytes_of, TensorValue, TensorValueError};

/// Largest payload of one [`ActivationChunk`] or [`WeightChunk`], in bytes.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Largest tensor that crosses devices, in bytes: a chunk count or a shape that claims more
/// is refused before anything is allocated for it.
pub const MAX_TENSOR_BYTES: u64 = 1 << 30;

/// Room for a chunk's header (tensor name, dims, ids).
const CHUNK_HEADER: usize = 4096;

/// A boundary tensor: name, element type and static shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<u64>,
}

impl TensorSpec {
    /// Elements of the shape (saturating: a hostile shape does not overflow).
    pub fn elements(&self) -> u64 {
        crate::tensor::elements_of(&self.dims).unwrap_or(u64::MAX)
    }

    /// Bytes of one value (saturating).
    pub fn bytes(&self) -> u64 {
        bytes_of(self.dtype, &self.dims).unwrap_or(u64::MAX)
    }
}

/// Where a produced tensor goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Destination {
    Agent(AgentName),
    /// A graph output: back to the orchestrator.
    Orchestrator,
}

/// A tensor the agent produces and who needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputRoute {
    pub tensor: TensorSpec,
    pub to: Vec<Destination>,
}

/// An agent's share of a plan epoch, as executable ONNX.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubgraphSpec {
    pub epoch: u64,
    /// Model name, for messages.
    pub model: String,
    /// SHA-256 of the whole model file.
    pub model_sha256: [u8; 32],
    /// The nodes to run, each named by its first output tensor, in a topological order.
    /// Empty: the agent is idle in this epoch.
    pub nodes: Vec<String>,
    /// Tensors fed from outside the subgraph (peers or the orchestrator).
    pub inputs: Vec<TensorSpec>,
    /// Tensors it produces for others.
    pub outputs: Vec<OutputRoute>,
    /// Bytes of the weights its nodes read (what it must hold resident).
    pub weight_bytes: u64,
    /// Bytes of the activations it holds for one request (inputs and outputs).
    pub activation_bytes: u64,
    /// The plan's predicted makespan.
    pub predicted_ms: f64,
}

impl WireMessage for SubgraphSpec {
    const KIND: MessageKind = MessageKind::SubgraphSpec;
    const MAX_SIZE: usize = 1 << 20;
}

/// A piece of an agent's sub-model (ONNX bytes with its weights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightChunk {
    pub epoch: u64,
    /// SHA-256 of the whole sub-model.
    pub sha256: [u8; 32],
    pub total_bytes: u64,
    pub index: u32,
    pub count: u32,
    /// CRC-32 (IEEE) of `data`.
    pub crc32: u32,
    pub data: Vec<u8>,
}

impl WireMessage for WeightChunk {
    const KIND: MessageKind = MessageKind::WeightChunk;
    const MAX_SIZE: usize = CHUNK_BYTES + CHUNK_HEADER;
}

/// What an agent says about an epoch or a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ExecStatus {
    /// Loaded and ready to run requests of this epoch; on the GPU executor, how many groups
    /// run on the GPU and on tract, and how many of those went to tract because their GPU
    /// kernel differed from tract in the load-time check.
    Ready {
        epoch: u64,
        load_ms: f32,
        gpu_groups: u32,
        tract_groups: u32,
        differ: u32,
    },
    /// It will not run this epoch, and why.
    Refused { epoch: u64, reason: String },
    /// No local copy with the right hash: stream the sub-model.
    NeedWeights { epoch: u64, reason: String },
    /// A request failed on this agent.
    Failed {
        epoch: u64,
        request: u64,
        reason: String,
    },
}

impl WireMessage for ExecStatus {
    const KIND: MessageKind = MessageKind::ExecStatus;
    const MAX_SIZE: usize = 8192;
}

/// Where an agent takes activations over TCP (the optional direct path). Each frame on that
/// connection is a little-endian `u32` length and then one encoded [`ActivationChunk`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectAddr {
    /// The session it belongs to (the agent's `bd_seq`).
    pub bd_seq: u64,
    /// `host:port`.
    pub addr: heapless::String<64>,
}

impl WireMessage for DirectAddr {
    const KIND: MessageKind = MessageKind::DirectAddr;
    const MAX_SIZE: usize = 96;
}

/// How serving goes: the orchestrator publishes it retained (after requests complete, at most
/// every second) so `moirai fleet` shows measured latency next to the plan's prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServingStats {
    /// Wall clock of the orchestrator when taken (Unix ms).
    pub taken_at_ms: u64,
    /// Plan epoch answering new requests.
    pub epoch: u64,
    /// Agents with a share in it.
    pub agents: u32,
    pub completed: u64,
    pub failed: u64,
    /// Requests run again because an agent of their epoch died.
    pub reruns: u64,
    /// Measured end-to-end latency quantiles (p50, p90, p99) over the recent requests, ms.
    pub latency_ms: [f64; 3],
    /// The predicted makespan of the plan that answered the last request, ms.
    pub predicted_ms: f64,
    /// Median of measured over predicted, per request.
    pub ratio_p50: f64,
}

impl WireMessage for ServingStats {
    const KIND: MessageKind = MessageKind::ServingStats;
    const MAX_SIZE: usize = 256;
}

/// A piece of a tensor of one request: its little-endian bytes
/// ([`TensorValue::to_le_bytes`]) cut into [`CHUNK_BYTES`] pieces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationChunk {
    pub request: u64,
    pub epoch: u64,
    pub tensor: String,
    pub dtype: DType,
    pub dims: Vec<u64>,
    pub index: u32,
    pub count: u32,
    pub data: Vec<u8>,
}

impl WireMessage for ActivationChunk {
    const KIND: MessageKind = MessageKind::ActivationChunk;
    const MAX_SIZE: usize = CHUNK_BYTES + CHUNK_HEADER;
}

/// How many chunks a tensor of `bytes` bytes takes (an empty one still takes one).
pub fn chunk_count(bytes: u64) -> u64 {
    bytes.div_ceil(CHUNK_BYTES as u64).max(1)
}

/// Cuts a tensor into chunks of at most [`CHUNK_BYTES`].
pub fn activation_chunks(
    request: u64,
    epoch: u64,
    tensor: &str,
    value: &TensorValue,
) -> Vec<ActivationChunk> {
    let bytes = value.to_le_bytes();
    let pieces: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(CHUNK_BYTES).collect()
    };
    let count = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| ActivationChunk {
            request,
            epoch,
            tensor: tensor.to_string(),
            dtype: value.dtype(),
            dims: value.dims.clone(),
            index: i as u32,
            count,
            data: p.to_vec(),
        })
        .collect()
}

/// Why chunks do not reassemble.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("tensor `{tensor}`: chunk {index} of {count} is out of range")]
    OutOfRange {
        tensor: String,
        index: u32,
        count: u32,
    },
    #[error("tensor `{tensor}`: chunks disagree on the chunk count, the type or the shape")]
    Inconsistent { tensor: String },
    #[error("tensor `{tensor}`: shape {dims:?} of {dtype:?} is larger than {max} bytes")]
    TooLarge {
        tensor: String,
        dtype: DType,
        dims: Vec<u64>,
        max: u64,
    },
    #[error("tensor `{tensor}`: {count} chunks for {bytes} bytes ({want} expected)")]
    Count {
        tensor: String,
        count: u32,
        bytes: u64,
        want: u64,
    },
    #[error("tensor `{tensor}`: chunk {index} has {got} bytes ({want} expected)")]
    ChunkSize {
        tensor: String,
        index: u32,
        got: usize,
        want: u64,
    },
    #[error("tensor `{tensor}`: {source}")]
    Value {
        tensor: String,
        source: TensorValueError,
    },
    #[error("weights: {got} bytes arrived, the chunks said {want}")]
    WeightBytes { got: u64, want: u64 },
    #[error("weights: chunk {index} fails its CRC-32")]
    Crc { index: u32 },
    #[error("weights: the sub-model's SHA-256 does not match")]
    Sha,
}

/// Collects the chunks of one tensor; duplicates (QoS 1 redelivery) are ignored. The first
/// chunk fixes type, shape and count, which must agree with each other before the assembly
/// holds anything: the memory it takes is bounded by the tensor's true size.
#[derive(Clone, Debug, Default)]
pub struct TensorAssembly {
    dtype: Option<DType>,
    dims: Vec<u64>,
    parts: Vec<Option<Vec<u8>>>,
    have: usize,
}

impl TensorAssembly {
    /// Adds a chunk; `Ok(Some(value))` once the tensor is whole.
    pub fn add(&mut self, c: ActivationChunk) -> Result<Option<TensorValue>, ChunkError> {
        if c.count == 0 || c.index >= c.count {
            return Err(ChunkError::OutOfRange {
                tensor: c.tensor,
                index: c.index,
                count: c.count,
            });
        }
        let total = bytes_of(c.dtype, &c.dims)
            .filter(|&b| b <= MAX_TENSOR_BYTES)
            .ok_or_else(|| ChunkError::TooLarge {
                tensor: c.tensor.clone(),
                dtype: c.dtype,
                dims: c.dims.clone(),
                max: MAX_TENSOR_BYTES,
            })?;
        let want = chunk_count(total);
        if u64::from(c.count) != want {
            return Err(ChunkError::Count {
                tensor: c.tensor,
                count: c.count,
                bytes: total,
                want,
            });
        }
        // Every chunk but the last is full.
        let size = if u64::from(c.index) + 1 < want {
            CHUNK_BYTES as u64
        } else {
            total - (want - 1) * CHUNK_BYTES as u64
        };
        if c.data.len() as u64 != size {
            return Err(ChunkError::ChunkSize {
                tensor: c.tensor,
                index: c.index,
                got: c.data.len(),
                want: size,
            });
        }
        match self.dtype {
            None => {
                self.parts = vec![None; c.count as usize];
                self.dims = c.dims.clone();
                self.dtype = Some(c.dtype);
            }
            Some(d) if d == c.dtype && self.dims == c.dims => {}
            Some(_) => return Err(ChunkError::Inconsistent { tensor: c.tensor }),
        }
        let slot = &mut self.parts[c.index as usize];
        if slot.is_none() {
            *slot = Some(c.data);
            self.have += 1;
        }
        if self.have < self.parts.len() {
            return Ok(None);
        }
        let bytes: Vec<u8> = self.parts.iter().flatten().flatten().copied().collect();
        TensorValue::from_le_bytes(c.dtype, &self.dims, &bytes)
            .map(Some)
            .map_err(|source| ChunkError::Value {
                tensor: c.tensor,
                source,
            })
    }
}

/// CRC-32 (IEEE 802.3, reflected), bitwise: weights are checked once per load.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Cuts a sub-model into weight chunks (`sha256` computed by the caller).
pub fn weight_chunks(epoch: u64, sha256: [u8; 32], bytes: &[u8]) -> Vec<WeightChunk> {
    let pieces: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(CHUNK_BYTES).collect()
    };
    let count = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| WeightChunk {
            epoch,
            sha256,
            total_bytes: bytes.len() as u64,
            index: i as u32,
            count,
            crc32: crc32(p),
            data: p.to_vec(),
        })
        .collect()
}

/// Collects weight chunks, checking each CRC; the caller checks the SHA-256 of the result.
#[derive(Clone, Debug, Default)]
pub struct WeightAssembly {
    pub epoch: u64,
    pub sha256: [u8; 32],
    parts: Vec<Option<Vec<u8>>>,
    have: usize,
}

impl WeightAssembly {
    /// Adds a chunk (a chunk of another epoch or sub-model restarts the assembly);
    /// `Ok(Some(bytes))` once whole.
    pub fn add(&mut self, c: WeightChunk) -> Result<Option<Vec<u8>>, ChunkError> {
        if c.count == 0 || c.index >= c.count || c.count as usize > (1 << 16) {
            return Err(ChunkError::OutOfRange {
                tensor: "weights".into(),
                index: c.index,
                count: c.count,
            });
        }
        if crc32(&c.data) != c.crc32 {
            return Err(ChunkError::Crc { index: c.index });
        }
        if self.parts.len() != c.count as usize || self.epoch != c.epoch || self.sha256 != c.sha256
        {
            *self = WeightAssembly {
                epoch: c.epoch,
                sha256: c.sha256,
                parts: vec![None; c.count as usize],
                have: 0,
            };
        }
        let slot = &mut self.parts[c.index as usize];
        if slot.is_none() {
            *slot = Some(c.data);
            self.have += 1;
        }
        if self.have < self.parts.len() {
            return Ok(None);
        }
        let bytes: Vec<u8> = self.parts.iter().flatten().flatten().copied().collect();
        if bytes.len() as u64 != c.total_bytes {
            return Err(ChunkError::WeightBytes {
                got: bytes.len() as u64,
                want: c.total_bytes,
            });
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::testing::round_trip;
    use crate::wire::{decode, encode, truncated};
    use proptest::prelude::*;

    #[test]
    fn a_subgraph_spec_round_trips() {
        round_trip(&SubgraphSpec {
            epoch: 3,
            model: "demo".into(),
            model_sha256: [7; 32],
            nodes: vec!["conv1.out".into(), "relu1.out".into()],
            inputs: vec![TensorSpec {
                name: "input".into(),
                dtype: DType::I64,
                dims: vec![1, 3, 8, 8],
            }],
            outputs: vec![OutputRoute {
                tensor: TensorSpec {
                    name: "relu1.out".into(),
                    dtype: DType::F32,
                    dims: vec![1, 4, 8, 8],
                },
                to: vec![
                    Destination::Agent(truncated("b")),
                    Destination::Orchestrator,
                ],
            }],
            weight_bytes: 4096,
            activation_bytes: 1792,
            predicted_ms: 1.5,
        });
    }

    #[test]
    fn direct_addresses_round_trip() {
        round_trip(&DirectAddr {
            bd_seq: u64::MAX,
            addr: crate::wire::truncated(&"x".repeat(64)),
        });
    }

    #[test]
    fn serving_stats_round_trip() {
        round_trip(&ServingStats {
            taken_at_ms: u64::MAX,
            epoch: u64::MAX,
            agents: u32::MAX,
            completed: u64::MAX,
            failed: u64::MAX,
            reruns: u64::MAX,
            latency_ms: [f64::MAX; 3],
            predicted_ms: f64::MAX,
            ratio_p50: f64::MAX,
        });
    }

    #[test]
    fn statuses_round_trip() {
        round_trip(&ExecStatus::Ready {
            epoch: 1,
            load_ms: 3.0,
            gpu_groups: 7,
            tract_groups: 2,
            differ: 1,
        });
        round_trip(&ExecStatus::Refused {
            epoch: 1,
            reason: "needs 9 MB, has 4 MB".into(),
        });
        round_trip(&ExecStatus::Failed {
            epoch: 2,
            request: 9,
            reason: "tract".into(),
        });
    }

    #[test]
    fn a_large_tensor_is_chunked_and_reassembles_in_any_order_with_duplicates() {
        let n = CHUNK_BYTES / 4 * 2 + 10;
        let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let value = TensorValue::f32(&[1, n as u64], values);
        let mut chunks = activation_chunks(5, 2, "x", &value);
        assert_eq!(chunks.len(), 3);
        for c in &chunks {
            let bytes = encode(c).unwrap();
            assert!(bytes.len() <= ActivationChunk::MAX_SIZE);
            assert_eq!(&decode::<ActivationChunk>(&bytes).unwrap(), c);
        }
        chunks.reverse();
        let dup = chunks[0].clone();
        chunks.insert(1, dup);
        let mut a = TensorAssembly::default();
        let mut whole = None;
        for c in chunks {
            if let Some(t) = a.add(c).unwrap() {
                whole = Some(t);
            }
        }
        assert_eq!(whole.expect("reassembled"), value);
    }

    #[test]
    fn integer_and_boolean_tensors_cross_exactly() {
        use crate::tensor::TensorData;
        for data in [
            TensorData::I64(vec![i64::MAX, -3, 101, 0]),
            TensorData::I32(vec![1, -2, 3, i32::MIN]),
            TensorData::Bool(vec![true, false, true, true]),
            TensorData::F16(vec![0x3c00, 0x4000, 0xfc00, 1]),
        ] {
            let value = TensorValue::new(vec![1, 4], data).unwrap();
            let mut a = TensorAssembly::default();
            let mut got = None;
            for c in activation_chunks(1, 1, "ids", &value) {
                assert_eq!(c.dtype, value.dtype());
                got = a.add(c).unwrap();
            }
            assert_eq!(got.as_ref(), Some(&value));
        }
    }

    #[test]
    fn a_tensor_whose_bytes_do_not_match_its_shape_is_refused() {
        let value = TensorValue::f32(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let mut c = activation_chunks(1, 1, "x", &value).remove(0);
        c.data.pop();
        assert!(matches!(
            TensorAssembly::default().add(c),
            Err(ChunkError::ChunkSize { .. })
        ));
    }

    #[test]
    fn a_chunk_claiming_a_huge_count_or_shape_allocates_nothing() {
        let value = TensorValue::f32(&[2], vec![1.0, 2.0]);
        let mut c = activation_chunks(1, 1, "x", &value).remove(0);
        c.count = 1 << 20;
        let mut a = TensorAssembly::default();
        assert!(matches!(a.add(c.clone()), Err(ChunkError::Count { .. })));
        assert!(a.parts.is_empty());
        c.count = 1;
        c.dims = vec![1 << 31, 1 << 31];
        assert!(matches!(a.add(c), Err(ChunkError::TooLarge { .. })));
        assert!(a.parts.is_empty());
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn weights_reassemble_and_a_corrupt_chunk_is_refused() {
        let bytes: Vec<u8> = (0..CHUNK_BYTES * 2 + 3).map(|i| (i % 251) as u8).collect();
        let chunks = weight_chunks(4, [1; 32], &bytes);
        assert_eq!(chunks.len(), 3);
        let mut bad = chunks[1].clone();
        bad.data[0] ^= 1;
        let mut a = WeightAssembly::default();
        assert_eq!(a.add(bad), Err(ChunkError::Crc { index: 1 }));
        let mut out = None;
        for c in chunks {
            assert!(encode(&c).unwrap().len() <= WeightChunk::MAX_SIZE);
            if let Some(b) = a.add(c).unwrap() {
                out = Some(b);
            }
        }
        assert_eq!(out.as_deref(), Some(&bytes[..]));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_data_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<ActivationChunk>(&bytes);
            let _ = decode::<WeightChunk>(&bytes);
            let _ = decode::<SubgraphSpec>(&bytes);
            let _ = decode::<ExecStatus>(&bytes);
        }
    }
}
