//! The GPU executor against tract on the same share: per-request latency of each and how far
//! their outputs are apart (`moirai-agent bench-share`).
//!
//! A model is cut into `stages` shares of consecutive fused groups (the groups of the
//! orchestrator's coarsening, as `moirai run --placement pipeline` cuts it); the share to
//! measure gets its real inputs by running the earlier shares on tract.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use moirai_core::tensor::{rel_diff, TensorValue};
use moirai_core::wire::data::SubgraphSpec;
use moirai_model::loaded::LoadedModel;
use moirai_model::split::{split, SplitError};
use moirai_model::submodel::{self, SubmodelError};
use tract_onnx::pb;

use super::gpu_share::{GpuShareError, GpuShareExec, LoadOptions, VerifyReport};
use super::subgraph::{NamedTensors, SubgraphError, SubgraphExec};
use crate::gpu::context::GpuContext;

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cannot cut the model into {stages} stage(s): {source}")]
    Split {
        stages: usize,
        #[source]
        source: SplitError,
    },
    #[error("stage {stage}: {source}")]
    Submodel {
        stage: usize,
        #[source]
        source: SubmodelError,
    },
    #[error("the model has {groups} fused groups: it cannot make {stages} stages")]
    Stages { groups: usize, stages: usize },
    #[error("stage {stage} on tract: {source}")]
    Tract {
        stage: usize,
        #[source]
        source: SubgraphError,
    },
    #[error("stage {stage} on the GPU executor: {source}")]
    Gpu {
        stage: usize,
        #[source]
        source: Box<GpuShareError>,
    },
}

/// One share: its spec and its sub-model.
pub type Share = (SubgraphSpec, pb::ModelProto);

/// Inputs of a request by tensor name.
pub type Feed = HashMap<String, TensorValue>;

/// The model cut into `stages` shares of consecutive groups (as equal in group count as
/// can be), in pipeline order.
pub fn stage_shares(model: &LoadedModel, stages: usize) -> Result<Vec<Share>, CompareError> {
    let groups = model.coarse.groups.len();
    if stages == 0 || stages > groups {
        return Err(CompareError::Stages { groups, stages });
    }
    let name = |s: usize| format!("stage{s}");
    let placement: BTreeMap<String, String> = model
        .coarse
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.clone(), name(i * stages / groups)))
        .collect();
    let cut = split(
        &model.onnx,
        &model.coarse,
        &placement,
        1,
        model.sha256,
        0.0,
        |n| model.weight_bytes(n),
    )
    .map_err(|source| CompareError::Split { stages, source })?;
    (0..stages)
        .map(|s| {
            let spec = cut
                .specs
                .get(&name(s))
                .cloned()
                .ok_or(CompareError::Stages { groups, stages })?;
            let sub = submodel::extract(model.proto(), &spec)
                .map_err(|source| CompareError::Submodel { stage: s, source })?;
            Ok((spec, sub))
        })
        .collect()
}

/// Adds a request's outputs to what is known.
pub fn absorb(known: &mut Feed, outputs: NamedTensors) {
    for (name, value) in outputs {
        known.insert(name, value);
    }
}

/// Latencies of one executor, in milliseconds, sorted.
#[derive(Clone, Debug)]
pub struct Timing {
    pub load_ms: f64,
    pub runs_ms: Vec<f64>,
}

impl Timing {
    /// Nearest-rank percentile of the (sorted) runs.
    pub fn percentile(&self, p: f64) -> f64 {
        moirai_core::stats::percentile(&self.runs_ms, p)
    }

    pub fn min(&self) -> f64 {
        self.runs_ms.first().copied().unwrap_or(f64::NAN)
    }
}

/// What `bench-share` measured.
#[derive(Clone, Debug)]
pub struct ShareBench {
    pub tract: Timing,
    /// Absent without an adapter.
    pub gpu: Option<Timing>,
    /// Which groups the GPU executor runs where (its summary line).
    pub gpu_placement: Option<String>,
    /// max|gpu - tract| / max|tract| over the share's outputs.
    pub max_rel_diff: Option<f32>,
    /// What the load-time check of the GPU kernels did (when asked for): part of the GPU
    /// executor's load time.
    pub verified: Option<VerifyReport>,
}

fn time<E>(
    warmups: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<NamedTensors, E>,
) -> Result<(Vec<f64>, NamedTensors), E> {
    let mut last = f()?;
    for _ in 1..warmups {
        last = f()?;
    }
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        last = f()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms, last))
}

/// max|got - want| / max|want| over matching tensors ([`rel_diff`]); infinite when one is
/// missing or differs in type or shape.
pub fn max_rel_diff(got: &NamedTensors, want: &NamedTensors) -> f32 {
    let mut worst = 0.0f64;
    for (name, w) in want {
        let d = got
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, g)| rel_diff(g, w))
            .unwrap_or(f64::INFINITY);
        worst = worst.max(d);
    }
    worst as f32
}

/// How to run [`bench_share`].
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    pub warmups: usize,
    pub runs: usize,
    /// Check each GPU kernel against tract at load with this tolerance (`None`: the raw
    /// kernels, unchecked).
    pub verify: Option<f32>,
}

/// Loads `shares[stage]` on tract and (with `gpu`) on the GPU executor, feeds both the same
/// request (`feed` holds the model inputs; earlier stages run on tract to make theirs) and
/// times `runs` requests on each after `warmups`.
pub fn bench_share(
    gpu: Option<Arc<GpuContext>>,
    shares: &[Share],
    stage: usize,
    mut feed: Feed,
    opts: BenchOptions,
) -> Result<ShareBench, CompareError> {
    let BenchOptions {
        warmups,
        runs,
        verify,
    } = opts;
    for (s, (spec, sub)) in shares.iter().enumerate().take(stage) {
        let tract_err = |source| CompareError::Tract { stage: s, source };
        let exec = SubgraphExec::load(sub, spec).map_err(tract_err)?;
        let out = exec.run(&feed).map_err(tract_err)?;
        absorb(&mut feed, out);
    }
    let (spec, sub) = shares.get(stage).ok_or(CompareError::Stages {
        groups: 0,
        stages: shares.len(),
    })?;
    let tract_err = |source| CompareError::Tract { stage, source };
    let t0 = Instant::now();
    let tract = SubgraphExec::load(sub, spec).map_err(tract_err)?;
    let tract_load = t0.elapsed().as_secs_f64() * 1e3;
    let (tract_ms, want) = time(warmups, runs, || tract.run(&feed)).map_err(tract_err)?;
    let tract = Timing {
        load_ms: tract_load,
        runs_ms: tract_ms,
    };
    let Some(ctx) = gpu else {
        return Ok(ShareBench {
            tract,
            gpu: None,
            gpu_placement: None,
            max_rel_diff: None,
            verified: None,
        });
    };
    let gpu_err = |source| CompareError::Gpu {
        stage,
        source: Box::new(source),
    };
    let t0 = Instant::now();
    let load = LoadOptions {
        verify,
        ..LoadOptions::default()
    };
    let exec = GpuShareExec::load_with(ctx, sub, spec, load).map_err(gpu_err)?;
    let gpu_load = t0.elapsed().as_secs_f64() * 1e3;
    let (gpu_ms, got) = time(warmups, runs, || exec.run(&feed)).map_err(gpu_err)?;
    Ok(ShareBench {
        tract,
        gpu: Some(Timing {
            load_ms: gpu_load,
            runs_ms: gpu_ms,
        }),
        gpu_placement: Some(exec.summary()),
        max_rel_diff: Some(max_rel_diff(&got, &want)),
        verified: verify.map(|_| exec.verified.clone()),
    })
}
