//! What the greedy list schedulers share: mean costs, upward ranks, memory-aware device
//! choice, and the ETF loop (m-ETF, m-SCT and GETF differ only in which devices an op may
//! take).

use moirai_core::{DeviceId, EdgeId, Graph, OpId};

use super::PlaceError;
use crate::simulate::{Engine, Probe};

/// An op's run time averaged over devices (HEFT's `w̄`).
pub fn mean_time(g: &Graph, op: OpId) -> f64 {
    let t = &g.op(op).time_ms;
    t.iter().sum::<f64>() / t.len() as f64
}

/// An edge's transfer time averaged over ordered pairs of distinct devices (HEFT's `c̄`).
pub fn mean_transfer(g: &Graph, e: EdgeId) -> f64 {
    let k = g.num_devices();
    if k < 2 {
        return 0.0;
    }
    let m = &g.edge(e).transfer_ms;
    let off: f64 = (0..k)
        .flat_map(|a| (0..k).map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .map(|(a, b)| m[a * k + b])
        .sum();
    off / (k * (k - 1)) as f64
}

/// HEFT's upward rank with mean costs: `rank(i) = w̄_i + max_j (c̄_ij + rank(j))`.
pub fn upward_rank(g: &Graph) -> Vec<f64> {
    let mut rank = vec![0.0f64; g.num_ops()];
    for &op in g.topo_order().iter().rev() {
        let tail = g
            .out_edges(op)
            .iter()
            .map(|&e| mean_transfer(g, e) + rank[g.edge(e).dst.index()])
            .fold(0.0, f64::max);
        rank[op.index()] = mean_time(g, op) + tail;
    }
    rank
}

/// Ops sorted by decreasing rank; ties keep topological order, so the result is a valid
/// scheduling order even with zero-cost ops.
pub fn by_decreasing_rank(g: &Graph, rank: &[f64]) -> Vec<OpId> {
    let mut pos = vec![0usize; g.num_ops()];
    for (i, &o) in g.topo_order().iter().enumerate() {
        pos[o.index()] = i;
    }
    let mut order: Vec<OpId> = g.op_ids().collect();
    order.sort_by(|a, b| {
        rank[b.index()]
            .total_cmp(&rank[a.index()])
            .then(pos[a.index()].cmp(&pos[b.index()]))
    });
    order
}

/// The device among `candidates` where `op` fits in memory and finishes first (ties: lower
/// start, then lower device index).
pub fn earliest_finish(
    engine: &mut Engine<'_>,
    op: OpId,
    candidates: impl IntoIterator<Item = DeviceId>,
) -> Option<(DeviceId, Probe)> {
    let mut best: Option<(DeviceId, Probe)> = None;
    for d in candidates {
        if !engine.fits(op, d) {
            continue;
        }
        let p = engine.probe(op, d);
        let better = match best {
            None => true,
            Some((_, b)) => {
                p.end < b.end - 1e-12 || (p.end <= b.end + 1e-12 && p.start < b.start - 1e-12)
            }
        };
        if better {
            best = Some((d, p));
        }
    }
    best
}

/// The error for an op that fits nowhere, naming every device's free memory.
pub fn no_room(engine: &Engine<'_>, op: OpId, method: &str) -> PlaceError {
    let g = engine.graph();
    let need = g.op(op).memory_bytes;
    let free: Vec<String> = g
        .device_ids()
        .map(|d| {
            let cap = g.devices()[d.index()].memory_bytes;
            let free = cap.saturating_sub(engine.memory_used(d));
            format!(
                "device {d} has {free} free (lacks {})",
                need.saturating_sub(free)
            )
        })
        .collect();
    PlaceError::Infeasible {
        method: method.into(),
        reason: format!(
            "op `{}` needs {need} bytes and fits on no device: {}",
            g.op(op).name,
            free.join(", ")
        ),
    }
}

/// Earliest-time-first list scheduling: while ops remain, for every ready op find its best
/// device among `allowed(op)` (earliest finish), then commit the ready op that can start
/// first (ties: higher `priority`, then lower id). Returns the filled engine.
pub fn etf<'g>(
    g: &'g Graph,
    method: &str,
    priority: &[f64],
    mut allowed: impl FnMut(&Engine<'g>, OpId) -> Vec<DeviceId>,
) -> Result<Engine<'g>, PlaceError> {
    let mut engine = Engine::new(g, true);
    let mut waiting: Vec<usize> = g.op_ids().map(|o| g.in_edges(o).len()).collect();
    let mut ready: Vec<OpId> = g.op_ids().filter(|o| waiting[o.index()] == 0).collect();
    while !ready.is_empty() {
        let mut pick: Option<(usize, DeviceId, Probe)> = None;
        for (i, &op) in ready.iter().enumerate() {
            let mut cands = allowed(&engine, op);
            if !cands.iter().any(|&d| engine.fits(op, d)) {
                // The preferred devices are full: any device with room.
                cands = g.device_ids().collect();
            }
            let Some((d, p)) = earliest_finish(&mut engine, op, cands) else {
                return Err(no_room(&engine, op, method));
            };
            let better = match pick {
                None => true,
                Some((j, _, b)) => {
                    let (pa, pb) = (priority[op.index()], priority[ready[j].index()]);
                    p.start < b.start - 1e-12
                        || (p.start <= b.start + 1e-12 && (pa > pb || (pa == pb && op < ready[j])))
                }
            };
            if better {
                pick = Some((i, d, p));
            }
        }
        let (i, d, _) = pick.expect("ready is not empty");
        let op = ready.swap_remove(i);
        engine.commit(op, d);
        for &e in g.out_edges(op) {
            let dst = g.edge(e).dst;
            waiting[dst.index()] -= 1;
            if waiting[dst.index()] == 0 {
                ready.push(dst);
            }
        }
    }
    Ok(engine)
}
