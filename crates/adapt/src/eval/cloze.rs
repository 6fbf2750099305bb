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
//! option with the highest score (first on ties); chance is 1/4. The context and the options share one
//! key/value-cached prefix: the context is fed once, each option's tokens one at a time after it.
//! Accuracies come with 95% Wilson score intervals (items as independent trials) and 95% percentile
//! bootstrap intervals over documents (items of one document are correlated: 1,000 resamples of the
//! documents, fixed seed), the honest one when a few documents give many items.
//!
//! [`score_with`] puts extra tokens (retrieved passages: `crate::rag`) between the document-start token
//! and the context; everything else is scored the same way.
//!
//! The set is versioned ([`VERSION`]): a change to the rules above (or to the corpus) is a new set. With
//! `octet adapt eval`'s defaults (`--cloze-per-doc 16`, all items) on the corpus of `octet adapt corpus`
//! it holds 217 items from the 18 held-out documentation files that have 4 names or more (BENCHMARKS.md).
//! Items of one document share its names, so the by-document interval is the one to read.

use octet_core::{Error, Result};
use serde::Serialize;

use octet_lm::infer::KvCache;

use super::EvalModel;
use crate::corpus::{Category, Document, Split, hash64, mix64};

/// Identifies the construction rules (module doc); recorded in every summary.
pub const VERSION: &str = "octet-cloze-1";
pub const OPTIONS: usize = 4;
pub const MIN_CONTEXT_BYTES: usize = 200;
pub const MAX_CONTEXT_BYTES: usize = 1500;

/// One question.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ClozeItem {
    pub doc_id: String,
    pub path: String,
    /// Byte span of the document that the context and the answer cover, `[start, end)`.
    pub span: (usize, usize),
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
                span: (from, at + answer.len()),
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
    /// Tokens before the context (retrieved passages; 0 without).
    pub prefix_tokens: usize,
    /// Context tokens kept.
    pub context_tokens: usize,
}

/// The set's accuracy.
#[derive(Clone, Debug, Serialize)]
pub struct ClozeSummary {
    /// The construction rules ([`VERSION`]).
    pub version: String,
    pub items: usize,
    pub documents: usize,
    /// Accuracy picking by summed log-likelihood.
    pub accuracy_sum: f64,
    /// 95% Wilson score interval of `accuracy_sum`.
    pub ci95_sum: (f64, f64),
    /// Accuracy picking by log-likelihood per byte.
    pub accuracy_per_byte: f64,
    pub ci95_per_byte: (f64, f64),
    /// 95% bootstrap intervals resampling documents (module doc).
    pub ci95_sum_by_document: (f64, f64),
    pub ci95_per_byte_by_document: (f64, f64),
    pub chance: f64,
    /// Context tokens kept before the options (the last ones).
    pub max_context_tokens: usize,
    /// Mean tokens before the context (retrieved passages; 0 without).
    pub mean_prefix_tokens: f64,
    pub seconds: f64,
}

fn argmax(x: &[f64]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

/// 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson95(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n, p) = (1.959964f64, n as f64, k as f64 / n as f64);
    let c = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let h = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((c - h).max(0.0), (c + h).min(1.0))
}

/// 95% percentile bootstrap interval of the share of `right` items, resampling the groups `group`
/// (documents) with replacement, 1,000 times with a fixed seed.
pub fn bootstrap_by_group(right: &[bool], group: &[&str]) -> (f64, f64) {
    let mut names: Vec<&str> = group.to_vec();
    names.sort_unstable();
    names.dedup();
    // (right, items) per group.
    let per: Vec<(usize, usize)> = names
        .iter()
        .map(|n| {
            let it = right.iter().zip(group).filter(|(_, g)| *g == n);
            (it.clone().filter(|(r, _)| **r).count(), it.count())
        })
        .collect();
    if per.is_empty() {
        return (0.0, 1.0);
    }
    let mut rng = octet_core::Rng::new(0);
    let mut acc: Vec<f64> = (0..1000)
        .map(|_| {
            let (mut k, mut n) = (0, 0);
            for _ in 0..per.len() {
                let (a, b) = per[rng.below(per.len())];
                k += a;
                n += b;
            }
            k as f64 / n.max(1) as f64
        })
        .collect();
    acc.sort_by(f64::total_cmp);
    (acc[24], acc[974])
}

/// ln softmax(row)[t].
fn log_prob(row: &[f32], t: u32) -> f64 {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
    row[t as usize] as f64 - lse
}

/// Score `items` (module doc); contexts keep their last `max_context_tokens` tokens.
pub fn score(
    model: &mut EvalModel,
    items: &[ClozeItem],
    max_context_tokens: usize,
) -> Result<(ClozeSummary, Vec<ClozeScore>)> {
    score_with(model, items, max_context_tokens, &mut |_, _| Ok(Vec::new()), &mut |_, _| {})
}

/// Score `items` with `prefix(i, item)` (token ids, e.g. retrieved passages) between the
/// document-start token and each context; `on_item(i, score)` after each item.
pub fn score_with(
    model: &mut EvalModel,
    items: &[ClozeItem],
    max_context_tokens: usize,
    prefix: &mut dyn FnMut(usize, &ClozeItem) -> Result<Vec<u32>>,
    on_item: &mut dyn FnMut(usize, &ClozeScore),
) -> Result<(ClozeSummary, Vec<ClozeScore>)> {
    if items.is_empty() {
        return Err(Error::config("cloze", "no cloze items (no held-out documentation with 4 distinct names)"));
    }
    let t0 = std::time::Instant::now();
    let mut scores = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let pre = prefix(i, it)?;
        let s = score_item(model, it, &pre, max_context_tokens)?;
        on_item(i, &s);
        scores.push(s);
    }
    let n = scores.len();
    let mut docs: Vec<&str> = items.iter().map(|i| i.doc_id.as_str()).collect();
    docs.sort_unstable();
    docs.dedup();
    let k_sum = scores.iter().filter(|s| s.pick_sum == s.answer).count();
    let k_byte = scores.iter().filter(|s| s.pick_per_byte == s.answer).count();
    let groups: Vec<&str> = items.iter().map(|i| i.doc_id.as_str()).collect();
    let right_sum: Vec<bool> = scores.iter().map(|s| s.pick_sum == s.answer).collect();
    let right_byte: Vec<bool> = scores.iter().map(|s| s.pick_per_byte == s.answer).collect();
    let summary = ClozeSummary {
        version: VERSION.into(),
        items: n,
        documents: docs.len(),
        accuracy_sum: k_sum as f64 / n as f64,
        ci95_sum: wilson95(k_sum, n),
        accuracy_per_byte: k_byte as f64 / n as f64,
        ci95_per_byte: wilson95(k_byte, n),
        ci95_sum_by_document: bootstrap_by_group(&right_sum, &groups),
        ci95_per_byte_by_document: bootstrap_by_group(&right_byte, &groups),
        chance: 1.0 / OPTIONS as f64,
        max_context_tokens,
        mean_prefix_tokens: scores.iter().map(|s| s.prefix_tokens as f64).sum::<f64>() / n as f64,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((summary, scores))
}

/// One item: [doc start] + `pre` + the kept context fed once (cached); then, per option, the tokens of
/// `context + option` after the options' common prefix fed one at a time, those after the option's own
/// common prefix with the context's tokens scored.
fn score_item(model: &mut EvalModel, it: &ClozeItem, pre: &[u32], max_context_tokens: usize) -> Result<ClozeScore> {
    let cfg = model.model.cfg;
    let (v, room) = (cfg.vocab_size, cfg.max_seq_len);
    let ctx = model.encode(&it.context)?;
    let mut fulls = Vec::with_capacity(it.options.len());
    for opt in &it.options {
        let full = model.encode(&format!("{}{opt}", it.context))?;
        let p = full.iter().zip(&ctx).take_while(|(a, b)| a == b).count();
        fulls.push((full, p));
    }
    let pmin = fulls.iter().map(|f| f.1).min().unwrap_or(0);
    let tail = fulls.iter().map(|f| f.0.len() - pmin).max().unwrap_or(0);
    let avail = room.checked_sub(1 + pre.len() + tail).filter(|&a| a > 0 || pmin == 0).ok_or_else(|| {
        Error::config(
            "cloze",
            format!("{} prefix tokens + {tail} option tokens do not fit the model's context of {room}", pre.len()),
        )
    })?;
    let cut = pmin.saturating_sub(max_context_tokens.min(avail));
    let mut shared = Vec::with_capacity(1 + pre.len() + pmin - cut);
    shared.push(model.doc_start);
    shared.extend_from_slice(pre);
    shared.extend_from_slice(&fulls[0].0[cut..pmin]);
    let mut cache = KvCache::new(&cfg, shared.len() + tail);
    let last = model.model.forward_cached(&mut cache, &shared)?;
    let mut loglik = Vec::with_capacity(it.options.len());
    let mut per_byte = Vec::with_capacity(it.options.len());
    for ((full, p), opt) in fulls.iter().zip(&it.options) {
        cache.truncate(shared.len());
        let mut logits = last.clone();
        let mut ll = 0.0;
        let rest = &full[pmin..];
        for (j, &t) in rest.iter().enumerate() {
            if pmin + j >= *p {
                ll += log_prob(&logits[..v], t);
            }
            if j + 1 < rest.len() {
                logits = model.model.forward_cached(&mut cache, &[t])?;
            }
        }
        loglik.push(ll);
        per_byte.push(ll / opt.len().max(1) as f64);
    }
    Ok(ClozeScore {
        doc_id: it.doc_id.clone(),
        answer: it.answer,
        pick_sum: argmax(&loglik),
        pick_per_byte: argmax(&per_byte),
        loglik,
        prefix_tokens: pre.len(),
        context_tokens: pmin - cut,
    })
}
