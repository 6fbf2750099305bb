//! GGUF tokenizers <-> HuggingFace tokenizers: a GGUF `gpt2` (byte-level BPE) vocabulary rebuilt as
//! a HF [`Tokenizer`] ([`GgufTokenizer`]), and a HF byte-level BPE `tokenizer.json` turned into the
//! `tokenizer.ggml.*` metadata a writer stores ([`GgufVocab`]).

use octet_core::{Error, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::reader::GgufFile;

/// `tokenizer.ggml.token_type` value of a control token (llama.cpp `LLAMA_TOKEN_TYPE_CONTROL`).
pub const TOKEN_TYPE_CONTROL: i64 = 3;
/// `tokenizer.ggml.token_type` value of a user-defined token (`LLAMA_TOKEN_TYPE_USER_DEFINED`).
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// How a `tokenizer.ggml.pre` name splits text before byte-level BPE (llama.cpp `llama-vocab.cpp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreSplit {
    /// The GPT-2 regex alone (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`).
    Gpt2,
    /// Every digit (`\p{N}`) split off on its own first, then the GPT-2 regex: llama.cpp's
    /// STARCODER/SMOLLM regex set. In HF terms `Sequence[Digits(individual_digits=true),
    /// ByteLevel]`, the StarCoder-style `tokenizer.json` that llama.cpp's converter labels `smollm`
    /// (HF `Digits` splits on `char::is_numeric`: Nd, Nl, No, i.e. `\p{N}`).
    DigitsThenGpt2,
}

impl PreSplit {
    /// The pre-tokenizer names whose regexes are one of the two above. Others ("default", "llama3",
    /// "qwen2", ...) use different regexes and are refused rather than tokenized wrongly.
    pub fn from_pre(pre: &str) -> Option<PreSplit> {
        match pre {
            "gpt-2" | "mpt" | "olmo" | "jais" => Some(PreSplit::Gpt2),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
                Some(PreSplit::DigitsThenGpt2)
            }
            _ => None,
        }
    }
}

/// A GGUF `gpt2` (byte-level BPE) tokenizer as a HuggingFace [`Tokenizer`]: BPE over the
/// `tokenizer.ggml.tokens` vocabulary (id = position) and `tokenizer.ggml.merges` (rank = position),
/// ByteLevel pre-tokenizer (no prefix space, GPT-2 regex) after the split [`PreSplit`] names,
/// ByteLevel decoder; control tokens (`token_type` 3) are special added tokens, user-defined ones
/// (`token_type` 4) plain added tokens, so both are matched whole in input text.
///
/// `encode` never adds BOS/EOS: `add_bos` / `add_eos` report what the model expects the caller to do.
/// When a token string occurs twice in the vocabulary, encoding yields the first id.
pub struct GgufTokenizer {
    tokenizer: Tokenizer,
    pub pre: String,
    pub pre_split: PreSplit,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.chat_template` (a Jinja template), when present.
    pub chat_template: Option<String>,
    special_ids: Vec<u32>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre", &self.pre)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("special", &self.special_ids.len())
            .finish()
    }
}

impl GgufTokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<GgufTokenizer> {
        let path = g.path();
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::format(
                path,
                "tokenizer.ggml.model",
                format!("unsupported tokenizer model `{model}` (reads `gpt2` byte-level BPE)"),
            ));
        }
        let pre = match g.get("tokenizer.ggml.pre") {
            None => "default",
            Some(_) => g.get_str("tokenizer.ggml.pre")?,
        };
        let pre_split = PreSplit::from_pre(pre)
            .ok_or_else(|| Error::format(path, "tokenizer.ggml.pre", format!("unsupported pre-tokenizer `{pre}`")))?;

        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let n_vocab = u32::try_from(tokens.len())
            .map_err(|_| Error::format(path, "tokenizer.ggml.tokens", "more than u32::MAX tokens"))?;
        // Insert in reverse so that the first of duplicate strings keeps its id.
        let vocab: Vocab = tokens.iter().enumerate().rev().map(|(i, t)| ((*t).to_string(), i as u32)).collect();

        let types = match g.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(_) => g.get_i64_array("tokenizer.ggml.token_type")?,
        };
        if types.len() != tokens.len() {
            return Err(Error::format(
                path,
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", types.len(), tokens.len()),
            ));
        }

        let merges_raw = g.get_str_array("tokenizer.ggml.merges")?;
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            // As llama.cpp: split at the first space after the first character.
            let split = m.char_indices().skip(1).find(|&(_, ch)| ch == ' ').map(|(at, _)| at);
            let Some(at) = split else {
                return Err(Error::format(
                    path,
                    "tokenizer.ggml.merges",
                    format!("merge {i} `{m}` is not two tokens separated by a space"),
                ));
            };
            merges.push((m[..at].to_string(), m[at + 1..].to_string()));
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::format(path, "tokenizer.ggml.merges", e.to_string()))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = match pre_split {
            PreSplit::Gpt2 => byte_level.into(),
            PreSplit::DigitsThenGpt2 => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        };
        tokenizer.with_pre_tokenizer(Some(pre_tok));
        tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));

        let mut special_ids = Vec::new();
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, (&t, &ty)) in tokens.iter().zip(&types).enumerate() {
            match ty {
                TOKEN_TYPE_CONTROL => {
                    special_ids.push(i as u32);
                    special.push(AddedToken::from(t, true).normalized(false));
                }
                TOKEN_TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(t, false).normalized(false));
                }
                _ => {}
            }
        }
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| Error::format(path, "tokenizer.ggml.token_type", e.to_string()))?;
        tokenizer.add_tokens(user).map_err(|e| Error::format(path, "tokenizer.ggml.token_type", e.to_string()))?;

        let id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(_) => {
                    let v = g.get_u32(key)?;
                    if v >= n_vocab {
                        return Err(Error::format(
                            path,
                            key,
                            format!("token id {v} is outside the vocabulary of {n_vocab}"),
                        ));
                    }
                    Ok(Some(v))
                }
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match g.get(key) {
                None => Ok(false),
                Some(_) => g.get_bool(key),
            }
        };
        let chat_template = match g.get("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(g.get_str("tokenizer.chat_template")?.to_string()),
        };
        Ok(GgufTokenizer {
            tokenizer,
            pre: pre.to_string(),
            pre_split,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            chat_template,
            special_ids,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn into_inner(self) -> Tokenizer {
        self.tokenizer
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Ids of the control tokens (`token_type` 3), ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) map to their ids.
    /// No BOS/EOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| Error::Other(format!("tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special).map_err(|e| Error::Other(format!("detokenize: {e}")))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

/// `tokenizer.ggml.token_type` value of an ordinary vocabulary entry (`LLAMA_TOKEN_TYPE_NORMAL`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// `tokenizer.ggml.token_type` value of a placeholder that fills the vocabulary up to the embedding
/// rows (`LLAMA_TOKEN_TYPE_UNUSED`).
pub const TOKEN_TYPE_UNUSED: i32 = 5;

/// A HuggingFace byte-level BPE `tokenizer.json` as GGUF `gpt2` tokenizer metadata, the inverse of
/// [`GgufTokenizer`]:
/// ```text
/// tokenizer.ggml.model       "gpt2"
/// tokenizer.ggml.pre         "gpt-2"   pre_tokenizer ByteLevel(add_prefix_space=false, use_regex=true)
///                            "smollm"  Sequence[Digits(individual_digits=true), that ByteLevel]
/// tokenizer.ggml.tokens      [string]  id -> token: model.vocab and added_tokens, ids 0..n without gaps
/// tokenizer.ggml.token_type  [i32]     3 (control) for special added tokens, 4 (user defined) for the
///                                      other added tokens, 1 (normal) for the rest
/// tokenizer.ggml.merges      [string]  model.merges in rank order, each pair joined by one space
/// tokenizer.ggml.bos/eos_token_id u32  see `bos_eos`, when such a token exists
/// tokenizer.ggml.add_bos_token  false  octet's tokenizers add no BOS
/// ```
/// Refused, each naming the key: a model other than BPE, byte fallback, subword prefixes/suffixes,
/// `ignore_merges`, a normalizer, any other pre-tokenizer (its regex would not be the one llama.cpp
/// applies for the `pre` name), a merge token with a space in it, gaps or duplicates in the ids.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufVocab {
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// `tokenizer.chat_template` to write (a `tokenizer.json` has none; `export` takes the one of the
    /// GGUF the run was initialised from).
    pub chat_template: Option<String>,
}

/// BOS / EOS by name, first match in each list (a `tokenizer.json` does not say which tokens they
/// are): `<|endoftext|>` is both for GPT-2-style vocabularies such as octet's, ChatML vocabularies
/// (SmolLM2) use `<|im_start|>` / `<|im_end|>`, SentencePiece-converted ones `<s>` / `</s>`.
const BOS_NAMES: [&str; 3] = ["<|im_start|>", "<|endoftext|>", "<s>"];
const EOS_NAMES: [&str; 3] = ["<|im_end|>", "<|endoftext|>", "</s>"];

impl GgufVocab {
    /// Convert the text of a `tokenizer.json`; `path` names it in errors.
    pub fn from_hf_json(text: &str, path: &std::path::Path) -> Result<GgufVocab> {
        use serde_json::Value as J;
        let bad = |key: &str, msg: String| Error::format(path, key, msg);
        let root: J = serde_json::from_str(text).map_err(|e| bad("tokenizer", e.to_string()))?;
        let model = &root["model"];
        if model["type"] != "BPE" {
            return Err(bad("model.type", format!("{}: only byte-level BPE converts to GGUF `gpt2`", model["type"])));
        }
        for key in ["byte_fallback", "ignore_merges"] {
            if model[key] == J::Bool(true) {
                return Err(bad(&format!("model.{key}"), "true is not supported by GGUF `gpt2`".into()));
            }
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if !(model[key].is_null() || model[key] == "") {
                return Err(bad(&format!("model.{key}"), format!("{} is not supported by GGUF `gpt2`", model[key])));
            }
        }
        if !root["normalizer"].is_null() {
            return Err(bad("normalizer", format!("{}: GGUF `gpt2` has no normalizer", root["normalizer"])));
        }
        let byte_level = |p: &J| {
            p["type"] == "ByteLevel" && p["add_prefix_space"] == J::Bool(false) && p["use_regex"] != J::Bool(false)
        };
        let pre_tok = &root["pre_tokenizer"];
        let pre = if byte_level(pre_tok) {
            "gpt-2"
        } else if pre_tok["type"] == "Sequence"
            && let Some([digits, bl]) = pre_tok["pretokenizers"].as_array().map(Vec::as_slice)
            && digits["type"] == "Digits"
            && digits["individual_digits"] == J::Bool(true)
            && byte_level(bl)
        {
            "smollm"
        } else {
            return Err(bad(
                "pre_tokenizer",
                format!(
                    "{pre_tok}: supported are ByteLevel(add_prefix_space=false) (`gpt-2`) and \
                     Sequence[Digits(individual_digits=true), ByteLevel] (`smollm`)"
                ),
            ));
        };

        // id -> (token, type)
        let mut by_id: std::collections::BTreeMap<u64, (String, i32)> = Default::default();
        let vocab = model["vocab"].as_object().ok_or_else(|| bad("model.vocab", "expected an object".into()))?;
        for (tok, id) in vocab {
            let id = id.as_u64().ok_or_else(|| bad("model.vocab", format!("`{tok}`: id {id} is not an integer")))?;
            if by_id.insert(id, (tok.clone(), TOKEN_TYPE_NORMAL)).is_some() {
                return Err(bad("model.vocab", format!("id {id} appears twice")));
            }
        }
        for t in root["added_tokens"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
                return Err(bad("added_tokens", format!("{t}: expected an id and a content")));
            };
            let ty = if t["special"] == J::Bool(true) { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED } as i32;
            match by_id.get_mut(&id) {
                Some((tok, _)) if tok != content => {
                    return Err(bad("added_tokens", format!("id {id} is `{content}` here but `{tok}` in the vocab")));
                }
                Some(entry) => entry.1 = ty,
                None => {
                    by_id.insert(id, (content.to_string(), ty));
                }
            }
        }
        if let Some((i, _)) = by_id.keys().enumerate().find(|&(i, &id)| i as u64 != id) {
            return Err(bad("model.vocab", format!("ids are not 0..{}: id {i} is missing", by_id.len())));
        }
        if by_id.len() > u32::MAX as usize {
            return Err(bad("model.vocab", "more than u32::MAX tokens".into()));
        }
        let (tokens, token_types): (Vec<String>, Vec<i32>) = by_id.into_values().unzip();

        let mut merges = Vec::new();
        for (i, m) in model["merges"].as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
            // tokenizers >= 0.20 writes [left, right]; older files "left right".
            let pair = match m {
                J::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                J::Array(v) => match v.as_slice() {
                    [J::String(a), J::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            match pair {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !a.contains(' ') && !b.contains(' ') => {
                    merges.push(format!("{a} {b}"));
                }
                _ => return Err(bad("model.merges", format!("merge {i} {m}: expected two tokens without spaces"))),
            }
        }
        let find = |names: &[&str]| names.iter().find_map(|n| tokens.iter().position(|t| t == n)).map(|i| i as u32);
        let (bos_id, eos_id) = (find(&BOS_NAMES), find(&EOS_NAMES));
        Ok(GgufVocab { pre: pre.to_string(), tokens, token_types, merges, bos_id, eos_id, chat_template: None })
    }

    /// Add the `tokenizer.*` keys to a writer (see the type's doc).
    pub fn write_metadata(&self, w: &mut super::writer::GgufWriter) -> Result<()> {
        w.add_str("tokenizer.ggml.model", "gpt2")?;
        w.add_str("tokenizer.ggml.pre", &self.pre)?;
        w.add_str_array("tokenizer.ggml.tokens", &self.tokens)?;
        w.add_i32_array("tokenizer.ggml.token_type", &self.token_types)?;
        w.add_str_array("tokenizer.ggml.merges", &self.merges)?;
        if let Some(id) = self.bos_id {
            w.add_u32("tokenizer.ggml.bos_token_id", id as usize)?;
        }
        if let Some(id) = self.eos_id {
            w.add_u32("tokenizer.ggml.eos_token_id", id as usize)?;
        }
        if let Some(t) = &self.chat_template {
            w.add_str("tokenizer.chat_template", t)?;
        }
        w.add_bool("tokenizer.ggml.add_bos_token", false)?;
        w.add_bool("tokenizer.ggml.add_eos_token", false)
    }
}
