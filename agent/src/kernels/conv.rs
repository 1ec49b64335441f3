//! 2-D convolution with any stride, padding (explicit or `auto_pad`), dilation and group count
//! (depthwise included), followed by the fused epilogue (bias, folded BatchNormalization,
//! activation, residual add).
//!
//! Each invocation computes `TOC` output channels of one group at `TP` adjacent output pixels
//! of a row, so every input value it loads feeds `TOC` multiply-adds and every weight `TP`;
//! depthwise convolutions (one output channel per group) use `TOC = 1`.

use std::fmt::Write;

use moirai_core::kernel::{FusedNode, KernelSignature};

use super::shader::{grid_1d, Shader};
use super::{
    attr_i, attr_is, attr_s, epilogue, gpu_dtype, malformed, unsupported, KernelError, Plan,
};
use crate::gpu::buffers::GpuDType;

/// Spatial geometry of a 2-D window op (convolution or pooling).
#[derive(Clone, Debug)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before (top, left).
    pub pad: [usize; 2],
}

impl Window {
    /// Reads kernel_shape/strides/dilations/pads/auto_pad; `kernel` overrides `kernel_shape`
    /// (a Conv takes it from the weight shape).
    pub fn from_attrs(
        node: &FusedNode,
        kernel: Option<[usize; 2]>,
        input_hw: [usize; 2],
        output_hw: [usize; 2],
    ) -> Option<Window> {
        let two = |v: Option<Vec<i64>>, d: usize| -> Option<[usize; 2]> {
            match v {
                None => Some([d, d]),
                Some(v) if v.len() == 2 => Some([v[0].max(0) as usize, v[1].max(0) as usize]),
                Some(_) => None,
            }
        };
        let kernel = match kernel {
            Some(k) => k,
            None => two(attr_is(node, "kernel_shape"), 1)?,
        };
        let stride = two(attr_is(node, "strides"), 1)?;
        let dilation = two(attr_is(node, "dilations"), 1)?;
        let pad = match attr_s(node, "auto_pad").unwrap_or("NOTSET") {
            "SAME_UPPER" | "SAME_LOWER" => {
                let upper = attr_s(node, "auto_pad") == Some("SAME_UPPER");
                let mut p = [0; 2];
                for d in 0..2 {
                    let need = (output_hw[d].saturating_sub(1)) * stride[d]
                        + (kernel[d] - 1) * dilation[d]
                        + 1;
                    let total = need.saturating_sub(input_hw[d]);
                    p[d] = if upper { total / 2 } else { total - total / 2 };
                }
                p
            }
            "VALID" => [0, 0],
            _ => match attr_is(node, "pads") {
                None => [0, 0],
                Some(v) if v.len() == 4 => [v[0].max(0) as usize, v[1].max(0) as usize],
                Some(_) => return None,
            },
        };
        Some(Window {
            kernel,
            stride,
            dilation,
            pad,
        })
    }
}

pub fn plan(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    let head = &sig.nodes[0];
    if head.op_type != "Conv" {
        return Err(unsupported(sig, format!("{} as a conv head", head.op_type)));
    }
    let w = &wiring[0];
    if w.len() < 2 {
        return Err(malformed(sig, "Conv needs input and weight"));
    }
    let x = &sig.inputs[w[0]].dims;
    let wt = &sig.inputs[w[1]].dims;
    // The Conv's own output: views after it may reshape what the kernel writes.
    let out = &sig
        .node_shape(0)
        .ok_or_else(|| malformed(sig, "no output"))?
        .dims;
    if x.len() != 4 || wt.len() != 4 || out.len() != 4 {
        return Err(unsupported(sig, "Conv other than 2-D"));
    }
    let (nb, c, h, wd) = (x[0], x[1], x[2], x[3]);
    let (oc, cpg, kh, kw) = (wt[0], wt[1], wt[2], wt[3]);
    let (oh, ow) = (out[2], out[3]);
    let groups = attr_i(head, "group", 1).max(1) as usize;
    if cpg * groups != c || oc % groups != 0 || out[1] != oc || out[0] != nb {
        return Err(malformed(
            sig,
            format!("Conv shapes x{x:?} w{wt:?} y{out:?} group {groups}"),
        ));
    }
    let win = Window::from_attrs(head, Some([kh, kw]), [h, wd], [oh, ow])
        .ok_or_else(|| malformed(sig, "Conv window attributes"))?;
    let ocpg = oc / groups;
    let toc = if ocpg >= 8 {
        8
    } else if ocpg >= 4 {
        4
    } else {
        1
    };
    let bpg = ocpg.div_ceil(toc);
    // Output pixels per invocation along a row: each input value loaded feeds `toc` channels
    // and each weight feeds `tp` pixels.
    let tp = if ow >= 4 { 4 } else { ow.max(1) };
    let owb = ow.div_ceil(tp);
    let threads = nb * groups * bpg * oh * owb;

    let mut sh = Shader::default();
    let xn = sh.input(w[0], GpuDType::F32);
    let wn = sh.input(w[1], GpuDType::F32);
    let bias = if w.len() > 2 {
        Some(sh.input(w[2], GpuDType::F32))
    } else {
        None
    };
    epilogue::emit(sig, 1, &wiring[1..], &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let (grid, gid) = grid_1d(threads);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "@compute @workgroup_size(64)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
    );
    let _ = writeln!(
        s,
        "    let t = {gid};\n    if (t >= {threads}u) {{ return; }}"
    );
    let _ = writeln!(
        s,
        "    let ox0 = (t % {owb}u) * {tp}u;\n    let oy = (t / {owb}u) % {oh}u;"
    );
    let _ = writeln!(s, "    let blk = (t / {}u) % {}u;", oh * owb, groups * bpg);
    let _ = writeln!(s, "    let n = t / {}u;", oh * owb * groups * bpg);
    let _ = writeln!(s, "    let g = blk / {bpg}u;");
    let _ = writeln!(s, "    let oc0 = g * {ocpg}u + (blk % {bpg}u) * {toc}u;");
    let _ = writeln!(s, "    let oc_end = g * {ocpg}u + {ocpg}u;");
    for i in 0..toc {
        for p in 0..tp {
            let _ = writeln!(s, "    var a{i}_{p} = 0.0;");
        }
        let _ = writeln!(
            s,
            "    let wo{i} = min(oc0 + {i}u, oc_end - 1u) * {};",
            cpg * kh * kw
        );
    }
    let _ = writeln!(s, "    let xb = (n * {c}u + g * {cpg}u) * {};", h * wd);
    let _ = writeln!(s, "    for (var ky = 0u; ky < {kh}u; ky++) {{");
    let _ = writeln!(
        s,
        "        let iy = i32(oy * {}u + ky * {}u) - {};",
        win.stride[0], win.dilation[0], win.pad[0]
    );
    let _ = writeln!(s, "        if (iy < 0 || iy >= {h}) {{ continue; }}");
    let _ = writeln!(s, "        for (var kx = 0u; kx < {kw}u; kx++) {{");
    // Pixels outside the input (padding) or past the row end read a clamped address and
    // contribute zero.
    for p in 0..tp {
        let _ = writeln!(
            s,
            "            let ix{p} = i32((ox0 + {p}u) * {}u + kx * {}u) - {};",
            win.stride[1], win.dilation[1], win.pad[1]
        );
        let _ = writeln!(
            s,
            "            let m{p} = select(0.0, 1.0, ix{p} >= 0 && ix{p} < {wd} && ox0 + {p}u < {ow}u);"
        );
        let _ = writeln!(
            s,
            "            var xi{p} = xb + u32(iy) * {wd}u + u32(clamp(ix{p}, 0, {}));",
            wd as i64 - 1
        );
    }
    let _ = writeln!(s, "            var wi = ky * {kw}u + kx;");
    let _ = writeln!(s, "            for (var ic = 0u; ic < {cpg}u; ic++) {{");
    for p in 0..tp {
        let _ = writeln!(s, "                let v{p} = {xn}[xi{p}] * m{p};");
    }
    for i in 0..toc {
        let _ = writeln!(s, "                let w{i} = {wn}[wo{i} + wi];");
        for p in 0..tp {
            let _ = writeln!(s, "                a{i}_{p} = fma(v{p}, w{i}, a{i}_{p});");
        }
    }
    for p in 0..tp {
        let _ = writeln!(s, "                xi{p} += {}u;", h * wd);
    }
    let _ = writeln!(s, "                wi += {}u;", kh * kw);
    let _ = writeln!(s, "            }}\n        }}\n    }}");
    for i in 0..toc {
        let b = match &bias {
            Some(bn) => format!(" + {bn}[oc0 + {i}u]"),
            None => String::new(),
        };
        for p in 0..tp {
            let _ = writeln!(
                s,
                "    if (oc0 + {i}u < oc_end && ox0 + {p}u < {ow}u) {{ let idx = ((n * {oc}u + oc0 + {i}u) * {oh}u + oy) * {ow}u + ox0 + {p}u; {y}[idx] = epi(a{i}_{p}{b}, idx); }}"
            );
        }
    }
    let _ = writeln!(s, "}}");
    let (src, slots) = sh.finish(&s);
    Ok(Plan {
        steps: vec![(src, slots, grid)],
        aliases: vec![None],
        consts: Vec::new(),
    })
}
