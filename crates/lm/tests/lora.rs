//! LoRA: the adapters' gradients against central differences (f64, reference backend, masked and
//! plain targets), a zero B leaving the model unchanged, merging (W += s B A) giving the adapted
//! model's logits, and a training step that moves only the adapters with adapter-only optimizer state.

use octet_core::Rng;
use octet_core::scaling::Recipe;
use octet_kernels::{CpuBackend, RefBackend};
use octet_lm::decoder::{Arch, Decoder};
use octet_lm::llama::LlamaConfig;
use octet_lm::model::LanguageModel;
use octet_lm::precision::Precision;
use octet_lm::step::{GradScaler, Optimizer, train_step};

fn cfg() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 13,
        padded_vocab: 16,
        max_seq_len: 6,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 16,
        ffn_hidden: 12,
        rope_base: 10.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
    }
}

fn params(c: &LlamaConfig, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    c.param_layout()
        .specs()
        .iter()
        .flat_map(|s| {
            let gain = s.name.ends_with("norm");
            (0..s.numel()).map(|_| if gain { 1.0 + 0.2 * rng.normal() } else { 0.3 * rng.normal() }).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn adapter_gradients_match_central_differences() {
    let c = cfg();
    let (b, t) = (2, 5);
    let mut rng = Rng::new(4);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(13) as u32).collect();
    let mut targets: Vec<u32> = (0..b * t).map(|_| rng.below(13) as u32).collect();
    targets[3] = octet_kernels::IGNORE_TARGET;
    let mut m = Decoder::new(c, RefBackend::<f64>::new(), params(&c, 3)).unwrap();
    m.enable_lora(2, 4.0, 5).unwrap();
    // B starts at zero (dA would be zero); make it random so that every adapter gradient is checked.
    let lo = m.lora.as_mut().unwrap();
    let n = lo.params.data.len();
    for (i, s) in lo.params.layout.clone().specs().iter().enumerate() {
        if s.name.ends_with(".b") {
            for x in &mut lo.params.data[s.range()] {
                *x = 0.3 * Rng::new(i as u64).normal();
            }
        }
    }
    let p0 = m.lora.as_ref().unwrap().params.data.clone();
    m.zero_grad();
    m.forward(&tokens, Some(&targets), b, t).unwrap();
    m.backward().unwrap();
    let analytic = m.lora.as_ref().unwrap().grads.data.clone();
    let eps = 3e-6;
    let mut worst = 0.0f64;
    for i in 0..n {
        let mut at = |x: f64| {
            m.lora.as_mut().unwrap().params.data[i] = x;
            m.forward(&tokens, Some(&targets), b, t).unwrap().unwrap()
        };
        let fd = (at(p0[i] + eps) - at(p0[i] - eps)) / (2.0 * eps);
        m.lora.as_mut().unwrap().params.data[i] = p0[i];
        let err = (fd - analytic[i]).abs() - (1e-9 + 1e-6 * fd.abs());
        worst = worst.max(err);
        assert!(err <= 0.0, "adapter parameter {i}: fd {fd:e} vs analytic {:e}", analytic[i]);
    }
    assert!(analytic.iter().all(|g| g.is_finite()) && analytic.iter().any(|&g| g != 0.0));
    println!("{n} adapter parameters, worst excess {worst:e}");
}

/// Logits (B*T, Vp) of a forward without targets.
fn logits(m: &mut dyn LanguageModel, tokens: &[u32], b: usize, t: usize) -> Vec<f32> {
    m.forward(tokens, None, b, t).unwrap();
    m.logits().to_vec()
}

#[test]
fn zero_b_changes_nothing_and_merging_reproduces_the_adapted_model() {
    let c = cfg();
    let p: Vec<f32> = params(&c, 7).iter().map(|&x| x as f32).collect();
    let tokens: Vec<u32> = (0..10).map(|i| (i * 5 % 13) as u32).collect();
    let mut base = Decoder::new(c, CpuBackend, p.clone()).unwrap();
    let want = logits(&mut base, &tokens, 2, 5);
    let mut m = Decoder::new(c, CpuBackend, p).unwrap();
    m.enable_lora(4, 8.0, 1).unwrap();
    assert_eq!(logits(&mut m, &tokens, 2, 5), want, "B = 0: the adapted model is the base model");
    let lo = m.lora.as_mut().unwrap();
    let mut rng = Rng::new(2);
    lo.params.data.iter_mut().for_each(|x| *x += 0.05 * rng.normal() as f32);
    let adapted = logits(&mut m, &tokens, 2, 5);
    assert!(adapted.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3));
    let mut merged = Decoder::new(c, CpuBackend, m.merged_params().unwrap()).unwrap();
    let got = logits(&mut merged, &tokens, 2, 5);
    octet_core::Tolerance::F32.assert_close("merged logits", &got, &adapted);
}

#[test]
fn a_lora_step_moves_only_the_adapters_and_its_optimizer_holds_only_them() {
    let c = cfg();
    let spec = octet_lm::spec::ModelSpec::Llama(c);
    let mut m = spec.init(Precision::Bf16, &Recipe::default(), 3).unwrap();
    m.enable_lora(2, 4.0, 3).unwrap();
    let before = m.plain().unwrap().0.data.clone();
    let a0 = m.lora_params().unwrap().data.clone();
    let mut opt = Optimizer::for_model(m.as_ref(), octet_optim::AdamWConfig::default());
    let Optimizer::Lora(o) = &opt else { panic!("a LoRA model gets the adapter optimizer") };
    assert_eq!(o.m.data.len(), a0.len());
    let (m_bytes, v_bytes) = opt.state_bytes();
    assert_eq!((m_bytes, v_bytes), (4 * a0.len(), 4 * a0.len()));
    let x: Vec<u32> = (0..10).map(|i| (i % 13) as u32).collect();
    let y: Vec<u32> = (0..10).map(|i| ((i + 1) % 13) as u32).collect();
    let mut sc = GradScaler::default();
    for _ in 0..2 {
        train_step(m.as_mut(), &mut opt, &mut sc, &x, &y, 2, 5, 1.0, 1e-2).unwrap();
    }
    assert_eq!(m.plain().unwrap().0.data, before, "base weights frozen");
    assert_ne!(m.lora_params().unwrap().data, a0, "adapters trained");
    let ledger = octet_lm::memory::Ledger::of(m.as_ref(), opt.state_bytes()).to_json();
    assert_eq!(ledger["bytes"]["adam_m"], 4 * a0.len());
    // LoRA is for the plain levels.
    let mut narrow = spec.init(Precision::Fp8O2, &Recipe::default(), 3).unwrap();
    assert!(narrow.enable_lora(2, 4.0, 3).unwrap_err().to_string().contains("plain levels"));
}
