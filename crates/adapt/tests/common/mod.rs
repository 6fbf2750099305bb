//! Fixtures shared by the adapt tests: a tiny corpus and a tiny Llama in HuggingFace layout with a
//! byte-level BPE trained on it (ChatML special tokens added), and the tiny golden sentence encoder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use octet_adapt::corpus::{Category, Document, Split};
use octet_core::scaling::Recipe;
use octet_kernels::CpuBackend;
use octet_lm::data::TextTokenizer;
use octet_lm::llama::{Llama, LlamaConfig};
use octet_lm::precision::Precision;

pub fn doc(i: usize, category: Category, split: Split, text: String) -> Document {
    Document {
        id: format!("{i:016x}"),
        source: "fixture".into(),
        licence: "MIT".into(),
        category,
        split,
        path: format!("f{i}"),
        text,
    }
}

/// 12 training and 3 held-out domain documents, 6 + 2 general ones; held-out documents carry the word
/// HELDOUTWORD, general ones "prose".
pub fn corpus(dir: &Path) {
    let design = |i: usize, split: Split| {
        let extra = if split == Split::Heldout { "// HELDOUTWORD marker\n" } else { "" };
        format!(
            "{extra}module m{i} (input logic clk, output logic q{i});\n  always_ff @(posedge clk) q{i} <= ~q{i};\nendmodule\n"
        )
    };
    let mut domain: Vec<Document> =
        (0..12).map(|i| doc(i, Category::Design, Split::Train, design(i, Split::Train))).collect();
    domain.extend((12..15).map(|i| doc(i, Category::Design, Split::Heldout, design(i, Split::Heldout))));
    let prose = |i: usize, split: Split| {
        let extra = if split == Split::Heldout { " HELDOUTWORD" } else { "" };
        format!(
            "This is general prose number {i}, about Python lists and dictionaries.{extra} It goes on for a while.\n"
        )
    };
    let mut general: Vec<Document> =
        (0..6).map(|i| doc(100 + i, Category::General, Split::Train, prose(i, Split::Train))).collect();
    general.extend((6..8).map(|i| doc(100 + i, Category::General, Split::Heldout, prose(i, Split::Heldout))));
    for (name, docs) in [("domain.jsonl", &domain), ("general.jsonl", &general)] {
        let text: String = docs.iter().map(|d| serde_json::to_string(d).unwrap() + "\n").collect();
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// A tiny Llama in HuggingFace layout with a 320-token BPE trained on the corpus (+ `<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>`).
pub fn tiny_model(dir: &Path, corpus_dir: &Path) {
    let text = std::fs::read_to_string(corpus_dir.join("domain.jsonl")).unwrap()
        + &std::fs::read_to_string(corpus_dir.join("general.jsonl")).unwrap();
    let tok = TextTokenizer::train(&text, 320).unwrap();
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    let mut t = tokenizers::Tokenizer::from_file(&path).unwrap();
    t.add_special_tokens([
        tokenizers::AddedToken::from("<|im_start|>", true),
        tokenizers::AddedToken::from("<|im_end|>", true),
    ])
    .unwrap();
    t.save(&path, false).unwrap();
    let v = t.get_vocab_size(true);
    let cfg =
        LlamaConfig { vocab_size: v, padded_vocab: v.next_multiple_of(8), max_seq_len: 128, ..LlamaConfig::tiny() };
    let m = Llama::init(cfg, CpuBackend, Precision::Fp32, &Recipe::default(), 7).unwrap();
    octet_lm::llama_hf::export_hf(&cfg, &m.params_f32(), &dir.join("model.safetensors")).unwrap();
}

/// The tiny golden BERT (tests/golden/minilm) as a sentence-transformers directory `dir/name`,
/// with a 32-word WordPiece vocabulary and a 12-token context.
pub fn tiny_encoder(dir: &Path, name: &str) -> PathBuf {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/minilm");
    let model = dir.join(name);
    std::fs::create_dir_all(&model).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("tiny.json")).unwrap()).unwrap();
    std::fs::write(model.join("config.json"), j["config"].to_string()).unwrap();
    std::fs::copy(golden.join("tiny.safetensors"), model.join("model.safetensors")).unwrap();
    std::fs::write(model.join("tokenizer.json"), TINY_ENCODER_TOKENIZER).unwrap();
    std::fs::write(model.join("sentence_bert_config.json"), r#"{"max_seq_length": 12}"#).unwrap();
    model
}

const TINY_ENCODER_TOKENIZER: &str = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"[PAD]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":1,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":2,"content":"[CLS]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":3,"content":"[SEP]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":4,"content":"[MASK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true},"pre_tokenizer":{"type":"BertPreTokenizer"},"post_processor":{"type":"BertProcessing","sep":["[SEP]",3],"cls":["[CLS]",2]},"decoder":null,"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,"vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"[MASK]":4,"the":5,"uart":6,"fifo":7,"reset":8,"clock":9,"aes":10,"key":11,"cipher":12,"block":13,"register":14,"write":15,"read":16,"enable":17,"interrupt":18,"timer":19,"counter":20,"bus":21,"flash":22,"erase":23,"page":24,"data":25,"how":26,"do":27,"i":28,"a":29,"of":30,"##s":31}}}"###;
