//! Held-out bits per byte: the model's negative log-likelihood of held-out documents, in bits per UTF-8
//! byte of the text, so models with different tokenizers (the base and the augmented one) compare.
//!
//! bpb = (sum over the document's tokens of -ln p(token | preceding tokens of its window)) / ln 2 /
//! (UTF-8 bytes of the document). Each document is encoded on its own and conditioned on the model's
//! document-start token ([`super::EvalModel::doc_start`]: BOS, else EOS), so every one of its tokens is
//! predicted. Chunking: the sequence [start, t1 .. tN] is cut into consecutive windows of `context`
//! predicted tokens; window w feeds tokens w*context .. w*context+context-1 and predicts the next one of
//! each; windows carry no context over (each restarts from its own first token), so a long document's
//! score is slightly pessimistic against a sliding window. Only `split = heldout` documents are scored
//! (the split no training step reads).

use std::path::Path;

use octet_core::{Error, Result};
use octet_lm::model::LanguageModel;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::EvalModel;
use crate::corpus::{self, Document, Split};

/// Bits per byte of one document set.
#[derive(Clone, Debug, Serialize)]
pub struct Bpb {
    /// Which set ("domain", "general", or a file name).
    pub set: String,
    pub documents: usize,
    pub bytes: usize,
    pub tokens: usize,
    pub nll_nats: f64,
    pub bits_per_byte: f64,
    pub tokens_per_byte: f64,
    /// Predicted tokens per window.
    pub context: usize,
    /// Documents were cut to their first this many bytes (0: whole).
    pub max_doc_bytes: usize,
}

/// The held-out documents of a corpus file (`domain.jsonl`, `general.jsonl`), at most `max_documents`
/// (0: all) in file order.
pub fn heldout(path: &Path, max_documents: usize) -> Result<Vec<Document>> {
    let docs = corpus::read_jsonl(path)?;
    let mut held: Vec<Document> = docs.into_iter().filter(|d| d.split == Split::Heldout).collect();
    if held.is_empty() {
        return Err(Error::format(path, "split", "no held-out documents (split = \"heldout\")"));
    }
    if max_documents > 0 {
        held.truncate(max_documents);
    }
    Ok(held)
}

/// The first `max` bytes of `s` (0: all), cut back to a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if max == 0 || s.len() <= max {
        return s;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

/// Bits per byte of `texts` under `model` (module doc); `context` is capped by the model's context.
pub fn bits_per_byte(
    model: &mut EvalModel,
    set: &str,
    texts: &[&str],
    context: usize,
    max_doc_bytes: usize,
) -> Result<Bpb> {
    let EvalModel { model, tokenizer, doc_start, .. } = model;
    bits_per_byte_of(model, tokenizer, *doc_start, set, texts, context, max_doc_bytes)
}

/// [`bits_per_byte`] of any language model (e.g. one being trained, at its precision level) with its
/// tokenizer and document-start token.
pub fn bits_per_byte_of(
    model: &mut dyn LanguageModel,
    tokenizer: &Tokenizer,
    doc_start: u32,
    set: &str,
    texts: &[&str],
    context: usize,
    max_doc_bytes: usize,
) -> Result<Bpb> {
    let context = context.min(model.max_seq_len()).max(1);
    let (mut nll, mut tokens, mut bytes, mut documents) = (0.0f64, 0usize, 0usize, 0usize);
    for text in texts {
        let text = prefix(text, max_doc_bytes);
        if text.is_empty() {
            continue;
        }
        let mut ids = vec![doc_start];
        let enc = tokenizer.encode(text, false).map_err(|e| Error::Other(format!("tokenize: {e}")))?;
        ids.extend(enc.get_ids());
        for start in (0..ids.len() - 1).step_by(context) {
            let end = (start + context).min(ids.len() - 1);
            let (inp, tgt) = (&ids[start..end], &ids[start + 1..end + 1]);
            let mean = model.forward(inp, Some(tgt), 1, inp.len())?.expect("targets give a loss");
            nll += mean * inp.len() as f64;
        }
        tokens += ids.len() - 1;
        bytes += text.len();
        documents += 1;
    }
    if bytes == 0 {
        return Err(Error::config(set, "no text to score"));
    }
    Ok(Bpb {
        set: set.to_string(),
        documents,
        bytes,
        tokens,
        nll_nats: nll,
        bits_per_byte: nll / std::f64::consts::LN_2 / bytes as f64,
        tokens_per_byte: tokens as f64 / bytes as f64,
        context,
        max_doc_bytes,
    })
}
