//! Graph-network kernels that the engine's kernel crate does not have: swish, the edge gather
//! (sender + receiver rows), segment sums over contiguous ranges and their adjoint broadcasts, and
//! the dense layer dispatch (`Num`: f32 -> `octet_kernels::cpu` gemm, f64 -> `octet_kernels::reference`).
//!
//! Each fast kernel is generic over `Num` (f32 for speed, f64 for finite differences), runs in
//! parallel over rows or segments with rayon, and has a `reference_*` twin: naive loops
//! accumulating in f64, the spec it is tested against (tests/gnn_kernels.rs).
//!
//! Argument order: outputs, saved values, inputs, dimensions. Every kernel here overwrites its
//! output (`=`); parameter-gradient accumulation (`+=`) happens only in `Num::matmul_backward`.
//! Segments are given by offsets: segment s is rows `offsets[s]..offsets[s + 1]`.

use octet_core::Float;
use rayon::prelude::*;

/// Rows per rayon task for row-parallel kernels (enough work to amortise task overhead).
const MIN_ROWS: usize = 64;

/// A float the models run in: dense layers dispatch to the fast f32 gemm kernels or to the f64
/// reference loops.
pub trait Num: Float {
    /// out (N,OC) = inp (N,IC) @ w^T (w is (OC,IC)) + bias.
    fn matmul_forward(
        out: &mut [Self],
        inp: &[Self],
        w: &[Self],
        bias: Option<&[Self]>,
        n: usize,
        ic: usize,
        oc: usize,
    );
    /// dinp (N,IC) = dout @ w (overwrite); dw += dout^T @ inp; dbias += column sums of dout.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        dinp: &mut [Self],
        dw: &mut [Self],
        dbias: Option<&mut [Self]>,
        dout: &[Self],
        inp: &[Self],
        w: &[Self],
        n: usize,
        ic: usize,
        oc: usize,
    );
    /// The logistic function 1 / (1 + e^-x).
    fn sigmoid(self) -> Self;
}

impl Num for f32 {
    fn matmul_forward(out: &mut [f32], inp: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, ic: usize, oc: usize) {
        octet_kernels::cpu::matmul_forward(out, inp, w, bias, n, ic, oc);
    }
    fn matmul_backward(
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
        octet_kernels::cpu::matmul_backward(dinp, dw, dbias, dout, inp, w, n, ic, oc);
    }
    #[inline(always)]
    fn sigmoid(self) -> f32 {
        1.0 / (1.0 + octet_kernels::cpu::fast_exp(-self))
    }
}

impl Num for f64 {
    fn matmul_forward(out: &mut [f64], inp: &[f64], w: &[f64], bias: Option<&[f64]>, n: usize, ic: usize, oc: usize) {
        octet_kernels::reference::matmul_forward(out, inp, w, bias, n, ic, oc);
    }
    fn matmul_backward(
        dinp: &mut [f64],
        dw: &mut [f64],
        dbias: Option<&mut [f64]>,
        dout: &[f64],
        inp: &[f64],
        w: &[f64],
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        octet_kernels::reference::matmul_backward(dinp, dw, dbias, dout, inp, w, n, ic, oc);
    }
    #[inline(always)]
    fn sigmoid(self) -> f64 {
        1.0 / (1.0 + (-self).exp())
    }
}

/// swish(x) = x sigmoid(x) (SiLU), elementwise.
pub fn swish_forward<T: Num>(out: &mut [T], inp: &[T]) {
    out.par_chunks_mut(1 << 14).zip(inp.par_chunks(1 << 14)).for_each(|(o, i)| {
        for (o, &x) in o.iter_mut().zip(i) {
            *o = x * x.sigmoid();
        }
    });
}

/// dinp = dout * swish'(inp), swish'(x) = s (1 + x (1 - s)) with s = sigmoid(x).
pub fn swish_backward<T: Num>(dinp: &mut [T], inp: &[T], dout: &[T]) {
    dinp.par_chunks_mut(1 << 14).zip(inp.par_chunks(1 << 14).zip(dout.par_chunks(1 << 14))).for_each(|(di, (i, d))| {
        for ((di, &x), &g) in di.iter_mut().zip(i).zip(d) {
            let s = x.sigmoid();
            *di = g * s * (T::one() + x * (T::one() - s));
        }
    });
}

pub fn reference_swish_forward<T: Num>(out: &mut [T], inp: &[T]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        let x: f64 = x.into();
        *o = T::from_f64(x / (1.0 + (-x).exp()));
    }
}

pub fn reference_swish_backward<T: Num>(dinp: &mut [T], inp: &[T], dout: &[T]) {
    for ((di, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
        let (x, g): (f64, f64) = (x.into(), g.into());
        let s = 1.0 / (1.0 + (-x).exp());
        *di = T::from_f64(g * (s + x * s * (1.0 - s)));
    }
}

/// Edge pre-activation: pre[e] (E,D) = pq[a[e], ..D] + pq[b[e], D..] + fb[e], with pq (N, 2D)
/// holding the sender part in its first D columns and the receiver part in its last D.
pub fn edge_gather_forward<T: Num>(pre: &mut [T], pq: &[T], fb: &[T], a: &[u32], b: &[u32], d: usize) {
    pre.par_chunks_mut(d).zip(fb.par_chunks(d)).zip(a.par_iter().zip(b.par_iter())).with_min_len(MIN_ROWS).for_each(
        |((p, f), (&i, &j))| {
            let (pi, pj) = (&pq[i as usize * 2 * d..][..d], &pq[j as usize * 2 * d + d..][..d]);
            for k in 0..d {
                p[k] = pi[k] + pj[k] + f[k];
            }
        },
    );
}

/// Adjoint of `edge_gather_forward` for pq: dpq[n, ..D] = sum over edges e with a[e] = n of
/// dpre[e], dpq[n, D..] = sum over e with b[e] = n of dpre[e] (overwrite). Edges must be grouped by
/// `a` (`a_offsets`: node n owns edges `a_offsets[n]..a_offsets[n+1]`) and `reverse[e]` must be the
/// edge with a and b swapped, so the second sum is sum over e in segment n of dpre[reverse[e]]:
/// both sums run per node, in parallel, with no scatter.
pub fn edge_gather_backward<T: Num>(dpq: &mut [T], dpre: &[T], a_offsets: &[u32], reverse: &[u32], d: usize) {
    dpq.par_chunks_mut(2 * d).enumerate().with_min_len(MIN_ROWS / 8).for_each(|(n, row)| {
        row.fill(T::zero());
        let (ra, rb) = row.split_at_mut(d);
        for e in a_offsets[n] as usize..a_offsets[n + 1] as usize {
            let (x, y) = (&dpre[e * d..][..d], &dpre[reverse[e] as usize * d..][..d]);
            for k in 0..d {
                ra[k] = ra[k] + x[k];
                rb[k] = rb[k] + y[k];
            }
        }
    });
}

pub fn reference_edge_gather_forward<T: Num>(pre: &mut [T], pq: &[T], fb: &[T], a: &[u32], b: &[u32], d: usize) {
    for e in 0..a.len() {
        for k in 0..d {
            let v: f64 =
                pq[a[e] as usize * 2 * d + k].into() + pq[b[e] as usize * 2 * d + d + k].into() + fb[e * d + k].into();
            pre[e * d + k] = T::from_f64(v);
        }
    }
}

/// The spec of `edge_gather_backward` as a plain scatter (no grouping or reverse needed).
pub fn reference_edge_gather_backward<T: Num>(dpq: &mut [T], dpre: &[T], a: &[u32], b: &[u32], n: usize, d: usize) {
    let mut acc = vec![0.0f64; n * 2 * d];
    for e in 0..a.len() {
        for k in 0..d {
            let g: f64 = dpre[e * d + k].into();
            acc[a[e] as usize * 2 * d + k] += g;
            acc[b[e] as usize * 2 * d + d + k] += g;
        }
    }
    for (o, v) in dpq.iter_mut().zip(acc) {
        *o = T::from_f64(v);
    }
}

/// out[s] (S,D) = scale[s] * sum of inp rows in segment s (overwrite; an empty segment gives 0).
pub fn segment_sum<T: Num>(out: &mut [T], inp: &[T], offsets: &[u32], scale: &[T], d: usize) {
    out.par_chunks_mut(d).enumerate().with_min_len(MIN_ROWS / 8).for_each(|(s, o)| {
        o.fill(T::zero());
        for r in offsets[s] as usize..offsets[s + 1] as usize {
            for (o, &x) in o.iter_mut().zip(&inp[r * d..][..d]) {
                *o = *o + x;
            }
        }
        let c = scale[s];
        o.iter_mut().for_each(|o| *o = *o * c);
    });
}

/// The adjoint of `segment_sum`: out[r] (R,D) = scale[s] * inp[s] for every row r of segment s
/// (overwrite). Also the gather of per-graph values onto their nodes (scale 1).
pub fn segment_broadcast<T: Num>(out: &mut [T], inp: &[T], offsets: &[u32], scale: &[T], d: usize) {
    let segs = offsets.len() - 1;
    // Row -> segment, then rows in parallel.
    let mut seg_of = Vec::with_capacity(out.len() / d.max(1));
    for s in 0..segs {
        seg_of.extend(std::iter::repeat_n(s as u32, (offsets[s + 1] - offsets[s]) as usize));
    }
    out.par_chunks_mut(d).zip(seg_of.par_iter()).with_min_len(MIN_ROWS).for_each(|(o, &s)| {
        let c = scale[s as usize];
        for (o, &x) in o.iter_mut().zip(&inp[s as usize * d..][..d]) {
            *o = x * c;
        }
    });
}

pub fn reference_segment_sum<T: Num>(out: &mut [T], inp: &[T], offsets: &[u32], scale: &[T], d: usize) {
    for s in 0..offsets.len() - 1 {
        for k in 0..d {
            let mut acc = 0.0f64;
            for r in offsets[s] as usize..offsets[s + 1] as usize {
                acc += inp[r * d + k].into();
            }
            out[s * d + k] = T::from_f64(acc * scale[s].into());
        }
    }
}

pub fn reference_segment_broadcast<T: Num>(out: &mut [T], inp: &[T], offsets: &[u32], scale: &[T], d: usize) {
    for s in 0..offsets.len() - 1 {
        for r in offsets[s] as usize..offsets[s + 1] as usize {
            for k in 0..d {
                out[r * d + k] = T::from_f64(inp[s * d + k].into() * scale[s].into());
            }
        }
    }
}

/// Writes row blocks side by side: out (R, sum of widths) = [x_0 | x_1 | ...], each x_i (R, w_i).
pub fn concat_columns<T: Num>(out: &mut [T], parts: &[(&[T], usize)]) {
    let width: usize = parts.iter().map(|p| p.1).sum();
    out.par_chunks_mut(width).enumerate().with_min_len(MIN_ROWS).for_each(|(r, row)| {
        let mut c = 0;
        for &(x, w) in parts {
            row[c..c + w].copy_from_slice(&x[r * w..][..w]);
            c += w;
        }
    });
}

/// acc (R, w) += columns `col..col + w` of x (R, width).
pub fn add_columns<T: Num>(acc: &mut [T], x: &[T], col: usize, w: usize, width: usize) {
    acc.par_chunks_mut(w).enumerate().with_min_len(MIN_ROWS).for_each(|(r, a)| {
        for (a, &v) in a.iter_mut().zip(&x[r * width + col..][..w]) {
            *a = *a + v;
        }
    });
}

/// out (R, w) = columns `col..col + w` of x (R, width).
pub fn copy_columns<T: Num>(out: &mut [T], x: &[T], col: usize, w: usize, width: usize) {
    out.par_chunks_mut(w).enumerate().with_min_len(MIN_ROWS).for_each(|(r, o)| {
        o.copy_from_slice(&x[r * width + col..][..w]);
    });
}
