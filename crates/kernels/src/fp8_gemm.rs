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
//! `Fp8Linear` runs those three GEMMs with the FP8-LM recipe's roles (PAPERS.md section 1): input and
//! weight E4M3 (window 16), output gradient E5M2 (window 16), weight gradient E4M3 (window 1), each
//! with its own `ScalingMeta`. Bias and its gradient stay f32. Gradient convention (as in `cpu`): the
//! activation gradient dX is overwritten (`=`); the parameter gradients dW and dbias accumulate (`+=`).

use octet_core::dtype::round_bf16;
use octet_core::fp8::{self, Fp8Format};
use octet_core::scaling::{Fp8Tensor, Recipe, Role, ScalingMeta, ScalingMode};
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

/// A linear layer `Y (N,OC) = X (N,IC) @ W^T + bias` whose three GEMMs run in FP8 (FP8-LM "te"
/// level: the caller keeps f32 weights, bias and gradients; the layer casts X and W in forward and dY
/// in backward, each role with its own scaling state). The FP8 copies of X and W made by `forward`
/// (with the scale_inv they were cast with) are what `backward` multiplies, as on a GPU.
#[derive(Clone, Debug)]
pub struct Fp8Linear {
    pub ic: usize,
    pub oc: usize,
    pub mode: ScalingMode,
    /// X (N,IC), cast in forward.
    pub input: ScalingMeta,
    /// W (OC,IC), cast in forward.
    pub weight: ScalingMeta,
    /// dY (N,OC), cast in backward.
    pub grad_output: ScalingMeta,
    /// dW (OC,IC), cast after the weight-gradient GEMM (FP8 gradient communication, O1+).
    pub weight_grad: ScalingMeta,
    /// Rows of the last forward, `None` before the first.
    n: Option<usize>,
    /// FP8 X (N,IC) and W (OC,IC) from the last forward, and the scale_inv each was cast with (the
    /// metas' own scale_inv may move on if forward runs again before backward).
    x_q: Vec<u8>,
    x_scale_inv: f32,
    w_q: Vec<u8>,
    w_scale_inv: f32,
    /// FP8 dY (N,OC) of the last backward and its N, `None` before the first.
    dy_q: Vec<u8>,
    dy_rows: Option<usize>,
    scratch: Fp8Scratch,
}

impl Fp8Linear {
    /// A layer with fresh scaling state for each role of `recipe` (scales 1, empty histories).
    pub fn new(recipe: &Recipe, ic: usize, oc: usize) -> Result<Self> {
        recipe.validate()?;
        Ok(Fp8Linear {
            ic,
            oc,
            mode: recipe.mode,
            input: recipe.meta(Role::Input),
            weight: recipe.meta(Role::Weight),
            grad_output: recipe.meta(Role::GradOutput),
            weight_grad: recipe.meta(Role::WeightGrad),
            n: None,
            x_q: Vec::new(),
            x_scale_inv: 1.0,
            w_q: Vec::new(),
            w_scale_inv: 1.0,
            dy_q: Vec::new(),
            dy_rows: None,
            scratch: Fp8Scratch::default(),
        })
    }

    /// out (N,OC) = fp8(inp) (N,IC) @ fp8(w)^T (IC,OC) + bias (OC); casts update the input and
    /// weight scaling states. Returns max |out| (the amax the next layer's input cast will see).
    pub fn forward(&mut self, out: &mut [f32], inp: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize) -> f32 {
        let (ic, oc) = (self.ic, self.oc);
        assert!(inp.len() >= n * ic, "Fp8Linear::forward: inp has {} elements, needs {n} x {ic}", inp.len());
        assert!(w.len() >= oc * ic, "Fp8Linear::forward: w has {} elements, needs {oc} x {ic}", w.len());
        self.x_q.resize(n * ic, 0);
        self.w_q.resize(oc * ic, 0);
        self.input.quantize(self.mode, &inp[..n * ic], &mut self.x_q);
        self.weight.quantize(self.mode, &w[..oc * ic], &mut self.w_q);
        self.x_scale_inv = self.input.scale_inv;
        self.w_scale_inv = self.weight.scale_inv;
        self.n = Some(n);
        let x = Fp8Mat::rm(&self.x_q, n, ic, self.input.format, self.x_scale_inv);
        let wt = Fp8Mat::rm(&self.w_q, oc, ic, self.weight.format, self.w_scale_inv).t();
        let ep = Epilogue { bias, amax: true, ..Epilogue::default() };
        gemm(out, x, wt, ep, &mut self.scratch).unwrap_or(0.0)
    }

    /// Backward of the last `forward` (N rows): casts dout (N,OC) with the output-gradient state, then
    /// - dinp (N,IC) = fp8(dout) @ fp8(w) (overwrite),
    /// - dw (OC,IC) += fp8(dout)^T @ fp8(inp),
    /// - dbias (OC) += column sums of dout, in f32 from the unquantised dout;
    ///
    /// and returns the accumulated dw cast to the weight-gradient format with its own scale (window
    /// 1 in the recipe: scaled from this dw's amax). Panics before any forward or on short buffers.
    pub fn backward(&mut self, dinp: &mut [f32], dw: &mut [f32], dbias: Option<&mut [f32]>, dout: &[f32]) -> Fp8Tensor {
        let n = self.n.expect("Fp8Linear::backward called before forward");
        let (ic, oc) = (self.ic, self.oc);
        assert!(dout.len() >= n * oc, "Fp8Linear::backward: dout has {} elements, needs {n} x {oc}", dout.len());
        assert!(dw.len() >= oc * ic, "Fp8Linear::backward: dw has {} elements, needs {oc} x {ic}", dw.len());
        let dout = &dout[..n * oc];
        self.dy_q.resize(n * oc, 0);
        self.grad_output.quantize(self.mode, dout, &mut self.dy_q);
        self.dy_rows = Some(n);
        let dy = Fp8Mat::rm(&self.dy_q, n, oc, self.grad_output.format, self.grad_output.scale_inv);
        let x = Fp8Mat::rm(&self.x_q, n, ic, self.input.format, self.x_scale_inv);
        let w = Fp8Mat::rm(&self.w_q, oc, ic, self.weight.format, self.w_scale_inv);
        // dX (N,IC) = dY (N,OC) @ W (OC,IC)
        gemm(dinp, dy, w, Epilogue::default(), &mut self.scratch);
        // dW (OC,IC) += dY^T (OC,N) @ X (N,IC)
        let acc = Epilogue { accumulate: true, ..Epilogue::default() };
        gemm(dw, dy.t(), x, acc, &mut self.scratch);
        if let Some(db) = dbias {
            // Each column summed over rows in f32, then added to dbias (OC).
            let mut sums = vec![0.0f32; oc];
            for row in dout.chunks(oc) {
                for (s, &v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
            for (d, s) in db[..oc].iter_mut().zip(sums) {
                *d += s;
            }
        }
        let dw = &dw[..oc * ic];
        let mut bytes = vec![0u8; oc * ic];
        self.weight_grad.quantize(self.mode, dw, &mut bytes);
        Fp8Tensor { bytes, shape: vec![oc, ic], meta: self.weight_grad.clone() }
    }

    /// The FP8 input (N,IC) the last forward cast, with its scale_inv.
    pub fn saved_input(&self) -> Option<Fp8Mat<'_>> {
        self.n.map(|n| Fp8Mat::rm(&self.x_q, n, self.ic, self.input.format, self.x_scale_inv))
    }

    /// The FP8 weight (OC,IC) the last forward cast, with its scale_inv.
    pub fn saved_weight(&self) -> Option<Fp8Mat<'_>> {
        self.n.map(|_| Fp8Mat::rm(&self.w_q, self.oc, self.ic, self.weight.format, self.w_scale_inv))
    }

    /// The FP8 output gradient (N,OC) the last backward cast, with its scale_inv.
    pub fn saved_grad_output(&self) -> Option<Fp8Mat<'_>> {
        self.dy_rows.map(|n| Fp8Mat::rm(&self.dy_q, n, self.oc, self.grad_output.format, self.grad_output.scale_inv))
    }
}
