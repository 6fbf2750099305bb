//! `octet adapt eval` end to end without a model: the reference solutions of a few VerilogEval problems
//! score 100% with per-problem JSON lines, and bad input (no iverilog, a problem missing a file, no
//! model, no task) fails with a clear message. Tests that simulate print `SKIPPED <test>: <reason>`
//! when iverilog or `../shared/data/verilog-eval/spec-to-rtl` is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn octet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octet")).args(args).output().expect("run octet")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn problems_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/verilog-eval/spec-to-rtl")
}

/// A problem directory with the first `n` problems of the shared set (copied into `dir`), or None.
fn small_set(test: &str, dir: &Path, n: usize) -> Option<PathBuf> {
    let src = problems_dir();
    let has_iverilog = Command::new("iverilog").arg("-V").output().is_ok();
    if !src.is_dir() || !has_iverilog {
        eprintln!("SKIPPED {test}: needs iverilog and {}", src.display());
        return None;
    }
    let mut names: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix("_prompt.txt").map(str::to_string))
        .collect();
    names.sort();
    let out = dir.join("problems");
    std::fs::create_dir_all(&out).unwrap();
    for name in &names[..n] {
        for s in ["_prompt.txt", "_ref.sv", "_test.sv"] {
            std::fs::copy(src.join(format!("{name}{s}")), out.join(format!("{name}{s}"))).unwrap();
        }
    }
    Some(out)
}

#[test]
fn reference_solutions_pass_with_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let Some(set) = small_set("reference_solutions_pass_with_json_lines", dir.path(), 4) else { return };
    let lines = dir.path().join("ref.jsonl");
    let o = octet(&[
        "adapt",
        "eval",
        "--verilog-eval",
        set.to_str().unwrap(),
        "--reference",
        "--out",
        lines.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("4 problems, pass 100.0%, compile 100.0%"), "{stdout}");
    let text = std::fs::read_to_string(&lines).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["greedy"]["outcome"] == "pass"), "{text}");
    // --json: one object.
    let o = octet(&["adapt", "eval", "--verilog-eval", set.to_str().unwrap(), "--reference", "--limit", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verilog_eval_reference"]["problems"], 1);
}

#[test]
fn missing_iverilog_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let Some(set) = small_set("missing_iverilog_names_the_package", dir.path(), 1) else { return };
    let o = Command::new(env!("CARGO_BIN_EXE_octet"))
        .args(["adapt", "eval", "--verilog-eval", set.to_str().unwrap(), "--reference"])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("install the `iverilog` package"), "{e}");
}

#[test]
fn a_problem_missing_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Prob001_zero_prompt.txt"), "spec").unwrap();
    std::fs::write(dir.path().join("Prob001_zero_test.sv"), "module tb(); endmodule").unwrap();
    let o = octet(&["adapt", "eval", "--verilog-eval", dir.path().to_str().unwrap(), "--reference"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("Prob001_zero_ref.sv"), "{e}");
}

#[test]
fn eval_needs_a_task_and_a_model() {
    let o = octet(&["adapt", "eval"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--verilog-eval DIR and/or --corpus DIR"), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("domain.jsonl"), "").unwrap();
    let o = octet(&["adapt", "eval", "--corpus", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--gguf FILE or --checkpoint DIR"), "{}", stderr(&o));
    let o = octet(&["adapt", "eval", "--corpus", dir.path().to_str().unwrap(), "--gguf", "/nonexistent.gguf"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nonexistent.gguf"), "{}", stderr(&o));
}

/// `adapt sft` names the file and line of a malformed conversation, and a conversation without an
/// assistant turn, before loading any model.
#[test]
fn sft_data_errors_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#;
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{ok}\n{ok}\n{{\"messages\": [oops\n")).unwrap();
    let o = octet(&["adapt", "sft", "--init", "no-such-model.gguf", "--data", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.jsonl") && e.contains("line 3"), "{e}");
    let none = tmp.path().join("none.jsonl");
    std::fs::write(&none, format!("{ok}\n{}\n", r#"{"messages":[{"role":"user","content":"q"}]}"#)).unwrap();
    let o = octet(&["adapt", "sft", "--init", "no-such-model.gguf", "--data", none.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("line 2") && e.contains("no assistant turn"), "{e}");
}

/// `adapt dapt` without a corpus names the missing file.
#[test]
fn dapt_without_a_corpus_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
    let out = tmp.path().join("run");
    let o = octet(&[
        "adapt",
        "dapt",
        "--init",
        model.to_str().unwrap(),
        "--corpus",
        tmp.path().join("nope").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("tokenizer.json") || e.contains("domain.jsonl"), "{e}");
}
