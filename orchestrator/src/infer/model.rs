//! The model as inference needs it ([`InferModel`]: the imported and coarsened graph, the
//! protobuf with its weights, the file's SHA-256) and one plan epoch ([`plan_epoch`]): place
//! the fused groups on the agents, cut the placement into subgraphs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use moirai_shared::wire::data::TensorSpec;
use moirai_shared::DeviceId;
use tract_onnx::pb;

use super::split::{spec_of, split, Split};
use super::submodel;
use super::InferError;
use crate::coarsen::CoarseGraph;
use crate::fleet::model::{FleetModel, PlanDevice};
use crate::fleet::store::ProfileStore;
use crate::import::onnx::OnnxModel;

/// How groups are placed on the agents.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// The Moirai placer on the roofline costs of the agents' boards, with this time limit.
    Moirai { time_limit: Duration },
    /// Consecutive groups in topological order, split into equal shares of the FLOPs, one
    /// share per agent: every agent works and activations cross every agent.
    Pipeline,
}

/// A model ready to be planned and served.
pub struct InferModel {
    pub onnx: OnnxModel,
    pub coarse: CoarseGraph,
    pub fleet: FleetModel,
    proto: pb::ModelProto,
    pub sha256: [u8; 32],
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl InferModel {
    /// Reads, hashes, imports and coarsens the model file with the fusion rules of the
    /// agents' default executor (wgpu: the fused WGSL kernels).
    pub fn load(path: &Path) -> Result<Self, InferError> {
        Self::load_for(path, moirai_shared::device::Backend::Wgpu)
    }

    /// [`InferModel::load`] for agents running `executor`: its fusion rules make the groups,
    /// so the kernel keys match what `moirai-agent profile --backend <executor>` measures.
    pub fn load_for(
        path: &Path,
        executor: moirai_shared::device::Backend,
    ) -> Result<Self, InferError> {
        let bytes = std::fs::read(path).map_err(|source| InferError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = submodel::sha256(&bytes);
        let proto = submodel::decode_model(&bytes)?;
        let opts = crate::import::onnx::ImportOptions {
            require_weights: true,
            ..Default::default()
        };
        let onnx = crate::import::onnx::from_proto(&proto, path, &opts)?;
        let coarse = crate::coarsen::coarsen(
            &onnx,
            &crate::coarsen::rules::RuleSet::for_backend(executor),
        );
        let fleet = FleetModel::from_coarse(&coarse);
        let spec = |t: &String| -> Result<TensorSpec, InferError> { Ok(spec_of(&onnx, t)?) };
        let inputs = onnx.inputs.iter().map(spec).collect::<Result<_, _>>()?;
        let outputs = onnx.outputs.iter().map(spec).collect::<Result<_, _>>()?;
        Ok(InferModel {
            onnx,
            coarse,
            fleet,
            proto,
            sha256,
            inputs,
            outputs,
        })
    }

    pub fn proto(&self) -> &pb::ModelProto {
        &self.proto
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Weight bytes of a node list (nodes named by their first output).
    pub fn weight_bytes(&self, nodes: &[String]) -> u64 {
        submodel::weight_bytes(&self.proto, nodes)
    }
}

/// Measured kernel times from a `moirai-profiles/v1` table (what `moirai-agent profile`
/// writes) as the fleet's profile store; a missing file is an empty store.
pub fn load_profiles(path: &Path) -> Result<ProfileStore, InferError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ProfileStore::new()),
        Err(source) => {
            return Err(InferError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let table = moirai_shared::cost::ProfileTable::from_json(&text)
        .map_err(|e| InferError::Plan(format!("{}: {e}", path.display())))?;
    let mut store = ProfileStore::new();
    for (board, kernels) in &table.boards {
        for (key, &time_ms) in kernels {
            store.insert(
                board,
                key,
                crate::fleet::store::Measured {
                    time_ms,
                    agent: "profile".into(),
                    emulation_scale: None,
                },
            );
        }
    }
    Ok(store)
}

/// One plan epoch: the subgraphs and what the plan predicts.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    pub epoch: u64,
    pub split: Split,
    pub predicted_ms: f64,
    /// One line: agents, groups per agent, predicted makespan, solve time.
    pub summary: String,
}

/// Places the model on `devices` and cuts the placement into subgraphs.
pub fn plan_epoch(
    model: &InferModel,
    mut devices: Vec<PlanDevice>,
    placement: &Placement,
    profiles: &ProfileStore,
    epoch: u64,
) -> Result<EpochPlan, InferError> {
    if devices.is_empty() {
        return Err(InferError::Plan("no agent".into()));
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    let t0 = Instant::now();
    let (graph, coverage) = model
        .fleet
        .graph_for(&devices, profiles)
        .map_err(|e| InferError::Plan(e.to_string()))?;
    let schedule = match placement {
        Placement::Moirai { time_limit } => {
            (crate::serve::placer())(&graph, None, *time_limit).map_err(InferError::Plan)?
        }
        Placement::Pipeline => {
            let total: f64 = model
                .fleet
                .ops
                .iter()
                .map(|o| o.signature.flops as f64)
                .sum::<f64>()
                .max(1.0);
            let k = devices.len();
            let mut engine = crate::simulate::Engine::new(&graph, true);
            let mut done = 0.0;
            // Groups are in a topological order; the graph's ops follow the same order.
            for (i, o) in model.fleet.ops.iter().enumerate() {
                let share = ((done / total) * k as f64).floor() as usize;
                done += o.signature.flops as f64;
                let op = moirai_shared::OpId::from(i);
                engine.commit(op, DeviceId(share.min(k - 1) as u16));
            }
            engine.to_schedule("pipeline", 0.0, t0.elapsed().as_secs_f64())
        }
    };
    let names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
    let by_group: BTreeMap<String, String> = schedule
        .ops
        .iter()
        .filter_map(|s| Some((s.id.clone(), names.get(s.device as usize)?.clone())))
        .collect();
    let split = split(
        &model.onnx,
        &model.coarse,
        &by_group,
        epoch,
        model.sha256,
        schedule.makespan_ms,
        |nodes| model.weight_bytes(nodes),
    )?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in by_group.values() {
        *counts.entry(a.as_str()).or_default() += 1;
    }
    let shares: Vec<String> = names
        .iter()
        .map(|n| format!("{n}:{}", counts.get(n.as_str()).copied().unwrap_or(0)))
        .collect();
    // What crosses between agents, by element type (token ids and masks travel as they are).
    let mut crossing: BTreeMap<String, usize> = BTreeMap::new();
    for spec in split.specs.values() {
        for t in &spec.inputs {
            *crossing
                .entry(format!("{:?}", t.dtype).to_lowercase())
                .or_default() += 1;
        }
    }
    let crossing: Vec<String> = crossing.iter().map(|(d, n)| format!("{n} {d}")).collect();
    let summary = format!(
        "epoch {epoch}: {} groups on {} agents ({}), predicted makespan {:.3} ms ({} op costs measured, {} roofline), planned in {:.0} ms; tensors received: {}",
        model.fleet.ops.len(),
        names.len(),
        shares.join(" "),
        schedule.makespan_ms,
        coverage.measured,
        coverage.roofline,
        t0.elapsed().as_secs_f64() * 1e3,
        if crossing.is_empty() { "none".to_string() } else { crossing.join(", ") }
    );
    Ok(EpochPlan {
        epoch,
        split,
        predicted_ms: schedule.makespan_ms,
        summary,
    })
}
