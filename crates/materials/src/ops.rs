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

use std::borrow::Cow;

use octet_core::Float;
use rayon::prelude::*;

/// Runs `f` compiled for AVX2 + FMA when the CPU has them (the workspace builds for baseline
/// x86-64, whose 4-wide SSE halves the throughput of the elementwise loops); `f` must be
/// `#[inline(always)]` so that its body is compiled inside the feature-enabled function.
#[inline(always)]
pub(crate) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `avx2` was compiled with (checked above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

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
    /// f32 data (graph features) in this type: borrowed for f32, converted for f64.
    fn from_f32_slice(x: &[f32]) -> Cow<'_, [Self]>;
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
        1.0 / (1.0 + exp_f32(-self))
    }
    fn from_f32_slice(x: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(x)
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
    fn from_f32_slice(x: &[f32]) -> Cow<'_, [f64]> {
        Cow::Owned(x.iter().map(|&v| v as f64).collect())
    }
}

/// e^x for f32 that vectorises (no libm call): x = n ln2 + r, n = round(x log2 e) by the
/// 1.5 * 2^23 magic-number trick (exact round-to-nearest for |n| < 2^22), e^r by its degree-6
/// Taylor polynomial (|r| <= ln2/2: truncation 1.2e-7 relative), 2^n through the exponent bits.
/// Inputs are clamped to [-87, 88], so the result is finite and positive (e^-87 ~ 1.6e-38 for
/// anything lower, which the sigmoid turns into 1 - 1.6e-38 = 1 exactly in f32).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Horner by fused multiply-adds: one instruction per degree under `with_simd` (AVX2 + FMA);
    // elsewhere `mul_add` is a correctly rounded libm call, slower but the same function.
    let p = r.mul_add(1.0 / 720.0, 1.0 / 120.0);
    let p = r.mul_add(p, 1.0 / 24.0);
    let p = r.mul_add(p, 1.0 / 6.0);
    let p = r.mul_add(p, 0.5);
    let p = r.mul_add(p, 1.0);
    let p = r.mul_add(p, 1.0);
    // t's bits are 0x4B40_0000 + n (two's complement n in the low mantissa bits): 2^n without a
    // float -> int conversion, so the loop stays in vector registers.
    p * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23)
}

/// swish(x) = x sigmoid(x) (SiLU), elementwise.
pub fn swish_forward<T: Num>(out: &mut [T], inp: &[T]) {
    out.par_chunks_mut(1 << 14).zip(inp.par_chunks(1 << 14)).for_each(|(o, i)| {
        with_simd(
            #[inline(always)]
            || {
                for (o, &x) in o.iter_mut().zip(i) {
                    *o = x * x.sigmoid();
                }
            },
        )
    });
}

/// dinp = dout * swish'(inp), swish'(x) = s (1 + x (1 - s)) with s = sigmoid(x).
pub fn swish_backward<T: Num>(dinp: &mut [T], inp: &[T], dout: &[T]) {
    dinp.par_chunks_mut(1 << 14).zip(inp.par_chunks(1 << 14).zip(dout.par_chunks(1 << 14))).for_each(|(di, (i, d))| {
        with_simd(
            #[inline(always)]
            || {
                for ((di, &x), &g) in di.iter_mut().zip(i).zip(d) {
                    let s = x.sigmoid();
                    *di = g * s * (T::one() + x * (T::one() - s));
                }
            },
        )
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

/// The per-edge term fb_e of the message pre-activation, in one of three forms.
#[derive(Clone, Copy, Debug)]
pub enum EdgeFeatures<'a, T> {
    /// One row per edge: fb (E, D).
    Rows(&'a [T]),
    /// A function of the edge length, tabulated at r_i = i h (`table` (R, D), R >= 2, `inv_h` = 1/h)
    /// and linearly interpolated: `fb_e = T[i] + (t - i) (T[i+1] - T[i])`, t = r_e / h,
    /// i = min(floor(t), R - 2). Lengths must lie in [0, (R - 1) h] (`gnn::BasisTable` checks).
    Table { table: &'a [T], inv_h: f64, distances: &'a [f32] },
    /// The same row (D) for every edge (composition graphs: the bias alone).
    Const(&'a [T]),
}

impl<T: Num> EdgeFeatures<'_, T> {
    /// fb_e written into `out` (D); the definition the fused kernel inlines.
    #[inline(always)]
    fn row_into(&self, out: &mut [T], e: usize) {
        match *self {
            EdgeFeatures::Rows(fb) => out.copy_from_slice(&fb[e * out.len()..][..out.len()]),
            EdgeFeatures::Const(c) => out.copy_from_slice(c),
            EdgeFeatures::Table { table, inv_h, distances } => {
                let d = out.len();
                let (i, a) = table_index::<T>(distances[e], inv_h, table.len() / d);
                let (t0, t1) = (&table[i * d..][..d], &table[(i + 1) * d..][..d]);
                for k in 0..d {
                    out[k] = t0[k] + a * (t1[k] - t0[k]);
                }
            }
        }
    }
}

/// Interval index and weight of length r in a table of `rows` rows at spacing 1/inv_h.
#[inline(always)]
fn table_index<T: Num>(r: f32, inv_h: f64, rows: usize) -> (usize, T) {
    let t = r as f64 * inv_h;
    let i = (t as usize).min(rows - 2);
    (i, T::from_f64(t - i as f64))
}

/// Every edge's fb row (E, D), from any form (tests and references).
pub fn expand_edge_features<T: Num>(out: &mut [T], f: &EdgeFeatures<'_, T>, d: usize) {
    for (e, row) in out.chunks_mut(d).enumerate() {
        f.row_into(row, e);
    }
}

/// Fused message step, per center node n (in parallel): pre_e = pq[n, ..D] + pq[nb_e, D..] +
/// fb_e for its edges e (fb_e from `fb`, see `EdgeFeatures`; pre written to `pre` when given:
/// training saves it), and `agg[n] = inv_adj * sum_e swish(pre_e)`. Equals `expand_edge_features`,
/// `edge_gather_forward`, `swish_forward` and `segment_sum` in turn (the test's reference) without
/// materialising the messages or, for a table, the fb rows.
#[allow(clippy::too_many_arguments)]
pub fn edge_message_forward<T: Num>(
    agg: &mut [T],
    pre: Option<&mut [T]>,
    pq: &[T],
    fb: EdgeFeatures<'_, T>,
    offsets: &[u32],
    neighbors: &[u32],
    inv_adj: T,
    d: usize,
) {
    let body = |n: usize, a: &mut [T], pre: Option<&mut [T]>| {
        with_simd(
            #[inline(always)]
            || message_node(n, a, pre, pq, &fb, offsets, neighbors, inv_adj, d),
        )
    };
    match pre {
        Some(pre) => {
            // Split `pre` into per-node edge ranges so each task owns its slice.
            let mut parts = Vec::with_capacity(offsets.len() - 1);
            let mut rest = pre;
            for n in 0..offsets.len() - 1 {
                let (head, tail) = rest.split_at_mut((offsets[n + 1] - offsets[n]) as usize * d);
                parts.push(head);
                rest = tail;
            }
            agg.par_chunks_mut(d)
                .zip(parts.into_par_iter())
                .enumerate()
                .with_min_len(MIN_ROWS / 8)
                .for_each(|(n, (a, p))| body(n, a, Some(p)));
        }
        None => agg.par_chunks_mut(d).enumerate().with_min_len(MIN_ROWS / 8).for_each(|(n, a)| body(n, a, None)),
    }
}

/// One center node of `edge_message_forward`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn message_node<T: Num>(
    n: usize,
    a: &mut [T],
    mut pre: Option<&mut [T]>,
    pq: &[T],
    fb: &EdgeFeatures<'_, T>,
    offsets: &[u32],
    neighbors: &[u32],
    inv_adj: T,
    d: usize,
) {
    let a = &mut a[..d];
    a.fill(T::zero());
    let (lo, hi) = (offsets[n] as usize, offsets[n + 1] as usize);
    let p = &pq[n * 2 * d..][..d];
    for e in lo..hi {
        let q = &pq[neighbors[e] as usize * 2 * d + d..][..d];
        let pr = pre.as_deref_mut().map(|pr| &mut pr[(e - lo) * d..][..d]);
        match *fb {
            EdgeFeatures::Rows(f) => {
                let f = &f[e * d..][..d];
                swish_sum(a, pr, |k| p[k] + q[k] + f[k]);
            }
            EdgeFeatures::Const(f) => swish_sum(a, pr, |k| p[k] + q[k] + f[k]),
            EdgeFeatures::Table { table, inv_h, distances } => {
                let (i, w) = table_index::<T>(distances[e], inv_h, table.len() / d);
                let (t0, t1) = (&table[i * d..][..d], &table[(i + 1) * d..][..d]);
                swish_sum(a, pr, |k| p[k] + q[k] + (t0[k] + w * (t1[k] - t0[k])));
            }
        }
    }
    a.iter_mut().for_each(|a| *a = *a * inv_adj);
}

/// a[k] += swish(x(k)) for k < a.len(), saving x(k) in `pre` when given.
#[inline(always)]
fn swish_sum<T: Num>(a: &mut [T], pre: Option<&mut [T]>, x: impl Fn(usize) -> T) {
    match pre {
        Some(pr) => {
            let pr = &mut pr[..a.len()];
            for k in 0..a.len() {
                let v = x(k);
                pr[k] = v;
                a[k] = a[k] + v * v.sigmoid();
            }
        }
        None => {
            for (k, a) in a.iter_mut().enumerate() {
                let v = x(k);
                *a = *a + v * v.sigmoid();
            }
        }
    }
}

/// Backward of the message step's swish and sum: dpre[e] = swish'(pre[e]) * inv_adj * dagg[center_e]
/// (overwrite), per center node in parallel.
pub fn edge_message_backward<T: Num>(dpre: &mut [T], pre: &[T], dagg: &[T], offsets: &[u32], inv_adj: T, d: usize) {
    let mut parts = Vec::with_capacity(offsets.len() - 1);
    let mut rest = dpre;
    for n in 0..offsets.len() - 1 {
        let (head, tail) = rest.split_at_mut((offsets[n + 1] - offsets[n]) as usize * d);
        parts.push(head);
        rest = tail;
    }
    parts.into_par_iter().enumerate().with_min_len(MIN_ROWS / 8).for_each(|(n, dp)| {
        let g = &dagg[n * d..][..d];
        let x = &pre[offsets[n] as usize * d..offsets[n + 1] as usize * d];
        with_simd(
            #[inline(always)]
            || {
                for (dp, x) in dp.chunks_mut(d).zip(x.chunks(d)) {
                    for k in 0..d {
                        let s = x[k].sigmoid();
                        dp[k] = g[k] * inv_adj * s * (T::one() + x[k] * (T::one() - s));
                    }
                }
            },
        )
    });
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
