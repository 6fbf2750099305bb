//! Resizing a Llama's vocabulary for an augmented tokenizer (ChipNeMo): new rows are appended after
//! the base vocabulary; each new input-embedding row is the mean of the base embeddings of the
//! token's pieces under the base tokenizer, each new output-head row is zero.
//!
//! The output head is always untied in the result (`tied_embeddings = false`, a separate `output`
//! tensor): SmolLM2 ties its head to the token embedding, and a mean-initialised input row cannot
//! also be a zero output row. The untied head's first V rows are the base head (the embedding when
//! the base was tied), so on any base-vocabulary input the extended model computes the same hidden
//! states and the same logits for every base token, and logit 0 for every new token.
//!
//! Padding rows of the base (`padded_vocab > vocab_size`) are dropped; the result has
//! `padded_vocab = vocab_size = V + new`.

use octet_core::{Error, Result};
use octet_lm::llama::{LlamaConfig, param_layout};

/// The extended configuration and parameters (laid out as `param_layout` of that configuration).
/// `pieces[k]` are the base-vocabulary ids whose embedding mean initialises new token `V + k`.
pub fn extend_vocab(cfg: &LlamaConfig, params: &[f32], pieces: &[Vec<u32>]) -> Result<(LlamaConfig, Vec<f32>)> {
    let old = param_layout(cfg);
    if params.len() != old.total() {
        return Err(Error::Shape { name: "params".into(), expected: vec![old.total()], found: vec![params.len()] });
    }
    let (v, c) = (cfg.vocab_size, cfg.n_embd);
    if let Some((k, p)) = pieces.iter().enumerate().find(|(_, p)| p.is_empty() || p.iter().any(|&i| i as usize >= v)) {
        return Err(Error::config("pieces", format!("new token {k} has pieces {p:?}: need 1+ ids < {v}")));
    }
    let vn = v + pieces.len();
    let new_cfg = LlamaConfig { vocab_size: vn, padded_vocab: vn, tied_embeddings: false, ..*cfg };
    let layout = param_layout(&new_cfg);
    let mut out = vec![0f32; layout.total()];
    let get = |name: &str| &params[old.range(old.expect_id(name))];
    let emb = get("token_embd");
    let head = if cfg.tied_embeddings { emb } else { get("output") };
    for spec in layout.specs() {
        let dst = &mut out[spec.range()];
        match spec.name.as_str() {
            "token_embd" => {
                dst[..v * c].copy_from_slice(&emb[..v * c]);
                for (k, p) in pieces.iter().enumerate() {
                    let row = &mut dst[(v + k) * c..(v + k + 1) * c];
                    for &i in p {
                        let src = &emb[i as usize * c..(i as usize + 1) * c];
                        row.iter_mut().zip(src).for_each(|(r, &s)| *r += s);
                    }
                    let inv = 1.0 / p.len() as f32;
                    row.iter_mut().for_each(|r| *r *= inv);
                }
            }
            "output" => dst[..v * c].copy_from_slice(&head[..v * c]), // new rows stay zero
            name => dst.copy_from_slice(get(name)),
        }
    }
    Ok((new_cfg, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use octet_core::Tolerance;
    use octet_kernels::CpuBackend;
    use octet_lm::llama::{Llama, init_params};

    /// The extended tiny model's logits equal the base's on base tokens; new tokens get logit 0.
    #[test]
    fn extended_model_matches_the_base_on_base_tokens_at_initialisation() {
        let cfg = LlamaConfig::tiny(); // tied, vocab 61 padded to 64
        let params = init_params(&cfg, &param_layout(&cfg), 7);
        let pieces = vec![vec![3, 4], vec![10, 11, 12], vec![60]];
        let (ncfg, nparams) = extend_vocab(&cfg, &params, &pieces).unwrap();
        assert_eq!((ncfg.vocab_size, ncfg.padded_vocab, ncfg.tied_embeddings), (64, 64, false));

        let c = cfg.n_embd;
        let emb = &nparams[param_layout(&ncfg).range(param_layout(&ncfg).expect_id("token_embd"))];
        let old = &params[param_layout(&cfg).range(param_layout(&cfg).expect_id("token_embd"))];
        for j in 0..c {
            let mean = (old[10 * c + j] + old[11 * c + j] + old[12 * c + j]) / 3.0;
            assert!((emb[62 * c + j] - mean).abs() <= 1e-7, "mean of the pieces");
        }

        let (b, t) = (2, 8);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 61) as u32).collect();
        let mut base = Llama::new(cfg, CpuBackend, params).unwrap();
        let mut ext = Llama::new(ncfg, CpuBackend, nparams).unwrap();
        base.forward(&tokens, None, b, t).unwrap();
        ext.forward(&tokens, None, b, t).unwrap();
        let (lb, le) = (base.logits(), ext.logits());
        let (vp, vn) = (cfg.padded_vocab, ncfg.padded_vocab);
        for r in 0..b * t {
            let want = &lb[r * vp..r * vp + 61];
            let got = &le[r * vn..r * vn + 61];
            Tolerance::F32.assert_close(&format!("row {r} base logits"), got, want);
            assert!(le[r * vn + 61..(r + 1) * vn].iter().all(|&x| x == 0.0), "new-token logits are zero");
        }
    }

    #[test]
    fn pieces_outside_the_base_vocabulary_are_refused() {
        let cfg = LlamaConfig::tiny();
        let params = init_params(&cfg, &param_layout(&cfg), 1);
        let e = extend_vocab(&cfg, &params, &[vec![61]]).unwrap_err().to_string();
        assert!(e.contains("pieces"), "{e}");
        assert!(extend_vocab(&cfg, &params, &[vec![]]).is_err());
    }
}
