//! A domain cloze set built from held-out documentation, scored by log-likelihood: which of four
//! identifiers from the same document comes next.
//!
//! How the set is built ([`build`]), per held-out `documentation` document, deterministically:
//! - names: words `[A-Za-z_][A-Za-z0-9_]*` of at least 4 characters that contain `_` and a letter and
//!   do not start with a digit — signal, register, field and parameter names in the OpenTitan/Ibex
//!   docs (`intr_state`, `CTRL_EN`, `alert_tx_o`); a document needs at least 4 distinct names;
//! - blanks: occurrences of a name with at least [`MIN_CONTEXT_BYTES`] bytes of text before them; up to
//!   `per_doc` of them, in the order of a hash of (document id, byte offset), each with a different
//!   answer;
//! - the item: the context is the text before the blank (its last [`MAX_CONTEXT_BYTES`] bytes, cut to
//!   a character boundary), spaces right before the blank moved into every option (BPE tokenizers
//!   attach a space to the next word); the options are the answer and 3 other distinct names of the
//!   same document picked by hash, in an order picked by hash.
//!
//! Scoring ([`score`]): each option's summed log-likelihood given the context (the tokens of
//! `context + option` after their common prefix with the tokens of `context`, so a merge across the
//! boundary is scored, not lost), and the same divided by the option's UTF-8 bytes. The model picks the
//! option with the highest score (first on ties); chance is 1/4.

use octet_core::{Error, Result};
use serde::Serialize;

use super::EvalModel;
use crate::corpus::{Category, Document, Split, hash64, mix64};

pub const OPTIONS: usize = 4;
pub const MIN_CONTEXT_BYTES: usize = 200;
pub const MAX_CONTEXT_BYTES: usize = 1500;

/// One question.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ClozeItem {
    pub doc_id: String,
    pub path: String,
    pub context: String,
    pub options: Vec<String>,
    pub answer: usize,
}

fn is_name(w: &str) -> bool {
    w.len() >= 4
        && w.contains('_')
        && w.chars().any(|c| c.is_ascii_alphabetic())
        && !w.starts_with(|c: char| c.is_ascii_digit())
}

/// (byte offset, word) of every identifier-like word of `text`.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        let w = c.is_ascii_alphanumeric() || c == '_';
        match (w, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// The cloze items of the held-out documentation among `docs` (module doc); at most `per_doc` per
/// document and `max_items` in all (0: no limit).
pub fn build(docs: &[Document], per_doc: usize, max_items: usize) -> Vec<ClozeItem> {
    let mut items = Vec::new();
    for d in docs.iter().filter(|d| d.split == Split::Heldout && d.category == Category::Documentation) {
        let ws: Vec<(usize, &str)> = words(&d.text).into_iter().filter(|(_, w)| is_name(w)).collect();
        let mut names: Vec<&str> = ws.iter().map(|&(_, w)| w).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() < OPTIONS {
            continue;
        }
        let h = |x: u64| mix64(hash64(d.id.as_bytes()) ^ mix64(x));
        let mut blanks: Vec<(usize, &str)> = ws.iter().copied().filter(|&(at, _)| at >= MIN_CONTEXT_BYTES).collect();
        blanks.sort_by_key(|&(at, _)| h(at as u64));
        let mut used: Vec<&str> = Vec::new();
        for (at, answer) in blanks {
            if used.len() == per_doc || (max_items > 0 && items.len() == max_items) {
                break;
            }
            if used.contains(&answer) {
                continue;
            }
            used.push(answer);
            let mut from = at.saturating_sub(MAX_CONTEXT_BYTES);
            while !d.text.is_char_boundary(from) {
                from += 1;
            }
            let before = &d.text[from..at];
            let ctx = before.trim_end_matches([' ', '\t']);
            let space = &before[ctx.len()..];
            let mut others: Vec<&str> = names.iter().copied().filter(|&n| n != answer).collect();
            others.sort_by_key(|n| h(hash64(n.as_bytes()) ^ at as u64));
            let mut options: Vec<String> = others[..OPTIONS - 1].iter().map(|n| format!("{space}{n}")).collect();
            let slot = (h(!(at as u64)) % OPTIONS as u64) as usize;
            options.insert(slot, format!("{space}{answer}"));
            items.push(ClozeItem {
                doc_id: d.id.clone(),
                path: d.path.clone(),
                context: ctx.to_string(),
                options,
                answer: slot,
            });
        }
        if max_items > 0 && items.len() == max_items {
            break;
        }
    }
    items
}

/// One scored item.
#[derive(Clone, Debug, Serialize)]
pub struct ClozeScore {
    pub doc_id: String,
    pub answer: usize,
    /// Summed log-likelihood (nats) per option.
    pub loglik: Vec<f64>,
    pub pick_sum: usize,
    pub pick_per_byte: usize,
}

/// The set's accuracy.
#[derive(Clone, Debug, Serialize)]
pub struct ClozeSummary {
    pub items: usize,
    pub documents: usize,
    /// Accuracy picking by summed log-likelihood.
    pub accuracy_sum: f64,
    /// Accuracy picking by log-likelihood per byte.
    pub accuracy_per_byte: f64,
    pub chance: f64,
    /// Context tokens kept before the options (the last ones).
    pub max_context_tokens: usize,
}

fn argmax(x: &[f64]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

/// Score `items` (module doc); contexts keep their last `max_context_tokens` tokens.
pub fn score(
    model: &mut EvalModel,
    items: &[ClozeItem],
    max_context_tokens: usize,
) -> Result<(ClozeSummary, Vec<ClozeScore>)> {
    if items.is_empty() {
        return Err(Error::config("cloze", "no cloze items (no held-out documentation with 4 distinct names)"));
    }
    let (v, vp) = (model.model.cfg.vocab_size, model.model.cfg.padded_vocab);
    let room = model.model.cfg.max_seq_len;
    let mut scores = Vec::with_capacity(items.len());
    for it in items {
        let mut ctx_ids = vec![model.doc_start];
        ctx_ids.extend(model.encode(&it.context)?);
        let mut loglik = Vec::with_capacity(it.options.len());
        let mut per_byte = Vec::with_capacity(it.options.len());
        for opt in &it.options {
            let mut full = vec![model.doc_start];
            full.extend(model.encode(&format!("{}{opt}", it.context))?);
            let p = full.iter().zip(&ctx_ids).take_while(|(a, b)| a == b).count().max(1);
            // Keep the option's tokens and at most max_context_tokens before them.
            let cut = p.saturating_sub(max_context_tokens.min(room.saturating_sub(full.len() - p + 1)).max(1));
            let seq = &full[cut..];
            let first = p - cut; // index in seq of the first scored token
            let n = seq.len() - 1;
            if n > room {
                return Err(Error::config("cloze", format!("option `{opt}` is longer than the model's context")));
            }
            model.model.forward(&seq[..n], None, 1, n)?;
            let logits = model.model.logits();
            let mut ll = 0.0;
            for j in first - 1..n {
                let row = &logits[j * vp..j * vp + v];
                let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
                ll += row[seq[j + 1] as usize] as f64 - lse;
            }
            loglik.push(ll);
            per_byte.push(ll / opt.len().max(1) as f64);
        }
        scores.push(ClozeScore {
            doc_id: it.doc_id.clone(),
            answer: it.answer,
            pick_sum: argmax(&loglik),
            pick_per_byte: argmax(&per_byte),
            loglik,
        });
    }
    let n = scores.len() as f64;
    let mut docs: Vec<&str> = items.iter().map(|i| i.doc_id.as_str()).collect();
    docs.sort_unstable();
    docs.dedup();
    let summary = ClozeSummary {
        items: scores.len(),
        documents: docs.len(),
        accuracy_sum: scores.iter().filter(|s| s.pick_sum == s.answer).count() as f64 / n,
        accuracy_per_byte: scores.iter().filter(|s| s.pick_per_byte == s.answer).count() as f64 / n,
        chance: 1.0 / OPTIONS as f64,
        max_context_tokens,
    };
    Ok((summary, scores))
}
