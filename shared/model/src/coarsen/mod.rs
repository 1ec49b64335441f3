//! Fusion-aware coarsening: merge the ONNX nodes the inference backend fuses at run time, so
//! the placer never cuts inside a fused kernel.
//!
//! Pipeline: shape-only subgraphs (anything computable from constants and static shapes) are
//! folded first: they run once at load time, inside each kernel that reads them. The other
//! nodes start as one group each; the backend's [`rules::RuleSet`] is applied rule by rule,
//! each to a fixed point, until nothing merges. Every merge goes through
//! [`merge::GroupGraph::try_merge`], which refuses any that would create a cycle.
//!
//! The result, a [`CoarseGraph`], keeps everything a later stage needs to execute a group on
//! its own: which ONNX nodes it runs, which constant nodes it folds, the tensors entering and
//! leaving it, the initializers it needs, and its [`KernelSignature`] (what agents profile).

pub mod chain;
pub mod merge;
pub mod rules;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use moirai_core::cost::plan::{PlanEdge, PlanModel, PlanOp};
use moirai_core::cost::resident_bytes;
use moirai_core::device::Backend;
use moirai_core::kernel::{AttrValue, Dag, FusedNode, KernelSignature, Operand, TensorShape};
use tracing::{debug, instrument};

use crate::import::onnx::{self, ImportError, ImportOptions, OnnxModel, TensorOrigin};
use merge::GroupGraph;
use rules::{classify, Condition, FusionRule, RuleSet, SHAPE_SOURCES, VIEW};

/// The edges of a group given as ONNX nodes and boundary tensors; `None` when the chain
/// convention says the same (each node after the first reads the previous node's output first,
/// then the next boundary inputs; the outputs are the last node's).
fn dag_of(
    model: &OnnxModel,
    nodes: &[usize],
    boundary: &[String],
    outputs: &[String],
) -> Option<Dag> {
    let at = |t: &str| -> Option<Operand> {
        for (q, &n) in nodes.iter().enumerate() {
            if let Some(o) = model.nodes[n].outputs.iter().position(|x| x == t) {
                return Some(Operand::Node {
                    node: q as u32,
                    output: o as u32,
                });
            }
        }
        boundary
            .iter()
            .position(|x| x == t)
            .map(|i| Operand::Input(i as u32))
    };
    let operands: Vec<Vec<Operand>> = nodes
        .iter()
        .map(|&n| {
            model.nodes[n]
                .inputs
                .iter()
                .filter(|t| !t.is_empty())
                .filter_map(|t| at(t))
                .collect()
        })
        .collect();
    let results: Vec<Operand> = outputs.iter().filter_map(|t| at(t)).collect();
    let last = nodes.len().saturating_sub(1) as u32;
    let mut next_input = 0u32;
    let mut chain = results.iter().enumerate().all(|(o, r)| {
        *r == Operand::Node {
            node: last,
            output: o as u32,
        }
    });
    for (q, ops) in operands.iter().enumerate() {
        // A commutative op reading the previous output second is a chain step all the same.
        let mut ops = ops.clone();
        let commutative = crate::ops::commutative(&model.nodes[nodes[q]].op_type);
        if commutative && q > 0 && ops.len() == 2 && matches!(ops[0], Operand::Input(_)) {
            ops.swap(0, 1);
        }
        for (k, op) in ops.iter().enumerate() {
            chain &= match op {
                Operand::Node { node, output: 0 } if q > 0 && k == 0 => *node + 1 == q as u32,
                Operand::Input(i) if q == 0 || k > 0 => {
                    next_input += 1;
                    *i + 1 == next_input
                }
                _ => false,
            };
        }
    }
    chain &= next_input as usize == boundary.len();
    (!chain).then_some(Dag { operands, results })
}

/// Attribute a signature node carries when optional ONNX inputs are absent (empty names)
/// before a present one: their positions, e.g. `[1]` for `Clip(x, "", max)`. A signature
/// lists only the tensors present, so without it `max` would read as `min`. Not an ONNX
/// attribute: executors drop it when they rebuild the node.
pub const ABSENT_INPUTS: &str = "moirai.absent_inputs";

/// A node's attributes for its signature: its own, plus [`ABSENT_INPUTS`] where needed.
fn signature_attrs(node: &onnx::OnnxNode) -> BTreeMap<String, AttrValue> {
    let mut attrs = node.attrs.clone();
    let last = node.inputs.iter().rposition(|t| !t.is_empty()).unwrap_or(0);
    let absent: Vec<i64> = (0..last)
        .filter(|&i| node.inputs[i].is_empty())
        .map(|i| i as i64)
        .collect();
    if !absent.is_empty() {
        attrs.insert(ABSENT_INPUTS.to_string(), AttrValue::Ints(absent));
    }
    attrs
}

/// One fused kernel: a group of ONNX nodes executed as a unit.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedGroup {
    /// Unique id: the name of its first node that is not a view.
    pub name: String,
    /// Its nodes (indices into [`OnnxModel::nodes`]), in execution order.
    pub nodes: Vec<usize>,
    /// Shape-only nodes it folds in (computed at load time), in execution order. A folded
    /// node may serve several groups.
    pub folded: Vec<usize>,
    /// Activations entering: outputs of other groups, or graph inputs.
    pub inputs: Vec<String>,
    /// Constants entering: initializers and outputs of folded nodes.
    pub params: Vec<String>,
    /// Every initializer it needs, directly or through folded nodes.
    pub initializers: Vec<String>,
    /// Tensors leaving: read by other groups, or graph outputs.
    pub outputs: Vec<String>,
    /// The tensor behind each input of `signature`, in signature order (what an executor
    /// binds to the kernel; on chain backends the chain's operands, see [`chain::Step`]).
    pub operands: Vec<String>,
    pub signature: KernelSignature,
    /// Bytes of `params`.
    pub param_bytes: u64,
    /// Bytes of `outputs`.
    pub output_bytes: u64,
}

/// A tensor going from one group to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEdge {
    /// Index into [`CoarseGraph::groups`].
    pub src: usize,
    pub dst: usize,
    pub tensor: String,
    pub bytes: u64,
}

/// A coarsened model: fused groups in a topological order and the tensors between them.
#[derive(Clone, Debug)]
pub struct CoarseGraph {
    pub model: String,
    pub backend: Backend,
    /// ONNX nodes in the model.
    pub nodes_before: usize,
    /// Nodes folded as shape-only work.
    pub folded_nodes: usize,
    pub groups: Vec<FusedGroup>,
    pub edges: Vec<GroupEdge>,
    /// Merges the rules allowed but the kernel generator could not compute right, by reason
    /// (chain backends only; see [`chain::NotAChain`]): counted, so a report can say what
    /// stayed apart and why.
    pub refused: BTreeMap<String, usize>,
}

impl CoarseGraph {
    /// Distinct kernel signatures (by key), each with how many groups share it, in first-use
    /// order: what a board needs profiled.
    pub fn distinct_signatures(&self) -> Vec<(&KernelSignature, usize)> {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<(&KernelSignature, usize)> = Vec::new();
        for g in &self.groups {
            let key = g.signature.key();
            match index.get(&key) {
                Some(&i) => out[i].1 += 1,
                None => {
                    index.insert(key, out.len());
                    out.push((&g.signature, 1));
                }
            }
        }
        out
    }

    /// Groups after coarsening over nodes before.
    pub fn ratio(&self) -> f64 {
        self.groups.len() as f64 / self.nodes_before.max(1) as f64
    }

    /// The groups as the placer costs them: kernels with their signatures and resident
    /// bytes, and the tensors between them.
    pub fn plan_model(&self) -> PlanModel {
        PlanModel {
            name: self.model.clone(),
            ops: self
                .groups
                .iter()
                .map(|g| PlanOp {
                    name: g.name.clone(),
                    signature: g.signature.clone(),
                    memory_bytes: resident_bytes(g.param_bytes, g.output_bytes),
                })
                .collect(),
            edges: self
                .edges
                .iter()
                .map(|e| PlanEdge {
                    src: e.src,
                    dst: e.dst,
                    tensor: e.tensor.clone(),
                    bytes: e.bytes,
                })
                .collect(),
        }
    }
}

/// Imports `path` and coarsens it with `backend`'s rules: the fused groups and their
/// kernel signatures, which agents profile and execute.
pub fn coarsen_file(
    path: &Path,
    backend: Backend,
    opts: &ImportOptions,
) -> Result<(OnnxModel, CoarseGraph), ImportError> {
    let model = onnx::load(path, opts)?;
    let coarse = coarsen(&model, &RuleSet::for_backend(backend));
    Ok((model, coarse))
}

/// Which nodes are shape-only: computable from constants and static shapes.
fn static_nodes(model: &OnnxModel, fold: bool) -> Vec<bool> {
    let mut is_static = vec![false; model.nodes.len()];
    if !fold {
        return is_static;
    }
    let graph_outputs: HashSet<&str> = model.outputs.iter().map(String::as_str).collect();
    let mut static_tensor: HashSet<&str> = model
        .tensors
        .iter()
        .filter(|(_, t)| matches!(t.origin, TensorOrigin::Initializer(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    for (i, n) in model.nodes.iter().enumerate() {
        let mut inputs = n.inputs.iter().filter(|t| !t.is_empty()).peekable();
        let from_constants =
            inputs.peek().is_some() && inputs.all(|t| static_tensor.contains(t.as_str()));
        let makes_output = n.outputs.iter().any(|o| graph_outputs.contains(o.as_str()));
        if !makes_output && (SHAPE_SOURCES.contains(&n.op_type.as_str()) || from_constants) {
            is_static[i] = true;
            static_tensor.extend(
                n.outputs
                    .iter()
                    .filter(|o| !o.is_empty())
                    .map(String::as_str),
            );
        }
    }
    is_static
}

/// Coarsens an imported model with a rule set.
#[instrument(skip_all, fields(model = %model.name, backend = %rules.backend))]
pub fn coarsen(model: &OnnxModel, rules: &RuleSet) -> CoarseGraph {
    let is_static = static_nodes(model, rules.fold_static);
    let compute: Vec<usize> = (0..model.nodes.len()).filter(|&i| !is_static[i]).collect();
    let mut cidx = vec![usize::MAX; model.nodes.len()];
    for (c, &n) in compute.iter().enumerate() {
        cidx[n] = c;
    }
    let mut edges = Vec::new();
    for (c, &n) in compute.iter().enumerate() {
        for t in model.nodes[n].inputs.iter().filter(|t| !t.is_empty()) {
            if let Some(p) = model.producer(t) {
                if !is_static[p] {
                    edges.push((cidx[p], c));
                }
            }
        }
    }
    let graph_outputs: HashSet<&str> = model.outputs.iter().map(String::as_str).collect();
    let makes_output: Vec<bool> = compute
        .iter()
        .map(|&n| {
            model.nodes[n]
                .outputs
                .iter()
                .any(|o| graph_outputs.contains(o.as_str()))
        })
        .collect();

    let mut gg = GroupGraph::new(compute.len(), edges);
    let consumers = model.consumers();
    let ctx = Ctx {
        model,
        compute: &compute,
        makes_output: &makes_output,
        is_static: &is_static,
        consumers: &consumers,
        graph_outputs: &graph_outputs,
        chains_only: rules.chains_only,
        refused: RefCell::new(BTreeMap::new()),
    };
    loop {
        let mut changed = false;
        for rule in &rules.rules {
            while apply_once(&mut gg, &ctx, rule) {
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut coarse = build(&ctx, rules.backend, &gg);
    coarse.refused = ctx.refused.take();
    debug!(
        before = coarse.nodes_before,
        after = coarse.groups.len(),
        "coarsened"
    );
    coarse
}

struct Ctx<'a> {
    model: &'a OnnxModel,
    compute: &'a [usize],
    makes_output: &'a [bool],
    is_static: &'a [bool],
    consumers: &'a HashMap<&'a str, Vec<usize>>,
    graph_outputs: &'a HashSet<&'a str>,
    chains_only: bool,
    /// Merges refused for a generator limit, by reason.
    refused: RefCell<BTreeMap<String, usize>>,
}

impl Ctx<'_> {
    /// Whether a tensor is a constant: an initializer or the output of a folded node.
    fn is_const(&self, t: &str) -> bool {
        match self.model.tensors.get(t).map(|i| &i.origin) {
            Some(TensorOrigin::Initializer(_)) => true,
            Some(TensorOrigin::Node(p)) => self.is_static[*p],
            _ => false,
        }
    }

    /// The chain steps of a set of model nodes, if they form one.
    fn chain(&self, nodes: &[usize]) -> Result<Vec<chain::Step>, chain::NotAChain> {
        let inside: HashSet<usize> = nodes.iter().copied().collect();
        let leaves = |t: &str| {
            self.graph_outputs.contains(t)
                || self.consumers.get(t).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| !self.is_static[*c] && !inside.contains(c))
                })
        };
        chain::steps(self.model, nodes, &|t| self.is_const(t), &leaves)
    }

    fn ops<'m>(&'m self, gg: &GroupGraph, g: usize) -> Vec<&'m str> {
        gg.members(g)
            .iter()
            .map(|&c| self.model.nodes[self.compute[c]].op_type.as_str())
            .collect()
    }

    fn matches(&self, gg: &GroupGraph, rule: &FusionRule, p: usize, c: usize) -> bool {
        let (pops, cops) = (self.ops(gg, p), self.ops(gg, c));
        if !rule.producer.matches(classify(&pops), &pops)
            || !rule.consumer.matches(classify(&cops), &cops)
        {
            return false;
        }
        let allowed = match rule.condition {
            Condition::Acyclic => true,
            Condition::SoleConsumer => {
                gg.succ(p).len() == 1
                    && gg.succ(p).contains(&c)
                    && !gg.members(p).iter().any(|&m| self.makes_output[m])
            }
        };
        if !allowed || !self.chains_only {
            return allowed;
        }
        let mut nodes: Vec<usize> = gg
            .members(p)
            .iter()
            .chain(gg.members(c))
            .map(|&m| self.compute[m])
            .collect();
        nodes.sort_unstable();
        match self.chain(&nodes) {
            Ok(_) => true,
            Err(why) => {
                if why.is_generator_limit() {
                    debug!(rule = rule.name, reason = %why, "merge refused");
                    *self
                        .refused
                        .borrow_mut()
                        .entry(why.to_string())
                        .or_insert(0) += 1;
                }
                false
            }
        }
    }
}

/// One sweep of `rule` over every producer -> consumer edge; whether anything merged.
fn apply_once(gg: &mut GroupGraph, ctx: &Ctx, rule: &FusionRule) -> bool {
    let mut merged = false;
    for p in gg.topo_order() {
        let consumers: Vec<usize> = gg.succ(p).iter().copied().collect();
        for c in consumers {
            if gg.is_alive(p)
                && gg.is_alive(c)
                && gg.succ(p).contains(&c)
                && ctx.matches(gg, rule, p, c)
                && gg.try_merge(p, c)
            {
                merged = true;
            }
        }
    }
    merged
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

fn build(ctx: &Ctx, backend: Backend, gg: &GroupGraph) -> CoarseGraph {
    let (model, is_static, compute) = (ctx.model, ctx.is_static, ctx.compute);
    let (consumers, graph_outputs) = (ctx.consumers, ctx.graph_outputs);
    let order = gg.topo_order();
    let mut group_of_node = vec![usize::MAX; model.nodes.len()];
    for (gi, &g) in order.iter().enumerate() {
        for &c in gg.members(g) {
            group_of_node[compute[c]] = gi;
        }
    }
    let shape = |t: &str| -> TensorShape {
        model.shape(t).cloned().unwrap_or(TensorShape {
            dims: vec![],
            dtype: moirai_core::kernel::DType::F32,
        })
    };
    let bytes = |t: &str| model.shape(t).map(|s| s.bytes() as u64).unwrap_or(0);
    let is_const = |t: &str| ctx.is_const(t);

    let mut groups = Vec::with_capacity(order.len());
    for (gi, &g) in order.iter().enumerate() {
        let mut nodes: Vec<usize> = gg.members(g).iter().map(|&c| compute[c]).collect();
        nodes.sort_unstable();
        let (mut inputs, mut params, mut boundary, mut outputs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &n in &nodes {
            for t in model.nodes[n].inputs.iter().filter(|t| !t.is_empty()) {
                let internal = model.producer(t).is_some_and(|p| group_of_node[p] == gi);
                if internal {
                    continue;
                }
                push_unique(&mut boundary, t);
                if is_const(t) {
                    push_unique(&mut params, t);
                } else {
                    push_unique(&mut inputs, t);
                }
            }
            for t in model.nodes[n].outputs.iter().filter(|t| !t.is_empty()) {
                let read_outside = consumers
                    .get(t.as_str())
                    .is_some_and(|cs| cs.iter().any(|&c| !is_static[c] && group_of_node[c] != gi));
                if read_outside || graph_outputs.contains(t.as_str()) {
                    push_unique(&mut outputs, t);
                }
            }
        }
        // Folded shape-only nodes: every static producer behind the params.
        let mut folded = Vec::new();
        let mut initializers = Vec::new();
        let mut stack: Vec<&str> = params.iter().map(String::as_str).collect();
        let mut seen: HashSet<&str> = HashSet::new();
        while let Some(t) = stack.pop() {
            if !seen.insert(t) {
                continue;
            }
            match model.tensors.get(t).map(|i| &i.origin) {
                Some(TensorOrigin::Initializer(_)) => initializers.push(t.to_string()),
                Some(TensorOrigin::Node(p)) if is_static[*p] => {
                    if !folded.contains(p) {
                        folded.push(*p);
                    }
                    stack.extend(
                        model.nodes[*p]
                            .inputs
                            .iter()
                            .filter(|i| !i.is_empty())
                            .map(String::as_str),
                    );
                }
                _ => {}
            }
        }
        folded.sort_unstable();
        initializers.sort();
        let ops: Vec<&str> = nodes
            .iter()
            .map(|&n| model.nodes[n].op_type.as_str())
            .collect();
        // On chain backends the signature is the chain as the kernel generator wires it
        // (GELU as one op, operands in chain order); elsewhere the ONNX nodes and the
        // boundary tensors in order of first use.
        let steps = if ctx.chains_only {
            ctx.chain(&nodes).ok()
        } else {
            None
        };
        let operands: Vec<String> = match &steps {
            Some(steps) => steps.iter().flat_map(|s| s.operands.clone()).collect(),
            None => boundary.clone(),
        };
        let (sig_nodes, sig_inputs): (Vec<FusedNode>, Vec<TensorShape>) = match &steps {
            Some(steps) => (
                steps
                    .iter()
                    .map(|s| FusedNode {
                        op_type: s.op_type.clone(),
                        // The ONNX node behind a step, unless the step stands for several
                        // (GELU): it says which of its optional inputs are absent.
                        attrs: match model.producer(&s.output).map(|n| &model.nodes[n]) {
                            Some(n) if n.op_type == s.op_type => signature_attrs(n),
                            _ => s.attrs.clone(),
                        },
                    })
                    .collect(),
                steps
                    .iter()
                    .flat_map(|s| s.operands.iter().map(|t| shape(t)))
                    .collect(),
            ),
            None => (
                nodes
                    .iter()
                    .map(|&n| FusedNode {
                        op_type: model.nodes[n].op_type.clone(),
                        attrs: signature_attrs(&model.nodes[n]),
                    })
                    .collect(),
                boundary.iter().map(|t| shape(t)).collect(),
            ),
        };
        let signature = KernelSignature {
            class: classify(&ops),
            nodes: sig_nodes,
            inputs: sig_inputs,
            outputs: outputs.iter().map(|t| shape(t)).collect(),
            shapes: match &steps {
                Some(steps) => steps.iter().map(|s| s.shape.clone()).collect(),
                None => nodes
                    .iter()
                    .map(|&n| {
                        let first = model.nodes[n].outputs.iter().find(|o| !o.is_empty());
                        first.map(|t| shape(t)).unwrap_or_else(|| shape(""))
                    })
                    .collect(),
            },
            flops: nodes.iter().map(|&n| model.nodes[n].flops).sum(),
            bytes: boundary.iter().chain(&outputs).map(|t| bytes(t)).sum(),
            // Chains are wired by convention; other groups say their edges.
            dag: if steps.is_some() {
                None
            } else {
                dag_of(model, &nodes, &boundary, &outputs)
            },
        };
        let anchor = nodes
            .iter()
            .find(|&&n| !VIEW.contains(&model.nodes[n].op_type.as_str()))
            .or(nodes.first())
            .copied()
            .unwrap_or(0);
        groups.push(FusedGroup {
            name: model.nodes[anchor].name.clone(),
            param_bytes: params.iter().map(|t| bytes(t)).sum(),
            output_bytes: outputs.iter().map(|t| bytes(t)).sum(),
            nodes,
            folded,
            inputs,
            params,
            initializers,
            outputs,
            operands,
            signature,
        });
    }

    let mut edges = Vec::new();
    for (dst, g) in groups.iter().enumerate() {
        for t in &g.inputs {
            if let Some(p) = model.producer(t) {
                let src = group_of_node[p];
                if src != usize::MAX && src != dst {
                    edges.push(GroupEdge {
                        src,
                        dst,
                        tensor: t.clone(),
                        bytes: bytes(t),
                    });
                }
            }
        }
    }
    CoarseGraph {
        model: model.name.clone(),
        backend,
        nodes_before: model.nodes.len(),
        folded_nodes: is_static.iter().filter(|s| **s).count(),
        groups,
        edges,
        refused: BTreeMap::new(),
    }
}

/// Per-pattern counts of a coarse graph, for reports: `pattern -> groups`.
pub fn pattern_counts(coarse: &CoarseGraph) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for g in &coarse.groups {
        *m.entry(g.signature.pattern()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests;
