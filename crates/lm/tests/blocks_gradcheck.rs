//! Finite-difference check of every parameter gradient of the five blocks (Pre-LN, Parallel, SAS,
//! SAS-P, SAS-P without norm), in f64 on the reference backend.

use octet_core::Rng;
use octet_kernels::RefBackend;
use octet_lm::blocks::{BlockKind, BlocksConfig, BlocksLm, param_layout};

fn check(kind: BlockKind) {
    // Three layers: layer 0 (value reparameterisation, the only norm of sas-p-nonorm), and two more.
    let cfg = BlocksConfig {
        vocab_size: 13,
        padded_vocab: 16,
        max_seq_len: 6,
        n_layer: 3,
        n_head: 2,
        n_embd: 8,
        block: kind,
    };
    let (b, t) = (2, 5);
    let layout = param_layout(&cfg);
    let mut rng = Rng::new(3);
    // Random everything (W_Q, dW and the gains too) so no gradient is trivially zero: gains around 1
    // (norms, alpha, beta, gamma, branch gains), matrices around 0.
    let params: Vec<f64> = layout
        .specs()
        .iter()
        .flat_map(|s| {
            let matrix = s.shape.len() >= 2 && !s.name.starts_with("attn_") && !s.name.starts_with("ln");
            let n = s.numel();
            (0..n).map(|_| if matrix { 0.3 * rng.normal() } else { 1.0 + 0.2 * rng.normal() }).collect::<Vec<_>>()
        })
        .collect();
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(cfg.vocab_size) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(cfg.vocab_size) as u32).collect();
    let mut m = BlocksLm::new(cfg, RefBackend::<f64>::new(), params.clone()).unwrap();
    m.forward(&tokens, Some(&targets), b, t).unwrap();
    m.backward().unwrap();
    let analytic = m.grads.data.clone();

    let eps = 1e-5;
    let mut worst = (0.0f64, String::new());
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
            // Central differences err by O(eps^2 f''') ~ 1e-10 relative plus roundoff
            // ulp(loss)/eps ~ 1e-10 absolute: |g - fd| <= 1e-9 + 1e-6 |fd| leaves a 10x margin.
            let err = (fd - analytic[i]).abs() - (1e-9 + 1e-6 * fd.abs());
            if err > worst.0 {
                worst = (err, format!("{}[{k}]: fd {fd:e} vs analytic {:e}", s.name, analytic[i]));
            }
        }
        assert!(nonzero, "{kind}: gradient of {} is all zero", s.name);
    }
    assert!(worst.0 <= 0.0, "{kind}: gradient outside 1e-9 + 1e-6 |fd| by {:e} at {}", worst.0, worst.1);
    // Padded embedding rows get no gradient (the loss ignores their logits; no token maps there).
    let wte = m.grads.by_name("wte").unwrap();
    assert!(wte[cfg.vocab_size * cfg.n_embd..].iter().all(|&g| g == 0.0));
}

#[test]
fn preln_gradients_match_central_differences() {
    check(BlockKind::PreLn);
}

#[test]
fn parallel_gradients_match_central_differences() {
    check(BlockKind::Parallel);
}

#[test]
fn sas_gradients_match_central_differences() {
    check(BlockKind::Sas);
}

#[test]
fn sas_p_gradients_match_central_differences() {
    check(BlockKind::SasP);
}

#[test]
fn sas_p_nonorm_gradients_match_central_differences() {
    check(BlockKind::SasPNoNorm);
}
