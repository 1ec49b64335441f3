//! Lower bounds on the makespan.
//!
//! Beyond the solver-free bounds of [`moirai_core::plan::bound`] (critical path at the
//! fastest devices, total work), an LP relaxation couples both: each op is split fractionally
//! over devices (`x_ik`), its completion `C_j >= C_i + sum_k p_jk x_jk` along every edge, and
//! every device's load `sum_i p_ik x_ik` as well as every completion stays below `T`; the
//! memory of each device caps its share. Any real schedule gives a feasible point (its own
//! 0/1 assignment with completion times), so the LP optimum is a valid bound, at least as
//! strong as both simple ones.

use std::time::Duration;

use moirai_core::plan::bound::basic;
pub use moirai_core::plan::bound::LowerBound;
use moirai_core::{DeviceId, Graph};

use crate::lp::AssignmentLp;

/// The LP relaxation bound, or `None` when the LP did not solve within `limit`.
pub fn lp_relaxation(g: &Graph, limit: Duration) -> Option<LowerBound> {
    let AssignmentLp { mut lp, t, x } =
        AssignmentLp::new(g, g.num_devices(), |op, d| g.time(op, DeviceId::from(d)));
    for d in g.device_ids() {
        let mut load = vec![(t, 1.0)];
        load.extend(
            g.op_ids()
                .map(|op| (x[op.index()][d.index()], -g.time(op, d))),
        );
        lp.ge(&load, 0.0);
        let cap = g.devices()[d.index()].memory_bytes;
        if cap < u64::MAX / 2 {
            let mem: Vec<_> = g
                .op_ids()
                .filter(|&op| g.op(op).memory_bytes > 0)
                .map(|op| (x[op.index()][d.index()], g.op(op).memory_bytes as f64))
                .collect();
            if !mem.is_empty() {
                lp.le(&mem, cap as f64);
            }
        }
    }
    let sol = lp.solve(limit).ok()?;
    Some(LowerBound {
        // Shave float noise so the bound stays valid.
        value_ms: sol.objective() * (1.0 - 1e-9),
        source: "LP relaxation (fractional assignment, precedence, load, memory)".into(),
    })
}

/// The best bound available within a few seconds.
pub fn best(g: &Graph) -> LowerBound {
    best_within(g, Duration::from_secs(5))
}

/// The best bound available within `limit` (the LP relaxation only if it solves in time).
pub fn best_within(g: &Graph, limit: Duration) -> LowerBound {
    let b = basic(g);
    match lp_relaxation(g, limit) {
        Some(lp) => b.max(lp),
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{diamond, independent};

    #[test]
    fn lp_bound_is_at_least_the_simple_ones_and_below_the_optimum() {
        let g = diamond();
        let lp = lp_relaxation(&g, Duration::from_secs(5)).unwrap();
        assert!(lp.value_ms >= basic(&g).value_ms - 1e-6);
        assert!(
            lp.value_ms <= 10.0 + 1e-6,
            "optimum is 10, bound {}",
            lp.value_ms
        );
    }

    #[test]
    fn independent_ops_bound_is_the_even_spread() {
        let lp = lp_relaxation(&independent(8, 4, 1.0), Duration::from_secs(5)).unwrap();
        assert!((lp.value_ms - 2.0).abs() < 1e-6);
    }
}
