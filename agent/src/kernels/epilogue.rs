//! Element-wise ops as WGSL statements on a value `v` at flat output index `idx`: the fused
//! epilogue of every kernel, and on their own the element-wise chains.

use std::fmt::Write;

use moirai_shared::kernel::{DType, FusedNode, KernelSignature};

use super::shader::{broadcast_index, grid_1d, lit, Shader};
use super::{attr_f, gpu_dtype, malformed, unsupported, KernelError, Plan};

/// Ops an epilogue can apply.
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

/// Emits `fn epi(v0: f32, idx: u32) -> T` applying `nodes` in order. `extras[i]` are the
/// signature inputs node `i` reads besides `v`; `out` is the shape `idx` indexes.
///
/// Values travel as `f32` whatever their ONNX type (booleans as 0.0 / 1.0, integers exactly up
/// to 2^24: masks and small indices); `T` is the element type of the kernel's first output,
/// so `epi` converts on the way out (`i32` for integers and booleans).
pub fn emit(
    sig: &KernelSignature,
    nodes: &[FusedNode],
    extras: &[Vec<usize>],
    out: &[usize],
    sh: &mut Shader,
) -> Result<(), KernelError> {
    let mut body = String::new();
    for (node, ex) in nodes.iter().zip(extras) {
        let op = node.op_type.as_str();
        // Operand `k` of this node's extras, broadcast to the output.
        let operand = |k: usize, sh: &mut Shader| -> Result<String, KernelError> {
            let j = *ex
                .get(k)
                .ok_or_else(|| malformed(sig, format!("{op} lacks operand {}", k + 1)))?;
            let name = sh.input(j, gpu_dtype(sig.inputs[j].dtype));
            let ix = broadcast_index(out, &sig.inputs[j].dims, "idx");
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
                if out.len() < 2 {
                    return Err(malformed(sig, "BatchNormalization on rank < 2"));
                }
                let inner: usize = out[2..].iter().product();
                let names: Vec<String> = ex
                    .iter()
                    .map(|&j| sh.input(j, gpu_dtype(sig.inputs[j].dtype)))
                    .collect();
                format!(
                    "{{ let c = (idx / {inner}u) % {}u; v = (v - {m}[c]) * ({s}[c] * inverseSqrt({var}[c] + {eps})) + {b}[c]; }}",
                    out[1],
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

/// A chain of element-wise ops with broadcasting: one thread per output element.
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
    emit(sig, &sig.nodes, &extras, out, &mut sh)?;
    let y = sh.output(0, gpu_dtype(sig.outputs[0].dtype));
    let (groups, gid) = grid_1d(n);
    // Same element count: the chain only reshapes it (views), so the flat index carries over.
    let ix = if sig.inputs[first].elements() == n {
        "idx".to_string()
    } else {
        broadcast_index(out, &sig.inputs[first].dims, "idx")
    };
    let main = format!(
        "@compute @workgroup_size(64)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{\n    let idx = {gid};\n    if (idx >= {n}u) {{ return; }}\n    {y}[idx] = epi(f32({x}[{ix}]), idx);\n}}\n"
    );
    let (src, slots) = sh.finish(&main);
    Ok(Plan {
        steps: vec![(src, slots, groups)],
        aliases: vec![None; sig.outputs.len()],
        consts: Vec::new(),
    })
}
