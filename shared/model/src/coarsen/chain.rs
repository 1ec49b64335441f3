//! Whether a group is a chain the agent's kernel generator can wire, and its steps.
//!
//! A [`moirai_core::kernel::KernelSignature`] lists ops and boundary tensors but no edges;
//! the agent wires them as a chain: the first op takes the first signature inputs (all its
//! ONNX inputs, in order), each later op takes the previous op's output plus the next
//! signature inputs as its other operands, and only the last op's output leaves the kernel.
//! Erf-based GELU (`Div(a, c) -> Erf -> Add(., c) -> Mul(a, .) -> Mul(., c)`, constants `c`)
//! reads `a` twice, so it becomes one `Gelu` step.
//!
//! Two more conditions come from how the generated kernels compute, and are checked here so
//! that a group the generator would get wrong is never formed ([`NotAChain`] says why):
//! - the epilogue of a head that is not element-wise (a convolution, matmul, pooling,
//!   normalisation, copy or gather) is applied to each value the head computes, so it may not
//!   broadcast that value to a larger shape (a squeeze-excitation gate: a 1x1 Conv on
//!   `[N,C,1,1]`, Sigmoid, then Mul with the `[N,C,H,W]` map);
//! - each later op takes the previous value as its first operand, so an op that is not
//!   commutative (`Sub(c, x)`, `Div(x, rms)`, `Where(c, x, y)` with the value as `x`) may only
//!   read it there.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use moirai_core::kernel::{AttrValue, TensorShape};

use super::rules::{ELTWISE, VIEW};
use crate::import::onnx::OnnxModel;

/// Why a set of nodes is not a chain the kernel generator can wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAChain {
    /// Not a single-output chain at all (a node reads two values from inside, an
    /// intermediate is read outside, ...).
    Shape(&'static str),
    /// An epilogue op would broadcast the head's output to a larger shape.
    Broadcasts { head: String, op: String },
    /// An op that is not commutative would read the chain's value as another operand than
    /// its first.
    Operand { op: String, position: usize },
}

impl NotAChain {
    /// Whether this is a limit of the kernel generator (worth reporting), rather than a group
    /// that is simply not a chain.
    pub fn is_generator_limit(&self) -> bool {
        !matches!(self, NotAChain::Shape(_))
    }
}

impl fmt::Display for NotAChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAChain::Shape(what) => write!(f, "not a chain: {what}"),
            NotAChain::Broadcasts { head, op } => write!(
                f,
                "{op} would broadcast the output of {head} to a larger shape inside its epilogue"
            ),
            NotAChain::Operand { op, position } => write!(
                f,
                "{op} reads the chain's value as operand {position}, and is not commutative"
            ),
        }
    }
}

/// Binary ops whose two operands may be swapped.
fn commutative(op: &str) -> bool {
    crate::ops::commutative(op)
}

/// One op of a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub op_type: String,
    pub attrs: BTreeMap<String, AttrValue>,
    /// Operands from outside the kernel, in ONNX order (all of them for the first step; for
    /// later steps, all but the previous step's output).
    pub operands: Vec<String>,
    pub output: String,
    /// The output's shape.
    pub shape: TensorShape,
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

/// The steps of `nodes` (in execution order) if they form a single-output chain the kernel
/// generator can wire; `leaves` says whether a tensor is read outside the group (or is a
/// graph output).
pub fn steps(
    model: &OnnxModel,
    nodes: &[usize],
    is_const: &dyn Fn(&str) -> bool,
    leaves: &dyn Fn(&str) -> bool,
) -> Result<Vec<Step>, NotAChain> {
    use NotAChain::Shape as No;
    let shape_of = |t: &str| -> Result<TensorShape, NotAChain> {
        model
            .shape(t)
            .cloned()
            .ok_or(No("a tensor of unknown shape"))
    };
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
                _ => return Err(No("a GELU that does not read the previous value")),
            };
            // The pattern's intermediates stay inside.
            for k in 0..4 {
                let t = single_output(model, nodes[i + k]).ok_or(No("a multi-output node"))?;
                if leaves(t) {
                    return Err(No("a GELU intermediate read outside"));
                }
            }
            steps.push(Step {
                op_type: "Gelu".into(),
                attrs: BTreeMap::new(),
                operands,
                output: out.to_string(),
                shape: shape_of(out)?,
            });
            i += 5;
            continue;
        }
        let n = nodes[i];
        let op = model.nodes[n].op_type.as_str();
        let ins = inputs(model, n);
        let output = single_output(model, n).ok_or(No("a multi-output node"))?;
        let operands = match &prev {
            None => {
                if ins.iter().any(|t| produced.contains(t)) {
                    return Err(No("the first node reads a value from inside"));
                }
                ins.iter().map(|t| t.to_string()).collect()
            }
            Some(p) => {
                // Exactly one operand from inside: the previous step's output, first unless
                // the op does not care.
                if ins.iter().filter(|t| produced.contains(*t)).count() != 1 {
                    return Err(No("a node reads two values from inside"));
                }
                let position = ins
                    .iter()
                    .position(|t| *t == p.as_str())
                    .ok_or(No("a node does not read the previous value"))?;
                if position > 0 && !(commutative(op) && ins.len() == 2) {
                    return Err(NotAChain::Operand {
                        op: op.to_string(),
                        position,
                    });
                }
                ins.iter()
                    .filter(|t| *t != p)
                    .map(|t| t.to_string())
                    .collect()
            }
        };
        steps.push(Step {
            op_type: op.to_string(),
            attrs: model.nodes[n].attrs.clone(),
            operands,
            output: output.to_string(),
            shape: shape_of(output)?,
        });
        i += 1;
    }
    // Only the last step's output may leave the kernel.
    let last = steps.len().checked_sub(1).ok_or(No("no nodes"))?;
    if steps[..last].iter().any(|s| leaves(&s.output)) {
        return Err(No("an intermediate is read outside"));
    }
    no_broadcast_after_head(&steps)?;
    Ok(steps)
}

/// The epilogue of a head that is not element-wise runs once per value the head computes:
/// no later step may make more values than the head did.
fn no_broadcast_after_head(steps: &[Step]) -> Result<(), NotAChain> {
    let Some(h) = steps
        .iter()
        .position(|s| !VIEW.contains(&s.op_type.as_str()))
    else {
        return Ok(());
    };
    let head = &steps[h];
    if ELTWISE.contains(&head.op_type.as_str()) || head.op_type == "Gelu" {
        return Ok(());
    }
    let made = head.shape.elements();
    match steps[h + 1..].iter().find(|s| s.shape.elements() > made) {
        Some(s) => Err(NotAChain::Broadcasts {
            head: head.op_type.clone(),
            op: s.op_type.clone(),
        }),
        None => Ok(()),
    }
}
