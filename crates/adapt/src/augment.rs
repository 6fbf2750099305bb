//! Tokenizer augmentation (ChipNeMo): train a domain BPE on the domain training split, select the
//! domain tokens the base vocabulary lacks and that are rare in general text, and extend the base
//! byte-level BPE with them — new vocabulary entries *and* new merges, so the model tokenizer itself
//! produces them (not added tokens matched before BPE).
//!
//! Method:
//! 1. Domain BPE: HF `tokenizers` BPE trainer with the base tokenizer's own pre-tokenizer (so domain
//!    tokens live inside the same pre-token words), `domain_vocab` entries, byte-level alphabet.
//! 2. Counts: the training texts are pre-tokenized once into word counts; every word is segmented by
//!    the domain model, giving each domain token's frequency in domain and in general text.
//! 3. Selection: candidates are domain tokens of >= 2 symbols absent from the base vocabulary, seen
//!    at least `min_domain_count` times in domain text and at most `max_general_per_mb` times per MB
//!    of general text (rare in general text). They are ranked by the tokens they would save on domain
//!    text, count x (base pieces - 1), and the best `max_new_tokens` are kept.
//! 4. Merges: new merges get ranks after every base merge, so BPE applies all base merges first and
//!    the new ones only then, in the order added. Tokens are added in ranking order; a token whose
//!    domain-BPE parts (the domain merge that made it) are not in the vocabulary first adds those parts
//!    (recursively; any absent domain token may be a part, rare in general text or not; parts count
//!    against `max_new_tokens`). The token is
//!    then segmented by the base merges plus the new merges so far; when that gives exactly two pieces
//!    (a, b) the merge `a b -> token` is appended, otherwise it cannot be reached by one merge of
//!    existing tokens and is skipped (counted as unreachable). The extended tokenizer is then checked:
//!    every new token must encode, as a word, to itself.
//!
//! Because new merges rank last, text where none of them applies is tokenized exactly as before; where
//! one applies, two tokens become one, so the extension never lengthens any text.

use std::collections::HashMap;

use octet_core::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer};

/// Settings of the augmentation (module doc).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AugmentConfig {
    /// Size of the domain BPE trained on the domain training split.
    pub domain_vocab: usize,
    /// At most this many tokens are added.
    pub max_new_tokens: usize,
    /// A candidate must occur at most this often per MB of general text (domain-BPE segmentation).
    pub max_general_per_mb: f64,
    /// A candidate must occur at least this often in the domain training text.
    pub min_domain_count: u64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig { domain_vocab: 16384, max_new_tokens: 4096, max_general_per_mb: 1.0, min_domain_count: 20 }
    }
}

/// One added token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewToken {
    /// The token in the byte-level alphabet (`Ġ` is a space), as in the vocabulary.
    pub token: String,
    pub id: u32,
    /// The merge that produces it: two tokens already in the vocabulary.
    pub merge: (String, String),
    /// Its segmentation by the base tokenizer (ids of the base vocabulary): the embedding initialiser.
    pub base_pieces: Vec<u32>,
    /// Occurrences in the domain / general training text (domain-BPE segmentation).
    pub domain_count: u64,
    pub general_count: u64,
}

/// What the augmentation did.
#[derive(Clone, Debug, Serialize)]
pub struct AugmentStats {
    pub base_vocab: usize,
    pub extended_vocab: usize,
    pub base_merges: usize,
    pub extended_merges: usize,
    pub domain_vocab: usize,
    /// Domain tokens absent from the base vocabulary.
    pub absent_from_base: usize,
    /// ... of which rare in general text and frequent enough in domain text.
    pub candidates: usize,
    /// Selected tokens that no single merge of existing tokens reaches (not added).
    pub unreachable: usize,
    pub added: usize,
}

/// The extended tokenizer and what was added.
pub struct Augmented {
    pub tokenizer: Tokenizer,
    pub new_tokens: Vec<NewToken>,
    pub stats: AugmentStats,
}

/// A BPE's vocabulary and merges, with the ranks BPE applies them by.
pub struct BpeTables {
    pub vocab: HashMap<String, u32>,
    pub merges: Vec<(String, String)>,
    ranks: HashMap<(String, String), usize>,
}

impl BpeTables {
    /// The tables of a serialized HF tokenizer's BPE model (`tokenizer.json` `model` object).
    pub fn from_model_json(model: &Value) -> Result<Self> {
        let bad = |m: &str| Error::Other(format!("tokenizer model: {m}"));
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(bad("not a BPE model"));
        }
        let vocab: HashMap<String, u32> = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("no vocab"))?
            .iter()
            .map(|(k, v)| v.as_u64().map(|id| (k.clone(), id as u32)).ok_or_else(|| bad("vocab id not a number")))
            .collect::<Result<_>>()?;
        let merges: Vec<(String, String)> = model["merges"]
            .as_array()
            .ok_or_else(|| bad("no merges"))?
            .iter()
            .map(|m| match m {
                Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => Err(bad("merge is not two strings")),
                },
                Value::String(s) => {
                    let at = s.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
                    at.map(|i| (s[..i].to_string(), s[i + 1..].to_string())).ok_or_else(|| bad("legacy merge"))
                }
                _ => Err(bad("merge is neither a pair nor a string")),
            })
            .collect::<Result<_>>()?;
        let ranks = merges.iter().enumerate().map(|(i, m)| (m.clone(), i)).collect();
        Ok(BpeTables { vocab, merges, ranks })
    }

    /// BPE on one pre-token word (in the byte-level alphabet): start from its characters, repeatedly
    /// merge the leftmost occurrence of the lowest-ranked pair (HF's `Word::merge_all` order).
    pub fn segment(&self, word: &str) -> Vec<String> {
        let mut parts: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let best = (0..parts.len().saturating_sub(1))
                .filter_map(|i| self.ranks.get(&(parts[i].clone(), parts[i + 1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, i)) = best else { return parts };
            let right = parts.remove(i + 1);
            parts[i].push_str(&right);
        }
    }

    /// Append the merge `a b` (both in the vocabulary) producing a new token with id `id`.
    fn push_merge(&mut self, a: &str, b: &str, id: u32) {
        let pair = (a.to_string(), b.to_string());
        self.ranks.insert(pair.clone(), self.merges.len());
        self.merges.push(pair);
        self.vocab.insert(format!("{a}{b}"), id);
    }
}

/// Adds candidate tokens with their missing parts (see `augment`).
struct Adder<'a> {
    tables: &'a mut BpeTables,
    dom_merge: &'a HashMap<String, (String, String)>,
    info: &'a HashMap<&'a str, (u64, u64, Vec<String>)>,
    /// (token, id, merge) in the order added.
    new: Vec<(String, u32, (String, String))>,
    next_id: u32,
}

impl Adder<'_> {
    /// Whether `t` is in the vocabulary after this call: present, or a candidate added by one merge
    /// (after its domain-BPE parts, recursively), within `limit` new tokens.
    fn add(&mut self, t: &str, limit: usize, depth: usize) -> bool {
        if self.tables.vocab.contains_key(t) {
            return true;
        }
        if depth > 64 || self.new.len() >= limit || !self.info.contains_key(t) {
            return false;
        }
        if let Some((a, b)) = self.dom_merge.get(t)
            && !(self.add(a, limit, depth + 1) && self.add(b, limit, depth + 1))
        {
            return false;
        }
        let seg = self.tables.segment(t);
        if seg.len() != 2 || self.new.len() >= limit {
            return false;
        }
        self.tables.push_merge(&seg[0], &seg[1], self.next_id);
        self.new.push((t.to_string(), self.next_id, (seg[0].clone(), seg[1].clone())));
        self.next_id += 1;
        true
    }
}

/// The serialized form of `tok` as JSON.
pub fn tokenizer_json(tok: &Tokenizer) -> Result<Value> {
    let s = tok.to_string(false).map_err(|e| Error::Other(format!("tokenizer serialise: {e}")))?;
    serde_json::from_str(&s).map_err(|e| Error::Other(format!("tokenizer json: {e}")))
}

/// Word (pre-token) counts of `texts` under `tok`'s pre-tokenizer, in parallel.
pub fn word_counts(tok: &Tokenizer, texts: &[&str]) -> Result<HashMap<String, u64>> {
    let pre = tok.get_pre_tokenizer().ok_or_else(|| Error::Other("the base tokenizer has no pre-tokenizer".into()))?;
    texts
        .par_iter()
        .map(|t| {
            let mut pts = PreTokenizedString::from(*t);
            pre.pre_tokenize(&mut pts).map_err(|e| Error::Other(format!("pre-tokenize: {e}")))?;
            let mut m: HashMap<String, u64> = HashMap::new();
            for (w, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
                *m.entry(w.to_string()).or_default() += 1;
            }
            Ok(m)
        })
        .try_reduce(HashMap::new, |mut a, b| {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
            Ok(a)
        })
}

/// Token frequencies (by id) of `model` over word counts.
fn token_counts(model: &impl Model, words: &HashMap<String, u64>) -> Result<HashMap<u32, u64>> {
    let mut out: HashMap<u32, u64> = HashMap::new();
    for (w, &c) in words {
        for t in model.tokenize(w).map_err(|e| Error::Other(format!("tokenize `{w}`: {e}")))? {
            *out.entry(t.id).or_default() += c;
        }
    }
    Ok(out)
}

/// Train a byte-level BPE of `vocab` entries on `texts` with `base`'s pre-tokenizer and decoder.
pub fn train_domain_bpe(base: &Tokenizer, texts: &[&str], vocab: usize) -> Result<Tokenizer> {
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer: TrainerWrapper = trainer.into();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(base.get_pre_tokenizer().cloned());
    tok.with_decoder(base.get_decoder().cloned());
    tok.train(&mut trainer, texts.iter().copied()).map_err(|e| Error::Other(format!("domain BPE training: {e}")))?;
    Ok(tok)
}

/// Extend `base` with domain tokens (module doc). `say` gets progress lines.
pub fn augment(
    base: &Tokenizer,
    domain_train: &[&str],
    general_train: &[&str],
    cfg: &AugmentConfig,
    say: &mut dyn FnMut(String),
) -> Result<Augmented> {
    let mut json = tokenizer_json(base)?;
    let mut tables = BpeTables::from_model_json(&json["model"])?;
    let base_tables = BpeTables::from_model_json(&json["model"])?;
    let base_vocab = base.get_vocab_size(true);
    let base_merges = tables.merges.len();

    let mb = |t: &[&str]| t.iter().map(|s| s.len()).sum::<usize>() as f64 / 1e6;
    say(format!("training a {}-token domain BPE on {:.1} MB of domain text", cfg.domain_vocab, mb(domain_train)));
    let dom = train_domain_bpe(base, domain_train, cfg.domain_vocab)?;
    let dom_json = tokenizer_json(&dom)?;
    let dom_tables = BpeTables::from_model_json(&dom_json["model"])?;

    say("counting domain tokens in domain and general text".into());
    let dw = word_counts(base, domain_train)?;
    let gw = word_counts(base, general_train)?;
    let dcount = token_counts(dom.get_model(), &dw)?;
    let gcount = token_counts(dom.get_model(), &gw)?;
    let general_mb = mb(general_train).max(1e-9);

    // Candidates, ranked by estimated savings.
    let mut by_id: Vec<(&String, u32)> = dom_tables.vocab.iter().map(|(s, &i)| (s, i)).collect();
    by_id.sort_by_key(|&(_, i)| i);
    let absent: Vec<(&String, u32)> =
        by_id.into_iter().filter(|(s, _)| !tables.vocab.contains_key(*s) && s.chars().count() >= 2).collect();
    // Every absent domain token may serve as a part (intermediate merges are rarely final tokens, so
    // their counts say little); candidates are also frequent in domain text and rare in general text.
    let parts: Vec<(u32, &String, u64, u64, Vec<String>)> = absent
        .iter()
        .map(|&(s, id)| {
            let (d, g) = (dcount.get(&id).copied().unwrap_or(0), gcount.get(&id).copied().unwrap_or(0));
            (id, s, d, g, base_tables.segment(s))
        })
        .collect();
    let mut cands: Vec<&(u32, &String, u64, u64, Vec<String>)> = parts
        .iter()
        .filter(|(_, _, d, g, _)| *d >= cfg.min_domain_count && *g as f64 / general_mb <= cfg.max_general_per_mb)
        .collect();
    let n_cands = cands.len();
    cands.sort_by_key(|(id, _, d, _, pieces)| (std::cmp::Reverse(d * (pieces.len() as u64 - 1)), *id));

    // Add in order of savings; a token whose domain-BPE parts are missing brings them in first (when
    // they are candidates themselves), so that it is one merge of existing tokens.
    let dom_merge: HashMap<String, (String, String)> =
        dom_tables.merges.iter().map(|(a, b)| (format!("{a}{b}"), (a.clone(), b.clone()))).collect();
    let info: HashMap<&str, (u64, u64, Vec<String>)> =
        parts.iter().map(|(_, s, d, g, p)| (s.as_str(), (*d, *g, p.clone()))).collect();
    let mut adder =
        Adder { tables: &mut tables, dom_merge: &dom_merge, info: &info, new: vec![], next_id: base_vocab as u32 };
    let mut unreachable = 0;
    for (_, s, ..) in cands {
        if adder.new.len() >= cfg.max_new_tokens {
            break;
        }
        if !adder.add(s, cfg.max_new_tokens, 0) {
            unreachable += 1;
        }
    }
    let added = adder.new;
    let mut new_tokens = Vec::with_capacity(added.len());
    for (token, id, merge) in added {
        let (d, g, pieces) = &info[token.as_str()];
        let base_pieces = pieces
            .iter()
            .map(|p| {
                base_tables.vocab.get(p).copied().ok_or_else(|| Error::Other(format!("base piece `{p}` not in vocab")))
            })
            .collect::<Result<Vec<u32>>>()?;
        new_tokens.push(NewToken { token, id, merge, base_pieces, domain_count: *d, general_count: *g });
    }

    // The extended tokenizer: same JSON, vocabulary and merges appended.
    let model = json["model"].as_object_mut().expect("checked BPE model");
    let vocab = model.get_mut("vocab").and_then(Value::as_object_mut).expect("checked vocab");
    for t in &new_tokens {
        vocab.insert(t.token.clone(), t.id.into());
    }
    let legacy = model["merges"].as_array().and_then(|m| m.first()).is_some_and(Value::is_string);
    let merges = model.get_mut("merges").and_then(Value::as_array_mut).expect("checked merges");
    for t in &new_tokens {
        merges.push(if legacy {
            Value::String(format!("{} {}", t.merge.0, t.merge.1))
        } else {
            Value::Array(vec![t.merge.0.clone().into(), t.merge.1.clone().into()])
        });
    }
    let extended_merges = merges.len();
    let tokenizer: Tokenizer =
        json.to_string().parse().map_err(|e| Error::Other(format!("extended tokenizer does not load: {e}")))?;
    for t in &new_tokens {
        let got: Vec<u32> = tokenizer
            .get_model()
            .tokenize(&t.token)
            .map_err(|e| Error::Other(format!("tokenize: {e}")))?
            .iter()
            .map(|x| x.id)
            .collect();
        if got != [t.id] {
            return Err(Error::Other(format!("new token `{}` ({}) encodes to {got:?}", t.token, t.id)));
        }
    }
    let stats = AugmentStats {
        base_vocab,
        extended_vocab: tokenizer.get_vocab_size(true),
        base_merges,
        extended_merges,
        domain_vocab: dom.get_vocab_size(true),
        absent_from_base: absent.len(),
        candidates: n_cands,
        unreachable,
        added: new_tokens.len(),
    };
    say(format!(
        "added {} tokens ({} candidates rare in general text, {} unreachable by one merge)",
        stats.added, stats.candidates, stats.unreachable
    ));
    Ok(Augmented { tokenizer, new_tokens, stats })
}

/// Tokens and bytes of `texts` under `tok` (full encode, no special tokens added).
pub fn count_tokens(tok: &Tokenizer, texts: &[&str]) -> Result<(usize, usize)> {
    let enc = tok
        .encode_batch(texts.iter().map(|t| t.to_string()).collect::<Vec<_>>(), false)
        .map_err(|e| Error::Other(format!("tokenize: {e}")))?;
    Ok((enc.iter().map(|e| e.len()).sum(), texts.iter().map(|t| t.len()).sum()))
}
