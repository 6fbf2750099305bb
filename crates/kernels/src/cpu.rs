//! Fast f32 CPU kernels: `gemm` for every matrix product, rayon across rows, batches or chunks.
//! Each computes what the same-named function in `reference` specifies; reductions run over a fixed
//! partition in a fixed order, so results are deterministic whatever the thread count.

use octet_core::fp8::{self, Fp8Format};
use rayon::prelude::*;

use crate::backend::{Cast, GemmRole};
use crate::gemm::{Mat, Parallelism, par_for, sgemm};
use crate::{GELU_CUBIC, GELU_SCALE};

/// Elements per parallel chunk for elementwise kernels (large enough to amortise task overhead).
const CHUNK: usize = 1 << 14;
/// Rows per partial sum in parameter-gradient reductions (fixed, for determinism).
const ROWS_PER_PARTIAL: usize = 64;

pub fn encoder_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], b: usize, tt: usize, c: usize) {
    out[..b * tt * c].par_chunks_mut(c).enumerate().for_each(|(r, o)| {
        let tok = tokens[r] as usize;
        let (e, p) = (&wte[tok * c..][..c], &wpe[(r % tt) * c..][..c]);
        for i in 0..c {
            o[i] = e[i] + p[i];
        }
    });
}

pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    b: usize,
    tt: usize,
    c: usize,
) {
    // Scatter-add with repeated tokens: sequential to stay deterministic; O(B T C), negligible.
    for r in 0..b * tt {
        let tok = tokens[r] as usize;
        let d = &dout[r * c..][..c];
        for (w, &g) in dwte[tok * c..][..c].iter_mut().zip(d) {
            *w += g;
        }
        for (w, &g) in dwpe[(r % tt) * c..][..c].iter_mut().zip(d) {
            *w += g;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
) {
    out[..n * c]
        .par_chunks_mut(c)
        .zip(mean[..n].par_iter_mut().zip(rstd[..n].par_iter_mut()))
        .zip(inp.par_chunks(c))
        .for_each(|((o, (m, s)), x)| {
            let mu = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + 1e-5).sqrt();
            for i in 0..c {
                o[i] = (x[i] - mu) * rs * w[i] + bias[i];
            }
            *m = mu;
            *s = rs;
        });
}

/// Sum per-chunk partial vectors (computed in parallel) into `acc`, in chunk order.
fn reduce_partials(acc: &mut [f32], partials: Vec<Vec<f32>>) {
    for p in partials {
        for (a, v) in acc.iter_mut().zip(p) {
            *a += v;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let partials: Vec<Vec<f32>> = dinp[..n * c]
        .par_chunks_mut(ROWS_PER_PARTIAL * c)
        .enumerate()
        .map(|(ci, dchunk)| {
            let mut p = vec![0.0f32; 2 * c]; // [dw | db]
            for (k, dx) in dchunk.chunks_mut(c).enumerate() {
                let r = ci * ROWS_PER_PARTIAL + k;
                let (m, s) = (mean[r], rstd[r]);
                let x = &inp[r * c..][..c];
                let d = &dout[r * c..][..c];
                let (mut mg, mut mgx) = (0.0f32, 0.0f32);
                for i in 0..c {
                    let g = d[i] * w[i];
                    mg += g;
                    mgx += g * (x[i] - m) * s;
                }
                mg /= c as f32;
                mgx /= c as f32;
                for i in 0..c {
                    let xhat = (x[i] - m) * s;
                    p[i] += d[i] * xhat;
                    p[c + i] += d[i];
                    dx[i] += s * (d[i] * w[i] - mg - xhat * mgx);
                }
            }
            p
        })
        .collect();
    for p in partials {
        for i in 0..c {
            dw[i] += p[i];
            db[i] += p[c + i];
        }
    }
}

pub fn rmsnorm_forward(out: &mut [f32], rrms: &mut [f32], inp: &[f32], w: &[f32], n: usize, c: usize, eps: f64) {
    out[..n * c].par_chunks_mut(c).zip(rrms[..n].par_iter_mut()).zip(inp.par_chunks(c)).for_each(|((o, s), x)| {
        let ms = x.iter().map(|&v| v * v).sum::<f32>() / c as f32;
        let rs = (1.0 / (ms as f64 + eps).sqrt()) as f32;
        for i in 0..c {
            o[i] = x[i] * rs * w[i];
        }
        *s = rs;
    });
}

#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    rrms: &[f32],
    n: usize,
    c: usize,
) {
    let partials: Vec<Vec<f32>> = dinp[..n * c]
        .par_chunks_mut(ROWS_PER_PARTIAL * c)
        .enumerate()
        .map(|(ci, dchunk)| {
            let mut p = vec![0.0f32; c];
            for (k, dx) in dchunk.chunks_mut(c).enumerate() {
                let r = ci * ROWS_PER_PARTIAL + k;
                let s = rrms[r];
                let x = &inp[r * c..][..c];
                let d = &dout[r * c..][..c];
                let mgx = (0..c).map(|i| d[i] * w[i] * x[i] * s).sum::<f32>() / c as f32;
                for i in 0..c {
                    let xhat = x[i] * s;
                    p[i] += d[i] * xhat;
                    dx[i] += s * (d[i] * w[i] - xhat * mgx);
                }
            }
            p
        })
        .collect();
    reduce_partials(dw, partials);
}

pub fn matmul_forward(out: &mut [f32], inp: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, ic: usize, oc: usize) {
    let out = &mut out[..n * oc];
    if let Some(b) = bias {
        out.par_chunks_mut(oc).for_each(|row| row.copy_from_slice(&b[..oc]));
    }
    sgemm(out, oc, bias.is_some(), Mat::rm(inp, n, ic), Mat::rm_t(w, ic, oc), 1.0, par_for(n, oc, ic));
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) {
    // dinp (N,IC) = dout (N,OC) @ w (OC,IC)
    sgemm(&mut dinp[..n * ic], ic, false, Mat::rm(dout, n, oc), Mat::rm(w, oc, ic), 1.0, par_for(n, ic, oc));
    // dw (OC,IC) += dout^T (OC,N) @ inp (N,IC)
    sgemm(&mut dw[..oc * ic], ic, true, Mat::rm(dout, n, oc).t(), Mat::rm(inp, n, ic), 1.0, par_for(oc, ic, n));
    if let Some(db) = dbias {
        bias_backward(db, dout, n, oc);
    }
}

/// e^x for x in [-87, 88] without libm, branch-free so loops over it vectorise: x = n ln2 + r with
/// |r| <= ln2/2 (Cody–Waite split of ln2), e^r by its degree-6 Taylor polynomial (truncation
/// |r|^7/7! <= 0.347^7/5040 = 1.2e-7 relative), then 2^n through the exponent bits. Relative error
/// ~2 ulp; inputs below -87 give ~e^-87 rather than 0 (harmless next to any softmax maximum).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln 2 rounded to 16 significant bits: n * LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6; // ln 2 - LN2_HI
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// tanh(u) = sign(u) (1 - e^{-2|u|}) / (1 + e^{-2|u|}); absolute error ~1e-7 (relative error grows
/// only where tanh itself is ~1e-7, which GELU and its derivative multiply by u anyway).
#[inline(always)]
pub fn fast_tanh(u: f32) -> f32 {
    let t = fast_exp(-2.0 * u.abs());
    ((1.0 - t) / (1.0 + t)).copysign(u)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    let (s, k) = (GELU_SCALE as f32, GELU_CUBIC as f32);
    0.5 * x * (1.0 + fast_tanh(s * (x + k * x * x * x)))
}

#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let (s, k) = (GELU_SCALE as f32, GELU_CUBIC as f32);
    let th = fast_tanh(s * (x + k * x * x * x));
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * s * (1.0 + 3.0 * k * x * x)
}

/// Run an elementwise loop body compiled for AVX2 where the CPU has it (8-wide), else baseline
/// SSE2. No FMA contraction happens in either (Rust never fuses implicitly), so results are equal.
macro_rules! simd_dispatch {
    ($name:ident, ($($arg:ident: $ty:ty),*), $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

simd_dispatch!(gelu_chunk, (o: &mut [f32], x: &[f32]), {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = gelu(x);
    }
});

simd_dispatch!(gelu_grad_chunk, (dx: &mut [f32], x: &[f32], d: &[f32]), {
    for ((dx, &x), &d) in dx.iter_mut().zip(x).zip(d) {
        *dx = gelu_grad(x) * d;
    }
});

simd_dispatch!(exp_shift_sum, (row: &mut [f32], shift: f32), {
    // row <- exp(row - shift); returns nothing, the caller sums (keeps the sum order fixed).
    for e in row.iter_mut() {
        *e = fast_exp(*e - shift);
    }
});

pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| gelu_chunk(o, x));
}

pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(dx, (x, d))| gelu_grad_chunk(dx, x, d));
}

pub fn relu_forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x.max(0.0);
        }
    });
}

pub fn relu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK))).for_each(|(dx, (x, d))| {
        for i in 0..dx.len() {
            dx[i] = if x[i] > 0.0 { d[i] } else { 0.0 };
        }
    });
}

pub fn swiglu_forward(out: &mut [f32], inp: &[f32], n: usize, h: usize) {
    out[..n * h].par_chunks_mut(h).zip(inp.par_chunks(2 * h)).for_each(|(o, x)| {
        let (g, u) = x.split_at(h);
        for j in 0..h {
            o[j] = g[j] / (1.0 + (-g[j]).exp()) * u[j];
        }
    });
}

pub fn swiglu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32], n: usize, h: usize) {
    dinp[..n * 2 * h].par_chunks_mut(2 * h).zip(inp.par_chunks(2 * h).zip(dout.par_chunks(h))).for_each(
        |(dx, (x, d))| {
            let (g, u) = x.split_at(h);
            let (dg, du) = dx.split_at_mut(h);
            for j in 0..h {
                let sg = 1.0 / (1.0 + (-g[j]).exp());
                dg[j] = d[j] * u[j] * sg * (1.0 + g[j] * (1.0 - sg));
                du[j] = d[j] * g[j] * sg;
            }
        },
    );
}

pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
        for i in 0..o.len() {
            o[i] = a[i] + b[i];
        }
    });
}

/// Causal attention, one rayon task per batch row (each owns its rows of `out`); per head,
/// S = Q K^T / sqrt(hs) by gemm (full (T,T), the masked half is ignored), row softmax, O = P V.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], b: usize, tt: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    out[..b * tt * c].par_chunks_mut(tt * c).zip(lse[..b * nh * tt].par_chunks_mut(nh * tt)).enumerate().for_each(
        |(bi, (o, l))| {
            let x = &qkv[bi * tt * 3 * c..][..tt * 3 * c];
            let mut s = vec![0.0f32; tt * tt];
            for h in 0..nh {
                let q = Mat::strided(&x[h * hs..], tt, hs, 3 * c);
                let k = Mat::strided(&x[c + h * hs..], tt, hs, 3 * c);
                let v = Mat::strided(&x[2 * c + h * hs..], tt, hs, 3 * c);
                sgemm(&mut s, tt, false, q, k.t(), scale, Parallelism::None);
                for i in 0..tt {
                    let row = &mut s[i * tt..][..tt];
                    let mx = row[..=i].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    let mut z = 0.0f32;
                    exp_shift_sum(&mut row[..=i], mx);
                    for &e in row[..=i].iter() {
                        z += e;
                    }
                    let inv = 1.0 / z;
                    row[..=i].iter_mut().for_each(|e| *e *= inv);
                    row[i + 1..].fill(0.0);
                    l[h * tt + i] = mx + z.ln();
                }
                sgemm(&mut o[h * hs..], c, false, Mat::rm(&s, tt, tt), v, 1.0, Parallelism::None);
            }
        },
    );
}

/// Attention backward, one rayon task per batch row: rebuild P from lse, then
/// dV = P^T dO, dP = dO V^T, dS = P (dP - D), dQ = dS K / sqrt(hs), dK = dS^T Q / sqrt(hs).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    tt: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    dqkv[..b * tt * 3 * c].par_chunks_mut(tt * 3 * c).enumerate().for_each(|(bi, dx)| {
        let x = &qkv[bi * tt * 3 * c..][..tt * 3 * c];
        let dout = &dout[bi * tt * c..][..tt * c];
        let out = &out[bi * tt * c..][..tt * c];
        let lse = &lse[bi * nh * tt..][..nh * tt];
        let mut p = vec![0.0f32; tt * tt];
        let mut dp = vec![0.0f32; tt * tt];
        for h in 0..nh {
            let q = Mat::strided(&x[h * hs..], tt, hs, 3 * c);
            let k = Mat::strided(&x[c + h * hs..], tt, hs, 3 * c);
            let v = Mat::strided(&x[2 * c + h * hs..], tt, hs, 3 * c);
            let d_o = Mat::strided(&dout[h * hs..], tt, hs, c);
            sgemm(&mut p, tt, false, q, k.t(), scale, Parallelism::None);
            for i in 0..tt {
                let l = lse[h * tt + i];
                let row = &mut p[i * tt..][..tt];
                exp_shift_sum(&mut row[..=i], l);
                row[i + 1..].fill(0.0);
            }
            sgemm(&mut dx[2 * c + h * hs..], 3 * c, false, Mat::rm(&p, tt, tt).t(), d_o, 1.0, Parallelism::None);
            sgemm(&mut dp, tt, false, d_o, v.t(), 1.0, Parallelism::None);
            for i in 0..tt {
                let dd: f32 = (0..hs).map(|d| dout[i * c + h * hs + d] * out[i * c + h * hs + d]).sum();
                let (pr, dr) = (&p[i * tt..][..=i], &mut dp[i * tt..][..tt]);
                for j in 0..=i {
                    dr[j] = pr[j] * (dr[j] - dd);
                }
                dr[i + 1..].fill(0.0);
            }
            sgemm(&mut dx[h * hs..], 3 * c, false, Mat::rm(&dp, tt, tt), k, scale, Parallelism::None);
            sgemm(&mut dx[c + h * hs..], 3 * c, false, Mat::rm(&dp, tt, tt).t(), q, scale, Parallelism::None);
        }
    });
}

pub fn softmax_xent_forward(losses: &mut [f32], logits: &mut [f32], targets: &[u32], n: usize, v: usize, vp: usize) {
    logits[..n * vp].par_chunks_mut(vp).zip(losses[..n].par_iter_mut()).zip(targets.par_iter()).for_each(
        |((row, loss), &tgt)| {
            let mx = row[..v].iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let mut z = 0.0f32;
            // Masked rows (IGNORE_TARGET) still become probabilities; their loss is 0.
            let lt = if tgt == crate::IGNORE_TARGET { f32::NAN } else { row[tgt as usize] };
            exp_shift_sum(&mut row[..v], mx);
            for &x in row[..v].iter() {
                z += x;
            }
            *loss = if tgt == crate::IGNORE_TARGET { 0.0 } else { mx + z.ln() - lt };
            let inv = 1.0 / z;
            row[..v].iter_mut().for_each(|x| *x *= inv);
            row[v..].fill(0.0);
        },
    );
}

pub fn softmax_xent_backward(probs: &mut [f32], targets: &[u32], dloss: f64, n: usize, v: usize, vp: usize) {
    let dl = dloss as f32;
    probs[..n * vp].par_chunks_mut(vp).zip(targets.par_iter()).for_each(|(row, &tgt)| {
        if tgt == crate::IGNORE_TARGET {
            row[..v].fill(0.0);
            return;
        }
        row[..v].iter_mut().for_each(|x| *x *= dl);
        row[tgt as usize] -= dl;
    });
}

pub fn bias_backward(dbias: &mut [f32], dout: &[f32], n: usize, oc: usize) {
    let partials: Vec<Vec<f32>> = dout[..n * oc]
        .par_chunks(ROWS_PER_PARTIAL * oc)
        .map(|chunk| {
            let mut p = vec![0.0f32; oc];
            for row in chunk.chunks(oc) {
                for (a, &v) in p.iter_mut().zip(row) {
                    *a += v;
                }
            }
            p
        })
        .collect();
    reduce_partials(dbias, partials);
}

pub fn amax(src: &[f32]) -> f32 {
    fp8::amax(src)
}

/// f32 -> bf16 -> f32, round to nearest even on the bit pattern (add 0x7FFF plus the kept lsb, clear
/// the low 16 bits); NaN passes through. Equal to `half::bf16::from_f32(x).to_f32()`, vectorisable.
#[inline(always)]
fn bf16_grid(x: f32) -> f32 {
    let b = x.to_bits();
    let r = f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000);
    if x.is_nan() { x } else { r }
}

simd_dispatch!(bf16_chunk, (d: &mut [f32], s: &[f32]), {
    for (d, &x) in d.iter_mut().zip(s) {
        *d = bf16_grid(x);
    }
});

pub fn round_bf16(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| bf16_chunk(d, s));
}

/// Round `v` to the FP8 grid of a format with `m` mantissa bits and minimum normal exponent `emin`,
/// ties to even, saturating at `max`, in f32 arithmetic (vectorisable; no table lookups):
/// - |v| >= 2^emin: round the f32 significand to m bits (add half-ulp-minus-one plus the kept lsb,
///   then clear the dropped bits: round-to-nearest-even on the bit pattern);
/// - |v| < 2^emin (FP8 subnormals, spacing 2^(emin-m)): add and subtract 1.5 * 2^(emin-m+23), which
///   makes the FPU's own round-to-nearest-even land on that spacing.
///
/// NaN stays NaN; inf and finite overflow become +-max. Equal to decode(encode(v, Saturate)).
#[inline(always)]
fn round_to_fp8_grid(v: f32, m: u32, emin: i32, max: f32) -> f32 {
    let shift = 23 - m;
    let bits = v.to_bits();
    let lsb = (bits >> shift) & 1;
    let normal = f32::from_bits(bits.wrapping_add((1 << (shift - 1)) - 1 + lsb) & !((1u32 << shift) - 1));
    let magic = f32::from_bits(((emin - m as i32 + 23 + 127) as u32) << 23) * 1.5;
    let sub = ((v.abs() + magic) - magic).copysign(v);
    let r = if v.abs() < f32::from_bits(((emin + 127) as u32) << 23) { sub } else { normal };
    let r = r.clamp(-max, max);
    if v.is_nan() { v } else { r }
}

simd_dispatch!(qdq_chunk, (d: &mut [f32], s: &[f32], m: u32, emin: i32, max: f32, scale: f32, inv: f32), {
    for (d, &x) in d.iter_mut().zip(s) {
        *d = round_to_fp8_grid(x * scale, m, emin, max) * inv;
    }
});

pub fn qdq_fp8(dst: &mut [f32], src: &[f32], format: Fp8Format, scale: f32) -> f32 {
    let inv = 1.0 / scale;
    let (m, emin, max) = (format.mantissa_bits(), 1 - format.bias(), format.max());
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| qdq_chunk(d, s, m, emin, max, scale, inv));
    fp8::amax(src)
}

/// `src` itself (`Cast::None`) or its cast into `q` (same length), and the FP8 cast's amax (else 0).
fn cast_operand<'s>(q: &'s mut [f32], src: &'s [f32], cast: Cast) -> (&'s [f32], f32) {
    match cast {
        Cast::None => (src, 0.0),
        Cast::Bf16 => {
            let q = &mut q[..src.len()];
            round_bf16(q, src);
            (q, 0.0)
        }
        Cast::Fp8 { format, scale } => {
            let q = &mut q[..src.len()];
            let amax = qdq_fp8(q, src, format, scale);
            (q, amax)
        }
    }
}

/// The GEMMs are exactly those of `matmul_forward` / `matmul_backward` (same sgemm calls), over the
/// cast operands: the precision levels' linear is bit-identical to casting, then those matmuls.
#[allow(clippy::too_many_arguments)]
pub fn linear_gemm(
    out: &mut [f32],
    qa: &mut [f32],
    qb: &mut [f32],
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    role: GemmRole,
    cast_a: Cast,
    cast_b: Cast,
    n: usize,
    ic: usize,
    oc: usize,
) -> [f32; 2] {
    assert!(bias.is_none() || role == GemmRole::Forward, "linear_gemm: bias only in the forward GEMM");
    let (la, lb, _) = role.sizes(n, ic, oc);
    let (a, amax_a) = cast_operand(qa, &a[..la], cast_a);
    let (b, amax_b) = cast_operand(qb, &b[..lb], cast_b);
    match role {
        GemmRole::Forward => matmul_forward(out, a, b, bias, n, ic, oc),
        // dX (N,IC) = dY (N,OC) @ W (OC,IC)
        GemmRole::DataGrad => {
            sgemm(&mut out[..n * ic], ic, false, Mat::rm(a, n, oc), Mat::rm(b, oc, ic), 1.0, par_for(n, ic, oc))
        }
        // dW (OC,IC) += dY^T (OC,N) @ X (N,IC)
        GemmRole::WeightGrad => {
            sgemm(&mut out[..oc * ic], ic, true, Mat::rm(a, n, oc).t(), Mat::rm(b, n, ic), 1.0, par_for(oc, ic, n))
        }
    }
    [amax_a, amax_b]
}

pub fn embed_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], n: usize, c: usize) {
    out[..n * c].par_chunks_mut(c).zip(tokens.par_iter()).for_each(|(o, &tok)| {
        o.copy_from_slice(&wte[tok as usize * c..][..c]);
    });
}

pub fn embed_backward(dwte: &mut [f32], dout: &[f32], tokens: &[u32], n: usize, c: usize) {
    // Scatter-add with repeated tokens: sequential to stay deterministic; O(N C), negligible.
    for r in 0..n {
        let tok = tokens[r] as usize;
        for (w, &g) in dwte[tok * c..][..c].iter_mut().zip(&dout[r * c..][..c]) {
            *w += g;
        }
    }
}

/// cos and sin of every (position pos0 + t, pair) angle, (T, hs/2) each: computed in f64, rounded once.
fn rope_table(tt: usize, pos0: usize, hs: usize, base: f64, sign: f64) -> (Vec<f32>, Vec<f32>) {
    let half = hs / 2;
    let (mut cos, mut sin) = (vec![0.0f32; tt * half], vec![0.0f32; tt * half]);
    for p in 0..tt {
        for i in 0..half {
            let (s, c) = (sign * crate::reference::rope_angle(pos0 + p, i, hs, base)).sin_cos();
            cos[p * half + i] = c as f32;
            sin[p * half + i] = s as f32;
        }
    }
    (cos, sin)
}

#[allow(clippy::too_many_arguments)]
fn rope_rotate(
    out: &mut [f32],
    inp: &[f32],
    b: usize,
    tt: usize,
    pos0: usize,
    w: usize,
    rot: usize,
    hs: usize,
    base: f64,
    sign: f64,
) {
    let half = hs / 2;
    let (cos, sin) = rope_table(tt, pos0, hs, base, sign);
    out[..b * tt * w].par_chunks_mut(w).zip(inp.par_chunks(w)).enumerate().for_each(|(r, (o, x))| {
        let p = r % tt;
        let (c, s) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for (oh, xh) in o[..rot].chunks_exact_mut(hs).zip(x[..rot].chunks_exact(hs)) {
            for i in 0..half {
                let (x0, x1) = (xh[2 * i], xh[2 * i + 1]);
                oh[2 * i] = x0 * c[i] - x1 * s[i];
                oh[2 * i + 1] = x0 * s[i] + x1 * c[i];
            }
        }
        o[rot..].copy_from_slice(&x[rot..]);
    });
}

#[allow(clippy::too_many_arguments)]
pub fn rope_forward(
    out: &mut [f32],
    inp: &[f32],
    b: usize,
    tt: usize,
    pos0: usize,
    w: usize,
    rot: usize,
    hs: usize,
    base: f64,
) {
    rope_rotate(out, inp, b, tt, pos0, w, rot, hs, base, 1.0);
}

#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    dinp: &mut [f32],
    dout: &[f32],
    b: usize,
    tt: usize,
    pos0: usize,
    w: usize,
    rot: usize,
    hs: usize,
    base: f64,
) {
    rope_rotate(dinp, dout, b, tt, pos0, w, rot, hs, base, -1.0);
}

pub fn repeat_kv_forward(out: &mut [f32], inp: &[f32], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    out[..n * 3 * c].par_chunks_mut(3 * c).zip(inp.par_chunks(c + 2 * kvd)).for_each(|(o, x)| {
        o[..c].copy_from_slice(&x[..c]);
        for part in 0..2 {
            let src = &x[c + part * kvd..][..kvd];
            for (h, oh) in o[(1 + part) * c..][..c].chunks_exact_mut(hs).enumerate() {
                oh.copy_from_slice(&src[(h / rep) * hs..][..hs]);
            }
        }
    });
}

pub fn repeat_kv_backward(dinp: &mut [f32], dout: &[f32], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    dinp[..n * (c + 2 * kvd)].par_chunks_mut(c + 2 * kvd).zip(dout.par_chunks(3 * c)).for_each(|(dx, d)| {
        dx[..c].copy_from_slice(&d[..c]);
        for part in 0..2 {
            let src = &d[(1 + part) * c..][..c];
            for (g, dg) in dx[c + part * kvd..][..kvd].chunks_exact_mut(hs).enumerate() {
                dg.copy_from_slice(&src[g * rep * hs..][..hs]);
                for j in 1..rep {
                    for (a, &v) in dg.iter_mut().zip(&src[(g * rep + j) * hs..][..hs]) {
                        *a += v;
                    }
                }
            }
        }
    });
}

pub fn repeat_k_forward(out: &mut [f32], inp: &[f32], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    out[..n * 2 * c].par_chunks_mut(2 * c).zip(inp.par_chunks(c + kvd)).for_each(|(o, x)| {
        o[..c].copy_from_slice(&x[..c]);
        for (h, oh) in o[c..].chunks_exact_mut(hs).enumerate() {
            oh.copy_from_slice(&x[c + (h / rep) * hs..][..hs]);
        }
    });
}

pub fn repeat_k_backward(dinp: &mut [f32], dout: &[f32], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    dinp[..n * (c + kvd)].par_chunks_mut(c + kvd).zip(dout.par_chunks(2 * c)).for_each(|(dx, d)| {
        dx[..c].copy_from_slice(&d[..c]);
        for (g, dg) in dx[c..].chunks_exact_mut(hs).enumerate() {
            dg.copy_from_slice(&d[c + g * rep * hs..][..hs]);
            for j in 1..rep {
                for (a, &v) in dg.iter_mut().zip(&d[c + (g * rep + j) * hs..][..hs]) {
                    *a += v;
                }
            }
        }
    });
}

/// One rayon task per (query row, head); scores, softmax and the weighted sum of values in f32.
#[allow(clippy::too_many_arguments)]
pub fn attention_kv_forward(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tq: usize,
    tk: usize,
    ldq: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
) {
    let (kvd, rep, scale) = (nkv * hs, nh / nkv, 1.0 / (hs as f32).sqrt());
    out[..tq * nh * hs].par_chunks_mut(hs).enumerate().for_each(|(idx, o)| {
        let (i, h) = (idx / nh, idx % nh);
        let (g, last) = (h / rep, tk - tq + i);
        let qh = &q[i * ldq + h * hs..][..hs];
        let mut s: Vec<f32> = (0..=last)
            .map(|j| qh.iter().zip(&k[j * kvd + g * hs..][..hs]).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let mx = s.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let mut z = 0.0f32;
        for x in s.iter_mut() {
            *x = (*x - mx).exp();
            z += *x;
        }
        o.fill(0.0);
        for (j, &p) in s.iter().enumerate() {
            let w = p / z;
            for (a, &x) in o.iter_mut().zip(&v[j * kvd + g * hs..][..hs]) {
                *a += w * x;
            }
        }
    });
}

/// Shaped attention, one rayon task per batch row (each owns its rows of `out`); per head,
/// S = Q K^T / sqrt(hs) by gemm, row softmax, then the row is rewritten in place into
/// A = beta P - gamma C + alpha I (the masked half zeroed), and O = A V by one gemm.
#[allow(clippy::too_many_arguments)]
pub fn shaped_attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qk: &[f32],
    v: &[f32],
    alpha: &[f32],
    beta: &[f32],
    gamma: &[f32],
    b: usize,
    tt: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    out[..b * tt * c].par_chunks_mut(tt * c).zip(lse[..b * nh * tt].par_chunks_mut(nh * tt)).enumerate().for_each(
        |(bi, (o, l))| {
            let x = &qk[bi * tt * 2 * c..][..tt * 2 * c];
            let vb = &v[bi * tt * c..][..tt * c];
            let mut s = vec![0.0f32; tt * tt];
            for h in 0..nh {
                let q = Mat::strided(&x[h * hs..], tt, hs, 2 * c);
                let k = Mat::strided(&x[c + h * hs..], tt, hs, 2 * c);
                let vh = Mat::strided(&vb[h * hs..], tt, hs, c);
                sgemm(&mut s, tt, false, q, k.t(), scale, Parallelism::None);
                for i in 0..tt {
                    let row = &mut s[i * tt..][..tt];
                    let mx = row[..=i].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    exp_shift_sum(&mut row[..=i], mx);
                    let z: f32 = row[..=i].iter().sum();
                    l[h * tt + i] = mx + z.ln();
                    let (bz, gc) = (beta[h] / z, gamma[h] / (i + 1) as f32);
                    row[..=i].iter_mut().for_each(|e| *e = *e * bz - gc);
                    row[i] += alpha[h];
                    row[i + 1..].fill(0.0);
                }
                sgemm(&mut o[h * hs..], c, false, Mat::rm(&s, tt, tt), vh, 1.0, Parallelism::None);
            }
        },
    );
}

/// Shaped attention backward, one rayon task per batch row: rebuild P from lse, G = dO V^T by gemm;
/// the gains' gradients are sums over G (diagonal, P-weighted, C-weighted); dS = beta P (G - rowsum(P G))
/// gives dQ = dS K / sqrt(hs) and dK = dS^T Q / sqrt(hs); P is rewritten into A for dV = A^T dO.
/// Per-row partial gain gradients (f64) are reduced in batch order, so results are deterministic.
#[allow(clippy::too_many_arguments)]
pub fn shaped_attention_backward(
    dqk: &mut [f32],
    dv: &mut [f32],
    dalpha: &mut [f32],
    dbeta: &mut [f32],
    dgamma: &mut [f32],
    dout: &[f32],
    qk: &[f32],
    v: &[f32],
    lse: &[f32],
    alpha: &[f32],
    beta: &[f32],
    gamma: &[f32],
    b: usize,
    tt: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let partials: Vec<Vec<f64>> = dqk[..b * tt * 2 * c]
        .par_chunks_mut(tt * 2 * c)
        .zip(dv[..b * tt * c].par_chunks_mut(tt * c))
        .enumerate()
        .map(|(bi, (dx, dvb))| {
            let x = &qk[bi * tt * 2 * c..][..tt * 2 * c];
            let vb = &v[bi * tt * c..][..tt * c];
            let dob = &dout[bi * tt * c..][..tt * c];
            let lse = &lse[bi * nh * tt..][..nh * tt];
            let mut p = vec![0.0f32; tt * tt];
            let mut g = vec![0.0f32; tt * tt];
            let mut part = vec![0.0f64; 3 * nh]; // [dalpha | dbeta | dgamma]
            for h in 0..nh {
                let q = Mat::strided(&x[h * hs..], tt, hs, 2 * c);
                let k = Mat::strided(&x[c + h * hs..], tt, hs, 2 * c);
                let vh = Mat::strided(&vb[h * hs..], tt, hs, c);
                let d_o = Mat::strided(&dob[h * hs..], tt, hs, c);
                sgemm(&mut p, tt, false, q, k.t(), scale, Parallelism::None);
                sgemm(&mut g, tt, false, d_o, vh.t(), 1.0, Parallelism::None);
                let (al, be, ga) = (alpha[h], beta[h], gamma[h]);
                let (mut da, mut db, mut dg) = (0.0f64, 0.0f64, 0.0f64);
                for i in 0..tt {
                    let (pr, gr) = (&mut p[i * tt..][..tt], &mut g[i * tt..][..tt]);
                    exp_shift_sum(&mut pr[..=i], lse[h * tt + i]);
                    let (mut pg, mut gs) = (0.0f32, 0.0f32);
                    for j in 0..=i {
                        pg += pr[j] * gr[j];
                        gs += gr[j];
                    }
                    let cw = 1.0 / (i + 1) as f32;
                    da += gr[i] as f64;
                    db += pg as f64;
                    dg -= (cw * gs) as f64;
                    let gc = ga * cw;
                    for j in 0..=i {
                        gr[j] = be * pr[j] * (gr[j] - pg);
                        pr[j] = be * pr[j] - gc;
                    }
                    pr[i] += al;
                    pr[i + 1..].fill(0.0);
                    gr[i + 1..].fill(0.0);
                }
                part[h] = da;
                part[nh + h] = db;
                part[2 * nh + h] = dg;
                sgemm(&mut dx[h * hs..], 2 * c, false, Mat::rm(&g, tt, tt), k, scale, Parallelism::None);
                sgemm(&mut dx[c + h * hs..], 2 * c, false, Mat::rm(&g, tt, tt).t(), q, scale, Parallelism::None);
                sgemm(&mut dvb[h * hs..], c, false, Mat::rm(&p, tt, tt).t(), d_o, 1.0, Parallelism::None);
            }
            part
        })
        .collect();
    for part in partials {
        for h in 0..nh {
            dalpha[h] += part[h] as f32;
            dbeta[h] += part[nh + h] as f32;
            dgamma[h] += part[2 * nh + h] as f32;
        }
    }
}

pub fn scale_forward(out: &mut [f32], inp: &[f32], g: &[f32]) {
    let g = g[0];
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = g * x;
        }
    });
}

/// Per-chunk partial dot products in f64, summed in chunk order (deterministic).
pub fn scale_backward(dinp: &mut [f32], dg: &mut [f32], dout: &[f32], inp: &[f32], g: &[f32]) {
    let gv = g[0];
    let partials: Vec<f64> = dinp
        .par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK).zip(inp.par_chunks(CHUNK)))
        .map(|(dx, (d, x))| {
            let mut acc = 0.0f64;
            for i in 0..dx.len() {
                acc += d[i] as f64 * x[i] as f64;
                dx[i] = gv * d[i];
            }
            acc
        })
        .collect();
    dg[0] += partials.iter().sum::<f64>() as f32;
}

pub fn scale_add_forward(out: &mut [f32], x: &[f32], y: &[f32], a: &[f32], b: &[f32]) {
    let (a, b) = (a[0], b[0]);
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))).for_each(|(o, (x, y))| {
        for i in 0..o.len() {
            o[i] = a * x[i] + b * y[i];
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn scale_add_backward(
    dx: &mut [f32],
    dy: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    x: &[f32],
    y: &[f32],
    a: &[f32],
    b: &[f32],
) {
    let (av, bv) = (a[0], b[0]);
    let partials: Vec<(f64, f64)> = dx
        .par_chunks_mut(CHUNK)
        .zip(dy.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK).zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))))
        .map(|((dx, dy), (d, (x, y)))| {
            let (mut sa, mut sb) = (0.0f64, 0.0f64);
            for i in 0..dx.len() {
                sa += d[i] as f64 * x[i] as f64;
                sb += d[i] as f64 * y[i] as f64;
                dx[i] = av * d[i];
                dy[i] = bv * d[i];
            }
            (sa, sb)
        })
        .collect();
    da[0] += partials.iter().map(|p| p.0).sum::<f64>() as f32;
    db[0] += partials.iter().map(|p| p.1).sum::<f64>() as f32;
}

pub fn accumulate(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(a, x)| {
        for (a, &v) in a.iter_mut().zip(x) {
            *a += v;
        }
    });
}

/// ||x||_2, summed in f64 over fixed chunks in order (deterministic for any thread count).
pub fn global_norm(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
    partials.iter().sum::<f64>().sqrt()
}

/// x *= s (the scaling step of `octet_optim::clip_global_norm`).
pub fn scale_in_place(x: &mut [f32], s: f32) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v *= s));
}

/// One AdamW step of one tensor in f32, in place, parallel over chunks (`reference::adamw_update`'s
/// formula; FP8-LM's AdamW, `octet_optim::fp8_adamw`, evaluates the same f32 expression in the same
/// order, so with f32 state it is bit-identical to this).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: u64,
    lr: f64,
    cfg: &crate::backend::AdamWConfig,
    decay: bool,
) {
    let wd = if decay { cfg.weight_decay as f32 } else { 0.0 };
    let (b1, b2, eps, lr) = (cfg.beta1 as f32, cfg.beta2 as f32, cfg.eps as f32, lr as f32);
    let (c1, c2) = ((1.0 - cfg.beta1.powi(t as i32)) as f32, (1.0 - cfg.beta2.powi(t as i32)) as f32);
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((p, (m, v)), g)| {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * ((m[i] / c1) / ((v[i] / c2).sqrt() + eps) + wd * p[i]);
            }
        });
}

/// x = 0.
pub fn zero(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
}
