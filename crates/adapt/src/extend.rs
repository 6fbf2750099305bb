//! `octet adapt tokenizer` as a library call: augment the tokenizer of a GGUF Llama (SmolLM2) with
//! tokens from the corpus's domain training split, measure tokens per byte on the held-out domain and
//! general documents before and after, resize the model (`resize`, head untied) and write
//! `tokenizer.json`, `model.safetensors` + `config.json` (HuggingFace names, `llama_hf`),
//! `new_tokens.jsonl` and `report.json` into the output directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use octet_core::fs::write_atomic;
use octet_core::{Error, Result};
use octet_lm::gguf::GgufFile;
use octet_lm::llama::{LlamaConfig, params_from_gguf};
use octet_lm::llama_hf::export_hf;
use serde::Serialize;

use crate::augment::{AugmentConfig, AugmentStats, augment, count_tokens};
use crate::corpus::{Document, Split, read_jsonl};
use crate::resize::extend_vocab;

/// Tokens per byte of one held-out set under the base and the extended tokenizer.
#[derive(Clone, Debug, Serialize)]
pub struct TokensPerByte {
    pub documents: usize,
    pub bytes: usize,
    pub base_tokens: usize,
    pub extended_tokens: usize,
    pub base_tokens_per_byte: f64,
    pub extended_tokens_per_byte: f64,
    /// (extended - base) / base, in percent (negative: fewer tokens).
    pub change_percent: f64,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct ExtendReport {
    pub gguf: PathBuf,
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub config: AugmentConfig,
    pub stats: AugmentStats,
    pub domain_heldout: TokensPerByte,
    pub general_heldout: TokensPerByte,
    pub base_model: LlamaConfig,
    pub extended_model: LlamaConfig,
    /// The base ties its head to the embedding; the extended model has a separate head.
    pub untied: bool,
    pub seconds: f64,
}

fn texts(docs: &[Document], split: Split) -> Vec<&str> {
    docs.iter().filter(|d| d.split == split).map(|d| d.text.as_str()).collect()
}

fn measure(base: &tokenizers::Tokenizer, ext: &tokenizers::Tokenizer, t: &[&str]) -> Result<TokensPerByte> {
    let (b, bytes) = count_tokens(base, t)?;
    let (e, _) = count_tokens(ext, t)?;
    let per = |n: usize| n as f64 / bytes.max(1) as f64;
    Ok(TokensPerByte {
        documents: t.len(),
        bytes,
        base_tokens: b,
        extended_tokens: e,
        base_tokens_per_byte: per(b),
        extended_tokens_per_byte: per(e),
        change_percent: 100.0 * (e as f64 - b as f64) / b.max(1) as f64,
    })
}

/// Run the whole augmentation (module doc).
pub fn extend_gguf(
    gguf: &Path,
    corpus: &Path,
    out: &Path,
    cfg: &AugmentConfig,
    say: &mut dyn FnMut(String),
) -> Result<ExtendReport> {
    let t0 = Instant::now();
    let (dpath, gpath) = (corpus.join("domain.jsonl"), corpus.join("general.jsonl"));
    for p in [&dpath, &gpath] {
        if !p.is_file() {
            return Err(Error::config(
                "corpus",
                format!("{} does not exist: run `octet adapt corpus` first, or pass --corpus", p.display()),
            ));
        }
    }
    let domain = read_jsonl(&dpath)?;
    let general = read_jsonl(&gpath)?;
    let g = GgufFile::open(gguf)?;
    let base = g.tokenizer()?.into_inner();
    let aug = augment(&base, &texts(&domain, Split::Train), &texts(&general, Split::Train), cfg, say)?;

    say("measuring tokens per byte on the held-out documents".into());
    let domain_heldout = measure(&base, &aug.tokenizer, &texts(&domain, Split::Heldout))?;
    let general_heldout = measure(&base, &aug.tokenizer, &texts(&general, Split::Heldout))?;

    say("resizing the model (new input rows: mean of base pieces; new output rows: zero; head untied)".into());
    let mcfg = LlamaConfig::from_gguf(&g)?;
    let params: Vec<f32> = params_from_gguf(&g, &mcfg)?;
    let pieces: Vec<Vec<u32>> = aug.new_tokens.iter().map(|t| t.base_pieces.clone()).collect();
    let (ncfg, nparams) = extend_vocab(&mcfg, &params, &pieces)?;
    drop(params);
    export_hf(&ncfg, &nparams, &out.join("model.safetensors"))?;
    let tok_json = aug.tokenizer.to_string(false).map_err(|e| Error::Other(format!("tokenizer serialise: {e}")))?;
    write_atomic(&out.join("tokenizer.json"), tok_json.as_bytes())?;
    let mut lines = String::new();
    for t in &aug.new_tokens {
        lines.push_str(&serde_json::to_string(t).expect("serialises"));
        lines.push('\n');
    }
    write_atomic(&out.join("new_tokens.jsonl"), lines.as_bytes())?;
    let report = ExtendReport {
        gguf: gguf.to_path_buf(),
        corpus: corpus.to_path_buf(),
        out: out.to_path_buf(),
        config: cfg.clone(),
        stats: aug.stats,
        domain_heldout,
        general_heldout,
        base_model: mcfg,
        extended_model: ncfg,
        untied: mcfg.tied_embeddings,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let mut text = serde_json::to_string_pretty(&report).expect("report serialises");
    text.push('\n');
    write_atomic(&out.join("report.json"), text.as_bytes())?;
    Ok(report)
}
