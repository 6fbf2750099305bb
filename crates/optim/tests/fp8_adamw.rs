//! FP8-LM AdamW (`Fp8AdamW`) against the f64 `adamw_reference`, over every pair of state formats
//! (MS-AMP `check_optimizer_step`): 20 steps from the same parameters and gradients, gradient
//! magnitudes spread over five orders of magnitude across tensors, like real layers. Run with
//! `--nocapture` for the error tables.
//!
//! Two bounds on the parameter error, both derived here and asserted per format pair:
//!
//! A worst case (`state_error_bound`), per element after T steps; the module doc's argument made
//! exact (b1 = 0.9, b2 = 0.95, rho = b1^2 / b2 < 1):
//! 1. Adam's ratio is bounded: by Cauchy-Schwarz, `|m_t| <= (1-b1) sqrt((1-rho^t)/(1-rho))
//!    sqrt(v_t/(1-b2))` =: `A_t sqrt(v_t)`, and with bias correction `|m^/sqrt(v^)| <= A_t sqrt(c2)/c1`.
//! 2. Storing m rounds it by at most `u_m |m|` (its format's unit roundoff, elements in the normal
//!    range). The error E_t of the m the update sees obeys `E_t = b1 (E_{t-1} + r_{t-1})`,
//!    `|r| <= u (|m| + |E|)`, so `|E_t| <= u sum_{k=1}^{t-1} b1^k (1+u)^(k-1) |m_{t-k}|`, and with
//!    `|m_s| <= A_s sqrt(v_s)`, `v_{t-k} <= v_t / b2^k`: `|E_t| / sqrt(v_t) <= u sum_k q^k (1+u)^(k-1)
//!    A_{t-k}`, q = b1 / sqrt(b2).
//! 3. Likewise for v: `|E^v_t| <= u_v v_t sum_{k=1}^{t-1} (1+u_v)^(k-1)` =: `e_t v_t` (b2^k v_{t-k}
//!    <= v_t). Dividing by `sqrt(v (1 - e))` instead of `sqrt(v)` changes the ratio by at most a
//!    factor `1/sqrt(1 - e_t)`, so no bound exists once `e_t >= 1`: v in E4M3 / E5M2 for 20 steps
//!    (e = 2.2 and 8.3), which is FP8-LM's "FP8 v diverges". Those pairs still run; their error is
//!    reported, and only finiteness (which the update guarantees) is asserted.
//! 4. The parameter error grows by at most `lr |ratio error|` per step (weight decay contracts it by
//!    `1 - lr wd`), plus f32 arithmetic (a few ulps of p and of the update per step).
//!
//! It assumes every roundoff aligned, so measured errors sit 5-20x below it. The tight one is a
//! linearised model (`linearised_sigma`): each stored rounding is an independent relative error of
//! rms 0.42 u, propagated to p_T through the reference trajectory's own m, v, so each element gets a
//! predicted standard deviation. Measured rms errors match it to 1% (O2) and within 20% for every
//! pair with a bound, and no element is more than ~5.4 predicted sigmas off (52k elements: a
//! Gaussian max is ~4.5); the test asserts ratio in [0.8, 1.25] ([0.9, 1.1] for O2) and z <= 7.
//!
//! A third problem (`embedding_problem`) spreads gradient scales over five decades *within* one
//! tensor, which is where FP8 second moments fail; its table shows why O2 pairs E4M3 m with F16 v.

use std::sync::Arc;
use std::time::Instant;

use octet_core::scaled::{BLOCK, ScaledBuf, StateFormat};
use octet_core::scaling::compute_scale;
use octet_core::{Layout, Rng, Tolerance};
use octet_kernels::cpu::adamw_update as adamw_fast;
use octet_optim::adamw::adamw_reference;
use octet_optim::{AdamW, AdamWConfig, Fp8AdamW, StateFormats};

const STEPS: usize = 20;
const LR: f64 = 1e-3;

/// A small model-like problem: tensors of awkward sizes (not multiples of the 128-element block or
/// the 2048-element work chunk), each with its own gradient magnitude and decay flag.
struct Problem {
    layout: Arc<Layout>,
    decay: Vec<bool>,
    p0: Vec<f32>,
    /// One gradient vector per step.
    grads: Vec<Vec<f32>>,
    cfg: AdamWConfig,
}

/// (name, shape, gradient std, weight decay?, initial parameter: Some(constant) or N(0, 0.02^2)).
type TensorCase = (&'static str, Vec<usize>, f64, bool, Option<f32>);

fn problem(steps: usize) -> Problem {
    let tensors: Vec<TensorCase> = vec![
        ("wte", vec![300, 64], 1e-4, true, None),
        ("w_fc", vec![64, 257], 1e-2, true, None),
        ("b_fc", vec![257], 1.0, false, Some(0.0)),
        ("ln_g", vec![64], 10.0, false, Some(1.0)),
        ("w_proj", vec![257, 64], 1e-3, true, None),
    ];
    let layout = Arc::new(Layout::new(tensors.iter().map(|t| (t.0, t.1.clone()))));
    let mut r = Rng::new(2024);
    let mut p0 = vec![0.0f32; layout.total()];
    for (spec, t) in layout.specs().iter().zip(&tensors) {
        for x in &mut p0[spec.range()] {
            *x = t.4.unwrap_or_else(|| (0.02 * r.normal()) as f32);
        }
    }
    let grads = (0..steps)
        .map(|_| {
            let mut g = vec![0.0f32; layout.total()];
            for (spec, t) in layout.specs().iter().zip(&tensors) {
                // Each step's gradient scale wanders by a log-normal factor around the tensor's own.
                let sigma = t.2 * (0.3 * r.normal()).exp();
                g[spec.range()].iter_mut().for_each(|x| *x = (sigma * r.normal()) as f32);
            }
            g
        })
        .collect();
    let decay = tensors.iter().map(|t| t.3).collect();
    Problem { layout, decay, p0, grads, cfg: AdamWConfig::default() }
}

/// What the f64 reference produces: final parameters and, for the linearised error model, the
/// moments after every step.
struct Reference {
    p: Vec<f64>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

fn reference(pb: &Problem) -> Reference {
    let n = pb.layout.total();
    let mut p: Vec<f64> = pb.p0.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let (mut ms, mut vs) = (Vec::new(), Vec::new());
    for (t, g) in pb.grads.iter().enumerate() {
        let t = t as u64 + 1;
        let g: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        for (spec, &decay) in pb.layout.specs().iter().zip(&pb.decay) {
            let r = spec.range();
            adamw_reference(&mut p[r.clone()], &g[r.clone()], &mut m[r.clone()], &mut v[r], t, LR, &pb.cfg, decay);
        }
        ms.push(m.clone());
        vs.push(v.clone());
    }
    Reference { p, m: ms, v: vs }
}

/// RMS relative error of one round-to-nearest with `u = 2^-p` when the significands are spread
/// log-uniformly over a binade (Benford, as for Gaussian data): the error is uniform in +-ulp/2 with
/// ulp = 2u * 2^e, so E[(err/x)^2] = (2u)^2 / 12 * E[1/s^2] over s log-uniform in [1, 2), and
/// E[1/s^2] = (1 - 1/4) / (2 ln 2): rms = u * sqrt(0.375 / (3 ln 2)) = 0.4247 u.
fn rounding_rms(u: f64) -> f64 {
    u * (0.375 / (3.0 * std::f64::consts::LN_2)).sqrt()
}

/// Linearised error model, per element: the standard deviation of p_T - p_ref_T if storing m and v
/// after each step s < T adds an independent relative error of rms `rounding_rms(u)`. A relative
/// error d in m_s reaches m_t (t > s) as b1^(t-s) d m_s and moves step t's update by that over
/// `c1_t (sqrt(v_t/c2_t) + eps)`; in v_s it reaches v_t as b2^(t-s) d v_s and moves the update by
/// `(m_t/c1_t) / (2 c2_t s_t (s_t + eps)^2)` per unit of v, s_t = sqrt(v_t/c2_t). Weight decay
/// (1 - lr wd = 1 - 1e-4 per step) is ignored. Second-order terms (a rounding of an already
/// perturbed value) are below u^2.
fn linearised_sigma(pb: &Problem, r: &Reference, u_m: f64, u_v: f64) -> Vec<f64> {
    let (b1, b2, eps) = (pb.cfg.beta1, pb.cfg.beta2, pb.cfg.eps);
    let steps = r.m.len();
    let c = |b: f64, t: usize| 1.0 - b.powi(t as i32 + 1); // t is 0-based here
    let (em, ev) = (rounding_rms(u_m), rounding_rms(u_v));
    (0..pb.layout.total())
        .map(|i| {
            let s: Vec<f64> = (0..steps).map(|t| (r.v[t][i] / c(b2, t)).sqrt()).collect();
            let dm: Vec<f64> = (0..steps).map(|t| 1.0 / (c(b1, t) * (s[t] + eps))).collect();
            let dv: Vec<f64> = (0..steps)
                .map(|t| {
                    let d = 2.0 * c(b2, t) * s[t] * (s[t] + eps).powi(2);
                    if d > 0.0 { (r.m[t][i] / c(b1, t)).abs() / d } else { 0.0 }
                })
                .collect();
            let mut var = 0.0;
            for k in 0..steps - 1 {
                let km: f64 = (k + 1..steps).map(|t| b1.powi((t - k) as i32) * dm[t]).sum();
                let kv: f64 = (k + 1..steps).map(|t| b2.powi((t - k) as i32) * dv[t]).sum();
                var += (em * r.m[k][i] * km).powi(2) + (ev * r.v[k][i] * kv).powi(2);
            }
            LR * var.sqrt()
        })
        .collect()
}

fn run_fp8(pb: &Problem, formats: StateFormats) -> (Vec<f32>, Fp8AdamW) {
    let mut opt = Fp8AdamW::new(pb.layout.clone(), pb.decay.clone(), pb.cfg, formats);
    let mut p = pb.p0.clone();
    for g in &pb.grads {
        let rep = opt.update(&mut p, g, LR);
        assert!(!rep.skipped, "finite gradients must not skip");
    }
    (p, opt)
}

/// `A_t`: bound on |m_t| / sqrt(v_t) without bias correction (point 1 of the module doc).
fn ratio_bound_raw(cfg: &AdamWConfig, t: usize) -> f64 {
    let rho = cfg.beta1 * cfg.beta1 / cfg.beta2;
    (1.0 - cfg.beta1) * ((1.0 - rho.powi(t as i32)) / (1.0 - rho)).sqrt() / (1.0 - cfg.beta2).sqrt()
}

/// `sqrt(c2) / c1` at step t: what bias correction multiplies the ratio by.
fn bias_factor(cfg: &AdamWConfig, t: usize) -> f64 {
    (1.0 - cfg.beta2.powi(t as i32)).sqrt() / (1.0 - cfg.beta1.powi(t as i32))
}

/// Worst-case |p - p_ref| after `steps` steps from storing m and v with unit roundoffs `u_m`, `u_v`
/// (points 1-4 of the module doc), or None when the v error can reach 100% (no bound). `p_max` is
/// the largest |p| for the f32 arithmetic term.
fn state_error_bound(cfg: &AdamWConfig, steps: usize, lr: f64, u_m: f64, u_v: f64, p_max: f64) -> Option<f64> {
    let q = cfg.beta1 / cfg.beta2.sqrt();
    let mut total = 0.0;
    for t in 1..=steps {
        let ratio = ratio_bound_raw(cfg, t) * bias_factor(cfg, t);
        let e_m: f64 =
            (1..t).map(|k| q.powi(k as i32) * (1.0 + u_m).powi(k as i32 - 1) * ratio_bound_raw(cfg, t - k)).sum();
        let e_m = u_m * e_m * bias_factor(cfg, t);
        let e_v: f64 = u_v * (1..t).map(|k| (1.0 + u_v).powi(k as i32 - 1)).sum::<f64>();
        if e_v >= 1.0 {
            return None;
        }
        total += lr * ((ratio + e_m) / (1.0 - e_v).sqrt() - ratio);
    }
    // f32 arithmetic: the F32/F32 pair against f64 (a handful of roundings per step, each at most
    // 2^-24 relative of p or of the update).
    let f32_term = steps as f64 * 8.0 * f32::EPSILON as f64 * (p_max + lr * 2.0);
    Some(total + f32_term)
}

struct Measured {
    max: f64,
    rms: f64,
}

fn measure(got: &[f32], want: &[f64]) -> Measured {
    let d: Vec<f64> = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).collect();
    let max = d.iter().cloned().fold(0.0, f64::max);
    let rms = (d.iter().map(|x| x * x).sum::<f64>() / d.len() as f64).sqrt();
    Measured { max, rms }
}

fn max_abs(x: &[f32]) -> f64 {
    x.iter().fold(0.0f64, |a, &b| a.max(b.abs() as f64))
}

#[test]
fn f32_states_match_adamw_fast_bit_for_bit_and_the_reference() {
    let pb = problem(STEPS);
    let (p, opt) = run_fp8(&pb, StateFormats::F32);
    // The fast AdamW on the same data.
    let mut fast = AdamW::new(pb.layout.clone(), pb.decay.clone(), pb.cfg);
    let mut pf = pb.p0.clone();
    for g in &pb.grads {
        fast.update(&mut pf, g, LR);
    }
    // Same f32 expression in the same order: not just within Tolerance::F32, identical.
    Tolerance::EXACT.assert_close("params vs AdamW", &p, &pf);
    Tolerance::EXACT.assert_close("m vs AdamW", &opt.m.to_f32(), &fast.m.data);
    Tolerance::EXACT.assert_close("v vs AdamW", &opt.v.to_f32(), &fast.v.data);
    Tolerance::F32.assert_close("params vs f64 reference", &p, &reference(&pb).p);
    // And adamw_fast itself, one tensor at a time, agrees with AdamW (sanity of the harness).
    let spec = &pb.layout.specs()[1];
    let (mut p1, mut m1, mut v1) = (pb.p0[spec.range()].to_vec(), vec![0.0; spec.numel()], vec![0.0; spec.numel()]);
    for (t, g) in pb.grads.iter().enumerate() {
        adamw_fast(&mut p1, &g[spec.range()], &mut m1, &mut v1, t as u64 + 1, LR, &pb.cfg, pb.decay[1]);
    }
    Tolerance::EXACT.assert_close("one tensor", &p1, &p[spec.range()]);
}

#[test]
fn every_state_format_pair_against_the_f64_reference() {
    let pb = problem(STEPS);
    let want = reference(&pb);
    let p_max = max_abs(&pb.p0) + STEPS as f64 * LR * 2.0;
    let unit = STEPS as f64 * LR; // how far p can move: |update| <~ lr per step
    println!("state formats vs f64 AdamW, {STEPS} steps, lr {LR:e}; errors in units of steps * lr = {unit:e}");
    println!("| m / v | max err | rms err | model rms | rms / model | max z | worst-case bound |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut pairs: Vec<StateFormats> = Vec::new();
    for m in StateFormat::PER_TENSOR {
        for v in StateFormat::PER_TENSOR {
            pairs.push(StateFormats { m, v });
        }
    }
    use StateFormat::*;
    pairs.push(StateFormats { m: E4M3, v: E4M3Block128 });
    pairs.push(StateFormats { m: E4M3Block128, v: F16 });
    let mut rms = Vec::new();
    for formats in pairs {
        let (p, _) = run_fp8(&pb, formats);
        assert!(p.iter().all(|x| x.is_finite()), "{formats:?}: non-finite parameters");
        let e = measure(&p, &want.p);
        let (u_m, u_v) = (formats.m.unit_roundoff(), formats.v.unit_roundoff());
        // Block formats round each element like E4M3 (only the scale granularity differs).
        let bound = state_error_bound(&pb.cfg, STEPS, LR, u_m, u_v, p_max);
        let sigma = linearised_sigma(&pb, &want, u_m, u_v);
        let model_rms = (sigma.iter().map(|s| s * s).sum::<f64>() / sigma.len() as f64).sqrt();
        let (ratio, zmax) = against_model(&p, &want.p, &sigma);
        let bound_txt = bound.map_or("none (v error can reach 100%)".to_string(), |b| format!("{:.4}", b / unit));
        println!(
            "| {} / {} | {:.4} | {:.5} | {:.5} | {ratio:.3} | {zmax:.2} | {bound_txt} |",
            formats.m,
            formats.v,
            e.max / unit,
            e.rms / unit,
            model_rms / unit
        );
        if let Some(b) = bound {
            assert!(e.max <= b, "{formats:?}: max error {:e} above the derived bound {b:e}", e.max);
            // F32/F32 has no storage error to model (f32 arithmetic only; checked exactly elsewhere).
            if formats != StateFormats::F32 {
                assert!((0.8..=1.25).contains(&ratio), "{formats:?}: rms error / model rms = {ratio}");
                assert!(zmax <= 7.0, "{formats:?}: an element {zmax} predicted sigmas off");
            }
        }
        rms.push((formats, e.rms));
    }
    let err = |m, v| rms.iter().find(|r| r.0 == StateFormats { m, v }).unwrap().1;
    // Fewer significand bits in m, larger error (v exact).
    assert!(err(F32, F32) <= err(F16, F32) && err(F16, F32) <= err(Bf16, F32) && err(Bf16, F32) <= err(E4M3, F32));
    assert!(err(E4M3, F32) <= err(E5M2, F32));
    // Block scales change only which elements are subnormal, not the rounding of the rest: on
    // Gaussian tensors the block formats equal their per-tensor counterpart to 1%.
    assert!((err(E4M3, E4M3Block128) / err(E4M3, E4M3) - 1.0).abs() < 0.01);
    assert!((err(E4M3Block128, F16) / err(E4M3, F16) - 1.0).abs() < 0.01);
}

/// Measured error against the linearised model: (rms error / rms sigma, max |error / sigma|).
fn against_model(got: &[f32], want: &[f64], sigma: &[f64]) -> (f64, f64) {
    let d = got.iter().zip(want).map(|(&g, &w)| g as f64 - w);
    let (mut num, mut den, mut zmax) = (0.0, 0.0, 0.0f64);
    for (d, &s) in d.zip(sigma) {
        num += d * d;
        den += s * s;
        if s > 0.0 {
            zmax = zmax.max(d.abs() / s);
        }
    }
    ((num / den).sqrt(), zmax)
}

#[test]
fn o2_trajectory_stays_within_its_tight_bound() {
    let pb = problem(STEPS);
    let want = reference(&pb);
    let (p, opt) = run_fp8(&pb, StateFormats::O2);
    assert_eq!(opt.formats(), StateFormats::O2);
    let sigma = linearised_sigma(&pb, &want, StateFormat::E4M3.unit_roundoff(), StateFormat::F16.unit_roundoff());
    let e = measure(&p, &want.p);
    let (ratio, zmax) = against_model(&p, &want.p, &sigma);
    let unit = STEPS as f64 * LR;
    println!(
        "O2: rms err {:.5}, max err {:.4} (steps*lr units); vs the linearised model: rms ratio {ratio:.3}, max z {zmax:.2}",
        e.rms / unit,
        e.max / unit
    );
    // The model predicts the O2 error to 1% in rms; 52k near-Gaussian errors stay within 6 sigma
    // (probability of a larger one ~1e-4).
    assert!((0.9..=1.1).contains(&ratio), "O2 rms error / model = {ratio}");
    assert!(zmax <= 6.0, "O2: an element {zmax} predicted sigmas off");
    // In plain terms (measured: rms 0.9%, worst element 6% of the distance the parameters can travel
    // in 20 steps, i.e. about one step's worth on the worst of 52k elements):
    assert!(e.rms <= 0.02 * unit && e.max <= 0.1 * unit, "O2 rms {:e} max {:e}", e.rms, e.max);
}

/// An embedding-like tensor: rows of 128 (one block each) whose gradient scales spread over five
/// decades (frequent vs rare tokens), and a rare row is absent from half the batches (zero gradient).
fn embedding_problem(steps: usize) -> Problem {
    let (rows, cols) = (256, BLOCK);
    let layout = Arc::new(Layout::new([("wte", vec![rows, cols])]));
    let mut r = Rng::new(77);
    let p0: Vec<f32> = (0..rows * cols).map(|_| (0.02 * r.normal()) as f32).collect();
    let row_scale: Vec<f64> = (0..rows).map(|_| 10f64.powf(-5.0 * r.uniform())).collect();
    let grads = (0..steps)
        .map(|_| {
            let mut g = vec![0.0f32; rows * cols];
            for (row, &scale) in row_scale.iter().enumerate() {
                if scale < 1e-2 && r.uniform() < 0.5 {
                    continue;
                }
                g[row * cols..(row + 1) * cols].iter_mut().for_each(|x| *x = (scale * r.normal()) as f32);
            }
            g
        })
        .collect();
    Problem { layout, decay: vec![true], p0, grads, cfg: AdamWConfig::default() }
}

/// Per-element bound on |p - p_ref| when an element's moments are lost (flushed to zero) and
/// restarted: both trajectories move at most `lr * ratio bound` per step, so they differ by at most
/// twice the sum.
fn restart_bound(cfg: &AdamWConfig, steps: usize, lr: f64) -> f64 {
    2.0 * (1..=steps).map(|t| lr * ratio_bound_raw(cfg, t) * bias_factor(cfg, t)).sum::<f64>()
}

/// Where FP8 second moments fail: v spans the square of the gradients' range, and per-tensor E4M3
/// covers 2^17.8 of v, i.e. only 2^8.9 of |g|. An element whose stored v flushed to zero while its m
/// did not takes a step of `lr m^/eps`, ~10^4 times too large. O2 avoids it because of a range
/// ordering: F16 with tensor scaling covers 2^40 of v = 2^20 of |g|, more than E4M3 m's 2^17.8
/// (relative to the amax), so by the time an element's v flushes its m has flushed too and the
/// element merely restarts its moments (`restart_bound`). The same ordering fails for f32 m / f16 v,
/// and inside a 128-element block for E4M3Block128 v (a Gaussian block has ~1% of its elements below
/// amax / 470).
#[test]
fn second_moment_in_fp8_over_a_wide_dynamic_range() {
    let pb = embedding_problem(STEPS);
    let want = reference(&pb);
    let unit = STEPS as f64 * LR;
    use StateFormat::*;
    println!("embedding-like tensor, row gradient scales over 5 decades; errors in steps * lr = {unit:e}");
    println!("| m / v | max err | rms err | elements off by > steps * lr |");
    println!("| --- | --- | --- | --- |");
    let pairs = [
        (F32, F32),
        (E4M3, F16),
        (E4M3, Bf16),
        (F32, F16),
        (E4M3, E4M3Block128),
        (F32, E4M3Block128),
        (E4M3, E5M2),
        (E4M3, E4M3),
        (F32, E4M3),
    ];
    let mut max_err = Vec::new();
    for (m, v) in pairs {
        let (p, _) = run_fp8(&pb, StateFormats { m, v });
        assert!(p.iter().all(|x| x.is_finite()), "{m}/{v}: the update never produces non-finite weights");
        let e = measure(&p, &want.p);
        let off = p.iter().zip(&want.p).filter(|(g, w)| (**g as f64 - **w).abs() > unit).count();
        println!("| {m} / {v} | {:.4} | {:.5} | {off} |", e.max / unit, e.rms / unit);
        max_err.push(((m, v), e.max));
    }
    let err = |m, v| max_err.iter().find(|r| r.0 == (m, v)).unwrap().1;
    // O2 (and bf16 v, f32's range) stay within the moment-restart bound everywhere.
    let restart = restart_bound(&pb.cfg, STEPS, LR);
    assert!(err(E4M3, F16) <= restart, "O2: {:e} vs restart bound {restart:e}", err(E4M3, F16));
    assert!(err(E4M3, Bf16) <= restart);
    // The failure FP8-LM reports, pinned: per-tensor FP8 v takes m/eps steps (hundreds of full
    // trajectories off).
    assert!(err(E4M3, E4M3) > 100.0 * unit && err(F32, E4M3) > 100.0 * unit && err(E4M3, E5M2) > 100.0 * unit);
}

#[test]
fn storage_sizes_are_the_real_formats_plus_scales() {
    let pb = problem(1);
    let (n, tensors) = (pb.layout.total(), pb.layout.specs().len());
    let o2 = Fp8AdamW::o2(pb.layout.clone(), pb.decay.clone(), pb.cfg);
    // O2: 1 byte of m + 2 bytes of v per parameter, one f32 scale per tensor each.
    assert_eq!(o2.m.bytes(), n + 4 * tensors);
    assert_eq!(o2.v.bytes(), 2 * n + 4 * tensors);
    assert_eq!(o2.state_bytes(), 3 * n + 8 * tensors);
    let f32s = Fp8AdamW::new(pb.layout.clone(), pb.decay.clone(), pb.cfg, StateFormats::F32);
    assert_eq!(f32s.state_bytes(), 8 * n); // unscaled: no scales counted
    assert_eq!(ScaledBuf::zeros(StateFormat::Bf16, pb.layout.clone()).bytes(), 2 * n);
    assert_eq!(ScaledBuf::zeros(StateFormat::E5M2, pb.layout.clone()).bytes(), n + 4 * tensors);
    let blocks: usize = pb.layout.specs().iter().map(|s| s.numel().div_ceil(BLOCK)).sum();
    assert_eq!(ScaledBuf::zeros(StateFormat::E4M3Block128, pb.layout.clone()).bytes(), n + 4 * blocks);
    // The data really is in those widths.
    use octet_core::scaled::StateData;
    assert!(matches!(o2.m.data(), StateData::U8(d) if d.len() == n));
    assert!(matches!(o2.v.data(), StateData::U16(d) if d.len() == n));
}

fn is_pow2(x: f32) -> bool {
    x > 0.0 && x.to_bits() & 0x007F_FFFF == 0
}

#[test]
fn scales_follow_the_amax_and_keep_the_previous_on_zero_or_nan() {
    let layout = Arc::new(Layout::new([("a", vec![1000]), ("b", vec![300])]));
    let mut r = Rng::new(5);
    for (format, tol) in
        [(StateFormat::E4M3, Tolerance::E4M3), (StateFormat::E5M2, Tolerance::E5M2), (StateFormat::F16, Tolerance::F16)]
    {
        let fp_max = format.fp_max().unwrap();
        let mut buf = ScaledBuf::zeros(format, layout.clone());
        for amax_target in [3e-7f32, 1e-3, 1.0, 1e4] {
            let src: Vec<f32> = (0..1000).map(|_| (r.normal() as f32) * amax_target).collect();
            let amax = buf.set_f32(0, &src);
            let scale = buf.scale(0);
            assert!(is_pow2(scale), "{format}: scale {scale} not a power of two");
            // The largest element lands in (fp_max / 2, fp_max].
            assert!(amax * scale <= fp_max && amax * scale > fp_max / 2.0, "{format}: {amax} * {scale}");
            assert_eq!(scale, compute_scale(amax, fp_max, 0, 1.0));
            let mut back = vec![0.0; 1000];
            buf.get_f32(0, &mut back);
            // Round trip within one rounding, relative to the tensor's scale (atol scaled by amax).
            let t = Tolerance { atol: tol.atol * amax as f64, rtol: tol.rtol };
            t.assert_close(format.name(), &back, &src);
        }
        let before = buf.scale(0);
        buf.set_f32(0, &[0.0; 1000]);
        assert_eq!(buf.scale(0), before, "{format}: zero amax keeps the scale");
        let mut back = vec![1.0; 1000];
        buf.get_f32(0, &mut back);
        assert!(back.iter().all(|&x| x == 0.0));
        let mut nan = vec![1.0f32; 1000];
        nan[7] = f32::NAN;
        assert!(buf.set_f32(0, &nan).is_nan());
        assert_eq!(buf.scale(0), before, "{format}: NaN amax keeps the scale");
        assert_eq!(buf.scale(1), 1.0, "{format}: other tensors untouched");
    }
    // Block scales follow each block's amax; an all-zero block keeps its previous scale.
    let mut buf = ScaledBuf::zeros(StateFormat::E4M3Block128, layout.clone());
    let mut src: Vec<f32> = (0..300).map(|i| (i as f32 + 1.0) * 10f32.powi((i / BLOCK) as i32 - 1)).collect();
    buf.set_f32(1, &src);
    let first = buf.scales(1).to_vec();
    assert_eq!(first.len(), 300usize.div_ceil(BLOCK));
    for (b, &s) in first.iter().enumerate() {
        let block = &src[b * BLOCK..((b + 1) * BLOCK).min(300)];
        let amax = block.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        assert_eq!(s, compute_scale(amax, 448.0, 0, 1.0), "block {b}");
    }
    src[BLOCK..2 * BLOCK].iter_mut().for_each(|x| *x = 0.0);
    buf.set_f32(1, &src);
    assert_eq!(buf.scales(1)[1], first[1], "zero block keeps its scale");
    let mut back = vec![0.0; 300];
    buf.get_f32(1, &mut back);
    Tolerance::E4M3.assert_close("blocks", &back, &src);
}

#[test]
fn optimizer_scales_come_from_the_new_states_amax() {
    let pb = problem(3);
    let (_, opt) = run_fp8(&pb, StateFormats::O2);
    for (i, spec) in pb.layout.specs().iter().enumerate() {
        for buf in [&opt.m, &opt.v] {
            let fp_max = buf.format().fp_max().unwrap();
            let scale = buf.scale(i);
            assert!(is_pow2(scale));
            let mut x = vec![0.0; spec.numel()];
            buf.get_f32(i, &mut x);
            // Decoded amax * scale: the unrounded amax was in (fp_max/2, fp_max]; rounding keeps it
            // in [fp_max/2, fp_max] (both ends representable in E4M3 and f16).
            let a = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) * scale;
            assert!(a <= fp_max && a >= fp_max / 2.0, "{} {}: amax*scale {a}", spec.name, buf.format());
        }
    }
}

#[test]
fn nonfinite_gradients_skip_the_whole_step() {
    let pb = problem(4);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut opt = Fp8AdamW::o2(pb.layout.clone(), pb.decay.clone(), pb.cfg);
        let mut p = pb.p0.clone();
        for g in &pb.grads[..2] {
            assert!(!opt.update(&mut p, g, LR).skipped);
        }
        let (p_before, opt_before) = (p.clone(), opt.clone());
        let mut g = pb.grads[2].clone();
        let spec = &pb.layout.specs()[3];
        g[spec.offset + 5] = bad;
        let rep = opt.update(&mut p, &g, LR);
        assert!(rep.skipped, "{bad}");
        assert_eq!(rep.nonfinite_tensor, Some(3));
        assert_eq!(rep.step, 2);
        assert!(!rep.grad_amax.is_finite());
        assert_eq!(opt.step, 2, "step counter not advanced");
        assert_eq!(p, p_before, "params unchanged");
        assert_eq!(opt.m, opt_before.m, "m unchanged (values and scales)");
        assert_eq!(opt.v, opt_before.v, "v unchanged (values and scales)");
        // The next finite step proceeds as if the bad one never happened.
        let rep = opt.update(&mut p, &pb.grads[3], LR);
        assert!(!rep.skipped && rep.step == 3 && rep.grad_amax.is_finite());
        assert!(p.iter().all(|x| x.is_finite()));
    }
    // Finite gradients whose square overflows f32 (v would be inf): skipped too, never NaN weights.
    let mut opt = Fp8AdamW::o2(pb.layout.clone(), pb.decay.clone(), pb.cfg);
    let mut p = pb.p0.clone();
    let mut g = pb.grads[0].clone();
    g[0] = 1e30;
    let rep = opt.update(&mut p, &g, LR);
    assert!(rep.skipped && rep.nonfinite_tensor == Some(0) && rep.grad_amax == 1e30);
    assert_eq!(p, pb.p0);
    // The same with unscaled states, where stage 1 first looks only at the gradients (its probe
    // must escalate to the moments to see the overflow).
    for formats in [StateFormats::F32, StateFormats { m: StateFormat::Bf16, v: StateFormat::E4M3Block128 }] {
        let mut opt = Fp8AdamW::new(pb.layout.clone(), pb.decay.clone(), pb.cfg, formats);
        let mut p = pb.p0.clone();
        let rep = opt.update(&mut p, &g, LR);
        assert!(rep.skipped && rep.nonfinite_tensor == Some(0), "{formats:?}: {rep:?}");
        assert_eq!(p, pb.p0);
    }
    // eps = 0 and an element with m = v = 0: the reference would write 0/0 = NaN; skipped instead.
    let cfg = AdamWConfig { eps: 0.0, ..pb.cfg };
    let mut opt = Fp8AdamW::new(pb.layout.clone(), pb.decay.clone(), cfg, StateFormats::F32);
    let mut p = pb.p0.clone();
    let mut g = pb.grads[0].clone();
    g[pb.layout.specs()[2].offset] = 0.0;
    let rep = opt.update(&mut p, &g, LR);
    assert!(rep.skipped && rep.nonfinite_tensor == Some(2) && rep.grad_amax.is_finite(), "{rep:?}");
    assert_eq!(p, pb.p0);
    // Master weights are left alone as well.
    let mut g = pb.grads[0].clone();
    let mut master = ScaledBuf::from_f32(StateFormat::F16, pb.layout.clone(), &pb.p0);
    let before = master.clone();
    g[0] = f32::NAN;
    assert!(opt.update_master(&mut master, &g, LR).skipped);
    assert_eq!(master, before);
}

#[test]
fn master_weights_in_f16_track_f32_weights() {
    let pb = problem(STEPS);
    let unit = STEPS as f64 * LR;
    // f32 weights, f32 states: the trajectory to compare with.
    let (p_ref, _) = run_fp8(&pb, StateFormats::F32);
    // update_master with F32 master weights is exactly update().
    let mut opt = Fp8AdamW::new(pb.layout.clone(), pb.decay.clone(), pb.cfg, StateFormats::F32);
    let mut master = ScaledBuf::from_f32(StateFormat::F32, pb.layout.clone(), &pb.p0);
    for g in &pb.grads {
        assert!(!opt.update_master(&mut master, g, LR).skipped);
    }
    Tolerance::EXACT.assert_close("f32 master", &master.to_f32(), &p_ref);

    for format in [StateFormat::F16, StateFormat::Bf16] {
        let mut opt = Fp8AdamW::new(pb.layout.clone(), pb.decay.clone(), pb.cfg, StateFormats::F32);
        let mut master = ScaledBuf::from_f32(format, pb.layout.clone(), &pb.p0);
        for g in &pb.grads {
            assert!(!opt.update_master(&mut master, g, LR).skipped);
        }
        let p = master.to_f32();
        // m and v do not depend on p, and weight decay contracts a parameter error, so the error is
        // at most the sum of the T + 1 roundings of p (initial + one per step), each <= u |p_t| with
        // |p_t| <= |p_T| + T lr * 2 (the update ratio is below 2, see the module doc's A_t). Tensor
        // scaling keeps the elements in f16's normal range (2^30 below the amax), so no floor term.
        let u = format.unit_roundoff();
        let mut worst: f64 = 0.0;
        for (&got, &want) in p.iter().zip(&p_ref) {
            let bound = (STEPS + 1) as f64 * u * (want.abs() as f64 + unit * 2.0);
            let err = (got - want).abs() as f64;
            assert!(err <= bound, "{format}: |{got} - {want}| > {bound}");
            worst = worst.max(err);
        }
        let per_tensor: Vec<String> = pb
            .layout
            .specs()
            .iter()
            .map(|s| format!("{} {:.3}", s.name, measure(&p[s.range()], &widen(&p_ref[s.range()])).max / unit))
            .collect();
        println!("{format} master weights vs f32: max err {:.4} steps*lr ({})", worst / unit, per_tensor.join(", "));
        assert_eq!(master.scales(0).len(), 1);
        if format == StateFormat::F16 {
            assert!(is_pow2(master.scale(0)) && master.scale(0) > 1.0, "small weights scaled up into f16 range");
        }
    }
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let layout = Arc::new(Layout::new([("big", vec![100_000]), ("small", vec![77])]));
    let mut r = Rng::new(9);
    let p0: Vec<f32> = (0..layout.total()).map(|_| r.normal() as f32).collect();
    let g: Vec<f32> = (0..layout.total()).map(|_| (r.normal() * 1e-2) as f32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut opt = Fp8AdamW::new(
                layout.clone(),
                vec![true, false],
                AdamWConfig::default(),
                StateFormats { m: StateFormat::E4M3, v: StateFormat::E4M3Block128 },
            );
            let mut p = p0.clone();
            for _ in 0..3 {
                opt.update(&mut p, &g, LR);
            }
            (p, opt.m, opt.v)
        })
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
}

/// `cargo test -p octet-optim --test fp8_adamw -- --ignored --nocapture update_speed` (the test profile is
/// optimised).
#[test]
#[ignore = "timing"]
fn update_speed_10m_parameters() {
    let n_tensors = 8;
    let per = 10_000_000 / n_tensors;
    let layout = Arc::new(Layout::new((0..n_tensors).map(|i| (format!("t{i}"), vec![per]))));
    let n = layout.total();
    let decay = vec![true; n_tensors];
    let mut r = Rng::new(3);
    let g: Vec<f32> = (0..n).map(|_| (r.normal() * 1e-3) as f32).collect();
    let mut p: Vec<f32> = (0..n).map(|_| (r.normal() * 0.02) as f32).collect();
    let reps = 5;
    let time = |name: &str, f: &mut dyn FnMut()| {
        f(); // warm up (page in the state)
        // The fastest of `reps` steps: the least disturbed by other load on the machine.
        let s = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        println!("{name:>28}: {:7.1} ms/step, {:.2} ns/param", s * 1e3, s * 1e9 / n as f64);
        s
    };
    let mut adamw = AdamW::new(layout.clone(), decay.clone(), AdamWConfig::default());
    let base = time("AdamW::update (f32)", &mut || adamw.update(&mut p, &g, LR));
    for formats in [
        StateFormats::F32,
        StateFormats::O2,
        StateFormats { m: StateFormat::Bf16, v: StateFormat::Bf16 },
        StateFormats { m: StateFormat::E4M3, v: StateFormat::E4M3Block128 },
    ] {
        let mut opt = Fp8AdamW::new(layout.clone(), decay.clone(), AdamWConfig::default(), formats);
        let s = time(&format!("Fp8AdamW {} / {}", formats.m, formats.v), &mut || {
            opt.update(&mut p, &g, LR);
        });
        println!("{:>28}  {:.2}x AdamW", "", s / base);
    }
    let mut opt = Fp8AdamW::o2(layout.clone(), decay, AdamWConfig::default());
    let mut master = ScaledBuf::from_f32(StateFormat::F16, layout, &p);
    let s = time("O2 + f16 master", &mut || {
        opt.update_master(&mut master, &g, LR);
    });
    println!("{:>28}  {:.2}x AdamW", "", s / base);
}

/// O1/O2 keep weight gradients in E4M3: `update_master_scaled` must be exactly `update_master` fed the
/// decoded gradients times the multiplier (clip factor / gradient scale), step after step.
#[test]
fn scaled_gradients_equal_their_decoded_values_bit_for_bit() {
    let pb = problem(5);
    let mult = 0.375f32; // not a power of two: the product is rounded, identically on both paths
    let mut a = Fp8AdamW::o2(pb.layout.clone(), pb.decay.clone(), pb.cfg);
    let mut b = a.clone();
    let mut wa = ScaledBuf::from_f32(StateFormat::F16, pb.layout.clone(), &pb.p0);
    let mut wb = wa.clone();
    for g in &pb.grads {
        let gq = ScaledBuf::from_f32(StateFormat::E4M3, pb.layout.clone(), g);
        let decoded: Vec<f32> = gq.to_f32().iter().map(|x| x * mult).collect();
        let ra = a.update_master_scaled(&mut wa, &gq, mult, LR);
        let rb = b.update_master(&mut wb, &decoded, LR);
        assert_eq!(ra, rb);
        assert!(!ra.skipped);
    }
    assert_eq!(wa, wb);
    assert_eq!((a.m, a.v), (b.m, b.v));
}

#[test]
fn nan_in_scaled_gradients_skips_the_step() {
    let pb = problem(1);
    let mut opt = Fp8AdamW::o2(pb.layout.clone(), pb.decay.clone(), pb.cfg);
    let mut w = ScaledBuf::from_f32(StateFormat::F16, pb.layout.clone(), &pb.p0);
    let before = w.clone();
    let mut g = pb.grads[0].clone();
    g[7] = f32::NAN;
    let gq = ScaledBuf::from_f32(StateFormat::E4M3, pb.layout.clone(), &g);
    let r = opt.update_master_scaled(&mut w, &gq, 1.0, LR);
    assert!(r.skipped && r.step == 0);
    assert_eq!(w, before);
}

#[test]
fn raw_bytes_round_trip_every_format_and_sum_squares_matches() {
    let pb = problem(1);
    for format in [StateFormat::F32, StateFormat::Bf16, StateFormat::F16, StateFormat::E4M3, StateFormat::E4M3Block128]
    {
        let buf = ScaledBuf::from_f32(format, pb.layout.clone(), &pb.grads[0]).with_margin(1);
        let (bytes, scales) = buf.to_raw();
        let back = ScaledBuf::from_raw(format, pb.layout.clone(), &bytes, &scales, 1).unwrap();
        assert_eq!(back, buf, "{format}");
        let naive: f64 = buf.to_f32().iter().map(|&x| x as f64 * x as f64).sum();
        // Same terms, different summation order (per chunk, then over chunks): f64 rounding only.
        Tolerance { atol: 0.0, rtol: 1e-12 }.assert_close("sum_squares", &[buf.sum_squares()], &[naive]);
        assert!(ScaledBuf::from_raw(format, pb.layout.clone(), &bytes[1..], &scales, 1).is_err());
    }
}
