//! ONNX `TensorProto` files: the `test_data_set_0/input_0.pb` convention, read and written in
//! every element type a [`TensorValue`] carries (f32, f16, int64, int32, int8, uint8, bool).

use std::path::{Path, PathBuf};

use moirai_core::kernel::DType;
use moirai_core::tensor::{TensorData, TensorValue, TensorValueError};
use prost::Message;
use tract_onnx::pb;

use crate::import::onnx::{dtype_of, onnx_code};

/// A tensor with its name: a request's input, an answer's output, a TensorProto file.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub value: TensorValue,
}

/// Why a tensor file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ONNX TensorProto: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is {dtype}, which cannot cross devices (f32, f16, int64, int32, int8, uint8 and bool can)")]
    DType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor `{name}` has a negative dimension in {dims:?}")]
    Dims {
        path: PathBuf,
        name: String,
        dims: Vec<i64>,
    },
    #[error("{path}: tensor `{name}`: {source}")]
    Value {
        path: PathBuf,
        name: String,
        source: TensorValueError,
    },
}

/// Decodes a TensorProto; `path` is for messages. Values come from `raw_data` or from the
/// typed field the ONNX spec assigns the type (`float_data`; `int64_data`; `int32_data` for
/// int32, int8, uint8, bool and the bits of f16).
pub fn decode(bytes: &[u8], path: &Path) -> Result<NamedTensor, TensorError> {
    let t = pb::TensorProto::decode(bytes).map_err(|e| TensorError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let dtype = dtype_of(t.data_type).ok_or_else(|| TensorError::DType {
        path: path.to_path_buf(),
        name: t.name.clone(),
        dtype: pb::tensor_proto::DataType::try_from(t.data_type)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| format!("code {}", t.data_type)),
    })?;
    if t.dims.iter().any(|&d| d < 0) {
        return Err(TensorError::Dims {
            path: path.to_path_buf(),
            name: t.name.clone(),
            dims: t.dims.clone(),
        });
    }
    let dims: Vec<u64> = t.dims.iter().map(|&d| d as u64).collect();
    let value_err = |source| TensorError::Value {
        path: path.to_path_buf(),
        name: t.name.clone(),
        source,
    };
    let value = if !t.raw_data.is_empty() {
        TensorValue::from_le_bytes(dtype, &dims, &t.raw_data)
    } else {
        let i32s = || t.int32_data.iter().copied();
        let data = match dtype {
            DType::F32 => TensorData::F32(t.float_data.clone()),
            DType::I64 => TensorData::I64(t.int64_data.clone()),
            DType::I32 => TensorData::I32(t.int32_data.clone()),
            // The narrow types travel widened in int32_data.
            DType::F16 => TensorData::F16(i32s().map(|x| x as u16).collect()),
            DType::I8 => TensorData::I8(i32s().map(|x| x as i8).collect()),
            DType::U8 => TensorData::U8(i32s().map(|x| x as u8).collect()),
            DType::Bool => TensorData::Bool(i32s().map(|x| x != 0).collect()),
        };
        TensorValue::new(dims, data)
    }
    .map_err(value_err)?;
    Ok(NamedTensor {
        name: t.name,
        value,
    })
}

/// Reads a TensorProto file.
pub fn read(path: &Path) -> Result<NamedTensor, TensorError> {
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, path)
}

/// Encodes a tensor as a TensorProto (raw little-endian data).
pub fn encode(t: &NamedTensor) -> Vec<u8> {
    pb::TensorProto {
        name: t.name.clone(),
        dims: t.value.dims.iter().map(|&d| d as i64).collect(),
        data_type: onnx_code(t.value.dtype()),
        raw_data: t.value.to_le_bytes(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Writes a tensor as a TensorProto file.
pub fn write(path: &Path, t: &NamedTensor) -> Result<(), TensorError> {
    std::fs::write(path, encode(t)).map_err(|source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_of_every_dtype_survive_a_file_round_trip() {
        for value in [
            TensorValue::f32(&[1, 3], vec![1.0, -2.5, 3.25]),
            TensorValue::new(vec![3], TensorData::I64(vec![101, 2023, i64::MAX])).unwrap(),
            TensorValue::new(vec![2], TensorData::Bool(vec![true, false])).unwrap(),
            TensorValue::new(vec![2], TensorData::F16(vec![0x3c00, 0x4200])).unwrap(),
        ] {
            let t = NamedTensor {
                name: "x".into(),
                value,
            };
            let back = decode(&encode(&t), Path::new("x.pb")).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn typed_fields_are_read_as_the_onnx_spec_assigns_them() {
        let bytes = pb::TensorProto {
            name: "mask".into(),
            dims: vec![3],
            data_type: pb::tensor_proto::DataType::Bool as i32,
            int32_data: vec![1, 0, 1],
            ..Default::default()
        }
        .encode_to_vec();
        let t = decode(&bytes, Path::new("m.pb")).unwrap();
        assert_eq!(t.value.data, TensorData::Bool(vec![true, false, true]));
        let bytes = pb::TensorProto {
            name: "ids".into(),
            dims: vec![2],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            int64_data: vec![7, -1],
            ..Default::default()
        }
        .encode_to_vec();
        let t = decode(&bytes, Path::new("ids.pb")).unwrap();
        assert_eq!(t.value.data, TensorData::I64(vec![7, -1]));
    }

    #[test]
    fn a_tensor_with_too_few_values_or_an_untravelled_type_is_refused_by_name() {
        let bytes = pb::TensorProto {
            name: "x".into(),
            dims: vec![2, 2],
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: vec![1.0],
            ..Default::default()
        }
        .encode_to_vec();
        let e = decode(&bytes, Path::new("x.pb")).unwrap_err();
        assert!(matches!(e, TensorError::Value { .. }), "{e}");
        let bytes = pb::TensorProto {
            name: "d".into(),
            dims: vec![1],
            data_type: pb::tensor_proto::DataType::Double as i32,
            double_data: vec![1.0],
            ..Default::default()
        }
        .encode_to_vec();
        let e = decode(&bytes, Path::new("d.pb")).unwrap_err().to_string();
        assert!(e.contains("`d` is DOUBLE"), "{e}");
    }
}
