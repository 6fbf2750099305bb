//! Every fast CPU kernel against its reference, on random data, at `Tolerance::F32` (the reference
//! accumulates in f64; see the preset for the bound's reason).

use octet_core::{Rng, Tolerance};
use octet_kernels::{cpu, reference};

fn randn(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

const TOL: Tolerance = Tolerance::F32;

#[test]
fn encoder_forward_and_backward_match_reference() {
    let (b, t, c, v) = (3, 5, 8, 11);
    let mut r = Rng::new(1);
    let tokens: Vec<u32> = (0..b * t).map(|_| r.below(v) as u32).collect();
    let (wte, wpe) = (randn(&mut r, v * c, 1.0), randn(&mut r, t * c, 1.0));
    let (mut o1, mut o2) = (vec![0.0; b * t * c], vec![0.0; b * t * c]);
    cpu::encoder_forward(&mut o1, &tokens, &wte, &wpe, b, t, c);
    reference::encoder_forward(&mut o2, &tokens, &wte, &wpe, b, t, c);
    TOL.assert_close("encoder out", &o1, &o2);
    let d = randn(&mut r, b * t * c, 1.0);
    let (mut a1, mut p1) = (vec![0.5; v * c], vec![0.5; t * c]);
    let (mut a2, mut p2) = (a1.clone(), p1.clone());
    cpu::encoder_backward(&mut a1, &mut p1, &d, &tokens, b, t, c);
    reference::encoder_backward(&mut a2, &mut p2, &d, &tokens, b, t, c);
    TOL.assert_close("dwte", &a1, &a2);
    TOL.assert_close("dwpe", &p1, &p2);
}

#[test]
fn layernorm_forward_and_backward_match_reference() {
    let (n, c) = (150, 48); // > ROWS_PER_PARTIAL rows so several partial sums are reduced
    let mut r = Rng::new(2);
    let x = randn(&mut r, n * c, 2.0);
    let w = randn(&mut r, c, 1.0);
    let bias = randn(&mut r, c, 1.0);
    let (mut o1, mut m1, mut s1) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    let (mut o2, mut m2, mut s2) = (o1.clone(), m1.clone(), s1.clone());
    cpu::layernorm_forward(&mut o1, &mut m1, &mut s1, &x, &w, &bias, n, c);
    reference::layernorm_forward(&mut o2, &mut m2, &mut s2, &x, &w, &bias, n, c);
    TOL.assert_close("ln out", &o1, &o2);
    TOL.assert_close("ln mean", &m1, &m2);
    TOL.assert_close("ln rstd", &s1, &s2);
    let d = randn(&mut r, n * c, 1.0);
    let init = randn(&mut r, n * c, 1.0);
    let (mut dx1, mut dw1, mut db1) = (init.clone(), vec![0.1; c], vec![0.2; c]);
    let (mut dx2, mut dw2, mut db2) = (init, dw1.clone(), db1.clone());
    cpu::layernorm_backward(&mut dx1, &mut dw1, &mut db1, &d, &x, &w, &m1, &s1, n, c);
    reference::layernorm_backward(&mut dx2, &mut dw2, &mut db2, &d, &x, &w, &m2, &s2, n, c);
    TOL.assert_close("ln dinp", &dx1, &dx2);
    TOL.assert_close("ln dw", &dw1, &dw2);
    TOL.assert_close("ln db", &db1, &db2);
}

#[test]
fn rmsnorm_forward_and_backward_match_reference() {
    let (n, c) = (130, 40);
    let mut r = Rng::new(3);
    let x = randn(&mut r, n * c, 2.0);
    let w = randn(&mut r, c, 1.0);
    let (mut o1, mut s1) = (vec![0.0; n * c], vec![0.0; n]);
    let (mut o2, mut s2) = (o1.clone(), s1.clone());
    cpu::rmsnorm_forward(&mut o1, &mut s1, &x, &w, n, c, 1e-6);
    reference::rmsnorm_forward(&mut o2, &mut s2, &x, &w, n, c, 1e-6);
    TOL.assert_close("rms out", &o1, &o2);
    let d = randn(&mut r, n * c, 1.0);
    let (mut dx1, mut dw1) = (vec![0.3; n * c], vec![0.1; c]);
    let (mut dx2, mut dw2) = (dx1.clone(), dw1.clone());
    cpu::rmsnorm_backward(&mut dx1, &mut dw1, &d, &x, &w, &s1, n, c);
    reference::rmsnorm_backward(&mut dx2, &mut dw2, &d, &x, &w, &s2, n, c);
    TOL.assert_close("rms dinp", &dx1, &dx2);
    TOL.assert_close("rms dw", &dw1, &dw2);
}

#[test]
fn matmul_forward_and_backward_match_reference_with_and_without_bias() {
    for (n, ic, oc, with_bias) in [(7, 5, 3, true), (200, 96, 130, true), (64, 33, 17, false)] {
        let mut r = Rng::new(4);
        let x = randn(&mut r, n * ic, 1.0);
        let w = randn(&mut r, oc * ic, 0.5);
        let bias = randn(&mut r, oc, 1.0);
        let bo = with_bias.then_some(&bias[..]);
        let (mut o1, mut o2) = (vec![0.0; n * oc], vec![0.0; n * oc]);
        cpu::matmul_forward(&mut o1, &x, &w, bo, n, ic, oc);
        reference::matmul_forward(&mut o2, &x, &w, bo, n, ic, oc);
        TOL.assert_close("matmul out", &o1, &o2);
        let d = randn(&mut r, n * oc, 1.0);
        let (mut dx1, mut dw1, mut db1) = (vec![9.0; n * ic], vec![0.1; oc * ic], vec![0.2; oc]);
        let (mut dx2, mut dw2, mut db2) = (dx1.clone(), dw1.clone(), db1.clone());
        cpu::matmul_backward(&mut dx1, &mut dw1, with_bias.then_some(&mut db1[..]), &d, &x, &w, n, ic, oc);
        reference::matmul_backward(&mut dx2, &mut dw2, with_bias.then_some(&mut db2[..]), &d, &x, &w, n, ic, oc);
        TOL.assert_close("matmul dinp", &dx1, &dx2);
        TOL.assert_close("matmul dw", &dw1, &dw2);
        TOL.assert_close("matmul db", &db1, &db2);
    }
}

#[test]
fn attention_forward_and_backward_match_reference() {
    let (b, t, c, nh) = (2, 13, 24, 3);
    let mut r = Rng::new(5);
    let qkv = randn(&mut r, b * t * 3 * c, 1.0);
    let (mut o1, mut l1) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    let (mut o2, mut l2) = (o1.clone(), l1.clone());
    cpu::attention_forward(&mut o1, &mut l1, &qkv, b, t, c, nh);
    reference::attention_forward(&mut o2, &mut l2, &qkv, b, t, c, nh);
    TOL.assert_close("att out", &o1, &o2);
    TOL.assert_close("att lse", &l1, &l2);
    let d = randn(&mut r, b * t * c, 1.0);
    let (mut g1, mut g2) = (vec![7.0; b * t * 3 * c], vec![7.0; b * t * 3 * c]);
    cpu::attention_backward(&mut g1, &d, &qkv, &o1, &l1, b, t, c, nh);
    reference::attention_backward(&mut g2, &d, &qkv, &o2, &l2, b, t, c, nh);
    TOL.assert_close("att dqkv", &g1, &g2);
}

#[test]
fn attention_is_causal() {
    // Changing a later token's k and v must not change earlier outputs.
    let (b, t, c, nh) = (1, 6, 8, 2);
    let mut r = Rng::new(6);
    let mut qkv = randn(&mut r, b * t * 3 * c, 1.0);
    let (mut o1, mut l) = (vec![0.0; t * c], vec![0.0; nh * t]);
    cpu::attention_forward(&mut o1, &mut l, &qkv, b, t, c, nh);
    for x in &mut qkv[(t - 1) * 3 * c + c..] {
        *x += 3.0;
    }
    let mut o2 = vec![0.0; t * c];
    cpu::attention_forward(&mut o2, &mut l, &qkv, b, t, c, nh);
    Tolerance::EXACT.assert_close("earlier rows", &o1[..(t - 1) * c], &o2[..(t - 1) * c]);
}

#[test]
fn activations_match_reference() {
    let mut r = Rng::new(7);
    let n = 40_000; // several parallel chunks
    let x = randn(&mut r, n, 3.0);
    let d = randn(&mut r, n, 1.0);
    let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
    cpu::gelu_forward(&mut a, &x);
    reference::gelu_forward(&mut b, &x);
    TOL.assert_close("gelu", &a, &b);
    cpu::gelu_backward(&mut a, &x, &d);
    reference::gelu_backward(&mut b, &x, &d);
    TOL.assert_close("gelu'", &a, &b);
    cpu::relu_forward(&mut a, &x);
    reference::relu_forward(&mut b, &x);
    Tolerance::EXACT.assert_close("relu", &a, &b);
    cpu::relu_backward(&mut a, &x, &d);
    reference::relu_backward(&mut b, &x, &d);
    Tolerance::EXACT.assert_close("relu'", &a, &b);
    let (rows, h) = (100, 200);
    let (mut s1, mut s2) = (vec![0.0; rows * h], vec![0.0; rows * h]);
    cpu::swiglu_forward(&mut s1, &x[..rows * 2 * h], rows, h);
    reference::swiglu_forward(&mut s2, &x[..rows * 2 * h], rows, h);
    TOL.assert_close("swiglu", &s1, &s2);
    let (mut g1, mut g2) = (vec![0.0; rows * 2 * h], vec![0.0; rows * 2 * h]);
    cpu::swiglu_backward(&mut g1, &x[..rows * 2 * h], &d[..rows * h], rows, h);
    reference::swiglu_backward(&mut g2, &x[..rows * 2 * h], &d[..rows * h], rows, h);
    TOL.assert_close("swiglu'", &g1, &g2);
    cpu::residual_forward(&mut a, &x, &d);
    reference::residual_forward(&mut b, &x, &d);
    Tolerance::EXACT.assert_close("residual", &a, &b);
}

#[test]
fn softmax_xent_matches_reference_and_ignores_padding() {
    let (n, v, vp) = (37, 50, 64);
    let mut r = Rng::new(8);
    let logits = randn(&mut r, n * vp, 4.0);
    let targets: Vec<u32> = (0..n).map(|_| r.below(v) as u32).collect();
    let (mut p1, mut p2) = (logits.clone(), logits.clone());
    let (mut l1, mut l2) = (vec![0.0; n], vec![0.0; n]);
    cpu::softmax_xent_forward(&mut l1, &mut p1, &targets, n, v, vp);
    reference::softmax_xent_forward(&mut l2, &mut p2, &targets, n, v, vp);
    TOL.assert_close("losses", &l1, &l2);
    TOL.assert_close("probs", &p1, &p2);
    assert!(p1.chunks(vp).all(|row| row[v..].iter().all(|&x| x == 0.0)));
    cpu::softmax_xent_backward(&mut p1, &targets, 1.0 / n as f64, n, v, vp);
    reference::softmax_xent_backward(&mut p2, &targets, 1.0 / n as f64, n, v, vp);
    TOL.assert_close("dlogits", &p1, &p2);
    // Each row of dlogits sums to zero: sum(p) - 1 = 0.
    for row in p1.chunks(vp) {
        assert!(row.iter().sum::<f32>().abs() < 1e-6);
    }
}

#[test]
fn fast_exp_and_tanh_are_accurate_over_their_range() {
    // exp: ~2 ulp relative (ulp = 6e-8) over the range softmax uses; tanh: ~1e-7 absolute.
    let mut worst_exp = 0.0f64;
    let mut worst_tanh = 0.0f64;
    for i in 0..=200_000 {
        let x = -80.0 + 100.0 * i as f64 / 200_000.0;
        let e = cpu::fast_exp(x as f32) as f64;
        worst_exp = worst_exp.max((e - (x as f32 as f64).exp()).abs() / (x as f32 as f64).exp());
        let u = -10.0 + 20.0 * i as f64 / 200_000.0;
        worst_tanh = worst_tanh.max((cpu::fast_tanh(u as f32) as f64 - (u as f32 as f64).tanh()).abs());
    }
    assert!(worst_exp < 3e-7, "exp relative error {worst_exp:e}");
    assert!(worst_tanh < 2e-7, "tanh absolute error {worst_tanh:e}");
}

#[test]
fn precision_casts_match_reference_exactly() {
    use octet_core::fp8::Fp8Format;
    let mut r = Rng::new(9);
    let n = 70_000;
    let mut x = randn(&mut r, n, 3.0);
    x[5] = 1e6; // saturates at every scale below
    let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
    cpu::round_bf16(&mut a, &x);
    reference::round_bf16(&mut b, &x);
    Tolerance::EXACT.assert_close("bf16", &a, &b);
    for (fmt, scale) in [(Fp8Format::E4M3, 32.0f32), (Fp8Format::E5M2, 0.5), (Fp8Format::E4M3, 1.0 / 1024.0)] {
        let am1 = cpu::qdq_fp8(&mut a, &x, fmt, scale);
        let am2 = reference::qdq_fp8(&mut b, &x, fmt, scale);
        Tolerance::EXACT.assert_close("qdq", &a, &b);
        assert_eq!(am1, am2);
        assert_eq!(am1, 1e6);
        assert!(a.iter().all(|v| v.is_finite()), "saturating casts never make inf");
    }
    // Every bf16 bit pattern (all exponents, subnormals, inf, NaN) at several scales: the arithmetic
    // grid rounding must agree bit for bit with encode + decode.
    let all: Vec<f32> = (0..=u16::MAX).map(|h| f32::from_bits((h as u32) << 16)).collect();
    let (mut a, mut b) = (vec![0.0f32; all.len()], vec![0.0f32; all.len()]);
    // bf16 rounding of f32 values with every bf16 prefix and assorted low halves (ties included).
    let wide: Vec<f32> = all
        .iter()
        .flat_map(|x| [0u32, 0x7FFF, 0x8000, 0x8001, 0xFFFF].map(|lo| f32::from_bits(x.to_bits() | lo)))
        .collect();
    let (mut wa, mut wb) = (vec![0.0f32; wide.len()], vec![0.0f32; wide.len()]);
    cpu::round_bf16(&mut wa, &wide);
    reference::round_bf16(&mut wb, &wide);
    for i in 0..wide.len() {
        assert!(wa[i].to_bits() == wb[i].to_bits() || (wa[i].is_nan() && wb[i].is_nan()), "bf16 {:e}", wide[i]);
    }
    for fmt in [Fp8Format::E4M3, Fp8Format::E5M2] {
        for scale in [1.0f32, 64.0, 1.0 / 256.0] {
            cpu::qdq_fp8(&mut a, &all, fmt, scale);
            reference::qdq_fp8(&mut b, &all, fmt, scale);
            for i in 0..all.len() {
                assert!(
                    a[i].to_bits() == b[i].to_bits() || (a[i].is_nan() && b[i].is_nan()),
                    "{fmt:?} x{scale}: {:e} -> {:e} vs {:e}",
                    all[i],
                    a[i],
                    b[i]
                );
            }
        }
    }
    assert_eq!(cpu::amax(&[1.0, -3.0, 2.0]), 3.0);
    assert!(reference::amax(&[1.0f32, f32::NAN]).is_nan());
    let (rows, oc) = (130, 9);
    let d = randn(&mut r, rows * oc, 1.0);
    let (mut g1, mut g2) = (vec![0.5f32; oc], vec![0.5f32; oc]);
    cpu::bias_backward(&mut g1, &d, rows, oc);
    reference::bias_backward(&mut g2, &d, rows, oc);
    TOL.assert_close("dbias", &g1, &g2);
}

#[test]
fn masked_softmax_xent_matches_reference_and_zeroes_ignored_rows() {
    use octet_kernels::IGNORE_TARGET;
    let (n, v, vp) = (29, 50, 64);
    let mut r = Rng::new(9);
    let logits = randn(&mut r, n * vp, 4.0);
    // Every third target ignored (the prompt tokens of a chat example).
    let targets: Vec<u32> = (0..n).map(|i| if i % 3 == 0 { IGNORE_TARGET } else { r.below(v) as u32 }).collect();
    let (mut p1, mut p2) = (logits.clone(), logits.clone());
    let (mut l1, mut l2) = (vec![0.0; n], vec![0.0; n]);
    cpu::softmax_xent_forward(&mut l1, &mut p1, &targets, n, v, vp);
    reference::softmax_xent_forward(&mut l2, &mut p2, &targets, n, v, vp);
    TOL.assert_close("losses", &l1, &l2);
    assert!((0..n).step_by(3).all(|i| l1[i] == 0.0));
    cpu::softmax_xent_backward(&mut p1, &targets, 0.1, n, v, vp);
    reference::softmax_xent_backward(&mut p2, &targets, 0.1, n, v, vp);
    TOL.assert_close("dlogits", &p1, &p2);
    assert!(p1.chunks(vp).step_by(3).all(|row| row.iter().all(|&x| x == 0.0)));
}
