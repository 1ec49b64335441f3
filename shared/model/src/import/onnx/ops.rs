//! The ONNX ops the importer knows, and what each costs in floating-point operations.
//!
//! Counting conventions: a multiply-add counts 2; an element-wise op costs a fixed number of
//! operations per output element (transcendentals count several, as their polynomial
//! expansions do); data movement (reshape, transpose, gather, concat) costs no FLOPs, only
//! bytes. The figures feed a roofline, so they need to be right in order of magnitude, not to
//! the instruction.

use moirai_core::kernel::{AttrValue, TensorShape};
use std::collections::BTreeMap;

pub use crate::ops::CostKind;

/// The cost kind of an op of the default ONNX domain (from the op table), or `None` when the
/// importer does not know it.
pub fn cost_kind(op_type: &str) -> Option<CostKind> {
    crate::ops::info(op_type).and_then(|o| o.cost)
}

fn ints<'a>(attrs: &'a BTreeMap<String, AttrValue>, name: &str) -> Option<&'a [i64]> {
    match attrs.get(name) {
        Some(AttrValue::Ints(v)) => Some(v),
        _ => None,
    }
}

fn int(attrs: &BTreeMap<String, AttrValue>, name: &str) -> Option<i64> {
    match attrs.get(name) {
        Some(AttrValue::Int(v)) => Some(*v),
        _ => None,
    }
}

fn prod(d: &[usize]) -> u64 {
    d.iter().fold(1u64, |acc, &x| acc.saturating_mul(x as u64))
}

/// FLOPs of one node; `inputs[i]` is `None` for an absent optional input. Returns an error
/// message when the shapes do not fit the op (rank too small and the like).
pub fn flops(
    kind: CostKind,
    attrs: &BTreeMap<String, AttrValue>,
    inputs: &[Option<&TensorShape>],
    outputs: &[&TensorShape],
) -> Result<u64, String> {
    let input = |i: usize| -> Result<&TensorShape, String> {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("input {i} is missing"))
    };
    // Saturating arithmetic: the importer caps tensor sizes, but products of several can
    // still overflow on a corrupt file, and FLOPs are an estimate anyway.
    let out_elems = outputs.first().map(|t| prod(&t.dims)).unwrap_or(0);
    let in_elems = |i: usize| input(i).map(|t| prod(&t.dims));
    Ok(match kind {
        CostKind::Data => 0,
        CostKind::Elementwise(f) => f.saturating_mul(out_elems),
        CostKind::Reduce(f) => f.saturating_mul(in_elems(0)?),
        CostKind::Pool => {
            let window = ints(attrs, "kernel_shape")
                .map(|k| {
                    k.iter()
                        .fold(1u64, |a, &x| a.saturating_mul(x.max(1) as u64))
                })
                .unwrap_or(1);
            window.saturating_mul(out_elems)
        }
        CostKind::Conv => {
            // W: [Cout, Cin/groups, k...]; each output element is a dot product over
            // Cin/groups * prod(k), plus one add for the bias.
            let w = input(1)?;
            if w.dims.len() < 2 {
                return Err(format!("weight has rank {}, expected >= 2", w.dims.len()));
            }
            let per_out = prod(&w.dims[1..]);
            let bias = if inputs.get(2).copied().flatten().is_some() {
                out_elems
            } else {
                0
            };
            per_out
                .saturating_mul(out_elems)
                .saturating_mul(2)
                .saturating_add(bias)
        }
        CostKind::ConvTranspose => {
            // Every input element scatters into Cout/groups * prod(k) outputs.
            let x = in_elems(0)?;
            let w = input(1)?;
            if w.dims.len() < 2 {
                return Err(format!("weight has rank {}, expected >= 2", w.dims.len()));
            }
            // W: [Cin, Cout/groups, k...].
            let per_in = prod(&w.dims[1..]);
            per_in.saturating_mul(x).saturating_mul(2)
        }
        CostKind::Gemm => {
            let a = input(0)?;
            if a.dims.len() != 2 {
                return Err(format!("A has rank {}, expected 2", a.dims.len()));
            }
            let trans_a = int(attrs, "transA").unwrap_or(0) != 0;
            let k = if trans_a { a.dims[0] } else { a.dims[1] } as u64;
            let c = if inputs.get(2).copied().flatten().is_some() {
                out_elems
            } else {
                0
            };
            k.saturating_mul(out_elems)
                .saturating_mul(2)
                .saturating_add(c)
        }
        CostKind::MatMul => {
            // Output [..., M, N]; the contracted dimension is A's last.
            let a = input(0)?;
            let k = *a.dims.last().ok_or("A is a scalar")? as u64;
            k.saturating_mul(out_elems).saturating_mul(2)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moirai_core::kernel::DType;

    fn t(dims: &[usize]) -> TensorShape {
        TensorShape {
            dims: dims.to_vec(),
            dtype: DType::F32,
        }
    }

    #[test]
    fn conv_counts_two_per_multiply_add_plus_bias() {
        // ResNet's first conv: 3->64, 7x7, stride 2, 224 -> 112: 118 MMACs.
        let (x, w, b, y) = (
            t(&[1, 3, 224, 224]),
            t(&[64, 3, 7, 7]),
            t(&[64]),
            t(&[1, 64, 112, 112]),
        );
        let f = flops(
            CostKind::Conv,
            &BTreeMap::new(),
            &[Some(&x), Some(&w), Some(&b)],
            &[&y],
        )
        .unwrap();
        let outs = 64 * 112 * 112;
        assert_eq!(f, 2 * 147 * outs + outs);
    }

    #[test]
    fn depthwise_conv_uses_the_per_group_input_channels() {
        let (x, w, y) = (
            t(&[1, 32, 112, 112]),
            t(&[32, 1, 3, 3]),
            t(&[1, 32, 112, 112]),
        );
        let f = flops(
            CostKind::Conv,
            &BTreeMap::new(),
            &[Some(&x), Some(&w), None],
            &[&y],
        )
        .unwrap();
        assert_eq!(f, 2 * 9 * 32 * 112 * 112);
    }

    #[test]
    fn batched_matmul_counts_every_batch() {
        let (a, b, y) = (
            t(&[1, 12, 128, 64]),
            t(&[1, 12, 64, 128]),
            t(&[1, 12, 128, 128]),
        );
        let f = flops(
            CostKind::MatMul,
            &BTreeMap::new(),
            &[Some(&a), Some(&b)],
            &[&y],
        )
        .unwrap();
        assert_eq!(f, 2 * 64 * 12 * 128 * 128);
    }

    #[test]
    fn gemm_honours_trans_a() {
        let attrs = BTreeMap::from([("transA".to_string(), AttrValue::Int(1))]);
        let (a, b, y) = (t(&[512, 4]), t(&[512, 10]), t(&[4, 10]));
        let f = flops(CostKind::Gemm, &attrs, &[Some(&a), Some(&b), None], &[&y]).unwrap();
        assert_eq!(f, 2 * 512 * 40);
    }

    #[test]
    fn a_conv_with_a_scalar_weight_is_an_error_not_a_panic() {
        let (x, w, y) = (t(&[1, 3, 8, 8]), t(&[3]), t(&[1, 3, 8, 8]));
        assert!(flops(
            CostKind::Conv,
            &BTreeMap::new(),
            &[Some(&x), Some(&w)],
            &[&y]
        )
        .is_err());
        assert!(flops(CostKind::Conv, &BTreeMap::new(), &[Some(&x)], &[&y]).is_err());
    }

    #[test]
    fn unknown_ops_have_no_cost_kind() {
        assert_eq!(cost_kind("MyCustomOp"), None);
        assert_eq!(cost_kind("Relu"), Some(CostKind::Elementwise(1)));
    }
}
