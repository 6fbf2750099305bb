//! FP8 GEMMs on the CPU: FP8 bytes + scale operands, f32 accumulation over exactly dequantised values.
//!
//! What a tensor-core FP8 GEMM computes, emulated: `C = (A_q * scale_inv_a) @ (B_q * scale_inv_b)`,
//! products of the decoded operands accumulated in (at least) f32, then an f32 epilogue (bias,
//! accumulate into C) and a rounding of C to the output precision (f32, or bf16 held in f32).
//!
//! Two versions, as everywhere in octet-kernels:
//! - `gemm_reference`: naive loops, f64 accumulation over the dequantised values (the spec).
//! - `gemm`: dequantise each operand once into an f32 scratch (in parallel), then one `sgemm`.
//!   Dequantisation is exact, so both compute the same products and differ only in summation
//!   order and width: `Tolerance::F32`. Exactness: an FP8 value has at most 4 significant bits
//!   (E4M3: 1 + 3) and its lowest set bit is at or above the format's min subnormal (2^-9 E4M3,
//!   2^-16 E5M2); a power-of-two `scale_inv` in [2^-126, 2^126] (`MAX_SCALE_EXPONENT`) moves it to
//!   a number whose lowest bit is >= 2^-16 * 2^-126 = 2^-142, above f32's min subnormal 2^-149, and
//!   with 4 bits it fits f32's 24. The dequantised value is therefore exact unless it overflows f32,
//!   which a scale computed from a finite amax allows only when that amax is within a rounding of
//!   f32::MAX (tested for every code in `tests/fp8_gemm.rs`).
//!
//! The layouts of a linear layer (X: (N,IC), W: (OC,IC), dY: (N,OC), all row-major) are views:
//!
//! | GEMM            | result     | A                         | B                        |
//! | --------------- | ---------- | ------------------------- | ------------------------ |
//! | forward         | Y (N,OC)   | X: `rm(x, N, IC)`         | W^T: `rm(w, OC, IC).t()` |
//! | data gradient   | dX (N,IC)  | dY: `rm(dy, N, OC)`       | W: `rm(w, OC, IC)`       |
//! | weight gradient | dW (OC,IC) | dY^T: `rm(dy, N, OC).t()` | X: `rm(x, N, IC)`        |
//!
//! The FP8 linear layer itself is one backend operation, `Backend::linear_gemm` (one call per row of
//! this table, `crate::backend::GemmRole`), driven by the precision levels in `octet_lm::precision`
//! with the FP8-LM recipe's roles (PAPERS.md section 1). Its CPU version casts each operand by a
//! quantise-dequantise into f32 and runs the same `sgemm` as here, so it equals `gemm` over the FP8
//! bytes bit for bit (`tests/fp8_gemm.rs`): this module is the byte-level spec it is checked against.

use octet_core::dtype::round_bf16;
use octet_core::fp8::{self, Fp8Format};
use octet_core::scaling::Fp8Tensor;
use octet_core::{Error, Result};
use rayon::prelude::*;

use crate::gemm::{Mat, par_for, sgemm};

/// A read-only strided FP8 matrix view: element (i, j) is
/// `decode(format, bytes[i * rs + j * cs]) * scale_inv`.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Mat<'a> {
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
    pub format: Fp8Format,
    /// `1 / scale` of the cast that produced `bytes` (a power of two).
    pub scale_inv: f32,
}

impl<'a> Fp8Mat<'a> {
    /// Row-major (rows, cols).
    pub fn rm(bytes: &'a [u8], rows: usize, cols: usize, format: Fp8Format, scale_inv: f32) -> Self {
        Fp8Mat { bytes, rows, cols, rs: cols, cs: 1, format, scale_inv }
    }

    /// A tensor's bytes read as row-major (rows, cols), with its format and scale_inv; e.g. a
    /// (B, T, C) activation as (B*T, C). Fails unless the tensor has `rows * cols` elements.
    pub fn from_tensor(t: &'a Fp8Tensor, rows: usize, cols: usize) -> Result<Self> {
        if t.numel() != rows * cols {
            return Err(Error::Shape {
                name: "Fp8Mat::from_tensor".into(),
                expected: vec![rows, cols],
                found: t.shape.clone(),
            });
        }
        Ok(Fp8Mat::rm(&t.bytes, rows, cols, t.meta.format, t.meta.scale_inv))
    }

    /// The transpose, as a view of the same bytes.
    pub fn t(self) -> Self {
        Fp8Mat { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// The dequantised element (i, j) (exact; see the module doc).
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f32 {
        fp8::decode(self.format, self.bytes[i * self.rs + j * self.cs]) * self.scale_inv
    }

    /// One past the largest byte index the view reads (0 for an empty view).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 { 0 } else { (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1 }
    }

    fn check(&self, what: &str) {
        assert!(
            self.extent() <= self.bytes.len(),
            "fp8 gemm {what}: view ends at {}, buffer has {}",
            self.extent(),
            self.bytes.len()
        );
    }
}

/// The precision the result is rounded to. Bf16 is held in f32 (`round_bf16` of the f32 result,
/// nearest even), which is what a bf16 output buffer would contain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OutPrecision {
    #[default]
    F32,
    Bf16,
}

/// What happens to the product on its way to C (M,N): `C = round(prior + A @ B + bias)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// (N) added to every row, in f32 (the layer bias).
    pub bias: Option<&'a [f32]>,
    /// `prior` is C's current content (parameter gradients accumulate) instead of 0.
    pub accumulate: bool,
    pub precision: OutPrecision,
    /// Also return max |C| (after rounding; NaN if C holds a NaN): the amax for C's next scaling step.
    pub amax: bool,
}

/// Reusable f32 buffers for the dequantised operands of `gemm` (so a training step allocates once).
#[derive(Clone, Debug, Default)]
pub struct Fp8Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// Shapes agree and every view and `out` (M,N) row-major are in bounds; returns (M, K, N).
fn check_shapes(out: &[f32], a: &Fp8Mat, b: &Fp8Mat, ep: &Epilogue) -> (usize, usize, usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "fp8 gemm inner dimensions differ: A is (.., {k}), B ({}, ..)", b.rows);
    a.check("lhs");
    b.check("rhs");
    assert!(out.len() >= m * n, "fp8 gemm: out has {} elements, needs {m} x {n}", out.len());
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n, "fp8 gemm: bias has {} elements, needs {n}", bias.len());
    }
    (m, k, n)
}

/// The epilogue's last two steps on C (M*N elements): round to the output precision, then amax.
fn finish(out: &mut [f32], ep: &Epilogue) -> Option<f32> {
    if ep.precision == OutPrecision::Bf16 {
        out.par_chunks_mut(1 << 14).for_each(|c| {
            for v in c {
                *v = round_bf16(*v);
            }
        });
    }
    ep.amax.then(|| fp8::amax(out))
}

/// The spec: `out (M,N) = round(prior + A (M,K) @ B (K,N) + bias)`, each sum accumulated in f64 over
/// the dequantised operands and rounded once to f32 (then to bf16 if asked). Returns max |out| if
/// `ep.amax`. Panics on mismatched shapes or short buffers.
pub fn gemm_reference(out: &mut [f32], a: Fp8Mat, b: Fp8Mat, ep: Epilogue) -> Option<f32> {
    let (m, k, n) = check_shapes(out, &a, &b, &ep);
    let out = &mut out[..m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = if ep.accumulate { out[i * n + j] as f64 } else { 0.0 };
            acc += ep.bias.map_or(0.0, |bias| bias[j] as f64);
            for p in 0..k {
                acc += a.get(i, p) as f64 * b.get(p, j) as f64;
            }
            out[i * n + j] = acc as f32;
        }
    }
    finish(out, &ep)
}

/// Dequantise the bytes a view reads into `buf` and return the same view over f32.
fn dequantize_view<'s>(m: &Fp8Mat, buf: &'s mut Vec<f32>) -> Mat<'s> {
    let len = m.extent();
    buf.resize(len, 0.0);
    // fp8::dequantize is itself parallel above fp8::PARALLEL_THRESHOLD elements.
    fp8::dequantize(m.format, &m.bytes[..len], m.scale_inv, &mut buf[..len]);
    Mat { data: &buf[..len], rows: m.rows, cols: m.cols, rs: m.rs, cs: m.cs }
}

/// Fast version of `gemm_reference`: both operands dequantised (exactly, concurrently) into
/// `scratch`, then one f32 `sgemm`; bias added in f32 before the product is accumulated onto it.
/// Matches the reference at `Tolerance::F32`. Panics on mismatched shapes or short buffers.
pub fn gemm(out: &mut [f32], a: Fp8Mat, b: Fp8Mat, ep: Epilogue, scratch: &mut Fp8Scratch) -> Option<f32> {
    let (m, k, n) = check_shapes(out, &a, &b, &ep);
    let out = &mut out[..m * n];
    let Fp8Scratch { a: buf_a, b: buf_b } = scratch;
    let (mat_a, mat_b) = rayon::join(|| dequantize_view(&a, buf_a), || dequantize_view(&b, buf_b));
    if let (Some(bias), true) = (ep.bias, n > 0) {
        // C = prior + bias first (f32), then C += A @ B below.
        out.par_chunks_mut(n).for_each(|row| {
            for (c, &v) in row.iter_mut().zip(&bias[..n]) {
                *c = if ep.accumulate { *c + v } else { v };
            }
        });
    }
    let accumulate = ep.accumulate || ep.bias.is_some();
    sgemm(out, n, accumulate, mat_a, mat_b, 1.0, par_for(m, n, k));
    finish(out, &ep)
}
