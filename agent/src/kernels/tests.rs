//! Every kernel class against tract at several shapes, odd ones (not multiples of any tile)
//! included.

use moirai_core::kernel::{AttrValue as A, DType, KernelClass as C, TensorShape};

use super::testutil::{check, check_with, f32s, node, sig, typed};
use super::wire;
use crate::exec::host::{sample_inputs, HostData, HostTensor};

#[test]
fn wiring_gives_optional_inputs_to_the_first_node() {
    let s = sig(
        C::Conv,
        vec![
            node("Conv", &[]),
            node("BatchNormalization", &[]),
            node("Relu", &[]),
            node("Add", &[]),
        ],
        f32s(&[
            &[1, 3, 8, 8],
            &[4, 3, 3, 3],
            &[4],
            &[4],
            &[4],
            &[4],
            &[4],
            &[1, 4, 6, 6],
        ]),
        f32s(&[&[1, 4, 6, 6]]),
    );
    let w = wire(&s).unwrap();
    assert_eq!(w, vec![vec![0, 1, 2], vec![3, 4, 5, 6], vec![], vec![7]]);
}

#[test]
fn wiring_rejects_too_few_inputs() {
    let s = sig(
        C::MatMul,
        vec![node("MatMul", &[])],
        f32s(&[&[2, 2]]),
        f32s(&[&[2, 2]]),
    );
    assert!(wire(&s).is_err());
}

#[test]
fn matmul_matches_tract_at_tile_and_odd_sizes() {
    for (m, k, n) in [
        (64, 64, 64),
        (1, 37, 13),
        (33, 17, 29),
        (7, 8, 12),
        (70, 36, 100),
    ] {
        check(&sig(
            C::MatMul,
            vec![node("MatMul", &[])],
            f32s(&[&[m, k], &[k, n]]),
            f32s(&[&[m, n]]),
        ));
    }
}

#[test]
fn batched_matmul_broadcasts_the_weight_and_fuses_bias_and_gelu() {
    check(&sig(
        C::MatMul,
        vec![node("MatMul", &[]), node("Add", &[]), node("Gelu", &[])],
        f32s(&[&[2, 3, 9, 20], &[20, 12], &[12]]),
        f32s(&[&[2, 3, 9, 12]]),
    ));
    check(&sig(
        C::MatMul,
        vec![node("MatMul", &[]), node("Div", &[])],
        f32s(&[&[2, 5, 8], &[2, 8, 5], &[1]]),
        f32s(&[&[2, 5, 5]]),
    ));
}

#[test]
fn gemm_with_transposes_alpha_beta_and_relu() {
    for (ta, tb) in [(0, 1), (1, 0), (1, 1), (0, 0)] {
        let (m, k, n) = (5, 12, 9);
        let a = if ta == 1 { [k, m] } else { [m, k] };
        let b = if tb == 1 { [n, k] } else { [k, n] };
        check(&sig(
            C::MatMul,
            vec![
                node(
                    "Gemm",
                    &[
                        ("transA", A::Int(ta)),
                        ("transB", A::Int(tb)),
                        ("alpha", A::Float(0.5)),
                        ("beta", A::Float(2.0)),
                    ],
                ),
                node("Relu", &[]),
            ],
            f32s(&[&a, &b, &[n]]),
            f32s(&[&[m, n]]),
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_sig(
    x: [usize; 4],
    oc: usize,
    k: [usize; 2],
    stride: usize,
    pad: usize,
    dil: usize,
    group: usize,
    tail: &[&str],
) -> moirai_core::kernel::KernelSignature {
    let oh = (x[2] + 2 * pad - dil * (k[0] - 1) - 1) / stride + 1;
    let ow = (x[3] + 2 * pad - dil * (k[1] - 1) - 1) / stride + 1;
    let mut nodes = vec![node(
        "Conv",
        &[
            ("strides", A::Ints(vec![stride as i64; 2])),
            ("pads", A::Ints(vec![pad as i64; 4])),
            ("dilations", A::Ints(vec![dil as i64; 2])),
            ("group", A::Int(group as i64)),
            ("kernel_shape", A::Ints(vec![k[0] as i64, k[1] as i64])),
        ],
    )];
    let out = [x[0], oc, oh, ow];
    let mut ins = f32s(&[&x, &[oc, x[1] / group, k[0], k[1]], &[oc]]);
    for t in tail {
        match *t {
            "BatchNormalization" => {
                nodes.push(node(t, &[("epsilon", A::Float(1e-3))]));
                ins.extend(f32s(&[&[oc], &[oc], &[oc], &[oc]]));
            }
            "Add" => {
                nodes.push(node(t, &[]));
                ins.extend(f32s(&[&out]));
            }
            "Clip" => {
                nodes.push(node(t, &[]));
                ins.extend(f32s(&[&[], &[]]));
            }
            _ => nodes.push(node(t, &[])),
        }
    }
    sig(C::Conv, nodes, ins, f32s(&[&out]))
}

#[test]
fn conv_with_stride_padding_and_fused_batchnorm_relu_residual() {
    check(&conv_sig(
        [1, 3, 11, 9],
        10,
        [3, 3],
        2,
        1,
        1,
        1,
        &["BatchNormalization", "Relu"],
    ));
    check(&conv_sig(
        [2, 8, 7, 7],
        16,
        [1, 1],
        1,
        0,
        1,
        1,
        &["Relu", "Add"],
    ));
    check(&conv_sig([1, 4, 9, 10], 5, [3, 2], 1, 2, 2, 1, &[]));
}

#[test]
fn grouped_and_depthwise_conv_with_relu6() {
    check(&conv_sig([1, 6, 8, 8], 6, [3, 3], 1, 1, 1, 6, &["Clip"]));
    check(&conv_sig([1, 6, 9, 9], 12, [3, 3], 2, 1, 1, 3, &["Relu"]));
}

#[test]
fn pooling_matches_tract() {
    let x = [1, 3, 9, 11];
    check(&sig(
        C::Pool,
        vec![node(
            "MaxPool",
            &[
                ("kernel_shape", A::Ints(vec![3, 3])),
                ("strides", A::Ints(vec![2, 2])),
                ("pads", A::Ints(vec![1, 1, 1, 1])),
            ],
        )],
        f32s(&[&x]),
        f32s(&[&[1, 3, 5, 6]]),
    ));
    check(&sig(
        C::Pool,
        vec![node(
            "AveragePool",
            &[
                ("kernel_shape", A::Ints(vec![2, 2])),
                ("strides", A::Ints(vec![2, 2])),
            ],
        )],
        f32s(&[&x]),
        f32s(&[&[1, 3, 4, 5]]),
    ));
    check(&sig(
        C::Pool,
        vec![node("GlobalAveragePool", &[])],
        f32s(&[&x]),
        f32s(&[&[1, 3, 1, 1]]),
    ));
}

#[test]
fn eltwise_chain_broadcasts_each_operand() {
    check(&sig(
        C::Eltwise,
        vec![
            node("Add", &[]),
            node("Mul", &[]),
            node("Sigmoid", &[]),
            node("Sub", &[]),
        ],
        f32s(&[&[2, 3, 5], &[5], &[2, 1, 5], &[3, 1]]),
        f32s(&[&[2, 3, 5]]),
    ));
    check(&sig(
        C::Eltwise,
        vec![node("Mul", &[]), node("Tanh", &[])],
        f32s(&[&[1, 4], &[3, 1]]),
        f32s(&[&[3, 4]]),
    ));
    let mut pow = sig(
        C::Eltwise,
        vec![node("Sub", &[]), node("Pow", &[]), node("Sqrt", &[])],
        f32s(&[&[4, 7], &[4, 1], &[]]),
        f32s(&[&[4, 7]]),
    );
    pow.nodes.push(node("Erf", &[]));
    check(&pow);
}

#[test]
fn softmax_over_last_and_middle_axes() {
    check(&sig(
        C::Softmax,
        vec![node("Softmax", &[("axis", A::Int(-1))])],
        f32s(&[&[2, 3, 77]]),
        f32s(&[&[2, 3, 77]]),
    ));
    check(&sig(
        C::Softmax,
        vec![node("Softmax", &[("axis", A::Int(1))])],
        f32s(&[&[2, 5, 3]]),
        f32s(&[&[2, 5, 3]]),
    ));
}

#[test]
fn layernorm_with_scale_and_bias() {
    check(&sig(
        C::LayerNorm,
        vec![node(
            "LayerNormalization",
            &[("axis", A::Int(-1)), ("epsilon", A::Float(1e-12))],
        )],
        f32s(&[&[1, 5, 70], &[70], &[70]]),
        f32s(&[&[1, 5, 70]]),
    ));
}

#[test]
fn copies_transpose_concat_split_and_view() {
    check(&sig(
        C::Copy,
        vec![node("Transpose", &[("perm", A::Ints(vec![0, 2, 1, 3]))])],
        f32s(&[&[1, 5, 3, 7]]),
        f32s(&[&[1, 3, 5, 7]]),
    ));
    check(&sig(
        C::Copy,
        vec![node("Concat", &[("axis", A::Int(1))])],
        f32s(&[&[2, 3, 4], &[2, 5, 4]]),
        f32s(&[&[2, 8, 4]]),
    ));
    check(&sig(
        C::Copy,
        vec![node("Split", &[("axis", A::Int(2))])],
        vec![
            TensorShape {
                dims: vec![2, 3, 9],
                dtype: DType::F32,
            },
            TensorShape {
                dims: vec![2],
                dtype: DType::I64,
            },
        ],
        f32s(&[&[2, 3, 4], &[2, 3, 5]]),
    ));
    check(&sig(
        C::Copy,
        vec![
            node("Reshape", &[]),
            node("Transpose", &[("perm", A::Ints(vec![0, 2, 1, 3]))]),
        ],
        vec![
            TensorShape {
                dims: vec![1, 6, 12],
                dtype: DType::F32,
            },
            TensorShape {
                dims: vec![4],
                dtype: DType::I64,
            },
        ],
        f32s(&[&[1, 3, 6, 4]]),
    ));
    check(&sig(
        C::Copy,
        vec![node("Flatten", &[("axis", A::Int(1))])],
        f32s(&[&[2, 3, 1, 1]]),
        f32s(&[&[2, 3]]),
    ));
}

#[test]
fn gather_embedding_with_position_add() {
    check(&sig(
        C::Gather,
        vec![node("Gather", &[("axis", A::Int(0))]), node("Add", &[])],
        vec![
            TensorShape {
                dims: vec![50, 12],
                dtype: DType::F32,
            },
            TensorShape {
                dims: vec![1, 9],
                dtype: DType::I64,
            },
            TensorShape {
                dims: vec![1, 9, 12],
                dtype: DType::F32,
            },
        ],
        f32s(&[&[1, 9, 12]]),
    ));
}

#[test]
fn views_in_front_of_a_matmul_are_free_reinterpretations() {
    check(&sig(
        C::MatMul,
        vec![
            node("Flatten", &[("axis", A::Int(1))]),
            node("Gemm", &[("transB", A::Int(1))]),
        ],
        f32s(&[&[2, 12, 1, 1], &[10, 12], &[10]]),
        f32s(&[&[2, 10]]),
    ));
    check(&sig(
        C::MatMul,
        vec![node("Reshape", &[]), node("MatMul", &[]), node("Add", &[])],
        vec![
            TensorShape {
                dims: vec![1, 6, 2, 8],
                dtype: DType::F32,
            },
            TensorShape {
                dims: vec![3],
                dtype: DType::I64,
            },
            TensorShape {
                dims: vec![16, 12],
                dtype: DType::F32,
            },
            TensorShape {
                dims: vec![12],
                dtype: DType::F32,
            },
        ],
        f32s(&[&[1, 6, 12]]),
    ));
}

#[test]
fn head_transpose_with_scale_and_flattened_global_pool() {
    check(&sig(
        C::Copy,
        vec![
            node("Reshape", &[]),
            node("Transpose", &[("perm", A::Ints(vec![0, 2, 1, 3]))]),
            node("Mul", &[]),
        ],
        vec![
            TensorShape {
                dims: vec![1, 5, 12],
                dtype: DType::F32,
            },
            TensorShape {
                dims: vec![4],
                dtype: DType::I64,
            },
            TensorShape {
                dims: vec![],
                dtype: DType::F32,
            },
        ],
        f32s(&[&[1, 3, 5, 4]]),
    ));
    check(&sig(
        C::Pool,
        vec![
            node("GlobalAveragePool", &[]),
            node("Flatten", &[("axis", A::Int(1))]),
        ],
        f32s(&[&[2, 3, 5, 5]]),
        f32s(&[&[2, 3]]),
    ));
}

/// The attention-mask kernels of BERT: integer and boolean tensors through Cast, Gather, And,
/// Expand and Where, each against tract.
#[test]
fn mask_kernels_with_bool_and_integer_tensors_match_tract() {
    let b = DType::Bool;
    let cast_to = |t: i64| node("Cast", &[("to", A::Int(t))]);
    // int64 mask -> bool, and float -> int64 (truncation toward zero).
    check(&sig(
        C::Eltwise,
        vec![cast_to(9)],
        typed(DType::I64, &[&[1, 37]]),
        typed(b, &[&[1, 37]]),
    ));
    check(&sig(
        C::Eltwise,
        vec![node("Mul", &[]), cast_to(7)],
        f32s(&[&[3, 11], &[1]]),
        typed(DType::I64, &[&[3, 11]]),
    ));
    // bool -> bool through two views, as BERT reshapes its mask.
    let mut views = sig(
        C::Eltwise,
        vec![node("Reshape", &[]), node("Reshape", &[]), cast_to(9)],
        typed(b, &[&[1, 1, 1, 19, 1]]),
        typed(b, &[&[1, 1, 1, 19]]),
    );
    views.inputs.extend(typed(DType::I64, &[&[1], &[4]]));
    check(&views);
    // Flatten in front of a Gather of booleans.
    let mut gather = sig(
        C::Gather,
        vec![
            node("Flatten", &[("axis", A::Int(2))]),
            node("Gather", &[("axis", A::Int(0))]),
        ],
        typed(b, &[&[1, 23]]),
        typed(b, &[&[1, 1, 1, 23, 1]]),
    );
    gather.inputs.extend(typed(DType::I64, &[&[1, 1, 1, 23]]));
    check(&gather);
    // And with broadcasting on both sides.
    check(&sig(
        C::Eltwise,
        vec![node("And", &[])],
        typed(b, &[&[1, 1, 13, 1], &[1, 1, 1, 13]]),
        typed(b, &[&[1, 1, 13, 13]]),
    ));
    // Expand (the shape operand is the output's).
    let mut expand = sig(
        C::Copy,
        vec![node("Expand", &[])],
        typed(b, &[&[1, 1, 1, 9]]),
        typed(b, &[&[2, 1, 7, 9]]),
    );
    expand.inputs.extend(typed(DType::I64, &[&[4]]));
    check(&expand);
    // Where(mask, 0, -inf-ish).
    let mut wh = sig(
        C::Eltwise,
        vec![node("Where", &[])],
        typed(b, &[&[1, 1, 9, 9]]),
        f32s(&[&[1, 1, 9, 9]]),
    );
    wh.inputs.extend(f32s(&[&[1], &[1]]));
    check(&wh);
}

/// `Where(IsNaN(x), 0, x)`: NaNs are found on the bits, so a fast-math compiler cannot fold
/// the test away.
#[test]
fn isnan_where_replaces_nans() {
    let s = sig(
        C::Eltwise,
        vec![node("IsNaN", &[]), node("Where", &[])],
        f32s(&[&[2, 3, 5, 7], &[1], &[2, 3, 5, 7]]),
        f32s(&[&[2, 3, 5, 7]]),
    );
    let mut inputs = sample_inputs(&s, 3);
    let HostData::F32(x) = &mut inputs[0].data else {
        panic!("f32 input expected")
    };
    for v in x.iter_mut().step_by(3) {
        *v = f32::NAN;
    }
    inputs[2] = HostTensor::f32(&[2, 3, 5, 7], (0..210).map(|i| i as f32).collect());
    check_with(&s, inputs);
}

/// Every distinct fused kernel of every model in `../shared/models/` compiles for the GPU (the
/// profiler and the executor would otherwise fall back to the CPU for it).
#[test]
fn every_fused_kernel_of_the_shared_models_builds() {
    use moirai_core::device::Backend;
    use moirai_model::coarsen::coarsen_file;
    use moirai_model::import::onnx::ImportOptions;

    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!(
            "skipped: {} is absent (material beside the repo)",
            dir.display()
        );
        return;
    };
    let Some(ctx) = super::testutil::gpu() else {
        return;
    };
    let mut models: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    let mut failures = Vec::new();
    let mut built = 0;
    for m in &models {
        let (_, coarse) = coarsen_file(m, Backend::Wgpu, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", m.display()));
        for (s, _) in coarse.distinct_signatures() {
            match super::GpuKernel::build(ctx, s) {
                Ok(_) => built += 1,
                Err(e) => failures.push(format!("{}: {e}", m.display())),
            }
        }
    }
    eprintln!("{built} kernels of {} models built", models.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn epilogue_operands_broadcast_against_their_own_nodes_shape_across_views() {
    // Add(x[1,12], b[12]) -> Reshape [1,3,4] -> Mul(c[3,1]): b broadcasts at [1,12] and c at
    // [1,3,4], which the boundary alone does not say (the key names the shapes).
    let i64s = |d: usize| TensorShape {
        dims: vec![d],
        dtype: DType::I64,
    };
    let mut s = sig(
        C::Eltwise,
        vec![node("Add", &[]), node("Reshape", &[]), node("Mul", &[])],
        vec![
            f32s(&[&[1, 12]])[0].clone(),
            f32s(&[&[12]])[0].clone(),
            i64s(3),
            f32s(&[&[3, 1]])[0].clone(),
        ],
        f32s(&[&[1, 3, 4]]),
    );
    s.shapes = f32s(&[&[1, 12], &[1, 3, 4], &[1, 3, 4]]);
    check(&s);
    // A broadcast in the middle of an element-wise chain: Sigmoid at [1,3,1], then Mul with
    // [1,3,5] makes 15 values of 3; each is computed at the element it reads.
    let mut g = sig(
        C::Eltwise,
        vec![node("Sigmoid", &[]), node("Mul", &[]), node("Add", &[])],
        f32s(&[&[1, 3, 1], &[1, 3, 5], &[5]]),
        f32s(&[&[1, 3, 5]]),
    );
    g.shapes = f32s(&[&[1, 3, 1], &[1, 3, 5], &[1, 3, 5]]);
    check(&g);
}

#[test]
fn a_signature_whose_epilogue_grows_the_heads_output_is_refused() {
    let Some(ctx) = super::testutil::gpu() else {
        return;
    };
    // Conv on [1,4,1,1] (a squeeze-excitation gate) with Mul by the [1,4,6,6] map fused in:
    // the coarsener never forms it; a signature that says so anyway is refused, not computed.
    let mut s = sig(
        C::Conv,
        vec![node("Conv", &[]), node("Sigmoid", &[]), node("Mul", &[])],
        f32s(&[&[1, 4, 1, 1], &[4, 4, 1, 1], &[1, 4, 6, 6]]),
        f32s(&[&[1, 4, 6, 6]]),
    );
    s.shapes = f32s(&[&[1, 4, 1, 1], &[1, 4, 1, 1], &[1, 4, 6, 6]]);
    let err = super::GpuKernel::build(ctx, &s).err().expect("refused");
    assert!(
        err.to_string().contains("changes the element count"),
        "{err}"
    );
}

/// A lone node of any op the rules fuse gets every signature input (the arity table knew too
/// few ops, and reductions with an axes operand, Pad, ConvTranspose, ... were malformed).
#[test]
fn wiring_gives_a_lone_node_all_of_its_operands() {
    for (op, n) in [
        ("ReduceL2", 2),
        ("ReduceMax", 2),
        ("Trilu", 2),
        ("ConvTranspose", 3),
        ("Pad", 3),
        ("Dropout", 3),
        ("GatherElements", 2),
        ("InstanceNormalization", 3),
        ("Range", 3),
    ] {
        let shapes: Vec<&[usize]> = vec![&[2, 2]; n];
        let s = sig(
            C::Other,
            vec![node(op, &[])],
            f32s(&shapes),
            f32s(&[&[2, 2]]),
        );
        assert_eq!(wire(&s).unwrap(), vec![(0..n).collect::<Vec<_>>()], "{op}");
    }
}

/// Groups of several channels whose output channels do not fill the per-invocation block
/// (5 per group with blocks of 4; 3 per group with blocks of 1), on odd widths.
#[test]
fn grouped_conv_with_partial_channel_blocks() {
    check(&conv_sig([1, 4, 7, 9], 10, [3, 3], 1, 1, 1, 2, &[]));
    check(&conv_sig([2, 6, 5, 6], 9, [2, 3], 2, 0, 1, 3, &["Relu"]));
}

/// Pooling reads integer inputs as integers (uint8 images were read as f32 bits) and writes
/// MaxPool's Indices output, row-major or column-major; AveragePool with ceil_mode counts
/// the padding but not the window's part beyond it.
#[test]
fn pooling_reads_integers_writes_indices_and_counts_only_real_padding() {
    let mp = |attrs: &[(&str, A)], x: TensorShape, outs: Vec<TensorShape>| {
        let mut a = vec![
            ("kernel_shape", A::Ints(vec![2, 2])),
            ("pads", A::Ints(vec![0, 0, 1, 1])),
        ];
        a.extend(attrs.iter().cloned());
        sig(C::Pool, vec![node("MaxPool", &a)], vec![x], outs)
    };
    let u8x = TensorShape {
        dims: vec![1, 2, 5, 5],
        dtype: DType::U8,
    };
    let values = vec![HostTensor::i64(
        &[1, 2, 5, 5],
        (0..50).map(|i| (i * 37) % 251).collect(),
    )];
    check_with(
        &mp(
            &[],
            u8x.clone(),
            vec![typed(DType::U8, &[&[1, 2, 5, 5]]).remove(0)],
        ),
        values,
    );
    for order in [0, 1] {
        let x = TensorShape {
            dims: vec![1, 2, 5, 5],
            dtype: DType::F32,
        };
        let outs = vec![
            f32s(&[&[1, 2, 5, 5]]).remove(0),
            typed(DType::I64, &[&[1, 2, 5, 5]]).remove(0),
        ];
        check(&mp(&[("storage_order", A::Int(order))], x, outs));
    }
    // 6 + 1 + 1 padded, windows of 3 every 2, ceil: the last window covers 5, 6 (padding)
    // and 7 (beyond): 2 counted per axis, not 3.
    for count in [0, 1] {
        check(&sig(
            C::Pool,
            vec![node(
                "AveragePool",
                &[
                    ("kernel_shape", A::Ints(vec![3, 3])),
                    ("strides", A::Ints(vec![2, 2])),
                    ("pads", A::Ints(vec![1, 1, 1, 1])),
                    ("ceil_mode", A::Int(1)),
                    ("count_include_pad", A::Int(count)),
                ],
            )],
            f32s(&[&[1, 2, 6, 6]]),
            f32s(&[&[1, 2, 4, 4]]),
        ));
    }
}

/// LayerNormalization's optional Mean and InvStdDev outputs (they were left unwritten), over
/// the last axes and from axis 0, with a scale broadcast from fewer dimensions.
#[test]
fn layernorm_writes_mean_and_inverse_std_dev() {
    for (axis, stats) in [(1, vec![2, 1, 1]), (-1, vec![2, 3, 1]), (0, vec![1, 1, 1])] {
        let x = [2usize, 3, 4];
        let a = if axis < 0 { 2 } else { axis as usize };
        let norm: Vec<usize> = x[a..].to_vec();
        check(&sig(
            C::LayerNorm,
            vec![node("LayerNormalization", &[("axis", A::Int(axis))])],
            f32s(&[&x, &norm, &norm]),
            f32s(&[&x, &stats, &stats]),
        ));
    }
    check(&sig(
        C::LayerNorm,
        vec![node("LayerNormalization", &[("axis", A::Int(1))])],
        f32s(&[&[2, 3, 4], &[4], &[1]]),
        f32s(&[&[2, 3, 4]]),
    ));
}

/// Max, Min, Sum and Mean take every operand (the third and later were ignored), with
/// broadcasting, and a lone operand.
#[test]
fn variadic_max_min_sum_and_mean_take_every_operand() {
    for op in ["Max", "Min", "Sum", "Mean"] {
        check(&sig(
            C::Eltwise,
            vec![node(op, &[])],
            f32s(&[&[3, 4], &[4], &[3, 1], &[1]]),
            f32s(&[&[3, 4]]),
        ));
        check(&sig(
            C::Eltwise,
            vec![node(op, &[])],
            f32s(&[&[5]]),
            f32s(&[&[5]]),
        ));
    }
}

/// Gelu with `approximate = "tanh"` (it was computed with erf), against the formula at the
/// ONNX suite's tolerance: erf and tanh forms differ by up to 5e-4, more than `check` allows.
#[test]
fn gelu_tanh_approximation() {
    let Some(ctx) = super::testutil::gpu() else {
        return;
    };
    let s = sig(
        C::Eltwise,
        vec![node("Gelu", &[("approximate", A::Str("tanh".into()))])],
        f32s(&[&[64]]),
        f32s(&[&[64]]),
    );
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.3).collect();
    let pool = crate::gpu::BufferPool::default();
    let k = super::GpuKernel::build(ctx, &s).expect("builds");
    let input = HostTensor::f32(&[64], x.clone())
        .upload(ctx, &pool)
        .expect("upload");
    let out = k.run(ctx, &pool, &[input]).expect("runs");
    let got = crate::gpu::buffers::readback_f32(ctx, &out[0]).expect("readback");
    for (&x, &g) in x.iter().zip(&got) {
        let x = x as f64;
        let want = 0.5
            * x
            * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        assert!(
            (g as f64 - want).abs() <= 1e-6 + 1e-4 * want.abs(),
            "gelu_tanh({x}) = {g}, want {want}"
        );
    }
}

/// Pow as numpy: odd and even integer powers of negatives, NaN for a fractional power of a
/// negative (WGSL gave |x|^p), 1 for x^0 (also 0^0), exact integer results.
#[test]
fn pow_of_negative_bases_zero_exponents_and_integers() {
    let base = [-2.0f32, -2.0, -8.0, 0.0, 0.0, 3.0, -3.0, 7.0, 5.0, 2.0];
    let exp = [3.0f32, 2.0, 1.0 / 3.0, 0.0, 2.0, 4.0, 0.0, 3.0, -1.0, 0.5];
    let s = sig(
        C::Eltwise,
        vec![node("Pow", &[])],
        f32s(&[&[10], &[10]]),
        f32s(&[&[10]]),
    );
    check_with(
        &s,
        vec![
            HostTensor::f32(&[10], base.to_vec()),
            HostTensor::f32(&[10], exp.to_vec()),
        ],
    );
    // 7^3 = 343 exactly once stored as an integer (exp2/log2 gives 342.99997).
    let mut ints = sig(
        C::Eltwise,
        vec![node("Pow", &[])],
        typed(DType::I32, &[&[4], &[4]]),
        typed(DType::I32, &[&[4]]),
    );
    ints.outputs[0].dtype = DType::I32;
    check_with(
        &ints,
        vec![
            HostTensor::i64(&[4], vec![7, -3, 11, 2]),
            HostTensor::i64(&[4], vec![3, 3, 5, 10]),
        ],
    );
}

/// Training-mode nodes draw on the batch (BatchNormalization) or on randomness (Dropout):
/// refused by reason, not run as inference.
#[test]
fn training_mode_batchnorm_and_dropout_are_refused() {
    let Some(ctx) = super::testutil::gpu() else {
        return;
    };
    let bn = sig(
        C::Eltwise,
        vec![node("BatchNormalization", &[("training_mode", A::Int(1))])],
        f32s(&[&[2, 3, 4], &[3], &[3], &[3], &[3]]),
        f32s(&[&[2, 3, 4]]),
    );
    let dropout = sig(
        C::Copy,
        vec![node("Dropout", &[])],
        vec![
            f32s(&[&[2, 3]]).remove(0),
            f32s(&[&[]]).remove(0),
            typed(DType::Bool, &[&[]]).remove(0),
        ],
        f32s(&[&[2, 3]]),
    );
    for (s, why) in [(bn, "training mode"), (dropout, "training_mode operand")] {
        let e = super::GpuKernel::build(ctx, &s)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(why), "{e}");
    }
}

/// `Clip(x, "", max)`: the signature lists only the tensors present, so the max bound was
/// read as the min on both executors; the coarsener now records the absent input.
#[test]
fn clip_with_only_a_max_bound_clips_from_above() {
    use moirai_model::coarsen::{coarsen, rules::RuleSet};
    use moirai_model::import::onnx::{build::ModelBuilder, from_proto, ImportOptions};

    let f = DType::F32;
    let b = ModelBuilder::new("clip")
        .input("x", f, &[2, 5])
        .input("max", f, &[])
        .node("Clip", &["x", "", "max"], &["y"])
        .output("y", f, &[2, 5]);
    let model = from_proto(
        &b.proto(),
        std::path::Path::new("clip.onnx"),
        &ImportOptions::default(),
    )
    .expect("imports");
    let x: Vec<f32> = (-5..5).map(|i| i as f32).collect();
    let inputs = vec![
        HostTensor::f32(&[2, 5], x.clone()),
        HostTensor::f32(&[], vec![1.5]),
    ];
    for rules in [RuleSet::wgpu(), RuleSet::cpu()] {
        let coarse = coarsen(&model, &rules);
        let sig = &coarse.groups[0].signature;
        let cpu = crate::exec::cpu::CpuKernel::build_with(sig, &inputs).expect("builds");
        let want: Vec<f32> = x.iter().map(|v| v.min(1.5)).collect();
        assert_eq!(
            cpu.run(&inputs).expect("runs"),
            vec![HostTensor::f32(&[2, 5], want)],
            "{}",
            rules.backend
        );
        check_with(sig, inputs.clone());
    }
}

/// Cast between the types the device holds: float to integers truncates toward zero (also
/// for negatives), to bool tests for non-zero, integers and booleans to float are exact.
#[test]
fn casts_between_float_integer_and_bool_match_tract() {
    let x: Vec<f32> = vec![-2.7, -1.5, -0.5, 0.0, 0.4, 1.5, 2.5, 3.9, 100.2, -100.8];
    let cast_to = |t: i64| vec![node("Cast", &[("to", A::Int(t))])];
    // FLOAT to INT32 (6), INT8 (3), INT64 (7), BOOL (9).
    for (to, dtype) in [
        (6, DType::I32),
        (3, DType::I8),
        (7, DType::I64),
        (9, DType::Bool),
    ] {
        let s = sig(
            C::Eltwise,
            cast_to(to),
            f32s(&[&[10]]),
            typed(dtype, &[&[10]]),
        );
        check_with(&s, vec![HostTensor::f32(&[10], x.clone())]);
    }
    // FLOAT to UINT8 (2), in range.
    let s = sig(
        C::Eltwise,
        cast_to(2),
        f32s(&[&[10]]),
        typed(DType::U8, &[&[10]]),
    );
    let pos: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    check_with(&s, vec![HostTensor::f32(&[10], pos)]);
    // INT64, INT32 and BOOL to FLOAT (1); INT32 to INT64.
    let ints: Vec<i64> = vec![-7, -1, 0, 1, 2, 3, 1000, -1000, 65537, 12];
    for (from, to, out) in [
        (DType::I64, 1, DType::F32),
        (DType::I32, 1, DType::F32),
        (DType::I32, 7, DType::I64),
    ] {
        let s = sig(
            C::Eltwise,
            cast_to(to),
            typed(from, &[&[10]]),
            typed(out, &[&[10]]),
        );
        check_with(&s, vec![HostTensor::i64(&[10], ints.clone())]);
    }
    let s = sig(
        C::Eltwise,
        cast_to(1),
        typed(DType::Bool, &[&[10]]),
        f32s(&[&[10]]),
    );
    let bits: Vec<i64> = ints.iter().map(|&v| i64::from(v > 0)).collect();
    check_with(&s, vec![HostTensor::i64(&[10], bits)]);
}
