//! `moirai-agent`: the program that runs on each board.
//!
//! Subcommands: `profile` times the fused kernels of a model (or a signature list) and writes
//! them to the profile store; `bench-kernels` prints achieved GFLOP/s and GB/s per kernel class
//! next to tract's matmul and the adapter's figures; `adapters` lists what wgpu sees.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use moirai_agent::gpu::context::{AdapterChoice, GpuContext};
use moirai_agent::profile::bench;
use moirai_agent::profile::store::ProfileStore;
use moirai_agent::profile::{Backend, KernelProfile, Profiler};
use moirai_core::kernel::KernelSignature;

#[derive(Parser)]
#[command(
    name = "moirai-agent",
    version,
    about = "Moirai agent: profiles and runs fused DNN kernels on this board"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Check this build on this board and exit: adapter probe, one kernel on the CPU executor
    /// (and on the GPU when there is one), protocol round trip. Exit status 1 on any failure.
    #[arg(long)]
    self_test: bool,
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: connect to the orchestrator's broker and serve.
    #[command(flatten)]
    connect: commands::connect::ConnectArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BackendArg {
    Wgpu,
    Cpu,
}

#[derive(clap::Args)]
struct DeviceArgs {
    /// Where kernels run: wgpu (falls back to cpu when no adapter exists) or cpu (tract).
    #[arg(long, value_enum, default_value = "wgpu")]
    backend: BackendArg,
    /// Pick the adapter whose name contains this text (else MOIRAI_ADAPTER, else: discrete >
    /// integrated > CPU).
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Time every fused kernel of a model and write the medians to the profile store.
    Profile {
        /// ONNX model to import and coarsen.
        #[arg(long, conflicts_with = "signatures")]
        model: Option<PathBuf>,
        /// A JSON list of kernel signatures instead of a model.
        #[arg(long)]
        signatures: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
        /// Profile store to update (moirai-profiles/v1 JSON).
        #[arg(long, default_value = "profiles.json")]
        store: PathBuf,
        /// Board class the figures are filed under (default: the adapter name, or "cpu").
        #[arg(long)]
        board: Option<String>,
        #[arg(long, default_value_t = 2)]
        warmups: usize,
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Also run the fusion test (fused vs. parts) on every fused kernel.
        #[arg(long)]
        fusion_test: bool,
        /// Also write the signatures as JSON here (the format `--signatures` reads), e.g. to
        /// profile a model's kernels on a board that cannot import ONNX.
        #[arg(long)]
        write_signatures: Option<PathBuf>,
    },
    /// Achieved GFLOP/s and GB/s per kernel class, and tract's matmul side by side.
    BenchKernels {
        #[command(flatten)]
        device: DeviceArgs,
        /// Matmul size for the GPU-vs-tract comparison.
        #[arg(long, default_value_t = 1024)]
        n: usize,
        #[arg(long, default_value_t = 2)]
        warmups: usize,
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Threads for tract's matmul (0: as many as cores).
        #[arg(long, default_value_t = 0)]
        tract_threads: usize,
        /// Only the kernels whose label contains this text.
        #[arg(long)]
        only: Option<String>,
        /// Also measure where a matmul's time goes: the adapter's FMA-only ceiling and its
        /// storage-load rate (see `profile/probe.rs`).
        #[arg(long)]
        probe: bool,
    },
    /// List the adapters wgpu sees, best first.
    Adapters,
    /// Per-request latency of a share on the GPU executor and on tract, and how far their
    /// outputs are apart.
    BenchShare {
        /// The ONNX model (weights inside).
        #[arg(long)]
        model: PathBuf,
        /// The model's input (TensorProto; default: test_data_set_0/input_0.pb beside the
        /// model, else random values).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Cut the model into this many shares of consecutive fused groups...
        #[arg(long, default_value_t = 1)]
        stages: usize,
        /// ...and measure this one (1-based).
        #[arg(long, default_value_t = 1)]
        stage: usize,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long, default_value_t = 3)]
        warmups: usize,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Tolerance of the check of every GPU kernel against tract at load (part of the
        /// load time, as when serving); a kernel differing by more (relative) runs on tract.
        #[arg(long, default_value_t = moirai_agent::exec::gpu_share::VERIFY_TOL)]
        verify: f32,
        /// Time the raw GPU kernels: skip the check.
        #[arg(long)]
        no_verify: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn,moirai_agent=info",
        1 => "info,moirai_agent=debug",
        _ => "debug,moirai_agent=trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moirai-agent: {e:#}");
            let status = e
                .downcast_ref::<commands::connect::ConnectError>()
                .map_or(1, |c| c.exit_status());
            ExitCode::from(status)
        }
    }
}

/// Opens the GPU for `--backend wgpu`; without any adapter, says so and falls back to the CPU.
fn open_device(d: &DeviceArgs) -> anyhow::Result<Option<GpuContext>> {
    if d.backend == BackendArg::Cpu {
        return Ok(None);
    }
    let choice = match &d.adapter {
        Some(a) => AdapterChoice::NameContains(a.clone()),
        None => AdapterChoice::from_env(),
    };
    match GpuContext::open(&choice) {
        Ok(ctx) => {
            println!("adapter: {}", ctx.report());
            Ok(Some(ctx))
        }
        Err(e @ moirai_agent::gpu::GpuError::NoAdapter) => {
            println!("no GPU adapter on this board ({e}); using the CPU executor (tract)");
            Ok(None)
        }
        Err(e) => Err(e).context("opening the GPU"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.self_test {
        let report = moirai_agent::selftest::run(&AdapterChoice::from_env());
        println!("moirai-agent {} self-test", env!("CARGO_PKG_VERSION"));
        for check in &report.checks {
            println!("{check}");
        }
        if !report.passed() {
            bail!("self-test failed");
        }
        println!("self-test passed");
        return Ok(());
    }
    let Some(command) = cli.command else {
        let ended = commands::connect::run(cli.connect, None)?;
        if ended.exit_status() != 0 {
            // A rolled-out release took over: tell systemd to start `current` again.
            std::process::exit(i32::from(ended.exit_status()));
        }
        return Ok(());
    };
    match command {
        Command::Adapters => {
            let list = GpuContext::list_adapters();
            if list.is_empty() {
                println!("no adapters");
            }
            for a in list {
                println!(
                    "{} ({:?}, {:?}, {} {})",
                    a.name, a.backend, a.device_type, a.driver, a.driver_info
                );
            }
            Ok(())
        }
        Command::Profile {
            model,
            signatures,
            device,
            store,
            board,
            warmups,
            runs,
            fusion_test,
            write_signatures,
        } => {
            // A board runs the kernels its backend's fusion rules make.
            let rules = match device.backend {
                BackendArg::Wgpu => moirai_core::device::Backend::Wgpu,
                BackendArg::Cpu => moirai_core::device::Backend::Cpu,
            };
            let sigs = load_signatures(model.as_deref(), signatures.as_deref(), rules)?;
            if let Some(p) = &write_signatures {
                std::fs::write(p, serde_json::to_string_pretty(&sigs)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            let ctx = open_device(&device)?;
            let backend = match &ctx {
                Some(c) => Backend::Gpu(c),
                None => Backend::Cpu,
            };
            let board = board.unwrap_or_else(|| match &ctx {
                Some(c) => c.info.name.clone(),
                None => "cpu".into(),
            });
            let profiler = Profiler::new(backend, warmups, runs);
            let mut done: Vec<KernelProfile> = Vec::new();
            let mut failed = 0;
            println!(
                "{:<4} {:<44} {:>10} {:>8} {:>9} {:>8}  clock",
                "#", "kernel", "median ms", "spread", "GFLOP/s", "GB/s"
            );
            for (i, s) in sigs.iter().enumerate() {
                match profiler.profile(s) {
                    Ok(p) => {
                        println!(
                            "{:<4} {:<44} {:>10.4} {:>7.1}% {:>9.2} {:>8.2}  {:?}",
                            i,
                            short(&p.pattern, 44),
                            p.median_ms,
                            100.0 * p.spread,
                            p.gflops(),
                            p.gbytes(),
                            p.clock
                        );
                        done.push(p);
                    }
                    Err(e) => {
                        failed += 1;
                        println!("{i:<4} {:<44} FAILED: {e}", short(&s.pattern(), 44));
                    }
                }
            }
            let total: f64 = done.iter().map(|p| p.median_ms).sum();
            println!(
                "{} kernels profiled on {} ({} failed); sum of medians {:.3} ms",
                done.len(),
                backend.name(),
                failed,
                total
            );
            if fusion_test {
                println!("\nfusion test (nn-Meter): fused vs. head + element-wise tail");
                for s in sigs.iter().filter(|s| s.nodes.len() > 1) {
                    match profiler.fusion_test(s) {
                        Ok(v) => println!(
                            "{:<44} fused {:>9.4} ms  parts {:>9.4} ms  {}",
                            short(&v.pattern, 44),
                            v.fused_ms,
                            v.parts_ms(),
                            if v.pays { "pays" } else { "DOES NOT PAY" }
                        ),
                        Err(e) => println!("{:<44} skipped: {e}", short(&s.pattern(), 44)),
                    }
                }
            }
            let mut st = ProfileStore::open(&store)?;
            moirai_agent::profile::store::record(&mut st, &board, &done);
            st.save()?;
            println!(
                "profile store {} updated (board {board:?})",
                store.display()
            );
            if failed > 0 && done.is_empty() {
                bail!("no kernel could be profiled");
            }
            Ok(())
        }
        Command::BenchShare {
            model,
            input,
            stages,
            stage,
            device,
            warmups,
            runs,
            verify,
            no_verify,
        } => bench_share(
            &model,
            input,
            (stages, stage),
            &device,
            moirai_agent::exec::compare::BenchOptions {
                warmups,
                runs,
                verify: (!no_verify).then_some(verify),
            },
        ),
        Command::BenchKernels {
            device,
            n,
            warmups,
            runs,
            tract_threads,
            only,
            probe,
        } => {
            let ctx = open_device(&device)?;
            bench::run(
                ctx.as_ref(),
                n,
                warmups,
                runs,
                tract_threads,
                only.as_deref(),
                &mut |line| println!("{line}"),
            )?;
            match (&ctx, probe) {
                (Some(c), true) => {
                    moirai_agent::profile::probe::report(c, n, runs, &mut |l| println!("{l}"))?
                }
                (None, true) => println!("--probe: no adapter to probe"),
                _ => {}
            }
            Ok(())
        }
    }
}

/// `moirai-agent bench-share`.
fn bench_share(
    path: &std::path::Path,
    input: Option<PathBuf>,
    (stages, stage): (usize, usize),
    device: &DeviceArgs,
    opts: moirai_agent::exec::compare::BenchOptions,
) -> anyhow::Result<()> {
    use moirai_agent::exec::compare::{self, Feed};
    use moirai_model::{loaded::LoadedModel, tensor_proto as tensor};
    let model = LoadedModel::load(path).with_context(|| format!("loading {}", path.display()))?;
    let shares = compare::stage_shares(&model, stages)?;
    if stage == 0 || stage > shares.len() {
        bail!("--stage must be in 1..={}", shares.len());
    }
    let mut feed = Feed::new();
    // The model's own test data beside it when there is one, one file per input.
    let data = path.parent().map(|d| d.join("test_data_set_0"));
    let default_input = |i: usize| {
        data.as_ref()
            .map(|d| d.join(format!("input_{i}.pb")))
            .filter(|p| p.is_file())
    };
    let mut rng = fastrand::Rng::with_seed(1);
    for (i, spec) in model.inputs().iter().enumerate() {
        let file = if i == 0 {
            input.clone().or_else(|| default_input(0))
        } else {
            default_input(i)
        };
        let value = match file {
            Some(p) => {
                let t = tensor::read(&p).with_context(|| format!("reading {}", p.display()))?;
                println!("input {} from {}", spec.name, p.display());
                t.value
            }
            None => {
                println!(
                    "input {} {:?}{:?}: random values",
                    spec.name, spec.dtype, spec.dims
                );
                random_value(&mut rng, spec)
            }
        };
        feed.insert(spec.name.clone(), value);
    }
    let (spec, _) = &shares[stage - 1];
    println!(
        "{}: share {stage}/{} of {} ONNX nodes, {} weight bytes",
        model.onnx.name,
        shares.len(),
        spec.nodes.len(),
        spec.weight_bytes
    );
    let ctx = open_device(device)?.map(std::sync::Arc::new);
    let b = compare::bench_share(ctx, &shares, stage - 1, feed, opts)?;
    let line = |name: &str, t: &compare::Timing| {
        println!(
            "{name:<14} load {:>8.1} ms; per request over {} runs: min {:.2} ms, p50 {:.2} ms, p90 {:.2} ms",
            t.load_ms,
            t.runs_ms.len(),
            t.min(),
            t.percentile(50.0),
            t.percentile(90.0)
        )
    };
    if let Some(p) = &b.gpu_placement {
        println!("GPU executor: {p}");
    }
    if let (Some(tol), Some(v)) = (opts.verify, &b.verified) {
        println!(
            "kernels checked against tract at load: {} checked in {:.1} ms, {} differ by more than {tol:e}",
            v.checked,
            v.ms,
            v.mismatches.len()
        );
        for m in &v.mismatches {
            println!("  {} ({}): {:e}", m.group, m.pattern, m.rel_diff);
        }
    }
    if let Some(g) = &b.gpu {
        line("GPU executor", g);
    }
    line("tract", &b.tract);
    if let (Some(g), Some(d)) = (&b.gpu, b.max_rel_diff) {
        println!(
            "GPU/tract p50 latency {:.2}x; outputs differ by {d:e} relative (max|gpu - tract| / max|tract|)",
            g.percentile(50.0) / b.tract.percentile(50.0)
        );
    }
    Ok(())
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

fn load_signatures(
    model: Option<&std::path::Path>,
    signatures: Option<&std::path::Path>,
    rules: moirai_core::device::Backend,
) -> anyhow::Result<Vec<KernelSignature>> {
    match (model, signatures) {
        (_, Some(p)) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        }
        (Some(m), None) => model_signatures(m, rules),
        (None, None) => bail!("give --model M.onnx or --signatures S.json"),
    }
}

/// The distinct fused-kernel signatures of a model, as the orchestrator's coarsener emits them
/// with `rules`' fusion rules.
fn model_signatures(
    model: &std::path::Path,
    rules: moirai_core::device::Backend,
) -> anyhow::Result<Vec<KernelSignature>> {
    use moirai_model::coarsen::coarsen_file;
    use moirai_model::import::onnx::ImportOptions;
    let (_, coarse) = coarsen_file(model, rules, &ImportOptions::default())
        .with_context(|| format!("importing {}", model.display()))?;
    let sigs: Vec<KernelSignature> = coarse
        .distinct_signatures()
        .into_iter()
        .map(|(s, _)| s.clone())
        .collect();
    println!(
        "{}: {} ONNX nodes -> {} fused kernels, {} distinct signatures",
        model.display(),
        coarse.nodes_before,
        coarse.groups.len(),
        sigs.len()
    );
    Ok(sigs)
}

/// Sample values for an input: floats in [-1, 1), integers 0 or 1 (a valid id or index in
/// any table), booleans true.
fn random_value(
    rng: &mut fastrand::Rng,
    spec: &moirai_core::wire::data::TensorSpec,
) -> moirai_core::tensor::TensorValue {
    use moirai_core::kernel::DType;
    use moirai_core::tensor::{Number, TensorValue};
    let n = spec.elements() as usize;
    let numbers: Vec<Number> = (0..n)
        .map(|_| match spec.dtype {
            DType::F32 | DType::F16 => Number::Float(f64::from(rng.f32() * 2.0 - 1.0)),
            DType::Bool => Number::Int(1),
            _ => Number::Int(i64::from(rng.bool())),
        })
        .collect();
    TensorValue::from_numbers(spec.dtype, &spec.dims, &numbers)
        .unwrap_or_else(|_| TensorValue::f32(&spec.dims, vec![0.0; n]))
}
