//! `moirai bench DIR`: every method on every profiled graph in a folder.

use anyhow::{bail, Context, Result};
use moirai_orchestrator::import::profiled;
use moirai_orchestrator::report::table;

use super::plan::{methods, options, run_methods};
use crate::cli::BenchArgs;

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
