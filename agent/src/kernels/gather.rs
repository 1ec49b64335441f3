//! Gather along any axis (embedding lookups), with the fused epilogue (e.g. the position
//! embedding add). Indices arrive as `i32` (narrowed from ONNX `int64` on upload); negative
//! indices count from the end and out-of-range ones are clamped rather than read out of bounds.
//!
//! Views in front of the Gather (a Flatten of a mask before it is gathered) are free: the data
//! is read under the shape the view gives it.

use std::fmt::Write;

use moirai_core::kernel::KernelSignature;

use super::shader::{grid_1d, Shader};
use moirai_core::kernel::FusedNode;

use super::{
    attr_i, axis, epilogue, gpu_dtype, is_view_op, malformed, unsupported, KernelError, Plan,
};
use crate::gpu::buffers::GpuDType;

pub fn plan(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    let views = sig
        .nodes
        .iter()
        .take_while(|n| is_view_op(&n.op_type))
        .count();
    let head = sig
        .nodes
        .get(views)
        .ok_or_else(|| malformed(sig, "views without a Gather"))?;
    // Data and indices: the first input and the Gather's own operand after views, else the
    // Gather's two operands.
    let (wd, wi) = match (views, &wiring[views][..]) {
        (0, [d, i]) => (*d, *i),
        (v, [i]) if v > 0 => (wiring[0][0], *i),
        _ => return Err(malformed(sig, "Gather needs data and indices")),
    };
    if head.op_type != "Gather" {
        // GatherElements and GatherND index differently: kernels of their own.
        return Err(unsupported(
            sig,
            format!("{} as a gather head", head.op_type),
        ));
    }
    let mut data_dims = sig.inputs[wd].dims.clone();
    for node in &sig.nodes[..views] {
        data_dims = view_dims(node, &data_dims)
            .ok_or_else(|| unsupported(sig, format!("{} before a Gather", node.op_type)))?;
    }
    let data = &data_dims;
    let nidx = sig.inputs[wi].elements();
    if data.is_empty() {
        return Err(malformed(sig, "Gather from a scalar"));
    }
    let a = axis(attr_i(head, "axis", 0), data.len());
    let d = data[a];
    let inner: usize = data[a + 1..].iter().product();
    let out = &sig.outputs[0].dims;
    let n_out: usize = out.iter().product();
    let mut sh = Shader::default();
    let dn = sh.input(wd, gpu_dtype(sig.inputs[wd].dtype));
    let in_ = sh.input(wi, GpuDType::I32);
    epilogue::emit(sig, views + 1, &wiring[views + 1..], &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
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

/// The shape a view gives `dims`, where its attributes alone say it (Flatten, Identity).
fn view_dims(node: &FusedNode, dims: &[usize]) -> Option<Vec<usize>> {
    match node.op_type.as_str() {
        "Identity" | "Dropout" => Some(dims.to_vec()),
        "Flatten" => {
            let a = attr_i(node, "axis", 1);
            let a = if a < 0 { a + dims.len() as i64 } else { a };
            let a = usize::try_from(a).ok()?.min(dims.len());
            Some(vec![dims[..a].iter().product(), dims[a..].iter().product()])
        }
        _ => None,
    }
}
