//! One plan epoch ([`plan_epoch`]) of a [`LoadedModel`]: place the fused groups on the agents,
//! cut the placement into subgraphs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use moirai_core::cost::ProfileTable;
use moirai_core::DeviceId;
use moirai_model::loaded::LoadedModel;
use moirai_model::split::{split, Split};

use super::InferError;
use crate::fleet::model::{graph_for, OnlineAgent};

/// How groups are placed on the agents.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// The Moirai placer on the roofline costs of the agents' boards, with this time limit.
    Moirai { time_limit: Duration },
    /// Consecutive groups in topological order, split into equal shares of the FLOPs, one
    /// share per agent: every agent works and activations cross every agent.
    Pipeline,
}

/// Measured kernel times from a `moirai-profiles/v1` table (what `moirai-agent profile`
/// writes); a missing file is an empty table.
pub fn load_profiles(path: &Path) -> Result<ProfileTable, InferError> {
    Ok(moirai_model::profiles::read_table(path)?)
}

/// One plan epoch: the subgraphs and what the plan predicts.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    pub epoch: u64,
    pub split: Split,
    pub predicted_ms: f64,
    /// Agent name of each device index of `graph` and `schedule`.
    pub agents: Vec<String>,
    /// The costed graph and the schedule the split was cut from (for Gantt charts).
    pub graph: moirai_core::Graph,
    pub schedule: moirai_core::Schedule,
    /// One line: agents, groups per agent, predicted makespan, solve time.
    pub summary: String,
}

/// The agent of each group, by group name.
fn groups_by_agent(schedule: &moirai_core::Schedule, names: &[String]) -> BTreeMap<String, String> {
    schedule
        .ops
        .iter()
        .filter_map(|s| Some((s.id.clone(), names.get(s.device as usize)?.clone())))
        .collect()
}

/// Consecutive groups in topological order, in `k` shares of equal FLOPs.
fn pipeline(
    model: &LoadedModel,
    graph: &moirai_core::Graph,
    k: usize,
    t0: Instant,
) -> moirai_core::Schedule {
    let total: f64 = model
        .plan
        .ops
        .iter()
        .map(|o| o.signature.flops as f64)
        .sum::<f64>()
        .max(1.0);
    let mut engine = crate::simulate::Engine::new(graph, true);
    let mut done = 0.0;
    // Groups are in a topological order; the graph's ops follow the same order.
    for (i, o) in model.plan.ops.iter().enumerate() {
        let share = ((done / total) * k as f64).floor() as usize;
        done += o.signature.flops as f64;
        engine.commit(
            moirai_core::OpId::from(i),
            DeviceId(share.min(k - 1) as u16),
        );
    }
    engine.to_schedule("pipeline", 0.0, t0.elapsed().as_secs_f64())
}

/// Every group on device `d`.
fn on_one_device(graph: &moirai_core::Graph, d: usize, t0: Instant) -> moirai_core::Schedule {
    let mut engine = crate::simulate::Engine::new(graph, true);
    for i in 0..graph.ops().len() {
        engine.commit(moirai_core::OpId::from(i), DeviceId(d as u16));
    }
    engine.to_schedule("single", 0.0, t0.elapsed().as_secs_f64())
}

/// Places the model on `devices` and cuts the placement into subgraphs.
pub fn plan_epoch(
    model: &LoadedModel,
    mut devices: Vec<OnlineAgent>,
    placement: &Placement,
    profiles: &ProfileTable,
    epoch: u64,
) -> Result<EpochPlan, InferError> {
    if devices.is_empty() {
        return Err(InferError::NoAgent);
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    let t0 = Instant::now();
    let (graph, coverage) = graph_for(&model.plan, &devices, profiles)?;
    let schedule = match placement {
        Placement::Moirai { time_limit } => {
            (crate::replan::moirai_placer())(&graph, None, *time_limit)?
        }
        Placement::Pipeline => pipeline(model, &graph, devices.len(), t0),
    };
    let names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
    let mut by_group = groups_by_agent(&schedule, &names);
    // One subgraph per agent runs once all its inputs are there: a placement whose shares
    // feed each other both ways would never finish a request. Serve the faster of the
    // placements that cannot have such a cycle (the pipeline, or one agent), and say why.
    let (schedule, note) = match moirai_model::split::share_cycle(&model.coarse, &by_group) {
        None => (schedule, String::new()),
        Some(cycle) => {
            let mut best = pipeline(model, &graph, devices.len(), t0);
            let mut chosen = "the pipeline".to_string();
            for (d, name) in names.iter().enumerate() {
                let one = on_one_device(&graph, d, t0);
                if one.makespan_ms < best.makespan_ms {
                    best = one;
                    chosen = format!("everything on {name}");
                }
            }
            let note = format!(
                "; the placer's shares feed each other in a cycle ({}), which one subgraph per agent cannot run: serving {chosen} instead ({:.3} ms, the placer's {:.3} ms)",
                cycle.join(" -> "),
                best.makespan_ms,
                schedule.makespan_ms
            );
            by_group = groups_by_agent(&best, &names);
            (best, note)
        }
    };
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
        model.plan.ops.len(),
        names.len(),
        shares.join(" "),
        schedule.makespan_ms,
        coverage.profiled,
        coverage.roofline,
        t0.elapsed().as_secs_f64() * 1e3,
        if crossing.is_empty() { "none".to_string() } else { crossing.join(", ") }
    ) + &note;
    Ok(EpochPlan {
        epoch,
        split,
        predicted_ms: schedule.makespan_ms,
        agents: names,
        graph,
        schedule,
        summary,
    })
}
