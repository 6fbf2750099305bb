//! Finite-difference check of every parameter gradient of every architecture and block, one test
//! body over the configurations, in f64 on the reference backend: GPT-2; the five blocks (Pre-LN,
//! Parallel, SAS, SAS-P, SAS-P without norm) on GPT-2's embeddings and Llama-style (RoPE,
//! grouped-query keys, SwiGLU); Llama tied with grouped-query attention and untied with one kv head.

use octet_core::Rng;
use octet_kernels::RefBackend;
use octet_lm::blocks::{BlockKind, BlocksConfig};
use octet_lm::decoder::{Arch, Decoder};
use octet_lm::gpt2::Gpt2Config;
use octet_lm::llama::LlamaConfig;

/// Scalars and gains (norms, alpha, beta, gamma, branch gains, alpha_V, beta_V) start around 1,
/// everything else (matrices, biases) around 0, all random so that no gradient is trivially zero.
fn is_gain(name: &str, shape: &[usize]) -> bool {
    (name.starts_with("ln") && name.ends_with('w'))
        || name.ends_with("norm")
        || name.starts_with("attn_")
        || name.ends_with("_gain")
        || name.starts_with("v0_")
        || shape.len() < 2 && !name.ends_with('b')
}

fn check<A: Arch>(cfg: A, seed: u64) {
    check_masked(cfg, seed, false)
}

/// `mask`: every third target is IGNORE_TARGET (masked cross-entropy: the loss is the mean over the
/// other positions, and its gradient is what is checked).
fn check_masked<A: Arch>(cfg: A, seed: u64, mask: bool) {
    let (b, t) = (2, 5);
    let layout = cfg.param_layout();
    let mut rng = Rng::new(seed);
    let params: Vec<f64> = layout
        .specs()
        .iter()
        .flat_map(|s| {
            let gain = is_gain(&s.name, &s.shape) && !s.name.ends_with("qkv") && s.name != "attn_output";
            (0..s.numel()).map(|_| if gain { 1.0 + 0.2 * rng.normal() } else { 0.3 * rng.normal() }).collect::<Vec<_>>()
        })
        .collect();
    let v = cfg.dims().vocab_size;
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let mut targets: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    if mask {
        targets.iter_mut().step_by(3).for_each(|x| *x = octet_kernels::IGNORE_TARGET);
    }
    let mut m = Decoder::new(cfg, RefBackend::<f64>::new(), params.clone()).unwrap();
    m.forward(&tokens, Some(&targets), b, t).unwrap();
    m.backward().unwrap();
    let analytic = m.grads.data.clone();

    // eps = 3e-6: the truncation error O(eps^2 f''') of the Llama-style blocks (RoPE base 10, three
    // layers) reaches 7e-6 relative at eps = 1e-5; at 3e-6 it is 9x smaller, and roundoff
    // ulp(loss)/eps stays ~3e-10 absolute.
    let eps = 3e-6;
    let mut worst = (0.0f64, String::new());
    let mut max_abs_err = 0.0f64;
    for s in layout.specs() {
        let mut nonzero = false;
        for k in 0..s.numel() {
            let i = s.offset + k;
            let mut loss_at = |x: f64| {
                m.params.data[i] = x;
                m.forward(&tokens, Some(&targets), b, t).unwrap().unwrap()
            };
            let fd = (loss_at(params[i] + eps) - loss_at(params[i] - eps)) / (2.0 * eps);
            m.params.data[i] = params[i];
            nonzero |= analytic[i] != 0.0;
            max_abs_err = max_abs_err.max((fd - analytic[i]).abs());
            // |g - fd| <= 1e-9 + 1e-6 |fd| bounds both errors above with a margin.
            let err = (fd - analytic[i]).abs() - (1e-9 + 1e-6 * fd.abs());
            if err > worst.0 {
                worst = (err, format!("{}[{k}]: fd {fd:e} vs analytic {:e}", s.name, analytic[i]));
            }
        }
        assert!(nonzero, "{cfg:?}: gradient of {} is all zero", s.name);
    }
    println!("{cfg:?}: {} parameters, max |analytic - fd| = {max_abs_err:e}", layout.total());
    assert!(worst.0 <= 0.0, "{cfg:?}: gradient outside 1e-9 + 1e-6 |fd| by {:e} at {}", worst.0, worst.1);
    // Padded embedding rows get no gradient (the loss ignores their logits; no token maps there).
    let emb = layout.specs()[0].clone();
    let d = cfg.dims().n_embd;
    assert!(m.grads.data[emb.offset + v * d..emb.offset + emb.numel()].iter().all(|&g| g == 0.0));
}

fn gpt2_shape() -> Gpt2Config {
    Gpt2Config { vocab_size: 13, padded_vocab: 16, max_seq_len: 6, n_layer: 2, n_head: 2, n_embd: 8 }
}

fn llama_shape() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 13,
        padded_vocab: 16,
        max_seq_len: 6,
        // Three layers: layer 0 (value reparameterisation, the only norm of sas-p-nonorm), and two more.
        n_layer: 3,
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
fn gpt2_gradients_match_central_differences() {
    check(gpt2_shape(), 3);
}

#[test]
fn llama_gradients_match_central_differences_tied_gqa_and_untied_single_kv_head() {
    check(LlamaConfig { n_layer: 2, ..llama_shape() }, 3);
    check(LlamaConfig { n_layer: 2, n_kv_head: 1, tied_embeddings: false, ..llama_shape() }, 4);
}

#[test]
fn every_block_on_gpt2_embeddings_matches_central_differences() {
    for kind in BlockKind::ALL {
        check(BlocksConfig::from_gpt2(&Gpt2Config { n_layer: 3, ..gpt2_shape() }, kind), 3);
    }
}

#[test]
fn every_block_llama_style_matches_central_differences() {
    for kind in BlockKind::ALL {
        check(BlocksConfig::from_llama(&llama_shape(), kind), 5);
    }
}

#[test]
fn llama_masked_loss_gradients_match_central_differences() {
    check_masked(LlamaConfig { n_layer: 2, ..llama_shape() }, 6, true);
}

/// The masked mean equals the plain mean over the kept positions only: a batch whose ignored targets
/// are replaced by anything else, scored position by position, gives the same kept-row losses.
#[test]
fn masked_loss_is_the_mean_over_unmasked_positions() {
    use octet_kernels::IGNORE_TARGET;
    let cfg = LlamaConfig { n_layer: 2, ..llama_shape() };
    let mut rng = Rng::new(8);
    let params: Vec<f64> = (0..cfg.param_layout().total()).map(|_| 0.3 * rng.normal()).collect();
    let (b, t) = (1, 5);
    let tokens: Vec<u32> = (0..t).map(|_| rng.below(13) as u32).collect();
    let full: Vec<u32> = (0..t).map(|_| rng.below(13) as u32).collect();
    let mut m = Decoder::new(cfg, RefBackend::<f64>::new(), params).unwrap();
    m.forward(&tokens, Some(&full), b, t).unwrap();
    let per_row = m.row_losses().to_vec();
    let masked: Vec<u32> = full.iter().enumerate().map(|(i, &x)| if i < 2 { IGNORE_TARGET } else { x }).collect();
    let loss = m.forward(&tokens, Some(&masked), b, t).unwrap().unwrap();
    let want = per_row[2..].iter().sum::<f64>() / 3.0;
    assert!((loss - want).abs() < 1e-12, "masked loss {loss} vs mean of kept rows {want}");
    // Nothing kept: loss 0 and a zero gradient (not NaN).
    let none = vec![IGNORE_TARGET; t];
    assert_eq!(m.forward(&tokens, Some(&none), b, t).unwrap(), Some(0.0));
    m.zero_grad();
    m.backward().unwrap();
    assert!(m.grads.data.iter().all(|&g| g == 0.0));
}
