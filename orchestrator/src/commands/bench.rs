//! `moirai bench DIR`: every method on every profiled graph in a folder.

use anyhow::{bail, Context, Result};
use moirai_model::import::profiled;
use moirai_orchestrator::report::table;

use super::plan::SearchArgs;
use super::plan::{methods, options, run_methods};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A folder of profiled-graph/v1 JSON files.
    pub dir: PathBuf,
    /// Methods to run, comma-separated (default: all).
    #[arg(long)]
    pub methods: Option<String>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Also write the CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchScaleArgs {
    /// A profiled-graph/v1 JSON file (e.g. the transformer sample).
    #[arg(long)]
    pub graph: PathBuf,
    /// Sub-graph sizes, comma-separated.
    #[arg(long, default_value = "100,300,700,1373")]
    pub sizes: String,
    #[command(flatten)]
    pub search: SearchArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let opts = options(&args.search)?;
    let methods = methods(args.methods.as_deref().unwrap_or("all"))?;
    let mut files: Vec<_> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("cannot read folder {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .json graphs", args.dir.display());
    }
    let mut rows = Vec::new();
    for f in &files {
        let g = profiled::load(f)?;
        eprintln!(
            "{}: {} ops, {} edges, {} devices",
            g.name,
            g.num_ops(),
            g.edges().len(),
            g.num_devices()
        );
        rows.extend(run_methods(&g, &methods, &opts));
    }
    println!("{}", table::markdown(&rows));
    let csv = table::csv(&rows);
    println!("{csv}");
    if let Some(path) = &args.csv {
        std::fs::write(path, &csv).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The first `n` ops of `g` in topological order, with the edges among them.
fn prefix(g: &moirai_core::Graph, n: usize) -> Result<moirai_core::Graph> {
    let keep: Vec<_> = g.topo_order().iter().take(n).copied().collect();
    let mut index = vec![None; g.num_ops()];
    for (i, op) in keep.iter().enumerate() {
        index[op.index()] = Some(i);
    }
    let ops = keep.iter().map(|&o| g.op(o).clone()).collect();
    let edges = g
        .edges()
        .iter()
        .filter_map(|e| {
            let (s, d) = (index[e.src.index()]?, index[e.dst.index()]?);
            Some(moirai_core::graph::Edge {
                src: s.into(),
                dst: d.into(),
                ..e.clone()
            })
        })
        .collect();
    Ok(moirai_core::Graph::new(
        format!("{}[:{}]", g.name, keep.len()),
        g.devices().to_vec(),
        ops,
        edges,
    )?)
}

/// `moirai bench-scale`: best baseline vs the Moirai placer on growing sub-graphs.
pub fn run_scale(args: BenchScaleArgs) -> Result<()> {
    use moirai_orchestrator::place::{self, Method};
    use std::time::Instant;
    let opts = options(&args.search)?;
    let g = profiled::load(&args.graph)?;
    println!(
        "| ops | edges | best baseline | baselines s | moirai | moirai s | reached s | lower bound | gap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in args.sizes.split(',') {
        let n: usize = size
            .trim()
            .parse()
            .with_context(|| format!("bad size `{size}`"))?;
        let sub = prefix(&g, n)?;
        let bound = place::lower_bound(&sub);
        let t = Instant::now();
        let best = Method::ALL
            .iter()
            .filter_map(|&m| place::place(&sub, m, &opts, &bound).ok())
            .map(|p| (p.makespan(), p.schedule.method.clone()))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let base_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let m = place::place(&sub, Method::Moirai, &opts, &bound)?;
        let (bm, bname) = best.map_or((f64::NAN, "-".to_string()), |b| b);
        println!(
            "| {} | {} | {bm:.4} ({bname}) | {base_s:.2} | {:.4} | {:.2} | {:.2} | {:.4} | {:.1}% |",
            sub.num_ops(),
            sub.edges().len(),
            m.makespan(),
            t.elapsed().as_secs_f64(),
            m.reached_seconds,
            m.bound.value_ms,
            100.0 * m.gap()
        );
    }
    Ok(())
}
