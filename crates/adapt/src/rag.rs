//! Retrieval-augmented answers (ChipNeMo section 2.4): the dense index (`retrieval::index`) and its
//! encoder find the passages nearest a question, which go into the chat prompt of a Llama
//! (`eval::EvalModel`, GGUF or checkpoint) before the question; the answer comes with its numbered
//! sources. `octet adapt ask` is [`ask`]; `octet adapt eval --index` scores the cloze set
//! (`eval::cloze`) with retrieved passages before each context ([`cloze_prefixes`]).
//!
//! Fitting the prompt into the model's context (`AskOptions::context`, at most the model's length):
//! `max_new_tokens` stay free for the answer; the question takes at most half of the rest when
//! passages are retrieved (all of it otherwise) and is cut to its first tokens with a warning beyond
//! that; passages fill what is left in rank order, the last one that does not fit whole is cut to its
//! first tokens (warning) and the rest dropped (warning). The encoder sees the (cut) question; a question
//! longer than the encoder's context (256 tokens for MiniLM) is embedded from its first tokens (warning).
//!
//! Cloze with retrieval: the query is the last [`CLOZE_QUERY_BYTES`] bytes of the item's context (the
//! text right before the blank; the encoder keeps only the first 256 tokens of a longer query); passages
//! of the item's own document (`Exclude::Document`, the default) or those overlapping the bytes the item
//! covers (`Exclude::Span`) are never retrieved, since they hold the answer verbatim; the top `k` others
//! are put before the context as `[n] path (bytes s..e)\ntext\n\n` blocks, at most `max_prefix_tokens`
//! model tokens in all (the last block cut to fit).

use std::path::Path;

use octet_core::{Error, Result};
use octet_lm::generate::SampleConfig;
use serde::Serialize;

use crate::eval::cloze::ClozeItem;
use crate::eval::{EvalModel, Generated};
use crate::retrieval::embed::Embedder;
use crate::retrieval::encoder::Precision;
use crate::retrieval::index::{DenseIndex, Passage};

/// Bytes of a cloze context (its end) used as the retrieval query.
pub const CLOZE_QUERY_BYTES: usize = 600;

/// The instruction before the passages of a retrieval-augmented chat prompt.
pub const INSTRUCTION: &str = "Answer the question. The numbered passages below come from chip design documentation and code; use them when they are relevant.";

/// A dense index with the encoder that built it.
pub struct Retriever {
    pub emb: Embedder,
    pub idx: DenseIndex,
}

/// One retrieved passage: its index in `DenseIndex::passages` and its cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub passage: usize,
    pub score: f32,
}

impl Retriever {
    /// Load the encoder (`encoder`: a sentence-transformers directory) and the index in `index`; the
    /// index must have been built with that encoder (same weights), else a clear error.
    pub fn load(index: &Path, encoder: &Path) -> Result<Retriever> {
        let emb = Embedder::load(encoder, Precision::F32)?;
        let idx = DenseIndex::load(index, Some(&emb.id))?;
        if idx.passages.is_empty() {
            return Err(Error::format(index, "passages", "the index holds no passages: nothing to retrieve"));
        }
        Ok(Retriever { emb, idx })
    }

    /// Exact top-`k` passages for each query, best first, never one for which `skip(query index,
    /// passage)` holds; also how many queries were cut to the encoder's context.
    pub fn search(
        &self,
        queries: &[&str],
        k: usize,
        skip: impl Fn(usize, &Passage) -> bool,
    ) -> Result<(Vec<Vec<Hit>>, usize)> {
        let (qv, cut) = self.emb.embed(queries, 32, |_| {})?;
        let d = self.idx.header.dim;
        let mut out = Vec::with_capacity(queries.len());
        for (qi, q) in qv.chunks(d).enumerate() {
            let skipped = self.idx.passages.iter().filter(|p| skip(qi, p)).count();
            let hits = self.idx.search(q, k + skipped).pop().unwrap_or_default();
            out.push(
                hits.into_iter()
                    .filter(|&(i, _)| !skip(qi, &self.idx.passages[i]))
                    .take(k)
                    .map(|(passage, score)| Hit { passage, score })
                    .collect(),
            );
        }
        Ok((out, cut))
    }
}

/// A passage as it appears in a prompt: `[n] path (bytes s..e)` and its text.
pub fn passage_block(n: usize, p: &Passage, text: &str) -> String {
    format!("[{n}] {} (bytes {}..{})\n{}\n\n", p.path, p.start, p.end, text.trim_end())
}

/// The first `max` tokens of `text` (by `model`'s tokenizer) as text; (text, was cut).
fn first_tokens(model: &EvalModel, text: &str, max: usize) -> Result<(String, bool)> {
    let ids = model.encode(text)?;
    if ids.len() <= max {
        return Ok((text.to_string(), false));
    }
    Ok((model.decode(&ids[..max])?, true))
}

/// Blocks of the `hits` within `budget` model tokens, in rank order: (text, passages used, the last one
/// used was cut, passages dropped).
fn fit_blocks(model: &EvalModel, r: &Retriever, hits: &[Hit], budget: usize) -> Result<(String, usize, bool, usize)> {
    let (mut text, mut used, mut left) = (String::new(), 0usize, budget);
    for (j, h) in hits.iter().enumerate() {
        let p = &r.idx.passages[h.passage];
        let block = passage_block(j + 1, p, &p.text);
        let n = model.encode(&block)?.len();
        if n <= left {
            text += &block;
            left -= n;
            used += 1;
            continue;
        }
        // Cut this one to what is left (the header and a few tokens at least), drop the rest.
        let head = model.encode(&passage_block(j + 1, p, ""))?.len();
        if left > head + 8 {
            let (cut, _) = first_tokens(model, &p.text, left - head)?;
            text += &passage_block(j + 1, p, &cut);
            used += 1;
            return Ok((text, used, true, hits.len() - used));
        }
        return Ok((text, used, false, hits.len() - used));
    }
    Ok((text, used, false, 0))
}

/// `octet adapt ask` options.
#[derive(Clone, Debug)]
pub struct AskOptions {
    /// Passages retrieved (0: no retrieval).
    pub k: usize,
    /// Prompt + answer tokens at most (0: the model's context length; never more).
    pub context: usize,
    pub sample: SampleConfig,
}

/// A source of an answer.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    pub n: usize,
    pub path: String,
    pub doc: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// An answer with its sources.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub text: String,
    pub sources: Vec<Source>,
    pub prompt_tokens: usize,
    pub answer_tokens: usize,
    pub seconds: f64,
    /// What was cut or dropped to fit (also for the caller to print).
    pub warnings: Vec<String>,
}

/// The user message: the instruction, the passages and the question (no passages: the question alone).
pub fn user_message(passages: &str, question: &str) -> String {
    if passages.is_empty() { question.to_string() } else { format!("{INSTRUCTION}\n\n{passages}Question: {question}") }
}

/// Retrieve, fit the prompt (module doc), answer.
pub fn ask(model: &mut EvalModel, r: Option<&Retriever>, question: &str, o: &AskOptions) -> Result<Answer> {
    let max_len = model.model.cfg.max_seq_len;
    let room = if o.context == 0 { max_len } else { o.context.min(max_len) };
    let overhead = model.chat_prompt(&user_message(if r.is_some() && o.k > 0 { "x" } else { "" }, ""))?.len();
    let budget = room.checked_sub(o.sample.max_new_tokens + overhead + 1).filter(|&b| b >= 2).ok_or_else(|| {
        Error::config(
            "ask",
            format!(
                "a context of {room} tokens leaves no room for a question after {} answer tokens and {overhead} \
                 template tokens: lower --max-tokens",
                o.sample.max_new_tokens
            ),
        )
    })?;
    let retrieving = r.is_some() && o.k > 0;
    let q_max = if retrieving { budget / 2 } else { budget };
    let mut warnings = Vec::new();
    let (q, cut) = first_tokens(model, question.trim(), q_max)?;
    if cut {
        warnings.push(format!(
            "the question is longer than the {q_max} tokens it may take of the {room}-token context: cut to its first {q_max} tokens"
        ));
    }
    let mut sources = Vec::new();
    let mut passages = String::new();
    if let (Some(r), true) = (r, retrieving) {
        let (hits, qcut) = r.search(&[q.as_str()], o.k, |_, _| false)?;
        if qcut > 0 {
            warnings.push(format!(
                "the question is longer than the encoder's {} tokens: retrieved with its first {} tokens",
                r.emb.max_len, r.emb.max_len
            ));
        }
        let hits = hits.into_iter().next().unwrap_or_default();
        let left = budget.saturating_sub(model.encode(&q)?.len());
        let mut fit = left;
        // Tokens of pieces and of the whole differ a little at the seams: shrink until the prompt fits.
        let prompt_fits = |m: &EvalModel, pass: &str| -> Result<bool> {
            Ok(m.chat_prompt(&user_message(pass, &q))?.len() + o.sample.max_new_tokens < room)
        };
        loop {
            let (text, used, cut, dropped) = fit_blocks(model, r, &hits[..], fit)?;
            if prompt_fits(model, &text)? || fit == 0 {
                if cut {
                    warnings.push(format!("passage [{used}] was cut to fit the {room}-token context"));
                }
                if dropped > 0 {
                    warnings.push(format!("{dropped} of {} retrieved passages did not fit the context", hits.len()));
                }
                passages = text;
                sources = hits[..used]
                    .iter()
                    .enumerate()
                    .map(|(j, h)| {
                        let p = &r.idx.passages[h.passage];
                        Source {
                            n: j + 1,
                            path: p.path.clone(),
                            doc: p.doc.clone(),
                            start: p.start,
                            end: p.end,
                            score: h.score,
                        }
                    })
                    .collect();
                break;
            }
            fit = fit.saturating_sub(16.max(fit / 16));
        }
    }
    let prompt = model.chat_prompt(&user_message(&passages, &q))?;
    let g: Generated = model.generate_until(&prompt, &o.sample, |_| false)?;
    Ok(Answer {
        text: g.text.trim().to_string(),
        sources,
        prompt_tokens: prompt.len(),
        answer_tokens: g.tokens,
        seconds: g.seconds,
        warnings,
    })
}

/// Which passages a cloze item may not retrieve (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Exclude {
    /// Every passage of the item's document.
    Document,
    /// The passages of the item's document overlapping the bytes of its context and answer.
    Span,
}

impl Exclude {
    pub fn name(self) -> &'static str {
        match self {
            Exclude::Document => "document",
            Exclude::Span => "span",
        }
    }
    fn skips(self, it: &ClozeItem, p: &Passage) -> bool {
        p.doc == it.doc_id && (self == Exclude::Document || (p.start < it.span.1 && it.span.0 < p.end))
    }
}

/// The retrieved passages put before one cloze item.
#[derive(Clone, Debug, Serialize)]
pub struct ClozePrefix {
    /// Model token ids of the passage blocks.
    #[serde(skip)]
    pub ids: Vec<u32>,
    pub hits: Vec<Hit>,
    /// Passages used (the last possibly cut).
    pub used: usize,
}

/// Retrieve `k` passages for every item (module doc) and tokenise them for `cloze::score_with`; also
/// how many queries were cut to the encoder's context.
pub fn cloze_prefixes(
    model: &EvalModel,
    r: &Retriever,
    items: &[ClozeItem],
    k: usize,
    exclude: Exclude,
    max_prefix_tokens: usize,
) -> Result<(Vec<ClozePrefix>, usize)> {
    let queries: Vec<&str> = items
        .iter()
        .map(|it| {
            let mut s = it.context.len().saturating_sub(CLOZE_QUERY_BYTES);
            while !it.context.is_char_boundary(s) {
                s += 1;
            }
            &it.context[s..]
        })
        .collect();
    let (hits, cut) = r.search(&queries, k, |qi, p| exclude.skips(&items[qi], p))?;
    let mut out = Vec::with_capacity(items.len());
    for h in hits {
        let (text, used, _, _) = fit_blocks(model, r, &h, max_prefix_tokens)?;
        let mut ids = model.encode(&text)?;
        ids.truncate(max_prefix_tokens);
        out.push(ClozePrefix { ids, hits: h, used });
    }
    Ok((out, cut))
}
