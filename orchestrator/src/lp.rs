//! A thin layer over microlp for the LP relaxations the baselines and bounds solve: build a
//! problem, solve it within a time limit, read values back, with errors as strings a
//! [`crate::place::PlaceError`] can carry.

use std::time::Duration;

use microlp::{
    ComparisonOp, LinearExpr, OptimizationDirection, Problem, SolveOptions, SolveOutcome, Variable,
};

/// A linear program under construction (minimisation).
pub struct Lp {
    pub problem: Problem,
}

impl Default for Lp {
    fn default() -> Self {
        Self::new()
    }
}

impl Lp {
    pub fn new() -> Self {
        Self {
            problem: Problem::new(OptimizationDirection::Minimize),
        }
    }

    /// A continuous variable in `[lo, hi]` with objective coefficient `obj`.
    pub fn var(&mut self, obj: f64, lo: f64, hi: f64) -> Variable {
        self.problem.add_var(obj, (lo, hi))
    }

    /// `sum(terms) >= rhs`.
    pub fn ge(&mut self, terms: &[(Variable, f64)], rhs: f64) {
        self.problem.add_constraint(
            terms.iter().copied().collect::<LinearExpr>(),
            ComparisonOp::Ge,
            rhs,
        );
    }

    /// `sum(terms) <= rhs`.
    pub fn le(&mut self, terms: &[(Variable, f64)], rhs: f64) {
        self.problem.add_constraint(
            terms.iter().copied().collect::<LinearExpr>(),
            ComparisonOp::Le,
            rhs,
        );
    }

    /// `sum(terms) == rhs`.
    pub fn eq(&mut self, terms: &[(Variable, f64)], rhs: f64) {
        self.problem.add_constraint(
            terms.iter().copied().collect::<LinearExpr>(),
            ComparisonOp::Eq,
            rhs,
        );
    }

    /// Solves to optimality within `limit`; the values of `vars` and the objective.
    pub fn solve(&self, limit: Duration) -> Result<LpSolution, String> {
        let mut opts = SolveOptions::default();
        opts.time_limit = Some(limit);
        match self
            .problem
            .solve_with(opts)
            .map_err(|e| format!("{e:?}"))?
        {
            SolveOutcome::Solution(s) => Ok(LpSolution { s }),
            SolveOutcome::Interrupted(_) => Err(format!("LP not solved within {limit:?}")),
        }
    }
}

/// An LP's solution.
pub struct LpSolution {
    s: microlp::Solution,
}

impl LpSolution {
    pub fn value(&self, v: Variable) -> f64 {
        self.s.var_value(v)
    }
    pub fn objective(&self) -> f64 {
        self.s.objective()
    }
}

/// The fractional-assignment relaxation the LP bound and GETF share: `x[i][j]` is the share
/// of op `i` on column `j` (a device, or a group of devices), `c[i]` its completion time and
/// `t` the makespan, the objective. Built here: one assignment row per op, precedence
/// (`c_i >= c_pred + own time`, and `c_i >= own time`) and `t >= c_sink`; the caller adds its
/// capacity rows (load, memory) and solves.
pub struct AssignmentLp {
    pub lp: Lp,
    pub t: Variable,
    pub x: Vec<Vec<Variable>>,
}

impl AssignmentLp {
    /// `time(op, j)`: the run time of `op` on column `j`.
    pub fn new(
        g: &moirai_core::Graph,
        columns: usize,
        time: impl Fn(moirai_core::OpId, usize) -> f64,
    ) -> Self {
        let mut lp = Lp::new();
        let t = lp.var(1.0, 0.0, f64::INFINITY);
        let x: Vec<Vec<_>> = g
            .op_ids()
            .map(|_| (0..columns).map(|_| lp.var(0.0, 0.0, 1.0)).collect())
            .collect();
        let c: Vec<_> = g
            .op_ids()
            .map(|_| lp.var(0.0, 0.0, f64::INFINITY))
            .collect();
        for op in g.op_ids() {
            let i = op.index();
            let ones: Vec<_> = x[i].iter().map(|&v| (v, 1.0)).collect();
            lp.eq(&ones, 1.0);
            let own: Vec<_> = (0..columns).map(|j| (x[i][j], -time(op, j))).collect();
            let mut terms = vec![(c[i], 1.0)];
            terms.extend(own.iter().copied());
            lp.ge(&terms, 0.0);
            for &e in g.in_edges(op) {
                let mut terms = vec![(c[i], 1.0), (c[g.edge(e).src.index()], -1.0)];
                terms.extend(own.iter().copied());
                lp.ge(&terms, 0.0);
            }
            if g.out_edges(op).is_empty() {
                lp.ge(&[(t, 1.0), (c[i], -1.0)], 0.0);
            }
        }
        Self { lp, t, x }
    }
}
