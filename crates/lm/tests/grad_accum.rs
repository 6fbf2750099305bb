//! Gradient accumulation (`step::train_step_accum`): N micro-batches of B sequences give the update of
//! one batch of N*B sequences, for every architecture. At fp32 the accumulated gradient and the
//! updated weights equal the big batch's within fp32 summation tolerance (only the order of the sums
//! differs); at fp8-o2, where each layer's E4M3 gradient is decoded, added to and re-encoded, within
//! the E4M3 bound.

use octet_core::Rng;
use octet_core::scaling::Recipe;
use octet_core::tolerance::Tolerance;
use octet_lm::blocks::{BlockKind, BlocksConfig};
use octet_lm::gpt2::Gpt2Config;
use octet_lm::llama::LlamaConfig;
use octet_lm::model::{Buffers, LanguageModel};
use octet_lm::precision::Precision;
use octet_lm::spec::ModelSpec;
use octet_lm::step::{GradScaler, Optimizer, train_step, train_step_accum};
use octet_optim::AdamWConfig;

fn specs() -> Vec<ModelSpec> {
    vec![
        ModelSpec::Gpt2(Gpt2Config::tiny()),
        ModelSpec::Blocks(BlocksConfig::tiny(BlockKind::SasP)),
        ModelSpec::Llama(LlamaConfig::tiny()),
    ]
}

/// f32 weights and gradients of a model at any level (narrow: decoded).
fn weights_and_grads(m: &mut dyn LanguageModel) -> (Vec<f32>, Vec<f32>) {
    match m.buffers() {
        Buffers::Plain { params, grads } => (params.data.to_vec(), grads.data.to_vec()),
        Buffers::Narrow(nw) => (nw.weights.to_f32(), nw.grads.to_f32()),
    }
}

/// How the accumulated gradient is compared with the big batch's.
#[derive(Clone, Copy)]
enum GradCheck {
    /// Element by element.
    Elementwise(Tolerance),
    /// ||acc - big|| / ||big|| at most this (E4M3's per-tensor scaling makes small elements coarse,
    /// so an elementwise bound would have to be absolute in the tensor's amax).
    RelativeL2(f64),
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (d / n).sqrt()
}

/// One step on 4 micro-batches of B=2 vs one step on the batch of 8 they make; then two more steps.
fn compare(spec: ModelSpec, p: Precision, grad: GradCheck, tol_w: Tolerance) {
    let (n, b, t) = (4, 2, 8);
    let v = spec.dims().vocab_size;
    let mut rng = Rng::new(11);
    let r = Recipe::default();
    let mut big = spec.init(p, &r, 5).unwrap();
    let mut acc = spec.init(p, &r, 5).unwrap();
    let (mut ob, mut oa) = (
        Optimizer::for_model(big.as_ref(), AdamWConfig::default()),
        Optimizer::for_model(acc.as_ref(), AdamWConfig::default()),
    );
    let (mut sb, mut sa) = (GradScaler::default(), GradScaler::default());
    for step in 0..3 {
        let x: Vec<u32> = (0..n * b * t).map(|_| rng.below(v) as u32).collect();
        let y: Vec<u32> = (0..n * b * t).map(|_| rng.below(v) as u32).collect();
        let micro: Vec<(&[u32], &[u32])> =
            (0..n).map(|i| (&x[i * b * t..(i + 1) * b * t], &y[i * b * t..(i + 1) * b * t])).collect();
        // clip = 0: the gradients stay as backward left them, so they can be compared after the step.
        let lb = train_step(big.as_mut(), &mut ob, &mut sb, &x, &y, n * b, t, 0.0, 1e-3).unwrap();
        let la = train_step_accum(acc.as_mut(), &mut oa, &mut sa, &micro, b, t, 0.0, 1e-3).unwrap();
        // Step 0 runs on the same weights; at fp8-o2 later ones on weights within `tol_w` of each other,
        // which moves the loss by about that change times its gradient: within F16's bound.
        let tol_loss = if step == 0 || p == Precision::Fp32 { Tolerance::F32 } else { Tolerance::F16 };
        assert!(tol_loss.close(la.loss, lb.loss), "{spec:?} {p} step {step}: loss {} vs {}", la.loss, lb.loss);
        assert!(!la.skipped && !lb.skipped);
        let ((wb, gb), (wa, ga)) = (weights_and_grads(big.as_mut()), weights_and_grads(acc.as_mut()));
        if step == 0 {
            match grad {
                GradCheck::Elementwise(tol) => {
                    tol.check(&format!("{spec:?} {p} gradient"), &ga, &gb).unwrap_or_else(|e| panic!("{e}"))
                }
                GradCheck::RelativeL2(bound) => {
                    let e = rel_l2(&ga, &gb);
                    eprintln!("{spec:?} {p}: gradient relative L2 error {e:.4} (bound {bound})");
                    assert!(e <= bound, "{spec:?} {p}: gradient relative L2 error {e} > {bound}");
                }
            }
        }
        tol_w.check(&format!("{spec:?} {p} step {step} weights"), &wa, &wb).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn accumulated_micro_batches_equal_one_big_batch_at_fp32() {
    for spec in specs() {
        compare(spec, Precision::Fp32, GradCheck::Elementwise(Tolerance::F32), Tolerance::F32);
    }
}

#[test]
fn accumulated_micro_batches_match_one_big_batch_at_fp8_o2_within_e4m3() {
    // Each encode rounds to E4M3 (3 mantissa bits: relative error <= 2^-4 on normals). The
    // accumulated gradient is re-encoded after each of the N = 4 micro-batches, the big batch's once:
    // ||acc - big|| <= 2^-4 (sum_k ||S_k|| + ||G||) with S_k the partial sums, ~ 2^-4 (N + 1) ||G||
    // when the partial sums are about as large as the total (measured: ~0.03). AdamW moves a weight
    // by at most ~lr = 1e-3 per step in the direction of its gradient's sign, which the roundings can
    // flip for gradients near zero: after 3 steps two runs differ by at most 2 lr 3 = 6e-3.
    let w = Tolerance { atol: 6e-3, rtol: 0.0 };
    for spec in specs() {
        compare(spec, Precision::Fp8O2, GradCheck::RelativeL2(5.0 / 16.0), w);
    }
}
