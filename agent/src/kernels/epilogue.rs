//! Element-wise ops as WGSL statements on a value `v` at flat output index `idx`: the fused
//! epilogue of every kernel, and on their own the element-wise chains.

use std::fmt::Write;

use moirai_core::kernel::{DType, KernelSignature};

use super::shader::{broadcast_index, grid_1d, lit, Shader};
use super::{attr_f, gpu_dtype, malformed, unsupported, KernelError, Plan};

/// Ops an epilogue can apply: the element-wise and view ops of the op table
/// ([`moirai_model::ops`]) this generator writes a statement for.
pub fn is_elementwise(op: &str) -> bool {
    matches!(
        op,
        "Relu"
            | "LeakyRelu"
            | "Sigmoid"
            | "Tanh"
            | "Clip"
            | "HardSigmoid"
            | "HardSwish"
            | "Erf"
            | "Gelu"
            | "Sqrt"
            | "Exp"
            | "Log"
            | "Neg"
            | "Abs"
            | "Reciprocal"
            | "Identity"
            | "Dropout"
            | "Cast"
            | "Flatten"
            | "Reshape"
            | "Squeeze"
            | "Unsqueeze"
            | "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Pow"
            | "Max"
            | "Min"
            | "Sum"
            | "Mean"
            | "PRelu"
            | "BatchNormalization"
            | "Floor"
            | "Ceil"
            | "Round"
            | "Softplus"
            | "Not"
            | "IsNaN"
            | "IsInf"
            | "And"
            | "Or"
            | "Xor"
            | "Equal"
            | "Less"
            | "Greater"
            | "LessOrEqual"
            | "GreaterOrEqual"
            | "Where"
    )
}

/// Element-wise ops of one operand that keep the shape (so views around them see the
/// output's shape): by their ONNX arity; Flatten, of one operand too, reshapes.
pub fn is_unary(op: &str) -> bool {
    is_elementwise(op) && super::arity(op, 1) == (1, 1) && op != "Flatten"
}

/// ONNX `TensorProto.DataType` codes of the floating-point types (a Cast to anything else
/// truncates, and a Cast to BOOL (9) tests for non-zero).
const FLOAT_TYPES: [i64; 4] = [1, 10, 11, 16];
const BOOL_TYPE: i64 = 9;

/// WGSL `let` statements binding `i{k}`, for each node `k` in `first..`, to the flat index of
/// node `k`'s output that the kernel's output element `idx` is computed from (the last node's
/// output is the kernel's output). A view keeps the flat index; an op whose output is larger
/// than its chain input (a broadcast) maps the index back into the smaller shape. Shapes are
/// the signature's per-node shapes ([`KernelSignature::node_shape`]).
pub fn index_lets(sig: &KernelSignature, first: usize) -> Result<String, KernelError> {
    let last = sig
        .nodes
        .len()
        .checked_sub(1)
        .ok_or_else(|| malformed(sig, "no nodes"))?;
    let shape = |k: usize| -> Result<&[usize], KernelError> {
        sig.node_shape(k)
            .map(|s| s.dims.as_slice())
            .ok_or_else(|| malformed(sig, format!("no shape for node {k}")))
    };
    let mut lets = format!("    let i{last} = idx;\n");
    for k in (first..last).rev() {
        let (here, next) = (shape(k)?, shape(k + 1)?);
        let (n_here, n_next) = (
            here.iter().product::<usize>(),
            next.iter().product::<usize>(),
        );
        let expr = if n_here == n_next {
            format!("i{}", k + 1)
        } else if n_here < n_next && broadcasts(here, next) {
            broadcast_index(next, here, &format!("i{}", k + 1))
        } else {
            return Err(unsupported(
                sig,
                format!(
                    "{} after {} changes {here:?} to {next:?} in an epilogue",
                    sig.nodes[k + 1].op_type,
                    sig.nodes[k].op_type
                ),
            ));
        };
        lets.push_str(&format!("    let i{k} = {expr};\n"));
    }
    Ok(lets)
}

/// Whether `small` broadcasts to `big` (numpy rules, right-aligned).
pub fn broadcasts(small: &[usize], big: &[usize]) -> bool {
    small.len() <= big.len()
        && small
            .iter()
            .rev()
            .zip(big.iter().rev())
            .all(|(&s, &b)| s == b || s == 1)
}

/// Emits `fn epi(v0: f32, idx: u32) -> T` applying nodes `first..` of the signature in order
/// to a value `v0` of node `first - 1`'s output (the head's, for a kernel with a head).
/// `extras[i]` are the signature inputs node `first + i` reads besides the chain's value;
/// `idx` is the flat index of the kernel's output element. Each operand is broadcast against
/// its own node's output shape ([`index_lets`]), so views and broadcasts anywhere in the chain
/// index right.
///
/// A head computes one value per element of its own output, so after a head the epilogue may
/// not make more elements than it: the fusion rules never form such a group, and this refuses
/// one that says otherwise.
///
/// Values travel as `f32` whatever their ONNX type (booleans as 0.0 / 1.0, integers exactly up
/// to 2^24: masks and small indices); `T` is the element type of the kernel's first output,
/// so `epi` converts on the way out (`i32` for integers and booleans).
pub fn emit(
    sig: &KernelSignature,
    first: usize,
    extras: &[Vec<usize>],
    sh: &mut Shader,
) -> Result<(), KernelError> {
    let nodes = sig.nodes.get(first..).unwrap_or_default();
    if first > 0 && !nodes.is_empty() {
        let head = sig.node_shape(first - 1).map(|s| s.elements());
        let out = sig.node_shape(sig.nodes.len() - 1).map(|s| s.elements());
        if head != out {
            return Err(unsupported(
                sig,
                format!(
                    "an epilogue that changes the element count of {}'s output",
                    sig.nodes[first - 1].op_type
                ),
            ));
        }
    }
    let mut body = if nodes.is_empty() {
        String::new()
    } else {
        index_lets(sig, first)?
    };
    for (k, (node, ex)) in nodes.iter().zip(extras).enumerate() {
        let k = first + k;
        let at = sig
            .node_shape(k)
            .map(|s| s.dims.clone())
            .ok_or_else(|| malformed(sig, format!("no shape for node {k}")))?;
        let iname = format!("i{k}");
        let (at, iname) = (&at, iname.as_str());
        let op = node.op_type.as_str();
        // Operand `k` of this node's extras, broadcast to the output.
        let operand = |k: usize, sh: &mut Shader| -> Result<String, KernelError> {
            let j = *ex
                .get(k)
                .ok_or_else(|| malformed(sig, format!("{op} lacks operand {}", k + 1)))?;
            let name = sh.input(j, gpu_dtype(sig.inputs[j].dtype));
            let ix = broadcast_index(at, &sig.inputs[j].dims, iname);
            Ok(format!("f32({name}[{ix}])"))
        };
        let stmt = match op {
            "Relu" => "v = max(v, 0.0);".to_string(),
            "LeakyRelu" => format!(
                "v = select({} * v, v, v >= 0.0);",
                lit(attr_f(node, "alpha", 0.01))
            ),
            "Sigmoid" => "v = sigmoid(v);".into(),
            "Tanh" => "v = tanh(v);".into(),
            "HardSigmoid" => format!(
                "v = clamp({} * v + {}, 0.0, 1.0);",
                lit(attr_f(node, "alpha", 0.2)),
                lit(attr_f(node, "beta", 0.5))
            ),
            "HardSwish" => "v = v * clamp(v / 6.0 + 0.5, 0.0, 1.0);".into(),
            "Erf" => "v = erf_approx(v);".into(),
            "Gelu" => match super::attr_s(node, "approximate").unwrap_or("none") {
                "none" => "v = 0.5 * v * (1.0 + erf_approx(v * 0.70710678));".into(),
                // tanh saturates long before 15; the clamp keeps exp-based tanh finite.
                "tanh" => "v = 0.5 * v * (1.0 + tanh(clamp(0.7978845608 * (v + 0.044715 * v * v * v), -15.0, 15.0)));".into(),
                other => return Err(unsupported(sig, format!("Gelu approximate={other:?}"))),
            },
            "Sqrt" => "v = sqrt(v);".into(),
            "Exp" => "v = exp(v);".into(),
            "Log" => "v = log(v);".into(),
            "Neg" => "v = -v;".into(),
            "Abs" => "v = abs(v);".into(),
            "Reciprocal" => "v = 1.0 / v;".into(),
            // Views keep the flat index: nothing to do per element.
            "Identity" | "Dropout" | "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
                String::new()
            }
            "Cast" => match super::attr_i(node, "to", 1) {
                t if FLOAT_TYPES.contains(&t) => String::new(),
                BOOL_TYPE => "v = select(0.0, 1.0, v != 0.0);".into(),
                _ => "v = trunc(v);".into(),
            },
            "Floor" => "v = floor(v);".into(),
            "Ceil" => "v = ceil(v);".into(),
            // ONNX and WGSL both round halves to even.
            "Round" => "v = round(v);".into(),
            "Softplus" => "v = log(1.0 + exp(v));".into(),
            "Not" => "v = select(1.0, 0.0, v != 0.0);".into(),
            // On the bits: fast-math compilers may fold `v != v` away.
            "IsNaN" => "v = select(0.0, 1.0, (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u);".into(),
            "IsInf" => {
                let neg = super::attr_i(node, "detect_negative", 1) != 0;
                let pos = super::attr_i(node, "detect_positive", 1) != 0;
                format!(
                    "v = select(0.0, 1.0, (bitcast<u32>(v) & 0x7fffffffu) == 0x7f800000u && (({neg} && v < 0.0) || ({pos} && v > 0.0)));"
                )
            }
            "And" => format!("v = select(0.0, 1.0, v != 0.0 && {} != 0.0);", operand(0, sh)?),
            "Or" => format!("v = select(0.0, 1.0, v != 0.0 || {} != 0.0);", operand(0, sh)?),
            "Xor" => format!("v = select(0.0, 1.0, (v != 0.0) != ({} != 0.0));", operand(0, sh)?),
            "Equal" => format!("v = select(0.0, 1.0, v == {});", operand(0, sh)?),
            "Less" => format!("v = select(0.0, 1.0, v < {});", operand(0, sh)?),
            "Greater" => format!("v = select(0.0, 1.0, v > {});", operand(0, sh)?),
            "LessOrEqual" => format!("v = select(0.0, 1.0, v <= {});", operand(0, sh)?),
            "GreaterOrEqual" => format!("v = select(0.0, 1.0, v >= {});", operand(0, sh)?),
            // The chain brings the condition; X and Y are the node's other operands.
            "Where" => format!(
                "v = select({}, {}, v != 0.0);",
                operand(1, sh)?,
                operand(0, sh)?
            ),
            "Clip" => {
                // Bounds by ONNX position: `Clip(x, "", max)` has only a max.
                let mut bound = |pos: usize, attr: &str, default: f32| {
                    match super::present_index(node, pos).and_then(|k| ex.get(k - 1)) {
                        Some(&j) => format!("{}[0]", sh.input(j, gpu_dtype(sig.inputs[j].dtype))),
                        None => lit(attr_f(node, attr, default)),
                    }
                };
                let lo = bound(1, "min", f32::NEG_INFINITY);
                let hi = bound(2, "max", f32::INFINITY);
                format!("v = min(max(v, f32({lo})), f32({hi}));")
            }
            "Add" => format!("v = v + {};", operand(0, sh)?),
            "Sub" => format!("v = v - {};", operand(0, sh)?),
            "Mul" => format!("v = v * {};", operand(0, sh)?),
            "Div" => format!("v = v / {};", operand(0, sh)?),
            // WGSL pow is exp2(p * log2(x)): undefined for negative bases, NaN for 0^0 and
            // inexact for integers. ONNX (numpy) takes negatives to integer powers, gives NaN
            // for a fractional power of a negative, 1 for x^0, and integers stay integers.
            // The NaN comes from bits that depend on `v`, so no constant folding sees it.
            "Pow" => format!(
                "{{ let p = {}; var a = pow(abs(v), p); let whole = fract(p) == 0.0; a = select(a, round(a), whole && p >= 0.0 && fract(v) == 0.0); let odd = whole && fract(p * 0.5) != 0.0; a = select(a, -a, v < 0.0 && odd); a = select(a, bitcast<f32>(0x7fc00000u | (bitcast<u32>(v) & 0u)), v < 0.0 && !whole); v = select(a, 1.0, p == 0.0); }}",
                operand(0, sh)?
            ),
            // Variadic: every operand after the first, in turn.
            "Max" | "Min" | "Sum" | "Mean" => {
                let mut st = String::new();
                for k in 0..ex.len() {
                    let x = operand(k, sh)?;
                    let _ = match op {
                        "Max" => write!(st, "v = max(v, {x}); "),
                        "Min" => write!(st, "v = min(v, {x}); "),
                        _ => write!(st, "v = v + {x}; "),
                    };
                }
                if op == "Mean" {
                    let _ = write!(st, "v = v / {}.0;", ex.len() + 1);
                }
                st
            }
            "PRelu" => format!("v = select({} * v, v, v >= 0.0);", operand(0, sh)?),
            "BatchNormalization" => {
                // Training mode normalises by the batch's own statistics and updates the
                // running ones: another kernel.
                if super::attr_i(node, "training_mode", 0) != 0 {
                    return Err(unsupported(sig, "BatchNormalization in training mode"));
                }
                if ex.len() != 4 {
                    return Err(malformed(sig, "BatchNormalization needs 4 parameters"));
                }
                if at.len() < 2 {
                    return Err(malformed(sig, "BatchNormalization on rank < 2"));
                }
                let inner: usize = at[2..].iter().product();
                let names: Vec<String> = ex
                    .iter()
                    .map(|&j| sh.input(j, gpu_dtype(sig.inputs[j].dtype)))
                    .collect();
                format!(
                    "{{ let c = ({iname} / {inner}u) % {}u; v = (v - {m}[c]) * ({s}[c] * inverseSqrt({var}[c] + {eps})) + {b}[c]; }}",
                    at[1],
                    s = names[0],
                    b = names[1],
                    m = names[2],
                    var = names[3],
                    eps = lit(attr_f(node, "epsilon", 1e-5)),
                )
            }
            other => return Err(unsupported(sig, format!("{other} in an epilogue"))),
        };
        let _ = writeln!(body, "    {stmt}");
    }
    let (ty, ret) = match sig.outputs.first().map(|t| t.dtype) {
        None | Some(DType::F32 | DType::F16) => ("f32", "v"),
        Some(DType::Bool) => ("i32", "i32(v != 0.0)"),
        Some(_) => ("i32", "i32(v)"),
    };
    let _ = write!(
        sh.functions,
        "fn epi(v0: f32, idx: u32) -> {ty} {{\n    var v = v0;\n{body}    return {ret};\n}}\n"
    );
    Ok(())
}

/// A chain of element-wise ops with broadcasting: one thread per output element, each node
/// evaluated at the element of its own output that this output element reads.
pub fn plan_eltwise(sig: &KernelSignature, wiring: &[Vec<usize>]) -> Result<Plan, KernelError> {
    let out = &sig.outputs[0].dims;
    let n: usize = out.iter().product();
    let first = *wiring[0]
        .first()
        .ok_or_else(|| malformed(sig, "first op has no input"))?;
    let mut sh = Shader::default();
    let x = sh.input(first, gpu_dtype(sig.inputs[first].dtype));
    let mut extras = wiring.to_vec();
    extras[0] = wiring[0][1..].to_vec();
    emit(sig, 0, &extras, &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let (groups, gid) = grid_1d(n);
    // The first node reads its input at the element of its own output (`i0`); a view as
    // first node keeps the flat index.
    let at0 = sig
        .node_shape(0)
        .ok_or_else(|| malformed(sig, "no shape for node 0"))?;
    let xd = &sig.inputs[first].dims;
    let ix = if sig.inputs[first].elements() == at0.elements() {
        "i0".to_string()
    } else if broadcasts(xd, &at0.dims) {
        broadcast_index(&at0.dims, xd, "i0")
    } else {
        return Err(malformed(
            sig,
            format!("input {xd:?} does not broadcast to {:?}", at0.dims),
        ));
    };
    let lets = index_lets(sig, 0)?;
    let main = format!(
        "@compute @workgroup_size(64)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{\n    let idx = {gid};\n    if (idx >= {n}u) {{ return; }}\n{lets}    {y}[idx] = epi(f32({x}[{ix}]), idx);\n}}\n"
    );
    let (src, slots) = sh.finish(&main);
    Ok(Plan {
        steps: vec![(src, slots, groups)],
        aliases: vec![None; sig.outputs.len()],
        consts: Vec::new(),
    })
}

#[cfg(test)]
mod op_table {
    use moirai_model::ops::{self, Family};

    /// The generator's list is a subset of what the op table calls element-wise or a view:
    /// the fusion rules never hand it an op it would treat as something else.
    #[test]
    fn every_op_the_generator_takes_is_eltwise_or_a_view_in_the_op_table() {
        let mut taken = 0;
        for o in ops::OPS {
            if super::is_elementwise(o.name) {
                taken += 1;
                assert!(
                    matches!(o.family, Family::Eltwise | Family::View),
                    "{} is {:?} in the op table",
                    o.name,
                    o.family
                );
            }
        }
        assert!(taken > 30, "only {taken} ops matched");
    }
}
