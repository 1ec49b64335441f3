//! Max / Average / GlobalAverage / GlobalMax pooling over NCHW, with the fused epilogue.

use std::fmt::Write;

use moirai_core::kernel::{FusedNode, KernelSignature};

use super::conv::Window;
use super::shader::{grid_1d, Shader};
use super::{
    attr_i, attr_is, attr_s, epilogue, gpu_dtype, malformed, unsupported, KernelError, Plan,
};

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
    // Where the padded input ends: with ceil_mode the last window may reach past it, and
    // count_include_pad counts padding, not what lies beyond.
    let pad_end = end_pads(head, &win, [h, w], [oh, ow]);
    // MaxPool's optional Indices output: the flat index of each maximum in the input
    // (row-major over H x W, or column-major with storage_order = 1), padding not counted.
    let indices = match (op, sig.outputs.len()) {
        (_, 1) => false,
        ("MaxPool", 2) if sig.outputs[1].elements() == n_out => true,
        _ => {
            return Err(malformed(
                sig,
                format!("{op} with {} outputs", sig.outputs.len()),
            ))
        }
    };
    let spatial = if attr_i(head, "storage_order", 0) != 0 {
        format!("u32(ix) * {h}u + u32(iy)")
    } else {
        format!("u32(iy) * {w}u + u32(ix)")
    };
    let mut sh = Shader::default();
    // Integer inputs (uint8 images) are i32 on the device.
    let xn = sh.input(i0, gpu_dtype(sig.inputs[i0].dtype));
    epilogue::emit(sig, 1, &wiring[1..], &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let arg_out = indices.then(|| sh.output(1, gpu_dtype(sig.outputs[1].dtype)));
    let (grid, gid) = grid_1d(n_out);
    let init = if reduce == "max" {
        "-3.4028235e38"
    } else {
        "0.0"
    };
    // The first maximum wins, as in ONNX's reference.
    let acc = match (reduce, indices) {
        ("max", false) => "acc = max(acc, v);".to_string(),
        ("max", true) => {
            format!("if (v > acc || cnt == 0u) {{ acc = v; arg = i32(base + {spatial}); }}")
        }
        _ => "acc += v;".to_string(),
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
    let _ = writeln!(
        s,
        "    var acc = {init};\n    var cnt = 0u;\n    var padded = 0u;\n    var arg = 0;"
    );
    let _ = writeln!(s, "    for (var ky = 0u; ky < {}u; ky++) {{", win.kernel[0]);
    let _ = writeln!(
        s,
        "        let iy = i32(oy * {}u + ky * {}u) - {};",
        win.stride[0], win.dilation[0], win.pad[0]
    );
    let _ = writeln!(
        s,
        "        for (var kx = 0u; kx < {}u; kx++) {{",
        win.kernel[1]
    );
    let _ = writeln!(
        s,
        "            let ix = i32(ox * {}u + kx * {}u) - {};\n            if (iy < {} && ix < {}) {{ padded += 1u; }}\n            if (iy < 0 || iy >= {h} || ix < 0 || ix >= {w}) {{ continue; }}",
        win.stride[1],
        win.dilation[1],
        win.pad[1],
        h + pad_end[0],
        w + pad_end[1]
    );
    let _ = writeln!(
        s,
        "            let v = f32({xn}[base + u32(iy) * {w}u + u32(ix)]);\n            {acc}\n            cnt += 1u;"
    );
    let _ = writeln!(s, "        }}\n    }}");
    let fin = if reduce == "max" {
        "acc".to_string()
    } else if count_pad {
        "acc / f32(max(padded, 1u))".to_string()
    } else {
        "acc / f32(max(cnt, 1u))".to_string()
    };
    let _ = writeln!(s, "    {y}[idx] = epi({fin}, idx);");
    if let Some(a) = &arg_out {
        let _ = writeln!(s, "    {a}[idx] = arg;");
    }
    let _ = writeln!(s, "}}");
    let (src, slots) = sh.finish(&s);
    Ok(Plan {
        steps: vec![(src, slots, grid)],
        aliases: vec![None; sig.outputs.len()],
        consts: Vec::new(),
    })
}

/// Padding after the input (bottom, right), from `pads` or `auto_pad`.
fn end_pads(
    node: &FusedNode,
    win: &Window,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
) -> [usize; 2] {
    match attr_s(node, "auto_pad").unwrap_or("NOTSET") {
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = [0; 2];
            for d in 0..2 {
                let need = output_hw[d].saturating_sub(1) * win.stride[d]
                    + win.kernel[d].saturating_sub(1) * win.dilation[d]
                    + 1;
                p[d] = need.saturating_sub(input_hw[d]).saturating_sub(win.pad[d]);
            }
            p
        }
        "VALID" => [0, 0],
        _ => match attr_is(node, "pads") {
            Some(v) if v.len() == 4 => [v[2].max(0) as usize, v[3].max(0) as usize],
            _ => [0, 0],
        },
    }
}
