//! Fusion rules on small models built in code: what fuses, what must not.

use super::*;
use crate::import::onnx::build::ModelBuilder;
use crate::import::onnx::from_proto;
use moirai_core::kernel::{AttrValue, DType, KernelClass, Operand};
use rules::{GroupPattern, ELTWISE};

const F: DType = DType::F32;

fn import(b: ModelBuilder) -> OnnxModel {
    from_proto(
        &b.proto(),
        Path::new("test.onnx"),
        &ImportOptions::default(),
    )
    .unwrap()
}

/// Only the multi-output element-wise rule, without the chain restriction.
fn eltwise_only(backend: Backend) -> RuleSet {
    RuleSet {
        backend,
        fold_static: true,
        chains_only: false,
        rules: vec![FusionRule {
            name: "eltwise-chain",
            producer: GroupPattern::Ops(&ELTWISE),
            consumer: GroupPattern::Ops(&ELTWISE),
            condition: Condition::Acyclic,
        }],
    }
}

fn patterns(c: &CoarseGraph) -> Vec<String> {
    c.groups.iter().map(|g| g.signature.pattern()).collect()
}

/// Conv -> BatchNormalization -> Relu, 3 -> 4 channels on 8x8.
fn conv_bn_relu() -> ModelBuilder {
    ModelBuilder::new("cbr")
        .input("x", F, &[1, 3, 8, 8])
        .initializer("w", &[4, 3, 3, 3])
        .initializer("b", &[4])
        .initializer("scale", &[4])
        .initializer("shift", &[4])
        .initializer("mean", &[4])
        .initializer("var", &[4])
        .node_with(
            "Conv",
            &["x", "w", "b"],
            &["c"],
            &[("pads", AttrValue::Ints(vec![1, 1, 1, 1]))],
        )
        .node(
            "BatchNormalization",
            &["c", "scale", "shift", "mean", "var"],
            &["n"],
        )
        .node("Relu", &["n"], &["y"])
        .value_info("c", F, &[1, 4, 8, 8])
        .value_info("n", F, &[1, 4, 8, 8])
        .output("y", F, &[1, 4, 8, 8])
}

#[test]
fn conv_batchnorm_relu_is_one_kernel_on_both_backends() {
    let m = import(conv_bn_relu());
    for b in Backend::ALL {
        let c = coarsen(&m, &RuleSet::for_backend(b));
        assert_eq!(patterns(&c), ["Conv+BatchNormalization+Relu"], "{b}");
        let g = &c.groups[0];
        assert_eq!(g.signature.class, KernelClass::Conv);
        assert_eq!(g.inputs, ["x"]);
        assert_eq!(g.params, ["w", "b", "scale", "shift", "mean", "var"]);
        assert_eq!(g.outputs, ["y"]);
        assert_eq!(g.param_bytes, (4 * 27 + 5 * 4) * 4);
        assert!(c.edges.is_empty());
    }
}

#[test]
fn a_conv_whose_output_is_also_a_graph_output_keeps_its_epilogue_apart() {
    let m = import(conv_bn_relu().output("c", F, &[1, 4, 8, 8]));
    let c = coarsen(&m, &RuleSet::wgpu());
    assert_eq!(patterns(&c), ["Conv", "BatchNormalization+Relu"]);
    assert_eq!(c.edges.len(), 1);
    assert_eq!(c.edges[0].tensor, "c");
    assert_eq!(c.edges[0].bytes, 4 * 64 * 4);
}

/// x -> MatMul -> Add(bias) -> Erf-based GELU -> MatMul, the BERT feed-forward block.
fn feed_forward() -> ModelBuilder {
    ModelBuilder::new("ffn")
        .input("x", F, &[1, 4, 8])
        .initializer("w1", &[8, 16])
        .initializer("b1", &[16])
        .initializer("sqrt2", &[])
        .initializer("one", &[])
        .initializer("half", &[])
        .initializer("w2", &[16, 8])
        .node("MatMul", &["x", "w1"], &["mm"])
        .node("Add", &["b1", "mm"], &["h"])
        .node("Div", &["h", "sqrt2"], &["d"])
        .node("Erf", &["d"], &["e"])
        .node("Add", &["e", "one"], &["e1"])
        .node("Mul", &["h", "e1"], &["g0"])
        .node("Mul", &["g0", "half"], &["g"])
        .node("MatMul", &["g", "w2"], &["y"])
        .output("y", F, &[1, 4, 8])
}

#[test]
fn matmul_bias_and_erf_gelu_fuse_into_one_kernel() {
    // No value_info for the intermediates: tract infers them.
    let m = import(feed_forward());
    assert!(m.used_tract_inference);
    assert_eq!(m.shape("g").unwrap().dims, [1, 4, 16]);
    for b in Backend::ALL {
        let c = coarsen(&m, &RuleSet::for_backend(b));
        assert_eq!(c.groups[0].nodes.len(), 7, "{b}");
        // The wgpu kernel generator sees the GELU as one op.
        let head = match b {
            Backend::Wgpu => "MatMul+Add+Gelu",
            Backend::Cpu => "MatMul+Add+Div+Erf+Add+Mul+Mul",
        };
        assert_eq!(patterns(&c), [head, "MatMul"], "{b}");
        assert_eq!(c.edges.len(), 1);
        assert_eq!(c.edges[0].tensor, "g");
        // Two matmuls of 2*4*8*16 FLOPs plus the epilogue's element-wise work.
        let mm = 2 * 4 * 8 * 16;
        assert!(c.groups[0].signature.flops > mm as u64);
        assert_eq!(c.groups[1].signature.flops, mm as u64);
    }
}

/// x -> Conv -> Relu -> Conv -> Add(., x) -> Relu: a ResNet basic block.
#[test]
fn a_residual_add_and_its_relu_join_the_second_conv() {
    let m = import(
        ModelBuilder::new("res")
            .input("x", F, &[1, 4, 8, 8])
            .initializer("w1", &[4, 4, 3, 3])
            .initializer("w2", &[4, 4, 3, 3])
            .node_with(
                "Conv",
                &["x", "w1"],
                &["c1"],
                &[("pads", AttrValue::Ints(vec![1; 4]))],
            )
            .node("Relu", &["c1"], &["r1"])
            .node_with(
                "Conv",
                &["r1", "w2"],
                &["c2"],
                &[("pads", AttrValue::Ints(vec![1; 4]))],
            )
            .node("Add", &["c2", "x"], &["s"])
            .node("Relu", &["s"], &["y"])
            .output("y", F, &[1, 4, 8, 8]),
    );
    for b in Backend::ALL {
        let c = coarsen(&m, &RuleSet::for_backend(b));
        assert_eq!(patterns(&c), ["Conv+Relu", "Conv+Add+Relu"], "{b}");
        assert_eq!(c.groups[1].inputs, ["r1", "x"]);
    }
}

/// r = Relu(x); m = MatMul(r, W); s = Add(r, m). Relu and Add are both element-wise and
/// adjacent, but merging them would put the MatMul on a cycle.
fn detour() -> OnnxModel {
    import(
        ModelBuilder::new("detour")
            .input("x", F, &[4, 4])
            .initializer("w", &[4, 4])
            .node("Relu", &["x"], &["r"])
            .node("MatMul", &["r", "w"], &["m"])
            .node("Add", &["r", "m"], &["s"])
            .output("s", F, &[4, 4]),
    )
}

#[test]
fn a_merge_that_would_create_a_cycle_is_refused() {
    let m = detour();
    // Only the multi-output eltwise rule: Relu -> Add matches it, the cycle check refuses.
    let only_eltwise = eltwise_only(Backend::Wgpu);
    let c = coarsen(&m, &only_eltwise);
    assert_eq!(patterns(&c), ["Relu", "MatMul", "Add"]);
    // With the full rules the Add becomes the MatMul's epilogue instead.
    let c = coarsen(&m, &RuleSet::wgpu());
    assert_eq!(patterns(&c), ["Relu", "MatMul+Add"]);
    for e in &c.edges {
        assert!(e.src < e.dst, "groups are in topological order");
    }
}

#[test]
fn the_wgpu_signature_lists_operands_in_chain_order() {
    let m = import(feed_forward());
    let c = coarsen(&m, &RuleSet::wgpu());
    let dims: Vec<&[usize]> = c.groups[0]
        .signature
        .inputs
        .iter()
        .map(|t| t.dims.as_slice())
        .collect();
    // MatMul(x, w1), then Add's other operand b1; the GELU constants stay inside.
    assert_eq!(dims, [&[1, 4, 8][..], &[8, 16], &[16]]);
}

#[test]
fn operands_name_the_tensor_behind_each_signature_input_on_both_backends() {
    let m = import(feed_forward());
    let wgpu = coarsen(&m, &RuleSet::wgpu());
    // The GELU's constants are not operands: the kernel has them built in.
    assert_eq!(wgpu.groups[0].operands, ["x", "w1", "b1"]);
    for b in Backend::ALL {
        let c = coarsen(&m, &RuleSet::for_backend(b));
        for g in &c.groups {
            let shapes: Vec<&TensorShape> =
                g.operands.iter().map(|t| m.shape(t).unwrap()).collect();
            let want: Vec<&TensorShape> = g.signature.inputs.iter().collect();
            assert_eq!(shapes, want, "{b}: group {}", g.name);
        }
    }
}

#[test]
fn without_a_detour_the_same_eltwise_pair_fuses() {
    let m = import(
        ModelBuilder::new("chain")
            .input("x", F, &[4, 4])
            .input("z", F, &[4, 4])
            .node("Relu", &["x"], &["r"])
            .node("Add", &["r", "z"], &["s"])
            .node("Sigmoid", &["r"], &["t"])
            .output("s", F, &[4, 4])
            .output("t", F, &[4, 4]),
    );
    // Multi-output fusion: all three in one kernel writing s and t.
    let multi_output = eltwise_only(Backend::Cpu);
    let c = coarsen(&m, &multi_output);
    assert_eq!(patterns(&c), ["Relu+Add+Sigmoid"]);
    assert_eq!(c.groups[0].outputs, ["s", "t"]);
    // The shipped rules keep r, which has two readers, a kernel of its own.
    for b in Backend::ALL {
        assert_eq!(coarsen(&m, &RuleSet::for_backend(b)).groups.len(), 3, "{b}");
    }
}

#[test]
fn shape_only_subgraphs_are_folded_into_their_reader() {
    let i64_ = DType::I64;
    let m = import(
        ModelBuilder::new("shapes")
            .input("x", F, &[1, 4, 8])
            .initializer_i64("idx", &[0])
            .initializer_i64("minus_one", &[-1])
            .initializer("w", &[32, 2])
            .node("Relu", &["x"], &["r"])
            .node("Shape", &["r"], &["s"])
            .node_with(
                "Gather",
                &["s", "idx"],
                &["d0"],
                &[("axis", AttrValue::Int(0))],
            )
            .node("Concat", &["d0", "minus_one"], &["shp"])
            .node("Reshape", &["r", "shp"], &["flat"])
            .node("Identity", &["w"], &["w_id"])
            .node("MatMul", &["flat", "w_id"], &["y"])
            .value_info("r", F, &[1, 4, 8])
            .value_info("s", i64_, &[3])
            .value_info("d0", i64_, &[1])
            .value_info("shp", i64_, &[2])
            .value_info("flat", F, &[1, 32])
            .value_info("w_id", F, &[32, 2])
            .output("y", F, &[1, 2]),
    );
    assert_eq!(m.nodes.len(), 7);
    let c = coarsen(&m, &RuleSet::wgpu());
    assert_eq!(c.folded_nodes, 4, "Shape, Gather, Concat, Identity");
    assert_eq!(patterns(&c), ["Relu", "Reshape+MatMul"]);
    let mm = &c.groups[1];
    assert_eq!(mm.name, "y_node", "named after its first non-view node");
    assert_eq!(mm.inputs, ["r"]);
    assert_eq!(mm.params, ["shp", "w_id"]);
    let folded: Vec<&str> = mm
        .folded
        .iter()
        .map(|&n| m.nodes[n].op_type.as_str())
        .collect();
    assert_eq!(folded, ["Shape", "Gather", "Concat", "Identity"]);
    assert_eq!(mm.initializers, ["idx", "minus_one", "w"]);
    assert_eq!(mm.param_bytes, 2 * 8 + 32 * 2 * 4);
}

#[test]
fn a_decomposed_layer_norm_is_one_row_reduction_kernel() {
    let axes = || ("axes", AttrValue::Ints(vec![-1]));
    let m = import(
        ModelBuilder::new("ln")
            .input("x", F, &[1, 4, 8])
            .initializer("two", &[])
            .initializer("eps", &[])
            .initializer("gamma", &[8])
            .initializer("beta", &[8])
            .node_with("ReduceMean", &["x"], &["mu"], &[axes()])
            .node("Sub", &["x", "mu"], &["d"])
            .node("Pow", &["d", "two"], &["p"])
            .node_with("ReduceMean", &["p"], &["v"], &[axes()])
            .node("Add", &["v", "eps"], &["ve"])
            .node("Sqrt", &["ve"], &["sd"])
            .node("Div", &["d", "sd"], &["n"])
            .node("Mul", &["n", "gamma"], &["g"])
            .node("Add", &["g", "beta"], &["y"])
            .output("y", F, &[1, 4, 8]),
    );
    let c = coarsen(&m, &RuleSet::cpu());
    assert_eq!(c.groups.len(), 1, "{:?}", patterns(&c));
    assert_eq!(c.groups[0].signature.class, KernelClass::LayerNorm);
    // Not a chain (x and d are read twice): the wgpu generator cannot take it whole.
    let c = coarsen(&m, &RuleSet::wgpu());
    assert!(c.groups.len() > 1);
    for g in &c.groups {
        let nodes: Vec<usize> = g.nodes.clone();
        assert!(nodes.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn a_scaled_transpose_fuses_on_wgpu_only() {
    let m = import(
        ModelBuilder::new("tr")
            .input("x", F, &[1, 4, 2, 8])
            .initializer("scale", &[])
            .node_with(
                "Transpose",
                &["x"],
                &["t"],
                &[("perm", AttrValue::Ints(vec![0, 2, 1, 3]))],
            )
            .node("Mul", &["t", "scale"], &["y"])
            .value_info("t", F, &[1, 2, 4, 8])
            .output("y", F, &[1, 2, 4, 8]),
    );
    assert_eq!(patterns(&coarsen(&m, &RuleSet::wgpu())), ["Transpose+Mul"]);
    assert_eq!(
        patterns(&coarsen(&m, &RuleSet::cpu())),
        ["Transpose", "Mul"]
    );
}

#[test]
fn equal_kernels_share_one_signature() {
    let m = import(
        ModelBuilder::new("twice")
            .input("x", F, &[1, 4, 8, 8])
            .initializer("w1", &[4, 4, 1, 1])
            .initializer("w2", &[4, 4, 1, 1])
            .node("Conv", &["x", "w1"], &["c1"])
            .node("Relu", &["c1"], &["r1"])
            .node("Conv", &["r1", "w2"], &["c2"])
            .node("Relu", &["c2"], &["y"])
            .output("y", F, &[1, 4, 8, 8]),
    );
    let c = coarsen(&m, &RuleSet::wgpu());
    assert_eq!(c.groups.len(), 2);
    let sigs = c.distinct_signatures();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].1, 2);
}

#[test]
fn a_group_that_is_not_a_chain_carries_its_edges_and_a_chain_does_not() {
    let m = import(
        ModelBuilder::new("dag")
            .input("x", F, &[4, 4])
            .input("z", F, &[4, 4])
            .node("Relu", &["x"], &["r"])
            .node("Add", &["z", "r"], &["s"])
            .node("Sigmoid", &["r"], &["t"])
            .output("s", F, &[4, 4])
            .output("t", F, &[4, 4]),
    );
    let rules = eltwise_only(Backend::Cpu);
    let c = coarsen(&m, &rules);
    let n = |node, output| Operand::Node { node, output };
    let dag = c.groups[0]
        .signature
        .dag
        .clone()
        .expect("Sigmoid reads Relu, not Add");
    // Boundary inputs in order of first use: x, then z.
    assert_eq!(
        dag.operands,
        [
            vec![Operand::Input(0)],
            vec![Operand::Input(1), n(0, 0)],
            vec![n(0, 0)]
        ]
    );
    assert_eq!(dag.results, [n(1, 0), n(2, 0)]);
    assert!(c.groups[0].signature.key().contains("n2=n0.0"));
    // A chain keeps the convention (and its key), also on the CPU rules; a commutative op
    // reading the previous output second is still a chain.
    for b in Backend::ALL {
        let c = coarsen(&import(conv_bn_relu()), &RuleSet::for_backend(b));
        assert_eq!(c.groups[0].signature.dag, None, "{b}");
    }
    let swapped = import(
        ModelBuilder::new("swapped")
            .input("x", F, &[4, 4])
            .input("z", F, &[4, 4])
            .node("Relu", &["x"], &["r"])
            .node("Add", &["z", "r"], &["s"])
            .output("s", F, &[4, 4]),
    );
    let c = coarsen(&swapped, &rules);
    assert_eq!(patterns(&c), ["Relu+Add"]);
    assert_eq!(c.groups[0].signature.dag, None);
}

/// A squeeze-excitation gate: a 1x1 Conv on the pooled `[1,C,1,1]` tensor, Sigmoid, then Mul
/// with the `[1,C,H,W]` feature map.
fn se_gate() -> OnnxModel {
    import(
        ModelBuilder::new("se")
            .input("x", F, &[1, 4, 6, 6])
            .initializer("w", &[4, 4, 1, 1])
            .node("GlobalAveragePool", &["x"], &["p"])
            .node("Conv", &["p", "w"], &["c"])
            .node("Sigmoid", &["c"], &["g"])
            .node("Mul", &["g", "x"], &["y"])
            .output("y", F, &[1, 4, 6, 6]),
    )
}

#[test]
fn a_gate_that_broadcasts_the_conv_output_to_a_larger_map_stays_out_of_its_epilogue() {
    let c = coarsen(&se_gate(), &RuleSet::wgpu());
    assert_eq!(
        patterns(&c),
        ["GlobalAveragePool", "Conv+Sigmoid", "Mul"],
        "the Mul would make 144 values of a Conv that computes 4"
    );
    let why: Vec<&String> = c.refused.keys().collect();
    assert!(
        why.iter()
            .any(|r| r.contains("Mul would broadcast the output of Conv")),
        "{why:?}"
    );
    // The gate's Mul on its own broadcasts both operands: that is an element-wise kernel.
    let mul = &c.groups[2].signature;
    assert_eq!(mul.class, KernelClass::Eltwise);
    assert_eq!(mul.shapes[0].dims, [1, 4, 6, 6]);
    // The CPU rules keep their own epilogue list (Mul is not in the conv epilogue there).
    assert!(coarsen(&se_gate(), &RuleSet::cpu()).refused.is_empty());
}

#[test]
fn a_non_commutative_op_reading_the_chain_value_second_is_not_fused() {
    // RMSNorm written out: x / sqrt(mean(x^2) + eps). The Div reads the chain's value as its
    // divisor, which the epilogue (value first) cannot say.
    let m = import(
        ModelBuilder::new("rms")
            .input("x", F, &[1, 4, 8])
            .initializer("eps", &[])
            .node("Relu", &["x"], &["r"])
            .node("Sqrt", &["r"], &["s"])
            .node("Div", &["x", "s"], &["y"])
            .output("y", F, &[1, 4, 8]),
    );
    let c = coarsen(&m, &RuleSet::wgpu());
    assert_eq!(patterns(&c), ["Relu+Sqrt", "Div"]);
    assert!(
        c.refused
            .keys()
            .any(|r| r.contains("Div reads the chain's value as operand 1")),
        "{:?}",
        c.refused
    );
    // A commutative op may take it second: Add(x, s) is s + x.
    let m = import(
        ModelBuilder::new("add")
            .input("x", F, &[1, 4, 8])
            .input("z", F, &[1, 4, 8])
            .node("Sqrt", &["x"], &["s"])
            .node("Add", &["z", "s"], &["y"])
            .output("y", F, &[1, 4, 8]),
    );
    assert_eq!(patterns(&coarsen(&m, &RuleSet::wgpu())), ["Sqrt+Add"]);
}

#[test]
fn signatures_carry_each_nodes_shape_and_name_them_in_the_key_when_they_differ() {
    let c = coarsen(&se_gate(), &RuleSet::wgpu());
    let conv = &c.groups[1].signature;
    assert_eq!(conv.shapes.len(), 2);
    assert!(conv.shapes.iter().all(|s| s.dims == [1, 4, 1, 1]));
    assert!(!conv.key().contains('<'), "{}", conv.key());
    // A view after a bias add, read by two kernels, joins its producer: the bias broadcasts
    // at [1,12], the kernel writes [1,3,4].
    let m = import(
        ModelBuilder::new("mid")
            .input("x", F, &[1, 12])
            .initializer("w", &[12, 12])
            .initializer("b", &[12])
            .initializer_i64("shape", &[1, 3, 4])
            .node("MatMul", &["x", "w"], &["mm"])
            .node("Add", &["mm", "b"], &["a"])
            .node("Reshape", &["a", "shape"], &["r"])
            .node("Relu", &["r"], &["y1"])
            .node("Sigmoid", &["r"], &["y2"])
            .output("y1", F, &[1, 3, 4])
            .output("y2", F, &[1, 3, 4]),
    );
    let c = coarsen(&m, &RuleSet::wgpu());
    // The view joins the Add before any epilogue forms (view rules come first). A view at the
    // end reshapes to the output: the key need not name the shapes.
    assert_eq!(patterns(&c), ["MatMul", "Add+Reshape", "Relu", "Sigmoid"]);
    let sig = &c.groups[1].signature;
    let dims: Vec<&[usize]> = sig.shapes.iter().map(|s| s.dims.as_slice()).collect();
    assert_eq!(dims, [&[1, 12][..], &[1, 3, 4]]);
    assert!(!sig.key().contains('<'), "{}", sig.key());
    // A view in front of a computation: its target is a value the boundary does not hold.
    let m = import(
        ModelBuilder::new("front")
            .input("x", F, &[1, 12])
            .initializer("b", &[4])
            .initializer_i64("shape", &[3, 4])
            .node("Reshape", &["x", "shape"], &["r"])
            .node("Add", &["r", "b"], &["y"])
            .output("y", F, &[3, 4]),
    );
    let c = coarsen(&m, &RuleSet::wgpu());
    assert_eq!(patterns(&c), ["Reshape+Add"]);
    let key = c.groups[0].signature.key();
    assert!(key.ends_with("<f32[3x4],f32[3x4]>"), "{key}");
}
