//! Each block trains: 30 AdamW steps on one tiny repeated batch lower the loss, at fp32, bf16 and
//! fp8-te (block linears cast; the shaped-attention gains stay f32), with the real initialisation
//! (W_Q = 0, identity shaped attention, beta_FF = 0.1).

use octet_core::scaling::Recipe;
use octet_kernels::CpuBackend;
use octet_lm::blocks::{BlockKind, BlocksConfig, BlocksLm, decay_flags};
use octet_lm::precision::Precision;
use octet_optim::{AdamW, AdamWConfig};

#[test]
fn every_block_learns_a_repeated_sequence_at_every_precision() {
    let (b, t) = (2, 16);
    // A repeated pattern of 7 tokens: predictable after a few positions.
    let seq: Vec<u32> = (0..b * t + 1).map(|i| ((i * 5) % 7 + 3) as u32).collect();
    let (x, y) = (&seq[..b * t], &seq[1..]);
    for kind in BlockKind::ALL {
        let mut finals = vec![];
        for p in [Precision::Fp32, Precision::Bf16, Precision::Fp8Te] {
            let cfg = BlocksConfig::tiny(kind);
            let mut m = BlocksLm::init(cfg, CpuBackend, p, &Recipe::default(), 7).unwrap();
            let layout = m.params.layout.clone();
            let mut opt = AdamW::new(layout.clone(), decay_flags(&layout), AdamWConfig::default());
            let mut losses = vec![];
            for _ in 0..30 {
                m.zero_grad();
                losses.push(m.forward(x, Some(y), b, t).unwrap().unwrap());
                m.backward().unwrap();
                let g = m.grads.data.clone();
                opt.update(&mut m.params.data, &g, 3e-3);
            }
            let (first, last) = (losses[0], *losses.last().unwrap());
            // Initial loss ~ ln(61) = 4.11; memorising the pattern must at least halve it.
            assert!((first - 61f64.ln()).abs() < 0.1, "{kind} {p}: initial loss {first}");
            assert!(last < 0.5 * first, "{kind} {p}: loss {first} -> {last}");
            if p.is_fp8() {
                let per = kind.linears_per_layer() * cfg.n_layer + usize::from(kind.is_shaped());
                assert_eq!(m.scaling.len(), per);
                assert!(m.scaling.iter().all(|s| s.input.amax_history.is_full()), "{kind}: FP8 scaling unused");
            }
            finals.push(last);
        }
        // The cast levels follow fp32 closely on this easy problem.
        for (i, p) in ["bf16", "fp8-te"].iter().enumerate() {
            assert!((finals[i + 1] - finals[0]).abs() < 0.1 + 0.1 * finals[0], "{kind} {p}: {finals:?}");
        }
    }
}

#[test]
fn blocks_are_causal_and_kinds_round_trip_by_name() {
    // Changing the last token must not change any earlier position's logits (shaped attention's
    // alpha I and gamma C are causal too).
    for kind in BlockKind::ALL {
        let cfg = BlocksConfig::tiny(kind);
        let mut m = BlocksLm::init(cfg, CpuBackend, Precision::Fp32, &Recipe::default(), 1).unwrap();
        let mut x: Vec<u32> = (0..8).collect();
        m.forward(&x, None, 1, 8).unwrap();
        let before = m.logits().to_vec();
        x[7] = 40;
        m.forward(&x, None, 1, 8).unwrap();
        let vp = cfg.padded_vocab;
        assert_eq!(&m.logits()[..7 * vp], &before[..7 * vp], "{kind}: not causal");
    }
    assert!("sas-q".parse::<BlockKind>().unwrap_err().to_string().contains("sas-p-nonorm"));
    for k in BlockKind::ALL {
        assert_eq!(k.to_string().parse::<BlockKind>().unwrap(), k);
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
    }
}
