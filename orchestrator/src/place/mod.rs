//! Placers: every method that turns a [`Graph`] into a [`Schedule`].
//!
//! Baselines, one file each with the paper it comes from: [`single`] (best single device),
//! [`heft`], [`mtopo`], [`metf`], [`msct`] (the Baechi family) and [`getf`]. The Moirai placer
//! lives in [`moirai`] (anytime search with exact MILP windows, [`milp`]).
//!
//! Every method produces its schedule through the simulator ([`crate::simulate`]), and
//! [`place`] passes it through the validator before returning it, so a bug in a placer shows
//! up as an error, never as a wrong plan.

pub mod getf;
pub mod greedy;
pub mod heft;

pub mod metf;
pub mod milp;
pub mod moirai;
pub mod msct;
pub mod mtopo;
pub mod relabel;
pub mod search;
pub mod single;

use std::time::{Duration, Instant};

use moirai_core::plan::check::{validate, Violation};
use moirai_core::plan::Placement;
use moirai_core::{Graph, Schedule};
use thiserror::Error;

use crate::bound::{self, LowerBound};

/// The placement methods, by CLI name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Single,
    Heft,
    MTopo,
    MEtf,
    MSct,
    Getf,
    /// The Moirai placer (anytime search, exact MILP on small graphs).
    Moirai,
}

impl Method {
    /// The baselines (also the Moirai placer's warm starts).
    pub const ALL: [Method; 6] = [
        Method::Single,
        Method::Heft,
        Method::MTopo,
        Method::MEtf,
        Method::MSct,
        Method::Getf,
    ];

    /// Every method, baselines first.
    pub const EVERY: [Method; 7] = [
        Method::Single,
        Method::Heft,
        Method::MTopo,
        Method::MEtf,
        Method::MSct,
        Method::Getf,
        Method::Moirai,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Single => "single",
            Method::Heft => "heft",
            Method::MTopo => "mtopo",
            Method::MEtf => "metf",
            Method::MSct => "msct",
            Method::Getf => "getf",
            Method::Moirai => "moirai",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::EVERY.into_iter().find(|m| m.name() == s)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Knobs shared by all methods; baselines ignore what they do not use.
#[derive(Clone, Debug)]
pub struct PlaceOptions {
    /// Wall-clock budget of anytime methods.
    pub time_limit: Duration,
    /// Seed of every random choice (same seed, same plan).
    pub seed: u64,
    /// Worker threads of parallel methods.
    pub threads: usize,
    /// A placement to start from (e.g. the plan in force before a device joined).
    pub warm_start: Option<Placement>,
    /// Stop each search thread after this many simulations: with it the result no longer
    /// depends on the machine's speed (same seed, threads and limit, same plan), provided
    /// the time limit does not strike first.
    pub max_evals: Option<u64>,
}

impl Default for PlaceOptions {
    fn default() -> Self {
        Self {
            time_limit: Duration::from_secs(10),
            seed: 0,
            threads: 1,
            warm_start: None,
            max_evals: None,
        }
    }
}

/// Why a method produced no plan.
#[derive(Debug, Error)]
pub enum PlaceError {
    /// The method could not fit the graph in memory; the message says which device lacks how much.
    #[error("{method}: infeasible: {reason}")]
    Infeasible { method: String, reason: String },
    /// A solver failed in a way that is not the graph's fault.
    #[error("{method}: solver failed: {reason}")]
    Solver { method: String, reason: String },
    /// The method produced a schedule that breaks a rule: a bug, reported rather than hidden.
    #[error("{method}: produced an invalid schedule: {violation}")]
    Invalid {
        method: String,
        violation: Violation,
    },
}

/// A validated plan with its bound.
#[derive(Clone, Debug)]
pub struct Plan {
    pub schedule: Schedule,
    pub bound: LowerBound,
    /// True when the method proved the makespan optimal.
    pub optimal: bool,
    /// Seconds from the start until the final makespan was first found (to within the
    /// placer's 50 ms progress polling); the rest of `solve_seconds` went into trying to
    /// improve it or to prove it.
    pub reached_seconds: f64,
}

impl Plan {
    pub fn makespan(&self) -> f64 {
        self.schedule.makespan_ms
    }
    /// Relative gap to the lower bound.
    pub fn gap(&self) -> f64 {
        if self.optimal {
            0.0
        } else {
            self.bound.gap(self.makespan())
        }
    }
}

/// What a placer returns before validation: a schedule, and whether it is proven optimal.
#[derive(Debug)]
pub struct Placed {
    pub schedule: Schedule,
    pub optimal: bool,
}

/// Runs `method` on `g`, validates its schedule and attaches the lower bound.
pub fn place(
    g: &Graph,
    method: Method,
    opts: &PlaceOptions,
    bound: &LowerBound,
) -> Result<Plan, PlaceError> {
    place_with_progress(g, method, opts, bound, &|_| {})
}

/// [`place`], reporting the Moirai placer's progress to `progress`.
pub fn place_with_progress(
    g: &Graph,
    method: Method,
    opts: &PlaceOptions,
    bound: &LowerBound,
    progress: &(dyn Fn(moirai::Progress) + Sync),
) -> Result<Plan, PlaceError> {
    let started = Instant::now();
    let last_incumbent = std::sync::Mutex::new(None);
    let tracked = |p: moirai::Progress| {
        if let moirai::Progress::Incumbent {
            makespan_ms,
            elapsed,
        } = p
        {
            if let Ok(mut last) = last_incumbent.lock() {
                *last = Some((makespan_ms, elapsed));
            }
        }
        progress(p);
    };
    let placed = match method {
        Method::Single => single::place(g)?,
        Method::Heft => heft::place(g)?,
        Method::MTopo => mtopo::place(g)?,
        Method::MEtf => metf::place(g)?,
        Method::MSct => msct::place(g)?,
        Method::Getf => getf::place(g)?,
        Method::Moirai => moirai::place(g, opts, &tracked)?,
    };
    let mut plan = finish(g, method.name(), placed, started, bound)?;
    let last = last_incumbent.into_inner().ok().flatten();
    if let Some((_, at)) = last.filter(|(m, _)| (m - plan.makespan()).abs() <= 1e-9 * (1.0 + m)) {
        plan.reached_seconds = at.as_secs_f64();
    }
    Ok(plan)
}

/// Stamps name, bound and time on a schedule and validates it.
pub fn finish(
    g: &Graph,
    method: &str,
    placed: Placed,
    started: Instant,
    bound: &LowerBound,
) -> Result<Plan, PlaceError> {
    let mut schedule = placed.schedule;
    schedule.method = method.to_string();
    schedule.solve_seconds = started.elapsed().as_secs_f64();
    let bound = if placed.optimal {
        LowerBound {
            value_ms: schedule.makespan_ms,
            source: "optimal (exact MILP)".into(),
        }
        .max(bound.clone())
    } else {
        bound.clone()
    };
    schedule.lower_bound_ms = bound.value_ms;
    validate(g, &schedule).map_err(|violation| PlaceError::Invalid {
        method: method.to_string(),
        violation,
    })?;
    let reached_seconds = schedule.solve_seconds;
    Ok(Plan {
        schedule,
        bound,
        optimal: placed.optimal,
        reached_seconds,
    })
}

/// The bound every plan of `g` reports: the best of the critical path, total work and the LP.
pub fn lower_bound(g: &Graph) -> LowerBound {
    bound::best(g)
}

/// [`lower_bound`] within `limit`, for callers that count the bound in their time budget.
pub fn lower_bound_within(g: &Graph, limit: std::time::Duration) -> LowerBound {
    bound::best_within(g, limit)
}
