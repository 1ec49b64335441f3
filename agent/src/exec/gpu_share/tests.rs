//! The GPU executor on real models against onnxruntime's outputs, and its fallbacks.

use std::path::PathBuf;

use moirai_model::loaded::LoadedModel;
use moirai_model::tensor_proto as tensor;

use super::*;
use crate::exec::compare::{absorb, max_rel_diff, stage_shares, Feed};
use crate::exec::subgraph::SubgraphExec;

/// The kernel tests' adapter, shared (same device and queue).
fn ctx() -> Option<Arc<GpuContext>> {
    let c = crate::kernels::testutil::gpu()?;
    Some(Arc::new(GpuContext {
        adapter: c.adapter.clone(),
        device: c.device.clone(),
        queue: c.queue.clone(),
        info: c.info.clone(),
        limits: c.limits.clone(),
        timestamps: c.timestamps,
    }))
}

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A model directory of the ONNX test-data convention: model, inputs, expected outputs.
struct Case {
    model: LoadedModel,
    inputs: Feed,
    want: NamedTensors,
}

fn case(dir: &Path) -> Case {
    let model = LoadedModel::load(&dir.join("model.onnx")).expect("model loads");
    let data = dir.join("test_data_set_0");
    let read = |kind: &str, names: Vec<String>| -> NamedTensors {
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let p = data.join(format!("{kind}_{i}.pb"));
                let t = tensor::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (name, t.value)
            })
            .collect()
    };
    let inputs = read(
        "input",
        model.inputs().iter().map(|t| t.name.clone()).collect(),
    );
    let want = read(
        "output",
        model.outputs().iter().map(|t| t.name.clone()).collect(),
    );
    Case {
        model,
        inputs: inputs.into_iter().collect(),
        want,
    }
}

/// Runs the shares in order, feeding each the tensors the earlier ones produced.
fn run_shares(execs: &[GpuShareExec], inputs: &Feed) -> Feed {
    let mut known = inputs.clone();
    for e in execs {
        let out = e.run(&known).expect("request runs");
        absorb(&mut known, out);
    }
    known
}

/// The largest difference over the model's outputs.
fn worst(c: &Case, out: &Feed) -> f32 {
    let got: NamedTensors = c
        .want
        .iter()
        .map(|(n, _)| (n.clone(), out[n].clone()))
        .collect();
    max_rel_diff(&got, &c.want)
}

fn one_share(model: &LoadedModel) -> (SubgraphSpec, pb::ModelProto) {
    stage_shares(model, 1).expect("one share").remove(0)
}

fn whole_model_matches_its_reference(dir: &Path) {
    let Some(ctx) = ctx() else { return };
    let c = case(dir);
    let (spec, sub) = one_share(&c.model);
    let exec = GpuShareExec::load(ctx, &sub, &spec).expect("loads on the GPU executor");
    let out = run_shares(std::slice::from_ref(&exec), &c.inputs);
    let d = worst(&c, &out);
    eprintln!(
        "{}: {}; relative difference {d:e}",
        dir.display(),
        exec.summary()
    );
    assert!(d <= 1e-4, "{}: relative difference {d:e}", dir.display());
    // Twice: buffers reused across requests hold no stale state.
    let again = run_shares(std::slice::from_ref(&exec), &c.inputs);
    for (name, _) in &c.want {
        assert_eq!(again[name], out[name]);
    }
}

#[test]
fn the_tiny_cnn_as_one_share_matches_its_reference_output() {
    whole_model_matches_its_reference(&repo().join("tests/fixtures/onnx/tiny-cnn"));
}

#[test]
fn every_model_family_as_one_share_matches_onnxruntime() {
    // Squeeze-excitation gates, grouped convolutions, HardSwish, ConvNeXt's LayerNorm
    // and ViT's attention (models/make_se_cnn_models.py); int64 ids, masks, RMSNorm and
    // rotary embeddings (models/make_transformer_models.py).
    for m in [
        "tiny-effnet",
        "tiny-regnet",
        "tiny-mobilenetv3",
        "tiny-convnext",
        "tiny-vit",
        "tiny-bert",
        "tiny-gpt2",
        "tiny-t5",
        "tiny-esm",
    ] {
        whole_model_matches_its_reference(&repo().join("tests/fixtures/onnx").join(m));
    }
}

#[test]
fn the_reference_models_as_one_share_match_their_reference_outputs() {
    let shared = repo().join("../shared/models/with-weights");
    for m in ["squeezenet1_1", "mobilenet_v2"] {
        let dir = shared.join(m);
        if !dir.join("model.onnx").is_file() {
            eprintln!("skipping {m}: {} is absent", dir.display());
            continue;
        }
        whole_model_matches_its_reference(&dir);
    }
}

#[test]
fn a_share_split_in_two_gives_the_whole_models_output() {
    let Some(ctx) = ctx() else { return };
    let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
    let n = c.model.coarse.groups.len();
    assert!(n >= 2, "the fixture has {n} groups");
    let parts = stage_shares(&c.model, 2).expect("two shares");
    assert!(
        parts[1]
            .0
            .inputs
            .iter()
            .all(|t| !c.inputs.contains_key(&t.name)),
        "stage 2 reads the model input"
    );
    let execs: Vec<GpuShareExec> = parts
        .iter()
        .map(|(spec, sub)| GpuShareExec::load(ctx.clone(), sub, spec).expect("loads"))
        .collect();
    let out = run_shares(&execs, &c.inputs);
    let d = worst(&c, &out);
    assert!(d <= 1e-4, "relative difference {d:e}");
}

#[test]
fn groups_sent_to_the_cpu_run_there_and_give_the_same_output() {
    let Some(ctx) = ctx() else { return };
    let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
    let (spec, sub) = one_share(&c.model);
    // Every other kernel pattern on the CPU: activations cross host and device both ways.
    let opts = LoadOptions {
        on_cpu: &|p| p.starts_with("Conv"),
        ..LoadOptions::default()
    };
    let exec = GpuShareExec::load_with(ctx, &sub, &spec, opts).expect("loads");
    let on_cpu: Vec<&GroupPlacement> = exec
        .placements()
        .iter()
        .filter(|p| matches!(p.on, Where::Cpu(_)))
        .collect();
    assert!(!on_cpu.is_empty(), "{}", exec.summary());
    assert!(on_cpu.len() < exec.placements().len(), "{}", exec.summary());
    assert!(exec.summary().contains("on the CPU"), "{}", exec.summary());
    let out = run_shares(std::slice::from_ref(&exec), &c.inputs);
    let d = worst(&c, &out);
    assert!(d <= 1e-4, "relative difference {d:e}");
    // Same answer as tract running the whole share.
    let tract = SubgraphExec::load(&sub, &spec).expect("tract loads");
    let want = tract.run(&c.inputs).expect("tract runs");
    let got: NamedTensors = want
        .iter()
        .map(|(n, _)| (n.clone(), out[n].clone()))
        .collect();
    assert!(max_rel_diff(&got, &want) <= 1e-4);
}

#[test]
fn every_kernel_is_checked_against_tract_by_default_and_the_fixture_passes() {
    let Some(ctx) = ctx() else { return };
    let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
    let (spec, sub) = one_share(&c.model);
    let exec = GpuShareExec::load(ctx, &sub, &spec).expect("loads");
    let v = &exec.verified;
    assert!(v.mismatches.is_empty(), "{v:?}");
    // One check per distinct kernel signature at most, and every GPU group checked.
    assert!(
        v.checked > 0 && v.checked <= exec.placements().len(),
        "{v:?}"
    );
    assert!(exec.placements().iter().all(|p| p.on == Where::Gpu));
}

#[test]
fn kernels_failing_verification_move_to_the_cpu_and_the_answer_stays_right() {
    let Some(ctx) = ctx() else { return };
    let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
    let (spec, sub) = one_share(&c.model);
    // A tolerance no kernel meets: every GPU kernel fails it.
    let opts = LoadOptions {
        verify: Some(-1.0),
        ..LoadOptions::default()
    };
    let exec = GpuShareExec::load_with(ctx, &sub, &spec, opts).expect("loads");
    let found = &exec.verified.mismatches;
    assert!(!found.is_empty());
    for m in found {
        let p = exec
            .placements()
            .iter()
            .find(|p| p.group == m.group)
            .expect("placed");
        assert!(
            matches!(&p.on, Where::Cpu(why) if why.contains("differs from tract")),
            "{p:?}"
        );
    }
    let out = run_shares(std::slice::from_ref(&exec), &c.inputs);
    let d = worst(&c, &out);
    assert!(d <= 1e-4, "relative difference {d:e}");
}

#[test]
fn a_kernel_corrupted_on_purpose_is_caught_at_load_and_runs_on_tract() {
    let Some(ctx) = ctx() else { return };
    // An SE-block CNN: the corrupted kernels are the excitation gates' Conv+Sigmoid.
    let c = case(&repo().join("tests/fixtures/onnx/tiny-effnet"));
    let (spec, sub) = one_share(&c.model);
    let target = |sig: &KernelSignature| sig.pattern() == "Conv+Sigmoid";
    // Every written value off by a little: what a wrong index or a bad constant looks like.
    let corrupt = |sig: &KernelSignature, src: String| {
        if target(sig) {
            src.replace("return v;", "return v * 1.01 + 0.003;")
        } else {
            src
        }
    };
    let opts = LoadOptions {
        tamper: Some(&corrupt),
        ..LoadOptions::default()
    };
    let exec = GpuShareExec::load_with(ctx.clone(), &sub, &spec, opts).expect("loads");
    let found = &exec.verified.mismatches;
    assert!(!found.is_empty(), "the corruption went unnoticed");
    assert!(
        found.iter().all(|m| m.pattern == "Conv+Sigmoid"),
        "{found:?}"
    );
    let corrupted = exec
        .placements()
        .iter()
        .filter(|p| p.pattern == "Conv+Sigmoid")
        .collect::<Vec<_>>();
    assert!(!corrupted.is_empty());
    for p in &corrupted {
        assert!(
            matches!(&p.on, Where::Cpu(why) if why.contains("differs from tract")),
            "{p:?}"
        );
    }
    let out = run_shares(std::slice::from_ref(&exec), &c.inputs);
    let d = worst(&c, &out);
    assert!(d <= 1e-4, "relative difference to onnxruntime {d:e}");
    // Without the check the same corruption reaches the answer: the test can fail.
    let unchecked = LoadOptions {
        tamper: Some(&corrupt),
        verify: None,
        ..LoadOptions::default()
    };
    let bad = GpuShareExec::load_with(ctx, &sub, &spec, unchecked).expect("loads");
    let out = run_shares(std::slice::from_ref(&bad), &c.inputs);
    assert!(
        worst(&c, &out) > 1e-3,
        "the corruption does not change the answer"
    );
}

#[test]
fn a_board_class_checks_each_kernel_signature_once() {
    let Some(ctx) = ctx() else { return };
    let c = case(&repo().join("tests/fixtures/onnx/tiny-effnet"));
    let (spec, sub) = one_share(&c.model);
    let mut verdicts = std::collections::BTreeMap::new();
    let first = GpuShareExec::load_with(
        ctx.clone(),
        &sub,
        &spec,
        LoadOptions {
            verdicts: Some(&mut verdicts),
            ..LoadOptions::default()
        },
    )
    .expect("loads");
    let gpu_groups = first
        .placements()
        .iter()
        .filter(|p| p.on == Where::Gpu)
        .count();
    // Repeated blocks share signatures: fewer checks than GPU groups.
    assert!(first.verified.checked < gpu_groups, "{:?}", first.verified);
    assert_eq!(verdicts.len(), first.verified.checked);
    assert!(verdicts.values().all(|v| v.matches));
    let second = GpuShareExec::load_with(
        ctx,
        &sub,
        &spec,
        LoadOptions {
            verdicts: Some(&mut verdicts),
            ..LoadOptions::default()
        },
    )
    .expect("loads");
    assert_eq!(second.verified.checked, 0, "{:?}", second.verified);
    assert_eq!(second.verified.known, gpu_groups);
}

#[test]
fn a_request_without_its_input_is_refused_by_name() {
    let Some(ctx) = ctx() else { return };
    let c = case(&repo().join("tests/fixtures/onnx/tiny-cnn"));
    let (spec, sub) = one_share(&c.model);
    let exec = GpuShareExec::load(ctx, &sub, &spec).expect("loads");
    let msg = exec.run(&HashMap::new()).unwrap_err().to_string();
    let (name, value) = c.inputs.iter().next().expect("an input");
    assert!(msg.contains(name.as_str()), "{msg}");
    let mut short = c.inputs.clone();
    short.insert(
        name.clone(),
        moirai_core::tensor::TensorValue::f32(&value.dims[..1], vec![0.0; 3]),
    );
    let msg = exec.run(&short).unwrap_err().to_string();
    assert!(msg.contains("3 values"), "{msg}");
}
