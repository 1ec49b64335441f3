//! `firmware-configs/`: every board file and every example cluster loads, each figure cites
//! its source, and bad cluster files are refused naming what is wrong.

use std::path::{Path, PathBuf};

use moirai_core::device::Backend;
use moirai_orchestrator::cluster::{self, ClusterError};

use super::import::scratch;

fn firmware() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware-configs")).to_path_buf()
}

fn tomls(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_board_file_loads_and_names_itself_after_its_file() {
    let boards = tomls(&firmware());
    let mut names = Vec::new();
    for p in &boards {
        let b = cluster::load_board(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Some(b.name.as_str()),
            p.file_stem().and_then(|s| s.to_str()),
            "{}",
            p.display()
        );
        names.push(b.name);
    }
    for class in [
        "jetson-orin-nano",
        "jetson-nano",
        "raspberry-pi-5",
        "raspberry-pi-4",
        "x86-rtx3060",
        "x86-cpu",
    ] {
        assert!(
            names.iter().any(|n| n == class),
            "no board file for {class}"
        );
    }
}

#[test]
fn every_figure_in_a_board_file_has_a_comment_above_it() {
    for p in tomls(&firmware()) {
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, l) in lines.iter().enumerate() {
            let is_figure = l
                .split_once('=')
                .is_some_and(|(_, v)| v.trim().parse::<f64>().is_ok());
            if is_figure {
                // Its own comment: on the line itself or directly above it.
                let commented = l.contains('#') || (i > 0 && lines[i - 1].starts_with('#'));
                assert!(commented, "{}: `{l}` has no source comment", p.display());
            }
        }
    }
}

#[test]
fn both_example_clusters_load() {
    let clusters = tomls(&firmware().join("clusters"));
    assert!(clusters.len() >= 2);
    for p in &clusters {
        let c = cluster::load_cluster(p, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.len() >= 2, "{}", p.display());
    }
    let edge = cluster::load_cluster(&firmware().join("clusters/edge-4.toml"), None).unwrap();
    assert_eq!(edge.len(), 4);
    let mixed =
        cluster::load_cluster(&firmware().join("clusters/mixed-gpu-cpu.toml"), None).unwrap();
    let backends: Vec<Backend> = mixed.devices().iter().map(|d| d.board.backend).collect();
    assert!(backends.contains(&Backend::Wgpu) && backends.contains(&Backend::Cpu));
}

#[test]
fn a_cluster_naming_an_unknown_board_is_refused() {
    let dir = scratch("cluster-board");
    let p = dir.join("c.toml");
    std::fs::write(
        &p,
        "[[device]]\nname = \"a\"\nboard = \"jetson-orin-nano\"\n[[device]]\nname = \"b\"\nboard = \"jetson-xavier\"\n[links]\ndefault = { bandwidth_mbps = 940, latency_ms = 0.2 }\n",
    )
    .unwrap();
    let e = cluster::load_cluster(&p, Some(&firmware())).unwrap_err();
    match &e {
        ClusterError::UnknownBoard { device, board, .. } => {
            assert_eq!(device, "b");
            assert_eq!(board, "jetson-xavier");
        }
        other => panic!("expected UnknownBoard, got {other}"),
    }
    assert!(e.to_string().contains("c.toml"), "{e}");
}

#[test]
fn a_link_to_an_unknown_device_is_refused() {
    let dir = scratch("cluster-link");
    let p = dir.join("c.toml");
    std::fs::write(
        &p,
        "[[device]]\nname = \"a\"\nboard = \"raspberry-pi-5\"\n[[device]]\nname = \"b\"\nboard = \"raspberry-pi-4\"\n[links]\ndefault = { bandwidth_mbps = 940, latency_ms = 0.2 }\n[[link]]\nfrom = \"a\"\nto = \"c\"\nbandwidth_mbps = 10\nlatency_ms = 1\n",
    )
    .unwrap();
    let e = cluster::load_cluster(&p, Some(&firmware())).unwrap_err();
    assert!(
        matches!(&e, ClusterError::UnknownLinkDevice { end: "to", device, .. } if device == "c"),
        "{e}"
    );
}

#[test]
fn a_malformed_cluster_file_names_the_file() {
    let dir = scratch("cluster-toml");
    let p = dir.join("bad.toml");
    std::fs::write(&p, "[[device]]\nname = \"a\"\nbord = \"x\"\n").unwrap();
    let e = cluster::load_cluster(&p, None).unwrap_err();
    assert!(matches!(e, ClusterError::Toml { .. }), "{e}");
    assert!(e.to_string().contains("bad.toml"), "{e}");
}
