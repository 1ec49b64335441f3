//! Lower bounds on the makespan that need no solver.
//!
//! - The critical path with every op on its fastest device and every transfer free.
//! - The total-work bound: even spread perfectly, the devices together must do every op's
//!   work at its fastest, so `sum_i min_k p_ik / |K|`; and no op finishes before its own
//!   fastest run time.
//!
//! The orchestrator adds LP-based bounds on top (they need microlp); [`LowerBound`] carries
//! the best and where it came from.

use serde::{Deserialize, Serialize};

use crate::Graph;

/// A proven lower bound on the makespan and the argument that gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LowerBound {
    pub value_ms: f64,
    pub source: String,
}

impl LowerBound {
    /// The larger of two bounds.
    pub fn max(self, other: LowerBound) -> LowerBound {
        if other.value_ms > self.value_ms {
            other
        } else {
            self
        }
    }

    /// Relative gap of a makespan to this bound: `(makespan - bound) / makespan`.
    pub fn gap(&self, makespan_ms: f64) -> f64 {
        if makespan_ms <= 0.0 {
            0.0
        } else {
            ((makespan_ms - self.value_ms) / makespan_ms).max(0.0)
        }
    }
}

fn fastest(g: &Graph, op: crate::OpId) -> f64 {
    g.op(op)
        .time_ms
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
}

/// Longest path through the DAG with every op at its fastest device and transfers free.
pub fn critical_path(g: &Graph) -> LowerBound {
    let mut finish = vec![0.0f64; g.num_ops()];
    let mut best = 0.0f64;
    for &op in g.topo_order() {
        let ready = g
            .in_edges(op)
            .iter()
            .map(|&e| finish[g.edge(e).src.index()])
            .fold(0.0, f64::max);
        finish[op.index()] = ready + fastest(g, op);
        best = best.max(finish[op.index()]);
    }
    LowerBound {
        value_ms: best,
        source: "critical path (fastest device per op)".into(),
    }
}

/// Every op's fastest time summed and spread over all devices.
pub fn total_work(g: &Graph) -> LowerBound {
    let sum: f64 = g.op_ids().map(|o| fastest(g, o)).sum();
    let longest = g.op_ids().map(|o| fastest(g, o)).fold(0.0, f64::max);
    LowerBound {
        value_ms: (sum / g.num_devices() as f64).max(longest),
        source: "total work over all devices".into(),
    }
}

/// The best of the solver-free bounds.
pub fn basic(g: &Graph) -> LowerBound {
    critical_path(g).max(total_work(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::diamond;

    #[test]
    fn diamond_bounds_are_as_computed_by_hand() {
        let g = diamond();
        // a(1) -> b(4) -> d(1) on the fast device: 6.
        assert_eq!(critical_path(&g).value_ms, 6.0);
        // Fastest work 10 over 2 devices = 5, longest op 4.
        assert_eq!(total_work(&g).value_ms, 5.0);
        assert_eq!(basic(&g).value_ms, 6.0);
    }

    #[test]
    fn gap_is_relative_to_the_makespan() {
        let b = LowerBound {
            value_ms: 8.0,
            source: "x".into(),
        };
        assert!((b.gap(10.0) - 0.2).abs() < 1e-12);
        assert_eq!(b.gap(7.0), 0.0);
    }
}
