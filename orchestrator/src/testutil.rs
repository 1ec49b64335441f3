//! Graphs for unit tests.

use moirai_core::graph::{format, Device, Edge, Op};
use moirai_core::{Graph, OpId};

/// The paper's toy case, shipped in the repo (memory binds; optimum 30 ms).
pub fn example_1() -> Graph {
    format::from_json(include_str!("../../tests/fixtures/profiled/example_1.json")).unwrap()
}

pub use moirai_core::graph::sample::diamond;

/// `n` independent ops, identical on `k` identical devices, no edges: optimum is obvious.
pub fn independent(n: usize, k: usize, t: f64) -> Graph {
    let devices = (0..k)
        .map(|i| Device {
            name: format!("d{i}"),
            memory_bytes: u64::MAX,
        })
        .collect();
    let ops = (0..n)
        .map(|i| Op {
            name: format!("o{i}"),
            time_ms: vec![t; k],
            memory_bytes: 1,
            kernel: None,
        })
        .collect();
    Graph::new("independent", devices, ops, vec![]).unwrap()
}

/// A chain of `n` ops; device 0 is fast, device 1 slow; transfers cost `c`.
pub fn chain(n: usize, c: f64) -> Graph {
    let devices = vec![
        Device {
            name: "fast".into(),
            memory_bytes: u64::MAX,
        },
        Device {
            name: "slow".into(),
            memory_bytes: u64::MAX,
        },
    ];
    let ops = (0..n)
        .map(|i| Op {
            name: format!("c{i}"),
            time_ms: vec![1.0, 3.0],
            memory_bytes: 1,
            kernel: None,
        })
        .collect();
    let edges = (1..n)
        .map(|i| Edge {
            src: OpId::from(i - 1),
            dst: OpId::from(i),
            transfer_ms: vec![0.0, c, c, 0.0],
            tensor: None,
        })
        .collect();
    Graph::new("chain", devices, ops, edges).unwrap()
}
