//! Number formats octet stores tensors in, and the `Float` trait that reference kernels are generic
//! over (f32 for speed tests, f64 for finite differences).

use std::fmt::Debug;

/// Storage format of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F64,
    F32,
    BF16,
    F16,
    /// FP8 E4M3 "fn" (OCP): bias 7, no infinities, max 448.
    E4M3,
    /// FP8 E5M2 (OCP): bias 15, IEEE-like, max 57344.
    E5M2,
}

impl DType {
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::E4M3 | DType::E5M2 => 1,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::E4M3 => "e4m3",
            DType::E5M2 => "e5m2",
        }
    }
}

/// A real scalar the model and reference kernels can compute in.
pub trait Float:
    num_traits::Float + Into<f64> + Copy + Send + Sync + Debug + Default + std::iter::Sum + crate::ZeroBits + 'static
{
    const DTYPE: DType;
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Float for f64 {
    const DTYPE: DType = DType::F64;
    fn from_f64(x: f64) -> Self {
        x
    }
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// Round an f32 to the nearest bf16 (ties to even) and back: what a bf16 GEMM operand holds.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Round an f32 to the nearest f16 (ties to even, overflow to inf) and back.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}
