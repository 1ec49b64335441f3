//! A thin layer over microlp for the LP relaxations the baselines and bounds solve: build a
//! problem, solve it within a time limit, read values back, with errors as strings a
//! [`super::PlaceError`] can carry.

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
