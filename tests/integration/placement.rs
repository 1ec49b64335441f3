//! Every placement method on the Moirai samples gives a schedule that validates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moirai_core::plan::check::validate;
use moirai_model::import::profiled;
use moirai_orchestrator::place::{self, Method, PlaceOptions};

fn samples() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/benchmarks/moirai-samples");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} is absent (reference material not beside the repo)",
            dir.display()
        );
        None
    }
}

fn quick() -> PlaceOptions {
    PlaceOptions {
        time_limit: Duration::from_millis(1500),
        threads: 2,
        ..PlaceOptions::default()
    }
}

#[test]
fn the_shipped_example_1_is_solved_to_its_proven_optimum() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/profiled/example_1.json");
    let g = profiled::load(&path).unwrap();
    let bound = place::lower_bound(&g);
    let opts = PlaceOptions {
        time_limit: Duration::from_secs(60),
        ..quick()
    };
    let plan = place::place(&g, Method::Moirai, &opts, &bound).unwrap();
    assert!(plan.optimal, "example_1 not proven optimal");
    assert!(
        (plan.makespan() - 30.0).abs() < 1e-6,
        "makespan {}",
        plan.makespan()
    );
    validate(&g, &plan.schedule).unwrap();
    // Memory binds: every greedy baseline either fails on memory or is valid.
    for m in Method::ALL {
        match place::place(&g, m, &opts, &bound) {
            Ok(p) => validate(&g, &p.schedule).unwrap(),
            Err(e) => assert!(
                e.to_string().contains("lacks") || e.to_string().contains("fits on no device"),
                "{e}"
            ),
        }
    }
}

#[test]
fn every_method_on_every_sample_validates() {
    let Some(dir) = samples() else { return };
    for name in ["googlenet", "inception_v4", "yolov5x", "transformer"] {
        let g = profiled::load(&dir.join(format!("{name}.json"))).unwrap();
        let bound = place::lower_bound(&g);
        let mut best_baseline = f64::INFINITY;
        for m in Method::EVERY {
            let plan =
                place::place(&g, m, &quick(), &bound).unwrap_or_else(|e| panic!("{name} {m}: {e}"));
            validate(&g, &plan.schedule).unwrap_or_else(|v| panic!("{name} {m}: {v}"));
            assert!(
                plan.makespan() >= bound.value_ms - 1e-9,
                "{name} {m} beats the lower bound"
            );
            if m == Method::Moirai {
                assert!(
                    plan.makespan() <= best_baseline + 1e-9,
                    "{name}: moirai {} worse than best baseline {best_baseline}",
                    plan.makespan()
                );
            } else {
                best_baseline = best_baseline.min(plan.makespan());
            }
        }
    }
}

#[test]
fn an_evaluation_budget_makes_the_moirai_placer_reproducible() {
    let Some(dir) = samples() else { return };
    let g = profiled::load(&dir.join("googlenet.json")).unwrap();
    let bound = place::lower_bound(&g);
    let opts = PlaceOptions {
        time_limit: Duration::from_secs(120),
        max_evals: Some(3000),
        seed: 11,
        ..quick()
    };
    let a = place::place(&g, Method::Moirai, &opts, &bound).unwrap();
    let b = place::place(&g, Method::Moirai, &opts, &bound).unwrap();
    assert_eq!(a.schedule.placement(&g), b.schedule.placement(&g));
    assert_eq!(a.makespan(), b.makespan());
}
