//! InfoNCE with in-batch negatives (ChipNeMo's retriever fine-tuning; e5/DPR style), forward and
//! backward side by side, with the f64 reference its test checks both against.
//!
//! Q (B, C) query embeddings, P (N, C) candidate passages, N >= B: rows 0..B of P are the positives of
//! queries 0..B (each query's positive is every other query's negative), rows B..N are extra negatives
//! (e.g. BM25 hard negatives). With temperature tau:
//! ```text
//! s_ij = q_i . p_j / tau          (B, N)
//! loss = mean_i [ logsumexp_j s_ij - s_ii ]
//! ds_ij = (softmax(s_i)_j - [i == j]) / B
//! dq_i = sum_j ds_ij p_j / tau;   dp_j = sum_i ds_ij q_i / tau
//! ```
//! Embeddings are unit vectors (the encoder's L2 normalisation is part of its backward), so s is a
//! cosine similarity scaled by 1/tau. Gradients overwrite.

use octet_core::Float;

#[inline]
fn f<F: Float>(x: F) -> f64 {
    x.into()
}

/// Loss (mean over queries); saves probs (B, N) = softmax of each query's scores.
#[allow(clippy::too_many_arguments)]
pub fn infonce_forward<F: Float>(probs: &mut [F], q: &[F], p: &[F], b: usize, n: usize, c: usize, tau: f64) -> f64 {
    assert!(n >= b, "every query needs its positive among the candidates");
    let mut loss = 0.0;
    let mut s = vec![0f64; n];
    for i in 0..b {
        let qi = &q[i * c..][..c];
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = qi.iter().zip(&p[j * c..][..c]).map(|(&a, &bb)| f(a) * f(bb)).sum::<f64>() / tau;
        }
        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
        loss += mx + z.ln() - s[i];
        for j in 0..n {
            probs[i * n + j] = F::from_f64((s[j] - mx).exp() / z);
        }
    }
    loss / b as f64
}

/// Backward of `infonce_forward` for d(loss) = 1: dq (B, C), dp (N, C), overwritten.
#[allow(clippy::too_many_arguments)]
pub fn infonce_backward<F: Float>(
    dq: &mut [F],
    dp: &mut [F],
    probs: &[F],
    q: &[F],
    p: &[F],
    b: usize,
    n: usize,
    c: usize,
    tau: f64,
) {
    let mut gq = vec![0f64; b * c];
    let mut gp = vec![0f64; n * c];
    for i in 0..b {
        for j in 0..n {
            let ds = (f(probs[i * n + j]) - (i == j) as u8 as f64) / b as f64 / tau;
            for k in 0..c {
                gq[i * c + k] += ds * f(p[j * c + k]);
                gp[j * c + k] += ds * f(q[i * c + k]);
            }
        }
    }
    for (d, v) in dq[..b * c].iter_mut().zip(gq) {
        *d = F::from_f64(v);
    }
    for (d, v) in dp[..n * c].iter_mut().zip(gp) {
        *d = F::from_f64(v);
    }
}

/// Reference InfoNCE loss in f64, straight from the formula (log of the softmax of the positive).
pub fn infonce_reference(q: &[f64], p: &[f64], b: usize, n: usize, c: usize, tau: f64) -> f64 {
    let dot = |i: usize, j: usize| (0..c).map(|k| q[i * c + k] * p[j * c + k]).sum::<f64>() / tau;
    -(0..b).map(|i| (dot(i, i).exp() / (0..n).map(|j| dot(i, j).exp()).sum::<f64>()).ln()).sum::<f64>() / b as f64
}
