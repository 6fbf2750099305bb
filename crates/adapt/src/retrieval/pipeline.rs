//! The retrieval commands as library calls: `build_index` (corpus -> passages -> embeddings -> index
//! directory, with the held-out evaluation pairs) and `evaluate` (BM25 and dense retrieval of every
//! evaluation query over every passage, metrics with bootstrap intervals). `octet adapt index` and
//! `octet adapt retrieval-eval` only parse flags and call these.
//!
//! Index directory: `vectors.bin` + `passages.jsonl` (format in `retrieval::index`), `evalset.jsonl`
//! (the automatic pairs, one `evalset::Pair` per line) and `report.json` (counts and timings).

use std::path::{Path, PathBuf};
use std::time::Instant;

use octet_core::fs::write_atomic;
use octet_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::bm25::Bm25;
use super::embed::Embedder;
use super::encoder::Precision;
use super::evalset::{self, Metrics, Pair};
use super::index::{self, DenseIndex, Header, Passage};
use crate::corpus::{Split, read_jsonl};

/// `octet adapt index` options.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    pub corpus: PathBuf,
    pub model: PathBuf,
    pub out: PathBuf,
    pub precision: Precision,
    /// Sequences per encoder batch.
    pub batch: usize,
    /// Index every k-th training document only (1 = all); held-out documents are always indexed.
    pub train_every: usize,
}

/// What `build_index` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexReport {
    pub documents: usize,
    pub heldout_documents: usize,
    pub passages: usize,
    pub heldout_passages: usize,
    pub pairs: usize,
    pub truncated: usize,
    pub tokens: usize,
    pub encoder: String,
    pub precision: String,
    pub embed_seconds: f64,
    pub passages_per_second: f64,
    pub tokens_per_second: f64,
    pub build_seconds: f64,
    pub threads: usize,
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "fp32",
        Precision::Bf16 => "bf16",
    }
}

/// Build the dense index and the evaluation pairs (module doc). `progress(done, total)` after each
/// encoder batch; `say` for messages.
pub fn build_index(
    o: &IndexOptions,
    mut progress: impl FnMut(usize, usize),
    say: &mut dyn FnMut(String),
) -> Result<IndexReport> {
    let t0 = Instant::now();
    let cp = o.corpus.join("domain.jsonl");
    let docs = read_jsonl(&cp)?;
    if docs.is_empty() {
        return Err(Error::format(&cp, "documents", "the corpus is empty: nothing to index"));
    }
    let emb = Embedder::load(&o.model, o.precision)?;
    let mut passages = Vec::new();
    let mut pairs = Vec::new();
    let (mut ndocs, mut nheld) = (0, 0);
    let mut train_seen = 0usize;
    for d in &docs {
        let text = if d.split == Split::Heldout {
            let ps = evalset::document_pairs(&d.id, &d.path, &d.text);
            let spans: Vec<(usize, usize)> = ps.iter().map(|p| p.query_span).collect();
            pairs.extend(ps);
            nheld += 1;
            evalset::blank(&d.text, &spans)
        } else {
            train_seen += 1;
            if !(train_seen - 1).is_multiple_of(o.train_every.max(1)) {
                continue;
            }
            d.text.clone()
        };
        ndocs += 1;
        for (s, e) in index::split_passages(&text, index::MAX_CHARS, index::MIN_CHARS) {
            passages.push(Passage {
                doc: d.id.clone(),
                split: d.split.name().into(),
                path: d.path.clone(),
                source: d.source.clone(),
                category: d.category.name().into(),
                start: s,
                end: e,
                text: text[s..e].to_string(),
            });
        }
    }
    say(format!(
        "{} documents ({} held-out) -> {} passages; {} evaluation pairs; encoder {} ({}, {} threads)",
        ndocs,
        nheld,
        passages.len(),
        pairs.len(),
        emb.id,
        precision_name(o.precision),
        rayon::current_num_threads()
    ));
    let mut ids = Vec::with_capacity(passages.len());
    let mut truncated = 0;
    for p in &passages {
        let (v, cut) = emb.ids(&p.text)?;
        truncated += cut as usize;
        ids.push(v);
    }
    if truncated > 0 {
        say(format!("warning: {truncated} passages longer than {} tokens were truncated", emb.max_len));
    }
    let tokens: usize = ids.iter().map(|v| v.len()).sum();
    let t1 = Instant::now();
    let n = ids.len();
    let vectors = emb.embed_ids(&ids, o.batch, |done| progress(done, n));
    let embed_seconds = t1.elapsed().as_secs_f64();
    let header = Header {
        format: index::FORMAT.into(),
        version: index::VERSION,
        encoder: emb.id.clone(),
        dim: emb.dim(),
        count: passages.len(),
        max_chars: index::MAX_CHARS,
        precision: precision_name(o.precision).into(),
        evalset: evalset::VERSION.into(),
        passages_fnv64: String::new(),
    };
    let heldout_passages = passages.iter().filter(|p| p.split == "heldout").count();
    let idx = DenseIndex { header, vectors, passages };
    idx.save(&o.out)?;
    let mut pj = Vec::new();
    for p in &pairs {
        serde_json::to_writer(&mut pj, p).map_err(|e| Error::Other(e.to_string()))?;
        pj.push(b'\n');
    }
    write_atomic(&o.out.join("evalset.jsonl"), &pj)?;
    let r = IndexReport {
        documents: ndocs,
        heldout_documents: nheld,
        passages: n,
        heldout_passages,
        pairs: pairs.len(),
        truncated,
        tokens,
        encoder: emb.id.clone(),
        precision: precision_name(o.precision).into(),
        embed_seconds,
        passages_per_second: n as f64 / embed_seconds.max(1e-9),
        tokens_per_second: tokens as f64 / embed_seconds.max(1e-9),
        build_seconds: t0.elapsed().as_secs_f64(),
        threads: rayon::current_num_threads(),
    };
    write_atomic(&o.out.join("report.json"), &serde_json::to_vec_pretty(&r).expect("report serialises"))?;
    Ok(r)
}

/// A hand-written query: its text, the held-out document's path and a passage of that document
/// (`anchor`, verbatim) that answers it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandQuery {
    pub query: String,
    pub path: String,
    pub anchor: String,
}

/// Resolve hand-written queries against the index's passages (the anchor's span is the target).
pub fn hand_pairs(hand: &[HandQuery], passages: &[Passage], file: &Path) -> Result<Vec<Pair>> {
    hand.iter()
        .map(|h| {
            passages
                .iter()
                .find_map(|p| (p.path == h.path).then(|| p.text.find(&h.anchor).map(|i| (p, p.start + i))).flatten())
                .map(|(p, s)| Pair {
                    doc: p.doc.clone(),
                    path: h.path.clone(),
                    kind: "hand".into(),
                    query: h.query.clone(),
                    query_span: (0, 0),
                    target: (s, s + h.anchor.len()),
                })
                .ok_or_else(|| Error::format(file, &h.query, format!("anchor not found in a passage of {}", h.path)))
        })
        .collect()
}

/// `octet adapt retrieval-eval` options.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub index: PathBuf,
    pub model: PathBuf,
    pub precision: Precision,
    /// Hand-written queries (JSON lines of `HandQuery`).
    pub hand: Option<PathBuf>,
    /// Queries in the printed sample.
    pub sample: usize,
}

/// One retriever's results on one query set.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub retriever: String,
    pub set: String,
    pub metrics: Metrics,
    /// Mean search latency per query, milliseconds (dense: query embedding excluded, reported apart).
    pub search_ms: f64,
}

/// A sample line: query, target and each retriever's top passage.
#[derive(Clone, Debug, Serialize)]
pub struct SampleLine {
    pub kind: String,
    pub query: String,
    pub target: String,
    pub bm25_rank: Option<usize>,
    pub dense_rank: Option<usize>,
    pub bm25_top: String,
    pub dense_top: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub passages: usize,
    pub rows: Vec<Row>,
    pub bm25_build_seconds: f64,
    pub query_embed_ms: f64,
    pub truncated_queries: usize,
    pub sample: Vec<SampleLine>,
}

fn head(s: &str, n: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut e = n.min(s.len());
    while !s.is_char_boundary(e) {
        e -= 1;
    }
    s[..e].to_string()
}

/// BM25 and dense retrieval of every pair over every passage (module doc).
pub fn evaluate(o: &EvalOptions, say: &mut dyn FnMut(String)) -> Result<EvalReport> {
    let emb = Embedder::load(&o.model, o.precision)?;
    let idx = DenseIndex::load(&o.index, Some(&emb.id))?;
    let ep = o.index.join("evalset.jsonl");
    let text = std::fs::read_to_string(&ep).map_err(|e| Error::io(&ep, e))?;
    let auto: Vec<Pair> = text
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::format(&ep, format!("line {}", i + 1), e.to_string())))
        .collect::<Result<_>>()?;
    let mut sets = vec![("heldout-auto".to_string(), auto)];
    if let Some(h) = &o.hand {
        let t = std::fs::read_to_string(h).map_err(|e| Error::io(h, e))?;
        let hq: Vec<HandQuery> = t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::format(h, format!("line {}", i + 1), e.to_string()))
            })
            .collect::<Result<_>>()?;
        sets.push(("hand-written".into(), hand_pairs(&hq, &idx.passages, h)?));
    }
    let t0 = Instant::now();
    let bm = Bm25::build(idx.passages.iter().map(|p| p.text.as_str()))?;
    let bm25_build_seconds = t0.elapsed().as_secs_f64();
    say(format!("BM25 index of {} passages in {bm25_build_seconds:.1} s", idx.passages.len()));
    let loc = |i: usize| {
        let p = &idx.passages[i];
        (p.doc.clone(), p.start, p.end)
    };
    let mut rows = Vec::new();
    let mut sample = Vec::new();
    let (mut embed_s, mut nq_all, mut truncated) = (0.0, 0usize, 0usize);
    for (set, pairs) in &sets {
        let t = Instant::now();
        let bres: Vec<Vec<usize>> = pairs
            .iter()
            .map(|p| bm.search(&p.query, 10).map(|v| v.into_iter().map(|x| x.0).collect()))
            .collect::<Result<_>>()?;
        let bms = t.elapsed().as_secs_f64() * 1e3 / pairs.len().max(1) as f64;
        let texts: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
        let t = Instant::now();
        let (qv, cut) = emb.embed(&texts, 64, |_| {})?;
        embed_s += t.elapsed().as_secs_f64();
        nq_all += pairs.len();
        truncated += cut;
        let t = Instant::now();
        let dres: Vec<Vec<usize>> =
            idx.search(&qv, 10).into_iter().map(|v| v.into_iter().map(|x| x.0).collect()).collect();
        let dms = t.elapsed().as_secs_f64() * 1e3 / pairs.len().max(1) as f64;
        let br: Vec<Option<usize>> = pairs.iter().zip(&bres).map(|(p, r)| evalset::first_hit(p, r, loc)).collect();
        let dr: Vec<Option<usize>> = pairs.iter().zip(&dres).map(|(p, r)| evalset::first_hit(p, r, loc)).collect();
        rows.push(Row { retriever: "bm25".into(), set: set.clone(), metrics: evalset::metrics(&br), search_ms: bms });
        rows.push(Row {
            retriever: format!("dense {}", emb.id),
            set: set.clone(),
            metrics: evalset::metrics(&dr),
            search_ms: dms,
        });
        // Evenly spaced sample of the automatic set.
        if sample.is_empty() && !pairs.is_empty() {
            let k = o.sample.min(pairs.len());
            for j in 0..k {
                let i = j * pairs.len() / k;
                let p = &pairs[i];
                let top = |r: &Vec<usize>| {
                    r.first().map_or(String::new(), |&x| {
                        let q = &idx.passages[x];
                        format!("{}@{}: {}", q.path, q.start, head(&q.text, 80))
                    })
                };
                sample.push(SampleLine {
                    kind: p.kind.clone(),
                    query: head(&p.query, 120),
                    target: format!("{} [{}, {})", p.path, p.target.0, p.target.1),
                    bm25_rank: br[i],
                    dense_rank: dr[i],
                    bm25_top: top(&bres[i]),
                    dense_top: top(&dres[i]),
                });
            }
        }
    }
    if truncated > 0 {
        say(format!("warning: {truncated} queries longer than {} tokens were truncated", emb.max_len));
    }
    Ok(EvalReport {
        passages: idx.passages.len(),
        rows,
        bm25_build_seconds,
        query_embed_ms: embed_s * 1e3 / nq_all.max(1) as f64,
        truncated_queries: truncated,
        sample,
    })
}
