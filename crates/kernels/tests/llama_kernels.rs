//! The kernels Llama adds — token embedding without positions, RoPE (interleaved pairs), grouped-query
//! K/V repetition, attention against a key/value cache — checked three ways: reference backward against
//! central differences of the reference forward (f64), the fast CPU kernels against the reference
//! (`Tolerance::F32`), and closed-form properties (RoPE keeps norms and depends on relative positions
//! only; cached attention equals full causal attention on the same rows).

use octet_core::{Rng, Tolerance};
use octet_kernels::{cpu, reference as r};

/// Central differences with h = 1e-6 err by O(h^2) ~ 1e-12 plus roundoff 1e-16/h ~ 1e-10.
const FD: Tolerance = Tolerance { atol: 1e-8, rtol: 1e-6 };
const TOL: Tolerance = Tolerance::F32;

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

fn fd_grad(x: &[f64], f: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..x.len())
        .map(|i| {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            (f(&a) - f(&b)) / (2.0 * h)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// (B, T, W, rot, hs): two heads of 6 rotated plus 5 pass-through columns.
const ROPE: (usize, usize, usize, usize, usize) = (2, 5, 17, 12, 6);
const BASE: f64 = 100.0;

#[test]
fn rope_backward_matches_finite_differences() {
    let (b, t, w, rot, hs) = ROPE;
    let mut rng = Rng::new(1);
    let (x, d) = (randn(&mut rng, b * t * w), randn(&mut rng, b * t * w));
    let fwd = |x: &[f64]| {
        let mut o = vec![0.0; b * t * w];
        r::rope_forward(&mut o, x, b, t, 3, w, rot, hs, BASE);
        o
    };
    let mut dx = vec![f64::NAN; b * t * w]; // overwritten, never read
    r::rope_backward(&mut dx, &d, b, t, 3, w, rot, hs, BASE);
    FD.assert_close("rope dx", &dx, &fd_grad(&x, &|x| dot(&fwd(x), &d)));
}

#[test]
fn rope_rotates_interleaved_pairs_and_keeps_norms_and_relative_positions() {
    let (hs, base) = (8, 10_000.0);
    let mut rng = Rng::new(2);
    // Position 0 is the identity; pass-through columns are copied.
    let x = randn(&mut rng, 3 * (hs + 2));
    let mut o = vec![0.0; x.len()];
    r::rope_forward(&mut o, &x, 1, 3, 0, hs + 2, hs, hs, base);
    assert_eq!(&o[..hs + 2], &x[..hs + 2]);
    for p in 0..3 {
        assert_eq!(&o[p * (hs + 2) + hs..][..2], &x[p * (hs + 2) + hs..][..2]);
    }
    // Interleaved pairing: the unit vector e_0 at position 1 becomes (cos a, sin a, 0, ...) with a = 1.
    let mut e = vec![0.0; 2 * hs];
    e[hs] = 1.0;
    let mut o = vec![0.0; 2 * hs];
    r::rope_forward(&mut o, &e, 1, 2, 0, hs, hs, hs, base);
    let want = [1f64.cos(), 1f64.sin(), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    Tolerance { atol: 1e-15, rtol: 0.0 }.assert_close("e0 at pos 1", &o[hs..], &want);
    // <rope(q, m), rope(k, n)> depends on m - n only, and each row keeps its norm.
    let t = 7;
    let (q, k) = (randn(&mut rng, hs), randn(&mut rng, hs));
    let tile = |v: &[f64]| (0..t).flat_map(|_| v.to_vec()).collect::<Vec<_>>();
    let (mut rq, mut rk) = (vec![0.0; t * hs], vec![0.0; t * hs]);
    r::rope_forward(&mut rq, &tile(&q), 1, t, 0, hs, hs, hs, base);
    r::rope_forward(&mut rk, &tile(&k), 1, t, 0, hs, hs, hs, base);
    let row = |v: &[f64], p: usize| v[p * hs..][..hs].to_vec();
    let exact = Tolerance { atol: 1e-12, rtol: 1e-12 };
    for p in 0..t {
        exact.assert_close("norm", &[dot(&row(&rq, p), &row(&rq, p))], &[dot(&q, &q)]);
    }
    for (m, n, m2, n2) in [(3, 1, 6, 4), (5, 5, 0, 0), (2, 6, 0, 4)] {
        let a = dot(&row(&rq, m), &row(&rk, n));
        let b = dot(&row(&rq, m2), &row(&rk, n2));
        exact.assert_close("relative position", &[a], &[b]);
    }
    // Rows rotated from position pos0 continue the sequence: rows 4.. of the whole equal 3 rows at pos0 4.
    let mut tail = vec![0.0; 3 * hs];
    r::rope_forward(&mut tail, &tile(&q)[4 * hs..], 1, 3, 4, hs, hs, hs, base);
    Tolerance::EXACT.assert_close("pos0 continuation", &tail, &rq[4 * hs..]);
}

#[test]
fn rope_cpu_matches_reference() {
    let (b, t, w, rot, hs) = (3, 40, 3 * 64 + 32, 2 * 64 + 64, 64);
    let mut rng = Rng::new(3);
    // Activations of O(1) at positions up to 40 with base 1e5 (SmolLM2's).
    let x = f32s(&randn(&mut rng, b * t * w));
    let (mut o1, mut o2) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
    for pos0 in [0, 1000] {
        cpu::rope_forward(&mut o1, &x, b, t, pos0, w, rot, hs, 1e5);
        r::rope_forward(&mut o2, &x, b, t, pos0, w, rot, hs, 1e5);
        TOL.assert_close("rope out", &o1, &o2);
        cpu::rope_backward(&mut o1, &x, b, t, pos0, w, rot, hs, 1e5);
        r::rope_backward(&mut o2, &x, b, t, pos0, w, rot, hs, 1e5);
        TOL.assert_close("rope dinp", &o1, &o2);
    }
}

#[test]
fn repeat_kv_backward_matches_finite_differences() {
    let (n, nh, nkv, hs) = (3, 6, 2, 4);
    let (wi, wo) = ((nh + 2 * nkv) * hs, 3 * nh * hs);
    let mut rng = Rng::new(4);
    let (x, d) = (randn(&mut rng, n * wi), randn(&mut rng, n * wo));
    let fwd = |x: &[f64]| {
        let mut o = vec![0.0; n * wo];
        r::repeat_kv_forward(&mut o, x, n, nh, nkv, hs);
        o
    };
    let o = fwd(&x);
    // Query head 4 reads kv head 4 / 3 = 1 (K and V).
    assert_eq!(&o[nh * hs + 4 * hs..][..hs], &x[nh * hs + hs..][..hs]);
    assert_eq!(&o[2 * nh * hs + 4 * hs..][..hs], &x[(nh + nkv) * hs + hs..][..hs]);
    let mut dx = vec![f64::NAN; n * wi];
    r::repeat_kv_backward(&mut dx, &d, n, nh, nkv, hs);
    FD.assert_close("repeat_kv dx", &dx, &fd_grad(&x, &|x| dot(&fwd(x), &d)));
}

#[test]
fn repeat_k_backward_matches_finite_differences() {
    let (n, nh, nkv, hs) = (3, 6, 2, 4);
    let (wi, wo) = ((nh + nkv) * hs, 2 * nh * hs);
    let mut rng = Rng::new(14);
    let (x, d) = (randn(&mut rng, n * wi), randn(&mut rng, n * wo));
    let fwd = |x: &[f64]| {
        let mut o = vec![0.0; n * wo];
        r::repeat_k_forward(&mut o, x, n, nh, nkv, hs);
        o
    };
    let o = fwd(&x);
    // Query head 4 reads key head 4 / 3 = 1; q passes through.
    assert_eq!(&o[nh * hs + 4 * hs..][..hs], &x[nh * hs + hs..][..hs]);
    assert_eq!(&o[..nh * hs], &x[..nh * hs]);
    let mut dx = vec![f64::NAN; n * wi];
    r::repeat_k_backward(&mut dx, &d, n, nh, nkv, hs);
    FD.assert_close("repeat_k dx", &dx, &fd_grad(&x, &|x| dot(&fwd(x), &d)));
}

#[test]
fn repeat_k_cpu_matches_reference() {
    let (n, nh, nkv, hs) = (37, 9, 3, 64);
    let (wi, wo) = ((nh + nkv) * hs, 2 * nh * hs);
    let mut rng = Rng::new(15);
    let (x, d) = (f32s(&randn(&mut rng, n * wi)), f32s(&randn(&mut rng, n * wo)));
    let (mut o1, mut o2) = (vec![0.0f32; n * wo], vec![0.0f32; n * wo]);
    cpu::repeat_k_forward(&mut o1, &x, n, nh, nkv, hs);
    r::repeat_k_forward(&mut o2, &x, n, nh, nkv, hs);
    Tolerance::EXACT.assert_close("repeat_k out", &o1, &o2);
    let (mut d1, mut d2) = (vec![0.0f32; n * wi], vec![0.0f32; n * wi]);
    cpu::repeat_k_backward(&mut d1, &d, n, nh, nkv, hs);
    r::repeat_k_backward(&mut d2, &d, n, nh, nkv, hs);
    TOL.assert_close("repeat_k dinp", &d1, &d2);
}

#[test]
fn repeat_kv_cpu_matches_reference() {
    let (n, nh, nkv, hs) = (37, 9, 3, 64);
    let (wi, wo) = ((nh + 2 * nkv) * hs, 3 * nh * hs);
    let mut rng = Rng::new(5);
    let (x, d) = (f32s(&randn(&mut rng, n * wi)), f32s(&randn(&mut rng, n * wo)));
    let (mut o1, mut o2) = (vec![0.0f32; n * wo], vec![0.0f32; n * wo]);
    cpu::repeat_kv_forward(&mut o1, &x, n, nh, nkv, hs);
    r::repeat_kv_forward(&mut o2, &x, n, nh, nkv, hs);
    Tolerance::EXACT.assert_close("repeat_kv out", &o1, &o2);
    let (mut d1, mut d2) = (vec![0.0f32; n * wi], vec![0.0f32; n * wi]);
    cpu::repeat_kv_backward(&mut d1, &d, n, nh, nkv, hs);
    r::repeat_kv_backward(&mut d2, &d, n, nh, nkv, hs);
    TOL.assert_close("repeat_kv dinp", &d1, &d2);
}

#[test]
fn embed_matches_reference_and_finite_differences() {
    let (n, c, v) = (9, 5, 4); // repeated tokens exercise the scatter-add
    let mut rng = Rng::new(6);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
    let (wte, d) = (randn(&mut rng, v * c), randn(&mut rng, n * c));
    let fwd = |w: &[f64]| {
        let mut o = vec![0.0; n * c];
        r::embed_forward(&mut o, &tokens, w, n, c);
        o
    };
    let mut dw = vec![0.0; v * c];
    r::embed_backward(&mut dw, &d, &tokens, n, c);
    FD.assert_close("embed dwte", &dw, &fd_grad(&wte, &|w| dot(&fwd(w), &d)));
    let (w32, d32) = (f32s(&wte), f32s(&d));
    let (mut o1, mut o2) = (vec![0.0f32; n * c], vec![0.0f32; n * c]);
    cpu::embed_forward(&mut o1, &tokens, &w32, n, c);
    r::embed_forward(&mut o2, &tokens, &w32, n, c);
    Tolerance::EXACT.assert_close("embed out", &o1, &o2);
    let (mut g1, mut g2) = (vec![0.25f32; v * c], vec![0.25f32; v * c]);
    cpu::embed_backward(&mut g1, &d32, &tokens, n, c);
    r::embed_backward(&mut g2, &d32, &tokens, n, c);
    TOL.assert_close("embed dwte", &g1, &g2);
}

/// A random [q | k | v] sequence (T, (NH + 2 NKV) hs), its cached K and V (T, NKV hs) and the full causal
/// attention output (T, NH hs) computed by repeat_kv + attention_forward.
fn kv_case(t: usize, nh: usize, nkv: usize, hs: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (c, kvd) = (nh * hs, nkv * hs);
    let w = c + 2 * kvd;
    let mut rng = Rng::new(seed);
    let raw = randn(&mut rng, t * w);
    let k: Vec<f64> = (0..t).flat_map(|i| raw[i * w + c..][..kvd].to_vec()).collect();
    let v: Vec<f64> = (0..t).flat_map(|i| raw[i * w + c + kvd..][..kvd].to_vec()).collect();
    let mut qkv = vec![0.0; t * 3 * c];
    r::repeat_kv_forward(&mut qkv, &raw, t, nh, nkv, hs);
    let (mut full, mut lse) = (vec![0.0; t * c], vec![0.0; nh * t]);
    r::attention_forward(&mut full, &mut lse, &qkv, 1, t, c, nh);
    (raw, k, v, full)
}

#[test]
fn cached_attention_equals_full_causal_attention() {
    let (t, nh, nkv, hs) = (9, 6, 2, 4);
    let (c, w) = (nh * hs, (nh + 2 * nkv) * hs);
    let (raw, k, v, full) = kv_case(t, nh, nkv, hs, 7);
    // Prefill of all rows, a chunk of 3 at the end, and one decode step.
    for tq in [t, 3, 1] {
        let mut out = vec![0.0; tq * c];
        r::attention_kv_forward(&mut out, &raw[(t - tq) * w..], &k, &v, tq, t, w, nh, nkv, hs);
        Tolerance { atol: 1e-13, rtol: 1e-12 }.assert_close("cached attention", &out, &full[(t - tq) * c..]);
    }
}

#[test]
fn cached_attention_cpu_matches_reference() {
    let (t, nh, nkv, hs) = (40, 9, 3, 64);
    let (c, w) = (nh * hs, (nh + 2 * nkv) * hs);
    let (raw, k, v, _) = kv_case(t, nh, nkv, hs, 8);
    let (raw, k, v) = (f32s(&raw), f32s(&k), f32s(&v));
    for tq in [t, 1] {
        let (mut o1, mut o2) = (vec![0.0f32; tq * c], vec![0.0f32; tq * c]);
        cpu::attention_kv_forward(&mut o1, &raw[(t - tq) * w..], &k, &v, tq, t, w, nh, nkv, hs);
        r::attention_kv_forward(&mut o2, &raw[(t - tq) * w..], &k, &v, tq, t, w, nh, nkv, hs);
        TOL.assert_close("cached attention", &o1, &o2);
    }
}
