//! The reference backward kernels against central finite differences of the reference forward
//! kernels, in f64: the spec is checked against itself before fast kernels are checked against it.
//! (GPT-2's own layers are also checked end to end in crates/lm/tests/gpt2_gradcheck.rs; this covers
//! the kernels GPT-2 does not use, RMSNorm, ReLU and SwiGLU, and each GPT-2 kernel in isolation.)

use octet_core::{Rng, Tolerance};
use octet_kernels::reference as r;

/// Central differences with h = 1e-6 err by O(h^2) ~ 1e-12 plus roundoff 1e-16/h ~ 1e-10.
const FD: Tolerance = Tolerance { atol: 1e-8, rtol: 1e-6 };

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// d/dx_i of L(x) = sum(w * f(x)) by central differences, for every i.
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

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (n, c) = (3, 7);
    let mut rng = Rng::new(1);
    let (x, w, d) = (randn(&mut rng, n * c), randn(&mut rng, c), randn(&mut rng, n * c));
    let fwd = |x: &[f64], w: &[f64]| {
        let (mut o, mut s) = (vec![0.0; n * c], vec![0.0; n]);
        r::rmsnorm_forward(&mut o, &mut s, x, w, n, c, 1e-6);
        (o, s)
    };
    let (_, s) = fwd(&x, &w);
    let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
    r::rmsnorm_backward(&mut dx, &mut dw, &d, &x, &w, &s, n, c);
    FD.assert_close("dx", &dx, &fd_grad(&x, &|x| dot(&fwd(x, &w).0, &d)));
    FD.assert_close("dw", &dw, &fd_grad(&w, &|w| dot(&fwd(&x, w).0, &d)));
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let (n, c) = (3, 6);
    let mut rng = Rng::new(2);
    let (x, w, b, d) = (randn(&mut rng, n * c), randn(&mut rng, c), randn(&mut rng, c), randn(&mut rng, n * c));
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
        let (mut o, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        r::layernorm_forward(&mut o, &mut m, &mut s, x, w, b, n, c);
        (o, m, s)
    };
    let (_, m, s) = fwd(&x, &w, &b);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    r::layernorm_backward(&mut dx, &mut dw, &mut db, &d, &x, &w, &m, &s, n, c);
    FD.assert_close("dx", &dx, &fd_grad(&x, &|x| dot(&fwd(x, &w, &b).0, &d)));
    FD.assert_close("dw", &dw, &fd_grad(&w, &|w| dot(&fwd(&x, w, &b).0, &d)));
    FD.assert_close("db", &db, &fd_grad(&b, &|b| dot(&fwd(&x, &w, b).0, &d)));
}

#[test]
fn swiglu_relu_gelu_backward_match_finite_differences() {
    let (n, h) = (4, 5);
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, n * 2 * h);
    let d = randn(&mut rng, n * h);
    let mut dx = vec![0.0; n * 2 * h];
    r::swiglu_backward(&mut dx, &x, &d, n, h);
    let f = |x: &[f64]| {
        let mut o = vec![0.0; n * h];
        r::swiglu_forward(&mut o, x, n, h);
        dot(&o, &d)
    };
    FD.assert_close("swiglu dx", &dx, &fd_grad(&x, &f));
    // ReLU and GELU: elementwise, away from ReLU's kink.
    let x: Vec<f64> = randn(&mut rng, 50).into_iter().map(|v| if v.abs() < 1e-3 { 0.5 } else { v }).collect();
    let d = randn(&mut rng, 50);
    let mut dx = vec![0.0; 50];
    r::relu_backward(&mut dx, &x, &d);
    let f = |x: &[f64]| {
        let mut o = vec![0.0; 50];
        r::relu_forward(&mut o, x);
        dot(&o, &d)
    };
    FD.assert_close("relu dx", &dx, &fd_grad(&x, &f));
    r::gelu_backward(&mut dx, &x, &d);
    let f = |x: &[f64]| {
        let mut o = vec![0.0; 50];
        r::gelu_forward(&mut o, x);
        dot(&o, &d)
    };
    FD.assert_close("gelu dx", &dx, &fd_grad(&x, &f));
}

#[test]
fn attention_backward_matches_finite_differences() {
    let (b, t, c, nh) = (2, 4, 6, 2);
    let mut rng = Rng::new(4);
    let qkv = randn(&mut rng, b * t * 3 * c);
    let d = randn(&mut rng, b * t * c);
    let fwd = |qkv: &[f64]| {
        let (mut o, mut l) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
        r::attention_forward(&mut o, &mut l, qkv, b, t, c, nh);
        (o, l)
    };
    let (o, l) = fwd(&qkv);
    let mut dqkv = vec![0.0; qkv.len()];
    r::attention_backward(&mut dqkv, &d, &qkv, &o, &l, b, t, c, nh);
    FD.assert_close("dqkv", &dqkv, &fd_grad(&qkv, &|q| dot(&fwd(q).0, &d)));
}

#[test]
fn matmul_and_softmax_xent_backward_match_finite_differences() {
    let (n, ic, oc) = (3, 4, 5);
    let mut rng = Rng::new(5);
    let (x, w, bias, d) =
        (randn(&mut rng, n * ic), randn(&mut rng, oc * ic), randn(&mut rng, oc), randn(&mut rng, n * oc));
    let fwd = |x: &[f64], w: &[f64], bias: &[f64]| {
        let mut o = vec![0.0; n * oc];
        r::matmul_forward(&mut o, x, w, Some(bias), n, ic, oc);
        dot(&o, &d)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
    r::matmul_backward(&mut dx, &mut dw, Some(&mut db), &d, &x, &w, n, ic, oc);
    FD.assert_close("dx", &dx, &fd_grad(&x, &|x| fwd(x, &w, &bias)));
    FD.assert_close("dw", &dw, &fd_grad(&w, &|w| fwd(&x, w, &bias)));
    FD.assert_close("db", &db, &fd_grad(&bias, &|b| fwd(&x, &w, b)));

    let (v, vp) = (5, 8);
    let logits = randn(&mut rng, n * vp);
    let targets = [0u32, 4, 2];
    let loss = |lg: &[f64]| {
        let (mut l, mut p) = (vec![0.0; n], lg.to_vec());
        r::softmax_xent_forward(&mut l, &mut p, &targets, n, v, vp);
        l.iter().sum::<f64>() / n as f64
    };
    let (mut l, mut p) = (vec![0.0; n], logits.clone());
    r::softmax_xent_forward(&mut l, &mut p, &targets, n, v, vp);
    r::softmax_xent_backward(&mut p, &targets, 1.0 / n as f64, n, v, vp);
    FD.assert_close("dlogits", &p, &fd_grad(&logits, &loss));
}

/// Masked cross-entropy: rows with target IGNORE_TARGET take no part. The loss over the kept rows,
/// sum(losses) / K, has central-difference gradients equal to backward's with dloss = 1/K, and the
/// ignored rows' dlogits are exactly 0.
#[test]
fn masked_softmax_xent_backward_matches_finite_differences() {
    use octet_kernels::IGNORE_TARGET;
    let (n, v, vp) = (5, 6, 8);
    let mut rng = Rng::new(11);
    let logits = randn(&mut rng, n * vp);
    let targets = [3u32, IGNORE_TARGET, 0, IGNORE_TARGET, 5];
    let kept = targets.iter().filter(|&&x| x != IGNORE_TARGET).count() as f64;
    let loss = |lg: &[f64]| {
        let (mut l, mut p) = (vec![0.0; n], lg.to_vec());
        r::softmax_xent_forward(&mut l, &mut p, &targets, n, v, vp);
        l.iter().sum::<f64>() / kept
    };
    let (mut l, mut p) = (vec![0.0; n], logits.clone());
    r::softmax_xent_forward(&mut l, &mut p, &targets, n, v, vp);
    assert_eq!((l[1], l[3]), (0.0, 0.0), "ignored rows have loss 0");
    r::softmax_xent_backward(&mut p, &targets, 1.0 / kept, n, v, vp);
    FD.assert_close("dlogits", &p, &fd_grad(&logits, &loss));
    assert!(p[vp..2 * vp].iter().chain(&p[3 * vp..4 * vp]).all(|&g| g == 0.0));
}
