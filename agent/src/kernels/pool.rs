//! Max / Average / GlobalAverage / GlobalMax pooling over NCHW, with the fused epilogue.

use std::fmt::Write;

use moirai_shared::kernel::KernelSignature;

use super::conv::Window;
use super::shader::{grid_1d, Shader};
use super::{attr_i, epilogue, gpu_dtype, malformed, unsupported, KernelError, Plan};
use crate::gpu::buffers::GpuDType;

pub fn plan(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    let head = &sig.nodes[0];
    let op = head.op_type.as_str();
    let i0 = *wiring[0]
        .first()
        .ok_or_else(|| malformed(sig, "pool without input"))?;
    let x = &sig.inputs[i0].dims;
    let out = &sig
        .node_shape(0)
        .ok_or_else(|| malformed(sig, "pool without output"))?
        .dims;
    let global = op.starts_with("Global");
    // A global pool may be followed by a Flatten: its output is then [N, C].
    if x.len() != 4 || !(out.len() == 4 || (global && out.len() == 2)) {
        return Err(unsupported(sig, format!("{op} other than 2-D")));
    }
    let (h, w) = (x[2], x[3]);
    let (oh, ow) = if out.len() == 4 {
        (out[2], out[3])
    } else {
        (1, 1)
    };
    let n_out: usize = out.iter().product();
    let (win, reduce) = match op {
        "GlobalAveragePool" | "GlobalMaxPool" => (
            Window {
                kernel: [h, w],
                stride: [1, 1],
                dilation: [1, 1],
                pad: [0, 0],
            },
            if op == "GlobalMaxPool" { "max" } else { "avg" },
        ),
        "MaxPool" | "AveragePool" => (
            Window::from_attrs(head, None, [h, w], [oh, ow])
                .ok_or_else(|| malformed(sig, "pool window attributes"))?,
            if op == "MaxPool" { "max" } else { "avg" },
        ),
        other => return Err(unsupported(sig, format!("{other} as a pool head"))),
    };
    let count_pad = attr_i(head, "count_include_pad", 0) != 0;
    let mut sh = Shader::default();
    let xn = sh.input(i0, GpuDType::F32);
    epilogue::emit(sig, 1, &wiring[1..], &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let (grid, gid) = grid_1d(n_out);
    let init = if reduce == "max" {
        "-3.4028235e38"
    } else {
        "0.0"
    };
    let acc = if reduce == "max" {
        "acc = max(acc, v);"
    } else {
        "acc += v;"
    };
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
        "    let ox = idx % {ow}u;\n    let oy = (idx / {ow}u) % {oh}u;"
    );
    let _ = writeln!(s, "    let base = (idx / {}u) * {}u;", oh * ow, h * w);
    let _ = writeln!(s, "    var acc = {init};\n    var cnt = 0u;");
    let _ = writeln!(s, "    for (var ky = 0u; ky < {}u; ky++) {{", win.kernel[0]);
    let _ = writeln!(
        s,
        "        let iy = i32(oy * {}u + ky * {}u) - {};\n        if (iy < 0 || iy >= {h}) {{ continue; }}",
        win.stride[0], win.dilation[0], win.pad[0]
    );
    let _ = writeln!(
        s,
        "        for (var kx = 0u; kx < {}u; kx++) {{",
        win.kernel[1]
    );
    let _ = writeln!(
        s,
        "            let ix = i32(ox * {}u + kx * {}u) - {};\n            if (ix < 0 || ix >= {w}) {{ continue; }}",
        win.stride[1], win.dilation[1], win.pad[1]
    );
    let _ = writeln!(
        s,
        "            let v = {xn}[base + u32(iy) * {w}u + u32(ix)];\n            {acc}\n            cnt += 1u;"
    );
    let _ = writeln!(s, "        }}\n    }}");
    let fin = if reduce == "max" {
        "acc".to_string()
    } else if count_pad {
        format!("acc / {}.0", win.kernel[0] * win.kernel[1])
    } else {
        "acc / f32(max(cnt, 1u))".to_string()
    };
    let _ = writeln!(s, "    {y}[idx] = epi({fin}, idx);\n}}");
    let (src, slots) = sh.finish(&s);
    Ok(Plan {
        steps: vec![(src, slots, grid)],
        aliases: vec![None],
        consts: Vec::new(),
    })
}
