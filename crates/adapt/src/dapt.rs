//! DAPT (ChipNeMo's domain-adaptive pretraining): continued pretraining of a pretrained Llama (SmolLM2,
//! or the resized model of `octet adapt tokenizer`) on the chip-design corpus blended with general
//! replay, through the lm trainer (`octet_lm::train::run_with`: precision levels, checkpoints, resume)
//! with a packed-document batch source and a held-out bits-per-byte hook. No training loop here.
//!
//! The token stream (`pack`): the `split = train` documents of `domain.jsonl` and `general.jsonl`
//! (never `heldout`), each shuffled with the seed; documents are taken in that order until the domain
//! part holds (1 - replay) * need tokens and the general part replay * need, where need is the run's
//! token budget plus one row (so no row repeats); each document is cut to its first `max_doc_tokens`
//! tokens (one long file must not be the whole budget) and followed by the EOS token
//! (`<|endoftext|>`); the chosen documents of both sets are shuffled together and concatenated.
//! Rows: row r of the stream is tokens r*T .. r*T+T (inputs) and r*T+1 .. r*T+T+1 (targets), i.e.
//! documents packed to the context with EOS separators and no padding; training batch s is rows
//! s*B .. s*B+B (every token seen once when the stream is the budget). The trainer's validation loss
//! is on the held-out domain documents packed the same way.
//!
//! Schedule: linear warm-up, then a constant learning rate (ChipNeMo: a large LR with cosine decay
//! destroyed results); no weight decay (it would pull pretrained weights towards 0).
//!
//! Evaluation (`bpb_point`): held-out bits per byte (`crate::eval::bpb`) on `eval_docs` domain and
//! general held-out documents (evenly spaced over each file, each cut to `eval_doc_bytes`) at step 0,
//! every `eval_every` steps and at the end, appended to `<out>/bpb.jsonl`.
//!
//! Files in `<out>`: `dapt.json` (the options and the blend's statistics; a resumed run reads it),
//! `data/` (`tokenizer.json`, `train.bin`, `val.bin`: the packed streams), `bpb.jsonl`, and the
//! trainer's `ckpt-NNNNNN/` and `latest`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use octet_core::fs::write_atomic;
use octet_core::{Error, Result, Rng};
use octet_lm::data::{Shard, write_shard};
use octet_lm::model::LanguageModel;
use octet_lm::precision::Precision;
use octet_lm::spec::ArchKind;
use octet_lm::train::{self, BatchSource, Event, Hooks, Start, Summary, TrainConfig};
use octet_optim::Decay;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::corpus::{self, Document, Split};
use crate::eval::bpb;

/// Training tokens per second assumed per core for SmolLM2-135M at B=4, T=256 (measured on this
/// project's 2-core AMD EPYC: ~120-170 tok/s idle, i.e. ~65 per core) — only for the estimate printed
/// before a run starts; the progress bar shows the measured rate.
pub const TOKENS_PER_S_PER_CORE: f64 = 65.0;
/// Forward-only scoring runs about this many times faster than a training step per token.
pub const EVAL_SPEEDUP: f64 = 3.0;

/// Everything a DAPT run is configured by (`dapt.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaptOptions {
    /// The pretrained model: a GGUF llama file, or a HuggingFace directory (`octet adapt tokenizer`'s
    /// resized model with the extended tokenizer).
    pub init: PathBuf,
    /// Corpus directory (`domain.jsonl`, `general.jsonl`).
    pub corpus: PathBuf,
    pub out: PathBuf,
    /// Training tokens (the budget): steps = ceil(tokens / (batch * seq)).
    pub tokens: usize,
    /// Fraction of the training tokens from the general replay set.
    pub replay: f64,
    pub lr: f64,
    pub warmup: usize,
    pub batch: usize,
    pub seq: usize,
    pub precision: Precision,
    /// Evaluate (held-out bits per byte) every N steps (0: at the start and the end only).
    pub eval_every: usize,
    pub eval_docs: usize,
    pub eval_doc_bytes: usize,
    /// Predicted tokens per window of the bits-per-byte evaluation (as `octet adapt eval --context`).
    pub eval_context: usize,
    pub checkpoint_every: usize,
    pub max_doc_tokens: usize,
    pub seed: u64,
}

impl DaptOptions {
    /// The defaults of `octet adapt dapt` for `init`, `corpus` and `out`: 262,144 tokens (256 steps of
    /// 4 x 256), 10% replay (ChipNeMo's blend has ~9% general data), LR 1e-4 constant after 16 warm-up
    /// steps, bf16, evaluation every 64 steps on 16 + 16 held-out documents of at most 2 KB.
    pub fn new(init: PathBuf, corpus: PathBuf, out: PathBuf) -> Self {
        DaptOptions {
            init,
            corpus,
            out,
            tokens: 262_144,
            replay: 0.1,
            lr: 1e-4,
            warmup: 16,
            batch: 4,
            seq: 256,
            precision: Precision::Bf16,
            eval_every: 64,
            eval_docs: 16,
            eval_doc_bytes: 2048,
            eval_context: 1024,
            checkpoint_every: 64,
            max_doc_tokens: 4096,
            seed: 0,
        }
    }

    pub fn steps(&self) -> usize {
        self.tokens.div_ceil(self.batch * self.seq)
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.replay) {
            return Err(Error::config("replay", format!("{}: must be in [0, 1)", self.replay)));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("lr", format!("{}: must be a positive number", self.lr)));
        }
        for (name, v) in [
            ("tokens", self.tokens),
            ("batch", self.batch),
            ("seq", self.seq),
            ("eval-docs", self.eval_docs),
            ("max-doc-tokens", self.max_doc_tokens),
        ] {
            if v == 0 {
                return Err(Error::config(name, "must be positive"));
            }
        }
        Ok(())
    }

    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            arch: ArchKind::Llama,
            init: Some(self.init.clone()),
            data: Some(self.out.join("data")),
            precision: self.precision,
            steps: self.steps(),
            batch: self.batch,
            seq: self.seq,
            lr: self.lr,
            warmup: self.warmup,
            min_lr_frac: 1.0,
            decay: Decay::Constant,
            weight_decay: 0.0,
            eval_every: self.eval_every,
            eval_batches: 2,
            checkpoint_every: self.checkpoint_every,
            out: self.out.clone(),
            sample_tokens: 0,
            seed: self.seed,
            ..TrainConfig::default()
        }
    }
}

/// The blend that was packed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Blend {
    pub domain_documents: usize,
    pub domain_tokens: usize,
    pub general_documents: usize,
    pub general_tokens: usize,
    /// Documents cut to `max_doc_tokens`.
    pub cut_documents: usize,
    /// general / (domain + general) tokens, EOS separators excluded.
    pub replay_fraction: f64,
    /// Stream length (EOS separators included).
    pub stream_tokens: usize,
    pub val_tokens: usize,
}

/// `dapt.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaptState {
    pub options: DaptOptions,
    pub blend: Blend,
    pub doc_start: u32,
    pub eos: u32,
}

/// The plan printed before a run starts.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub steps: usize,
    pub start_step: usize,
    pub tokens: usize,
    pub blend: Blend,
    pub evaluations: usize,
    pub eval_tokens_estimate: usize,
    /// tokens/s assumed (`TOKENS_PER_S_PER_CORE` x threads).
    pub assumed_tokens_per_s: f64,
    pub estimate_seconds: f64,
}

/// One held-out evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BpbPoint {
    pub step: usize,
    /// Training tokens seen.
    pub tokens: usize,
    pub domain_bpb: f64,
    pub general_bpb: f64,
    pub domain_tokens: usize,
    pub general_tokens: usize,
    pub seconds: f64,
}

/// What a run reports as it goes.
pub enum Report<'a> {
    Plan(&'a Plan),
    Train(&'a Event),
    Bpb(&'a BpbPoint),
    /// Something the user should know (not an error).
    Note(String),
}

/// The tokenizer and special tokens of a model to train from.
pub struct ModelTokens {
    pub tokenizer: Tokenizer,
    /// The GGUF file the model (or the run it was trained by) came from, whose chat template and
    /// BOS / EOS apply.
    pub gguf: Option<PathBuf>,
    pub bos: Option<u32>,
    pub add_bos: bool,
    pub eos: Option<u32>,
    /// The chat template (`None`: the source has none).
    pub chat: Option<octet_lm::chat::ChatMl>,
}

impl ModelTokens {
    /// `init`: a GGUF llama file (its tokenizer, template and specials), an octet run or checkpoint
    /// directory (its `tokenizer.json`; template and specials from the GGUF its run was initialised
    /// from, followed back through `state.train.init`), or a HuggingFace directory (`tokenizer.json`;
    /// no template). `template_from` (a GGUF file) overrides where the template and specials come from.
    pub fn of(init: &Path, template_from: Option<&Path>) -> Result<ModelTokens> {
        let mut gguf = template_from.map(Path::to_path_buf);
        let tokenizer = if init.is_dir() {
            let mut dir = init.to_path_buf();
            if init.join("latest").is_file() || init.join("state.json").is_file() {
                let l = octet_lm::checkpoint::load(init, false)?;
                dir = l.dir.clone();
                // Follow the run's own --init back to a GGUF file (DAPT from a GGUF, SFT from DAPT, ...).
                let mut from = l.state.train.init.clone();
                for _ in 0..8 {
                    match from {
                        Some(p) if p.is_file() => {
                            gguf = gguf.or(Some(p));
                            break;
                        }
                        Some(p) if p.join("latest").is_file() || p.join("state.json").is_file() => {
                            from = octet_lm::checkpoint::load(&p, false)?.state.train.init.clone();
                        }
                        _ => break,
                    }
                }
            }
            let p = dir.join("tokenizer.json");
            Tokenizer::from_file(&p).map_err(|e| Error::format(&p, "tokenizer", e.to_string()))?
        } else {
            gguf = gguf.or(Some(init.to_path_buf()));
            octet_lm::gguf::GgufFile::open(init)?.tokenizer()?.into_inner()
        };
        let (mut bos, mut add_bos, mut eos, mut chat) = (None, false, None, None);
        if let Some(g) = &gguf {
            let t = octet_lm::gguf::GgufFile::open(g)?.tokenizer()?;
            (bos, add_bos, eos) = (t.bos_id, t.add_bos, t.eos_id);
            if let Some(tpl) = &t.chat_template {
                chat = Some(
                    octet_lm::chat::ChatMl::from_template(tpl)
                        .map_err(|e| Error::format(g, "tokenizer.chat_template", e.to_string()))?,
                );
            }
        }
        Ok(ModelTokens { tokenizer, gguf, bos, add_bos, eos, chat })
    }

    /// The document separator: `<|endoftext|>`, else EOS.
    pub fn separator(&self, what: &Path) -> Result<u32> {
        self.tokenizer
            .token_to_id(octet_lm::data::END_OF_TEXT)
            .or(self.eos)
            .ok_or_else(|| Error::format(what, "tokenizer", "no <|endoftext|> or EOS token to separate documents with"))
    }

    /// The token a scored document is conditioned on (as `EvalModel`: BOS, else EOS, else the separator).
    pub fn doc_start(&self, what: &Path) -> Result<u32> {
        match self.bos.or(self.eos) {
            Some(t) => Ok(t),
            None => self.separator(what),
        }
    }
}

/// The tokenizer of `init` (see [`ModelTokens::of`]), the document-start token and the separator.
pub fn tokenizer_of(init: &Path) -> Result<(Tokenizer, u32, u32)> {
    let m = ModelTokens::of(init, None)?;
    let (start, sep) = (m.doc_start(init)?, m.separator(init)?);
    Ok((m.tokenizer, start, sep))
}

fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode(text, false).map_err(|e| Error::Other(format!("tokenize: {e}")))?.get_ids().to_vec())
}

/// Shuffle `docs` with `seed` (Fisher-Yates).
fn shuffled<T>(mut v: Vec<T>, seed: u64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// The packed training stream of `need` tokens (module doc) from the training documents of `domain`
/// and `general`; documents are encoded lazily, so only what the budget needs is tokenized.
pub fn pack(
    domain: &[Document],
    general: &[Document],
    tok: &Tokenizer,
    eos: u32,
    need: usize,
    replay: f64,
    max_doc_tokens: usize,
    seed: u64,
) -> Result<(Vec<u32>, Blend)> {
    let mut blend = Blend::default();
    let mut chosen: Vec<Vec<u32>> = Vec::new();
    let want_general = (need as f64 * replay).ceil() as usize;
    let want_domain = need.saturating_sub(want_general);
    for (set, docs, want, salt) in [("domain", domain, want_domain, 1u64), ("general", general, want_general, 2)] {
        let train: Vec<&Document> = docs.iter().filter(|d| d.split == Split::Train).collect();
        if want > 0 && train.is_empty() {
            return Err(Error::config(set, "no training documents (split = \"train\") to pack"));
        }
        let (mut got, mut n) = (0usize, 0usize);
        for d in shuffled(train, seed.wrapping_mul(0x9E37_79B9).wrapping_add(salt)) {
            if got >= want {
                break;
            }
            let mut ids = encode(tok, &d.text)?;
            if ids.len() > max_doc_tokens {
                ids.truncate(max_doc_tokens);
                blend.cut_documents += 1;
            }
            got += ids.len() + 1;
            n += 1;
            ids.push(eos);
            chosen.push(ids);
        }
        if set == "domain" {
            (blend.domain_documents, blend.domain_tokens) = (n, got - n);
        } else {
            (blend.general_documents, blend.general_tokens) = (n, got - n);
        }
    }
    let stream: Vec<u32> = shuffled(chosen, seed ^ 0x5EED).into_iter().flatten().collect();
    let content = blend.domain_tokens + blend.general_tokens;
    blend.replay_fraction = if content > 0 { blend.general_tokens as f64 / content as f64 } else { 0.0 };
    blend.stream_tokens = stream.len();
    Ok((stream, blend))
}

/// Documents packed to the context: row r = stream[r*T .. r*T+T+1] (module doc).
pub struct Packed {
    pub stream: Vec<u32>,
    pub b: usize,
    pub t: usize,
}

impl Packed {
    pub fn rows(&self) -> usize {
        (self.stream.len().saturating_sub(1) / self.t).max(1)
    }
    fn batch(&self, first_row: usize) -> (Vec<u32>, Vec<u32>) {
        let (mut x, mut y) = (Vec::with_capacity(self.b * self.t), Vec::with_capacity(self.b * self.t));
        for i in 0..self.b {
            let r = (first_row + i) % self.rows();
            x.extend_from_slice(&self.stream[r * self.t..][..self.t]);
            y.extend_from_slice(&self.stream[r * self.t + 1..][..self.t]);
        }
        (x, y)
    }
}

impl BatchSource for Packed {
    fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }
    fn train_batch(&self, step: usize) -> (Vec<u32>, Vec<u32>) {
        self.batch(step * self.b)
    }
    fn eval_batch(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        self.batch(i * self.b)
    }
}

/// `n` documents evenly spaced over the held-out documents of `path`.
pub fn spread_heldout(path: &Path, n: usize) -> Result<Vec<Document>> {
    let all = bpb::heldout(path, 0)?;
    let n = n.min(all.len());
    Ok((0..n).map(|i| all[i * all.len() / n].clone()).collect())
}

/// Held-out bits per byte of `model` on the domain and general evaluation documents.
#[allow(clippy::too_many_arguments)]
pub fn bpb_point(
    model: &mut dyn LanguageModel,
    tok: &Tokenizer,
    doc_start: u32,
    domain: &[Document],
    general: &[Document],
    o: &DaptOptions,
    step: usize,
) -> Result<BpbPoint> {
    let t0 = Instant::now();
    let (dt, gt): (Vec<&str>, Vec<&str>) =
        (domain.iter().map(|d| d.text.as_str()).collect(), general.iter().map(|d| d.text.as_str()).collect());
    let d = bpb::bits_per_byte_of(model, tok, doc_start, "domain", &dt, o.eval_context, o.eval_doc_bytes)?;
    let g = bpb::bits_per_byte_of(model, tok, doc_start, "general", &gt, o.eval_context, o.eval_doc_bytes)?;
    Ok(BpbPoint {
        step,
        tokens: step * o.batch * o.seq,
        domain_bpb: d.bits_per_byte,
        general_bpb: g.bits_per_byte,
        domain_tokens: d.tokens,
        general_tokens: g.tokens,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Pack the streams and write `<out>/data/` and `<out>/dapt.json` (a fresh run).
pub fn prepare(o: &DaptOptions) -> Result<DaptState> {
    o.validate()?;
    let (tok, doc_start, eos) = tokenizer_of(&o.init)?;
    let domain = corpus::read_jsonl(&o.corpus.join("domain.jsonl"))?;
    let general = corpus::read_jsonl(&o.corpus.join("general.jsonl"))?;
    let need = o.steps() * o.batch * o.seq + o.seq + 1;
    let (stream, mut blend) = pack(&domain, &general, &tok, eos, need, o.replay, o.max_doc_tokens, o.seed)?;
    if stream.len() < o.seq + 1 {
        return Err(Error::config(
            "corpus",
            format!("{} training tokens, fewer than one row of {}", stream.len(), o.seq + 1),
        ));
    }
    // Validation stream: the held-out domain documents, packed the same way (the trainer's val loss).
    let mut val = Vec::new();
    for d in domain.iter().filter(|d| d.split == Split::Heldout) {
        let mut ids = encode(&tok, &d.text)?;
        ids.truncate(o.max_doc_tokens);
        val.extend(ids);
        val.push(eos);
        if val.len() > 4 * o.batch * (o.seq + 1) {
            break;
        }
    }
    if val.len() < o.seq + 1 {
        return Err(Error::format(
            o.corpus.join("domain.jsonl"),
            "split",
            format!("held-out documents give {} tokens, fewer than one row of {}", val.len(), o.seq + 1),
        ));
    }
    blend.val_tokens = val.len();
    let data = o.out.join("data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
    let vocab = tok.get_vocab_size(true);
    write_shard(&data.join("train.bin"), &stream, vocab)?;
    write_shard(&data.join("val.bin"), &val, vocab)?;
    let json = tok.to_string(false).map_err(|e| Error::Other(format!("tokenizer serialise: {e}")))?;
    write_atomic(&data.join("tokenizer.json"), json.as_bytes())?;
    let st = DaptState { options: o.clone(), blend, doc_start, eos };
    let bytes = serde_json::to_vec_pretty(&st).expect("state serialises");
    write_atomic(&o.out.join("dapt.json"), &bytes)?;
    Ok(st)
}

/// Read `<out>/dapt.json`.
pub fn load_state(out: &Path) -> Result<DaptState> {
    let p = out.join("dapt.json");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(&p, "dapt.json", e.to_string()))
}

fn read_shard(path: &Path) -> Result<Vec<u32>> {
    let s = Shard::open(path)?;
    let mut v = Vec::with_capacity(s.len());
    s.read(0, s.len(), &mut v);
    Ok(v)
}

/// How a DAPT run begins.
pub enum DaptStart {
    Fresh(DaptOptions),
    /// Continue `<out>` from its latest checkpoint (its options, except an optionally larger budget).
    Resume {
        out: PathBuf,
        tokens: Option<usize>,
    },
}

/// Run DAPT (module doc): pack (fresh runs), then train with the packed batches and the held-out
/// bits-per-byte hook, reporting the plan first.
pub fn run(start: DaptStart, on: &mut dyn FnMut(Report)) -> Result<Summary> {
    let (st, train_start) = match start {
        DaptStart::Fresh(o) => {
            let st = prepare(&o)?;
            let cfg = st.options.train_config();
            (st, Start::Fresh(cfg, train::Source::Path(o.out.join("data"))))
        }
        DaptStart::Resume { out, tokens } => {
            let mut st = load_state(&out)?;
            if let Some(t) = tokens {
                st.options.tokens = t;
            }
            st.options.out = out.clone();
            let steps = Some(st.options.steps());
            (st, Start::Resume { dir: out, steps })
        }
    };
    let o = st.options.clone();
    let train_src = Packed { stream: read_shard(&o.out.join("data/train.bin"))?, b: o.batch, t: o.seq };
    let val_src = Packed { stream: read_shard(&o.out.join("data/val.bin"))?, b: o.batch, t: o.seq };
    let on = std::cell::RefCell::new(on);
    if o.steps() * o.batch > train_src.rows() {
        (on.borrow_mut())(Report::Note(format!(
            "the budget ({} rows) exceeds the packed stream ({} rows): batches wrap around to its start",
            o.steps() * o.batch,
            train_src.rows()
        )));
    }
    let (tok, doc_start, _) = tokenizer_of(&o.init)?;
    let dom = spread_heldout(&o.corpus.join("domain.jsonl"), o.eval_docs)?;
    let general_docs = spread_heldout(&o.corpus.join("general.jsonl"), o.eval_docs)?;
    let start_step = match &train_start {
        Start::Resume { dir, .. } => octet_lm::checkpoint::load(dir, false)?.state.step,
        Start::Fresh(..) => 0,
    };
    let steps = o.steps();
    // Step 0 (fresh runs), every multiple of eval_every after the start, and the end.
    let every = |s: usize| s.checked_div(o.eval_every).unwrap_or(0);
    let at_end = o.eval_every == 0 || !steps.is_multiple_of(o.eval_every);
    let evaluations = usize::from(start_step == 0) + every(steps) - every(start_step.min(steps)) + usize::from(at_end);
    let eval_bytes: usize = dom.iter().chain(&general_docs).map(|d| d.text.len().min(o.eval_doc_bytes)).sum();
    let tps = TOKENS_PER_S_PER_CORE * rayon::current_num_threads() as f64;
    // Roughly 1 token per 3 bytes of text.
    let eval_tokens_estimate = eval_bytes / 3;
    let plan = Plan {
        steps,
        start_step,
        tokens: o.tokens,
        blend: st.blend.clone(),
        evaluations,
        eval_tokens_estimate,
        assumed_tokens_per_s: tps,
        estimate_seconds: (steps - start_step.min(steps)) as f64 * (o.batch * o.seq) as f64 / tps
            + (evaluations * eval_tokens_estimate) as f64 / (tps * EVAL_SPEEDUP),
    };
    (on.borrow_mut())(Report::Plan(&plan));
    let log = o.out.join("bpb.jsonl");
    let mut hook = |step: usize, m: &mut dyn LanguageModel| -> Result<()> {
        let p = bpb_point(m, &tok, doc_start, &dom, &general_docs, &o, step)?;
        append_line(&log, &serde_json::to_string(&p).expect("point serialises"))?;
        (on.borrow_mut())(Report::Bpb(&p));
        Ok(())
    };
    let hooks = Hooks { train: Some(&train_src), val: Some(&val_src), eval: Some(&mut hook) };
    let mut on_event = |e: &Event| (on.borrow_mut())(Report::Train(e));
    train::run_with(train_start, None, &mut on_event, hooks)
}

/// Append one line to `path` (created if missing).
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}
