//! The whole chain on the shared models: import, coarsen for both backends, cost on both
//! example clusters, export, read back and place.

use std::path::{Path, PathBuf};

use moirai_core::cost::ProfileTable;
use moirai_core::device::{Backend, Cluster};
use moirai_core::graph::format;
use moirai_model::coarsen::{coarsen, rules::RuleSet};
use moirai_model::import::onnx::{self, ImportOptions};
use moirai_orchestrator::cluster;
use moirai_orchestrator::costing::costed_graph;
use moirai_orchestrator::place::{self, Method, PlaceOptions};

use super::import::{shared_models, MODELS};

fn clusters() -> Vec<Cluster> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../firmware-configs/clusters"
    ));
    ["edge-4.toml", "mixed-gpu-cpu.toml"]
        .iter()
        .map(|f| cluster::load_cluster(&dir.join(f), None).unwrap())
        .collect()
}

fn model(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.onnx"))
}

#[test]
fn resnet50_and_bert_coarsen_below_the_required_ratios() {
    let Some(dir) = shared_models() else { return };
    for (name, limit) in [("resnet50", 0.6), ("bert_base", 0.5)] {
        let m = onnx::load(&model(&dir, name), &ImportOptions::default()).unwrap();
        for b in Backend::ALL {
            let c = coarsen(&m, &RuleSet::for_backend(b));
            assert!(
                c.ratio() <= limit,
                "{name} on {b}: {} -> {} ({:.1}%)",
                c.nodes_before,
                c.groups.len(),
                100.0 * c.ratio()
            );
        }
    }
}

#[test]
fn every_shared_model_coarsens_costs_exports_and_plans_on_both_clusters() {
    let Some(dir) = shared_models() else { return };
    let clusters = clusters();
    for (name, _, _) in MODELS {
        let m = onnx::load(&model(&dir, name), &ImportOptions::default()).unwrap();
        for b in Backend::ALL {
            let c = coarsen(&m, &RuleSet::for_backend(b));
            assert!(c.groups.len() < c.nodes_before, "{name}/{b}");
            // Every ONNX node is either in exactly one group or folded as shape-only work.
            let mut seen = vec![0; m.nodes.len()];
            for g in &c.groups {
                for &n in &g.nodes {
                    seen[n] += 1;
                }
            }
            assert_eq!(
                seen.iter().filter(|&&s| s == 1).count() + c.folded_nodes,
                m.nodes.len(),
                "{name}/{b}"
            );
            assert!(seen.iter().all(|&s| s <= 1));
            for cl in &clusters {
                let (g, sources) = costed_graph(&c, cl, None).unwrap();
                assert_eq!(sources.profiled, 0);
                assert_eq!(g.num_ops(), c.groups.len());
                assert!(g.edges().iter().all(|e| e.tensor.is_some()));
                assert!(g.ops().iter().all(|o| o.kernel.is_some()));
                let back = format::from_json(&format::to_json(&g))
                    .unwrap_or_else(|e| panic!("{name}/{b}/{}: {e}", cl.name));
                assert_eq!(back.num_ops(), g.num_ops());
                // Plan with the cheap baseline; the Moirai placer is exercised elsewhere.
                let bound = place::lower_bound(&back);
                let plan = place::place(&back, Method::Heft, &PlaceOptions::default(), &bound)
                    .unwrap_or_else(|e| panic!("{name}/{b}/{}: {e}", cl.name));
                assert!(plan.makespan() > 0.0);
            }
        }
    }
}

#[test]
fn one_tensor_read_by_several_groups_keeps_one_name_per_edge() {
    let Some(dir) = shared_models() else { return };
    let m = onnx::load(&model(&dir, "bert_base"), &ImportOptions::default()).unwrap();
    let c = coarsen(&m, &RuleSet::wgpu());
    // A LayerNorm output feeds the Q, K and V projections and the residual add.
    let mut by_tensor = std::collections::HashMap::<&str, Vec<usize>>::new();
    for e in &c.edges {
        by_tensor.entry(&e.tensor).or_default().push(e.src);
    }
    let fan_out = by_tensor.values().map(Vec::len).max().unwrap_or(0);
    assert!(fan_out >= 4, "largest fan-out {fan_out}");
    for srcs in by_tensor.values() {
        assert!(
            srcs.iter().all(|&s| s == srcs[0]),
            "a tensor has one producer"
        );
    }
}

#[test]
fn measured_profiles_replace_the_roofline() {
    let Some(dir) = shared_models() else { return };
    let m = onnx::load(&model(&dir, "resnet18"), &ImportOptions::default()).unwrap();
    let c = coarsen(&m, &RuleSet::wgpu());
    let cl = &clusters()[0];
    let board = &cl.devices()[0].board.name;
    let mut p = ProfileTable::new();
    for g in &c.groups {
        p.insert(board, &g.signature.key(), 0.125);
    }
    let (g, sources) = costed_graph(&c, cl, Some(&p)).unwrap();
    assert_eq!(sources.profiled, c.groups.len());
    assert_eq!(sources.roofline, c.groups.len() * (cl.len() - 1));
    assert!(g.ops().iter().all(|o| o.time_ms[0] == 0.125));
    assert!(g.ops().iter().any(|o| o.time_ms[1] != 0.125));
}

#[test]
fn a_measured_profile_table_changes_the_plan() {
    // The roofline takes the x86 host at its datasheet peak; the table measured on a real
    // (loaded, 2-core) x86 host with tract says it is far slower: the plan moves to the Pi.
    let Some(dir) = shared_models() else { return };
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let cl = cluster::load_cluster(
        &repo.join("firmware-configs/clusters/cpu-and-pi5.toml"),
        None,
    )
    .unwrap();
    let text =
        std::fs::read_to_string(repo.join("firmware-configs/profiles/x86-cpu-resnet18.json"))
            .unwrap();
    let table = ProfileTable::from_json(&text).unwrap();
    let m = onnx::load(&model(&dir, "resnet18"), &ImportOptions::default()).unwrap();
    let c = coarsen(&m, &RuleSet::cpu());
    let opts = PlaceOptions {
        time_limit: std::time::Duration::from_secs(2),
        threads: 1,
        ..Default::default()
    };
    let plan_with = |p: Option<&ProfileTable>| {
        let (g, sources) = costed_graph(&c, &cl, p).unwrap();
        let plan = place::place(&g, Method::Moirai, &opts, &place::lower_bound(&g)).unwrap();
        (
            plan.schedule.devices_used(),
            plan.makespan(),
            sources.profiled,
        )
    };
    let (roofline_devices, roofline_ms, none) = plan_with(None);
    let (measured_devices, measured_ms, profiled) = plan_with(Some(&table));
    assert_eq!(none, 0);
    assert_eq!(
        profiled,
        c.groups.len(),
        "every kernel of resnet18 is in the table"
    );
    assert_ne!(
        roofline_devices, measured_devices,
        "roofline plan {roofline_ms:.3} ms on {roofline_devices:?}, measured {measured_ms:.3} ms on {measured_devices:?}"
    );
    println!(
        "resnet18 on cpu-and-pi5: roofline {roofline_ms:.3} ms on devices {roofline_devices:?}; \
         measured x86 profile {measured_ms:.3} ms on devices {measured_devices:?}"
    );
}
