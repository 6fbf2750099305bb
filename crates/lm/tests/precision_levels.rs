//! Precision levels against fp32 on the golden tiny model: losses, gradients and a short training run.
//! Bounds follow the formats: bf16 operands carry 2^-9 relative rounding, E4M3 2^-4 and E5M2 2^-3, so
//! per-element gradients differ by percents while their direction (cosine) and the loss stay close.

use octet_core::scaling::Recipe;
use octet_kernels::CpuBackend;
use octet_lm::gpt2::{Gpt2, Gpt2Config, decay_flags, param_layout};
use octet_lm::precision::Precision;
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

#[test]
fn unimplemented_levels_are_refused_clearly() {
    let (params, _, _) = golden();
    for p in [Precision::Fp8O1, Precision::Fp8O2] {
        let e =
            Gpt2::new(Gpt2Config::tiny(), CpuBackend, params.clone()).unwrap().with_precision(p, &Recipe::default());
        let msg = e.err().unwrap().to_string();
        assert!(msg.contains("precision") && msg.contains(p.name()), "{msg}");
    }
    assert!("fp9".parse::<Precision>().unwrap_err().to_string().contains("fp9"));
}
