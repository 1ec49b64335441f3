//! The requests in flight, as a pure state machine: which plan epoch each one runs on, the
//! output chunks collected so far, and what an agent's death means for them.
//!
//! A request is dispatched on one epoch and finishes on it; chunks of any other epoch are
//! ignored (a late answer from a plan it left). When an agent dies, every request whose
//! epoch gave that agent work is reset and waits for the next epoch: it is re-run whole,
//! and answered once, when all its outputs of one epoch are in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use moirai_core::wire::data::{ActivationChunk, ChunkError, TensorAssembly, TensorSpec};
use moirai_model::tensor_proto::NamedTensor;

/// One request.
#[derive(Clone, Debug)]
struct Flight {
    inputs: Arc<Vec<NamedTensor>>,
    /// The epoch it runs on; `None` while it waits for a plan.
    epoch: Option<u64>,
    parts: BTreeMap<String, TensorAssembly>,
    done: BTreeMap<String, NamedTensor>,
    started: Duration,
    dispatched: Duration,
    reruns: u32,
}

/// A request whose outputs are all in.
#[derive(Clone, Debug, PartialEq)]
pub struct Completed {
    pub id: u64,
    pub epoch: u64,
    /// In the order of the graph's outputs.
    pub outputs: Vec<NamedTensor>,
    /// From submission to the last output.
    pub latency: Duration,
    /// From the (last) dispatch to the last output.
    pub run_latency: Duration,
    pub reruns: u32,
}

/// What an output chunk did.
#[derive(Debug, PartialEq)]
pub enum ChunkOutcome {
    /// Not (or no longer) expected: unknown request, other epoch, finished tensor.
    Ignored,
    /// An output of another type or shape than the model's: the request fails.
    Mismatch {
        id: u64,
        tensor: String,
        what: String,
    },
    Partial,
    Completed(Completed),
    Bad(ChunkError),
}

/// Requests in flight.
#[derive(Debug, Default)]
pub struct Requests {
    flights: BTreeMap<u64, Flight>,
    next: u64,
}

impl Requests {
    /// Registers a request at time `now`; returns its id.
    pub fn submit(&mut self, inputs: Vec<NamedTensor>, now: Duration) -> u64 {
        self.next += 1;
        self.flights.insert(
            self.next,
            Flight {
                inputs: Arc::new(inputs),
                epoch: None,
                parts: BTreeMap::new(),
                done: BTreeMap::new(),
                started: now,
                dispatched: now,
                reruns: 0,
            },
        );
        self.next
    }

    pub fn len(&self) -> usize {
        self.flights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    /// Requests waiting for an epoch.
    pub fn waiting(&self) -> Vec<u64> {
        self.flights
            .iter()
            .filter(|(_, f)| f.epoch.is_none())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Epochs that requests still run on.
    pub fn epochs_in_use(&self) -> BTreeSet<u64> {
        self.flights.values().filter_map(|f| f.epoch).collect()
    }

    /// Marks `id` as sent on `epoch`; returns its inputs to send.
    pub fn dispatch(
        &mut self,
        id: u64,
        epoch: u64,
        now: Duration,
    ) -> Option<Arc<Vec<NamedTensor>>> {
        let f = self.flights.get_mut(&id)?;
        f.epoch = Some(epoch);
        f.dispatched = now;
        Some(f.inputs.clone())
    }

    /// Takes an output chunk; `outputs` are the graph outputs in order.
    pub fn on_chunk(
        &mut self,
        c: ActivationChunk,
        outputs: &[TensorSpec],
        now: Duration,
    ) -> ChunkOutcome {
        let id = c.request;
        let Some(f) = self.flights.get_mut(&id) else {
            return ChunkOutcome::Ignored;
        };
        let Some(spec) = outputs.iter().find(|o| o.name == c.tensor) else {
            return ChunkOutcome::Ignored;
        };
        if f.epoch != Some(c.epoch) || f.done.contains_key(&c.tensor) {
            return ChunkOutcome::Ignored;
        }
        // The answer must be what the model says, before anything is assembled.
        if c.dtype != spec.dtype || c.dims != spec.dims {
            return ChunkOutcome::Mismatch {
                id,
                tensor: c.tensor,
                what: format!(
                    "{:?}{:?} arrived, the model's output is {:?}{:?}",
                    c.dtype, c.dims, spec.dtype, spec.dims
                ),
            };
        }
        let name = c.tensor.clone();
        match f.parts.entry(name.clone()).or_default().add(c) {
            Err(e) => ChunkOutcome::Bad(e),
            Ok(None) => ChunkOutcome::Partial,
            Ok(Some(value)) => {
                f.parts.remove(&name);
                f.done.insert(name.clone(), NamedTensor { name, value });
                if f.done.len() < outputs.len() {
                    return ChunkOutcome::Partial;
                }
                let Some(mut f) = self.flights.remove(&id) else {
                    return ChunkOutcome::Ignored;
                };
                let outs = outputs
                    .iter()
                    .filter_map(|o| f.done.remove(&o.name))
                    .collect();
                ChunkOutcome::Completed(Completed {
                    id,
                    epoch: f.epoch.unwrap_or_default(),
                    outputs: outs,
                    latency: now.saturating_sub(f.started),
                    run_latency: now.saturating_sub(f.dispatched),
                    reruns: f.reruns,
                })
            }
        }
    }

    /// Resets every request running on an epoch for which `touched` is true (it gave work to
    /// an agent that died): they wait for the next epoch. Returns their ids.
    pub fn rerun_where(&mut self, touched: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        for (&id, f) in self.flights.iter_mut() {
            if f.epoch.is_some_and(&touched) {
                f.epoch = None;
                f.parts.clear();
                f.done.clear();
                f.reruns += 1;
                out.push(id);
            }
        }
        out
    }

    /// Drops a request (failed or timed out); true if it was in flight.
    pub fn fail(&mut self, id: u64) -> bool {
        self.flights.remove(&id).is_some()
    }

    /// Requests submitted before `cutoff`.
    pub fn older_than(&self, cutoff: Duration) -> Vec<u64> {
        self.flights
            .iter()
            .filter(|(_, f)| f.started < cutoff)
            .map(|(&id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moirai_core::tensor::TensorValue;
    use moirai_core::wire::data::activation_chunks;

    const MS: Duration = Duration::from_millis(1);

    fn out_spec() -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "y".into(),
            dtype: moirai_core::kernel::DType::F32,
            dims: vec![2],
        }]
    }

    fn y(values: &[f32]) -> TensorValue {
        TensorValue::f32(&[2], values.to_vec())
    }

    fn input() -> Vec<NamedTensor> {
        vec![NamedTensor {
            name: "x".into(),
            value: TensorValue::f32(&[2], vec![1.0, 2.0]),
        }]
    }

    #[test]
    fn a_request_completes_once_on_its_epoch() {
        let mut r = Requests::default();
        let id = r.submit(input(), Duration::ZERO);
        assert_eq!(r.waiting(), vec![id]);
        r.dispatch(id, 3, 2 * MS).unwrap();
        let other = activation_chunks(id, 2, "y", &y(&[9.0, 9.0])).remove(0);
        assert_eq!(
            r.on_chunk(other, &out_spec(), 4 * MS),
            ChunkOutcome::Ignored
        );
        let c = activation_chunks(id, 3, "y", &y(&[5.0, 6.0])).remove(0);
        match r.on_chunk(c.clone(), &out_spec(), 10 * MS) {
            ChunkOutcome::Completed(done) => {
                assert_eq!(done.epoch, 3);
                assert_eq!(done.outputs[0].value, y(&[5.0, 6.0]));
                assert_eq!(done.latency, 10 * MS);
                assert_eq!(done.run_latency, 8 * MS);
            }
            other => panic!("{other:?}"),
        }
        // A duplicate delivery after completion answers nothing.
        assert_eq!(r.on_chunk(c, &out_spec(), 11 * MS), ChunkOutcome::Ignored);
        assert!(r.is_empty());
    }

    #[test]
    fn requests_on_an_epoch_that_lost_an_agent_are_rerun_and_late_answers_ignored() {
        let mut r = Requests::default();
        let a = r.submit(input(), Duration::ZERO);
        let b = r.submit(input(), Duration::ZERO);
        r.dispatch(a, 1, MS);
        r.dispatch(b, 2, MS);
        assert_eq!(r.rerun_where(|e| e == 1), vec![a]);
        assert_eq!(r.waiting(), vec![a]);
        // The old epoch answers late: ignored.
        let late = activation_chunks(a, 1, "y", &y(&[0.0, 0.0])).remove(0);
        assert_eq!(r.on_chunk(late, &out_spec(), 3 * MS), ChunkOutcome::Ignored);
        r.dispatch(a, 3, 4 * MS);
        let c = activation_chunks(a, 3, "y", &y(&[1.0, 1.0])).remove(0);
        match r.on_chunk(c, &out_spec(), 5 * MS) {
            ChunkOutcome::Completed(done) => assert_eq!(done.reruns, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.epochs_in_use(), BTreeSet::from([2]));
    }

    #[test]
    fn an_answer_of_another_type_or_shape_fails_the_request_before_it_is_assembled() {
        let mut r = Requests::default();
        let id = r.submit(input(), Duration::ZERO);
        r.dispatch(id, 1, MS);
        let wrong = TensorValue::f32(&[1 << 20], vec![0.0; 1 << 20]);
        let c = activation_chunks(id, 1, "y", &wrong).remove(0);
        match r.on_chunk(c, &out_spec(), 2 * MS) {
            ChunkOutcome::Mismatch {
                id: got,
                tensor,
                what,
            } => {
                assert_eq!((got, tensor.as_str()), (id, "y"));
                assert!(what.contains("[1048576]"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        let ints = TensorValue::new(vec![2], moirai_core::tensor::TensorData::I64(vec![1, 2]));
        let c = activation_chunks(id, 1, "y", &ints.unwrap()).remove(0);
        assert!(matches!(
            r.on_chunk(c, &out_spec(), 3 * MS),
            ChunkOutcome::Mismatch { .. }
        ));
    }
}
