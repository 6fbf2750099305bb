//! `octet export`: a Llama checkpoint as a HuggingFace directory (`llama_hf::export_hf` + the
//! checkpoint's `tokenizer.json`) or as a GGUF v3 `llama` file that llama.cpp and `octet generate
//! --gguf` run (F32, F16 or Q8_0 weights, the tokenizer in its metadata).
//!
//! The GGUF tensors, dims in GGUF order ([in, out] for a row-major (out, in) matrix), V = vocab_size
//! (the padded rows are not written), C, H, KVD as in `llama`:
//! ```text
//! token_embd.weight          [C, V]     token_embd rows 0..V
//! blk.{i}.attn_norm.weight   [C]        attn_norm[i]                      (F32 always)
//! blk.{i}.attn_q.weight      [C, C]     attn_qkv[i] rows 0..C             (interleaved-RoPE rows, as stored)
//! blk.{i}.attn_k.weight      [C, KVD]   attn_qkv[i] rows C..C+KVD         (idem)
//! blk.{i}.attn_v.weight      [C, KVD]   attn_qkv[i] rows C+KVD..
//! blk.{i}.attn_output.weight [C, C]     attn_output[i]
//! blk.{i}.ffn_norm.weight    [C]        ffn_norm[i]                       (F32 always)
//! blk.{i}.ffn_gate.weight    [C, H]     ffn_gate_up[i] rows 0..H
//! blk.{i}.ffn_up.weight      [C, H]     ffn_gate_up[i] rows H..2H
//! blk.{i}.ffn_down.weight    [H, C]     ffn_down[i]
//! output_norm.weight         [C]        output_norm                       (F32 always)
//! output.weight              [C, V]     output rows 0..V (untied only)
//! ```
//! These are exactly the names and dims `llama::params_from_gguf` reads, so export then import gives
//! back the checkpoint's parameters (padded rows aside): bit for bit in F32. Norm gains stay F32 in F16
//! and Q8_0 files (llama.cpp's convention: 1-D tensors are never quantised); a matrix whose rows
//! (`ne[0]`) are not whole Q8_0 blocks of 32 is written F16 instead.
//!
//! Metadata: `general.architecture` = "llama", `general.name`, `general.file_type` (llama.cpp's
//! `llama_ftype`: 0 all F32, 1 mostly F16, 7 mostly Q8_0), `general.quantization_version` 2 for Q8_0,
//! the `llama.*` hyper-parameters (`context_length`, `embedding_length`, `block_count`,
//! `feed_forward_length`, `attention.head_count`, `attention.head_count_kv`, `rope.freq_base`,
//! `rope.dimension_count`, `attention.layer_norm_rms_epsilon`, `vocab_size`; the two floats are f32
//! as llama.cpp reads them, so an epsilon of 1e-5 comes back as the f32 nearest it) and the tokenizer
//! (`gguf::GgufVocab`).

use std::path::{Path, PathBuf};

use octet_core::{Error, Result};

use crate::checkpoint;
use crate::gguf::tokenizer::TOKEN_TYPE_UNUSED;
use crate::gguf::{GgmlType, GgufVocab, GgufWriter};
use crate::llama::{LlamaConfig, param_layout};
use crate::llama_hf::{WEIGHTS_FILE, export_hf};
use crate::spec::ModelSpec;

/// What `octet export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A HuggingFace directory: model.safetensors (F32), config.json, tokenizer.json.
    Hf,
    /// A GGUF file with matrices of this type (F32, F16 or Q8_0).
    Gguf(GgmlType),
}

impl Format {
    /// From the command line's `--format hf|gguf` and `--type f32|f16|q8_0` (GGUF only).
    pub fn parse(format: &str, ty: Option<&str>) -> Result<Format> {
        match (format, ty) {
            ("hf", None | Some("f32")) => Ok(Format::Hf),
            ("hf", Some(t)) => Err(Error::config("type", format!("`{t}`: --format hf writes f32 only"))),
            ("gguf", t) => Ok(Format::Gguf(match t.unwrap_or("f32") {
                "f32" => GgmlType::F32,
                "f16" => GgmlType::F16,
                "q8_0" => GgmlType::Q8_0,
                other => {
                    return Err(Error::config("type", format!("unknown GGUF type `{other}`; expected f32, f16, q8_0")));
                }
            })),
            (other, _) => Err(Error::config("format", format!("unknown format `{other}`; expected hf or gguf"))),
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The GGUF file, or the HF directory.
    pub path: PathBuf,
    pub config: LlamaConfig,
    /// Optimizer steps of the checkpoint.
    pub step: usize,
    pub bytes: u64,
}

/// Export the checkpoint (or run directory) `checkpoint` as `format` to `out` (a file for GGUF, a
/// directory for HF). Only Llama checkpoints export; others are refused naming what is supported.
pub fn export(checkpoint: &Path, format: Format, out: &Path) -> Result<Exported> {
    let ck = checkpoint::load(checkpoint, false)?;
    let cfg = match ck.state.model {
        ModelSpec::Llama(c) => c,
        other => {
            let what = match other {
                ModelSpec::Blocks(b) => format!("`gpt2` with the `{}` block", b.block),
                _ => "`gpt2`".to_string(),
            };
            return Err(Error::config(
                "checkpoint",
                format!(
                    "{} holds a {what} model; octet export writes Llama checkpoints only (`octet train --arch \
                     llama`, or --init FILE.gguf|HF_DIR), as --format hf (HuggingFace LlamaForCausalLM) or \
                     --format gguf (llama.cpp `llama`)",
                    ck.dir.display()
                ),
            ));
        }
    };
    let tok_path = ck.dir.join("tokenizer.json");
    let bytes = match format {
        Format::Hf => {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            export_hf(&cfg, &ck.params, &out.join(WEIGHTS_FILE))?;
            std::fs::copy(&tok_path, out.join("tokenizer.json")).map_err(|e| Error::io(&tok_path, e))?;
            ["model.safetensors", "config.json", "tokenizer.json"]
                .iter()
                .map(|f| std::fs::metadata(out.join(f)).map_or(0, |m| m.len()))
                .sum()
        }
        Format::Gguf(ty) => {
            let text = std::fs::read_to_string(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
            let mut vocab = GgufVocab::from_hf_json(&text, &tok_path)?;
            vocab.chat_template = init_chat_template(&ck.state)?;
            let name = format!("octet llama (step {})", ck.state.step);
            let w = llama_gguf(&cfg, &ck.params, &vocab, ty, &name)?;
            let bytes = w.to_bytes();
            octet_core::fs::write_atomic(out, &bytes)?;
            bytes.len() as u64
        }
    };
    Ok(Exported { path: out.to_path_buf(), config: cfg, step: ck.state.step, bytes })
}

/// A GGUF `llama` model of `params` (laid out as `param_layout(cfg)`) with matrices of type `ty` and
/// the tokenizer `vocab` (see the module doc). The vocabulary may be shorter than `cfg.vocab_size`
/// (a tokenizer that uses fewer rows than the model has), never longer: llama.cpp wants one token per
/// embedding row, so it is padded as llama.cpp's converter pads, with `[PAD{id}]` tokens of type
/// 5 (`LLAMA_TOKEN_TYPE_UNUSED`), which no merge produces.
pub fn llama_gguf(
    cfg: &LlamaConfig,
    params: &[f32],
    vocab: &GgufVocab,
    ty: GgmlType,
    name: &str,
) -> Result<GgufWriter> {
    cfg.validate()?;
    let layout = param_layout(cfg);
    if params.len() != layout.total() {
        return Err(Error::Shape { name: "params".into(), expected: vec![layout.total()], found: vec![params.len()] });
    }
    let file_type = match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        other => return Err(Error::config("type", format!("GGUF export writes F32, F16 or Q8_0, not {other}"))),
    };
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama")?;
    w.add_str("general.name", name)?;
    w.add_u32("general.file_type", file_type)?;
    if ty == GgmlType::Q8_0 {
        w.add_u32("general.quantization_version", 2)?;
    }
    w.add_u32("llama.context_length", cfg.max_seq_len)?;
    w.add_u32("llama.embedding_length", cfg.n_embd)?;
    w.add_u32("llama.block_count", cfg.n_layer)?;
    w.add_u32("llama.feed_forward_length", cfg.ffn_hidden)?;
    w.add_u32("llama.attention.head_count", cfg.n_head)?;
    w.add_u32("llama.attention.head_count_kv", cfg.n_kv_head)?;
    w.add_f32("llama.rope.freq_base", cfg.rope_base as f32)?;
    w.add_u32("llama.rope.dimension_count", cfg.head_size())?;
    w.add_f32("llama.attention.layer_norm_rms_epsilon", cfg.norm_eps as f32)?;
    w.add_u32("llama.vocab_size", cfg.vocab_size)?;
    if vocab.tokens.len() > cfg.vocab_size {
        return Err(Error::config(
            "tokenizer",
            format!("{} tokens, but the model has {} embedding rows", vocab.tokens.len(), cfg.vocab_size),
        ));
    }
    let mut vocab = vocab.clone();
    for id in vocab.tokens.len()..cfg.vocab_size {
        vocab.tokens.push(format!("[PAD{id}]"));
        vocab.token_types.push(TOKEN_TYPE_UNUSED);
    }
    vocab.write_metadata(&mut w)?;

    let (v, d, h, kvd) = (cfg.vocab_size, cfg.n_embd, cfg.ffn_hidden, cfg.kv_dim());
    let at =
        |name: &str, l: usize, row: usize, cols: usize| layout.range_at(layout.expect_id(name), l).start + row * cols;
    let start = |name: &str| layout.spec(layout.expect_id(name)).offset;
    // (rows, cols) row-major at `off` -> GGUF [cols, rows]; vectors [cols] and F32.
    let mut put = |name: String, rows: usize, cols: usize, off: usize| -> Result<()> {
        let vals = &params[off..off + rows * cols];
        if rows == 0 {
            return w.add_tensor(&name, &[cols as u64], GgmlType::F32, &params[off..off + cols]);
        }
        let t = if ty == GgmlType::Q8_0 && !cols.is_multiple_of(32) { GgmlType::F16 } else { ty };
        w.add_tensor(&name, &[cols as u64, rows as u64], t, vals)
    };
    put("token_embd.weight".into(), v, d, start("token_embd"))?;
    for l in 0..cfg.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        put(b("attn_norm"), 0, d, at("attn_norm", l, 0, d))?;
        put(b("attn_q"), d, d, at("attn_qkv", l, 0, d))?;
        put(b("attn_k"), kvd, d, at("attn_qkv", l, d, d))?;
        put(b("attn_v"), kvd, d, at("attn_qkv", l, d + kvd, d))?;
        put(b("attn_output"), d, d, at("attn_output", l, 0, d))?;
        put(b("ffn_norm"), 0, d, at("ffn_norm", l, 0, d))?;
        put(b("ffn_gate"), h, d, at("ffn_gate_up", l, 0, d))?;
        put(b("ffn_up"), h, d, at("ffn_gate_up", l, h, d))?;
        put(b("ffn_down"), d, h, at("ffn_down", l, 0, h))?;
    }
    put("output_norm.weight".into(), 0, d, start("output_norm"))?;
    if !cfg.tied_embeddings {
        put("output.weight".into(), v, d, start("output"))?;
    }
    Ok(w)
}

/// The chat template of the GGUF file a run was initialised from, followed back through runs
/// initialised from runs (SFT from DAPT from the GGUF); None when the chain ends elsewhere.
fn init_chat_template(state: &checkpoint::State) -> Result<Option<String>> {
    let mut from = state.train.init.clone();
    for _ in 0..8 {
        match from {
            Some(p) if p.is_file() => {
                let g = crate::gguf::GgufFile::open(&p)?;
                return Ok(g.tokenizer()?.chat_template);
            }
            Some(p) if p.join("latest").is_file() || p.join("state.json").is_file() => {
                from = checkpoint::load(&p, false)?.state.train.init;
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}
