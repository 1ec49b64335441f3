//! Fusion rules, as data: one [`RuleSet`] per backend we execute on.
//!
//! A rule names which producer group may merge with which consumer group, and under what
//! condition. Groups are matched by their kernel class (what [`classify`] makes of their
//! ops) or by requiring every op in them to come from a list. The coarsener applies the rules
//! in order, each to a fixed point, and repeats until nothing merges; every merge also goes
//! through the cycle check of [`super::merge`].
//!
//! What the rule sets encode is what each backend fuses at run time:
//! - `wgpu` (the agent's WGSL kernels): a matmul or conv kernel takes an element-wise
//!   epilogue (bias, batch norm, activations, Erf-based GELU, residual add); element-wise
//!   chains become one shader; a copy, gather, LayerNorm or Softmax kernel applies a trailing
//!   element-wise op as it writes. Every group must stay a single-output chain the kernel
//!   generator can wire ([`RuleSet::chains_only`]), so decomposed LayerNorm/Softmax patterns,
//!   which are not chains, stay apart on wgpu.
//! - `cpu` (tract-like CPU kernels, which run any subgraph): matmul and conv epilogues
//!   limited to bias, batch norm, residual add and the activations the kernels implement;
//!   element-wise chains and row reductions (LayerNorm, Softmax, also decomposed) when the
//!   intermediate has no other reader.
//!
//! On both, shape-only work (Shape, Constant, Identity of a weight, Gather on a shape, ...)
//! is computed once at load time ([`RuleSet::fold_static`]), and views (Reshape, Flatten,
//! Squeeze, Unsqueeze) are folded into the kernel that reads them.

use std::sync::LazyLock;

use moirai_core::device::Backend;
use moirai_core::kernel::KernelClass;

use crate::ops::{self, Family};

/// Ops that only reinterpret a tensor's shape. (the op table's `View` family)
pub static VIEW: LazyLock<Vec<&'static str>> = LazyLock::new(|| ops::family(Family::View));

/// Ops whose output is known once shapes are: no activation data needed.
pub const SHAPE_SOURCES: &[&str] = &["Constant", "Shape", "Size"];

/// Element-wise ops (with broadcasting), including per-channel affine ones. (the op table's `Eltwise` family)
pub static ELTWISE: LazyLock<Vec<&'static str>> = LazyLock::new(|| ops::family(Family::Eltwise));

/// Reductions along axes. (the op table's `Reduce` family)
pub static REDUCE: LazyLock<Vec<&'static str>> = LazyLock::new(|| ops::family(Family::Reduce));

/// Element-wise ops and reductions: the material of LayerNorm and Softmax patterns.
pub const ROW_REDUCTION: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Max",
    "Neg",
    "Where",
    "IsNaN",
    "Cast",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceL2",
    "ReduceSumSquare",
];

/// Ops that move or copy data. (the op table's `Copy` family)
pub static COPY: LazyLock<Vec<&'static str>> = LazyLock::new(|| ops::family(Family::Copy));

/// Pooling, windowed and global. (the op table's `Pool` family)
pub static POOL: LazyLock<Vec<&'static str>> = LazyLock::new(|| ops::family(Family::Pool));

/// The CPU conv kernel's epilogue: folded batch norm, bias or residual add, activations.
const CPU_CONV_EPILOGUE: &[&str] = &[
    "BatchNormalization",
    "Add",
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
];

/// The CPU matmul kernel's epilogue: bias, residual, scaling, activations (Erf-based GELU
/// included: Div, Erf, Add, Mul).
const CPU_MATMUL_EPILOGUE: &[&str] = &[
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Erf", "Gelu",
];

/// Which groups a side of a rule accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GroupPattern {
    /// Any group.
    Any,
    /// A group whose kernel class is one of these.
    Class(&'static [KernelClass]),
    /// A group made only of these op types.
    Ops(&'static [&'static str]),
}

impl GroupPattern {
    pub fn matches(&self, class: KernelClass, ops: &[&str]) -> bool {
        match self {
            GroupPattern::Any => true,
            GroupPattern::Class(cs) => cs.contains(&class),
            GroupPattern::Ops(allowed) => ops.iter().all(|o| allowed.contains(o)),
        }
    }
}

/// When a matching producer and consumer may merge (besides never creating a cycle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Every reader of the producer's outputs is in the consumer, and none is a graph
    /// output: the intermediate never leaves the fused kernel.
    SoleConsumer,
    /// Any merge that keeps the graph acyclic: the fused kernel writes the intermediate for
    /// its other readers too (multi-output fusion).
    Acyclic,
}

/// One fusion rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusionRule {
    pub name: &'static str,
    pub producer: GroupPattern,
    pub consumer: GroupPattern,
    pub condition: Condition,
}

/// The rules of one backend, in priority order.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    pub backend: Backend,
    /// Fold shape-only subgraphs (everything computable from constants and static shapes)
    /// into the kernels that read them: they run once, at load time.
    pub fold_static: bool,
    /// Only form groups the agent's generated kernels can express: a chain with one output,
    /// where each op after the first reads the previous op's output plus tensors from outside
    /// the kernel (Erf-based GELU counting as one op). See [`super::chain`].
    pub chains_only: bool,
    pub rules: Vec<FusionRule>,
}

const fn rule(
    name: &'static str,
    producer: GroupPattern,
    consumer: GroupPattern,
    condition: Condition,
) -> FusionRule {
    FusionRule {
        name,
        producer,
        consumer,
        condition,
    }
}

use Condition::{Acyclic, SoleConsumer};
use GroupPattern::{Any, Class, Ops};

/// Views go into their reader, or into their producer when several kernels read them.
fn view_rules() -> Vec<FusionRule> {
    vec![
        rule("view-into-consumer", Ops(&VIEW), Any, SoleConsumer),
        rule("view-into-producer", Any, Ops(&VIEW), Acyclic),
    ]
}

impl RuleSet {
    /// The rules of `backend`.
    pub fn for_backend(backend: Backend) -> RuleSet {
        match backend {
            Backend::Wgpu => RuleSet::wgpu(),
            Backend::Cpu => RuleSet::cpu(),
        }
    }

    /// The agent's WGSL kernels.
    pub fn wgpu() -> RuleSet {
        let mut rules = view_rules();
        rules.extend([
            rule(
                "conv-epilogue",
                Class(&[KernelClass::Conv]),
                Ops(&ELTWISE),
                SoleConsumer,
            ),
            rule(
                "matmul-epilogue",
                Class(&[KernelClass::MatMul]),
                Ops(&ELTWISE),
                SoleConsumer,
            ),
            rule("eltwise-chain", Ops(&ELTWISE), Ops(&ELTWISE), SoleConsumer),
            rule(
                "row-reduction",
                Ops(ROW_REDUCTION),
                Ops(ROW_REDUCTION),
                SoleConsumer,
            ),
            rule(
                "norm-epilogue",
                Class(&[KernelClass::LayerNorm, KernelClass::Softmax]),
                Ops(&ELTWISE),
                SoleConsumer,
            ),
            rule(
                "copy-epilogue",
                Class(&[KernelClass::Copy, KernelClass::Gather]),
                Ops(&ELTWISE),
                SoleConsumer,
            ),
        ]);
        RuleSet {
            backend: Backend::Wgpu,
            fold_static: true,
            chains_only: true,
            rules,
        }
    }

    /// CPU kernels.
    pub fn cpu() -> RuleSet {
        let mut rules = view_rules();
        rules.extend([
            rule(
                "conv-epilogue",
                Class(&[KernelClass::Conv]),
                Ops(CPU_CONV_EPILOGUE),
                SoleConsumer,
            ),
            rule(
                "matmul-epilogue",
                Class(&[KernelClass::MatMul]),
                Ops(CPU_MATMUL_EPILOGUE),
                SoleConsumer,
            ),
            rule("eltwise-chain", Ops(&ELTWISE), Ops(&ELTWISE), SoleConsumer),
            rule(
                "row-reduction",
                Ops(ROW_REDUCTION),
                Ops(ROW_REDUCTION),
                SoleConsumer,
            ),
        ]);
        RuleSet {
            backend: Backend::Cpu,
            fold_static: true,
            chains_only: false,
            rules,
        }
    }
}

/// The kernel class of a group of ops: its anchor op decides (conv, matmul, pooling), then
/// recognisable patterns (LayerNorm, Softmax, also decomposed), then what all its ops share.
pub fn classify(ops: &[&str]) -> KernelClass {
    let has = |o: &str| ops.contains(&o);
    let any = |set: &[&str]| ops.iter().any(|o| set.contains(o));
    let all = |sets: &[&[&str]]| ops.iter().all(|o| sets.iter().any(|s| s.contains(o)));
    if has("Conv") || has("ConvTranspose") {
        KernelClass::Conv
    } else if has("MatMul") || has("Gemm") {
        KernelClass::MatMul
    } else if any(&POOL) {
        KernelClass::Pool
    } else if has("LayerNormalization")
        || has("InstanceNormalization")
        || has("GroupNormalization")
        || (has("ReduceMean") && (has("Sqrt") || has("Pow")))
    {
        KernelClass::LayerNorm
    } else if has("Softmax") || has("LogSoftmax") || (has("Exp") && has("ReduceSum")) {
        KernelClass::Softmax
    } else if has("Gather") || has("GatherElements") || has("GatherND") {
        KernelClass::Gather
    } else if any(&ELTWISE) && all(&[&ELTWISE, &VIEW]) {
        KernelClass::Eltwise
    } else if all(&[&COPY, &VIEW, &ELTWISE]) {
        KernelClass::Copy
    } else {
        KernelClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_decide_the_class() {
        assert_eq!(
            classify(&["Conv", "BatchNormalization", "Relu"]),
            KernelClass::Conv
        );
        assert_eq!(classify(&["Reshape", "MatMul", "Add"]), KernelClass::MatMul);
        assert_eq!(classify(&["Relu", "Add"]), KernelClass::Eltwise);
        assert_eq!(
            classify(&["Reshape", "Transpose", "Mul"]),
            KernelClass::Copy
        );
        assert_eq!(classify(&["Flatten"]), KernelClass::Copy);
        assert_eq!(classify(&["ReduceL2"]), KernelClass::Other);
    }

    #[test]
    fn decomposed_layer_norm_and_softmax_are_recognised() {
        let ln = [
            "ReduceMean",
            "Sub",
            "Pow",
            "ReduceMean",
            "Add",
            "Sqrt",
            "Div",
            "Mul",
            "Add",
        ];
        assert_eq!(classify(&ln), KernelClass::LayerNorm);
        assert_eq!(
            classify(&["ReduceMax", "Sub", "Exp", "ReduceSum", "Div"]),
            KernelClass::Softmax
        );
    }

    #[test]
    fn patterns_match_by_class_or_by_every_op() {
        let p = Ops(&VIEW);
        assert!(p.matches(KernelClass::Copy, &["Reshape", "Squeeze"]));
        assert!(!p.matches(KernelClass::Copy, &["Reshape", "Transpose"]));
        assert!(Class(&[KernelClass::Conv]).matches(KernelClass::Conv, &["Conv", "Relu"]));
        assert!(Any.matches(KernelClass::Other, &["Whatever"]));
    }

    #[test]
    fn every_backend_has_a_rule_set_with_epilogues() {
        for b in Backend::ALL {
            let rs = RuleSet::for_backend(b);
            assert_eq!(rs.backend, b);
            assert!(rs.rules.iter().any(|r| r.name == "conv-epilogue"));
            assert!(rs.rules.iter().any(|r| r.name == "matmul-epilogue"));
        }
    }
}
