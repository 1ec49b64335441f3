//! ONNX `TensorProto` files: the `test_data_set_0/input_0.pb` convention, read as f32 and
//! written back.

use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;

use super::requests::Tensor;

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
    #[error("{path}: tensor `{name}` is {dtype}; only float tensors are supported")]
    DType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor `{name}` has {got} values for shape {dims:?}")]
    Size {
        path: PathBuf,
        name: String,
        dims: Vec<i64>,
        got: usize,
    },
}

/// Decodes a float TensorProto; `path` is for messages.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Tensor, TensorError> {
    let t = pb::TensorProto::decode(bytes).map_err(|e| TensorError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return Err(TensorError::DType {
            path: path.to_path_buf(),
            name: t.name.clone(),
            dtype: pb::tensor_proto::DataType::try_from(t.data_type)
                .map(|d| d.as_str_name().to_string())
                .unwrap_or_else(|_| format!("code {}", t.data_type)),
        });
    }
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    let want: i64 = t.dims.iter().product();
    if t.dims.iter().any(|&d| d < 0) || want as usize != values.len() {
        return Err(TensorError::Size {
            path: path.to_path_buf(),
            name: t.name.clone(),
            dims: t.dims.clone(),
            got: values.len(),
        });
    }
    Ok(Tensor {
        name: t.name,
        dims: t.dims.iter().map(|&d| d as u64).collect(),
        values,
    })
}

/// Reads a float TensorProto file.
pub fn read(path: &Path) -> Result<Tensor, TensorError> {
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, path)
}

/// Encodes a tensor as a float TensorProto (raw little-endian data).
pub fn encode(t: &Tensor) -> Vec<u8> {
    pb::TensorProto {
        name: t.name.clone(),
        dims: t.dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Writes a tensor as a TensorProto file.
pub fn write(path: &Path, t: &Tensor) -> Result<(), TensorError> {
    std::fs::write(path, encode(t)).map_err(|source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Largest relative difference `|a-b| / max(|b|, floor)` between two tensors, with `floor`
/// keeping near-zero references from dominating; `None` when the shapes differ.
pub fn max_rel_diff(a: &Tensor, b: &Tensor, floor: f32) -> Option<f32> {
    if a.dims != b.dims || a.values.len() != b.values.len() {
        return None;
    }
    Some(
        a.values
            .iter()
            .zip(&b.values)
            .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
            .fold(0.0f32, f32::max),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_survives_a_file_round_trip() {
        let t = Tensor {
            name: "x".into(),
            dims: vec![1, 3],
            values: vec![1.0, -2.5, 3.25],
        };
        let back = decode(&encode(&t), Path::new("x.pb")).unwrap();
        assert_eq!(back, t);
        assert_eq!(max_rel_diff(&back, &t, 1e-6), Some(0.0));
    }

    #[test]
    fn a_tensor_with_too_few_values_is_refused() {
        let bytes = pb::TensorProto {
            name: "x".into(),
            dims: vec![2, 2],
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: vec![1.0],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            decode(&bytes, Path::new("x.pb")),
            Err(TensorError::Size { .. })
        ));
    }
}
