//! `moirai coarsen`: import ONNX models, coarsen them for a backend, print what was fused,
//! and (with a cluster) write the costed profiled-graph/v1 JSON.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use moirai_core::cost::ProfileTable;
use moirai_core::device::Backend;
use moirai_core::graph::format;
use moirai_model::coarsen::{coarsen, rules::RuleSet, CoarseGraph};
use moirai_model::import::onnx::{self, ImportOptions};
use moirai_orchestrator::cluster;
use moirai_orchestrator::costing;

use std::path::PathBuf;

/// How an ONNX model becomes a costed graph (with --model).
#[derive(clap::Args, Debug, Clone)]
pub struct OnnxArgs {
    /// Fusion rules of this backend: wgpu or cpu.
    #[arg(long, default_value = "wgpu")]
    pub backend: String,
    /// Folder of board files (default: beside the cluster file, then its parent).
    #[arg(long)]
    pub boards: Option<PathBuf>,
    /// Measured kernel times (moirai-profiles/v1 JSON) replacing the roofline.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Value of a symbolic input dimension, NAME=VALUE (repeatable).
    #[arg(long)]
    pub dim: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CoarsenArgs {
    /// ONNX model(s) to coarsen.
    #[arg(long, required = true, num_args = 1..)]
    pub model: Vec<PathBuf>,
    /// A cluster TOML: cost the fused ops on its devices.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    #[command(flatten)]
    pub onnx: OnnxArgs,
    /// Write the costed profiled-graph/v1 JSON here (one model, needs --cluster).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// One Markdown table row per model instead of the signature lists.
    #[arg(long)]
    pub table: bool,
}

/// The backend a `--backend` value names.
pub fn backend(name: &str) -> Result<Backend> {
    name.parse::<Backend>()
        .map_err(|e| anyhow::anyhow!("--backend: {e}"))
}

/// Import options from `--dim name=value` pairs.
pub fn import_options(dims: &[String]) -> Result<ImportOptions> {
    let mut opts = ImportOptions::default();
    for d in dims {
        let (name, value) = d
            .split_once('=')
            .with_context(|| format!("--dim `{d}`: expected NAME=VALUE"))?;
        let value: usize = value
            .parse()
            .with_context(|| format!("--dim `{d}`: `{value}` is not a size"))?;
        opts.dims.insert(name.to_string(), value);
    }
    Ok(opts)
}

/// Reads a profile table file.
pub fn load_profiles(path: &Path) -> Result<ProfileTable> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read profile table {}", path.display()))?;
    ProfileTable::from_json(&text).with_context(|| format!("profile table {}", path.display()))
}

struct Measured {
    coarse: CoarseGraph,
    import_ms: f64,
    coarsen_ms: f64,
}

fn measure(path: &Path, backend: Backend, opts: &ImportOptions) -> Result<Measured> {
    let t0 = Instant::now();
    let model = onnx::load(path, opts)?;
    let t1 = Instant::now();
    let coarse = coarsen(&model, &RuleSet::for_backend(backend));
    let t2 = Instant::now();
    Ok(Measured {
        coarse,
        import_ms: (t1 - t0).as_secs_f64() * 1e3,
        coarsen_ms: (t2 - t1).as_secs_f64() * 1e3,
    })
}

/// Writes to stdout; `Ok(false)` once the reader has gone (`| head`), which is not an error.
fn emit(text: &str) -> Result<bool> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

pub fn run(args: CoarsenArgs) -> Result<()> {
    let backend = backend(&args.onnx.backend)?;
    let opts = import_options(&args.onnx.dim)?;
    if args.model.len() > 1 && args.out.is_some() {
        bail!("--out takes one --model at a time");
    }
    if args.out.is_some() && args.cluster.is_none() {
        bail!("--out needs --cluster: the exported graph is costed for a cluster's devices");
    }
    let cluster = args
        .cluster
        .as_deref()
        .map(|c| cluster::load_cluster(c, args.onnx.boards.as_deref()))
        .transpose()?;
    let profiles = args
        .onnx
        .profiles
        .as_deref()
        .map(load_profiles)
        .transpose()?;

    if args.table {
        emit("| model | backend | nodes before | after | ratio | folded shape-only | distinct signatures | import + coarsen (ms) |\n|---|---|---:|---:|---:|---:|---:|---:|\n")?;
    }
    for path in &args.model {
        let m = measure(path, backend, &opts)?;
        let c = &m.coarse;
        let sigs = c.distinct_signatures();
        let text = if args.table {
            format!(
                "| {} | {} | {} | {} | {:.1}% | {} | {} | {:.1} |\n",
                c.model,
                backend,
                c.nodes_before,
                c.groups.len(),
                100.0 * c.ratio(),
                c.folded_nodes,
                sigs.len(),
                m.import_ms + m.coarsen_ms
            )
        } else {
            let mut t = format!(
                "{} ({backend}): {} nodes -> {} fused ops ({:.1}%), {} shape-only nodes folded, {} distinct kernel signatures; import {:.1} ms, coarsen {:.1} ms\n",
                c.model,
                c.nodes_before,
                c.groups.len(),
                100.0 * c.ratio(),
                c.folded_nodes,
                sigs.len(),
                m.import_ms,
                m.coarsen_ms
            );
            for (sig, count) in &sigs {
                t.push_str(&format!("  {count:>3}x {}\n", sig.key()));
            }
            // What the rules would have fused but the kernels could not compute right.
            for (why, count) in &c.refused {
                t.push_str(&format!("  kept apart {count}x: {why}\n"));
            }
            t
        };
        let reader_left = !emit(&text)?;
        if let Some(cluster) = &cluster {
            let (graph, sources) = costing::costed_graph(c, cluster, profiles.as_ref())?;
            eprintln!(
                "{}: costed on {} ({} devices): {} ops, {} edges; {} op times profiled, {} from the roofline",
                c.model,
                cluster.name,
                cluster.len(),
                graph.num_ops(),
                graph.edges().len(),
                sources.profiled,
                sources.roofline
            );
            if let Some(out) = &args.out {
                std::fs::write(out, format::to_json(&graph))
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
        }
        if reader_left {
            break;
        }
    }
    Ok(())
}
