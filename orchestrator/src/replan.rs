//! Replanning: the [`Replanner`] that builds the costed graph for the online agents (measured times where
//! the profile store has them, the roofline elsewhere), places it warm-started from the
//! current plan, and cuts the schedule into one [`Assignment`] per agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use moirai_core::plan::Placement;
use moirai_core::wire::assign::{AssignedOp, Assignment, TensorRoute};
use moirai_core::wire::truncated;
use moirai_core::{DeviceId, Graph, Schedule};
use thiserror::Error;
use tracing::info;

use moirai_core::cost::plan::{CostSources, PlanError, PlanModel};
use moirai_core::cost::ProfileTable;

use crate::fleet::model::{graph_for, OnlineAgent};
use crate::place::PlaceError;

#[derive(Debug, Error)]
pub enum ReplanError {
    #[error("no agent is online")]
    NoDevices,
    #[error("the costed graph for {devices} devices is not valid: {source}")]
    Graph { devices: usize, source: PlanError },
    #[error("the placer failed on {devices} devices: {source}")]
    Placer { devices: usize, source: PlaceError },
}

/// A placer: graph, optional warm start, time limit -> schedule.
pub type PlaceFn =
    Box<dyn Fn(&Graph, Option<&Placement>, Duration) -> Result<Schedule, PlaceError> + Send>;

/// The placer replans use: the Moirai placer, warm-started from the plan in force, through
/// the validating `place` entry point.
pub fn moirai_placer() -> PlaceFn {
    Box::new(|g, warm, limit| {
        // The bound is part of the replan's budget: a quarter of it at most.
        let t0 = Instant::now();
        let bound = crate::place::lower_bound_within(g, limit / 4);
        let opts = crate::place::PlaceOptions {
            time_limit: limit.saturating_sub(t0.elapsed()).max(limit / 2),
            warm_start: warm.cloned(),
            ..Default::default()
        };
        crate::place::place(g, crate::place::Method::Moirai, &opts, &bound).map(|p| p.schedule)
    })
}

/// The plan in force.
#[derive(Clone, Debug)]
pub struct CurrentPlan {
    pub epoch: u64,
    /// Agent name of each device index of `graph`.
    pub agents: Vec<String>,
    pub graph: Graph,
    pub schedule: Schedule,
    pub assignments: BTreeMap<String, Assignment>,
    pub reasons: Vec<String>,
    pub coverage: CostSources,
    pub solve: Duration,
}

impl CurrentPlan {
    /// Agent name of each op, by op name.
    pub fn placement_by_name(&self) -> BTreeMap<String, String> {
        self.schedule
            .ops
            .iter()
            .filter_map(|s| {
                Some((
                    s.id.clone(),
                    self.agents.get(s.device as usize)?.to_string(),
                ))
            })
            .collect()
    }
}

/// Plans and re-plans the model on the online agents.
pub struct Replanner {
    model: PlanModel,
    place: PlaceFn,
    time_limit: Duration,
    current: Option<CurrentPlan>,
    epoch: u64,
}

impl Replanner {
    pub fn new(model: PlanModel, place: PlaceFn, time_limit: Duration) -> Self {
        Self {
            model,
            place,
            time_limit,
            current: None,
            epoch: 0,
        }
    }

    pub fn model(&self) -> &PlanModel {
        &self.model
    }

    pub fn current(&self) -> Option<&CurrentPlan> {
        self.current.as_ref()
    }

    /// Plans on `devices` (sorted by name), warm-started from the current plan; logs the
    /// plan it replaces and why; returns the new one.
    pub fn replan(
        &mut self,
        mut devices: Vec<OnlineAgent>,
        store: &ProfileTable,
        reasons: Vec<String>,
    ) -> Result<&CurrentPlan, ReplanError> {
        if devices.is_empty() {
            return Err(ReplanError::NoDevices);
        }
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        let (graph, coverage) =
            graph_for(&self.model, &devices, store).map_err(|source| ReplanError::Graph {
                devices: devices.len(),
                source,
            })?;
        let warm = self
            .current
            .as_ref()
            .map(|cur| warm_start(cur, &graph, &devices));
        let t0 = Instant::now();
        let schedule = (self.place)(&graph, warm.as_ref(), self.time_limit).map_err(|source| {
            ReplanError::Placer {
                devices: devices.len(),
                source,
            }
        })?;
        let solve = t0.elapsed();
        self.epoch += 1;
        let agents: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
        let bytes: Vec<u64> = self.model.edges.iter().map(|e| e.bytes).collect();
        let assignments = assignments(self.epoch, &graph, &schedule, &agents, &bytes);
        let plan = CurrentPlan {
            epoch: self.epoch,
            agents,
            graph,
            schedule,
            assignments,
            reasons,
            coverage,
            solve,
        };
        match &self.current {
            Some(old) => {
                let before = old.placement_by_name();
                let moved = plan
                    .placement_by_name()
                    .iter()
                    .filter(|(op, a)| before.get(*op) != Some(a))
                    .count();
                info!(
                    epoch = plan.epoch,
                    replaces = old.epoch,
                    old_makespan_ms = old.schedule.makespan_ms,
                    old_agents = ?old.agents,
                    makespan_ms = plan.schedule.makespan_ms,
                    agents = ?plan.agents,
                    moved_ops = moved,
                    why = ?plan.reasons,
                    "replanned"
                );
            }
            None => info!(
                epoch = plan.epoch,
                makespan_ms = plan.schedule.makespan_ms,
                agents = ?plan.agents,
                why = ?plan.reasons,
                "first plan"
            ),
        }
        Ok(self.current.insert(plan))
    }
}

/// The previous placement mapped onto the new device list; ops whose agent left go to the
/// device that runs them fastest.
fn warm_start(cur: &CurrentPlan, g: &Graph, devices: &[OnlineAgent]) -> Placement {
    let index: BTreeMap<&str, DeviceId> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), DeviceId::from(i)))
        .collect();
    let before = cur.placement_by_name();
    g.op_ids()
        .map(|o| {
            before
                .get(&g.op(o).name)
                .and_then(|a| index.get(a.as_str()).copied())
                .unwrap_or_else(|| {
                    g.device_ids()
                        .min_by(|a, b| g.time(o, *a).total_cmp(&g.time(o, *b)))
                        .unwrap_or(DeviceId(0))
                })
        })
        .collect()
}

/// Cuts a schedule into one assignment per agent (idle agents get an empty one).
pub fn assignments(
    epoch: u64,
    g: &Graph,
    s: &Schedule,
    agents: &[String],
    edge_bytes: &[u64],
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = agents
        .iter()
        .map(|a| {
            (
                a.clone(),
                Assignment {
                    epoch,
                    model: g.name.clone(),
                    makespan_ms: s.makespan_ms,
                    ops: Vec::new(),
                    receive: Vec::new(),
                    send: Vec::new(),
                },
            )
        })
        .collect();
    let mut slots: Vec<_> = s.ops.iter().collect();
    slots.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    for slot in slots {
        let Some(a) = agents
            .get(slot.device as usize)
            .and_then(|n| out.get_mut(n))
        else {
            continue;
        };
        let kernel = g.find_op(&slot.id).and_then(|o| g.op(o).kernel.clone());
        a.ops.push(AssignedOp {
            name: slot.id.clone(),
            kernel,
            start_ms: slot.start_ms,
            end_ms: slot.end_ms,
        });
    }
    for (i, t) in s.transfers.iter().enumerate() {
        let (Some(from), Some(to)) = (agents.get(t.from as usize), agents.get(t.to as usize))
        else {
            continue;
        };
        let Some(&e0) = t.edges.first() else {
            continue;
        };
        let Some(edge) = g.edges().get(e0 as usize) else {
            continue;
        };
        let bytes = edge_bytes.get(e0 as usize).copied().unwrap_or(0);
        let producer = g.op(edge.src).name.clone();
        let tensor = edge.tensor.clone().unwrap_or_else(|| producer.clone());
        let route = |peer: &str| TensorRoute {
            transfer: i as u32,
            tensor: tensor.clone(),
            producer: producer.clone(),
            peer: truncated(peer),
            bytes,
        };
        if let Some(a) = out.get_mut(from) {
            a.send.push(route(to));
        }
        if let Some(a) = out.get_mut(to) {
            a.receive.push(route(from));
        }
    }
    out
}

/// Earliest-finish-time list scheduling through the simulator, used until the Moirai placer
/// is wired in and for simulated fleets where speed matters more than the last percent: ops
/// in topological order, each on the device where it would finish first among those with
/// memory left (a warm start breaks ties towards the previous device).
pub fn greedy_place(
    g: &Graph,
    warm: Option<&Placement>,
    _limit: Duration,
) -> Result<Schedule, String> {
    let t0 = Instant::now();
    let mut engine = crate::simulate::Engine::new(g, true);
    for &op in g.topo_order() {
        let mut best: Option<(f64, DeviceId)> = None;
        for d in g.device_ids() {
            if !engine.fits(op, d) {
                continue;
            }
            let mut end = engine.probe(op, d).end;
            if warm.and_then(|w| w.get(op.index())) == Some(&d) {
                end -= 1e-9;
            }
            if best.is_none_or(|(b, _)| end < b) {
                best = Some((end, d));
            }
        }
        let (_, d) = best.ok_or_else(|| format!("op `{}` fits on no device", g.op(op).name))?;
        engine.commit(op, d);
    }
    Ok(engine.to_schedule("greedy-eft", 0.0, t0.elapsed().as_secs_f64()))
}
