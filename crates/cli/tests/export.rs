//! `octet export` end to end: a small Llama trained for a few steps, exported as GGUF (F32, F16, Q8_0)
//! and as a HuggingFace directory; `octet generate --gguf exported.gguf` gives the same tokens as
//! `octet generate --checkpoint` (greedy, and sampled with a fixed seed); the exported files, loaded
//! back in-process, give the checkpoint's logits (HF and GGUF F32: equal; F16, Q8_0: the maximum
//! change is printed); GPT-2 checkpoints and bad flags are refused with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use octet_core::Tolerance;
use octet_kernels::CpuBackend;
use octet_lm::data::TextTokenizer;
use octet_lm::gguf::GgufFile;
use octet_lm::llama::{Llama, LlamaConfig};
use octet_lm::spec::ModelSpec;

fn octet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octet")).args(args).output().expect("run octet")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first 40 kB of the embedded corpus.
fn corpus(dir: &Path) -> PathBuf {
    let full = include_str!("../assets/python-docs.txt");
    let cut = full.char_indices().nth(40_000).map_or(full.len(), |(i, _)| i);
    let p = dir.join("corpus.txt");
    std::fs::write(&p, &full[..cut]).unwrap();
    p
}

/// Train `--steps` steps of `arch` (extra flags appended) into `dir/out`; returns the run directory.
fn train(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let data = corpus(dir);
    let run = dir.join(out);
    let mut args = vec!["train", "--json", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap()];
    args.extend_from_slice(&[
        "--vocab-size",
        "400",
        "--batch",
        "4",
        "--seq",
        "16",
        "--eval-every",
        "5",
        "--checkpoint-every",
        "0",
    ]);
    args.extend_from_slice(extra);
    let o = octet(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    run
}

fn export(run: &Path, format: &str, ty: Option<&str>, out: &Path) -> Output {
    let mut args = vec!["export", "--checkpoint", run.to_str().unwrap(), "--format", format];
    if let Some(t) = ty {
        args.extend_from_slice(&["--type", t]);
    }
    args.extend_from_slice(&["--out", out.to_str().unwrap(), "--json"]);
    octet(&args)
}

fn generate(source: &[&str], prompt: &str, temperature: &str) -> serde_json::Value {
    let mut args = vec!["generate"];
    args.extend_from_slice(source);
    args.extend_from_slice(&["--prompt", prompt, "--max-tokens", "32", "--temperature", temperature, "--seed", "3"]);
    args.push("--json");
    let o = octet(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `generate --gguf` stops at EOS (`<|endoftext|>`, id 0) and drops special tokens from its text;
/// `generate --checkpoint` runs on and prints them. Same tokens means: same text, or, when the GGUF
/// run stopped at EOS, the checkpoint's text continues with `<|endoftext|>` right there.
#[track_caller]
fn assert_same_tokens(gguf: &serde_json::Value, ck: &serde_json::Value, what: &str) {
    let (g, c) = (gguf["text"].as_str().unwrap(), ck["text"].as_str().unwrap());
    if gguf["stopped_at_eos"] == true {
        assert!(c.starts_with(&format!("{g}<|endoftext|>")), "{what}: gguf {g:?} (stopped at EOS), checkpoint {c:?}");
    } else {
        assert_eq!(g, c, "{what}");
    }
}

/// Logits (T, V) of `cfg`/`params` on `toks`, the first V of each row.
fn logits(cfg: LlamaConfig, params: Vec<f32>, toks: &[u32]) -> Vec<f32> {
    let mut m = Llama::new(cfg, CpuBackend, params).unwrap();
    m.forward(toks, None, 1, toks.len()).unwrap();
    m.logits().chunks(cfg.padded_vocab).flat_map(|r| r[..cfg.vocab_size].to_vec()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn exported_gguf_generates_the_checkpoints_tokens_and_logits() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), "run", &["--arch", "llama", "--steps", "5"]);
    let ck = octet_lm::checkpoint::load(&run, false).unwrap();
    let ModelSpec::Llama(cfg) = ck.state.model else { panic!("not a llama checkpoint") };
    assert!(cfg.padded_vocab > cfg.vocab_size, "the test wants a padded vocabulary: {cfg:?}");
    let tok = TextTokenizer::load(&ck.dir.join("tokenizer.json")).unwrap();
    let text = "def f(x):\n    return x ** 2  # 42 squared is 1764\n";
    let toks = tok.encode(text).unwrap();
    let base = logits(cfg, ck.params.clone(), &toks);
    let run_s = run.to_str().unwrap();
    let prompt = "def f(x):";
    let ck_greedy = generate(&["--checkpoint", run_s], prompt, "0");
    let ck_sampled = generate(&["--checkpoint", run_s], prompt, "1");

    for ty in ["f32", "f16", "q8_0"] {
        let out = dir.path().join(format!("model-{ty}.gguf"));
        let o = export(&run, "gguf", Some(ty), &out);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["step"], 5);
        assert_eq!(v["bytes"], std::fs::metadata(&out).unwrap().len());

        let g = GgufFile::open(&out).unwrap();
        let model = Llama::from_gguf(&g, CpuBackend).unwrap();
        let got = logits(model.cfg, model.params_f32(), &toks);
        let diff = max_abs_diff(&got, &base);
        let scale = base.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("gguf {ty}: max |logit - checkpoint logit| = {diff:.3e} (max |logit| {scale:.2})");
        if ty == "f32" {
            // Same weights; only epsilon differs, rounded to the f32 GGUF stores.
            Tolerance::F32.assert_close("gguf f32 logits", &got, &base);
        }
        // The exported tokenizer encodes as tokenizer.json.
        assert_eq!(g.tokenizer().unwrap().encode(text).unwrap(), toks, "{ty}: tokenizer");

        let out_s = out.to_str().unwrap();
        assert_same_tokens(&generate(&["--gguf", out_s], prompt, "0"), &ck_greedy, &format!("{ty} greedy"));
        if ty == "f32" {
            assert_same_tokens(&generate(&["--gguf", out_s], prompt, "1"), &ck_sampled, "f32 sampled");
        }
    }
}

/// At the narrow levels the checkpoint stores f16 weights with per-tensor scales; export writes the
/// decoded weights, so `generate --gguf` again follows `generate --checkpoint`.
#[test]
fn a_narrow_precision_checkpoint_exports_its_decoded_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run =
        train(dir.path(), "run", &["--arch", "llama", "--model", "tiny", "--steps", "3", "--precision", "fp8-o2"]);
    let out = dir.path().join("m.gguf");
    let o = export(&run, "gguf", Some("f32"), &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = octet_lm::checkpoint::load(&run, false).unwrap();
    let g = GgufFile::open(&out).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let p = octet_lm::llama::params_from_gguf::<f32>(&g, &cfg).unwrap();
    let ModelSpec::Llama(ck_cfg) = ck.state.model else { panic!("not a llama checkpoint") };
    let emb = cfg.vocab_size * cfg.n_embd;
    assert_eq!(p[..emb], ck.params[..emb], "token_embd rows 0..V");
    assert_eq!(p.len() + (ck_cfg.padded_vocab - cfg.vocab_size) * cfg.n_embd, ck.params.len());
    let prompt = "def f(x):";
    let (run_s, out_s) = (run.to_str().unwrap(), out.to_str().unwrap());
    assert_same_tokens(
        &generate(&["--gguf", out_s], prompt, "1"),
        &generate(&["--checkpoint", run_s], prompt, "1"),
        "fp8-o2 sampled",
    );
}

#[test]
fn exported_hf_directory_imports_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), "run", &["--arch", "llama", "--steps", "3", "--model", "tiny"]);
    let ck = octet_lm::checkpoint::load(&run, false).unwrap();
    let ModelSpec::Llama(cfg) = ck.state.model else { panic!("not a llama checkpoint") };
    let out = dir.path().join("hf");
    let o = export(&run, "hf", None, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(ck.dir.join("tokenizer.json")).unwrap()
    );
    let (hcfg, hparams) = octet_lm::llama_hf::import_hf(&out).unwrap();
    assert_eq!(hcfg, LlamaConfig { padded_vocab: cfg.vocab_size, ..cfg });
    let toks: Vec<u32> = (0..12).map(|i| (i * 7 % cfg.vocab_size) as u32).collect();
    let (a, b) = (logits(hcfg, hparams, &toks), logits(cfg, ck.params, &toks));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "max diff {}", max_abs_diff(&a, &b));
}

#[test]
fn gpt2_checkpoints_and_bad_flags_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), "gpt2", &["--steps", "2", "--model", "tiny"]);
    let out = dir.path().join("x.gguf");
    for format in ["gguf", "hf"] {
        let o = export(&run, format, None, &out);
        let e = stderr(&o);
        assert!(!o.status.success());
        assert!(e.contains("holds a `gpt2` model; octet export writes Llama checkpoints only"), "{e}");
        assert!(e.contains("--format hf") && e.contains("--format gguf"), "{e}");
        assert!(!out.exists(), "nothing is written");
    }
    let run = train(dir.path(), "sas", &["--steps", "2", "--model", "tiny", "--block", "sas"]);
    let o = export(&run, "gguf", None, &out);
    assert!(!o.status.success() && stderr(&o).contains("holds a `gpt2` with the `sas` block model"), "{}", stderr(&o));
    let o = export(&run, "onnx", None, &out);
    assert!(!o.status.success() && stderr(&o).contains("unknown format `onnx`; expected hf or gguf"), "{}", stderr(&o));
    let o = export(&run, "gguf", Some("q4_k"), &out);
    assert!(!o.status.success() && stderr(&o).contains("expected f32, f16, q8_0"), "{}", stderr(&o));
    let o = export(&run, "hf", Some("q8_0"), &out);
    assert!(!o.status.success() && stderr(&o).contains("--format hf writes f32 only"), "{}", stderr(&o));
    let o = export(&dir.path().join("nope"), "gguf", None, &out);
    assert!(!o.status.success() && stderr(&o).contains("nope"), "{}", stderr(&o));
}

/// `train --init` from an exported GGUF file and from an exported HuggingFace directory: the run
/// starts from the exported weights (its step-0 held-out loss equals the checkpoint's model on the
/// same data within f32 rounding) and trains on with the model's own tokenizer.
#[test]
fn train_init_starts_from_exported_gguf_and_hf() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), "base", &["--arch", "llama", "--model", "tiny", "--steps", "5"]);
    let gguf = dir.path().join("m.gguf");
    let hf = dir.path().join("hf");
    assert!(export(&run, "gguf", Some("f32"), &gguf).status.success());
    assert!(export(&run, "hf", None, &hf).status.success());
    let data = corpus(dir.path());
    let mut first = vec![];
    for (name, init) in [("from-gguf", &gguf), ("from-hf", &hf)] {
        let out = dir.path().join(name);
        let o = octet(&[
            "train",
            "--json",
            "--init",
            init.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "3",
            "--batch",
            "2",
            "--seq",
            "16",
            "--checkpoint-every",
            "0",
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let lines: Vec<serde_json::Value> =
            String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let v0 = lines.iter().find(|v| v["event"] == "eval" && v["step"] == 0).expect("held-out loss at step 0");
        first.push(v0["val_loss"].as_f64().unwrap());
        assert_eq!(lines.last().unwrap()["event"], "summary");
    }
    // Both starts see the same weights (F32 GGUF and HF are exact) and the same tokenizer.
    assert!((first[0] - first[1]).abs() <= 1e-4 * first[0], "step-0 loss gguf {} vs hf {}", first[0], first[1]);
}
