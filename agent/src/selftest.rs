//! `moirai-agent --self-test`: the checks a freshly built (or cross-compiled, or rolled-out)
//! binary runs before it is trusted on a board.
//!
//! 1. adapter probe: which wgpu adapters this board has (none is not a failure: the agent
//!    then runs its kernels on the CPU executor);
//! 2. one kernel (a matmul) on the CPU executor (tract), compared with a plain loop;
//! 3. the same kernel on the GPU, compared with the CPU, when an adapter exists;
//! 4. protocol round trip: a birth through the wire codec and the topic parser, and the
//!    codec's refusal of a payload from another protocol version.
//!
//! Nothing here touches the network, so it also runs under QEMU user-mode emulation
//! (`cross/check.sh`).

use std::collections::BTreeMap;
use std::fmt;

use moirai_core::kernel::{DType, FusedNode, KernelClass, KernelSignature, TensorShape};
use moirai_core::wire::life::Birth;
use moirai_core::wire::topic::{agent_name, Topics};
use moirai_core::wire::{self, Topic, TopicKind, WireError, PROTOCOL_VERSION};

use crate::exec::cpu::{CpuError, CpuKernel};
use crate::exec::host::{sample_inputs, HostData, HostTensor};
use crate::gpu::buffers::{readback_f32, BufferPool};
use crate::gpu::context::{AdapterChoice, GpuContext, GpuError};
use crate::kernels::{GpuKernel, KernelError};

/// Why a self-test check failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error("opening adapter {adapter}: {source}")]
    Adapter {
        adapter: String,
        #[source]
        source: GpuError,
    },
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(transparent)]
    Gpu(#[from] KernelError),
    #[error("reading back the GPU result: {0}")]
    Readback(#[source] GpuError),
    #[error("{what}: element {index} is {got}, expected {want}")]
    Mismatch {
        what: &'static str,
        index: usize,
        got: f32,
        want: f32,
    },
    #[error("{what}: {got} elements, expected {want}")]
    Length {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// How one check ended.
#[derive(Debug)]
pub enum Outcome {
    Pass(String),
    /// Not applicable on this board (e.g. no GPU): not a failure.
    Skip(String),
    Fail(SelfTestError),
}

/// One named check and its outcome.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass(s) => write!(f, "PASS {}: {s}", self.name),
            Outcome::Skip(s) => write!(f, "SKIP {}: {s}", self.name),
            Outcome::Fail(e) => write!(f, "FAIL {}: {e}", self.name),
        }
    }
}

/// All checks, in order.
#[derive(Debug)]
pub struct SelfTest {
    pub checks: Vec<Check>,
}

impl SelfTest {
    /// True when no check failed (skips are fine).
    pub fn passed(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Fail(_)))
    }
}

fn outcome(r: Result<String, SelfTestError>) -> Outcome {
    match r {
        Ok(s) => Outcome::Pass(s),
        Err(e) => Outcome::Fail(e),
    }
}

/// Runs every check; `choice` picks the adapter as in connected mode.
pub fn run(choice: &AdapterChoice) -> SelfTest {
    let mut checks = Vec::new();

    let (probe, ctx) = probe_adapter(choice);
    checks.push(Check {
        name: "adapter probe",
        outcome: probe,
    });

    let sig = matmul_signature(5, 12, 7);
    let inputs = sample_inputs(&sig, 11);
    let cpu = cpu_kernel(&sig, &inputs);
    let cpu_out = cpu.as_ref().ok().map(|(_, out)| out.clone());
    checks.push(Check {
        name: "cpu kernel",
        outcome: outcome(cpu.map(|(msg, _)| msg)),
    });

    let gpu = match (&ctx, &cpu_out) {
        (Some(ctx), Some(want)) => outcome(gpu_kernel(ctx, &sig, &inputs, want)),
        (None, _) => Outcome::Skip("no adapter".into()),
        (Some(_), None) => Outcome::Skip("the CPU reference failed".into()),
    };
    checks.push(Check {
        name: "gpu kernel",
        outcome: gpu,
    });

    checks.push(Check {
        name: "protocol round trip",
        outcome: outcome(protocol_round_trip()),
    });
    SelfTest { checks }
}

fn probe_adapter(choice: &AdapterChoice) -> (Outcome, Option<GpuContext>) {
    let listed = GpuContext::list_adapters();
    let names: Vec<String> = listed
        .iter()
        .map(|a| format!("{} ({:?})", a.name, a.device_type))
        .collect();
    match GpuContext::open(choice) {
        Ok(ctx) => {
            let msg = format!(
                "{} adapter(s): {}; using {}",
                listed.len(),
                names.join(", "),
                ctx.report()
            );
            (Outcome::Pass(msg), Some(ctx))
        }
        Err(GpuError::NoAdapter) => (
            Outcome::Pass("no GPU adapter: kernels run on the CPU executor (tract)".into()),
            None,
        ),
        Err(source) => (
            Outcome::Fail(SelfTestError::Adapter {
                adapter: format!("{choice:?}"),
                source,
            }),
            None,
        ),
    }
}

fn matmul_signature(m: usize, k: usize, n: usize) -> KernelSignature {
    let f32s = |dims: &[usize]| TensorShape {
        dims: dims.to_vec(),
        dtype: DType::F32,
    };
    KernelSignature {
        class: KernelClass::MatMul,
        nodes: vec![FusedNode {
            op_type: "MatMul".into(),
            attrs: BTreeMap::new(),
        }],
        inputs: vec![f32s(&[m, k]), f32s(&[k, n])],
        outputs: vec![f32s(&[m, n])],
        flops: (2 * m * k * n) as u64,
        bytes: (4 * (m * k + k * n + m * n)) as u64,
        dag: None,
        shapes: Vec::new(),
    }
}

fn f32_data<'a>(t: &'a HostTensor, what: &'static str) -> Result<&'a [f32], SelfTestError> {
    match &t.data {
        HostData::F32(v) => Ok(v),
        HostData::I64(_) => Err(SelfTestError::Protocol(format!("{what} is not f32"))),
    }
}

/// `a` (m x k) times `b` (k x n), the plain way.
fn reference_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

fn compare(what: &'static str, got: &[f32], want: &[f32]) -> Result<f32, SelfTestError> {
    if got.len() != want.len() {
        return Err(SelfTestError::Length {
            what,
            got: got.len(),
            want: want.len(),
        });
    }
    let mut worst = 0.0f32;
    for (index, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if d.is_nan() || d > 1e-4 + 1e-4 * w.abs() {
            return Err(SelfTestError::Mismatch {
                what,
                index,
                got: g,
                want: w,
            });
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

fn cpu_kernel(
    sig: &KernelSignature,
    inputs: &[HostTensor],
) -> Result<(String, Vec<f32>), SelfTestError> {
    let (m, k, n) = (
        sig.inputs[0].dims[0],
        sig.inputs[0].dims[1],
        sig.outputs[0].dims[1],
    );
    let kernel = CpuKernel::build(sig)?;
    let out = kernel.run(inputs)?;
    let got = out.first().ok_or(SelfTestError::Length {
        what: "cpu kernel outputs",
        got: 0,
        want: 1,
    })?;
    let got = f32_data(got, "cpu kernel output")?.to_vec();
    let want = reference_matmul(
        f32_data(&inputs[0], "input a")?,
        f32_data(&inputs[1], "input b")?,
        m,
        k,
        n,
    );
    let worst = compare("cpu kernel", &got, &want)?;
    Ok((
        format!(
            "{} {m}x{k} by {k}x{n} on tract matches a plain loop (max |diff| {worst:.1e})",
            sig.pattern()
        ),
        got,
    ))
}

fn gpu_kernel(
    ctx: &GpuContext,
    sig: &KernelSignature,
    inputs: &[HostTensor],
    want: &[f32],
) -> Result<String, SelfTestError> {
    let pool = BufferPool::default();
    let kernel = GpuKernel::build(ctx, sig)?;
    let dev = inputs
        .iter()
        .map(|h| h.upload(ctx, &pool))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SelfTestError::Readback)?;
    let outs = kernel.run(ctx, &pool, &dev)?;
    let out = outs.first().ok_or(SelfTestError::Length {
        what: "gpu kernel outputs",
        got: 0,
        want: 1,
    })?;
    let got = readback_f32(ctx, out).map_err(SelfTestError::Readback)?;
    let worst = compare("gpu kernel", &got, want)?;
    Ok(format!(
        "{} on {} matches the CPU executor (max |diff| {worst:.1e})",
        sig.pattern(),
        ctx.info.name
    ))
}

/// A bounded wire string from `s`.
fn fit<T: std::str::FromStr>(s: &str) -> Result<T, SelfTestError> {
    s.parse()
        .map_err(|_| SelfTestError::Protocol(format!("`{s}` does not fit its wire field")))
}

fn protocol_round_trip() -> Result<String, SelfTestError> {
    let name = agent_name("self-test")?;
    let birth = Birth {
        name: name.clone(),
        board: fit("self-test")?,
        adapter: fit("cpu")?,
        backend: fit("cpu")?,
        memory_bytes: 1 << 30,
        peak_gflops: 12.5,
        mem_gbps: 3.25,
        emulation_scale: Some(1.5),
        agent_version: fit(env!("CARGO_PKG_VERSION"))?,
        protocol: PROTOCOL_VERSION,
        bd_seq: 42,
    };
    let bytes = wire::encode(&birth)?;
    let back: Birth = wire::decode(&bytes)?;
    if back != birth {
        return Err(SelfTestError::Protocol(format!(
            "birth changed in the round trip: {birth:?} became {back:?}"
        )));
    }
    // A payload from another protocol version must be refused, not misread.
    let mut other = bytes.clone();
    other[0] = PROTOCOL_VERSION.wrapping_add(1);
    match wire::decode::<Birth>(&other) {
        Err(WireError::Version { .. }) => {}
        Err(e) => {
            return Err(SelfTestError::Protocol(format!(
                "a version {} payload was refused for the wrong reason: {e}",
                other[0]
            )))
        }
        Ok(_) => {
            return Err(SelfTestError::Protocol(format!(
                "a version {} payload was accepted",
                other[0]
            )))
        }
    }
    let topics = Topics::default();
    let topic = topics.agent(&name, TopicKind::Birth);
    match topics.parse(&topic)? {
        Topic::Agent { name: n, kind } if n == name && kind == TopicKind::Birth => {}
        t => {
            return Err(SelfTestError::Protocol(format!(
                "topic {topic} parsed as {t:?}"
            )))
        }
    }
    Ok(format!(
        "protocol v{PROTOCOL_VERSION}: birth of {} bytes encodes and decodes; version {} refused; {topic} parses",
        bytes.len(),
        other[0]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_matmul_multiplies_small_matrices() {
        // [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50]
        let c = reference_matmul(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2);
        assert_eq!(c, vec![19.0, 22.0, 43.0, 50.0]);
    }

    #[test]
    fn compare_reports_the_first_wrong_element() {
        let e = compare("x", &[1.0, 2.5, 3.0], &[1.0, 2.0, 3.0]).unwrap_err();
        assert!(matches!(e, SelfTestError::Mismatch { index: 1, .. }), "{e}");
        assert!(compare("x", &[1.0], &[1.0, 2.0]).is_err());
        assert!(compare("x", &[f32::NAN], &[1.0]).is_err());
    }

    #[test]
    fn cpu_kernel_and_protocol_checks_pass_on_this_machine() {
        let sig = matmul_signature(3, 4, 5);
        let inputs = sample_inputs(&sig, 1);
        let (msg, out) = cpu_kernel(&sig, &inputs).unwrap();
        assert_eq!(out.len(), 15, "{msg}");
        protocol_round_trip().unwrap();
    }

    #[test]
    fn a_failed_check_fails_the_self_test() {
        let t = SelfTest {
            checks: vec![
                Check {
                    name: "a",
                    outcome: Outcome::Skip("n/a".into()),
                },
                Check {
                    name: "b",
                    outcome: Outcome::Fail(SelfTestError::Protocol("x".into())),
                },
            ],
        };
        assert!(!t.passed());
        assert!(t.checks[1].to_string().starts_with("FAIL b:"));
    }
}
