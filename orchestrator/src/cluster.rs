//! Cluster files: which devices, on which boards, linked how.
//!
//! ```toml
//! name = "edge-4"
//! [[device]]
//! name = "orin"
//! board = "jetson-orin-nano"        # firmware-configs/jetson-orin-nano.toml
//! [[device]]
//! name = "lab-pc"
//! [device.board]                    # or the figures inline
//! name = "my-pc"
//! ...
//! [links]
//! default = { bandwidth_mbps = 940, latency_ms = 0.2 }
//! [[link]]                          # both directions unless `symmetric = false`
//! from = "orin"
//! to = "pi5"
//! bandwidth_mbps = 300
//! latency_ms = 2.0
//! ```
//!
//! A board named by a string is looked up as `<name>.toml` in the boards folder given, then
//! beside the cluster file, then in its parent (so `firmware-configs/clusters/x.toml` finds
//! `firmware-configs/<board>.toml`); a name ending in `.toml` is a path relative to the
//! cluster file.

use std::path::{Path, PathBuf};

use moirai_core::device::{BoardSpec, Cluster, ClusterDevice, DeviceError};
use moirai_core::link::LinkSpec;
use moirai_core::DeviceId;
use serde::Deserialize;
use thiserror::Error;

/// Why a cluster or board file was refused; each names the file and the entry at fault.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{path}: device `{device}` names board `{board}`, which is not a board file (looked for {})", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    UnknownBoard {
        path: PathBuf,
        device: String,
        board: String,
        searched: Vec<PathBuf>,
    },
    #[error("{path}: device `{device}`: `board` must be a board name or a table of figures")]
    BoardType { path: PathBuf, device: String },
    #[error("{path}: device `{device}`: inline board: {message}")]
    InlineBoard {
        path: PathBuf,
        device: String,
        message: String,
    },
    #[error("{path}: link {index} (`{from}` -> `{to}`): `{end}` names device `{device}`, which the cluster does not define")]
    UnknownLinkDevice {
        path: PathBuf,
        index: usize,
        from: String,
        to: String,
        end: &'static str,
        device: String,
    },
    #[error("{path}: the cluster has several devices but no `[links] default`")]
    NoDefaultLink { path: PathBuf },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: DeviceError },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    name: Option<String>,
    #[serde(default, rename = "device")]
    devices: Vec<DeviceEntry>,
    links: Option<LinksTable>,
    #[serde(default, rename = "link")]
    link: Vec<LinkEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    name: String,
    board: toml::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksTable {
    default: LinkSpec,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    from: String,
    to: String,
    bandwidth_mbps: f64,
    latency_ms: f64,
    #[serde(default = "yes")]
    symmetric: bool,
}

/// Reads one board file.
pub fn load_board(path: &Path) -> Result<BoardSpec, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|error| ClusterError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    BoardSpec::from_toml(&text, &path.display().to_string()).map_err(|e| match e {
        DeviceError::Toml { message, .. } => ClusterError::Toml {
            path: path.to_path_buf(),
            message,
        },
        error => ClusterError::Invalid {
            path: path.to_path_buf(),
            error,
        },
    })
}

/// Where a board name may live.
fn board_candidates(name: &str, cluster_path: &Path, boards_dir: Option<&Path>) -> Vec<PathBuf> {
    let here = cluster_path.parent().unwrap_or(Path::new("."));
    if name.ends_with(".toml") {
        return vec![here.join(name)];
    }
    let file = format!("{name}.toml");
    let mut dirs: Vec<PathBuf> = boards_dir.map(Path::to_path_buf).into_iter().collect();
    dirs.push(here.to_path_buf());
    if let Some(parent) = here.parent() {
        dirs.push(parent.to_path_buf());
    }
    dirs.into_iter().map(|d| d.join(&file)).collect()
}

/// Reads a cluster file and the board files it names.
pub fn load_cluster(path: &Path, boards_dir: Option<&Path>) -> Result<Cluster, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|error| ClusterError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_cluster(&text, path, boards_dir)
}

/// Parses cluster text; `path` locates board files and names errors.
pub fn parse_cluster(
    text: &str,
    path: &Path,
    boards_dir: Option<&Path>,
) -> Result<Cluster, ClusterError> {
    let p = || path.to_path_buf();
    let file: ClusterFile = toml::from_str(text).map_err(|e| ClusterError::Toml {
        path: p(),
        message: e.to_string(),
    })?;
    let name = file.name.unwrap_or_else(|| {
        path.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("cluster")
            .to_string()
    });
    let mut devices = Vec::with_capacity(file.devices.len());
    for d in file.devices {
        let board = match d.board {
            toml::Value::String(board) => {
                let searched = board_candidates(&board, path, boards_dir);
                match searched.iter().find(|c| c.is_file()) {
                    Some(found) => load_board(found)?,
                    None => {
                        return Err(ClusterError::UnknownBoard {
                            path: p(),
                            device: d.name,
                            board,
                            searched,
                        })
                    }
                }
            }
            toml::Value::Table(t) => {
                let board: BoardSpec =
                    toml::Value::Table(t)
                        .try_into()
                        .map_err(|e: toml::de::Error| ClusterError::InlineBoard {
                            path: p(),
                            device: d.name.clone(),
                            message: e.to_string(),
                        })?;
                board
                    .validate()
                    .map_err(|error| ClusterError::Invalid { path: p(), error })?;
                board
            }
            _ => {
                return Err(ClusterError::BoardType {
                    path: p(),
                    device: d.name,
                })
            }
        };
        devices.push(ClusterDevice {
            name: d.name,
            board,
        });
    }
    let id = |n: &str| devices.iter().position(|d| d.name == n).map(DeviceId::from);
    let mut links = Vec::new();
    for (index, l) in file.link.iter().enumerate() {
        let end = |end: &'static str, device: &str| ClusterError::UnknownLinkDevice {
            path: p(),
            index,
            from: l.from.clone(),
            to: l.to.clone(),
            end,
            device: device.to_string(),
        };
        let a = id(&l.from).ok_or_else(|| end("from", &l.from))?;
        let b = id(&l.to).ok_or_else(|| end("to", &l.to))?;
        let spec = LinkSpec {
            bandwidth_mbps: l.bandwidth_mbps,
            latency_ms: l.latency_ms,
        };
        links.push((a, b, spec));
        if l.symmetric {
            links.push((b, a, spec));
        }
    }
    let default = match file.links {
        Some(l) => l.default,
        None if devices.len() <= 1 => LinkSpec {
            bandwidth_mbps: 1.0,
            latency_ms: 0.0,
        },
        None => return Err(ClusterError::NoDefaultLink { path: p() }),
    };
    Cluster::new(name, devices, default, &links)
        .map_err(|error| ClusterError::Invalid { path: p(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firmware() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-configs")
    }

    const INLINE: &str = r#"
        [[device]]
        name = "a"
        [device.board]
        name = "inline-board"
        backend = "cpu"
        compute = { f32_gflops = 100.0 }
        memory = { bandwidth_gbps = 10.0, capacity_mb = 1024, usable_mb = 512 }
        runtime = { launch_overhead_us = 5.0 }
        network = { nic_mbps = 1000.0 }
        [[device]]
        name = "b"
        [device.board]
        name = "inline-board"
        backend = "cpu"
        compute = { f32_gflops = 50.0 }
        memory = { bandwidth_gbps = 10.0, capacity_mb = 1024, usable_mb = 512 }
        runtime = { launch_overhead_us = 5.0 }
        network = { nic_mbps = 100.0 }
        [links]
        default = { bandwidth_mbps = 940, latency_ms = 0.2 }
        [[link]]
        from = "a"
        to = "b"
        bandwidth_mbps = 50
        latency_ms = 2.0
    "#;

    #[test]
    fn inline_boards_and_symmetric_links_parse() {
        let c = parse_cluster(INLINE, Path::new("/nowhere/c.toml"), None).unwrap();
        assert_eq!(c.name, "c");
        assert_eq!(c.len(), 2);
        let ab = c.link(DeviceId(0), DeviceId(1));
        assert_eq!((ab.bandwidth_mbps, ab.latency_ms), (50.0, 2.0));
        assert_eq!(c.link(DeviceId(1), DeviceId(0)), ab);
    }

    #[test]
    fn a_link_to_an_unknown_device_names_it() {
        let text = INLINE.replace("to = \"b\"", "to = \"ghost\"");
        let e = parse_cluster(&text, Path::new("c.toml"), None).unwrap_err();
        assert!(
            matches!(&e, ClusterError::UnknownLinkDevice { end: "to", device, index: 0, .. } if device == "ghost"),
            "{e}"
        );
        assert!(e.to_string().contains("`ghost`"), "{e}");
    }

    #[test]
    fn an_unknown_board_names_device_board_and_where_it_looked() {
        let text = "[[device]]\nname = \"x\"\nboard = \"no-such-board\"\n";
        let e = parse_cluster(text, &firmware().join("clusters/c.toml"), None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ClusterError::UnknownBoard { .. }), "{msg}");
        assert!(
            msg.contains("device `x`") && msg.contains("no-such-board.toml"),
            "{msg}"
        );
    }

    #[test]
    fn several_devices_without_a_default_link_are_refused() {
        let text = INLINE.replace(
            "[links]\n        default = { bandwidth_mbps = 940, latency_ms = 0.2 }",
            "",
        );
        assert!(matches!(
            parse_cluster(&text, Path::new("c.toml"), None),
            Err(ClusterError::NoDefaultLink { .. })
        ));
    }

    #[test]
    fn a_bad_inline_figure_is_refused_naming_the_board() {
        let text = INLINE.replacen("f32_gflops = 100.0", "f32_gflops = 0.0", 1);
        let e = parse_cluster(&text, Path::new("c.toml"), None).unwrap_err();
        assert!(e.to_string().contains("compute.f32_gflops"), "{e}");
    }

    #[test]
    fn board_names_resolve_from_the_clusters_folder_to_its_parent() {
        let text = "[[device]]\nname = \"x\"\nboard = \"raspberry-pi-5\"\n";
        let c = parse_cluster(text, &firmware().join("clusters/c.toml"), None).unwrap();
        assert_eq!(c.devices()[0].board.name, "raspberry-pi-5");
    }
}
