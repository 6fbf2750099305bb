//! The encoder operations the kernel `Backend` lacks, forward and backward side by side, each with a
//! naive reference (`*_reference`, plain loops in f64) that is its spec and that the tests compare it
//! against: bidirectional attention with a key padding mask, exact (erf) GELU, LayerNorm with a
//! configurable epsilon (BERT: 1e-12; the backend's is fixed at 1e-5 — its backward is reused, since it
//! only needs the saved mean and rstd), and masked mean pooling followed by L2 normalisation.
//!
//! Argument order as the kernels: outputs, saved-for-backward, inputs, dimensions. Activation gradients
//! overwrite (`=`). The fast versions are generic over the element type and parallel over the batch with
//! rayon; attention forward computes in the element type (it is the hot op of inference), the others
//! accumulate in f64.
//! `mask` is (B, T) with 1 for a real token and 0 for padding.

use octet_core::{DType, Float};
use rayon::prelude::*;

#[inline]
fn f<F: Float>(x: F) -> f64 {
    x.into()
}

/// LayerNorm over the last dim with epsilon `eps`: out = (x - mean) * rstd * w + b, rstd =
/// 1/sqrt(var + eps), biased variance. Saves mean (N) and rstd (N) for `Backend::layernorm_backward`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_eps_forward<F: Float>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    w: &[F],
    bias: &[F],
    n: usize,
    c: usize,
    eps: f64,
) {
    out[..n * c]
        .par_chunks_mut(c)
        .zip(mean[..n].par_iter_mut().zip(rstd[..n].par_iter_mut()))
        .zip(inp[..n * c].par_chunks(c))
        .for_each(|((o, (m, s)), x)| {
            let mu = x.iter().map(|&v| f(v)).sum::<f64>() / c as f64;
            let var = x.iter().map(|&v| (f(v) - mu).powi(2)).sum::<f64>() / c as f64;
            let r = 1.0 / (var + eps).sqrt();
            for i in 0..c {
                o[i] = F::from_f64((f(x[i]) - mu) * r * f(w[i]) + f(bias[i]));
            }
            *m = F::from_f64(mu);
            *s = F::from_f64(r);
        });
}

/// 1/sqrt(2 pi), the normal density's constant.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Exact GELU: out = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (BERT's `gelu`, not the tanh approximation).
/// f32 uses the f32 erf (musl `erff`, < 1 ulp), wider types the f64 one.
pub fn gelu_erf_forward<F: Float>(out: &mut [F], inp: &[F]) {
    out.par_iter_mut().zip(inp.par_iter()).for_each(|(o, &x)| {
        *o = if F::DTYPE == DType::F32 {
            let x = x.to_f32();
            F::from_f32(0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)))
        } else {
            let x = f(x);
            F::from_f64(0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)))
        };
    });
}

/// dinp = dout * (Phi(x) + x phi(x)), phi the standard normal density (overwrite).
pub fn gelu_erf_backward<F: Float>(dinp: &mut [F], inp: &[F], dout: &[F]) {
    dinp.par_iter_mut().zip(inp.par_iter().zip(dout.par_iter())).for_each(|(d, (&x, &g))| {
        let x = f(x);
        let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
        *d = F::from_f64(f(g) * (cdf + x * pdf));
    });
}

/// Bidirectional multi-head attention with a key padding mask. qkv (B, T, 3C) holds [q | k | v], each
/// C = NH * hs with head h in columns h*hs..(h+1)*hs. For every query i (padding rows too; their
/// outputs are never pooled): s_ij = q_i.k_j / sqrt(hs) over keys j with mask[b, j] = 1,
/// p_i = softmax(s_i), out_i = sum_j p_ij v_j. Saves probs (B, NH, T, T) (masked keys: exactly 0).
///
/// Arithmetic in `F` (this is the hot op of inference): per (b, h), K is gathered transposed (hs, T)
/// and V as (T, hs), so both inner loops (over keys for the scores, over head dims for the output)
/// are elementwise and vectorise; sums run over at most T (scores: hs) terms.
#[allow(clippy::too_many_arguments)]
pub fn attention_masked_forward<F: Float>(
    out: &mut [F],
    probs: &mut [F],
    qkv: &[F],
    mask: &[u8],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    let zero = F::default();
    out[..b * t * c]
        .par_chunks_mut(t * c)
        .zip(probs[..b * nh * t * t].par_chunks_mut(nh * t * t))
        .enumerate()
        .for_each(|(bi, (o, p))| {
            let x = &qkv[bi * t * 3 * c..][..t * 3 * c];
            let m = &mask[bi * t..][..t];
            let keys: Vec<usize> = (0..t).filter(|&j| m[j] != 0).collect();
            let nk = keys.len();
            let (mut kt, mut v) = (vec![zero; hs * nk], vec![zero; nk * hs]);
            let mut s = vec![zero; nk];
            let mut acc = vec![zero; hs];
            for h in 0..nh {
                for (jj, &j) in keys.iter().enumerate() {
                    for e in 0..hs {
                        kt[e * nk + jj] = x[j * 3 * c + c + h * hs + e];
                        v[jj * hs + e] = x[j * 3 * c + 2 * c + h * hs + e];
                    }
                }
                for i in 0..t {
                    let q = &x[i * 3 * c + h * hs..][..hs];
                    s.iter_mut().for_each(|z| *z = zero);
                    for e in 0..hs {
                        let qe = q[e] * scale;
                        for (z, &k) in s.iter_mut().zip(&kt[e * nk..][..nk]) {
                            *z = *z + qe * k;
                        }
                    }
                    let mx = s.iter().fold(F::neg_infinity(), |a, &z| a.max(z));
                    let mut sum = zero;
                    for z in s.iter_mut() {
                        *z = (*z - mx).exp();
                        sum = sum + *z;
                    }
                    let inv = F::one() / sum;
                    acc.iter_mut().for_each(|a| *a = zero);
                    let prow = &mut p[(h * t + i) * t..][..t];
                    prow.iter_mut().for_each(|z| *z = zero);
                    for (jj, &j) in keys.iter().enumerate() {
                        let pj = s[jj] * inv;
                        prow[j] = pj;
                        for (a, &vv) in acc.iter_mut().zip(&v[jj * hs..][..hs]) {
                            *a = *a + pj * vv;
                        }
                    }
                    o[i * c + h * hs..][..hs].copy_from_slice(&acc);
                }
            }
        });
}

/// Backward of `attention_masked_forward` (dqkv overwrite). With dP_ij = dout_i.v_j:
/// dv_j = sum_i p_ij dout_i; ds_ij = p_ij (dP_ij - sum_k p_ik dP_ik); dq_i = scale sum_j ds_ij k_j;
/// dk_j = scale sum_i ds_ij q_i. Masked keys have p = 0, hence zero gradient.
#[allow(clippy::too_many_arguments)]
pub fn attention_masked_backward<F: Float>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    probs: &[F],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    dqkv[..b * t * 3 * c].par_chunks_mut(t * 3 * c).enumerate().for_each(|(bi, dx)| {
        let x = &qkv[bi * t * 3 * c..][..t * 3 * c];
        let g = &dout[bi * t * c..][..t * c];
        let p = &probs[bi * nh * t * t..][..nh * t * t];
        let mut acc = vec![0f64; t * 3 * c];
        let mut dp = vec![0f64; t];
        for h in 0..nh {
            for i in 0..t {
                let prow = &p[(h * t + i) * t..][..t];
                let gi = &g[i * c + h * hs..][..hs];
                let mut dot = 0.0;
                for j in 0..t {
                    let pj = f(prow[j]);
                    if pj == 0.0 {
                        dp[j] = 0.0;
                        continue;
                    }
                    let v = &x[j * 3 * c + 2 * c + h * hs..][..hs];
                    dp[j] = gi.iter().zip(v).map(|(&a, &vv)| f(a) * f(vv)).sum();
                    dot += pj * dp[j];
                    for (a, &gg) in acc[j * 3 * c + 2 * c + h * hs..][..hs].iter_mut().zip(gi) {
                        *a += pj * f(gg);
                    }
                }
                for j in 0..t {
                    let pj = f(prow[j]);
                    if pj == 0.0 {
                        continue;
                    }
                    let ds = pj * (dp[j] - dot) * scale;
                    for e in 0..hs {
                        let qe = f(x[i * 3 * c + h * hs + e]);
                        let ke = f(x[j * 3 * c + c + h * hs + e]);
                        acc[i * 3 * c + h * hs + e] += ds * ke;
                        acc[j * 3 * c + c + h * hs + e] += ds * qe;
                    }
                }
            }
        }
        for (d, a) in dx.iter_mut().zip(acc) {
            *d = F::from_f64(a);
        }
    });
}

/// Masked mean pooling then L2 normalisation: e_b = sum_t mask[b,t] h[b,t] / n_b (n_b = tokens of row
/// b), y_b = e_b / |e_b|. y (B, C); saves enorm (B) = |e_b|; h (B, T, C).
pub fn pool_forward<F: Float>(y: &mut [F], enorm: &mut [F], h: &[F], mask: &[u8], b: usize, t: usize, c: usize) {
    for bi in 0..b {
        let m = &mask[bi * t..][..t];
        let n = m.iter().filter(|&&v| v != 0).count().max(1) as f64;
        let mut e = vec![0f64; c];
        for (ti, _) in m.iter().enumerate().filter(|(_, v)| **v != 0) {
            e.iter_mut().zip(&h[(bi * t + ti) * c..][..c]).for_each(|(a, &x)| *a += f(x));
        }
        e.iter_mut().for_each(|a| *a /= n);
        let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        for (o, v) in y[bi * c..][..c].iter_mut().zip(&e) {
            *o = F::from_f64(v / norm);
        }
        enorm[bi] = F::from_f64(norm);
    }
}

/// Backward of `pool_forward` (dh overwrite): de = (dy - y (y.dy)) / |e|; dh[b,t] = mask[b,t] de / n_b.
#[allow(clippy::too_many_arguments)]
pub fn pool_backward<F: Float>(
    dh: &mut [F],
    dy: &[F],
    y: &[F],
    enorm: &[F],
    mask: &[u8],
    b: usize,
    t: usize,
    c: usize,
) {
    for bi in 0..b {
        let m = &mask[bi * t..][..t];
        let n = m.iter().filter(|&&v| v != 0).count().max(1) as f64;
        let (yb, gb) = (&y[bi * c..][..c], &dy[bi * c..][..c]);
        let yg: f64 = yb.iter().zip(gb).map(|(&a, &g)| f(a) * f(g)).sum();
        let de: Vec<f64> = yb.iter().zip(gb).map(|(&a, &g)| (f(g) - f(a) * yg) / f(enorm[bi]) / n).collect();
        for ti in 0..t {
            let row = &mut dh[(bi * t + ti) * c..][..c];
            for (d, &v) in row.iter_mut().zip(&de) {
                *d = F::from_f64(if m[ti] != 0 { v } else { 0.0 });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// References: the spec, straight from the formulas, in f64 (no parallelism, no skipped zeros).

/// Reference exact GELU and its derivative at x: (x Phi(x), Phi(x) + x phi(x)).
pub fn gelu_erf_reference(x: f64) -> (f64, f64) {
    let cdf = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
    (x * cdf, cdf + x * (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt())
}

/// Reference attention with a padding mask (same layout as `attention_masked_forward`): additive mask
/// of -1e30 on padded keys, softmax over the full row. Returns out (B, T, C).
pub fn attention_masked_reference(qkv: &[f64], mask: &[u8], b: usize, t: usize, c: usize, nh: usize) -> Vec<f64> {
    let hs = c / nh;
    let mut out = vec![0.0; b * t * c];
    for bi in 0..b {
        for h in 0..nh {
            let at = |ti: usize, part: usize, e: usize| qkv[(bi * t + ti) * 3 * c + part * c + h * hs + e];
            for i in 0..t {
                let s: Vec<f64> = (0..t)
                    .map(|j| {
                        let d: f64 = (0..hs).map(|e| at(i, 0, e) * at(j, 1, e)).sum();
                        d / (hs as f64).sqrt() + if mask[bi * t + j] == 0 { -1e30 } else { 0.0 }
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                for e in 0..hs {
                    out[(bi * t + i) * c + h * hs + e] = (0..t).map(|j| (s[j] - mx).exp() / z * at(j, 2, e)).sum();
                }
            }
        }
    }
    out
}

/// Reference masked mean pooling + L2 normalisation: y (B, C).
pub fn pool_reference(h: &[f64], mask: &[u8], b: usize, t: usize, c: usize) -> Vec<f64> {
    let mut y = vec![0.0; b * c];
    for bi in 0..b {
        let n: f64 = (0..t).map(|ti| mask[bi * t + ti] as f64).sum();
        let e: Vec<f64> = (0..c)
            .map(|k| (0..t).map(|ti| mask[bi * t + ti] as f64 * h[(bi * t + ti) * c + k]).sum::<f64>() / n)
            .collect();
        let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        for k in 0..c {
            y[bi * c + k] = e[k] / norm;
        }
    }
    y
}
