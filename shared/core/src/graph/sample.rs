//! A small graph for examples and for the tests of every crate.

use super::{Device, Edge, Graph, Op};
use crate::OpId;

/// A diamond a -> {b, c} -> d on two devices; device 1 is twice as slow; transfers 1 ms.
pub fn diamond() -> Graph {
    let devices = vec![
        Device {
            name: "fast".into(),
            memory_bytes: 100,
        },
        Device {
            name: "slow".into(),
            memory_bytes: 100,
        },
    ];
    let op = |name: &str, t: f64| Op {
        name: name.into(),
        time_ms: vec![t, 2.0 * t],
        memory_bytes: 10,
        kernel: None,
    };
    let edge = |s: u32, d: u32| Edge {
        src: OpId(s),
        dst: OpId(d),
        transfer_ms: vec![0.0, 1.0, 1.0, 0.0],
        tensor: None,
    };
    Graph::new(
        "diamond",
        devices,
        vec![op("a", 1.0), op("b", 4.0), op("c", 4.0), op("d", 1.0)],
        vec![edge(0, 1), edge(0, 2), edge(1, 3), edge(2, 3)],
    )
    .unwrap()
}
