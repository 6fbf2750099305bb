//! Per-tensor scaling tests: the power-of-two scale formula (exact, even where log2 of a rounded
//! quotient overshoots), keeping the scale on zero / NaN / inf amax, delayed scaling over the amax
//! window, the recipe, and quantise -> dequantise round trips within the FP8 `Tolerance` presets.

use octet_core::Rng;
use octet_core::Tolerance;
use octet_core::fp8::{self, Fp8Format};
use octet_core::scaling::{
    AmaxHistory, Fp8Tensor, MAX_SCALE_EXPONENT, Recipe, Role, RoleRecipe, ScalingMeta, ScalingMode, compute_scale,
    scale_exponent,
};

#[test]
fn scale_formula_matches_worked_examples() {
    let (e4, e5) = (Fp8Format::E4M3.max(), Fp8Format::E5M2.max());
    // log2(448 / 1) = 8.8: scale 2^8, and 1 * 256 = 256 <= 448 < 512.
    assert_eq!(compute_scale(1.0, e4, 0, 1.0), 256.0);
    assert_eq!(compute_scale(448.0, e4, 0, 1.0), 1.0);
    assert_eq!(compute_scale(449.0, e4, 0, 1.0), 0.5);
    assert_eq!(compute_scale(1.0, e5, 0, 1.0), 32768.0);
    assert_eq!(compute_scale(1e6, e5, 0, 1.0), 2f32.powi(-5)); // 57344 / 1e6 = 2^-4.1
    // The margin buys powers of two of headroom.
    assert_eq!(compute_scale(1.0, e4, 1, 1.0), 128.0);
    assert_eq!(compute_scale(1.0, e4, -2, 1.0), 1024.0);
    // Subnormal f32 amax, and clamping so that scale and 1/scale stay normal f32.
    assert_eq!(scale_exponent(1e-30, e4, 0), Some(108)); // 448 / 1e-30 = 2^108.5
    assert_eq!(scale_exponent(1e-44, e4, 0), Some(MAX_SCALE_EXPONENT));
    assert_eq!(scale_exponent(f32::MAX, e4, 0), Some(-120)); // 448 / 2^128 = 2^-119.2
    assert_eq!(scale_exponent(1.0, e4, 1000), Some(-MAX_SCALE_EXPONENT));
}

/// Without margin or clamping, k is the largest integer with amax * 2^k <= fp_max (checked in f64,
/// where the products are exact), over amaxes spanning every f32 binade the clamp allows.
#[test]
fn scale_is_the_largest_power_of_two_keeping_amax_within_max() {
    let mut rng = Rng::new(9);
    for fmt in Fp8Format::ALL {
        let fp_max = fmt.max() as f64;
        for _ in 0..200_000 {
            let bits = rng.next_u32() & 0x7FFF_FFFF;
            let amax = f32::from_bits(bits);
            let Some(k) = scale_exponent(amax, fmt.max(), 0) else {
                assert!(!(amax.is_finite() && amax > 0.0), "{amax:e}");
                continue;
            };
            if k.abs() == MAX_SCALE_EXPONENT {
                continue; // clamped
            }
            let scaled = amax as f64 * 2f64.powi(k);
            assert!(scaled <= fp_max && 2.0 * scaled > fp_max, "{fmt} amax {amax:e}: k = {k}");
        }
    }
}

/// Regression: floor(log2(fp_max / amax)) in f32 rounds the quotient first, and just above
/// fp_max / 2^j the quotient rounds up to 2^j, so a naive scale 2^j would push amax past fp_max.
#[test]
fn scale_exponent_does_not_overshoot_where_the_rounded_quotient_is_a_power_of_two() {
    let fp_max = Fp8Format::E4M3.max();
    let mut naive_overshoots = 0;
    for j in -20..=20 {
        let amax = f32::from_bits((fp_max / 2f32.powi(j)).to_bits() + 1); // one ulp above
        let naive = (fp_max / amax).log2().floor() as i32;
        let k = scale_exponent(amax, fp_max, 0).unwrap();
        assert_eq!(k, j - 1, "amax {amax:e}");
        assert!(amax * 2f32.powi(k) <= fp_max);
        naive_overshoots += i32::from(naive == j);
    }
    assert!(naive_overshoots > 0, "no case exercised the rounding the test is about");
}

#[test]
fn scale_keeps_its_old_value_on_zero_nan_or_inf_amax() {
    let fp_max = Fp8Format::E4M3.max();
    for amax in [0.0, -0.0, f32::NAN, f32::INFINITY, -1.0] {
        assert_eq!(scale_exponent(amax, fp_max, 0), None, "{amax}");
        assert_eq!(compute_scale(amax, fp_max, 0, 8.0), 8.0, "{amax}");
    }
    let mut meta = ScalingMeta::new(Fp8Format::E4M3, 1, 0);
    meta.update_just_in_time(2.0); // 448 / 2 = 224 = 2^7.8
    assert_eq!((meta.scale, meta.scale_inv), (128.0, 1.0 / 128.0));
    for amax in [0.0, f32::NAN, f32::INFINITY] {
        meta.update_just_in_time(amax);
        assert_eq!((meta.scale, meta.scale_inv), (128.0, 1.0 / 128.0), "{amax}");
        meta.update(amax); // window 1: the window max is this amax
        assert_eq!(meta.scale, 128.0, "{amax}");
    }
}

#[test]
fn delayed_scaling_uses_the_window_max_and_forgets_after_window_updates() {
    const WINDOW: usize = 4;
    let fp_max = Fp8Format::E5M2.max();
    let mut meta = ScalingMeta::new(Fp8Format::E5M2, WINDOW, 0);
    let scale_of = |amax: f32| compute_scale(amax, fp_max, 0, f32::NAN);
    meta.update(1.0);
    assert_eq!(meta.scale, scale_of(1.0));
    meta.update(64.0); // the new amax counts at once: scale is set after recording it
    assert_eq!(meta.scale, scale_of(64.0));
    for i in 1..WINDOW {
        meta.update(2.0);
        assert_eq!(meta.scale, scale_of(64.0), "still in the window after {i} updates");
    }
    meta.update(2.0); // the WINDOW-th update after 64 pushes it out
    assert_eq!(meta.scale, scale_of(2.0));
    assert_eq!(meta.amax_history.iter().collect::<Vec<_>>(), [2.0; WINDOW]);
}

#[test]
fn non_finite_amax_freezes_the_delayed_scale_until_it_leaves_the_window() {
    const WINDOW: usize = 3;
    let mut meta = ScalingMeta::new(Fp8Format::E4M3, WINDOW, 0);
    meta.update(1.0);
    let frozen = meta.scale;
    meta.update(f32::NAN);
    for _ in 1..WINDOW {
        meta.update(100.0);
        assert_eq!(meta.scale, frozen);
    }
    meta.update(100.0);
    assert_eq!(meta.scale, compute_scale(100.0, 448.0, 0, f32::NAN));
}

#[test]
fn amax_history_is_a_ring_buffer() {
    let mut h = AmaxHistory::new(3);
    assert!(h.is_empty());
    assert_eq!(h.max(), 0.0);
    for v in [1.0, 5.0, 2.0, 3.0] {
        h.push(v);
    }
    assert!(h.is_full());
    assert_eq!(h.iter().collect::<Vec<_>>(), [5.0, 2.0, 3.0]);
    assert_eq!((h.max(), h.latest()), (5.0, Some(3.0)));
    let json = serde_json::to_string(&h).unwrap();
    assert_eq!(json, r#"{"window":3,"values":[5.0,2.0,3.0]}"#);
    assert_eq!(serde_json::from_str::<AmaxHistory>(&json).unwrap().iter().collect::<Vec<_>>(), [5.0, 2.0, 3.0]);
    assert!(serde_json::from_str::<AmaxHistory>(r#"{"window":1,"values":[1.0,2.0]}"#).is_err());
}

#[test]
fn delayed_cast_is_just_in_time_in_warm_up_then_scales_from_earlier_amaxes() {
    const WINDOW: usize = 2;
    let fmt = Fp8Format::E4M3;
    let mut meta = ScalingMeta::new(fmt, WINDOW, 0);
    let scale_of = |amax: f32| compute_scale(amax, fmt.max(), 0, f32::NAN);
    let mut dst = [0u8; 3];
    // Warm-up (fewer than WINDOW amaxes recorded): each cast scales from its own amax.
    for amax in [1.0, 8.0] {
        assert!(meta.in_warm_up());
        assert_eq!(meta.quantize(ScalingMode::Delayed, &[amax, -0.5, 0.0], &mut dst), amax);
        assert_eq!(meta.scale, scale_of(amax));
        assert_eq!(dst[0], fp8::encode(fmt, amax * meta.scale, fp8::Overflow::Saturate));
    }
    // Then the scale comes from the window of earlier casts (max 8), not this one's amax (100).
    assert!(!meta.in_warm_up());
    assert_eq!(meta.quantize(ScalingMode::Delayed, &[100.0, 1.0, 0.0], &mut dst), 100.0);
    assert_eq!(meta.scale, scale_of(8.0));
    assert_eq!(dst[0], fmt.max_code(), "100 * 32 saturates");
    // The next cast sees 100 in its window.
    meta.quantize(ScalingMode::Delayed, &[1.0, 1.0, 1.0], &mut dst);
    assert_eq!(meta.scale, scale_of(100.0));
    // Just-in-time ignores the history.
    meta.quantize(ScalingMode::JustInTime, &[0.25, 0.0, 0.0], &mut dst);
    assert_eq!(meta.scale, scale_of(0.25));
}

#[test]
fn window_one_delayed_cast_is_just_in_time() {
    let mut meta = Recipe::default().meta(Role::WeightGrad);
    let mut dst = [0u8; 2];
    for amax in [3.0f32, 1000.0, 0.001] {
        meta.quantize(ScalingMode::Delayed, &[amax, 0.0], &mut dst);
        assert_eq!(meta.scale, compute_scale(amax, meta.fp_max(), 0, f32::NAN));
    }
}

/// Random N(0, sigma) data, with sigma = 1 as the presets assume (their atol is absolute).
fn normal_data(n: usize, sigma: f64, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.normal() * sigma) as f32).collect()
}

fn check_roundtrip(fmt: Fp8Format, tol: Tolerance) {
    let src = normal_data(50_000, 1.0, 17);
    for mode in [ScalingMode::JustInTime, ScalingMode::Delayed] {
        let mut meta = ScalingMeta::new(fmt, 16, 0);
        let mut q = vec![0u8; src.len()];
        let mut back = vec![0f32; src.len()];
        for step in 0..20 {
            meta.quantize(mode, &src, &mut q);
            meta.dequantize(&q, &mut back);
            if let Err(e) = tol.check(fmt.name(), &back, &src) {
                panic!("{mode:?} step {step}: {e}");
            }
        }
    }
}

#[test]
fn e4m3_quantise_dequantise_roundtrip_is_within_the_e4m3_tolerance() {
    check_roundtrip(Fp8Format::E4M3, Tolerance::E4M3);
}

#[test]
fn e5m2_quantise_dequantise_roundtrip_is_within_the_e5m2_tolerance() {
    check_roundtrip(Fp8Format::E5M2, Tolerance::E5M2);
}

/// Power-of-two scales make the cast scale-invariant: data scaled by 2^j encodes to the same bytes,
/// with the scale divided by 2^j, so the unit-data tolerances hold at every magnitude (with atol
/// scaled alike).
#[test]
fn power_of_two_scaling_makes_the_cast_independent_of_magnitude() {
    let src = normal_data(10_000, 1.0, 23);
    for fmt in Fp8Format::ALL {
        let base =
            Fp8Tensor::quantize(&src, &[100, 100], ScalingMeta::new(fmt, 1, 0), ScalingMode::JustInTime).unwrap();
        for j in [-40, -7, 5, 60] {
            let factor = 2f32.powi(j);
            let scaled: Vec<f32> = src.iter().map(|x| x * factor).collect();
            let t = Fp8Tensor::quantize(&scaled, &[100, 100], ScalingMeta::new(fmt, 1, 0), ScalingMode::JustInTime)
                .unwrap();
            assert_eq!(t.bytes, base.bytes, "{fmt} 2^{j}");
            assert_eq!(t.meta.scale * factor, base.meta.scale, "{fmt} 2^{j}");
        }
    }
}

#[test]
fn fp8_tensor_keeps_the_scale_its_bytes_were_encoded_with() {
    let recipe = Recipe::default();
    let w0 = normal_data(64, 1.0, 1);
    let mut t = Fp8Tensor::quantize(&w0, &[8, 8], recipe.meta(Role::Weight), recipe.mode).unwrap();
    assert_eq!((t.format(), t.numel()), (Fp8Format::E4M3, 64));
    Tolerance::E4M3.assert_close("w0", &t.dequantize(), &w0);
    // Through warm-up and into delayed scaling, with the data growing 4x per step: the bytes always
    // decode with the scale they were written with.
    let mut w = w0.clone();
    for step in 0..20 {
        w.iter_mut().for_each(|x| *x *= if step < 10 { 4.0 } else { 0.25 });
        t.requantize(&w, recipe.mode).unwrap();
        let mut expect = vec![0u8; w.len()];
        fp8::quantize(t.format(), &w, t.meta.scale, &mut expect);
        assert_eq!(t.bytes, expect, "step {step}");
        assert_eq!(t.meta.scale_inv, 1.0 / t.meta.scale);
        let mut back = vec![0f32; w.len()];
        t.dequantize_into(&mut back).unwrap();
        let mut want = vec![0f32; w.len()];
        fp8::dequantize(t.format(), &expect, t.meta.scale_inv, &mut want);
        assert_eq!(back, want, "step {step}");
    }
}

#[test]
fn fp8_tensor_rejects_a_shape_that_does_not_match_the_data() {
    let meta = ScalingMeta::new(Fp8Format::E4M3, 1, 0);
    let err = Fp8Tensor::quantize(&[1.0; 6], &[2, 4], meta.clone(), ScalingMode::JustInTime).unwrap_err();
    assert!(err.to_string().contains("[2, 4]"), "{err}");
    let mut t = Fp8Tensor::quantize(&[1.0; 6], &[2, 3], meta, ScalingMode::JustInTime).unwrap();
    assert!(t.requantize(&[1.0; 5], ScalingMode::JustInTime).is_err());
    assert!(t.dequantize_into(&mut [0.0; 7]).is_err());
}

#[test]
fn default_recipe_is_ms_amp() {
    let r = Recipe::default();
    let e4 = |window| RoleRecipe { format: Fp8Format::E4M3, window };
    assert_eq!(r.input, e4(16));
    assert_eq!(r.weight, e4(16));
    assert_eq!(r.grad_output, RoleRecipe { format: Fp8Format::E5M2, window: 16 });
    assert_eq!(r.weight_grad, e4(1));
    assert_eq!((r.margin, r.mode), (0, ScalingMode::Delayed));
    for role in Role::ALL {
        let meta = r.meta(role);
        assert_eq!(meta.format, r.role(role).format);
        assert_eq!(meta.amax_history.window(), r.role(role).window);
        assert_eq!((meta.scale, meta.scale_inv, meta.margin), (1.0, 1.0, 0));
    }
    assert!(r.validate().is_ok());
}

#[test]
fn recipe_roundtrips_through_serde_and_fills_missing_fields_with_defaults() {
    let mut r = Recipe::default();
    r.grad_output.format = Fp8Format::E4M3;
    r.margin = 1;
    r.mode = ScalingMode::JustInTime;
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(r#""mode":"just_in_time""#), "{json}");
    assert_eq!(serde_json::from_str::<Recipe>(&json).unwrap(), r);
    let partial: Recipe = serde_json::from_str(r#"{"margin": 2}"#).unwrap();
    assert_eq!(partial, Recipe { margin: 2, ..Recipe::default() });
    assert!(serde_json::from_str::<Recipe>(r#"{"marg": 2}"#).is_err());
}

#[test]
fn recipe_validation_rejects_a_zero_window() {
    let mut r = Recipe::default();
    r.weight_grad.window = 0;
    let err = r.validate().unwrap_err().to_string();
    assert!(err.contains("recipe.weight_grad.window"), "{err}");
}

#[test]
fn scaling_meta_roundtrips_through_serde() {
    let mut meta = Recipe::default().meta(Role::GradOutput);
    for amax in [1.0, 3.0, 0.5] {
        meta.update(amax);
    }
    let json = serde_json::to_string(&meta).unwrap();
    assert_eq!(serde_json::from_str::<ScalingMeta>(&json).unwrap(), meta);
}
