//! The list-scheduling simulator: the one place where ops and transfers get times.
//!
//! Every placer produces its schedule through an [`Engine`]: greedy heuristics (HEFT, ETF,
//! ...) ask it "when would this op finish on that device?" ([`Engine::probe`]) and then
//! [`Engine::commit`] their choice; searches over assignments call [`simulate`], which replays
//! a whole placement in priority order. Either way the rules of the cost model hold by
//! construction: an op starts after its inputs arrived, a cut edge gets a transfer on the
//! producer's egress port and the consumer's ingress port, each device and port does one thing
//! at a time, and edges that share a producer and tensor travel once per destination device.
//!
//! Resources are timelines of busy intervals. With insertion, an op or transfer may fill an
//! idle gap left earlier (as HEFT with insertion does); without it, it goes after the last
//! busy interval, which is faster to compute and what plain list scheduling does.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use moirai_core::plan::{OpSlot, Placement, Schedule, TransferSlot};
use moirai_core::{DeviceId, EdgeId, Graph, OpId};

const EPS: f64 = 1e-9;

/// Busy intervals of one resource (a device, or one port of a device), sorted by start.
#[derive(Clone, Debug, Default)]
struct Timeline {
    busy: Vec<(f64, f64)>,
    last_end: f64,
}

impl Timeline {
    /// Earliest `t >= ready` with `[t, t + dur)` free.
    fn earliest(&self, ready: f64, dur: f64, insertion: bool) -> f64 {
        if !insertion {
            return ready.max(self.last_end);
        }
        if dur <= EPS {
            // Empty intervals never collide.
            return ready;
        }
        // First interval that ends after `ready`.
        let from = self.busy.partition_point(|&(_, e)| e <= ready + EPS);
        let mut t = ready;
        for &(s, e) in &self.busy[from..] {
            if t + dur <= s + EPS {
                return t;
            }
            t = t.max(e);
        }
        t
    }

    fn insert(&mut self, start: f64, end: f64) {
        if end - start <= EPS {
            return;
        }
        let at = self.busy.partition_point(|&(s, _)| s < start);
        self.busy.insert(at, (start, end));
        self.last_end = self.last_end.max(end);
    }

    fn clear(&mut self) {
        self.busy.clear();
        self.last_end = 0.0;
    }
}

/// Earliest `t >= ready` at which `[t, t + dur)` is free on both timelines and clashes with
/// none of the `pending` intervals on the same ports.
fn common_slot(
    a: &Timeline,
    b: &Timeline,
    pending: &[(f64, f64)],
    ready: f64,
    dur: f64,
    insertion: bool,
) -> f64 {
    let mut t = ready;
    loop {
        let ta = a.earliest(t, dur, insertion);
        let tb = b.earliest(ta, dur, insertion);
        if tb > ta + EPS {
            t = tb;
            continue;
        }
        if dur > EPS {
            if let Some(&(_, e)) = pending
                .iter()
                .find(|&&(s, e)| ta < e - EPS && s < ta + dur - EPS)
            {
                t = e;
                continue;
            }
        }
        return ta;
    }
}

/// A transfer the engine has scheduled.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    pub edges: Vec<EdgeId>,
    pub from: DeviceId,
    pub to: DeviceId,
    pub start: f64,
    pub end: f64,
}

/// The answer to "when would `op` run on `device`?".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    pub start: f64,
    pub end: f64,
}

/// A transfer planned during a probe, before it is committed.
#[derive(Clone, Copy, Debug)]
struct Planned {
    edge: EdgeId,
    from: DeviceId,
    start: f64,
    end: f64,
    /// Index of an existing transfer this edge rides along with.
    shared: Option<usize>,
}

/// A partial schedule that grows one op at a time.
#[derive(Clone, Debug)]
pub struct Engine<'g> {
    g: &'g Graph,
    insertion: bool,
    device: Vec<Option<DeviceId>>,
    start: Vec<f64>,
    end: Vec<f64>,
    devices: Vec<Timeline>,
    egress: Vec<Timeline>,
    ingress: Vec<Timeline>,
    transfers: Vec<Transfer>,
    /// Per edge, the id of its shared-tensor group (edges with one producer and tensor).
    share_group: Vec<Option<u32>>,
    /// (share group, destination device) -> transfer index, for shared tensors.
    shared: HashMap<(u32, DeviceId), usize>,
    memory_used: Vec<u64>,
    /// Per edge, the transfer carrying it (when cut and placed).
    carrier: Vec<Option<u32>>,
    scratch: Vec<Planned>,
    /// Reused buffers of `plan` (it runs for every op of every simulation).
    buf_incoming: Vec<(f64, EdgeId, DeviceId)>,
    buf_pending: Vec<(DeviceId, f64, f64)>,
    buf_pend: Vec<(f64, f64)>,
}

impl<'g> Engine<'g> {
    pub fn new(g: &'g Graph, insertion: bool) -> Self {
        let k = g.num_devices();
        let mut groups: HashMap<(OpId, &str), u32> = HashMap::new();
        let share_group = (0..g.edges().len())
            .map(|e| {
                g.share_key(EdgeId::from(e)).map(|key| {
                    let next = groups.len() as u32;
                    *groups.entry(key).or_insert(next)
                })
            })
            .collect();
        Self {
            g,
            share_group,
            insertion,
            device: vec![None; g.num_ops()],
            start: vec![0.0; g.num_ops()],
            end: vec![0.0; g.num_ops()],
            devices: vec![Timeline::default(); k],
            egress: vec![Timeline::default(); k],
            ingress: vec![Timeline::default(); k],
            transfers: Vec::new(),
            shared: HashMap::new(),
            memory_used: vec![0; k],
            carrier: vec![None; g.edges().len()],
            scratch: Vec::new(),
            buf_incoming: Vec::new(),
            buf_pending: Vec::new(),
            buf_pend: Vec::new(),
        }
    }

    /// Forgets everything scheduled, keeping allocations.
    pub fn reset(&mut self) {
        self.device.iter_mut().for_each(|d| *d = None);
        for t in self
            .devices
            .iter_mut()
            .chain(&mut self.egress)
            .chain(&mut self.ingress)
        {
            t.clear();
        }
        self.transfers.clear();
        self.shared.clear();
        self.memory_used.iter_mut().for_each(|m| *m = 0);
        self.carrier.iter_mut().for_each(|c| *c = None);
    }

    pub fn graph(&self) -> &'g Graph {
        self.g
    }

    /// Whether `op` is scheduled already.
    pub fn is_placed(&self, op: OpId) -> bool {
        self.device[op.index()].is_some()
    }

    pub fn device_of(&self, op: OpId) -> Option<DeviceId> {
        self.device[op.index()]
    }

    pub fn end_of(&self, op: OpId) -> f64 {
        self.end[op.index()]
    }

    pub fn start_of(&self, op: OpId) -> f64 {
        self.start[op.index()]
    }

    /// Whether `op`'s memory still fits on `device`.
    pub fn fits(&self, op: OpId, device: DeviceId) -> bool {
        self.memory_used[device.index()] + self.g.op(op).memory_bytes
            <= self.g.devices()[device.index()].memory_bytes
    }

    pub fn memory_used(&self, device: DeviceId) -> u64 {
        self.memory_used[device.index()]
    }

    /// Plans the input transfers and the run of `op` on `device` into `self.scratch`.
    /// Every predecessor must be placed.
    fn plan(&mut self, op: OpId, device: DeviceId) -> Probe {
        let g = self.g;
        self.scratch.clear();
        let mut ready = 0.0f64;
        // Incoming cut edges, earliest producer first, so early data is not held up.
        let mut incoming = std::mem::take(&mut self.buf_incoming);
        let mut pending = std::mem::take(&mut self.buf_pending);
        let mut pend = std::mem::take(&mut self.buf_pend);
        incoming.clear();
        pending.clear();
        for &e in g.in_edges(op) {
            let src = g.edge(e).src;
            let from = self.device[src.index()].expect("predecessor placed before its consumer");
            let done = self.end[src.index()];
            if from == device {
                ready = ready.max(done);
                continue;
            }
            if let Some(grp) = self.share_group[e.index()] {
                if let Some(&ti) = self.shared.get(&(grp, device)) {
                    ready = ready.max(self.transfers[ti].end);
                    self.scratch.push(Planned {
                        edge: e,
                        from,
                        start: self.transfers[ti].start,
                        end: self.transfers[ti].end,
                        shared: Some(ti),
                    });
                    continue;
                }
            }
            incoming.push((done, e, from));
        }
        incoming.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(done, e, from) in &incoming {
            let dur = g.transfer(e, from, device);
            // Transfers planned for this op so far all use this device's ingress port, and
            // those from the same source its egress port too.
            pend.clear();
            pend.extend(pending.iter().map(|&(_, s, e)| (s, e)));
            let s = common_slot(
                &self.egress[from.index()],
                &self.ingress[device.index()],
                &pend,
                done,
                dur,
                self.insertion,
            );
            // Without insertion later transfers still must follow pending ones on the port.
            let s = if self.insertion {
                s
            } else {
                pend.iter().map(|p| p.1).fold(s, f64::max)
            };
            pending.push((from, s, s + dur));
            self.scratch.push(Planned {
                edge: e,
                from,
                start: s,
                end: s + dur,
                shared: None,
            });
            ready = ready.max(s + dur);
        }
        self.buf_incoming = incoming;
        self.buf_pending = pending;
        self.buf_pend = pend;
        let dur = g.time(op, device);
        let start = self.devices[device.index()].earliest(ready, dur, self.insertion);
        Probe {
            start,
            end: start + dur,
        }
    }

    /// When `op` would start and end on `device`, given everything placed so far.
    pub fn probe(&mut self, op: OpId, device: DeviceId) -> Probe {
        self.plan(op, device)
    }

    /// Schedules `op` on `device` at the earliest time the probe gives.
    pub fn commit(&mut self, op: OpId, device: DeviceId) -> Probe {
        let p = self.plan(op, device);
        let g = self.g;
        let planned = std::mem::take(&mut self.scratch);
        for pl in &planned {
            if let Some(ti) = pl.shared {
                self.transfers[ti].edges.push(pl.edge);
                self.carrier[pl.edge.index()] = Some(ti as u32);
                continue;
            }
            self.carrier[pl.edge.index()] = Some(self.transfers.len() as u32);
            self.egress[pl.from.index()].insert(pl.start, pl.end);
            self.ingress[device.index()].insert(pl.start, pl.end);
            let ti = self.transfers.len();
            self.transfers.push(Transfer {
                edges: vec![pl.edge],
                from: pl.from,
                to: device,
                start: pl.start,
                end: pl.end,
            });
            if let Some(grp) = self.share_group[pl.edge.index()] {
                self.shared.insert((grp, device), ti);
            }
        }
        self.scratch = planned;
        self.devices[device.index()].insert(p.start, p.end);
        self.device[op.index()] = Some(device);
        self.start[op.index()] = p.start;
        self.end[op.index()] = p.end;
        self.memory_used[device.index()] += g.op(op).memory_bytes;
        p
    }

    /// The latest end of any placed op.
    pub fn makespan(&self) -> f64 {
        self.device
            .iter()
            .zip(&self.end)
            .filter(|(d, _)| d.is_some())
            .map(|(_, &e)| e)
            .fold(0.0, f64::max)
    }

    /// The finished schedule in its JSON form. Every op must be placed.
    pub fn to_schedule(&self, method: &str, lower_bound_ms: f64, solve_seconds: f64) -> Schedule {
        let g = self.g;
        let ops = g
            .op_ids()
            .map(|o| OpSlot {
                id: g.op(o).name.clone(),
                device: self.device[o.index()].expect("every op placed").0,
                start_ms: self.start[o.index()],
                end_ms: self.end[o.index()],
            })
            .collect();
        let transfers = self
            .transfers
            .iter()
            .map(|t| TransferSlot {
                edges: t.edges.iter().map(|e| e.0).collect(),
                from: t.from.0,
                to: t.to.0,
                start_ms: t.start,
                end_ms: t.end,
            })
            .collect();
        Schedule {
            graph: g.name.clone(),
            method: method.to_string(),
            makespan_ms: self.makespan(),
            lower_bound_ms,
            solve_seconds,
            ops,
            transfers,
        }
    }

    pub fn transfers(&self) -> &[Transfer] {
        &self.transfers
    }

    /// When edge `e`'s data is available to its consumer: the producer's end, or the end of
    /// the transfer carrying it.
    pub fn arrival(&self, e: EdgeId) -> f64 {
        match self.carrier[e.index()] {
            Some(t) => self.transfers[t as usize].end,
            None => self.end[self.g.edge(e).src.index()],
        }
    }
}

/// A device that cannot hold the ops placed on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryShortfall {
    pub device: DeviceId,
    pub needed: u64,
    pub capacity: u64,
}

impl std::fmt::Display for MemoryShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {} needs {} bytes but has {} (lacks {})",
            self.device,
            self.needed,
            self.capacity,
            self.needed - self.capacity
        )
    }
}

/// The first device whose memory the placement overfills.
pub fn memory_shortfall(g: &Graph, placement: &[DeviceId]) -> Option<MemoryShortfall> {
    let mut used = vec![0u64; g.num_devices()];
    for (op, d) in placement.iter().enumerate() {
        used[d.index()] += g.ops()[op].memory_bytes;
    }
    g.device_ids().find_map(|d| {
        let capacity = g.devices()[d.index()].memory_bytes;
        (used[d.index()] > capacity).then_some(MemoryShortfall {
            device: d,
            needed: used[d.index()],
            capacity,
        })
    })
}

/// Upward rank (b-level) of every op under a placement: its run time on its device plus the
/// longest path to an exit, counting transfers only on cut edges. The classic list-scheduling
/// priority; ops on the critical path come first.
pub fn bottom_levels(g: &Graph, placement: &[DeviceId]) -> Vec<f64> {
    let mut rank = vec![0.0f64; g.num_ops()];
    for &op in g.topo_order().iter().rev() {
        let d = placement[op.index()];
        let tail = g
            .out_edges(op)
            .iter()
            .map(|&e| {
                let dst = g.edge(e).dst;
                g.transfer(e, d, placement[dst.index()]) + rank[dst.index()]
            })
            .fold(0.0, f64::max);
        rank[op.index()] = g.time(op, d) + tail;
    }
    rank
}

#[derive(PartialEq)]
struct Ready(f64, OpId);
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest priority first; ties by lower op index, for determinism.
        self.0
            .total_cmp(&other.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

/// Replays a placement: ops become ready when their predecessors are placed, and the ready op
/// with the highest `priority` is placed next, at its earliest time on its device.
pub fn simulate_into(engine: &mut Engine<'_>, placement: &[DeviceId], priority: &[f64]) -> f64 {
    let g = engine.graph();
    engine.reset();
    let mut waiting: Vec<u32> = g.op_ids().map(|o| g.in_edges(o).len() as u32).collect();
    let mut heap: BinaryHeap<Ready> = g
        .op_ids()
        .filter(|o| waiting[o.index()] == 0)
        .map(|o| Ready(priority[o.index()], o))
        .collect();
    while let Some(Ready(_, op)) = heap.pop() {
        engine.commit(op, placement[op.index()]);
        for &e in g.out_edges(op) {
            let dst = g.edge(e).dst;
            waiting[dst.index()] -= 1;
            if waiting[dst.index()] == 0 {
                heap.push(Ready(priority[dst.index()], dst));
            }
        }
    }
    engine.makespan()
}

/// [`simulate_into`] with the b-level priority of the placement itself.
pub fn simulate<'g>(g: &'g Graph, placement: &[DeviceId], insertion: bool) -> Engine<'g> {
    let mut engine = Engine::new(g, insertion);
    let priority = bottom_levels(g, placement);
    simulate_into(&mut engine, placement, &priority);
    engine
}

/// Everything on one device, for tests and the single-device baseline.
pub fn all_on(g: &Graph, d: DeviceId) -> Placement {
    vec![d; g.num_ops()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{diamond, example_1};
    use moirai_core::plan::check::validate;

    #[test]
    fn one_device_runs_ops_back_to_back() {
        let g = diamond();
        let e = simulate(&g, &all_on(&g, DeviceId(0)), true);
        assert_eq!(e.makespan(), 10.0);
        validate(&g, &e.to_schedule("t", 0.0, 0.0)).unwrap();
    }

    #[test]
    fn a_cut_edge_waits_for_its_transfer() {
        let g = diamond();
        // c on the slow device: a(0-1), transfer(1-2), c 8 ms (2-10), transfer back (10-11), d (11-12).
        let p = vec![DeviceId(0), DeviceId(0), DeviceId(1), DeviceId(0)];
        let e = simulate(&g, &p, true);
        assert_eq!(e.makespan(), 12.0);
        assert_eq!(e.transfers().len(), 2);
        validate(&g, &e.to_schedule("t", 0.0, 0.0)).unwrap();
    }

    #[test]
    fn two_transfers_into_one_device_take_turns_on_its_ingress_port() {
        let g = diamond();
        // b and c on device 1, a and d on 0: both a->b and a->c leave device 0 at t=1.
        let p = vec![DeviceId(0), DeviceId(1), DeviceId(1), DeviceId(0)];
        let e = simulate(&g, &p, true);
        let t = e.transfers();
        let first: Vec<_> = t.iter().filter(|t| t.from == DeviceId(0)).collect();
        assert_eq!(first.len(), 2);
        assert!(first[0].end <= first[1].start || first[1].end <= first[0].start);
        validate(&g, &e.to_schedule("t", 0.0, 0.0)).unwrap();
    }

    #[test]
    fn insertion_fills_an_idle_gap() {
        let mut t = Timeline::default();
        t.insert(0.0, 1.0);
        t.insert(5.0, 6.0);
        assert_eq!(t.earliest(0.5, 2.0, true), 1.0);
        assert_eq!(t.earliest(0.5, 2.0, false), 6.0);
        assert_eq!(t.earliest(0.5, 4.5, true), 6.0);
    }

    #[test]
    fn shared_tensors_travel_once_per_device() {
        use moirai_core::graph::{Device, Edge, Op};
        let dev = |n: &str| Device {
            name: n.into(),
            memory_bytes: 100,
        };
        let op = |n: &str| Op {
            name: n.into(),
            time_ms: vec![1.0, 1.0],
            memory_bytes: 1,
            kernel: None,
        };
        let edge = |s, d| Edge {
            src: OpId(s),
            dst: OpId(d),
            transfer_ms: vec![0.0, 2.0, 2.0, 0.0],
            tensor: Some("y".into()),
        };
        let g = Graph::new(
            "fanout",
            vec![dev("a"), dev("b")],
            vec![op("p"), op("c1"), op("c2")],
            vec![edge(0, 1), edge(0, 2)],
        )
        .unwrap();
        let e = simulate(&g, &[DeviceId(0), DeviceId(1), DeviceId(1)], true);
        assert_eq!(e.transfers().len(), 1);
        assert_eq!(e.transfers()[0].edges.len(), 2);
        assert_eq!(e.makespan(), 5.0);
        validate(&g, &e.to_schedule("t", 0.0, 0.0)).unwrap();
    }

    #[test]
    fn memory_shortfall_names_the_device() {
        let g = example_1();
        let s = memory_shortfall(&g, &all_on(&g, DeviceId(0))).unwrap();
        assert_eq!(s.device, DeviceId(0));
        assert_eq!((s.needed, s.capacity), (44, 14));
    }
}
