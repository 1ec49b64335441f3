//! Gather along any axis (embedding lookups), with the fused epilogue (e.g. the position
//! embedding add). Indices arrive as `i32` (narrowed from ONNX `int64` on upload); negative
//! indices count from the end and out-of-range ones are clamped rather than read out of bounds.

use std::fmt::Write;

use moirai_shared::kernel::KernelSignature;

use super::shader::{grid_1d, Shader};
use super::{attr_i, axis, epilogue, gpu_dtype, malformed, KernelError, Plan};
use crate::gpu::buffers::GpuDType;

pub fn plan(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    let head = &sig.nodes[0];
    let w = &wiring[0];
    if head.op_type != "Gather" || w.len() != 2 {
        return Err(malformed(sig, "Gather needs data and indices"));
    }
    let data = &sig.inputs[w[0]].dims;
    let nidx = sig.inputs[w[1]].elements();
    if data.is_empty() {
        return Err(malformed(sig, "Gather from a scalar"));
    }
    let a = axis(attr_i(head, "axis", 0), data.len());
    let d = data[a];
    let inner: usize = data[a + 1..].iter().product();
    let out = &sig.outputs[0].dims;
    let n_out: usize = out.iter().product();
    let mut sh = Shader::default();
    let dn = sh.input(w[0], gpu_dtype(sig.inputs[w[0]].dtype));
    let in_ = sh.input(w[1], GpuDType::I32);
    epilogue::emit(sig, &sig.nodes[1..], &wiring[1..], out, &mut sh)?;
    let y = sh.output(0, GpuDType::F32);
    let (grid, gid) = grid_1d(n_out);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "@compute @workgroup_size(64)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
    );
    let _ = writeln!(
        s,
        "    let idx = {gid};\n    if (idx >= {n_out}u) {{ return; }}"
    );
    let _ = writeln!(
        s,
        "    let i = idx % {inner}u;\n    let q = (idx / {inner}u) % {nidx}u;\n    let o = idx / {};",
        inner * nidx.max(1)
    );
    let _ = writeln!(
        s,
        "    var k = {in_}[q];\n    if (k < 0) {{ k += {d}; }}\n    let kk = u32(clamp(k, 0, {}));",
        d as i64 - 1
    );
    let _ = writeln!(
        s,
        "    {y}[idx] = epi(f32({dn}[(o * {d}u + kk) * {inner}u + i]), idx);\n}}"
    );
    let (src, slots) = sh.finish(&s);
    Ok(Plan {
        steps: vec![(src, slots, grid)],
        aliases: vec![None],
        consts: Vec::new(),
    })
}
