//! Tensor values as they cross devices: a request's inputs, the activations agents forward,
//! the answers. A [`TensorValue`] is a static shape and its elements, in one of the element
//! types a model carries at its boundaries ([`DType`]): f32, f16 (kept as stored, its bits),
//! int64 token ids, int32, int8, uint8 and bool masks.
//!
//! On the wire a value is its little-endian bytes ([`TensorValue::to_le_bytes`]); reading
//! them back ([`TensorValue::from_le_bytes`]) checks the byte count against the shape with
//! checked arithmetic before anything is allocated.

use crate::kernel::DType;

/// Elements of a tensor, by type.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    /// IEEE half precision, as its bits.
    F16(Vec<u16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// A tensor's shape and elements.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorValue {
    pub dims: Vec<u64>,
    pub data: TensorData,
}

/// Why bytes or numbers do not make a tensor.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TensorValueError {
    #[error("shape {dims:?} overflows the element count")]
    TooLarge { dims: Vec<u64> },
    #[error("{got} elements for shape {dims:?} ({want} expected)")]
    Count { dims: Vec<u64>, got: u64, want: u64 },
    #[error("{got} bytes for {dtype:?} of shape {dims:?} ({want} expected)")]
    Bytes {
        dtype: DType,
        dims: Vec<u64>,
        got: u64,
        want: u64,
    },
    #[error("element {index} ({value}) is not a {dtype:?}")]
    Value {
        dtype: DType,
        index: usize,
        value: String,
    },
}

/// The element count of a shape, `None` when it overflows `u64`.
pub fn elements_of(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
}

/// The byte count of a shape of `dtype`, `None` when it overflows `u64`.
pub fn bytes_of(dtype: DType, dims: &[u64]) -> Option<u64> {
    elements_of(dims)?.checked_mul(dtype.size_bytes() as u64)
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TensorValue {
    /// A value whose element count matches its shape.
    pub fn new(dims: Vec<u64>, data: TensorData) -> Result<Self, TensorValueError> {
        let want =
            elements_of(&dims).ok_or_else(|| TensorValueError::TooLarge { dims: dims.clone() })?;
        let got = data.len() as u64;
        if got != want {
            return Err(TensorValueError::Count { dims, got, want });
        }
        Ok(TensorValue { dims, data })
    }

    /// An f32 value (the caller vouches for the count; [`TensorValue::new`] checks it).
    pub fn f32(dims: &[u64], values: Vec<f32>) -> Self {
        TensorValue {
            dims: dims.to_vec(),
            data: TensorData::F32(values),
        }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn elements(&self) -> usize {
        self.data.len()
    }

    /// The elements as little-endian bytes (a bool as one byte, 0 or 1).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        }
    }

    /// Reads little-endian bytes as a value of `dtype` and shape `dims`; the byte count must
    /// be exactly the shape's, and a bool byte must be 0 or 1.
    pub fn from_le_bytes(
        dtype: DType,
        dims: &[u64],
        bytes: &[u8],
    ) -> Result<Self, TensorValueError> {
        let want = bytes_of(dtype, dims).ok_or_else(|| TensorValueError::TooLarge {
            dims: dims.to_vec(),
        })?;
        if bytes.len() as u64 != want {
            return Err(TensorValueError::Bytes {
                dtype,
                dims: dims.to_vec(),
                got: bytes.len() as u64,
                want,
            });
        }
        fn words<const N: usize, T>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let data = match dtype {
            DType::F32 => TensorData::F32(words(bytes, f32::from_le_bytes)),
            DType::F16 => TensorData::F16(words(bytes, u16::from_le_bytes)),
            DType::I64 => TensorData::I64(words(bytes, i64::from_le_bytes)),
            DType::I32 => TensorData::I32(words(bytes, i32::from_le_bytes)),
            DType::I8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
            DType::U8 => TensorData::U8(bytes.to_vec()),
            DType::Bool => {
                if let Some(index) = bytes.iter().position(|&b| b > 1) {
                    return Err(TensorValueError::Value {
                        dtype,
                        index,
                        value: bytes[index].to_string(),
                    });
                }
                TensorData::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
        };
        Ok(TensorValue {
            dims: dims.to_vec(),
            data,
        })
    }

    /// The elements as f64, for comparisons and reports (exact but for int64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F16(v) => v
                .iter()
                .map(|&b| f64::from(half::f16::from_bits(b)))
                .collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Bool(v) => v.iter().map(|&b| f64::from(u8::from(b))).collect(),
        }
    }

    /// The elements as f32 (half precision widened, integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            _ => self.to_f64().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// A value of `dtype` from numbers (JSON requests): an integer type takes only whole
    /// numbers in its range, bool only 0 and 1; float types take any finite or infinite
    /// number.
    pub fn from_numbers(
        dtype: DType,
        dims: &[u64],
        numbers: &[Number],
    ) -> Result<Self, TensorValueError> {
        let bad = |index: usize, n: &Number| TensorValueError::Value {
            dtype,
            index,
            value: n.to_string(),
        };
        fn ints<T: TryFrom<i64>>(
            numbers: &[Number],
            bad: &dyn Fn(usize, &Number) -> TensorValueError,
        ) -> Result<Vec<T>, TensorValueError> {
            numbers
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    n.as_i64()
                        .and_then(|x| T::try_from(x).ok())
                        .ok_or_else(|| bad(i, n))
                })
                .collect()
        }
        let data = match dtype {
            DType::F32 => TensorData::F32(numbers.iter().map(|n| n.as_f64() as f32).collect()),
            DType::F16 => TensorData::F16(
                numbers
                    .iter()
                    .map(|n| half::f16::from_f64(n.as_f64()).to_bits())
                    .collect(),
            ),
            DType::I64 => TensorData::I64(ints(numbers, &bad)?),
            DType::I32 => TensorData::I32(ints(numbers, &bad)?),
            DType::I8 => TensorData::I8(ints(numbers, &bad)?),
            DType::U8 => TensorData::U8(ints(numbers, &bad)?),
            DType::Bool => TensorData::Bool(
                numbers
                    .iter()
                    .enumerate()
                    .map(|(i, n)| match n.as_i64() {
                        Some(0) => Ok(false),
                        Some(1) => Ok(true),
                        _ => Err(bad(i, n)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        TensorValue::new(dims.to_vec(), data)
    }

    /// The elements as numbers (JSON answers): integers stay integers.
    pub fn to_numbers(&self) -> Vec<Number> {
        let ints = |v: Vec<i64>| v.into_iter().map(Number::Int).collect();
        match &self.data {
            TensorData::I64(v) => ints(v.clone()),
            TensorData::I32(v) => ints(v.iter().map(|&x| i64::from(x)).collect()),
            TensorData::I8(v) => ints(v.iter().map(|&x| i64::from(x)).collect()),
            TensorData::U8(v) => ints(v.iter().map(|&x| i64::from(x)).collect()),
            TensorData::Bool(v) => ints(v.iter().map(|&b| i64::from(b)).collect()),
            _ => self.to_f64().into_iter().map(Number::Float).collect(),
        }
    }
}

/// max|got - want| / max|want| (integers compared as numbers): the difference relative to
/// the reference's scale that every correctness check in the project reports. `None` when
/// the shapes or the element types differ; a NaN where the reference has none, or the other
/// way round, is an infinite difference.
pub fn rel_diff(got: &TensorValue, want: &TensorValue) -> Option<f64> {
    if got.dims != want.dims || got.dtype() != want.dtype() {
        return None;
    }
    let (g, w) = (got.to_f64(), want.to_f64());
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| match (a.is_nan(), b.is_nan()) {
            (true, true) => 0.0,
            (false, false) if a == b => 0.0,
            (false, false) => (a - b).abs(),
            _ => f64::INFINITY,
        })
        .fold(0.0f64, f64::max);
    Some(worst / scale)
}

/// A number of a JSON tensor: integers are kept exact (int64 ids beyond 2^53 included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// The integer, if it is one (a float with no fraction counts).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Number::Int(i) => Some(i),
            Number::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i64),
            Number::Float(_) => None,
        }
    }

    pub fn as_f64(&self) -> f64 {
        match *self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn every_dtype() -> Vec<TensorValue> {
        let d = vec![2, 2];
        vec![
            TensorValue::f32(&d, vec![1.5, -2.0, f32::INFINITY, 0.0]),
            TensorValue::new(d.clone(), TensorData::F16(vec![0x3c00, 0xc000, 0x7c00, 0])).unwrap(),
            TensorValue::new(
                d.clone(),
                TensorData::I64(vec![i64::MIN, -1, 1 << 60, i64::MAX]),
            )
            .unwrap(),
            TensorValue::new(d.clone(), TensorData::I32(vec![i32::MIN, -1, 7, i32::MAX])).unwrap(),
            TensorValue::new(d.clone(), TensorData::I8(vec![-128, -1, 0, 127])).unwrap(),
            TensorValue::new(d.clone(), TensorData::U8(vec![0, 1, 128, 255])).unwrap(),
            TensorValue::new(d, TensorData::Bool(vec![true, false, false, true])).unwrap(),
        ]
    }

    #[test]
    fn every_dtype_survives_its_bytes_exactly() {
        for t in every_dtype() {
            let bytes = t.to_le_bytes();
            assert_eq!(bytes.len(), 4 * t.dtype().size_bytes());
            let back = TensorValue::from_le_bytes(t.dtype(), &t.dims, &bytes).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn integers_survive_numbers_exactly_and_floats_are_not_integers() {
        for t in every_dtype() {
            let back = TensorValue::from_numbers(t.dtype(), &t.dims, &t.to_numbers()).unwrap();
            if t.dtype() == DType::F16 {
                assert_eq!(back.to_f64(), t.to_f64());
            } else {
                assert_eq!(back, t);
            }
        }
        let e = TensorValue::from_numbers(DType::I64, &[2], &[Number::Int(1), Number::Float(0.5)])
            .unwrap_err();
        assert!(
            e.to_string().contains("element 1 (0.5) is not a I64"),
            "{e}"
        );
        let e = TensorValue::from_numbers(DType::U8, &[1], &[Number::Int(256)]).unwrap_err();
        assert!(matches!(e, TensorValueError::Value { index: 0, .. }));
        let e = TensorValue::from_numbers(DType::Bool, &[1], &[Number::Int(2)]).unwrap_err();
        assert!(matches!(e, TensorValueError::Value { .. }));
    }

    #[test]
    fn a_byte_count_that_does_not_match_the_shape_is_refused_before_allocating() {
        let e = TensorValue::from_le_bytes(DType::I64, &[3], &[0; 23]).unwrap_err();
        assert_eq!(
            e,
            TensorValueError::Bytes {
                dtype: DType::I64,
                dims: vec![3],
                got: 23,
                want: 24
            }
        );
        let huge = [u64::MAX, u64::MAX];
        assert!(matches!(
            TensorValue::from_le_bytes(DType::F32, &huge, &[]),
            Err(TensorValueError::TooLarge { .. })
        ));
        assert!(matches!(
            TensorValue::from_le_bytes(DType::Bool, &[2], &[1, 7]),
            Err(TensorValueError::Value { index: 1, .. })
        ));
        assert!(TensorValue::new(vec![1 << 40, 1 << 40], TensorData::F32(vec![])).is_err());
    }

    #[test]
    fn differences_are_relative_to_the_reference_and_nan_counts() {
        let a = TensorValue::f32(&[3], vec![1.0, 2.0, 4.0]);
        let b = TensorValue::f32(&[3], vec![1.0, 2.5, 4.0]);
        assert_eq!(rel_diff(&b, &a), Some(0.125));
        assert_eq!(rel_diff(&a, &a), Some(0.0));
        let n = TensorValue::f32(&[3], vec![1.0, f32::NAN, 4.0]);
        assert_eq!(rel_diff(&n, &a), Some(f64::INFINITY));
        let i = TensorValue::new(vec![3], TensorData::I64(vec![1, 2, 4])).unwrap();
        assert_eq!(rel_diff(&i, &a), None);
    }

    proptest! {
        #[test]
        fn hostile_shapes_never_panic_or_allocate(
            dims in proptest::collection::vec(any::<u64>(), 0..6),
            len in 0usize..64,
            code in 0usize..7,
        ) {
            let dtype = [DType::F32, DType::F16, DType::I64, DType::I32, DType::I8, DType::U8, DType::Bool][code];
            let bytes = vec![1u8; len];
            if let Ok(t) = TensorValue::from_le_bytes(dtype, &dims, &bytes) {
                prop_assert_eq!(t.to_le_bytes(), bytes);
                prop_assert_eq!(Some(t.elements() as u64), elements_of(&dims));
            }
        }
    }
}
