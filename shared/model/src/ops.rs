//! The one op table: every ONNX op the project knows, with what the importer counts it as
//! ([`CostKind`]), which family the fusion rules and kernel classes see it in ([`Family`]), and
//! whether its two operands may swap ([`OpInfo::commutative`]). The importer's FLOP counts,
//! the coarsener's rule lists and chain checks, and the agents' kernel generators all ask
//! here, so an op is added in one place.

/// How an op's FLOPs are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostKind {
    /// `factor` operations per output element.
    Elementwise(u64),
    Conv,
    ConvTranspose,
    Gemm,
    MatMul,
    /// Windowed pooling: one operation per window element per output element.
    Pool,
    /// Global pooling and reductions: `factor` operations per input element.
    Reduce(u64),
    /// Data movement only.
    Data,
}

/// How the fusion rules and kernel classes group an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Conv,
    MatMul,
    /// Windowed and global pooling.
    Pool,
    /// Reductions along axes.
    Reduce,
    /// Element-wise with broadcasting, including per-channel affine ones (BatchNorm) and casts.
    Eltwise,
    /// Only reinterprets a tensor's shape.
    View,
    /// Moves or copies data.
    Copy,
    /// Everything else the importer knows (gathers, normalisations, shape sources, ...).
    Other,
}

/// One op of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpInfo {
    pub name: &'static str,
    pub family: Family,
    /// How its FLOPs are counted; `None`: the importer does not take it.
    pub cost: Option<CostKind>,
    /// A binary op whose operands may swap (what a fused chain needs of an op that reads the
    /// chain's value as its second operand).
    pub commutative: bool,
}

const fn op(
    name: &'static str,
    family: Family,
    cost: Option<CostKind>,
    commutative: bool,
) -> OpInfo {
    OpInfo {
        name,
        family,
        cost,
        commutative,
    }
}

use CostKind as C;
use Family as F;

/// The table.
pub const OPS: &[OpInfo] = &[
    op("Conv", F::Conv, Some(C::Conv), false),
    op("ConvTranspose", F::Conv, Some(C::ConvTranspose), false),
    op("Gemm", F::MatMul, Some(C::Gemm), false),
    op("MatMul", F::MatMul, Some(C::MatMul), false),
    op("MaxPool", F::Pool, Some(C::Pool), false),
    op("AveragePool", F::Pool, Some(C::Pool), false),
    op("LpPool", F::Pool, Some(C::Pool), false),
    op("GlobalAveragePool", F::Pool, Some(C::Reduce(1)), false),
    op("GlobalMaxPool", F::Pool, Some(C::Reduce(1)), false),
    op("ReduceMean", F::Reduce, Some(C::Reduce(1)), false),
    op("ReduceSum", F::Reduce, Some(C::Reduce(1)), false),
    op("ReduceMax", F::Reduce, Some(C::Reduce(1)), false),
    op("ReduceMin", F::Reduce, Some(C::Reduce(1)), false),
    op("ReduceProd", F::Reduce, Some(C::Reduce(1)), false),
    op("ArgMax", F::Other, Some(C::Reduce(1)), false),
    op("ArgMin", F::Other, Some(C::Reduce(1)), false),
    op("CumSum", F::Other, Some(C::Reduce(1)), false),
    op("ReduceL2", F::Reduce, Some(C::Reduce(2)), false),
    op("ReduceSumSquare", F::Reduce, Some(C::Reduce(2)), false),
    op("ReduceL1", F::Reduce, Some(C::Reduce(2)), false),
    op("ReduceLogSumExp", F::Reduce, Some(C::Reduce(5)), false),
    op("Softmax", F::Other, Some(C::Reduce(5)), false),
    op("LogSoftmax", F::Other, Some(C::Reduce(5)), false),
    op("LayerNormalization", F::Other, Some(C::Reduce(8)), false),
    op("InstanceNormalization", F::Other, Some(C::Reduce(8)), false),
    op("GroupNormalization", F::Other, Some(C::Reduce(8)), false),
    op("Add", F::Eltwise, Some(C::Elementwise(1)), true),
    op("Sub", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Mul", F::Eltwise, Some(C::Elementwise(1)), true),
    op("Div", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Relu", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Neg", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Abs", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Max", F::Eltwise, Some(C::Elementwise(1)), true),
    op("Min", F::Eltwise, Some(C::Elementwise(1)), true),
    op("Sum", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Mean", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Where", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Equal", F::Eltwise, Some(C::Elementwise(1)), true),
    op("Greater", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Less", F::Eltwise, Some(C::Elementwise(1)), false),
    op("GreaterOrEqual", F::Eltwise, Some(C::Elementwise(1)), false),
    op("LessOrEqual", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Not", F::Eltwise, Some(C::Elementwise(1)), false),
    op("And", F::Eltwise, Some(C::Elementwise(1)), true),
    op("Or", F::Eltwise, Some(C::Elementwise(1)), true),
    op("Xor", F::Eltwise, Some(C::Elementwise(1)), true),
    op("IsNaN", F::Eltwise, Some(C::Elementwise(1)), false),
    op("IsInf", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Clip", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Floor", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Ceil", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Round", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Sign", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Reciprocal", F::Eltwise, Some(C::Elementwise(1)), false),
    op("PRelu", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Sqrt", F::Eltwise, Some(C::Elementwise(1)), false),
    op("Mod", F::Eltwise, Some(C::Elementwise(1)), false),
    op("LeakyRelu", F::Eltwise, Some(C::Elementwise(2)), false),
    op("Pow", F::Eltwise, Some(C::Elementwise(2)), false),
    op(
        "BatchNormalization",
        F::Eltwise,
        Some(C::Elementwise(2)),
        false,
    ),
    op("HardSigmoid", F::Eltwise, Some(C::Elementwise(3)), false),
    op("Sigmoid", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Tanh", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Exp", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Log", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Erf", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Softplus", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Elu", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Selu", F::Eltwise, Some(C::Elementwise(4)), false),
    op("HardSwish", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Sin", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Cos", F::Eltwise, Some(C::Elementwise(4)), false),
    op("Resize", F::Other, Some(C::Elementwise(4)), false),
    op("Gelu", F::Eltwise, Some(C::Elementwise(8)), false),
    op("Mish", F::Eltwise, Some(C::Elementwise(8)), false),
    op("Reshape", F::View, Some(C::Data), false),
    op("Flatten", F::View, Some(C::Data), false),
    op("Squeeze", F::View, Some(C::Data), false),
    op("Unsqueeze", F::View, Some(C::Data), false),
    op("Identity", F::View, Some(C::Data), false),
    op("Dropout", F::View, Some(C::Data), false),
    op("Shape", F::Other, Some(C::Data), false),
    op("Size", F::Other, Some(C::Data), false),
    op("Constant", F::Other, Some(C::Data), false),
    op("ConstantOfShape", F::Copy, Some(C::Data), false),
    op("Transpose", F::Copy, Some(C::Data), false),
    op("Concat", F::Copy, Some(C::Data), false),
    op("Split", F::Copy, Some(C::Data), false),
    op("Slice", F::Copy, Some(C::Data), false),
    op("Gather", F::Other, Some(C::Data), false),
    op("GatherElements", F::Other, Some(C::Data), false),
    op("GatherND", F::Other, Some(C::Data), false),
    op("Expand", F::Copy, Some(C::Data), false),
    op("Tile", F::Copy, Some(C::Data), false),
    op("Pad", F::Copy, Some(C::Data), false),
    op("Range", F::Copy, Some(C::Data), false),
    op("Cast", F::Eltwise, Some(C::Data), false),
    op("CastLike", F::Eltwise, Some(C::Data), false),
    op("DepthToSpace", F::Copy, Some(C::Data), false),
    op("SpaceToDepth", F::Copy, Some(C::Data), false),
    op("ScatterND", F::Other, Some(C::Data), false),
    op("ScatterElements", F::Other, Some(C::Data), false),
    op("Trilu", F::Copy, Some(C::Data), false),
    op("OneHot", F::Other, Some(C::Data), false),
];

/// The entry of `op`, if the table has it.
pub fn info(op: &str) -> Option<&'static OpInfo> {
    OPS.iter().find(|o| o.name == op)
}

/// Whether `op` is of `family`.
pub fn is(op: &str, family: Family) -> bool {
    info(op).is_some_and(|o| o.family == family)
}

/// Whether `op` is a commutative binary op.
pub fn commutative(op: &str) -> bool {
    info(op).is_some_and(|o| o.commutative)
}

/// The ops of one family, in table order (for the fusion rules' lists).
pub fn family(family: Family) -> Vec<&'static str> {
    OPS.iter()
        .filter(|o| o.family == family)
        .map(|o| o.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_listed_once() {
        for (i, o) in OPS.iter().enumerate() {
            assert!(
                OPS[..i].iter().all(|p| p.name != o.name),
                "{} twice",
                o.name
            );
        }
    }

    #[test]
    fn commutative_ops_are_binary_eltwise() {
        for o in OPS.iter().filter(|o| o.commutative) {
            assert_eq!(o.family, Family::Eltwise, "{}", o.name);
        }
        assert!(commutative("Add") && !commutative("Sub") && !commutative("Where"));
    }
}
