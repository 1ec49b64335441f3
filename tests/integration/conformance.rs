//! The ONNX backend node tests (the `onnx` package's own cases: one node, its inputs and the
//! expected outputs) against both executors, through the signature the coarsener gives the
//! node: tract through the CPU rules' signature ([`CpuKernel`]) and the WGSL kernels through
//! the wgpu rules' signature ([`GpuKernel`]).
//!
//! The cases are dumped by `tests/conformance/dump_onnx_node_cases.py` into the ONNX test-data
//! layout: from `MOIRAI_ONNX_NODE_CASES` if set, else into `target/onnx-node-cases` (once per
//! onnx version and script). Without python or onnx the test skips, saying why, except under
//! `CI`, where it fails: CI must run the suite.
//!
//! Each case ends, per executor, as passed, failed or unsupported. Unsupported always carries
//! the executor's own reason: an op no fusion rule puts in a kernel, a node folded as
//! shape-only work, a kernel that refuses to build, an element type the executor cannot hold.
//! A case that runs and differs from the expected output beyond the case's tolerance (numpy's
//! `allclose`: `|got - want| <= atol + rtol * |want|`, NaN equal to NaN) fails, named, with
//! its largest difference; the test asserts there are none. Every outcome with its full reason
//! is written to `target/onnx-node-report.txt`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moirai_agent::exec::cpu::CpuKernel;
use moirai_agent::exec::host::{HostData, HostTensor};
use moirai_agent::gpu::buffers::{readback_f32, readback_words};
use moirai_agent::gpu::{AdapterChoice, BufferPool, GpuContext, GpuTensor};
use moirai_agent::kernels::GpuKernel;
use moirai_core::kernel::{DType, KernelClass, TensorShape};
use moirai_model::coarsen::rules::{self, RuleSet};
use moirai_model::coarsen::{coarsen, FusedGroup};
use moirai_model::import::onnx::{self, dtype_of, ImportOptions, OnnxModel};
use tract_onnx::pb;
use tract_onnx::prelude::f16;

/// A directory of dumped cases (skips the dump).
const CASES_ENV: &str = "MOIRAI_ONNX_NODE_CASES";
/// The kernel tests' switch for machines without any adapter.
const SKIP_GPU_ENV: &str = "MOIRAI_SKIP_GPU_TESTS";
/// Cases with more elements than this (inputs and outputs together) are not run: per-case
/// work stays bounded.
const MAX_ELEMENTS: usize = 16 << 20;

/// The cases' directory, or why there is none.
fn cases_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(CASES_ENV) {
        let dir = PathBuf::from(dir);
        if !dir.join("manifest.json").is_file() {
            panic!(
                "{CASES_ENV}={}: no manifest.json there; write the cases with \
                 `python3 tests/conformance/dump_onnx_node_cases.py DIR`",
                dir.display()
            );
        }
        return Ok(dir);
    }
    // The test binary is target/<profile>/deps/integration-*: the cases go beside the builds.
    let exe = std::env::current_exe().map_err(|e| format!("no path to the test binary: {e}"))?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("{} is not under a target directory", exe.display()))?;
    let dir = target.join("onnx-node-cases");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/dump_onnx_node_cases.py");
    let python = |args: &[&std::ffi::OsStr]| {
        Command::new("python3")
            .arg(&script)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run python3: {e}"))
    };
    let check = python(&["--check".as_ref(), dir.as_os_str()])?;
    if check.status.success() {
        return Ok(dir);
    }
    let dump = python(&[dir.as_os_str()])?;
    if !dump.status.success() {
        let err = String::from_utf8_lossy(&dump.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            dump.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    let _ = writeln!(
        std::io::stderr(),
        "{}",
        String::from_utf8_lossy(&dump.stdout).trim()
    );
    Ok(dir)
}

/// A tensor of a case: its value as the executors take it, and its element type.
struct Value {
    dtype: DType,
    host: HostTensor,
}

impl Value {
    fn elements(&self) -> usize {
        self.host.dims.iter().product()
    }
}

/// Reads a TensorProto file into a host tensor (floats as f32, integers as i64).
fn read_tensor(path: &Path) -> Result<(String, Value), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = tract_onnx::tensor::proto_from_reader(&bytes[..])
        .map_err(|e| format!("{}: {e:#}", path.display()))?;
    let dtype = dtype_of(t.data_type).ok_or_else(|| {
        let name = pb::tensor_proto::DataType::try_from(t.data_type)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| format!("code {}", t.data_type));
        format!("element type {name}, which a host tensor cannot hold")
    })?;
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n: usize = dims.iter().product();
    let raw = &t.raw_data;
    let size = dtype.size_bytes();
    if !raw.is_empty() && raw.len() != n * size {
        return Err(format!("{} raw bytes for {n} elements", raw.len()));
    }
    let chunk = |i: usize| &raw[i * size..(i + 1) * size];
    let data = match dtype {
        DType::F32 if raw.is_empty() => HostData::F32(t.float_data.clone()),
        DType::F32 => HostData::F32(
            (0..n)
                .map(|i| f32::from_le_bytes(chunk(i).try_into().unwrap()))
                .collect(),
        ),
        DType::F16 if raw.is_empty() => HostData::F32(
            t.int32_data
                .iter()
                .map(|&b| f16::from_bits(b as u16).to_f32())
                .collect(),
        ),
        DType::F16 => HostData::F32(
            (0..n)
                .map(|i| f16::from_le_bytes(chunk(i).try_into().unwrap()).to_f32())
                .collect(),
        ),
        DType::I64 if raw.is_empty() => HostData::I64(t.int64_data.clone()),
        DType::I64 => HostData::I64(
            (0..n)
                .map(|i| i64::from_le_bytes(chunk(i).try_into().unwrap()))
                .collect(),
        ),
        DType::I32 | DType::I8 | DType::U8 | DType::Bool if raw.is_empty() => {
            let wrap = |x: i32| match dtype {
                DType::I8 => x as i8 as i64,
                DType::U8 => x as u8 as i64,
                DType::Bool => i64::from(x != 0),
                _ => x as i64,
            };
            HostData::I64(t.int32_data.iter().map(|&x| wrap(x)).collect())
        }
        DType::I32 => HostData::I64(
            (0..n)
                .map(|i| i32::from_le_bytes(chunk(i).try_into().unwrap()) as i64)
                .collect(),
        ),
        DType::I8 => HostData::I64(raw.iter().map(|&b| b as i8 as i64).collect()),
        DType::U8 => HostData::I64(raw.iter().map(|&b| b as i64).collect()),
        DType::Bool => HostData::I64(raw.iter().map(|&b| i64::from(b != 0)).collect()),
    };
    let len = match &data {
        HostData::F32(v) => v.len(),
        HostData::I64(v) => v.len(),
    };
    if len != n {
        return Err(format!("{len} values for dims {dims:?}"));
    }
    Ok((
        t.name.clone(),
        Value {
            dtype,
            host: HostTensor { dims, data },
        },
    ))
}

/// How one case ended on one executor.
enum Outcome {
    Passed,
    Failed(String),
    Unsupported(String),
}

/// A case read from disk: everything both executors need.
struct Case {
    name: String,
    rtol: f64,
    atol: f64,
    model: OnnxModel,
    inputs: HashMap<String, Value>,
    /// The graph outputs in order, with their expected values.
    outputs: Vec<(String, Value)>,
}

/// Reads case `dir`; `Err` is why neither executor can run it.
fn load_case(dir: &Path) -> Result<Case, String> {
    let meta: serde_json::Value = std::fs::read(dir.join("case.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("case.json: {e}"))?;
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    let tolerance = |k: &str| {
        meta[k]
            .as_f64()
            .ok_or_else(|| format!("case.json has no {k}"))
    };
    let (rtol, atol) = (tolerance("rtol")?, tolerance("atol")?);
    let set = &meta["data_sets"][0];
    if let Some(why) = set["skipped"].as_str() {
        return Err(format!("test data: {why}"));
    }
    let ops = meta["ops"].as_array().map(Vec::len).unwrap_or(0);
    if ops != 1 {
        return Err(format!(
            "{ops} nodes (an expanded function body): the suite runs one-node models"
        ));
    }
    let path = dir.join("model.onnx");
    let model = onnx::load(&path, &ImportOptions::default()).map_err(|e| {
        let msg = e.to_string();
        let msg = msg
            .strip_prefix(&format!("{}: ", path.display()))
            .unwrap_or(&msg);
        format!("import: {msg}")
    })?;
    let files = |kind: &str| -> Result<Vec<(String, Value)>, String> {
        let n = set[format!("{kind}s")]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        (0..n)
            .map(|i| {
                read_tensor(&dir.join(format!("test_data_set_0/{kind}_{i}.pb")))
                    .map_err(|e| format!("{kind} {i}: {e}"))
            })
            .collect()
    };
    let inputs = files("input")?;
    let outputs = files("output")?;
    let elements: usize = inputs
        .iter()
        .chain(&outputs)
        .map(|(_, v)| v.elements())
        .sum();
    if elements > MAX_ELEMENTS {
        return Err(format!(
            "{elements} elements, more than the suite's bound of {MAX_ELEMENTS}"
        ));
    }
    Ok(Case {
        name,
        rtol,
        atol,
        model,
        inputs: inputs.into_iter().collect(),
        outputs,
    })
}

/// Whether an op is one the fusion rules put in a kernel: it has a kernel class of its own
/// (an anchor: matmul, conv, pooling, normalisation, gather, element-wise, copy) or sits in
/// one of the rule sets' op lists (reductions).
fn in_a_kernel(op: &str) -> bool {
    rules::classify(&[op]) != KernelClass::Other
        || [
            &rules::VIEW[..],
            &rules::ELTWISE[..],
            &rules::REDUCE[..],
            rules::ROW_REDUCTION,
            &rules::COPY[..],
        ]
        .iter()
        .any(|list| list.contains(&op))
}

/// The group of the case's node and its operands' values, or why there is no kernel.
fn group_of<'c>(case: &'c Case, rules: &RuleSet) -> Result<(FusedGroup, Vec<&'c Value>), String> {
    let op = &case.model.nodes[0].op_type;
    if !in_a_kernel(op) {
        return Err(format!("{op} is in no fusion rule's op list"));
    }
    let coarse = coarsen(&case.model, rules);
    let group = coarse
        .groups
        .into_iter()
        .find(|g| g.nodes.contains(&0))
        .ok_or_else(|| format!("{op} is folded as shape-only work (computed at load time)"))?;
    let values = group
        .operands
        .iter()
        .map(|t| {
            case.inputs
                .get(t)
                .ok_or_else(|| format!("operand `{t}` is not a graph input with test data"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((group, values))
}

/// Compares one output: shape, element type, then every value (numpy `allclose`).
fn compare(
    case: &Case,
    name: &str,
    got: &HostTensor,
    got_dtype: Option<DType>,
    want: &Value,
) -> Result<(), String> {
    if got.dims != want.host.dims {
        return Err(format!(
            "output `{name}`: shape {:?}, expected {:?}",
            got.dims, want.host.dims
        ));
    }
    if got_dtype != Some(want.dtype) {
        return Err(format!(
            "output `{name}`: element type {got_dtype:?}, expected {:?}",
            want.dtype
        ));
    }
    let as_f64 = |d: &HostData, i: usize| match d {
        HostData::F32(v) => v[i] as f64,
        HostData::I64(v) => v[i] as f64,
    };
    let n = want.elements();
    let (mut bad, mut worst) = (0usize, None::<(usize, f64, f64, f64)>);
    for i in 0..n {
        let (a, b) = match (&got.data, &want.host.data) {
            // Integers compare exactly, beyond f64's 2^53 too.
            (HostData::I64(x), HostData::I64(y)) => {
                if x[i] == y[i] {
                    continue;
                }
                (x[i] as f64, y[i] as f64)
            }
            (g, w) => (as_f64(g, i), as_f64(w, i)),
        };
        let close = a == b
            || (a.is_nan() && b.is_nan())
            || (a - b).abs() <= case.atol + case.rtol * b.abs();
        if !close {
            bad += 1;
            let d = if (a - b).is_nan() {
                f64::INFINITY
            } else {
                (a - b).abs()
            };
            if worst.is_none_or(|w| d > w.3) {
                worst = Some((i, a, b, d));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, a, b, d)) => Err(format!(
            "output `{name}` {:?}: {bad} of {n} values differ; largest at flat index {i}: got {a}, expected {b} (|diff| {d:e} > {:e})",
            want.host.dims,
            case.atol + case.rtol * b.abs()
        )),
    }
}

/// Compares every expected output with what the group's kernel produced.
fn compare_all(case: &Case, group: &FusedGroup, got: &[(HostTensor, Option<DType>)]) -> Outcome {
    for (name, want) in &case.outputs {
        let Some(o) = group.outputs.iter().position(|t| t == name) else {
            return Outcome::Failed(format!("the kernel does not produce output `{name}`"));
        };
        let Some((t, dtype)) = got.get(o) else {
            return Outcome::Failed(format!("output {o} (`{name}`) missing from the run"));
        };
        if let Err(e) = compare(case, name, t, *dtype, want) {
            return Outcome::Failed(e);
        }
    }
    Outcome::Passed
}

fn run_cpu(case: &Case) -> Outcome {
    let (group, values) = match group_of(case, &RuleSet::cpu()) {
        Ok(g) => g,
        Err(why) => return Outcome::Unsupported(why),
    };
    let sig = &group.signature;
    let values: Vec<HostTensor> = values.into_iter().map(|v| v.host.clone()).collect();
    let kernel = match CpuKernel::build_with(sig, &values) {
        Ok(k) => k,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    match kernel.run_exact(&values) {
        Ok(got) => compare_all(case, &group, &got),
        Err(e) => Outcome::Failed(format!("run: {e}")),
    }
}

fn run_gpu(case: &Case, ctx: &GpuContext) -> Outcome {
    let (group, values) = match group_of(case, &RuleSet::wgpu()) {
        Ok(g) => g,
        Err(why) => return Outcome::Unsupported(why),
    };
    let sig = &group.signature;
    let kernel = match GpuKernel::build(ctx, sig) {
        Ok(k) => k,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    // Integers are i32 on the device.
    let narrow = |v: &Value| match &v.host.data {
        HostData::I64(x) => x.iter().any(|&x| i32::try_from(x).is_err()),
        HostData::F32(_) => false,
    };
    if values
        .iter()
        .copied()
        .chain(case.outputs.iter().map(|(_, v)| v))
        .any(narrow)
    {
        return Outcome::Unsupported(
            "int64 values beyond the i32 range the GPU holds integers in".into(),
        );
    }
    let pool = BufferPool::default();
    let mut dev = Vec::with_capacity(values.len());
    for v in &values {
        match v.host.upload(ctx, &pool) {
            Ok(t) => dev.push(t),
            Err(e) => return Outcome::Unsupported(format!("upload: {e}")),
        }
    }
    let outs = match kernel.run(ctx, &pool, &dev) {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("run: {e}")),
    };
    let mut got = Vec::with_capacity(outs.len());
    for (t, shape) in outs.iter().zip(&sig.outputs) {
        match read(ctx, t, shape) {
            Ok(h) => got.push((h, Some(shape.dtype))),
            Err(e) => return Outcome::Failed(format!("readback: {e}")),
        }
    }
    compare_all(case, &group, &got)
}

/// A device tensor back on the host: floats as f32, integers (i32 on the device) as i64.
fn read(ctx: &GpuContext, t: &GpuTensor, shape: &TensorShape) -> Result<HostTensor, String> {
    Ok(match shape.dtype {
        DType::F32 | DType::F16 => {
            HostTensor::f32(&t.dims, readback_f32(ctx, t).map_err(|e| e.to_string())?)
        }
        _ => HostTensor::i64(
            &t.dims,
            readback_words(ctx, t)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|w| w as i32 as i64)
                .collect(),
        ),
    })
}

/// Runs `f`, turning a panic into a failure that says where: a panic on a case's input is a
/// bug, not an unsupported case.
fn guarded(f: impl FnOnce() -> Outcome) -> Outcome {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        Outcome::Failed(format!("panicked: {msg}"))
    })
}

/// Outcomes of one executor.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<(String, String)>,
    /// Reason (digits folded, for grouping) -> cases.
    unsupported: BTreeMap<String, Vec<String>>,
    unsupported_count: usize,
    time: Duration,
    /// Every case's line, for the report file.
    lines: Vec<String>,
}

impl Tally {
    fn add(&mut self, case: &str, outcome: Outcome) {
        match outcome {
            Outcome::Passed => {
                self.passed += 1;
                self.lines.push(format!("{case}: passed"));
            }
            Outcome::Failed(why) => {
                self.lines.push(format!("{case}: FAILED: {why}"));
                self.failed.push((case.to_string(), why));
            }
            Outcome::Unsupported(why) => {
                self.lines.push(format!("{case}: unsupported: {why}"));
                self.unsupported_count += 1;
                self.unsupported
                    .entry(group_key(&why))
                    .or_default()
                    .push(case.to_string());
            }
        }
    }

    fn summary(&self, executor: &str, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "{executor}: passed {}, failed {}, unsupported {} ({:.1} s)",
            self.passed,
            self.failed.len(),
            self.unsupported_count,
            self.time.as_secs_f64()
        );
        let mut reasons: Vec<(&String, &Vec<String>)> = self.unsupported.iter().collect();
        reasons.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        let _ = writeln!(out, "  unsupported, by reason:");
        for (why, cases) in reasons.iter().take(30) {
            let _ = writeln!(out, "    {:4}  {why}  (e.g. {})", cases.len(), cases[0]);
        }
        if reasons.len() > 30 {
            let rest: usize = reasons[30..].iter().map(|r| r.1.len()).sum();
            let _ = writeln!(
                out,
                "    {rest:4}  ({} other reasons: see the report)",
                reasons.len() - 30
            );
        }
        for (case, why) in &self.failed {
            let _ = writeln!(out, "  FAILED {case}: {why}");
        }
    }
}

/// A reason with its numbers folded to `#`, so reasons that differ only in a shape group.
fn group_key(why: &str) -> String {
    let mut out = String::with_capacity(why.len());
    let mut in_number = false;
    for c in why.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[test]
fn onnx_node_conformance_suite_runs_on_both_executors_without_a_failure() {
    let dir = match cases_dir() {
        Ok(d) => d,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI is set, so the ONNX node suite must run, but it cannot: {why}")
        }
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "ONNX node suite skipped: {why}");
            return;
        }
    };
    let ctx = match GpuContext::open(&AdapterChoice::from_env()) {
        Ok(c) => Some(c),
        Err(e) if std::env::var_os(SKIP_GPU_ENV).is_some() => {
            let _ = writeln!(
                std::io::stderr(),
                "ONNX node suite: no adapter ({e}); the GPU executor is skipped because {SKIP_GPU_ENV} is set"
            );
            None
        }
        Err(e) => panic!("no wgpu adapter for the ONNX node suite: {e}. Install mesa-vulkan-drivers (lavapipe) or set {SKIP_GPU_ENV}=1"),
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "{}: no cases", dir.display());

    let start = Instant::now();
    let (mut cpu, mut gpu) = (Tally::default(), Tally::default());
    for d in &dirs {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let case = match load_case(d) {
            Ok(c) => c,
            Err(why) => {
                cpu.add(&name, Outcome::Unsupported(why.clone()));
                gpu.add(&name, Outcome::Unsupported(why));
                continue;
            }
        };
        let t = Instant::now();
        cpu.add(&case.name, guarded(|| run_cpu(&case)));
        cpu.time += t.elapsed();
        let t = Instant::now();
        let outcome = match &ctx {
            Some(ctx) => guarded(|| run_gpu(&case, ctx)),
            None => Outcome::Unsupported(format!("no adapter ({SKIP_GPU_ENV} is set)")),
        };
        gpu.add(&case.name, outcome);
        gpu.time += t.elapsed();
    }
    let mut out = format!(
        "ONNX node conformance: {} cases from {} in {:.1} s\n",
        dirs.len(),
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    cpu.summary("tract (CpuKernel, cpu rules)", &mut out);
    gpu.summary("wgpu (GpuKernel, wgpu rules)", &mut out);
    let adapter = ctx
        .as_ref()
        .map(|c| c.report().to_string())
        .unwrap_or_else(|| "none".into());
    out.push_str(&format!("wgpu adapter: {adapter}\n"));
    // Straight to stderr: the harness captures print macros, and CI's log must show the counts.
    let _ = writeln!(std::io::stderr(), "{out}");
    if let Some(target) = dir.parent() {
        let report = target.join("onnx-node-report.txt");
        let body = format!(
            "{out}\n== tract ==\n{}\n\n== wgpu ==\n{}\n",
            cpu.lines.join("\n"),
            gpu.lines.join("\n")
        );
        if std::fs::write(&report, body).is_ok() {
            let _ = writeln!(std::io::stderr(), "every case: {}", report.display());
        }
    }
    let failed: Vec<String> = cpu
        .failed
        .iter()
        .map(|(c, _)| format!("{c} (tract)"))
        .chain(gpu.failed.iter().map(|(c, _)| format!("{c} (wgpu)")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} ONNX node cases differ from their expected outputs: {}",
        failed.len(),
        failed.join(", ")
    );
}
