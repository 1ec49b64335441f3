//! The Moirai placer: anytime, with a proven bound.
//!
//! 1. **Incumbent**: every baseline runs (each takes well under a second) and the best valid
//!    plan, or a warm-start placement handed in (the plan in force before a fleet change),
//!    becomes the incumbent. When memory is so tight that every greedy fails, a first-fit
//!    decreasing packing of op memory into devices gives a feasible start.
//! 2. **Exact model on small graphs**: up to [`EXACT_MAX_OPS`] ops the paper's MILP
//!    ([`super::milp`]) is solved with microlp, warm-started from the incumbent; a proof of
//!    optimality ends the search (`example_1` is proven optimal this way).
//! 3. **Search**: simulated annealing over assignments with structured moves ([`super::search`]),
//!    on every thread allowed, until the time limit.
//!
//! The result is re-timed by the simulator and checked by the validator like every method.
//! The reported bound is the best of the critical-path, total-work and LP-relaxation bounds,
//! or the makespan itself when the MILP proved it optimal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moirai_core::plan::Placement;
use moirai_core::{DeviceId, Graph};

use super::search::{parallel_anneal, Budget};
use super::{milp, Method, PlaceError, PlaceOptions, Placed};
use crate::simulate::{memory_shortfall, simulate, Engine};

/// Graphs up to this size go to the exact MILP first.
pub const EXACT_MAX_OPS: usize = 24;
/// Largest exact model tried, in (roughly) rows: ordering pairs per device plus transfer
/// routes per edge. Building a larger one alone would eat the budget (16 ops on 200
/// devices is about 800 000 rows).
pub const EXACT_MAX_ROWS: usize = 100_000;

/// Whether the exact MILP is worth building for `g`.
fn exact_fits(g: &Graph) -> bool {
    let (n, k, e) = (g.num_ops(), g.num_devices(), g.edges().len());
    n <= EXACT_MAX_OPS && n * n * k + e * k * k <= EXACT_MAX_ROWS
}

/// What the placer reports while it runs.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A phase started ("baselines", "exact MILP", "search").
    Phase(&'static str),
    /// A better plan was found.
    Incumbent { makespan_ms: f64, elapsed: Duration },
}

/// First-fit decreasing packing of op memory: a memory-feasible placement when greedy
/// schedulers cannot find one.
pub fn pack_memory(g: &Graph) -> Option<Placement> {
    let mut order: Vec<usize> = (0..g.num_ops()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(g.ops()[i].memory_bytes));
    let mut by_capacity: Vec<DeviceId> = g.device_ids().collect();
    by_capacity.sort_by_key(|d| std::cmp::Reverse(g.devices()[d.index()].memory_bytes));
    // First fit (largest device first), then best fit (tightest room): bin-packing classics.
    for best_fit in [false, true] {
        let mut free: Vec<u64> = g.devices().iter().map(|d| d.memory_bytes).collect();
        let mut p = vec![DeviceId(0); g.num_ops()];
        let mut ok = true;
        for &i in &order {
            let need = g.ops()[i].memory_bytes;
            let room = by_capacity
                .iter()
                .copied()
                .filter(|d| free[d.index()] >= need);
            let d = if best_fit {
                room.min_by_key(|d| free[d.index()])
            } else {
                room.into_iter().next()
            };
            let Some(d) = d else {
                ok = false;
                break;
            };
            free[d.index()] -= need;
            p[i] = d;
        }
        if ok {
            return Some(p);
        }
    }
    None
}

/// Runs the Moirai placer.
pub fn place(
    g: &Graph,
    opts: &PlaceOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Placed, PlaceError> {
    let started = Instant::now();
    let deadline = started + opts.time_limit;
    progress(Progress::Phase("baselines"));
    let mut best: Option<(Placement, f64)> = None;
    let consider = |p: Placement, best: &mut Option<(Placement, f64)>| {
        if memory_shortfall(g, &p).is_some() {
            return;
        }
        let m = simulate(g, &p, true).makespan();
        if best.as_ref().is_none_or(|(_, b)| m < *b - 1e-12) {
            progress(Progress::Incumbent {
                makespan_ms: m,
                elapsed: started.elapsed(),
            });
            *best = Some((p, m));
        }
    };
    if let Some(w) = &opts.warm_start {
        if w.len() == g.num_ops() && w.iter().all(|d| d.index() < g.num_devices()) {
            consider(w.clone(), &mut best);
        }
    }
    let mut baseline_errors = Vec::new();
    for m in Method::ALL {
        let placed = match m {
            Method::Single => super::single::place(g),
            Method::Heft => super::heft::place(g),
            Method::MTopo => super::mtopo::place(g),
            Method::MEtf => super::metf::place(g),
            Method::MSct => super::msct::place(g),
            Method::Getf => super::getf::place(g),
            Method::Moirai => continue,
        };
        match placed {
            Ok(p) => {
                if let Some(pl) = p.schedule.placement(g) {
                    consider(pl, &mut best);
                }
            }
            Err(e) => baseline_errors.push(e.to_string()),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    if best.is_none() {
        if let Some(p) = pack_memory(g) {
            consider(p, &mut best);
        }
    }

    let mut optimal = false;
    let mut priority: Option<Vec<f64>> = None;
    if exact_fits(g) && Instant::now() < deadline {
        progress(Progress::Phase("exact MILP"));
        let left = deadline.saturating_duration_since(Instant::now());
        let r = milp::solve(g, left, best.as_ref().map(|(p, m)| (p.as_slice(), *m)));
        if let Some(engine) = milp::schedule_of(g, &r) {
            let m = engine.makespan();
            if memory_shortfall(g, r.placement.as_ref().expect("schedule implies placement"))
                .is_none()
                && best.as_ref().is_none_or(|(_, b)| m <= *b + 1e-9)
            {
                progress(Progress::Incumbent {
                    makespan_ms: m,
                    elapsed: started.elapsed(),
                });
                best = Some((r.placement.clone().expect("checked"), m));
                priority = Some(r.starts.iter().map(|s| -s).collect());
                optimal = r.optimal
                    && r.objective
                        .is_some_and(|o| (o - m).abs() <= 1e-6 * (1.0 + m));
            }
        }
    }

    let Some((mut placement, mut makespan)) = best else {
        return Err(PlaceError::Infeasible {
            method: "moirai".into(),
            reason: format!(
                "no memory-feasible placement found: {}",
                if baseline_errors.is_empty() {
                    "the exact model found none in time".to_string()
                } else {
                    baseline_errors.join("; ")
                }
            ),
        });
    };

    if !optimal && g.num_devices() > 1 && Instant::now() < deadline {
        progress(Progress::Phase("search"));
        let best_bits = AtomicU64::new(makespan.to_bits());
        let budget = Budget {
            deadline,
            max_evals: opts.max_evals,
        };
        // Report improvements as they land (polled; the search threads stay lock-free).
        let done = std::sync::atomic::AtomicBool::new(false);
        let found = std::thread::scope(|s| {
            let reporter = s.spawn(|| {
                let mut last = makespan;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let now = f64::from_bits(best_bits.load(Ordering::Relaxed));
                    if now < last {
                        last = now;
                        progress(Progress::Incumbent {
                            makespan_ms: now,
                            elapsed: started.elapsed(),
                        });
                    }
                }
            });
            let f = parallel_anneal(g, &placement, opts.seed, opts.threads, &budget, &best_bits);
            done.store(true, Ordering::Relaxed);
            let _ = reporter.join();
            f
        });
        tracing::info!(
            evals = found.evals,
            makespan = found.makespan,
            "search finished"
        );
        if found.makespan < makespan - 1e-12 {
            let mut prio = crate::simulate::bottom_levels(g, &found.placement);
            prio.iter_mut().zip(&found.bias).for_each(|(a, b)| *a += b);
            placement = found.placement;
            makespan = found.makespan;
            priority = Some(prio);
        }
    }

    let mut engine = Engine::new(g, true);
    let prio = priority.unwrap_or_else(|| crate::simulate::bottom_levels(g, &placement));
    // Replans: the same plan on interchangeable boards, with fewer ops moved, if that costs
    // nothing in makespan.
    if let Some(w) = opts.warm_start.as_ref().filter(|w| w.len() == g.num_ops()) {
        let kept = super::relabel::toward(g, &placement, w);
        if kept != placement {
            let m = crate::simulate::simulate_into(&mut engine, &kept, &prio);
            if m <= makespan + 1e-9 && memory_shortfall(g, &kept).is_none() {
                tracing::debug!(
                    moved_before = super::relabel::moved(&placement, w),
                    moved_after = super::relabel::moved(&kept, w),
                    "relabelled interchangeable devices toward the plan in force"
                );
                placement = kept;
                makespan = m;
            }
        }
    }
    crate::simulate::simulate_into(&mut engine, &placement, &prio);
    debug_assert!((engine.makespan() - makespan).abs() < 1e-6 || optimal);
    Ok(Placed {
        schedule: engine.to_schedule("moirai", 0.0, 0.0),
        optimal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::example_1;

    #[test]
    fn packing_finds_room_when_memory_is_exactly_full() {
        let g = example_1();
        let p = pack_memory(&g).unwrap();
        assert!(memory_shortfall(&g, &p).is_none());
    }
}
