//! A GGUF file -> header, metadata, tensor table -> Llama configuration, tokenizer and dequantised
//! weights (what `generate --gguf` and `train --init` do).
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use octet_lm::gguf::{GgufFile, GgufTokenizer};
use octet_lm::llama::{LlamaConfig, params_from_gguf};

fuzz_target!(|data: &[u8]| {
    let p = common::as_file("fuzz.gguf", data);
    let Ok(g) = GgufFile::open(&p) else { return };
    let _ = GgufTokenizer::from_gguf(&g);
    if let Ok(cfg) = LlamaConfig::from_gguf(&g) {
        let _ = params_from_gguf::<f32>(&g, &cfg);
    }
});
