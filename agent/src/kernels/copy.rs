//! Data movement: Reshape / Flatten / Squeeze / Unsqueeze / Identity are views (no dispatch);
//! Transpose, Concat, Split and Expand are index-mapping copies, one thread per element written.
//!
//! A chain may hold views around one moving op. The moving op's shape on the far side of a view
//! is not in the signature (only boundary shapes are), so views may sit on one side of it only.

use std::fmt::Write;

use moirai_core::kernel::KernelSignature;

use super::epilogue::{self, is_elementwise};
use super::shader::{broadcast_index, grid_1d, strides, Shader};
use super::{attr_i, attr_is, axis, gpu_dtype, malformed, unsupported, KernelError, Plan};

fn is_view(op: &str) -> bool {
    matches!(
        op,
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" | "Dropout"
    )
}

pub fn plan(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    // Dropout is the identity at inference; with a training_mode operand it may draw a
    // random mask instead, which no kernel here reproduces.
    for (i, node) in sig.nodes.iter().enumerate() {
        let operands = wiring[i].len() + usize::from(i > 0);
        if node.op_type == "Dropout" && super::onnx_position(node, operands - 1) >= 2 {
            return Err(unsupported(sig, "Dropout with a training_mode operand"));
        }
    }
    // Element-wise ops after the data movement (e.g. the attention scale after a head
    // transpose) become its epilogue.
    let tail = sig
        .nodes
        .iter()
        .rev()
        .take_while(|n| is_elementwise(&n.op_type) && !is_view(&n.op_type))
        .count();
    let core = sig.nodes.len() - tail;
    let movers: Vec<usize> = (0..core)
        .filter(|&i| !is_view(&sig.nodes[i].op_type))
        .collect();
    if tail > 0 && !matches!(movers[..], [i] if sig.nodes[i].op_type == "Transpose") {
        return Err(unsupported(
            sig,
            "element-wise ops after a copy other than Transpose",
        ));
    }
    let first_in = *wiring[0]
        .first()
        .ok_or_else(|| malformed(sig, "copy without input"))?;
    match movers[..] {
        [] => {
            if sig.nodes.iter().any(|n| n.op_type == "Dropout") && sig.outputs.len() == 2 {
                return Err(unsupported(sig, "Dropout's mask output"));
            }
            if sig.outputs.len() != 1 {
                return Err(malformed(sig, "a view has one output"));
            }
            Ok(Plan {
                steps: Vec::new(),
                aliases: vec![Some(first_in)],
                consts: Vec::new(),
            })
        }
        [i] => {
            let node = &sig.nodes[i];
            let views_before = i > 0;
            let views_after = i + 1 < core;
            if views_before && views_after {
                return Err(unsupported(
                    sig,
                    format!("views on both sides of {}", node.op_type),
                ));
            }
            match node.op_type.as_str() {
                "Transpose" => transpose(sig, wiring, i, views_before, first_in),
                "Concat" if i == 0 => concat(sig, wiring),
                "Split" if i == 0 => split(sig, first_in),
                "Expand" if i == 0 && !views_after => expand(sig, first_in),
                other => Err(unsupported(sig, format!("{other} in a copy chain"))),
            }
        }
        _ => Err(unsupported(sig, "more than one moving op in a copy chain")),
    }
}

fn one_step(sh: Shader, body: &str, n: usize) -> (String, Vec<super::Slot>, [u32; 3]) {
    let (grid, gid) = grid_1d(n);
    let main = format!(
        "@compute @workgroup_size(64)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{\n    let idx = {gid};\n    if (idx >= {n}u) {{ return; }}\n{body}}}\n"
    );
    let (src, slots) = sh.finish(&main);
    (src, slots, grid)
}

fn transpose(
    sig: &KernelSignature,
    wiring: &[Vec<usize>],
    at: usize,
    views_before: bool,
    input: usize,
) -> Result<Plan, KernelError> {
    let node = &sig.nodes[at];
    // Shapes on both sides of the Transpose.
    let (src_dims, dst_dims, perm) = {
        let known_in = !views_before;
        let d = if known_in {
            sig.inputs[input].dims.clone()
        } else {
            sig.outputs[0].dims.clone()
        };
        let rank = d.len();
        let perm: Vec<usize> = match attr_is(node, "perm") {
            Some(p) => p.iter().map(|&a| axis(a, rank)).collect(),
            None => (0..rank).rev().collect(),
        };
        if perm.len() != rank {
            return Err(malformed(sig, "perm length differs from rank"));
        }
        if known_in {
            let out: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
            (d, out, perm)
        } else {
            let mut inp = vec![0; rank];
            for (o, &p) in perm.iter().enumerate() {
                inp[p] = d[o];
            }
            (inp, d, perm)
        }
    };
    let n: usize = dst_dims.iter().product();
    if n != sig.outputs[0].elements() || n != sig.inputs[input].elements() {
        return Err(malformed(sig, "Transpose changes the element count"));
    }
    let ss = strides(&src_dims);
    let ds = strides(&dst_dims);
    let mut sh = Shader::default();
    let x = sh.input(input, gpu_dtype(sig.inputs[input].dtype));
    let tail = &sig.nodes[at + 1..];
    if !tail.is_empty() {
        epilogue::emit(sig, at + 1, &wiring[at + 1..], &mut sh)?;
    }
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let mut body = String::from("    var s = 0u;\n");
    for (o, &p) in perm.iter().enumerate() {
        let _ = writeln!(
            body,
            "    s += ((idx / {}u) % {}u) * {}u;",
            ds[o], dst_dims[o], ss[p]
        );
    }
    if tail.is_empty() {
        let _ = writeln!(body, "    {y}[idx] = {x}[s];");
    } else {
        let _ = writeln!(body, "    {y}[idx] = epi(f32({x}[s]), idx);");
    }
    Ok(Plan {
        steps: vec![one_step(sh, &body, n)],
        aliases: vec![None],
        consts: Vec::new(),
    })
}

/// Expand: numpy broadcasting of the input to the output shape (the shape operand is the
/// output's, already in the signature).
fn expand(sig: &KernelSignature, input: usize) -> Result<Plan, KernelError> {
    let out = &sig.outputs[0].dims;
    let n: usize = out.iter().product();
    let mut sh = Shader::default();
    let x = sh.input(input, gpu_dtype(sig.inputs[input].dtype));
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let ix = broadcast_index(out, &sig.inputs[input].dims, "idx");
    let body = if gpu_dtype(sig.inputs[input].dtype) == gpu_dtype(sig.outputs[0].dtype) {
        format!("    {y}[idx] = {x}[{ix}];\n")
    } else {
        return Err(malformed(sig, "Expand changes the element type"));
    };
    Ok(Plan {
        steps: vec![one_step(sh, &body, n)],
        aliases: vec![None],
        consts: Vec::new(),
    })
}

fn concat(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    let out = &sig.outputs[0].dims;
    let a = axis(attr_i(&sig.nodes[0], "axis", 0), out.len());
    let inner: usize = out[a + 1..].iter().product();
    let mut steps = Vec::new();
    let mut offset = 0;
    for &j in &wiring[0] {
        let d = &sig.inputs[j].dims;
        if d.len() != out.len() {
            return Err(malformed(sig, "Concat inputs differ in rank"));
        }
        let n: usize = d.iter().product();
        let mut sh = Shader::default();
        let x = sh.input(j, gpu_dtype(sig.inputs[j].dtype));
        let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
        let chunk = d[a] * inner;
        let body = format!(
            "    let o = idx / {chunk}u;\n    let r = idx % {chunk}u;\n    {y}[o * {}u + {}u + r] = {x}[idx];\n",
            out[a] * inner,
            offset * inner
        );
        if n > 0 {
            steps.push(one_step(sh, &body, n));
        }
        offset += d[a];
    }
    if offset != out[a] {
        return Err(malformed(sig, "Concat sizes do not add up"));
    }
    Ok(Plan {
        steps,
        aliases: vec![None],
        consts: Vec::new(),
    })
}

fn split(sig: &KernelSignature, input: usize) -> Result<Plan, KernelError> {
    let d = &sig.inputs[input].dims;
    let a = axis(attr_i(&sig.nodes[0], "axis", 0), d.len());
    let inner: usize = d[a + 1..].iter().product();
    let mut steps = Vec::new();
    let mut offset = 0;
    for (o, t) in sig.outputs.iter().enumerate() {
        let od = &t.dims;
        if od.len() != d.len() {
            return Err(malformed(sig, "Split outputs differ in rank"));
        }
        let n: usize = od.iter().product();
        let chunk = od[a] * inner;
        let mut sh = Shader::default();
        let x = sh.input(input, gpu_dtype(sig.inputs[input].dtype));
        let y = sh.output(o, gpu_dtype(t.dtype));
        let body = format!(
            "    let q = idx / {chunk}u;\n    let r = idx % {chunk}u;\n    {y}[idx] = {x}[q * {}u + {}u + r];\n",
            d[a] * inner,
            offset * inner
        );
        if n > 0 {
            steps.push(one_step(sh, &body, n));
        }
        offset += od[a];
    }
    if offset != d[a] {
        return Err(malformed(sig, "Split sizes do not add up"));
    }
    Ok(Plan {
        steps,
        aliases: vec![None; sig.outputs.len()],
        consts: Vec::new(),
    })
}
