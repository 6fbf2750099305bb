//! `octet adapt retriever`: contrastive fine-tuning of the sentence encoder on (query, passage) pairs
//! made from the training documents (the `evalset` rules, so the held-out pairs stay disjoint by
//! document), with InfoNCE over in-batch negatives (`contrastive`) and optionally one BM25 hard
//! negative per query; AdamW (`Backend::adamw_update`); checkpoints and resume.
//!
//! A pair's passage is the first `index::MAX_CHARS` bytes of its target span (the text after the
//! heading or comment; the query text itself is not in it). Batches walk a seeded permutation of the
//! pairs. The output directory is a sentence-transformers model directory (`model.safetensors`,
//! `config.json`, `tokenizer.json`, `sentence_bert_config.json`) that `octet adapt index --model`
//! reads, plus `optimizer.safetensors` (AdamW m and v, F32, one tensor each over the whole slab) and
//! `state.json` (step, options that must match on resume, loss history); each file written atomically,
//! `state.json` last, so a checkpoint is complete when its `state.json` names its step.

use std::path::{Path, PathBuf};

use octet_core::fs::write_atomic;
use octet_core::{Error, Result, Rng};
use octet_kernels::Backend;
use octet_kernels::backend::AdamWConfig;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::bm25::Bm25;
use super::contrastive::{infonce_backward, infonce_forward};
use super::embed::{Embedder, resolve_model_dir};
use super::encoder::{Acts, Precision, load_slab, save_slab};
use super::evalset;
use super::index::MAX_CHARS;
use crate::corpus::{Split, read_jsonl};

/// `octet adapt retriever` options.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetrieverOptions {
    pub corpus: PathBuf,
    pub model: PathBuf,
    pub out: PathBuf,
    pub steps: usize,
    /// Pairs per step (B); the in-batch negatives of a query are the other B - 1 positives.
    pub batch: usize,
    pub lr: f64,
    /// InfoNCE temperature tau.
    pub temperature: f64,
    /// Add each query's best BM25 passage that is not its positive as an extra negative.
    pub hard_negatives: bool,
    pub checkpoint_every: usize,
    pub seed: u64,
}

/// Training state in `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub pairs: usize,
    pub batch: usize,
    pub seed: u64,
    pub temperature: f64,
    pub hard_negatives: bool,
    /// (step, loss) for every step so far.
    pub losses: Vec<(usize, f64)>,
}

/// A training pair: query text, positive passage text.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainPair {
    pub query: String,
    pub passage: String,
}

/// The pairs of the training documents (module doc).
pub fn training_pairs(corpus: &Path) -> Result<Vec<TrainPair>> {
    let cp = corpus.join("domain.jsonl");
    let docs = read_jsonl(&cp)?;
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| d.split == Split::Train) {
        for p in evalset::document_pairs(&d.id, &d.path, &d.text) {
            let mut e = p.target.1.min(p.target.0 + MAX_CHARS);
            while !d.text.is_char_boundary(e) {
                e -= 1;
            }
            out.push(TrainPair { query: p.query, passage: d.text[p.target.0..e].to_string() });
        }
    }
    if out.is_empty() {
        return Err(Error::format(&cp, "documents", "no training pairs (empty corpus or no training documents)"));
    }
    Ok(out)
}

fn state_path(out: &Path) -> PathBuf {
    out.join("state.json")
}

/// Fine-tune (module doc); `progress(step, loss)` after each step.
pub fn train(
    o: &RetrieverOptions,
    mut progress: impl FnMut(usize, f64),
    say: &mut dyn FnMut(String),
) -> Result<TrainState> {
    if o.batch < 2 {
        return Err(Error::config("batch", "at least 2 (in-batch negatives)"));
    }
    if o.temperature <= 0.0 {
        return Err(Error::config("temperature", "must be > 0"));
    }
    let pairs = training_pairs(&o.corpus)?;
    // One process per run directory; temporaries a killed run left are removed under the lock.
    let held = octet_core::rundir::RunDir::hold(&o.out, "octet adapt retriever")?;
    for p in held.swept() {
        say(format!("removed {}, left by an interrupted run", p.display()));
    }
    let mut rng = Rng::new(o.seed);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let resume = state_path(&o.out).is_file();
    let src = if resume { o.out.clone() } else { resolve_model_dir(&o.model) };
    let mut emb = Embedder::load(&src, Precision::F32)?;
    let n = emb.enc.params.len();
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let mut st = TrainState {
        step: 0,
        pairs: pairs.len(),
        batch: o.batch,
        seed: o.seed,
        temperature: o.temperature,
        hard_negatives: o.hard_negatives,
        losses: Vec::new(),
    };
    if resume {
        let sp = state_path(&o.out);
        let s: TrainState = serde_json::from_str(&std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?)
            .map_err(|e| Error::format(&sp, "json", e.to_string()))?;
        if (s.pairs, s.batch, s.seed, s.hard_negatives) != (st.pairs, st.batch, st.seed, st.hard_negatives)
            || s.temperature != st.temperature
        {
            return Err(Error::format(
                &sp,
                "options",
                "pairs/batch/seed/temperature/hard negatives differ from this run's: resume with the same flags",
            ));
        }
        let op = o.out.join("optimizer.safetensors");
        let bytes = std::fs::read(&op).map_err(|e| Error::io(&op, e))?;
        let t = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&op, "header", e.to_string()))?;
        for (name, dst) in [("m", &mut m), ("v", &mut v)] {
            let tv = t.tensor(name).map_err(|_| Error::format(&op, name, "tensor missing"))?;
            if tv.dtype() != Dtype::F32 || tv.shape() != [n] {
                return Err(Error::format(&op, name, format!("expected F32 [{n}]")));
            }
            for (d, c) in dst.iter_mut().zip(tv.data().chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        st = s;
        say(format!("resuming at step {} from {}", st.step, o.out.display()));
    }
    let hard: Vec<Option<usize>> = if o.hard_negatives {
        let bm = Bm25::build(pairs.iter().map(|p| p.passage.as_str()))?;
        pairs
            .iter()
            .enumerate()
            .map(|(i, p)| Ok(bm.search(&p.query, 2)?.into_iter().map(|x| x.0).find(|&j| j != i)))
            .collect::<Result<_>>()?
    } else {
        vec![None; pairs.len()]
    };
    say(format!(
        "{} training pairs; batch {}, tau {}, lr {}, hard negatives {}; {} parameters",
        pairs.len(),
        o.batch,
        o.temperature,
        o.lr,
        o.hard_negatives,
        n
    ));
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let c = emb.dim();
    let mut grads = vec![0f32; n];
    while st.step < o.steps {
        let idx: Vec<usize> = (0..o.batch).map(|k| order[(st.step * o.batch + k) % order.len()]).collect();
        let mut cand: Vec<usize> = idx.clone();
        for &i in &idx {
            if let Some(j) = hard[i].filter(|j| !cand.contains(j)) {
                cand.push(j);
            }
        }
        let qids = idx.iter().map(|&i| emb.ids(&pairs[i].query).map(|x| x.0)).collect::<Result<Vec<_>>>()?;
        let pids = cand.iter().map(|&i| emb.ids(&pairs[i].passage).map(|x| x.0)).collect::<Result<Vec<_>>>()?;
        let qb = Embedder::batch(&qids.iter().map(|v| v.as_slice()).collect::<Vec<_>>());
        let pb = Embedder::batch(&pids.iter().map(|v| v.as_slice()).collect::<Vec<_>>());
        let enc = &emb.enc;
        let mut qa = Acts::new(&enc.cfg, qb.b, qb.t, true);
        let mut pa = Acts::new(&enc.cfg, pb.b, pb.t, true);
        enc.forward(&mut qa, &qb.tokens, &qb.mask);
        enc.forward(&mut pa, &pb.tokens, &pb.mask);
        let (b, nc) = (qb.b, pb.b);
        let mut probs = vec![0f32; b * nc];
        let loss = infonce_forward(&mut probs, &qa.y, &pa.y, b, nc, c, o.temperature);
        if !loss.is_finite() {
            return Err(Error::NonFinite { what: "InfoNCE loss".into(), step: st.step, value: loss });
        }
        let (mut dq, mut dp) = (vec![0f32; b * c], vec![0f32; nc * c]);
        infonce_backward(&mut dq, &mut dp, &probs, &qa.y, &pa.y, b, nc, c, o.temperature);
        enc.be.zero(&mut grads);
        enc.backward(&mut grads, &mut qa, &dq, &qb.tokens, &qb.mask);
        enc.backward(&mut grads, &mut pa, &dp, &pb.tokens, &pb.mask);
        st.step += 1;
        let be = enc.be;
        be.adamw_update(&mut emb.enc.params, &grads, &mut m, &mut v, st.step as u64, o.lr, &cfg, true);
        st.losses.push((st.step, loss));
        progress(st.step, loss);
        if st.step.is_multiple_of(o.checkpoint_every.max(1)) || st.step == o.steps {
            save_checkpoint(o, &emb, &m, &v, &st)?;
        }
    }
    Ok(st)
}

fn save_checkpoint(o: &RetrieverOptions, emb: &Embedder, m: &[f32], v: &[f32], st: &TrainState) -> Result<()> {
    let src = resolve_model_dir(&o.model);
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    for f in ["config.json", "tokenizer.json", "sentence_bert_config.json"] {
        let (a, b) = (src.join(f), o.out.join(f));
        if a.is_file() && a != b {
            let bytes = std::fs::read(&a).map_err(|e| Error::io(&a, e))?;
            write_atomic(&b, &bytes)?;
        }
    }
    save_slab(&o.out.join("model.safetensors"), &emb.enc.params, &emb.enc.cfg)?;
    let bytes = |x: &[f32]| x.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (mb, vb) = (bytes(m), bytes(v));
    let views = vec![
        ("m".to_string(), safetensors::tensor::TensorView::new(Dtype::F32, vec![m.len()], &mb).expect("shape")),
        ("v".to_string(), safetensors::tensor::TensorView::new(Dtype::F32, vec![v.len()], &vb).expect("shape")),
    ];
    let ob = safetensors::serialize(views, None).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    write_atomic(&o.out.join("optimizer.safetensors"), &ob)?;
    write_atomic(&state_path(&o.out), &serde_json::to_vec(st).expect("state serialises"))?;
    Ok(())
}

/// Re-load a slab saved by `save_slab` (for tests).
pub fn load_params(dir: &Path) -> Result<Vec<f32>> {
    let cfg = super::encoder::BertConfig::from_json(&dir.join("config.json"))?;
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    load_slab(&p, &bytes, &cfg)
}
