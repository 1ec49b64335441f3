//! ONNX import: the shared models, the weight-carrying ones, and every kind of bad file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use moirai_core::kernel::DType;
use moirai_model::import::onnx::build::ModelBuilder;
use moirai_model::import::onnx::{self, ImportError, ImportOptions, WeightData};

/// `../shared/models`, or `None` (with a printed reason) when this checkout lacks it.
pub fn shared_models() -> Option<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models"));
    if dir.is_dir() {
        Some(dir.to_path_buf())
    } else {
        eprintln!(
            "skipped: {} is absent (the shared models are not part of the repository)",
            dir.display()
        );
        None
    }
}

/// The graph-only models with their node counts and parameter counts (models/README.md).
pub const MODELS: [(&str, usize, f64); 7] = [
    ("resnet18", 65, 11.7e6),
    ("resnet50", 169, 25.5e6),
    ("mobilenet_v2", 209, 3.5e6),
    ("squeezenet1_1", 83, 1.2e6),
    ("googlenet", 179, 6.6e6),
    ("bert_base", 800, 108.8e6),
    ("distilbert", 334, 66.3e6),
];

/// A fresh, empty folder under the system temp dir.
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "moirai-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

const F: DType = DType::F32;

/// A conv net whose weight lives in `tiny.weights`.
fn external_model() -> ModelBuilder {
    ModelBuilder::new("tiny")
        .input("x", F, &[1, 3, 8, 8])
        .external_initializer("w", &[4, 3, 3, 3], "tiny.weights", 0)
        .node("Conv", &["x", "w"], &["c"])
        .node("Relu", &["c"], &["y"])
        .output("y", F, &[1, 4, 6, 6])
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write fixture");
    p
}

#[test]
fn every_shared_model_imports_with_the_documented_nodes_and_parameters() {
    let Some(dir) = shared_models() else { return };
    for (name, nodes, params) in MODELS {
        let m = onnx::load(&dir.join(format!("{name}.onnx")), &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.nodes.len(), nodes, "{name}");
        // BERT's value_info leaves one mask shape symbolic (`unk__0`): tract fills it in.
        assert_eq!(m.used_tract_inference, name == "bert_base", "{name}");
        let floats = m.param_bytes() as f64 / 4.0;
        // The README rounds to 0.1 M.
        assert!(
            (floats - params).abs() <= 0.05e6 + 0.005 * params,
            "{name}: {floats} parameters, README says {params}"
        );
        assert!(
            m.weights.external_missing > 0,
            "{name}: weights are not shipped"
        );
        assert!(m
            .weights
            .missing_files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "weights")));
        for n in &m.nodes {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                assert!(m.shape(o).is_some(), "{name}: {o} has no shape");
            }
        }
    }
}

#[test]
fn shared_model_flops_match_the_literature() {
    let Some(dir) = shared_models() else { return };
    // Multiply-adds counted twice: ResNet-50 4.1 GMAC, ResNet-18 1.8 GMAC, MobileNetV2 0.3 GMAC,
    // BERT-base at 128 tokens about 11.2 GMAC.
    for (name, gflops) in [
        ("resnet50", 8.2),
        ("resnet18", 3.6),
        ("mobilenet_v2", 0.6),
        ("bert_base", 22.4),
    ] {
        let m = onnx::load(&dir.join(format!("{name}.onnx")), &ImportOptions::default()).unwrap();
        let got = m.total_flops() as f64 / 1e9;
        assert!(
            (got - gflops).abs() / gflops < 0.1,
            "{name}: {got:.2} GFLOPs, expected about {gflops}"
        );
    }
}

#[test]
fn weight_carrying_models_import_through_tract_shape_inference() {
    let Some(dir) = shared_models() else { return };
    let opts = ImportOptions {
        require_weights: true,
        ..Default::default()
    };
    for name in ["squeezenet1_1", "mobilenet_v2"] {
        let path = dir.join("with-weights").join(name).join("model.onnx");
        let m = onnx::load(&path, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.name, name);
        assert!(m.used_tract_inference, "{name} ships without value_info");
        assert_eq!(m.weights.external_missing, 0);
        assert!(m.weights.inline > 0);
        assert_eq!(m.shape(&m.outputs[0]).unwrap().dims, [1, 1000]);
        // Same graph, same shapes as the graph-only file's value_info.
        let g = onnx::load(&dir.join(format!("{name}.onnx")), &ImportOptions::default()).unwrap();
        for n in &g.nodes {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if let Some(s) = m.shape(o) {
                    assert_eq!(Some(s), g.shape(o), "{name}: {o}");
                }
            }
        }
    }
}

#[test]
fn tract_inference_agrees_with_value_info() {
    let Some(dir) = shared_models() else { return };
    for name in ["resnet18", "distilbert"] {
        let path = dir.join(format!("{name}.onnx"));
        let declared = onnx::load(&path, &ImportOptions::default()).unwrap();
        let inferred = onnx::load(
            &path,
            &ImportOptions {
                infer_all_shapes: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(inferred.used_tract_inference);
        for n in &declared.nodes {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                assert_eq!(declared.shape(o), inferred.shape(o), "{name}: {o}");
            }
        }
    }
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let e = onnx::load(Path::new("/no/such/model.onnx"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/no/such/model.onnx"), "{e}");
}

#[test]
fn truncated_files_are_refused_never_panic() {
    let dir = scratch("truncated");
    let bytes = external_model().encode();
    std::fs::write(dir.join("tiny.weights"), vec![0u8; 4 * 108]).unwrap();
    for cut in [
        1,
        7,
        bytes.len() / 4,
        bytes.len() / 2,
        bytes.len() * 3 / 4,
        bytes.len() - 3,
    ] {
        let p = write(&dir, "cut.onnx", &bytes[..cut]);
        let r = onnx::load(&p, &ImportOptions::default());
        let e = r
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} of {} imported", bytes.len()));
        assert!(e.to_string().contains("cut.onnx"), "{e}");
    }
    // The same file uncut imports.
    let p = write(&dir, "whole.onnx", &bytes);
    onnx::load(&p, &ImportOptions::default()).unwrap();
}

#[test]
fn a_truncated_shared_model_is_refused() {
    let Some(models) = shared_models() else {
        return;
    };
    let bytes = std::fs::read(models.join("squeezenet1_1.onnx")).unwrap();
    let dir = scratch("truncated-shared");
    for cut in [100, bytes.len() / 2, bytes.len() - 10] {
        let p = write(&dir, "squeezenet1_1.onnx", &bytes[..cut]);
        assert!(
            onnx::load(&p, &ImportOptions::default()).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn corrupted_bytes_are_a_decode_error() {
    let dir = scratch("corrupt");
    let p = write(
        &dir,
        "garbage.onnx",
        b"\xff\xff\xff\xff this is not a protobuf \x00\x01",
    );
    let e = onnx::load(&p, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::Decode { .. }), "{e}");
    assert!(e.to_string().contains("garbage.onnx"), "{e}");
    // Flipped bytes in a real model: an error of some kind, or (rarely) a different valid
    // model, but never a panic.
    let mut bytes = external_model().encode();
    for i in (0..bytes.len()).step_by(13) {
        bytes[i] ^= 0x5a;
        let p = write(&dir, "flipped.onnx", &bytes);
        let _ = onnx::load(&p, &ImportOptions::default());
    }
}

#[test]
fn an_unknown_op_is_named_with_its_node() {
    let dir = scratch("unknown-op");
    let custom = ModelBuilder::new("custom")
        .input("x", F, &[4])
        .node_in_domain("com.example", "Frobnicate", &["x"], &["y"])
        .output("y", F, &[4]);
    let p = write(&dir, "custom.onnx", &custom.encode());
    let e = onnx::load(&p, &ImportOptions::default()).unwrap_err();
    match &e {
        ImportError::UnknownOp {
            node,
            op_type,
            domain,
            ..
        } => {
            assert_eq!(node, "y_node");
            assert_eq!(op_type, "Frobnicate");
            assert_eq!(domain, "com.example");
        }
        other => panic!("expected UnknownOp, got {other}"),
    }
    let unknown = ModelBuilder::new("u")
        .input("x", F, &[4])
        .node("NotAnOnnxOp", &["x"], &["y"])
        .output("y", F, &[4]);
    let p = write(&dir, "u.onnx", &unknown.encode());
    let e = onnx::load(&p, &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("`NotAnOnnxOp`"), "{e}");
}

#[test]
fn missing_external_weights_are_fine_for_planning_and_refused_for_execution() {
    let dir = scratch("external");
    let p = write(&dir, "tiny.onnx", &external_model().encode());
    let m = onnx::load(&p, &ImportOptions::default()).unwrap();
    assert_eq!(m.weights.external_missing, 1);
    assert_eq!(m.nodes[0].param_bytes, 4 * 108);
    let e = onnx::load(
        &p,
        &ImportOptions {
            require_weights: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    match &e {
        ImportError::MissingWeights {
            initializer, file, ..
        } => {
            assert_eq!(initializer, "w");
            assert!(file.ends_with("tiny.weights"));
        }
        other => panic!("expected MissingWeights, got {other}"),
    }
    assert!(e.to_string().contains("tiny.weights"), "{e}");
}

#[test]
fn present_external_weights_are_found_and_checked_for_length() {
    let dir = scratch("external-present");
    let p = write(&dir, "tiny.onnx", &external_model().encode());
    std::fs::write(dir.join("tiny.weights"), vec![0u8; 4 * 108]).unwrap();
    let opts = ImportOptions {
        require_weights: true,
        ..Default::default()
    };
    let m = onnx::load(&p, &opts).unwrap();
    assert_eq!(m.weights.external_present, 1);
    assert!(matches!(
        &m.tensors["w"].origin,
        onnx::TensorOrigin::Initializer(WeightData::External { present: true, .. })
    ));
    // A weight file too short for its initializer.
    std::fs::write(dir.join("tiny.weights"), vec![0u8; 100]).unwrap();
    let e = onnx::load(&p, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            ImportError::ExternalDataTooShort {
                needed: 432,
                size: 100,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_node_reading_an_undefined_tensor_is_named() {
    let dir = scratch("undefined");
    let m = ModelBuilder::new("u")
        .input("x", F, &[4])
        .node("Add", &["x", "ghost"], &["y"])
        .output("y", F, &[4]);
    let p = write(&dir, "u.onnx", &m.encode());
    let e = onnx::load(&p, &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ImportError::UndefinedInput { node, tensor, .. } if node == "y_node" && tensor == "ghost"),
        "{e}"
    );
}
