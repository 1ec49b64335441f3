//! The Moirai MILP (arXiv 2312.04025, written out in `../shared/benchmarks/milp.md`), solved
//! exactly with microlp.
//!
//! Faithful to the paper's model: assignment `x_ik`, cut indicator `z_q`, channel choice
//! `u_qk'k''` for every data edge q, pairwise order binaries for ops that may share a device
//! and for transfers that may share a port, big-M disjunctions, static memory. The released
//! code's mistakes are not copied:
//! - congestion pairs are chosen by comparing transfers with transfers (two transfers need an
//!   order binary only when neither is forced before the other by a path);
//! - run times stay real numbers (no integer truncation of the sink);
//! - ops are addressed by index, never by assuming dense user ids.
//!
//! What makes it solvable by plain branch and bound at small sizes:
//! - `z` and `u` are continuous: with integral `x` the constraints force them to 0/1;
//! - one order binary per pair of transfers covers both ports (two intervals that do not
//!   overlap are ordered the same way on every port they share);
//! - big-M is the incumbent's makespan (a horizon every better schedule respects), not 1e5;
//! - valid inequalities: each device's load, and each op's head and tail (longest path at the
//!   fastest devices before and after it), bound `C_max`.
//!
//! Edges sharing a tensor are modelled as separate transfers (as in the paper): the model can
//! only over-estimate their cost, and the schedule is re-timed by the simulator afterwards.

use std::time::{Duration, Instant};

use microlp::{
    ComparisonOp, LinearExpr, OptimizationDirection, Problem, SolveOptions, SolveOutcome, Variable,
};
use moirai_core::plan::Placement;
use moirai_core::{DeviceId, EdgeId, Graph, OpId};

use crate::simulate::{simulate_into, Engine};

/// What the exact solve found.
pub struct MilpResult {
    /// The best placement found (None when the solver found nothing in time).
    pub placement: Option<Placement>,
    /// Start times of the ops in that solution, usable as a scheduling priority.
    pub starts: Vec<f64>,
    /// The solver's objective for it.
    pub objective: Option<f64>,
    /// Proven optimal within the time limit.
    pub optimal: bool,
    /// The solver's best bound, when it reports one.
    pub bound: Option<f64>,
}

/// `reach[i][j]`: a path leads from op i to op j (i != j).
#[allow(clippy::needless_range_loop)]
fn reachability(g: &Graph) -> Vec<Vec<bool>> {
    let n = g.num_ops();
    let mut reach = vec![vec![false; n]; n];
    for &op in g.topo_order().iter().rev() {
        let i = op.index();
        for &e in g.out_edges(op) {
            let j = g.edge(e).dst.index();
            reach[i][j] = true;
            for (k, &r) in reach[j].clone().iter().enumerate() {
                if r {
                    reach[i][k] = true;
                }
            }
        }
    }
    reach
}

/// Longest path at the fastest devices ending just before each op (head) and starting just
/// after it (tail).
fn heads_and_tails(g: &Graph) -> (Vec<f64>, Vec<f64>) {
    let fastest = |o: OpId| {
        g.op(o)
            .time_ms
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    };
    let n = g.num_ops();
    let (mut head, mut tail) = (vec![0.0f64; n], vec![0.0f64; n]);
    for &op in g.topo_order() {
        for &e in g.in_edges(op) {
            let s = g.edge(e).src;
            head[op.index()] = head[op.index()].max(head[s.index()] + fastest(s));
        }
    }
    for &op in g.topo_order().iter().rev() {
        for &e in g.out_edges(op) {
            let d = g.edge(e).dst;
            tail[op.index()] = tail[op.index()].max(tail[d.index()] + fastest(d));
        }
    }
    (head, tail)
}

fn expr(terms: &[(Variable, f64)]) -> LinearExpr {
    terms.iter().copied().collect()
}

// Index loops mirror the model's subscripts (x_ik, u_qk'k''); iterators would hide them.
#[allow(clippy::needless_range_loop)]
/// Solves the exact model within `limit`, warm-started from `incumbent` (placement and its
/// makespan) when given.
pub fn solve(g: &Graph, limit: Duration, incumbent: Option<(&[DeviceId], f64)>) -> MilpResult {
    let started = Instant::now();
    let n = g.num_ops();
    let k = g.num_devices();
    let reach = reachability(g);
    let (head, tail) = heads_and_tails(g);
    // Horizon: any schedule at least as good as the incumbent fits in it; without one, the
    // serial sum of worst run and transfer times.
    let serial: f64 = g
        .ops()
        .iter()
        .map(|o| o.time_ms.iter().copied().fold(0.0, f64::max))
        .sum::<f64>()
        + g.edges()
            .iter()
            .map(|e| e.transfer_ms.iter().copied().fold(0.0, f64::max))
            .sum::<f64>();
    let horizon = incumbent.map_or(serial, |(_, m)| m.min(serial)) * (1.0 + 1e-6) + 1e-6;
    let big_m = horizon;

    let mut p = Problem::new(OptimizationDirection::Minimize);
    let cmax = p.add_var(1.0, (0.0, horizon));
    let x: Vec<Vec<Variable>> = (0..n)
        .map(|_| (0..k).map(|_| p.add_binary_var(0.0)).collect())
        .collect();
    let s: Vec<Variable> = (0..n).map(|i| p.add_var(0.0, (head[i], horizon))).collect();
    let c: Vec<Variable> = (0..n).map(|_| p.add_var(0.0, (0.0, horizon))).collect();
    let m = g.edges().len();
    let sq: Vec<Variable> = (0..m).map(|_| p.add_var(0.0, (0.0, horizon))).collect();
    let cq: Vec<Variable> = (0..m).map(|_| p.add_var(0.0, (0.0, horizon))).collect();
    let z: Vec<Variable> = (0..m).map(|_| p.add_var(0.0, (0.0, 1.0))).collect();
    // u[q][a*k+b] for a != b.
    let u: Vec<Vec<Option<Variable>>> = (0..m)
        .map(|_| {
            (0..k * k)
                .map(|ab| (ab / k != ab % k).then(|| p.add_var(0.0, (0.0, 1.0))))
                .collect()
        })
        .collect();

    for i in 0..n {
        let op = OpId::from(i);
        // (3) one device each.
        p.add_constraint(
            expr(&x[i].iter().map(|&v| (v, 1.0)).collect::<Vec<_>>()),
            ComparisonOp::Eq,
            1.0,
        );
        // (2) C_i = S_i + sum_k p_ik x_ik.
        let mut t = vec![(c[i], 1.0), (s[i], -1.0)];
        t.extend((0..k).map(|d| (x[i][d], -g.time(op, DeviceId::from(d)))));
        p.add_constraint(expr(&t), ComparisonOp::Eq, 0.0);
        // (8) and the tail inequality: C_max >= C_i + tail_i.
        p.add_constraint(
            expr(&[(cmax, 1.0), (c[i], -1.0)]),
            ComparisonOp::Ge,
            tail[i],
        );
    }
    for d in 0..k {
        // (4) memory.
        let cap = g.devices()[d].memory_bytes;
        if cap < u64::MAX / 2 {
            let t: Vec<_> = (0..n)
                .filter(|&i| g.ops()[i].memory_bytes > 0)
                .map(|i| (x[i][d], g.ops()[i].memory_bytes as f64))
                .collect();
            if !t.is_empty() {
                p.add_constraint(expr(&t), ComparisonOp::Le, cap as f64);
            }
        }
        // Valid inequality: a device's load bounds the makespan.
        let mut t = vec![(cmax, 1.0)];
        t.extend((0..n).map(|i| (x[i][d], -g.time(OpId::from(i), DeviceId::from(d)))));
        p.add_constraint(expr(&t), ComparisonOp::Ge, 0.0);
    }
    for q in 0..m {
        let edge = g.edge(EdgeId::from(q));
        let (a, b) = (edge.src.index(), edge.dst.index());
        // (1) precedence through the communication node.
        p.add_constraint(expr(&[(sq[q], 1.0), (c[a], -1.0)]), ComparisonOp::Ge, 0.0);
        p.add_constraint(expr(&[(s[b], 1.0), (cq[q], -1.0)]), ComparisonOp::Ge, 0.0);
        // (6) z_q = [x_a != x_b], u picks the channel.
        for d in 0..k {
            p.add_constraint(
                expr(&[(z[q], 1.0), (x[a][d], 1.0), (x[b][d], 1.0)]),
                ComparisonOp::Le,
                2.0,
            );
            p.add_constraint(
                expr(&[(z[q], 1.0), (x[a][d], -1.0), (x[b][d], 1.0)]),
                ComparisonOp::Ge,
                0.0,
            );
            p.add_constraint(
                expr(&[(z[q], 1.0), (x[b][d], -1.0), (x[a][d], 1.0)]),
                ComparisonOp::Ge,
                0.0,
            );
        }
        let mut sum_u = vec![(z[q], -1.0)];
        let mut dur = vec![(cq[q], 1.0), (sq[q], -1.0)];
        for from in 0..k {
            for to in 0..k {
                if let Some(v) = u[q][from * k + to] {
                    sum_u.push((v, 1.0));
                    p.add_constraint(
                        expr(&[(v, 1.0), (x[a][from], -1.0), (x[b][to], -1.0)]),
                        ComparisonOp::Ge,
                        -1.0,
                    );
                    dur.push((v, -edge.transfer_ms[from * k + to]));
                }
            }
        }
        p.add_constraint(expr(&sum_u), ComparisonOp::Eq, 0.0);
        p.add_constraint(expr(&dur), ComparisonOp::Eq, 0.0);
    }
    // (5) ops without a path between them do not overlap on a shared device.
    let mut op_pairs = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            if reach[i][j] || reach[j][i] {
                continue;
            }
            let delta = p.add_binary_var(0.0);
            op_pairs.push((i, j, delta));
            for d in 0..k {
                // S_i >= C_j - M delta - M (2 - x_id - x_jd)
                p.add_constraint(
                    expr(&[
                        (s[i], 1.0),
                        (c[j], -1.0),
                        (delta, big_m),
                        (x[i][d], -big_m),
                        (x[j][d], -big_m),
                    ]),
                    ComparisonOp::Ge,
                    -2.0 * big_m,
                );
                // S_j >= C_i - M (1 - delta) - M (2 - x_id - x_jd)
                p.add_constraint(
                    expr(&[
                        (s[j], 1.0),
                        (c[i], -1.0),
                        (delta, -big_m),
                        (x[i][d], -big_m),
                        (x[j][d], -big_m),
                    ]),
                    ComparisonOp::Ge,
                    -3.0 * big_m,
                );
            }
        }
    }
    // (7) transfers that may share a port and are not ordered by a path.
    let mut tr_pairs = Vec::new();
    for q in 0..m {
        for r in q + 1..m {
            let (eq, er) = (g.edge(EdgeId::from(q)), g.edge(EdgeId::from(r)));
            let (a, b, cc, dd) = (
                eq.src.index(),
                eq.dst.index(),
                er.src.index(),
                er.dst.index(),
            );
            // q ends before its consumer b starts; if b reaches r's producer c, q precedes r.
            let ordered = (b == cc || reach[b][cc]) || (dd == a || reach[dd][a]);
            if ordered {
                continue;
            }
            let delta = p.add_binary_var(0.0);
            tr_pairs.push((q, r, delta));
            // Same egress (a, c on device d) or same ingress (b, d on device d).
            for d in 0..k {
                for (e1, e2) in [(x[a][d], x[cc][d]), (x[b][d], x[dd][d])] {
                    // -M(2 - e1 - e2), or -M(1 - e1) when both ends are the same op.
                    let (port, slack) = if e1 == e2 {
                        (vec![(e1, -big_m)], big_m)
                    } else {
                        (vec![(e1, -big_m), (e2, -big_m)], 2.0 * big_m)
                    };
                    // S_q >= C_r - M delta - M(2 - z_q - z_r) - port slack
                    let mut t = vec![
                        (sq[q], 1.0),
                        (cq[r], -1.0),
                        (delta, big_m),
                        (z[q], -big_m),
                        (z[r], -big_m),
                    ];
                    t.extend(port.iter().copied());
                    p.add_constraint(expr(&t), ComparisonOp::Ge, -2.0 * big_m - slack);
                    // S_r >= C_q - M (1 - delta) - M(2 - z_q - z_r) - port slack
                    let mut t = vec![
                        (sq[r], 1.0),
                        (cq[q], -1.0),
                        (delta, -big_m),
                        (z[q], -big_m),
                        (z[r], -big_m),
                    ];
                    t.extend(port.iter().copied());
                    p.add_constraint(expr(&t), ComparisonOp::Ge, -3.0 * big_m - slack);
                }
            }
        }
    }

    // Warm start: the incumbent's assignment and the order of its schedule.
    let mut warm = None;
    if let Some((placement, _)) = incumbent {
        let mut engine = Engine::new(g, true);
        let prio = crate::simulate::bottom_levels(g, placement);
        simulate_into(&mut engine, placement, &prio);
        let mut hint = Vec::new();
        for i in 0..n {
            for d in 0..k {
                hint.push((x[i][d], if placement[i].index() == d { 1.0 } else { 0.0 }));
            }
        }
        for &(i, j, delta) in &op_pairs {
            // delta = 1 means j before i.
            let j_first = engine.start_of(OpId::from(j)) < engine.start_of(OpId::from(i));
            hint.push((delta, if j_first { 1.0 } else { 0.0 }));
        }
        let mut tstart = vec![0.0; m];
        for t in engine.transfers() {
            for e in &t.edges {
                tstart[e.index()] = t.start;
            }
        }
        for &(q, r, delta) in &tr_pairs {
            hint.push((delta, if tstart[r] < tstart[q] { 1.0 } else { 0.0 }));
        }
        warm = Some(hint);
    }

    let remaining = limit.saturating_sub(started.elapsed());
    let mut opts = SolveOptions::default();
    opts.time_limit = Some(remaining);
    opts.warm_start = warm;
    let none = MilpResult {
        placement: None,
        starts: vec![],
        objective: None,
        optimal: false,
        bound: None,
    };
    let outcome = match p.solve_with(opts) {
        Ok(o) => o,
        Err(e) => {
            tracing::debug!("exact MILP: {e:?}");
            return none;
        }
    };
    let stats = outcome.stats();
    match outcome {
        SolveOutcome::Solution(sol) => {
            let placement: Placement = (0..n)
                .map(|i| {
                    let d = (0..k)
                        .max_by(|&a, &b| sol.var_value(x[i][a]).total_cmp(&sol.var_value(x[i][b])))
                        .unwrap_or(0);
                    DeviceId::from(d)
                })
                .collect();
            let optimal = outcome_is_optimal(&sol);
            MilpResult {
                starts: s.iter().map(|&v| sol.var_value(v)).collect(),
                placement: Some(placement),
                objective: Some(sol.objective()),
                optimal,
                bound: stats.best_bound,
            }
        }
        SolveOutcome::Interrupted(_) => MilpResult {
            bound: stats.best_bound,
            ..none
        },
    }
}

fn outcome_is_optimal(sol: &microlp::Solution) -> bool {
    matches!(sol.status(), microlp::SolutionStatus::Optimal)
}

/// Turns a MILP solution into a schedule through the simulator: the MILP's placement, its
/// start times as the priority.
pub fn schedule_of<'g>(g: &'g Graph, r: &MilpResult) -> Option<Engine<'g>> {
    let placement = r.placement.as_ref()?;
    let mut engine = Engine::new(g, true);
    let prio: Vec<f64> = r.starts.iter().map(|s| -s).collect();
    simulate_into(&mut engine, placement, &prio);
    Some(engine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{diamond, example_1};
    use moirai_core::plan::check::validate;

    #[test]
    fn diamond_optimum_is_proven() {
        let g = diamond();
        let r = solve(&g, Duration::from_secs(20), None);
        assert!(r.optimal);
        assert!((r.objective.unwrap() - 10.0).abs() < 1e-6);
        let e = schedule_of(&g, &r).unwrap();
        assert!((e.makespan() - 10.0).abs() < 1e-6);
        validate(&g, &e.to_schedule("milp", 0.0, 0.0)).unwrap();
    }

    #[test]
    fn example_1_optimum_is_30_and_proven() {
        let g = example_1();
        let r = solve(&g, Duration::from_secs(60), None);
        assert!(r.optimal, "not proven optimal");
        assert!(
            (r.objective.unwrap() - 30.0).abs() < 1e-6,
            "objective {:?}",
            r.objective
        );
        let e = schedule_of(&g, &r).unwrap();
        validate(&g, &e.to_schedule("milp", 0.0, 0.0)).unwrap();
        assert!(
            (e.makespan() - 30.0).abs() < 1e-6,
            "simulated {}",
            e.makespan()
        );
    }
}
