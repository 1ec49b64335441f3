//! Row-wise normalisations: Softmax (any axis) and LayerNormalization (over the trailing axes),
//! one workgroup per row with a shared-memory tree reduction, then the fused epilogue.

use std::fmt::Write;

use moirai_core::kernel::KernelSignature;

use super::shader::{broadcast_index, Shader};
use super::{attr_f, attr_i, axis, epilogue, gpu_dtype, malformed, unsupported, KernelError, Plan};
use crate::gpu::buffers::GpuDType;

const THREADS: usize = 64;

pub fn plan(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    let head = &sig.nodes[0];
    let op = head.op_type.as_str();
    let i0 = *wiring[0]
        .first()
        .ok_or_else(|| malformed(sig, format!("{op} without input")))?;
    let dims = &sig.inputs[i0].dims;
    if dims.is_empty() {
        return Err(unsupported(sig, format!("{op} on a scalar")));
    }
    let rank = dims.len();
    let mut sh = Shader::default();
    let xn = sh.input(i0, GpuDType::F32);
    // (row length, stride between row elements, rows)
    let (len, inner, outer) = match op {
        "Softmax" => {
            let a = axis(attr_i(head, "axis", -1), rank);
            let inner: usize = dims[a + 1..].iter().product();
            (dims[a], inner, dims[..a].iter().product::<usize>())
        }
        "LayerNormalization" => {
            let a = axis(attr_i(head, "axis", -1), rank);
            let len: usize = dims[a..].iter().product();
            (len, 1, dims[..a].iter().product::<usize>())
        }
        other => return Err(unsupported(sig, format!("{other} as a normalisation head"))),
    };
    let rows = outer * inner;
    if rows == 0 || len == 0 {
        return Err(unsupported(sig, format!("{op} of an empty tensor")));
    }
    // LayerNormalization's optional Mean and InvStdDev outputs: one value per row.
    let stats = sig.outputs.len() - 1;
    if stats > usize::from(op == "LayerNormalization") * 2 {
        return Err(malformed(
            sig,
            format!("{op} with {} outputs", sig.outputs.len()),
        ));
    }
    if sig.outputs[1..].iter().any(|t| t.elements() != rows) {
        return Err(malformed(
            sig,
            "LayerNormalization statistics are not one per row",
        ));
    }
    let finish = if op == "Softmax" {
        // pass 1: max; pass 2: sum of exp; pass 3: write.
        format!(
            "    var m = -3.4028235e38;\n    for (var j = lid.x; j < {len}u; j += {THREADS}u) {{ m = max(m, {xn}[base + j * {inner}u]); }}\n    let mx = reduce_max(m, lid.x);\n    var s = 0.0;\n    for (var j = lid.x; j < {len}u; j += {THREADS}u) {{ s += exp({xn}[base + j * {inner}u] - mx); }}\n    let inv = 1.0 / reduce_sum(s, lid.x);\n    for (var j = lid.x; j < {len}u; j += {THREADS}u) {{ let idx = base + j * {inner}u; Y[idx] = epi(exp({xn}[idx] - mx) * inv, idx); }}\n"
        )
    } else {
        let w = &wiring[0];
        // Scale and bias broadcast (numpy rules) to the normalised shape, indexed by `j`.
        let norm_shape = &dims[axis(attr_i(head, "axis", -1), rank)..];
        let mut param = |j: usize| {
            let name = sh.input(j, GpuDType::F32);
            let ix = broadcast_index(norm_shape, &sig.inputs[j].dims, "j");
            format!("{name}[{ix}]")
        };
        let scale = match w.get(1) {
            Some(&j) => param(j),
            None => return Err(malformed(sig, "LayerNormalization without scale")),
        };
        let bias = match w.get(2) {
            Some(&j) => format!(" + {}", param(j)),
            None => String::new(),
        };
        let eps = attr_f(head, "epsilon", 1e-5);
        let mut stats_out = String::new();
        for o in 1..=stats {
            let name = sh.output(o, gpu_dtype(sig.outputs[o].dtype));
            let value = if o == 1 { "mean" } else { "rstd" };
            let _ = write!(stats_out, " {name}[row] = {value};");
        }
        format!(
            "    var s = 0.0;\n    for (var j = lid.x; j < {len}u; j += {THREADS}u) {{ s += {xn}[base + j]; }}\n    let mean = reduce_sum(s, lid.x) / {len}.0;\n    var q = 0.0;\n    for (var j = lid.x; j < {len}u; j += {THREADS}u) {{ let d = {xn}[base + j] - mean; q += d * d; }}\n    let rstd = inverseSqrt(reduce_sum(q, lid.x) / {len}.0 + {eps:?});\n    if (lid.x == 0u) {{{stats_out} }}\n    for (var j = lid.x; j < {len}u; j += {THREADS}u) {{ let idx = base + j; Y[idx] = epi(({xn}[idx] - mean) * rstd * {scale}{bias}, idx); }}\n"
        )
    };
    epilogue::emit(sig, 1, &wiring[1..], &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let gx = rows.clamp(1, 65535);
    let gy = rows.div_ceil(gx);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "var<workgroup> red: array<f32, {THREADS}>;\nfn reduce_sum(v: f32, l: u32) -> f32 {{\n    workgroupBarrier();\n    red[l] = v;\n    workgroupBarrier();\n    for (var k = {}u; k > 0u; k = k >> 1u) {{ if (l < k) {{ red[l] = red[l] + red[l + k]; }} workgroupBarrier(); }}\n    return red[0];\n}}\nfn reduce_max(v: f32, l: u32) -> f32 {{\n    workgroupBarrier();\n    red[l] = v;\n    workgroupBarrier();\n    for (var k = {}u; k > 0u; k = k >> 1u) {{ if (l < k) {{ red[l] = max(red[l], red[l + k]); }} workgroupBarrier(); }}\n    return red[0];\n}}",
        THREADS / 2,
        THREADS / 2
    );
    let _ = writeln!(
        s,
        "@compute @workgroup_size({THREADS})\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
    );
    // Uniform control flow: rows past the end still take part in the barriers.
    let _ = writeln!(
        s,
        "    let row = min(wid.y * {gx}u + wid.x, {}u);\n    let base = (row / {inner}u) * {}u + row % {inner}u;",
        rows - 1,
        len * inner
    );
    s.push_str(&finish.replace("Y[", &format!("{y}[")));
    let _ = writeln!(s, "}}");
    let (src, slots) = sh.finish(&s);
    Ok(Plan {
        steps: vec![(src, slots, [gx as u32, gy as u32, 1])],
        aliases: vec![None; sig.outputs.len()],
        consts: Vec::new(),
    })
}
