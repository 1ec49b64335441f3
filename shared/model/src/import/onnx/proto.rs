//! Reading the protobuf: element types, shapes, external data, node order, attributes.
//! Every refusal is an [`ImportError`] naming the file and the tensor or node at fault.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use moirai_core::kernel::{AttrValue, DType, TensorShape};
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;

use super::{ImportError, ImportOptions, TensorInfo, WeightData};

/// The element type of an ONNX `TensorProto.DataType` code.
pub fn dtype_of(code: i32) -> Option<DType> {
    use pb::tensor_proto::DataType as D;
    match D::try_from(code).ok()? {
        D::Float => Some(DType::F32),
        D::Float16 => Some(DType::F16),
        D::Int64 => Some(DType::I64),
        D::Int32 => Some(DType::I32),
        D::Int8 => Some(DType::I8),
        D::Uint8 => Some(DType::U8),
        D::Bool => Some(DType::Bool),
        _ => None,
    }
}

pub(super) fn dtype_name(code: i32) -> String {
    pb::tensor_proto::DataType::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("code {code}"))
}

/// The largest tensor the importer accepts: beyond it the file is corrupt, not a model.
const MAX_TENSOR_BYTES: u128 = 1 << 40;

pub(super) fn checked_shape(
    dims: Vec<usize>,
    dtype: DType,
    tensor: &str,
    path: &Path,
) -> Result<TensorShape, ImportError> {
    let bytes = dims.iter().try_fold(dtype.size_bytes() as u128, |acc, &d| {
        acc.checked_mul(d as u128)
    });
    match bytes {
        Some(b) if b <= MAX_TENSOR_BYTES => Ok(TensorShape { dims, dtype }),
        _ => Err(ImportError::TooLarge {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
        }),
    }
}

pub(super) fn tensor_proto_shape(
    t: &pb::TensorProto,
    path: &Path,
) -> Result<TensorShape, ImportError> {
    let dtype = dtype_of(t.data_type).ok_or_else(|| ImportError::UnsupportedDType {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        dtype: dtype_name(t.data_type),
    })?;
    let dims = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| ImportError::NegativeDim {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                dim: d,
            })
        })
        .collect::<Result<_, _>>()?;
    checked_shape(dims, dtype, &t.name, path)
}

pub(super) fn weight_data(
    t: &pb::TensorProto,
    shape: &TensorShape,
    model_dir: &Path,
    path: &Path,
) -> Result<WeightData, ImportError> {
    let external = t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
    if !external {
        return Ok(WeightData::Inline);
    }
    let bad = |message: String| ImportError::BadExternalData {
        path: path.to_path_buf(),
        initializer: t.name.clone(),
        message,
    };
    let key = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let location = key("location").ok_or_else(|| bad("no `location` entry".into()))?;
    let number = |k: &str| -> Result<Option<u64>, ImportError> {
        key(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("`{k}` is {v:?}, expected a byte count")))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?.unwrap_or(shape.bytes() as u64);
    let rel = Path::new(location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(bad(format!(
            "location {location:?} must be a relative path inside the model's folder"
        )));
    }
    let file = model_dir.join(rel);
    match std::fs::metadata(&file) {
        Ok(meta) => {
            let needed = offset.saturating_add(length);
            if meta.len() < needed {
                return Err(ImportError::ExternalDataTooShort {
                    path: path.to_path_buf(),
                    initializer: t.name.clone(),
                    file,
                    needed,
                    size: meta.len(),
                });
            }
            Ok(WeightData::External {
                file,
                present: true,
            })
        }
        Err(_) => Ok(WeightData::External {
            file,
            present: false,
        }),
    }
}

/// The static shape a value_info declares, `None` when it declares no complete shape.
pub(super) fn value_info_shape(
    vi: &pb::ValueInfoProto,
    opts: &ImportOptions,
    strict: bool,
    path: &Path,
) -> Result<Option<TensorShape>, ImportError> {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value;
    let Some(Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Ok(None);
    };
    if tt.elem_type == 0 {
        return Ok(None);
    }
    let dtype = dtype_of(tt.elem_type).ok_or_else(|| ImportError::UnsupportedDType {
        path: path.to_path_buf(),
        tensor: vi.name.clone(),
        dtype: dtype_name(tt.elem_type),
    })?;
    let Some(shape) = &tt.shape else {
        return Ok(None);
    };
    let mut dims = Vec::with_capacity(shape.dim.len());
    for d in &shape.dim {
        match &d.value {
            Some(Dim::DimValue(v)) => {
                dims.push(usize::try_from(*v).map_err(|_| ImportError::NegativeDim {
                    path: path.to_path_buf(),
                    tensor: vi.name.clone(),
                    dim: *v,
                })?)
            }
            Some(Dim::DimParam(name)) => match opts.dims.get(name) {
                Some(&v) => dims.push(v),
                None if !strict => return Ok(None),
                None => {
                    return Err(ImportError::SymbolicDim {
                        path: path.to_path_buf(),
                        tensor: vi.name.clone(),
                        dim: name.clone(),
                    })
                }
            },
            None => return Ok(None),
        }
    }
    checked_shape(dims, dtype, &vi.name, path).map(Some)
}

pub(super) fn constant_shape(
    n: &pb::NodeProto,
    path: &Path,
) -> Result<Option<TensorShape>, ImportError> {
    let scalar = |dtype| {
        Some(TensorShape {
            dims: vec![],
            dtype,
        })
    };
    let list = |len: usize, dtype| {
        Some(TensorShape {
            dims: vec![len],
            dtype,
        })
    };
    for a in &n.attribute {
        let shape = match a.name.as_str() {
            "value" => match &a.t {
                Some(t) => Some(tensor_proto_shape(t, path)?),
                None => None,
            },
            "value_float" => scalar(DType::F32),
            "value_int" => scalar(DType::I64),
            "value_floats" => list(a.floats.len(), DType::F32),
            "value_ints" => list(a.ints.len(), DType::I64),
            _ => None,
        };
        if shape.is_some() {
            return Ok(shape);
        }
    }
    Ok(None)
}

/// Kahn's algorithm, keeping file order among ready nodes; refuses undefined inputs.
pub(super) fn topo_order(
    graph: &pb::GraphProto,
    known: &HashMap<String, TensorInfo>,
    names: &[String],
    path: &Path,
) -> Result<Vec<usize>, ImportError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), i).is_some() || known.contains_key(o) {
                return Err(ImportError::DuplicateTensor {
                    path: path.to_path_buf(),
                    tensor: o.clone(),
                    node: names[i].clone(),
                });
            }
        }
    }
    let mut indegree = vec![0usize; graph.node.len()];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); graph.node.len()];
    for (i, n) in graph.node.iter().enumerate() {
        for t in n.input.iter().filter(|t| !t.is_empty()) {
            match producer.get(t.as_str()) {
                Some(&j) => {
                    indegree[i] += 1;
                    succ[j].push(i);
                }
                None if known.contains_key(t) => {}
                None => {
                    return Err(ImportError::UndefinedInput {
                        path: path.to_path_buf(),
                        node: names[i].clone(),
                        tensor: t.clone(),
                    })
                }
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..graph.node.len())
        .filter(|&i| indegree[i] == 0)
        .collect();
    let mut order = Vec::with_capacity(graph.node.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &s in &succ[i] {
            indegree[s] -= 1;
            if indegree[s] == 0 {
                ready.insert(s);
            }
        }
    }
    if order.len() < graph.node.len() {
        let stuck = (0..graph.node.len())
            .find(|&i| indegree[i] > 0)
            .unwrap_or(0);
        return Err(ImportError::Cycle {
            path: path.to_path_buf(),
            node: names[stuck].clone(),
        });
    }
    Ok(order)
}

pub(super) fn attr_value(a: &pb::AttributeProto) -> Option<AttrValue> {
    let ty = AttributeType::try_from(a.r#type).unwrap_or(AttributeType::Undefined);
    Some(match ty {
        AttributeType::Int => AttrValue::Int(a.i),
        AttributeType::Ints => AttrValue::Ints(a.ints.clone()),
        AttributeType::Float => AttrValue::Float(a.f),
        AttributeType::Floats => AttrValue::Floats(a.floats.clone()),
        AttributeType::String => AttrValue::Str(String::from_utf8_lossy(&a.s).into_owned()),
        _ => return None,
    })
}
