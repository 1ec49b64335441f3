//! Whether a group is a chain the agent's kernel generator can wire, and its steps.
//!
//! A [`moirai_shared::kernel::KernelSignature`] lists ops and boundary tensors but no edges;
//! the agent wires them as a chain: the first op takes the first signature inputs (all its
//! ONNX inputs, in order), each later op takes the previous op's output plus the next
//! signature inputs as its other operands, and only the last op's output leaves the kernel.
//! Erf-based GELU (`Div(a, c) -> Erf -> Add(., c) -> Mul(a, .) -> Mul(., c)`, constants `c`)
//! reads `a` twice, so it becomes one `Gelu` step.

use std::collections::{BTreeMap, HashSet};

use moirai_shared::kernel::AttrValue;

use crate::import::onnx::OnnxModel;

/// One op of a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub op_type: String,
    pub attrs: BTreeMap<String, AttrValue>,
    /// Operands from outside the kernel, in ONNX order (all of them for the first step; for
    /// later steps, all but the previous step's output).
    pub operands: Vec<String>,
    pub output: String,
}

fn inputs(model: &OnnxModel, n: usize) -> Vec<&str> {
    model.nodes[n]
        .inputs
        .iter()
        .filter(|t| !t.is_empty())
        .map(String::as_str)
        .collect()
}

fn single_output(model: &OnnxModel, n: usize) -> Option<&str> {
    let mut outs = model.nodes[n].outputs.iter().filter(|o| !o.is_empty());
    let first = outs.next()?;
    outs.next().is_none().then_some(first.as_str())
}

/// `ins` is `[a, other]` or `[other, a]` with `other` constant: returns `other`.
fn with_const<'a>(ins: &[&'a str], a: &str, is_const: &dyn Fn(&str) -> bool) -> Option<&'a str> {
    match ins {
        [x, c] if *x == a && is_const(c) => Some(c),
        [c, x] if *x == a && is_const(c) => Some(c),
        _ => None,
    }
}

/// An Erf-based GELU starting at `nodes[i]`: its input and output.
fn gelu<'m>(
    model: &'m OnnxModel,
    nodes: &[usize],
    i: usize,
    is_const: &dyn Fn(&str) -> bool,
) -> Option<(&'m str, &'m str)> {
    let op = |k: usize| nodes.get(i + k).map(|&n| model.nodes[n].op_type.as_str());
    if (op(0)?, op(1)?, op(2)?, op(3)?, op(4)?) != ("Div", "Erf", "Add", "Mul", "Mul") {
        return None;
    }
    let n = |k: usize| nodes[i + k];
    let div_in = inputs(model, n(0));
    let (a, c) = (*div_in.first()?, *div_in.get(1)?);
    if div_in.len() != 2 || !is_const(c) {
        return None;
    }
    let d = single_output(model, n(0))?;
    let e = single_output(model, n(1))?;
    if inputs(model, n(1)) != [d] {
        return None;
    }
    with_const(&inputs(model, n(2)), e, is_const)?;
    let e1 = single_output(model, n(2))?;
    let mul_in = inputs(model, n(3));
    if !(mul_in == [a, e1] || mul_in == [e1, a]) {
        return None;
    }
    let g0 = single_output(model, n(3))?;
    with_const(&inputs(model, n(4)), g0, is_const)?;
    Some((a, single_output(model, n(4))?))
}

/// The steps of `nodes` (in execution order) if they form a single-output chain; `leaves`
/// says whether a tensor is read outside the group (or is a graph output).
pub fn steps(
    model: &OnnxModel,
    nodes: &[usize],
    is_const: &dyn Fn(&str) -> bool,
    leaves: &dyn Fn(&str) -> bool,
) -> Option<Vec<Step>> {
    let produced: HashSet<&str> = nodes
        .iter()
        .flat_map(|&n| model.nodes[n].outputs.iter().map(String::as_str))
        .filter(|o| !o.is_empty())
        .collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        let prev = steps.last().map(|s| s.output.clone());
        if let Some((a, out)) = gelu(model, nodes, i, is_const) {
            let operands = match &prev {
                None if !produced.contains(a) => vec![a.to_string()],
                Some(p) if p == a => vec![],
                _ => return None,
            };
            // The pattern's intermediates stay inside.
            for k in 0..4 {
                let t = single_output(model, nodes[i + k])?;
                if leaves(t) {
                    return None;
                }
            }
            steps.push(Step {
                op_type: "Gelu".into(),
                attrs: BTreeMap::new(),
                operands,
                output: out.to_string(),
            });
            i += 5;
            continue;
        }
        let n = nodes[i];
        let ins = inputs(model, n);
        let output = single_output(model, n)?;
        let operands = match &prev {
            None => {
                if ins.iter().any(|t| produced.contains(t)) {
                    return None;
                }
                ins.iter().map(|t| t.to_string()).collect()
            }
            Some(p) => {
                // Exactly one operand from inside: the previous step's output.
                if ins.iter().filter(|t| produced.contains(*t)).count() != 1
                    || !ins.contains(&p.as_str())
                {
                    return None;
                }
                ins.iter()
                    .filter(|t| *t != p)
                    .map(|t| t.to_string())
                    .collect()
            }
        };
        steps.push(Step {
            op_type: model.nodes[n].op_type.clone(),
            attrs: model.nodes[n].attrs.clone(),
            operands,
            output: output.to_string(),
        });
        i += 1;
    }
    // Only the last step's output may leave the kernel.
    let last = steps.len().checked_sub(1)?;
    if steps[..last].iter().any(|s| leaves(&s.output)) {
        return None;
    }
    Some(steps)
}
