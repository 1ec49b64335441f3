//! Tensor values ([`TensorValue`]: what requests and activations carry, in every boundary
//! dtype) into and out of the two executors: tract tensors, and the GPU's 32-bit words.
//!
//! The GPU kernels compute in `f32` and `i32` ([`crate::kernels::gpu_dtype`]): f16 is widened
//! on the way in and rounded back on the way out, int64 is narrowed to i32 only when every
//! element fits (a token id beyond 2^31 is refused, never wrapped), and the narrow integer
//! types and bool are widened.

use moirai_core::kernel::DType;
use moirai_core::tensor::{TensorData, TensorValue};
use tract_onnx::prelude::*;

use crate::gpu::buffers::GpuDType;

/// Why a value cannot enter or leave an executor.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("tensor of shape {dims:?} has {got} values")]
    Count { dims: Vec<u64>, got: usize },
    #[error("{dtype:?} element {index} ({value}) does not fit the GPU's 32-bit integers")]
    Narrow {
        dtype: DType,
        index: usize,
        value: i64,
    },
    #[error("tract produced {0:?}, which cannot cross devices")]
    Unsupported(DatumType),
    #[error("tract: {0}")]
    Tract(String),
    #[error("the GPU holds {gpu:?} words; the tensor is {dtype:?}")]
    GpuType { gpu: GpuDType, dtype: DType },
}

fn tract_err(e: TractError) -> ValueError {
    ValueError::Tract(format!("{e:#}"))
}

/// A tract tensor of the value.
pub fn to_tract(v: &TensorValue) -> Result<Tensor, ValueError> {
    let shape: Vec<usize> = v.dims.iter().map(|&d| d as usize).collect();
    let count = || ValueError::Count {
        dims: v.dims.clone(),
        got: v.elements(),
    };
    match &v.data {
        TensorData::F32(x) => Tensor::from_shape(&shape, x),
        TensorData::F16(x) => {
            let h: Vec<f16> = x.iter().map(|&b| f16::from_bits(b)).collect();
            Tensor::from_shape(&shape, &h)
        }
        TensorData::I64(x) => Tensor::from_shape(&shape, x),
        TensorData::I32(x) => Tensor::from_shape(&shape, x),
        TensorData::I8(x) => Tensor::from_shape(&shape, x),
        TensorData::U8(x) => Tensor::from_shape(&shape, x),
        TensorData::Bool(x) => Tensor::from_shape(&shape, x),
    }
    .map_err(|_| count())
}

/// The value of a tract tensor (shape symbols, `TDim`, read as int64).
pub fn from_tract(t: Tensor) -> Result<TensorValue, ValueError> {
    let dims: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    fn plain<T: Datum + Copy>(t: &Tensor) -> Result<Vec<T>, ValueError> {
        Ok(t.to_plain_array_view::<T>()
            .map_err(tract_err)?
            .iter()
            .copied()
            .collect())
    }
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(plain(&t)?),
        DatumType::F16 => TensorData::F16(plain::<f16>(&t)?.iter().map(|h| h.to_bits()).collect()),
        DatumType::I64 => TensorData::I64(plain(&t)?),
        DatumType::TDim => {
            let t = t.cast_to::<i64>().map_err(tract_err)?;
            TensorData::I64(plain(&t)?)
        }
        DatumType::I32 => TensorData::I32(plain(&t)?),
        DatumType::I8 => TensorData::I8(plain(&t)?),
        DatumType::U8 => TensorData::U8(plain(&t)?),
        DatumType::Bool => TensorData::Bool(plain(&t)?),
        other => return Err(ValueError::Unsupported(other)),
    };
    Ok(TensorValue { dims, data })
}

/// The value as the GPU's words of `gpu` type (`f32` bits or `i32`).
pub fn to_words(v: &TensorValue, gpu: GpuDType) -> Result<Vec<u32>, ValueError> {
    let ints = |x: &mut dyn Iterator<Item = i64>| -> Result<Vec<u32>, ValueError> {
        x.enumerate()
            .map(|(index, value)| match gpu {
                GpuDType::F32 => Ok((value as f32).to_bits()),
                GpuDType::I32 => {
                    i32::try_from(value)
                        .map(|w| w as u32)
                        .map_err(|_| ValueError::Narrow {
                            dtype: v.dtype(),
                            index,
                            value,
                        })
                }
            })
            .collect()
    };
    let floats = |x: Vec<f32>| -> Vec<u32> {
        match gpu {
            GpuDType::F32 => x.iter().map(|f| f.to_bits()).collect(),
            GpuDType::I32 => x.iter().map(|&f| f as i32 as u32).collect(),
        }
    };
    Ok(match &v.data {
        TensorData::F32(_) | TensorData::F16(_) => floats(v.to_f32()),
        TensorData::I64(x) => ints(&mut x.iter().copied())?,
        TensorData::I32(x) => ints(&mut x.iter().map(|&i| i64::from(i)))?,
        TensorData::I8(x) => ints(&mut x.iter().map(|&i| i64::from(i)))?,
        TensorData::U8(x) => ints(&mut x.iter().map(|&i| i64::from(i)))?,
        TensorData::Bool(x) => ints(&mut x.iter().map(|&b| i64::from(b)))?,
    })
}

/// A value of `dtype` from the GPU's words of `gpu` type.
pub fn from_words(
    dims: &[u64],
    words: &[u32],
    gpu: GpuDType,
    dtype: DType,
) -> Result<TensorValue, ValueError> {
    let floats = || words.iter().map(|&w| f32::from_bits(w));
    let ints = || words.iter().map(|&w| w as i32);
    let data = match (gpu, dtype) {
        (GpuDType::F32, DType::F32) => TensorData::F32(floats().collect()),
        (GpuDType::F32, DType::F16) => {
            TensorData::F16(floats().map(|f| f16::from_f32(f).to_bits()).collect())
        }
        (GpuDType::I32, DType::I64) => TensorData::I64(ints().map(i64::from).collect()),
        (GpuDType::I32, DType::I32) => TensorData::I32(ints().collect()),
        (GpuDType::I32, DType::I8) => TensorData::I8(ints().map(|i| i as i8).collect()),
        (GpuDType::I32, DType::U8) => TensorData::U8(ints().map(|i| i as u8).collect()),
        (GpuDType::I32, DType::Bool) => TensorData::Bool(ints().map(|i| i != 0).collect()),
        (gpu, dtype) => return Err(ValueError::GpuType { gpu, dtype }),
    };
    TensorValue::new(dims.to_vec(), data).map_err(|_| ValueError::Count {
        dims: dims.to_vec(),
        got: words.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<TensorValue> {
        let d = vec![1, 3];
        vec![
            TensorValue::f32(&d, vec![1.5, -0.25, 3.0]),
            TensorValue::new(d.clone(), TensorData::F16(vec![0x3c00, 0xb400, 0x4200])).unwrap(),
            TensorValue::new(d.clone(), TensorData::I64(vec![101, -7, (1 << 31) - 1])).unwrap(),
            TensorValue::new(d.clone(), TensorData::I32(vec![1, -2, 3])).unwrap(),
            TensorValue::new(d.clone(), TensorData::U8(vec![0, 200, 255])).unwrap(),
            TensorValue::new(d, TensorData::Bool(vec![true, false, true])).unwrap(),
        ]
    }

    #[test]
    fn every_dtype_goes_through_tract_unchanged() {
        for v in values() {
            let back = from_tract(to_tract(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn every_dtype_goes_through_the_gpus_words_unchanged() {
        for v in values() {
            let gpu = crate::kernels::gpu_dtype(v.dtype());
            let words = to_words(&v, gpu).unwrap();
            let back = from_words(&v.dims, &words, gpu, v.dtype()).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn an_int64_beyond_the_gpus_integers_is_refused_not_wrapped() {
        let v = TensorValue::new(vec![2], TensorData::I64(vec![5, 1 << 40])).unwrap();
        let e = to_words(&v, GpuDType::I32).unwrap_err();
        assert!(
            matches!(e, ValueError::Narrow { index: 1, value, .. } if value == 1 << 40),
            "{e}"
        );
    }
}
