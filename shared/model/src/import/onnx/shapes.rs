//! Shapes the file does not declare, from tract's type and shape inference.
//!
//! tract parses the model into its inference IR and propagates facts from the inputs. It
//! needs no weight values for that, only their shapes (the values of small shape constants
//! are inline in every file we take), so initializers whose external data is absent are
//! turned into graph inputs of the same type and shape before tract sees the graph.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use moirai_core::kernel::{DType, TensorShape};
use tract_onnx::pb;
use tract_onnx::prelude::{DatumType, InferenceModelExt};
use tract_onnx::tract_hir::infer::Factoid;

use super::TensorInfo;

/// What inference found: the shapes of tensors of the element types Moirai carries, and the
/// tensors of any other type (double, string...), with that type.
#[derive(Default)]
pub(super) struct Inferred {
    pub shapes: HashMap<String, TensorShape>,
    pub uncarried: HashMap<String, String>,
}

/// Infers the shape of every tensor tract can; `Err` carries tract's message when it could
/// not even parse the graph.
pub(super) fn infer(
    proto: &pb::ModelProto,
    model_dir: &Path,
    missing_external: &BTreeSet<String>,
    tensors: &HashMap<String, TensorInfo>,
    declared: &HashMap<String, TensorShape>,
) -> Result<Inferred, String> {
    let mut proto = proto.clone();
    let Some(graph) = proto.graph.as_mut() else {
        return Err("the model has no graph".into());
    };
    let mut removed = Vec::new();
    graph.initializer.retain(|t| {
        if missing_external.contains(&t.name) {
            removed.push(t.name.clone());
            false
        } else {
            true
        }
    });
    for name in removed {
        if let Some(info) = tensors.get(&name) {
            graph.input.retain(|i| i.name != name);
            graph.input.push(value_info(&name, &info.shape));
        }
    }
    // Graph inputs with their resolved (concrete) shapes, symbolic dims bound.
    for input in graph.input.iter_mut() {
        if let Some(shape) = declared.get(&input.name) {
            *input = value_info(&input.name, shape);
        }
    }
    let onnx = tract_onnx::onnx();
    let parsed = onnx
        .parse(&proto, model_dir.to_str())
        .map_err(|e| format!("{e:#}"))?;
    let mut model = parsed.model;
    // Obstinate: keep going past nodes tract cannot analyse; what it found still counts.
    let analysis = model.analyse(true).err().map(|e| format!("{e:#}"));
    let mut out = Inferred::default();
    for (name, outlet) in &parsed.outlets_by_name {
        let Ok(fact) = model.outlet_fact(*outlet) else {
            continue;
        };
        let Ok(Some(dims)) = fact.shape.as_concrete_finite() else {
            continue;
        };
        let Some(datum) = fact.datum_type.concretize() else {
            continue;
        };
        let Some(dtype) = dtype_of_datum(datum) else {
            out.uncarried.insert(name.clone(), format!("{datum:?}"));
            continue;
        };
        out.shapes.insert(
            name.clone(),
            TensorShape {
                dims: dims.to_vec(),
                dtype,
            },
        );
    }
    if out.shapes.is_empty() {
        if let Some(e) = analysis {
            return Err(e);
        }
    }
    Ok(out)
}

fn dtype_of_datum(d: DatumType) -> Option<DType> {
    Some(match d {
        DatumType::F32 => DType::F32,
        DatumType::F16 => DType::F16,
        // tract carries shapes as symbolic dims; ONNX calls them int64.
        DatumType::I64 | DatumType::TDim => DType::I64,
        DatumType::I32 => DType::I32,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

/// The ONNX `TensorProto.DataType` code of a dtype.
pub fn onnx_code(d: DType) -> i32 {
    use pb::tensor_proto::DataType as D;
    (match d {
        DType::F32 => D::Float,
        DType::F16 => D::Float16,
        DType::I64 => D::Int64,
        DType::I32 => D::Int32,
        DType::I8 => D::Int8,
        DType::U8 => D::Uint8,
        DType::Bool => D::Bool,
    }) as i32
}

/// A value_info declaring `shape` for `name`.
pub fn value_info(name: &str, shape: &TensorShape) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: onnx_code(shape.dtype),
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .dims
                        .iter()
                        .map(|&d| Dimension {
                            denotation: String::new(),
                            value: Some(Dim::DimValue(d as i64)),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    }
}
