//! Finite-difference check of every Llama parameter gradient, in f64 on the reference backend: tied
//! embeddings with grouped-query attention (4 query heads on 2 kv heads), and a separate output head
//! with a single kv head.

use octet_core::Rng;
use octet_kernels::RefBackend;
use octet_lm::llama::{Llama, LlamaConfig, param_layout};

fn check(cfg: LlamaConfig, seed: u64) {
    let (b, t) = (2, 5);
    let layout = param_layout(&cfg);
    let mut rng = Rng::new(seed);
    // Random everything (norm gains too) so no gradient is trivially zero.
    let params: Vec<f64> = layout
        .specs()
        .iter()
        .flat_map(|s| {
            let gain = s.name.ends_with("norm");
            (0..s.numel()).map(|_| if gain { 1.0 + 0.2 * rng.normal() } else { 0.3 * rng.normal() }).collect::<Vec<_>>()
        })
        .collect();
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(cfg.vocab_size) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(cfg.vocab_size) as u32).collect();
    let mut m = Llama::new(cfg, RefBackend::<f64>::new(), params.clone()).unwrap();
    m.forward(&tokens, Some(&targets), b, t).unwrap();
    m.backward().unwrap();
    let analytic = m.grads.data.clone();

    let eps = 1e-5;
    let mut worst = (0.0f64, String::new());
    let mut max_abs_err = 0.0f64;
    for s in layout.specs() {
        for k in 0..s.numel() {
            let i = s.offset + k;
            let mut loss_at = |x: f64| {
                m.params.data[i] = x;
                m.forward(&tokens, Some(&targets), b, t).unwrap().unwrap()
            };
            let fd = (loss_at(params[i] + eps) - loss_at(params[i] - eps)) / (2.0 * eps);
            m.params.data[i] = params[i];
            max_abs_err = max_abs_err.max((fd - analytic[i]).abs());
            // Central differences err by O(eps^2 f''') ~ 1e-10 relative plus roundoff
            // ulp(loss)/eps ~ 1e-10 absolute: |g - fd| <= 1e-9 + 1e-6 |fd| leaves a 10x margin.
            let err = (fd - analytic[i]).abs() - (1e-9 + 1e-6 * fd.abs());
            if err > worst.0 {
                worst = (err, format!("{}[{k}]: fd {fd:e} vs analytic {:e}", s.name, analytic[i]));
            }
        }
    }
    println!("{} parameters, max |analytic - fd| = {max_abs_err:e}", layout.total());
    assert!(worst.0 <= 0.0, "gradient outside 1e-9 + 1e-6 |fd| by {:e} at {}", worst.0, worst.1);
    // Padded embedding rows get no gradient (the loss ignores their logits; no token maps there).
    let wte = m.grads.by_name("token_embd").unwrap();
    assert!(wte[cfg.vocab_size * cfg.n_embd..].iter().all(|&g| g == 0.0));
}

fn small() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 13,
        padded_vocab: 16,
        max_seq_len: 6,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 16,
        ffn_hidden: 12,
        // A small base so that every pair of the 4-wide heads turns by a sizeable angle over 5 positions.
        rope_base: 10.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
    }
}

#[test]
fn llama_gradients_match_central_differences_tied_gqa() {
    check(small(), 3);
}

#[test]
fn llama_gradients_match_central_differences_untied_single_kv_head() {
    check(LlamaConfig { n_kv_head: 1, tied_embeddings: false, ..small() }, 4);
}
