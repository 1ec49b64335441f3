//! Replanning: a [`Debouncer`] that turns a burst of membership changes into one replan, and
//! the [`Replanner`] that builds the costed graph for the online agents (measured times where
//! the profile store has them, the roofline elsewhere), places it warm-started from the
//! current plan, and cuts the schedule into one [`Assignment`] per agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use moirai_shared::plan::Placement;
use moirai_shared::wire::assign::{AssignedOp, Assignment, TensorRoute};
use moirai_shared::wire::truncated;
use moirai_shared::{DeviceId, Graph, Schedule};
use thiserror::Error;
use tracing::info;

use crate::fleet::model::{Coverage, FleetModel, PlanDevice};
use crate::fleet::store::ProfileStore;

#[derive(Debug, Error)]
pub enum ReplanError {
    #[error("no agent is online")]
    NoDevices,
    #[error("the costed graph for {devices} devices is not valid: {source}")]
    Graph {
        devices: usize,
        source: moirai_shared::graph::GraphError,
    },
    #[error("the placer failed on {devices} devices: {reason}")]
    Placer { devices: usize, reason: String },
}

/// Collects membership changes; due once they have been quiet for `quiet`, or `max` after
/// the first one, whichever comes first.
#[derive(Clone, Debug)]
pub struct Debouncer {
    quiet: Duration,
    max: Duration,
    first: Option<Duration>,
    last: Duration,
    reasons: Vec<String>,
}

impl Debouncer {
    pub fn new(quiet: Duration, max: Duration) -> Self {
        Self {
            quiet,
            max,
            first: None,
            last: Duration::ZERO,
            reasons: Vec::new(),
        }
    }

    pub fn note(&mut self, reason: String, now: Duration) {
        self.first.get_or_insert(now);
        self.last = now;
        self.reasons.push(reason);
    }

    pub fn is_armed(&self) -> bool {
        self.first.is_some()
    }

    /// The collected reasons, when due; disarms.
    pub fn take_if_due(&mut self, now: Duration) -> Option<Vec<String>> {
        let first = self.first?;
        let due =
            now.saturating_sub(self.last) >= self.quiet || now.saturating_sub(first) >= self.max;
        if !due {
            return None;
        }
        self.first = None;
        Some(std::mem::take(&mut self.reasons))
    }
}

/// A placer: graph, optional warm start, time limit -> schedule.
pub type PlaceFn =
    Box<dyn Fn(&Graph, Option<&Placement>, Duration) -> Result<Schedule, String> + Send>;

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
    pub coverage: Coverage,
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
    model: FleetModel,
    place: PlaceFn,
    time_limit: Duration,
    current: Option<CurrentPlan>,
    epoch: u64,
}

impl Replanner {
    pub fn new(model: FleetModel, place: PlaceFn, time_limit: Duration) -> Self {
        Self {
            model,
            place,
            time_limit,
            current: None,
            epoch: 0,
        }
    }

    pub fn model(&self) -> &FleetModel {
        &self.model
    }

    pub fn current(&self) -> Option<&CurrentPlan> {
        self.current.as_ref()
    }

    /// Plans on `devices` (sorted by name), warm-started from the current plan; logs the
    /// plan it replaces and why; returns the new one.
    pub fn replan(
        &mut self,
        mut devices: Vec<PlanDevice>,
        store: &ProfileStore,
        reasons: Vec<String>,
    ) -> Result<&CurrentPlan, ReplanError> {
        if devices.is_empty() {
            return Err(ReplanError::NoDevices);
        }
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        let (graph, coverage) = self.model.graph_for(&devices, store)?;
        let warm = self
            .current
            .as_ref()
            .map(|cur| warm_start(cur, &graph, &devices));
        let t0 = Instant::now();
        let schedule = (self.place)(&graph, warm.as_ref(), self.time_limit).map_err(|reason| {
            ReplanError::Placer {
                devices: devices.len(),
                reason,
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
fn warm_start(cur: &CurrentPlan, g: &Graph, devices: &[PlanDevice]) -> Placement {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_debouncer_waits_for_quiet_and_caps_the_wait() {
        let mut d = Debouncer::new(10 * MS, 25 * MS);
        assert_eq!(d.take_if_due(100 * MS), None);
        d.note("a".into(), Duration::ZERO);
        d.note("b".into(), 8 * MS);
        assert_eq!(d.take_if_due(12 * MS), None);
        assert_eq!(
            d.take_if_due(18 * MS),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(!d.is_armed());
        // Changes every 5 ms never go quiet; the cap fires.
        for t in (30..60).step_by(5) {
            d.note(format!("{t}"), t * MS);
            if let Some(r) = d.take_if_due(t * MS) {
                assert_eq!(t, 55);
                assert_eq!(r.len(), 6);
                return;
            }
        }
        panic!("the cap never fired");
    }
}
