//! Held-out bits per byte, the cloze set and top-p sampling, on fixtures: a corpus written here and a
//! small Llama whose parameters are all zero (its logits are 0, so every token has probability 1/V and
//! every score has a closed form).

use std::path::Path;

use octet_adapt::corpus::{Category, Document, Split, write_jsonl};
use octet_adapt::eval::{EvalModel, bpb, cloze};
use octet_core::{Rng, Tolerance};
use octet_kernels::CpuBackend;
use octet_lm::data::TextTokenizer;
use octet_lm::generate::{SampleConfig, pick};
use octet_lm::llama::Llama;
use octet_lm::spec::llama_small;

/// Sums of a few hundred f64 log-probabilities of one value each, against a product: f64 roundoff.
const SUM_F64: Tolerance = Tolerance { atol: 1e-9, rtol: 1e-12 };

const DOC: &str = "The timer block raises intr_state when mtime reaches mtimecmp_lo. Software clears \
intr_state by writing one. The register CTRL_EN enables the counter; prescale_q divides the clock and \
step_q sets the increment. When CTRL_EN is low the counter holds. The alert_tx_o output signals a fatal \
fault. Reading intr_state returns the raw status; intr_enable masks it before intr_o. The prescale_q \
field resets to zero and step_q to one. Every write to mtimecmp_lo clears intr_state for hart zero.\n";

fn doc(path: &str, category: Category, split: Split, text: &str) -> Document {
    Document { split, ..Document::new("fixture", path, "Apache-2.0", category, text.to_string()) }
}

/// A small Llama with zero parameters and a byte-level BPE trained on `text`.
fn uniform_model(dir: &Path, text: &str) -> EvalModel {
    let tok = TextTokenizer::train(&text.repeat(4), 320).unwrap();
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(&path).unwrap();
    let cfg = llama_small(tok.vocab_size());
    let params = vec![0.0f32; cfg.param_layout_total()];
    EvalModel {
        model: Llama::new(cfg, CpuBackend, params).unwrap(),
        tokenizer,
        chat: None,
        bos: None,
        add_bos: false,
        stop: vec![0],
        doc_start: 0,
        source: "uniform".into(),
    }
}

trait Total {
    fn param_layout_total(&self) -> usize;
}
impl Total for octet_lm::llama::LlamaConfig {
    fn param_layout_total(&self) -> usize {
        use octet_lm::decoder::Arch;
        self.param_layout().total()
    }
}

#[test]
fn bits_per_byte_of_a_uniform_model_is_log2_vocab_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = uniform_model(dir.path(), DOC);
    let v = m.model.cfg.vocab_size as f64;
    let texts = [DOC, "intr_state and CTRL_EN.\n"];
    let tokens: usize = texts.iter().map(|t| m.encode(t).unwrap().len()).sum();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    // Windows of 8 predicted tokens and one window per document give the same (uniform) answer, and
    // every document token is predicted exactly once.
    for context in [8, 1024] {
        let r = bpb::bits_per_byte(&mut m, "fixture", &texts, context, 0).unwrap();
        assert_eq!((r.documents, r.tokens, r.bytes), (2, tokens, bytes));
        // The loss comes from the f32 cross-entropy kernel.
        assert!(Tolerance::F32.close(r.bits_per_byte, tokens as f64 * v.log2() / bytes as f64), "{r:?}");
        assert_eq!(r.context, context.min(m.model.cfg.max_seq_len));
    }
    // --max-doc-bytes cuts at a character boundary.
    assert_eq!(bpb::prefix("aé", 2), "a");
    let r = bpb::bits_per_byte(&mut m, "fixture", &texts, 64, 40).unwrap();
    assert_eq!(r.bytes, 40 + 24);
}

#[test]
fn heldout_documents_only_and_malformed_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("domain.jsonl");
    let docs = vec![
        doc("a.md", Category::Documentation, Split::Train, "train text"),
        doc("b.md", Category::Documentation, Split::Heldout, "held-out text"),
    ];
    write_jsonl(&p, &docs).unwrap();
    let held = bpb::heldout(&p, 0).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].text, "held-out text");
    // Only training documents: an error, not a silent score of nothing.
    write_jsonl(&p, &docs[..1]).unwrap();
    assert!(bpb::heldout(&p, 0).unwrap_err().to_string().contains("no held-out documents"));
    // A malformed line: the file and the line number.
    let good = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{good}{{\"id\": 3,\n")).unwrap();
    let e = bpb::heldout(&p, 0).unwrap_err().to_string();
    assert!(e.contains("domain.jsonl") && e.contains("line 2"), "{e}");
    let e = octet_adapt::eval::read_json_lines::<serde_json::Value>(&p).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn cloze_items_come_from_heldout_documentation_with_four_names_of_the_document() {
    let docs = vec![
        doc("timer.md", Category::Documentation, Split::Heldout, DOC),
        doc("train.md", Category::Documentation, Split::Train, DOC),
        doc("timer.sv", Category::Design, Split::Heldout, DOC),
    ];
    let items = cloze::build(&docs, 3, 0);
    assert_eq!(items, cloze::build(&docs, 3, 0), "deterministic");
    assert_eq!(items.len(), 3);
    let names = ["mtimecmp_lo", "intr_state", "CTRL_EN", "prescale_q", "step_q", "alert_tx_o", "intr_enable", "intr_o"];
    let mut answers = Vec::new();
    for it in &items {
        assert_eq!(it.doc_id, docs[0].id);
        assert_eq!(it.options.len(), cloze::OPTIONS);
        let mut o = it.options.clone();
        o.sort();
        o.dedup();
        assert_eq!(o.len(), cloze::OPTIONS, "distinct options {:?}", it.options);
        for opt in &it.options {
            assert!(names.contains(&opt.trim_start()), "{opt:?} is a name of the document");
        }
        // The context is the text right before the answer.
        let answer = &it.options[it.answer];
        assert!(DOC.contains(&format!("{}{answer}", it.context)), "{:?} + {answer:?}", it.context);
        assert!(it.context.len() >= cloze::MIN_CONTEXT_BYTES - 1);
        answers.push(answer.clone());
    }
    answers.sort();
    answers.dedup();
    assert_eq!(answers.len(), 3, "one item per answer in a document");
    assert_eq!(cloze::build(&docs, 3, 2).len(), 2);
    // A document with fewer than 4 distinct names gives no items.
    let few = doc("few.md", Category::Documentation, Split::Heldout, &"the reg_a and reg_b and reg_c. ".repeat(20));
    assert!(cloze::build(&[few], 3, 0).is_empty());
}

#[test]
fn cloze_scores_are_summed_log_likelihoods() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = uniform_model(dir.path(), DOC);
    let lnv = (m.model.cfg.vocab_size as f64).ln();
    let docs = vec![doc("timer.md", Category::Documentation, Split::Heldout, DOC)];
    let items = cloze::build(&docs, 3, 0);
    let (s, scores) = cloze::score(&mut m, &items, 64).unwrap();
    assert_eq!((s.items, s.documents, s.chance), (3, 1, 0.25));
    for (it, sc) in items.iter().zip(&scores) {
        for (opt, ll) in it.options.iter().zip(&sc.loglik) {
            // Uniform: -ln V per scored token; at least the option's own tokens are scored.
            let n = -ll / lnv;
            assert!(SUM_F64.close(n, n.round()) && n.round() >= 1.0, "{opt:?}: {ll}");
            let own = m.encode(opt.trim_start()).unwrap().len() as f64;
            assert!(n.round() <= own + 2.0, "{opt:?}: {n} tokens scored, {own} in the option");
        }
        // The picks are the options with the fewest tokens (first on ties).
        let best = (0..4).fold(0, |b, i| if sc.loglik[i] > sc.loglik[b] { i } else { b });
        assert_eq!(sc.pick_sum, best);
    }
    assert!(cloze::score(&mut m, &[], 64).unwrap_err().to_string().contains("no cloze items"));
}

#[test]
fn top_p_keeps_the_nucleus() {
    // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
    let logits: Vec<f64> = [0.5f64, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    let count = |top_p: f64| {
        let sc = SampleConfig { temperature: 1.0, top_p, ..Default::default() };
        let mut rng = Rng::new(7);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[pick(&logits, &sc, &mut rng)] += 1;
        }
        seen
    };
    let all = count(1.0);
    assert!(all.iter().all(|&c| c > 0), "{all:?}");
    // 0.5 + 0.3 = 0.8 >= 0.75: the two most likely tokens, renormalised to 5/8 and 3/8.
    let nucleus = count(0.75);
    assert_eq!((nucleus[2], nucleus[3]), (0, 0), "{nucleus:?}");
    assert!((nucleus[0] as f64 / 4000.0 - 0.625).abs() < 0.03, "{nucleus:?}");
    // A tiny top_p keeps the most likely token only.
    assert_eq!(count(1e-6), [4000, 0, 0, 0]);
    // Greedy ignores top_p.
    let g = SampleConfig { temperature: 0.0, top_p: 0.1, ..Default::default() };
    assert_eq!(pick(&logits, &g, &mut Rng::new(0)), 0);
}
