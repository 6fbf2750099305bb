//! Precision levels against fp32 on the golden tiny model: losses, gradients and a short training run.
//! Bounds follow the formats: bf16 operands carry 2^-9 relative rounding, E4M3 2^-4 and E5M2 2^-3, so
//! per-element gradients differ by percents while their direction (cosine) and the loss stay close.

use octet_core::scaling::Recipe;
use octet_core::{ScaledBuf, StateFormat};
use octet_kernels::CpuBackend;
use octet_lm::gpt2::{Gpt2, Gpt2Config, decay_flags, param_layout};
use octet_lm::memory::plan;
use octet_lm::narrow::unit_layout;
use octet_lm::precision::Precision;
use octet_lm::step::{GradScaler, Optimizer, train_step};
use octet_optim::{AdamW, AdamWConfig};
use safetensors::SafeTensors;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/gpt2_tiny.safetensors");

fn golden() -> (Vec<f32>, Vec<u32>, Vec<u32>) {
    let bytes = std::fs::read(GOLDEN).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f = |n: &str| -> Vec<f32> {
        st.tensor(n).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    let u = |n: &str| -> Vec<u32> {
        st.tensor(n).unwrap().data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect()
    };
    let layout = param_layout(&Gpt2Config::tiny());
    let params = layout.specs().iter().flat_map(|s| f(&format!("param.{}", s.name))).collect();
    (params, u("inputs"), u("targets"))
}

fn model(p: Precision, params: Vec<f32>) -> Gpt2<CpuBackend> {
    Gpt2::new(Gpt2Config::tiny(), CpuBackend, params).unwrap().with_precision(p, &Recipe::default()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn bf16_and_fp8_te_losses_and_gradients_track_fp32() {
    let (params, x, y) = golden();
    let mut reference = model(Precision::Fp32, params.clone());
    let l32 = reference.forward(&x, Some(&y), 2, 8).unwrap().unwrap();
    reference.backward().unwrap();
    // (level, max relative loss difference, min cosine of each weight gradient with fp32's)
    for (p, dloss, cos) in [(Precision::Bf16, 2e-3, 0.999), (Precision::Fp8Te, 2e-2, 0.98)] {
        let mut m = model(p, params.clone());
        let l = m.forward(&x, Some(&y), 2, 8).unwrap().unwrap();
        assert!((l - l32).abs() / l32 < dloss, "{p}: loss {l} vs fp32 {l32}");
        m.backward().unwrap();
        for (spec, g) in m.grads.iter() {
            let c = cosine(g, reference.grads.by_name(&spec.name).unwrap());
            assert!(c > cos || g.iter().all(|&v| v == 0.0), "{p}: grad {} cosine {c}", spec.name);
        }
    }
}

#[test]
fn fp8_te_trains_like_fp32_and_keeps_scaling_state() {
    let (params, x, y) = golden();
    let mut finals = vec![];
    for p in [Precision::Fp32, Precision::Bf16, Precision::Fp8Te] {
        let mut m = model(p, params.clone());
        let layout = m.params.layout.clone();
        let mut opt = AdamW::new(layout.clone(), decay_flags(&layout), AdamWConfig::default());
        let mut loss = 0.0;
        for _ in 0..40 {
            m.zero_grad();
            loss = m.forward(&x, Some(&y), 2, 8).unwrap().unwrap();
            m.backward().unwrap();
            let g = m.grads.data.clone();
            opt.update(&mut m.params.data, &g, 1e-3);
        }
        if p == Precision::Fp8Te {
            // 2 layers x 4 linears, each with a full delayed-scaling history after 40 steps.
            assert_eq!(m.scaling.len(), 8);
            assert!(m.scaling.iter().all(|s| s.input.amax_history.is_full() && s.grad_output.scale > 1.0));
        }
        finals.push(loss);
    }
    // Memorising one batch: 4.10 -> ~2; every level must get there within 3% of fp32.
    assert!(finals[0] < 3.0, "fp32 did not learn: {finals:?}");
    for (i, p) in ["bf16", "fp8-te"].iter().enumerate() {
        assert!((finals[i + 1] - finals[0]).abs() / finals[0] < 0.03, "{p}: {finals:?}");
    }
}

/// O1/O2 compute on the f16 weights they store: the forward equals fp8-te's on the same f16-rounded
/// weights, bit for bit, and the stored E4M3 gradients are exactly fp8-te's f32 gradients encoded
/// per unit (each layer's slice of a tensor with its own just-in-time scale).
#[test]
fn narrow_levels_compute_fp8_te_on_their_f16_weights_and_store_its_gradients_in_e4m3() {
    let (params, x, y) = golden();
    for p in [Precision::Fp8O1, Precision::Fp8O2] {
        let mut narrow = model(p, params.clone());
        let nw = narrow.narrow.as_ref().expect("narrow storage");
        assert_eq!(nw.weights.format(), StateFormat::F16);
        let f16_weights = nw.weights_f32();
        let mut te = model(Precision::Fp8Te, f16_weights.clone());
        let (ln, lt) = (narrow.forward(&x, Some(&y), 2, 8).unwrap(), te.forward(&x, Some(&y), 2, 8).unwrap());
        assert_eq!(ln, lt, "{p}: loss");
        narrow.backward().unwrap();
        te.backward().unwrap();
        let nw = narrow.narrow.as_ref().unwrap();
        assert!(!nw.overflow);
        let want = ScaledBuf::from_f32(StateFormat::E4M3, nw.units.clone(), &te.grads.data);
        assert_eq!(nw.grads, want, "{p}: gradients");
        // Weights re-encoded from their own decoded values are unchanged.
        assert_eq!(model(p, f16_weights).narrow.unwrap().weights, nw.weights);
    }
}

/// The unit layout splits every block tensor per layer at the same offsets as the parameter layout.
#[test]
fn unit_layout_keeps_offsets_and_splits_block_tensors_per_layer() {
    let c = Gpt2Config::tiny();
    let full = param_layout(&c);
    let (units, parent) = unit_layout(&full, &param_layout(&Gpt2Config { n_layer: 1, ..c }));
    assert_eq!(units.total(), full.total());
    let qkv = full.expect_id("qkvw");
    assert_eq!(units.range(units.expect_id("qkvw.1")), full.range_at(qkv, 1));
    assert_eq!(units.range(units.expect_id("wte")), full.range(full.expect_id("wte")));
    assert_eq!(units.specs().len(), 4 + 12 * c.n_layer);
    assert_eq!(parent[units.expect_id("fcb.0").0], full.expect_id("fcb").0);
}

/// O1 and O2 train like fp8-te (which itself tracks fp32, above) through `train_step`.
#[test]
fn narrow_levels_train_like_fp8_te() {
    let (params, x, y) = golden();
    let mut finals = vec![];
    for p in [Precision::Fp8Te, Precision::Fp8O1, Precision::Fp8O2] {
        let mut m = model(p, params.clone());
        let mut opt = Optimizer::for_model(&m, AdamWConfig::default());
        let mut sc = GradScaler::default();
        let mut loss = 0.0;
        for _ in 0..40 {
            let out = train_step(&mut m, &mut opt, &mut sc, &x, &y, 2, 8, 1.0, 1e-3).unwrap();
            assert!(!out.skipped);
            loss = out.loss;
        }
        assert_eq!(opt.step(), 40);
        finals.push(loss);
    }
    assert!(finals[0] < 3.0, "fp8-te did not learn: {finals:?}");
    for (i, p) in ["fp8-o1", "fp8-o2"].iter().enumerate() {
        assert!((finals[i + 1] - finals[0]).abs() / finals[0] < 0.03, "{p}: {finals:?}");
    }
}

/// A gradient that overflows skips the step — weights and moments untouched, never NaN — and halves
/// the scale until the gradients fit; training then goes on. (Weight gradients get just-in-time E4M3
/// scales and activation-gradient casts saturate, so on the CPU only f32 overflow is possible: here
/// the loss gradient is scaled by 2^140, beyond f32's range.)
#[test]
fn overflowing_gradients_skip_the_step_and_back_off_the_scale() {
    let (params, x, y) = golden();
    let mut m = model(Precision::Fp8O2, params);
    let mut opt = Optimizer::for_model(&m, AdamWConfig::default());
    let mut sc = GradScaler { scale: 2f64.powi(140), ..GradScaler::default() };
    let before = m.narrow.as_ref().unwrap().weights.clone();
    let out = train_step(&mut m, &mut opt, &mut sc, &x, &y, 2, 8, 1.0, 1e-3).unwrap();
    assert!(out.skipped, "2^140 times the loss gradient must overflow f32");
    assert_eq!(m.narrow.as_ref().unwrap().weights, before, "a skipped step changes nothing");
    assert_eq!((opt.step(), sc.scale, sc.skipped), (0, 2f64.powi(139), 1));
    let mut steps = 0;
    while opt.step() < 5 {
        train_step(&mut m, &mut opt, &mut sc, &x, &y, 2, 8, 1.0, 1e-3).unwrap();
        steps += 1;
        assert!(steps < 200, "the scale never backed off enough");
    }
    // Finite from 2^130 down (dloss = scale / 16 fits f32 below 2^132).
    assert!(sc.skipped > 1 && sc.scale < 2f64.powi(132));
    assert!(m.narrow.as_ref().unwrap().weights_f32().iter().all(|w| w.is_finite()));
}

/// Bytes per parameter of weight-related state, from the live buffers: 16 (fp32 AdamW), 11 (O1:
/// f16 weights, E4M3 gradients, f32 moments) and 6 (O2: m E4M3, v f16), plus per-tensor scales.
#[test]
fn ledger_bytes_per_param_follow_the_levels() {
    let c = Gpt2Config { n_layer: 4, n_embd: 128, n_head: 4, ..Gpt2Config::small(512) };
    let levels = [
        (Precision::Fp32, 16.0),
        (Precision::Fp8Te, 16.0),
        (Precision::Fp8O1, 11.0),
        (Precision::Fp8O2, 6.0),
        (Precision::Fp8O2V8, 5.0),
    ];
    for (p, want) in levels {
        let l = plan(octet_lm::spec::ModelSpec::Gpt2(c), p, 2, 16).unwrap();
        let got = l.bytes_per_param();
        // Per-tensor scales add ~0; the 1x128 block scales of v add 4/128 bytes per parameter.
        let want = want + if p == Precision::Fp8O2V8 { 4.0 / 128.0 } else { 0.0 };
        assert!(got >= want && got < want + 0.01, "{p}: {got}");
    }
}

/// Every simplified block at O2 computes fp8-te on its f16 weights and stores fp8-te's gradients in
/// E4M3 (the same staging as GPT-2, through the blocks' own parameter tables: per-layer gains and
/// scalars are units of their own; `ln1w` of sas-p-nonorm, one row, is a top tensor).
#[test]
fn simplified_blocks_at_o2_compute_fp8_te_on_their_f16_weights() {
    use octet_lm::blocks::{BlockKind, BlocksConfig, BlocksLm, init_params, param_layout as blocks_layout};
    let (_, x, y) = golden();
    for kind in BlockKind::ALL {
        let c = BlocksConfig::tiny(kind);
        let mut params = init_params(&c, &blocks_layout(&c), 7);
        // Non-trivial attention (init has W_Q = 0): perturb every parameter a little.
        params.iter_mut().enumerate().for_each(|(i, p)| *p += 0.01 * ((i * 7919 % 101) as f32 / 101.0 - 0.5));
        let r = Recipe::default();
        let mut o2 = BlocksLm::new(c, CpuBackend, params).unwrap().with_precision(Precision::Fp8O2, &r).unwrap();
        let w16 = o2.narrow.as_ref().unwrap().weights_f32();
        let mut te = BlocksLm::new(c, CpuBackend, w16).unwrap().with_precision(Precision::Fp8Te, &r).unwrap();
        let (a, b) = (o2.forward(&x, Some(&y), 2, 8).unwrap(), te.forward(&x, Some(&y), 2, 8).unwrap());
        assert_eq!(a, b, "{kind}: loss");
        o2.backward().unwrap();
        te.backward().unwrap();
        let nw = o2.narrow.as_ref().unwrap();
        let want = ScaledBuf::from_f32(StateFormat::E4M3, nw.units.clone(), &te.grads.data);
        assert_eq!(nw.grads, want, "{kind}: gradients");
    }
}
