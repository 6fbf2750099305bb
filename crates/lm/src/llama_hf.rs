//! HuggingFace Llama checkpoints: export octet's Llama parameters as a `model.safetensors` +
//! `config.json` pair that transformers' `LlamaForCausalLM` loads, and import such a pair back into
//! octet's layout.
//!
//! Names and shapes (weights (out, in), as in octet), with V = vocab_size, C = hidden, KVD = NKV hs,
//! H = intermediate:
//! ```text
//! model.embed_tokens.weight                        (V, C)     token_embd rows 0..V
//! model.layers.{i}.input_layernorm.weight          (C)        attn_norm[i]
//! model.layers.{i}.self_attn.q_proj.weight         (C, C)     attn_qkv[i] rows 0..C,       RoPE-unpermuted
//! model.layers.{i}.self_attn.k_proj.weight         (KVD, C)   attn_qkv[i] rows C..C+KVD,   RoPE-unpermuted
//! model.layers.{i}.self_attn.v_proj.weight         (KVD, C)   attn_qkv[i] rows C+KVD..
//! model.layers.{i}.self_attn.o_proj.weight         (C, C)     attn_output[i]
//! model.layers.{i}.post_attention_layernorm.weight (C)        ffn_norm[i]
//! model.layers.{i}.mlp.gate_proj.weight            (H, C)     ffn_gate_up[i] rows 0..H
//! model.layers.{i}.mlp.up_proj.weight              (H, C)     ffn_gate_up[i] rows H..2H
//! model.layers.{i}.mlp.down_proj.weight            (C, H)     ffn_down[i]
//! model.norm.weight                                (C)        output_norm
//! lm_head.weight                                   (V, C)     output rows 0..V (untied only)
//! ```
//!
//! RoPE: octet's q/k rows are GGUF's, which llama.cpp's `convert_hf_to_gguf.py` permuted so that each
//! head's rotation pairs are interleaved (2i, 2i+1) instead of HF's half-split (i, i + hs/2) (see the
//! `llama` module doc). `LlamaModel.permute(w, n_head, n_head_kv)` is
//! `w.reshape(n, 2, hs/2, C).swapaxes(1, 2).reshape(w.shape)` with n = NH for q_proj and n = NKV for
//! k_proj: GGUF row h hs + 2i + j = HF row h hs + j hs/2 + i. [`permute_qk_rows`] is that map,
//! [`unpermute_qk_rows`] its inverse; export unpermutes, import permutes.
//!
//! Vocabulary padding: HF has none, so export writes the first `vocab_size` rows of the embedding and
//! head (padded rows carry no information: the loss never reads their logits), and import returns
//! `padded_vocab = vocab_size`.
//!
//! Files are written atomically one by one (temporary file, fsync, rename): the weights first, then
//! `config.json`. Import reads F32, BF16 and F16 tensors (widened exactly to f32); every missing,
//! misshapen, mistyped or unexpected tensor and every unsupported config value is an `Error::Format`
//! naming the file and the tensor or key, expected vs found.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use octet_core::codec::{bf16_value, f16_value};
use octet_core::fs::write_atomic;
use octet_core::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value, json};

use crate::llama::{LlamaConfig, param_layout};

/// The weights file of an exported or imported directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The HF configuration file beside it.
pub const CONFIG_FILE: &str = "config.json";

/// HF (half-split RoPE pairs) rows to GGUF/octet (interleaved pairs) rows: llama.cpp's
/// `LlamaModel.permute`. `w` is (n_head hs, cols) row-major; out row h hs + 2i + j = in row
/// h hs + j hs/2 + i. Panics unless `w` holds n_head heads of an even head size.
pub fn permute_qk_rows<T: Copy>(w: &[T], n_head: usize, cols: usize) -> Vec<T> {
    let hs = head_rows(w.len(), n_head, cols);
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..hs / 2 {
            for j in 0..2 {
                out.extend_from_slice(&w[(h * hs + j * hs / 2 + i) * cols..][..cols]);
            }
        }
    }
    out
}

/// GGUF/octet (interleaved) rows to HF (half-split) rows: the inverse of [`permute_qk_rows`], out row
/// h hs + j hs/2 + i = in row h hs + 2i + j.
pub fn unpermute_qk_rows<T: Copy>(w: &[T], n_head: usize, cols: usize) -> Vec<T> {
    let hs = head_rows(w.len(), n_head, cols);
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..hs / 2 {
                out.extend_from_slice(&w[(h * hs + 2 * i + j) * cols..][..cols]);
            }
        }
    }
    out
}

/// Rows per head of a (n_head hs, cols) matrix of `len` elements.
fn head_rows(len: usize, n_head: usize, cols: usize) -> usize {
    assert!(
        n_head > 0 && cols > 0 && len.is_multiple_of(n_head * cols),
        "{len} values are not {n_head} heads of {cols} columns"
    );
    let hs = len / (n_head * cols);
    assert!(hs.is_multiple_of(2), "head size {hs} is odd");
    hs
}

/// One HF tensor: a contiguous range of octet's parameters, RoPE-permuted over `rope_heads` heads
/// (q_proj, k_proj) or copied as is.
struct Piece {
    name: String,
    shape: Vec<usize>,
    offset: usize,
    rope_heads: Option<usize>,
}

impl Piece {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The HF tensors of `cfg` in file order (see the module doc).
fn pieces(cfg: &LlamaConfig) -> Vec<Piece> {
    let layout = param_layout(cfg);
    let (v, d, h, kvd) = (cfg.vocab_size, cfg.n_embd, cfg.ffn_hidden, cfg.kv_dim());
    let at =
        |name: &str, l: usize, row: usize, cols: usize| layout.range_at(layout.expect_id(name), l).start + row * cols;
    let start = |name: &str| layout.spec(layout.expect_id(name)).offset;
    let piece = |name: String, shape: Vec<usize>, offset: usize| Piece { name, shape, offset, rope_heads: None };
    let mut out = vec![piece("model.embed_tokens.weight".into(), vec![v, d], start("token_embd"))];
    for l in 0..cfg.n_layer {
        let n = |s: &str| format!("model.layers.{l}.{s}.weight");
        out.extend([
            piece(n("input_layernorm"), vec![d], at("attn_norm", l, 0, d)),
            Piece { rope_heads: Some(cfg.n_head), ..piece(n("self_attn.q_proj"), vec![d, d], at("attn_qkv", l, 0, d)) },
            Piece {
                rope_heads: Some(cfg.n_kv_head),
                ..piece(n("self_attn.k_proj"), vec![kvd, d], at("attn_qkv", l, d, d))
            },
            piece(n("self_attn.v_proj"), vec![kvd, d], at("attn_qkv", l, d + kvd, d)),
            piece(n("self_attn.o_proj"), vec![d, d], at("attn_output", l, 0, d)),
            piece(n("post_attention_layernorm"), vec![d], at("ffn_norm", l, 0, d)),
            piece(n("mlp.gate_proj"), vec![h, d], at("ffn_gate_up", l, 0, d)),
            piece(n("mlp.up_proj"), vec![h, d], at("ffn_gate_up", l, h, d)),
            piece(n("mlp.down_proj"), vec![d, h], at("ffn_down", l, 0, h)),
        ]);
    }
    out.push(piece("model.norm.weight".into(), vec![d], start("output_norm")));
    if !cfg.tied_embeddings {
        out.push(piece("lm_head.weight".into(), vec![v, d], start("output")));
    }
    out
}

/// The HF `config.json` of `cfg` (transformers `LlamaConfig` keys).
pub fn hf_config(cfg: &LlamaConfig) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_size(),
        "hidden_act": "silu",
        // The exact f64 octet holds (SmolLM2's 1e-5 is an f32 widened: 9.999999747378752e-6), so that
        // import gives back the same config; in float32, where HF adds it, it is the same number.
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_scaling": null,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tied_embeddings,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
    })
}

/// Write `params` (laid out as `param_layout(cfg)`) as an HF Llama safetensors file at `path` (F32;
/// name it `model.safetensors` for `from_pretrained` and [`import_hf`]) and `config.json` beside it.
pub fn export_hf(cfg: &LlamaConfig, params: &[f32], path: &Path) -> Result<()> {
    cfg.validate()?;
    let total = param_layout(cfg).total();
    if params.len() != total {
        return Err(Error::Shape { name: "params".into(), expected: vec![total], found: vec![params.len()] });
    }
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for p in pieces(cfg) {
        let src = &params[p.offset..][..p.len()];
        let vals = match p.rope_heads {
            Some(n) => unpermute_qk_rows(src, n, cfg.n_embd),
            None => src.to_vec(),
        };
        owned.push((p.name, p.shape, vals.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views = owned.iter().map(|(n, s, b)| {
        (n.as_str(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("shape matches bytes"))
    });
    // transformers refuses safetensors files without a framework tag.
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    drop(owned);
    write_atomic(path, &bytes)?;
    drop(bytes);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut text = serde_json::to_string_pretty(&hf_config(cfg)).expect("config serialises");
    text.push('\n');
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads typed keys of a JSON object, with errors naming the file and key.
struct Keys<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Keys<'_> {
    /// The value of `key`, `None` when absent or null (HF's defaults then apply).
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::format(self.path, key, msg)
    }
    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| self.err(key, format!("expected an integer >= 0, found {v}")))
            })
            .transpose()
    }
    fn need_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.err(key, "missing (expected an integer)"))
    }
    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.err(key, format!("expected a number, found {v}"))))
            .transpose()
    }
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))))
            .transpose()
    }
    fn str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.err(key, format!("expected a string, found {v}"))))
            .transpose()
    }
}

/// The octet config of an HF `config.json` (`path` names it in errors). HF's `LlamaConfig` defaults
/// apply to absent keys (kv heads = heads, RoPE theta 10000, epsilon 1e-6, 2048 positions, untied);
/// the five sizes are required. Refused: another `model_type`, RoPE scaling, activations other than
/// silu, biases, a head_dim other than hidden_size / num_attention_heads.
pub fn config_from_hf(v: &Value, path: &Path) -> Result<LlamaConfig> {
    let obj = v.as_object().ok_or_else(|| Error::format(path, "config", "expected a JSON object"))?;
    let k = Keys { path, obj };
    match k.str("model_type")? {
        Some("llama") => {}
        other => return Err(k.err("model_type", format!("expected \"llama\", found {other:?}"))),
    }
    if let Some(act) = k.str("hidden_act")?
        && act != "silu"
    {
        return Err(k.err("hidden_act", format!("expected \"silu\", found {act:?}")));
    }
    for key in ["attention_bias", "mlp_bias"] {
        if k.bool(key)? == Some(true) {
            return Err(k.err(key, "expected false (octet's Llama has no biases), found true"));
        }
    }
    // RoPE: transformers 4.x keeps `rope_theta` and `rope_scaling` (null for plain RoPE); 5.x folds both
    // into `rope_parameters` with `rope_type` "default" for plain RoPE.
    let mut rope_base = k.f64("rope_theta")?;
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(r) = k.get(key) else { continue };
        let sub =
            Keys { path, obj: r.as_object().ok_or_else(|| k.err(key, format!("expected an object, found {r}")))? };
        let ty = match sub.str("rope_type")? {
            Some(t) => Some(t),
            None => sub.str("type")?,
        };
        if ty != Some("default") {
            return Err(k.err(key, format!("{r}: only plain RoPE (rope_type \"default\") is supported")));
        }
        if rope_base.is_none() {
            rope_base = sub.f64("rope_theta")?;
        }
    }
    let (n_embd, n_head) = (k.need_usize("hidden_size")?, k.need_usize("num_attention_heads")?);
    let vocab_size = k.need_usize("vocab_size")?;
    let cfg = LlamaConfig {
        vocab_size,
        padded_vocab: vocab_size,
        max_seq_len: k.usize("max_position_embeddings")?.unwrap_or(2048),
        n_layer: k.need_usize("num_hidden_layers")?,
        n_head,
        n_kv_head: k.usize("num_key_value_heads")?.unwrap_or(n_head),
        n_embd,
        ffn_hidden: k.need_usize("intermediate_size")?,
        rope_base: rope_base.unwrap_or(10_000.0),
        norm_eps: k.f64("rms_norm_eps")?.unwrap_or(1e-6),
        tied_embeddings: k.bool("tie_word_embeddings")?.unwrap_or(false),
    };
    cfg.validate().map_err(|e| Error::format(path, "config", e.to_string()))?;
    if let Some(hd) = k.usize("head_dim")?
        && hd != cfg.head_size()
    {
        return Err(
            k.err("head_dim", format!("expected hidden_size / num_attention_heads = {}, found {hd}", cfg.head_size()))
        );
    }
    Ok(cfg)
}

/// Read an HF Llama checkpoint: `dir` holds `config.json` and `model.safetensors` (or `dir` is the
/// safetensors file, with `config.json` beside it). Returns the config and the parameters in
/// `param_layout(&cfg)` order (q/k rows permuted to octet's interleaved RoPE convention).
pub fn import_hf(dir: &Path) -> Result<(LlamaConfig, Vec<f32>)> {
    let (dir, weights): (PathBuf, PathBuf) = if dir.is_file() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (parent.to_path_buf(), dir.to_path_buf())
    } else {
        (dir.to_path_buf(), dir.join(WEIGHTS_FILE))
    };
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::format(&config_path, "config", e.to_string()))?;
    let cfg = config_from_hf(&value, &config_path)?;

    if !weights.is_file() && dir.join("model.safetensors.index.json").is_file() {
        return Err(Error::format(
            &weights,
            WEIGHTS_FILE,
            "missing; the directory has a sharded checkpoint (model.safetensors.index.json), which is not supported",
        ));
    }
    let f = File::open(&weights).map_err(|e| Error::io(&weights, e))?;
    // SAFETY: read-only mapping of a file we do not modify; as elsewhere in octet, a concurrent writer
    // is out of contract.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(&weights, e))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| Error::format(&weights, "header", e.to_string()))?;

    let mut params = vec![0.0f32; param_layout(&cfg).total()];
    let pieces = pieces(&cfg);
    for p in &pieces {
        let t = st.tensor(&p.name).map_err(|_| {
            Error::format(
                &weights,
                &p.name,
                format!("missing tensor (expected shape {:?}, dtype F32/BF16/F16)", p.shape),
            )
        })?;
        if t.shape() != p.shape.as_slice() {
            return Err(Error::format(
                &weights,
                &p.name,
                format!("expected shape {:?}, found {:?}", p.shape, t.shape()),
            ));
        }
        let dst = &mut params[p.offset..][..p.len()];
        let data = t.data();
        match t.dtype() {
            Dtype::F32 => dst.iter_mut().zip(data.chunks_exact(4)).for_each(|(o, b)| {
                *o = f32::from_le_bytes(b.try_into().unwrap());
            }),
            Dtype::BF16 => dst.iter_mut().zip(data.chunks_exact(2)).for_each(|(o, b)| {
                *o = bf16_value(u16::from_le_bytes([b[0], b[1]]));
            }),
            Dtype::F16 => dst.iter_mut().zip(data.chunks_exact(2)).for_each(|(o, b)| {
                *o = f16_value(u16::from_le_bytes([b[0], b[1]]));
            }),
            other => {
                return Err(Error::format(
                    &weights,
                    &p.name,
                    format!("expected dtype F32, BF16 or F16, found {other:?}"),
                ));
            }
        }
        if let Some(n) = p.rope_heads {
            let permuted = permute_qk_rows(dst, n, cfg.n_embd);
            dst.copy_from_slice(&permuted);
        }
    }
    // Anything else means the file is not the model config.json describes (biases, another layout).
    // Tolerated: the RoPE frequency buffers old exports carry, and a head copy when tied (HF ties it).
    for name in st.names() {
        let known = pieces.iter().any(|p| p.name == name)
            || name.ends_with(".rotary_emb.inv_freq")
            || (cfg.tied_embeddings && name == "lm_head.weight");
        if !known {
            let t = st.tensor(name).expect("listed");
            return Err(Error::format(
                &weights,
                name,
                format!(
                    "unexpected tensor (shape {:?}, dtype {:?}): not part of the Llama that {} describes",
                    t.shape(),
                    t.dtype(),
                    config_path.display()
                ),
            ));
        }
    }
    Ok((cfg, params))
}
