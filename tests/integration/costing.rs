//! One cost model: `moirai plan --model M --cluster C` and the fleet's online planning cost
//! every kernel and every transfer identically when they see the same model, boards, profile
//! table and links.

use std::path::Path;

use moirai_core::cost::ProfileTable;
use moirai_core::device::{Backend, Cluster, ClusterDevice};
use moirai_core::graph::format;
use moirai_core::wire::life::LinkStats;
use moirai_core::{DeviceId, EdgeId};
use moirai_model::loaded::LoadedModel;
use moirai_orchestrator::cluster::load_cluster;
use moirai_orchestrator::costing;
use moirai_orchestrator::fleet::model::{broker_links, graph_for, OnlineAgent};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

#[test]
fn plan_from_a_cluster_file_and_the_fleet_cost_the_same_graph() {
    let model = LoadedModel::load_for(
        &repo("tests/fixtures/onnx/tiny-effnet/model.onnx"),
        Backend::Wgpu,
    )
    .expect("the fixture loads");
    let file = load_cluster(&repo("firmware-configs/clusters/mixed-gpu-cpu.toml"), None)
        .expect("the cluster loads");

    // The fleet: the cluster's boards as online agents, each with its own measured link to
    // the broker (slow enough that no board's NIC caps it).
    let agents: Vec<OnlineAgent> = file
        .devices()
        .iter()
        .enumerate()
        .map(|(i, d)| OnlineAgent {
            name: d.name.clone(),
            board: d.board.clone(),
            memory_bytes: d.board.usable_memory_bytes(),
            link: Some(LinkStats {
                up_bps: 1_000_000 + 250_000 * i as u64,
                down_bps: 2_000_000 + 125_000 * i as u64,
                rtt_us: 900,
            }),
        })
        .collect();

    // Half of the kernels measured on the first board, the rest left to the roofline.
    let mut table = ProfileTable::new();
    let board = &agents[0].board.name;
    for (i, sig) in model.plan.signatures().iter().enumerate() {
        if i % 2 == 0 {
            table.insert(board, &sig.key(), 0.05 + i as f64 * 0.01);
        }
    }

    // `moirai plan`: a cluster file whose links are the paths through the broker.
    let through = broker_links(&agents);
    let k = agents.len();
    let mut pairs = Vec::new();
    for a in 0..k {
        for b in 0..k {
            if a != b {
                pairs.push((DeviceId(a as u16), DeviceId(b as u16), through.get(a, b)));
            }
        }
    }
    let devices: Vec<ClusterDevice> = file.devices().to_vec();
    let cluster = Cluster::new("through-the-broker", devices, through.get(0, 1), &pairs)
        .expect("a valid cluster");

    let (from_file, file_sources) =
        costing::costed_graph(&model.coarse, &cluster, Some(&table)).expect("plan's graph");
    let (online, online_sources) = graph_for(&model.plan, &agents, &table).expect("fleet's graph");

    assert!(file_sources.profiled > 0 && file_sources.roofline > 0);
    assert_eq!(file_sources, online_sources);
    assert_eq!(from_file.ops().len(), online.ops().len());
    // Same devices, ops, per-device times, memory and edges (bytes and transfer times).
    let (mut a, mut b) = (format::to_json(&from_file), format::to_json(&online));
    a = a.replacen(&from_file.name, "", 1);
    b = b.replacen(&online.name, "", 1);
    assert_eq!(a, b);
    // And a transfer between two devices costs the same in both.
    for e in (0..online.edges().len()).map(EdgeId::from) {
        for (x, y) in [(0u16, 1u16), (2, 3), (3, 0)] {
            let (x, y) = (DeviceId(x), DeviceId(y));
            assert_eq!(
                from_file.transfer(e, x, y).to_bits(),
                online.transfer(e, x, y).to_bits()
            );
        }
    }
}
