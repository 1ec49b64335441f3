//! `moirai plan`: place a graph, print the table, write the schedule and the Gantt chart.

use std::path::Path;

use anyhow::{bail, Context, Result};
use moirai_core::Graph;
use moirai_model::import::profiled;
use moirai_orchestrator::place::{self, Method, PlaceOptions, Plan};
use moirai_orchestrator::report::{gantt, table};

use std::path::PathBuf;

/// Where the graph comes from and how to place it.
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// A profiled-graph/v1 JSON file.
    #[arg(long, conflicts_with = "model")]
    pub graph: Option<PathBuf>,
    /// An ONNX model (needs --cluster).
    #[arg(long, requires = "cluster")]
    pub model: Option<PathBuf>,
    /// A cluster TOML naming devices and links (with --model).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    #[command(flatten)]
    pub onnx: super::coarsen::OnnxArgs,
    /// Method name (single, heft, mtopo, metf, msct, getf, moirai) or `all`.
    #[arg(long, default_value = "moirai")]
    pub method: String,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Write the schedule of the chosen method (with `all`, the best) as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw that schedule as an SVG Gantt chart.
    #[arg(long)]
    pub gantt: Option<PathBuf>,
    /// Print the final schedule as JSON on stdout (and the table on stderr).
    #[arg(long)]
    pub json: bool,
}

/// Budget and determinism of the anytime placer.
#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    /// Wall-clock budget of the Moirai placer, in seconds (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub time_limit: f64,
    /// Seed of the search (same seed and threads, same plan).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop each search thread after this many simulated schedules: the plan then depends
    /// only on the seed, the threads and this count, not on the machine's speed (give a
    /// generous --time-limit).
    #[arg(long)]
    pub max_evals: Option<u64>,
}

/// Place options from the command line.
pub fn options(s: &SearchArgs) -> Result<PlaceOptions> {
    if !(s.time_limit.is_finite() && s.time_limit > 0.0) {
        bail!(
            "--time-limit must be a positive number of seconds, got {}",
            s.time_limit
        );
    }
    Ok(PlaceOptions {
        time_limit: std::time::Duration::from_secs_f64(s.time_limit),
        seed: s.seed,
        threads: s
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1),
        warm_start: None,
        max_evals: s.max_evals,
    })
}

/// The methods a `--method` value names.
pub fn methods(name: &str) -> Result<Vec<Method>> {
    if name == "all" {
        return Ok(Method::EVERY.to_vec());
    }
    name.split(',')
        .map(|n| {
            Method::parse(n.trim()).with_context(|| {
                let known: Vec<&str> = Method::EVERY.iter().map(|m| m.name()).collect();
                format!("unknown method `{n}`; known: {}, all", known.join(", "))
            })
        })
        .collect()
}

fn load_graph(args: &PlanArgs) -> Result<Graph> {
    match (&args.graph, &args.model) {
        (Some(g), None) => Ok(profiled::load(g)?),
        (None, Some(model)) => {
            let cluster = args.cluster.as_deref().context("--model needs --cluster")?;
            let p = moirai_orchestrator::costing::from_files(
                model,
                cluster,
                args.onnx.boards.as_deref(),
                super::coarsen::backend(&args.onnx.backend)?,
                args.onnx.profiles.as_deref(),
                &super::coarsen::import_options(&args.onnx.dim)?,
            )?;
            eprintln!(
                "{}: {} ONNX nodes -> {} fused ops ({} backend), {} edges, on {} ({} devices); {} op times profiled, {} from the roofline",
                p.coarse.model,
                p.coarse.nodes_before,
                p.graph.num_ops(),
                p.coarse.backend,
                p.graph.edges().len(),
                p.cluster.name,
                p.cluster.len(),
                p.sources.profiled,
                p.sources.roofline
            );
            Ok(p.graph)
        }
        _ => bail!("give either --graph G.json or --model M.onnx --cluster C.toml"),
    }
}

/// Runs `methods` on `g`, returning the rows of the table (errors kept per method).
pub fn run_methods(g: &Graph, methods: &[Method], opts: &PlaceOptions) -> Vec<table::Row> {
    let bound = place::lower_bound(g);
    methods
        .iter()
        .map(|&m| table::Row {
            graph: g.name.clone(),
            method: m.name().to_string(),
            outcome: place_with_bar(g, m, opts, &bound).map_err(|e| e.to_string()),
        })
        .collect()
}

/// Runs one method; for the anytime placer, a spinner on stderr shows the phase, the
/// incumbent and the bound as they improve (hidden when stderr is not a terminal).
fn place_with_bar(
    g: &Graph,
    m: Method,
    opts: &PlaceOptions,
    bound: &moirai_orchestrator::bound::LowerBound,
) -> Result<Plan, place::PlaceError> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use moirai_orchestrator::place::moirai::Progress;
    if m != Method::Moirai {
        return place::place(g, m, opts, bound);
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("a valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let lb = bound.value_ms;
    let report = |p: Progress| match p {
        Progress::Phase(name) => bar.set_prefix(name),
        Progress::Incumbent { makespan_ms, .. } => bar.set_message(format!(
            "{}: incumbent {makespan_ms:.4} ms, bound {lb:.4} ms, gap {:.1}%",
            g.name,
            100.0 * (makespan_ms - lb).max(0.0) / makespan_ms.max(1e-12)
        )),
    };
    let out = place::place_with_progress(g, m, opts, bound, &report);
    bar.finish_and_clear();
    out
}

/// The best plan among the rows.
pub fn best(rows: &[table::Row]) -> Option<&Plan> {
    rows.iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .min_by(|a, b| a.makespan().total_cmp(&b.makespan()))
}

pub fn run(args: PlanArgs) -> Result<()> {
    let g = load_graph(&args)?;
    let opts = options(&args.search)?;
    let methods = methods(&args.method)?;
    let rows = run_methods(&g, &methods, &opts);
    let text = table::markdown(&rows);
    if args.json {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    let Some(chosen) = best(&rows) else {
        let errors: Vec<String> = rows
            .iter()
            .filter_map(|r| r.outcome.as_ref().err().cloned())
            .collect();
        bail!(
            "no method produced a plan for {}:\n  {}",
            g.name,
            errors.join("\n  ")
        );
    };
    let json = serde_json::to_string_pretty(&chosen.schedule)?;
    if let Some(out) = &args.out {
        write(out, &json)?;
    }
    if let Some(svg) = &args.gantt {
        write(svg, &gantt::svg(&g, &chosen.schedule))?;
    }
    if args.json {
        println!("{json}");
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
