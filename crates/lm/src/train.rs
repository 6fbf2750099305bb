//! The trainer: data preparation, the AdamW loop with schedule and clipping, periodic validation and
//! atomic checkpoints, bit-identical resume, and a summary. It reports through `Event`s so the CLI
//! decides how to show them (progress bar or JSON lines).
//!
//! Run directory policy (`octet_core::rundir`): the trainer holds `--out`'s lock for the whole run
//! (checked writable before any work), sweeps temporaries a killed run left, and refuses a fresh run
//! over an earlier one (`latest`, `ckpt-*`, `data`) unless `overwrite`. Data is prepared in a
//! temporary directory and renamed to `data/` only once it is usable.

use std::path::{Path, PathBuf};
use std::time::Instant;

use octet_core::{Error, Result};
use octet_optim::{AdamWConfig, Schedule};

use crate::checkpoint::{self, STATE_VERSION, State, Tensors};
pub use crate::config::TrainConfig;
use crate::data::{self, Batches, Shard, TextTokenizer};
use crate::dist::{CommScaler, DataParallel};
use crate::generate::{SampleConfig, sample};
use crate::gguf::GgufFile;
use crate::llama::{LlamaConfig, params_from_gguf};
use crate::model::{Buffers, LanguageModel};
use crate::precision::Precision;
use crate::spec::ModelSpec;
use crate::step::{GradScaler, Optimizer, train_step_dist};
use octet_core::fs::{TMP_MARK, sync_dir};
use octet_core::rundir::RunDir;
use octet_core::scaling::Recipe;
use octet_dist::{Collective, Single, Traffic};

/// What the trainer reports as it goes.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        params: usize,
        train_tokens: usize,
        val_tokens: usize,
        vocab_size: usize,
        start_step: usize,
        steps: usize,
        /// Processes of the data-parallel job (1: none).
        ranks: usize,
    },
    Step(StepLog),
    Eval {
        step: usize,
        val_loss: f64,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    /// Anything else worth a line (stale temporaries removed).
    Note {
        message: String,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// The update was skipped (a gradient overflowed; narrow levels only) and the gradient scale halved.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Payload bytes this rank handed to collectives in this step (data-parallel runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_bytes: Option<u64>,
}

/// What a data-parallel run moved (rank 0's counts; every rank moves the same), from the
/// `Collective`'s counters (`octet_dist::Traffic`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommSummary {
    pub ranks: usize,
    pub backend: &'static str,
    /// What the level's gradients travel as (`dist::Wire`).
    pub wire_format: crate::dist::Wire,
    pub zero: bool,
    /// Payload bytes per training step, by kind of collective (averaged over the run's steps; the
    /// checkpoints' gathers and weight checks are not steps and are left out).
    pub bytes_per_step: u64,
    pub all_reduce_per_step: u64,
    pub reduce_scatter_per_step: u64,
    pub all_gather_per_step: u64,
    /// What a ring algorithm sends per rank per step for those collectives.
    pub wire_bytes_per_step: u64,
    /// Bytes of the gradient payload alone per step (one element per parameter in the wire format).
    pub gradient_payload_bytes: u64,
    /// FP8 all-reduce: final mu exponent and its back-offs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mu_exp: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mu_backoffs: Option<u64>,
    /// Adam m + v bytes each rank holds, from its live buffers (1/N each with ZeRO).
    pub adam_bytes_per_rank: Vec<u64>,
}

/// The run's result (the last JSON object `octet train --json` prints).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub steps: usize,
    pub final_loss: f64,
    pub val_loss: f64,
    pub tokens_per_s: f64,
    pub peak_rss_bytes: u64,
    /// Bytes per role of every training buffer (weights, gradients, Adam m/v, activations,
    /// workspace) and `bytes_per_param`; see `memory::Ledger`.
    pub memory: serde_json::Value,
    pub params: usize,
    /// Parameters the optimizer updates (the adapters' with LoRA, else all).
    pub trainable_params: usize,
    pub precision: Precision,
    /// Steps whose update was skipped because a gradient overflowed (narrow levels).
    pub skipped_steps: u64,
    pub train_seconds: f64,
    pub checkpoint: PathBuf,
    pub sample: Option<String>,
    /// Communication of a data-parallel run (absent for one process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<CommSummary>,
}

/// Where the training text comes from.
pub enum Source<'a> {
    Embedded(&'a str),
    Path(PathBuf),
}

/// Peak resident set size of this process (Linux VmHWM), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A pretrained model a fresh run starts from (`--init`).
struct Pretrained {
    spec: ModelSpec,
    params: Vec<f32>,
    tokenizer: TextTokenizer,
}

/// Read `--init`: a GGUF `llama` file (weights dequantised, its embedded tokenizer), a HuggingFace
/// Llama directory as `octet adapt tokenizer` and `llama_hf::export_hf` write it, or an octet run or
/// checkpoint directory (its weights, decoded at the narrow levels, and its tokenizer; the new run
/// starts from step 0 with a fresh optimizer: e.g. SFT from a DAPT run).
fn load_pretrained(path: &Path) -> Result<Pretrained> {
    let is_checkpoint = path.is_dir() && (path.join("latest").is_file() || path.join("state.json").is_file());
    if is_checkpoint {
        let l = checkpoint::load(path, false)?;
        let tokenizer = TextTokenizer::load(&l.dir.join("tokenizer.json"))?;
        return Ok(Pretrained { spec: l.state.model, params: l.params, tokenizer });
    }
    let (cfg, params, tokenizer) = if path.is_dir() {
        let (cfg, params) = crate::llama_hf::import_hf(path)?;
        (cfg, params, TextTokenizer::load(&path.join("tokenizer.json"))?)
    } else {
        let g = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&g)?;
        let params = params_from_gguf(&g, &cfg)?;
        (cfg, params, TextTokenizer::from_tokenizer(g.tokenizer()?.into_inner()))
    };
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(Error::format(
            path,
            "tokenizer",
            format!("{} tokens, but the model has {} embedding rows", tokenizer.vocab_size(), cfg.vocab_size),
        ));
    }
    Ok(Pretrained { spec: ModelSpec::Llama(cfg), params, tokenizer })
}

/// Where prepared data lives in a run directory.
const DATA_DIR: &str = "data";

/// Use a prepared data directory, or tokenize text into a temporary directory in `out` (the caller
/// renames it to `data/` once the shards prove usable: `Staged::commit`); `given` (a pretrained
/// model's tokenizer) replaces training one.
fn prepare_data(cfg: &TrainConfig, source: &Source, given: Option<&TextTokenizer>) -> Result<(Staged, TextTokenizer)> {
    if let Source::Path(p) = source
        && p.is_dir()
    {
        let tok = TextTokenizer::load(&p.join("tokenizer.json"))?;
        return Ok((Staged { dir: p.clone(), target: None }, tok));
    }
    let text = match source {
        Source::Embedded(t) => t.to_string(),
        Source::Path(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            String::from_utf8(bytes)
                .map_err(|e| Error::format(p, "text", format!("not UTF-8 at byte {}", e.utf8_error().valid_up_to())))?
        }
    };
    let dir = cfg.out.join(format!(".{DATA_DIR}{TMP_MARK}{}", std::process::id()));
    let staged = Staged { dir: dir.clone(), target: Some(cfg.out.join(DATA_DIR)) };
    let prep = match given {
        Some(tok) => data::prepare_with(&text, &dir, cfg.val_frac, tok.clone()),
        None => data::prepare(&text, &dir, cfg.vocab_size, cfg.val_frac, cfg.tokenizer.as_deref()),
    };
    match prep {
        Ok(prep) => Ok((staged, prep.tokenizer)),
        Err(e) => Err(staged.discard(e)),
    }
}

/// Prepared data: in place (`target` none) or in a temporary directory to be renamed to `target`.
struct Staged {
    dir: PathBuf,
    target: Option<PathBuf>,
}

impl Staged {
    /// Move the data to its final place; returns that directory.
    fn commit(self) -> Result<PathBuf> {
        let Some(target) = self.target else { return Ok(self.dir) };
        std::fs::rename(&self.dir, &target).map_err(|e| Error::io(&target, e))?;
        sync_dir(target.parent().unwrap_or(Path::new(".")))?;
        Ok(target)
    }

    /// Remove a temporary directory after `e`, returning `e`: no partial output stays.
    fn discard(self, e: Error) -> Error {
        if self.target.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        e
    }
}

/// Prepared data opened for a run: the shards' windows (where asked for) and their token counts.
struct Opened {
    train: Option<Batches>,
    val: Option<Batches>,
    train_tokens: usize,
    val_tokens: usize,
}

/// The shards of prepared data in `dir`, checked against a tokenizer of `vocab` tokens, with their
/// train and validation windows where `windows` asks for them.
fn open_batches(cfg: &TrainConfig, dir: &Path, vocab: usize, windows: (bool, bool)) -> Result<Opened> {
    let train_shard = Shard::open(&dir.join("train.bin"))?;
    let val_shard = Shard::open(&dir.join("val.bin"))?;
    if train_shard.vocab_size > vocab {
        return Err(Error::format(
            &train_shard.path,
            "vocab_size",
            format!("shard vocabulary {} exceeds tokenizer's {vocab}", train_shard.vocab_size),
        ));
    }
    let (train_tokens, val_tokens) = (train_shard.len(), val_shard.len());
    let train = windows.0.then(|| Batches::new(train_shard, cfg.batch, cfg.seq, cfg.seed)).transpose()?;
    let val_b = cfg.batch.min(val_tokens.saturating_sub(1) / cfg.seq).max(1);
    let val = windows.1.then(|| Batches::new(val_shard, val_b, cfg.seq, cfg.seed)).transpose()?;
    Ok(Opened { train, val, train_tokens, val_tokens })
}

/// This rank's rows of global batch rows `rows` (each of `t` tokens).
fn local_rows((x, y): &(Vec<u32>, Vec<u32>), rows: &std::ops::Range<usize>, t: usize) -> (Vec<u32>, Vec<u32>) {
    (x[rows.start * t..rows.end * t].to_vec(), y[rows.start * t..rows.end * t].to_vec())
}

fn evaluate(model: &mut dyn LanguageModel, val: &dyn BatchSource, n: usize) -> Result<f64> {
    let mut total = 0.0;
    let (b, t) = val.shape();
    for i in 0..n {
        let (x, y) = val.eval_batch(i);
        total += model.forward(&x, Some(&y), b, t)?.expect("targets given");
    }
    Ok(total / n as f64)
}

/// Where a run's batches come from: by default the shard's random windows (`data::Batches`); an
/// application (DAPT's packed documents, SFT's masked conversations) supplies its own through
/// [`Hooks`]. Inputs and targets are (B, T) each; targets may be `octet_kernels::IGNORE_TARGET`
/// (masked cross-entropy). Batch `step` must depend only on `step`, so a resumed run sees the same data.
pub trait BatchSource {
    /// (B, T) of every batch.
    fn shape(&self) -> (usize, usize);
    fn train_batch(&self, step: usize) -> (Vec<u32>, Vec<u32>);
    /// Validation batch `i` (the same every time it is asked for).
    fn eval_batch(&self, i: usize) -> (Vec<u32>, Vec<u32>);
}

impl BatchSource for Batches {
    fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }
    fn train_batch(&self, step: usize) -> (Vec<u32>, Vec<u32>) {
        Batches::train_batch(self, step)
    }
    fn eval_batch(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        Batches::eval_batch(self, i)
    }
}

/// An extra evaluation at every validation point (step 0 of a run from a pretrained model, every
/// `eval_every` steps, the end): `(step, model)`, e.g. held-out bits per byte of domain adaptation.
pub type EvalHook<'a> = &'a mut dyn FnMut(usize, &mut dyn LanguageModel) -> Result<()>;

/// What an application adds to the training loop without a loop of its own: batch sources in place
/// of the shards' windows (the shards are still prepared, and resume checks their token count) and an
/// evaluation hook. `Hooks::default()` is the plain trainer.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Training batches (their shape must be the configuration's (batch, seq)).
    pub train: Option<&'a dyn BatchSource>,
    /// Validation batches (any shape).
    pub val: Option<&'a dyn BatchSource>,
    pub eval: Option<EvalHook<'a>>,
}

/// How a run begins: fresh from a configuration, or from a checkpoint (whose configuration wins,
/// except for an optionally longer horizon).
#[allow(clippy::large_enum_variant)] // built once per run
pub enum Start<'a> {
    Fresh(TrainConfig, Source<'a>),
    Resume { dir: PathBuf, steps: Option<usize> },
}

/// Train, stopping after step `until` if given (checkpointing as an interruption would).
pub fn run(start: Start, until: Option<usize>, on: &mut dyn FnMut(&Event)) -> Result<Summary> {
    run_with(start, until, on, Hooks::default())
}

/// `run` with an application's batch sources and evaluation hook (see [`Hooks`]).
pub fn run_with(start: Start, until: Option<usize>, on: &mut dyn FnMut(&Event), hooks: Hooks) -> Result<Summary> {
    run_dist(start, until, &Single::new(), on, hooks)
}

/// `run_with` as one rank of the data-parallel job `coll` (`crate::dist`). Every rank trains on its
/// rows of each global batch (`batch` must split evenly); rank 0 alone prepares the data, writes the
/// run directory (checkpoints) and reports events, the other ranks read what it wrote after a
/// barrier (a shared file system). With one rank (and no ZeRO) this is exactly the single-process
/// trainer.
pub fn run_dist(
    start: Start,
    until: Option<usize>,
    coll: &dyn Collective,
    on: &mut dyn FnMut(&Event),
    mut hooks: Hooks,
) -> Result<Summary> {
    let (rank, ranks) = (coll.rank(), coll.size());
    let mut on = |e: &Event| {
        if rank == 0 {
            on(e)
        }
    };
    let (cfg, source, loaded) = match start {
        Start::Fresh(cfg, source) => (cfg, source, None),
        Start::Resume { dir, steps } => {
            let l = checkpoint::load(&dir, true)?;

            if let Some(n) = steps
                && n < l.state.step
            {
                return Err(Error::config(
                    "steps",
                    format!(
                        "{} is at step {}: --steps {n} leaves nothing to train (give --steps above {})",
                        l.dir.display(),
                        l.state.step,
                        l.state.step
                    ),
                ));
            }
            let run_dir = l.dir.parent().map_or_else(|| dir.clone(), Path::to_path_buf);
            let cfg = TrainConfig {
                steps: steps.unwrap_or(l.state.train.steps),
                out: run_dir.clone(),
                ..l.state.train.clone()
            };
            // Data the run prepared lives in its `data/`; a prepared directory given with --data stays put.
            let data = match &cfg.data {
                Some(d) if d.is_dir() => d.clone(),
                _ => run_dir.join("data"),
            };
            (cfg, Source::Path(data), Some(l))
        }
    };
    cfg.validate()?;
    if let Source::Path(p) = &source {
        std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    }
    // Rank 0 holds the run directory, before any work: a bad --out fails now, not at the first
    // checkpoint (the other ranks write nothing there).
    let _run_dir = if rank == 0 {
        let held = RunDir::hold(&cfg.out, "octet train")?;
        for p in held.swept() {
            on(&Event::Note { message: format!("removed {}, left by an interrupted run", p.display()) });
        }
        if loaded.is_none() {
            // Data this run prepares goes to `data/`; a prepared directory given as --data (an
            // application's, e.g. DAPT's `<out>/data`) is input, never an earlier run's.
            let prepares = !matches!(&source, Source::Path(p) if p.is_dir());
            let owned: &[&str] = if prepares { &["latest", "ckpt-*", DATA_DIR] } else { &["latest", "ckpt-*"] };
            held.claim_fresh(owned, cfg.overwrite, &format!("continue it with --resume {}", cfg.out.display()))?;
        }
        Some(held)
    } else {
        None
    };
    let init = match (&loaded, &cfg.init) {
        (None, Some(p)) => Some(load_pretrained(p)?),
        _ => None,
    };
    // Check the model and sequence length before anything is written.
    // The model: the checkpoint's, the pretrained one's, or the preset for a tokenizer of `vocab` tokens.
    let spec_for = |vocab: usize| match (&loaded, &init) {
        (Some(l), _) => Ok(l.state.model),
        (None, Some(pt)) => Ok(pt.spec),
        (None, None) => cfg.model_spec(vocab),
    };
    let preset = spec_for(cfg.vocab_size)?;
    if cfg.seq > preset.dims().max_seq_len {
        return Err(Error::config(
            "seq",
            format!("{} exceeds the model's max_seq_len {}", cfg.seq, preset.dims().max_seq_len),
        ));
    }
    let mut dp = DataParallel::new(coll);
    let rows = dp.rows(cfg.batch)?;
    // The model for a tokenizer, and the batches of the data in `dir`, checked against each other
    // and against a checkpoint's data.
    // The shards' windows are built unless the application brings its own batches (whose rows may
    // be exactly T tokens, too few for a window of T + 1).
    let windows = (hooks.train.is_none(), hooks.val.is_none());
    let open = |dir: &Path, tokenizer: &TextTokenizer| -> Result<(ModelSpec, Opened)> {
        let vocab = tokenizer.vocab_size();
        let spec = spec_for(vocab)?;
        if vocab > spec.dims().vocab_size {
            return Err(Error::config(
                "vocab_size",
                format!("the tokenizer has {vocab} tokens, the model {} embedding rows", spec.dims().vocab_size),
            ));
        }
        let opened = open_batches(&cfg, dir, vocab, windows)?;
        if let Some(l) = &loaded
            && l.state.train_tokens != opened.train_tokens
        {
            return Err(Error::format(
                dir.join("train.bin"),
                "count",
                format!(
                    "checkpoint trained on {} tokens, this shard has {}: not the same data",
                    l.state.train_tokens, opened.train_tokens
                ),
            ));
        }
        Ok((spec, opened))
    };
    // Rank 0 prepares the data (in a temporary directory, renamed to `data/` once it proves usable);
    // the others wait for it and read what it wrote.
    let (data_dir, tokenizer, (spec, opened)) = if rank == 0 {
        let prepared = prepare_data(&cfg, &source, init.as_ref().map(|pt| &pt.tokenizer)).and_then(|(staged, tok)| {
            match open(&staged.dir, &tok) {
                Ok(opened) => Ok((staged.commit()?, tok, opened)),
                Err(e) => Err(staged.discard(e)),
            }
        });
        coll.barrier();
        prepared?
    } else {
        coll.barrier();
        let dir = match &source {
            Source::Path(p) if p.is_dir() => p.clone(),
            _ => cfg.out.join(DATA_DIR),
        };
        let tok = TextTokenizer::load(&dir.join("tokenizer.json"))?;
        let opened = open(&dir, &tok)?;
        (dir, tok, opened)
    };
    let vocab = tokenizer.vocab_size();
    let Opened { train: shard_train, val: shard_val, train_tokens, val_tokens } = opened;
    // The application's batches, or the shards' windows.
    let train: &dyn BatchSource = match (hooks.train, &shard_train) {
        (Some(h), _) => h,
        (None, s) => s.as_ref().expect("opened without a training hook"),
    };
    let val: &dyn BatchSource = match (hooks.val, &shard_val) {
        (Some(h), _) => h,
        (None, s) => s.as_ref().expect("opened without a validation hook"),
    };
    if train.shape() != (cfg.batch, cfg.seq) {
        return Err(Error::config(
            "batch",
            format!(
                "the batch source gives {:?} batches, the run trains on ({}, {})",
                train.shape(),
                cfg.batch,
                cfg.seq
            ),
        ));
    }

    let adam = AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: 1e-8, weight_decay: cfg.weight_decay };
    let recipe = Recipe::default();
    let mut scaler = GradScaler::default();
    let mut loaded_comm: Option<CommScaler> = None;
    let (mut model, mut opt, start): (Box<dyn LanguageModel>, Optimizer, usize) = match loaded {
        Some(l) => {
            let (mut model, opt): (Box<dyn LanguageModel>, Optimizer) = match l.narrow {
                Some(parts) => {
                    // The stored f16 weights, bit for bit (decoded only to build the model).
                    let w = parts.weights.to_f32();
                    let mut model = spec.from_params(w, cfg.precision, &recipe)?;
                    match model.buffers() {
                        Buffers::Narrow(nw) if **nw.weights.layout() == **parts.weights.layout() => {
                            nw.weights = parts.weights
                        }
                        _ => {
                            return Err(Error::format(
                                &l.dir,
                                "precision",
                                "narrow checkpoint, but not a narrow level",
                            ));
                        }
                    }
                    let mut opt = Optimizer::for_model(model.as_ref(), adam);
                    if let (Optimizer::Narrow(o), Some(m), Some(v)) = (&mut opt, parts.m, parts.v) {
                        if m.format() != o.m.format() || v.format() != o.v.format() {
                            return Err(Error::format(
                                &l.dir,
                                "optimizer",
                                "moment formats do not match the precision",
                            ));
                        }
                        (o.m, o.v) = (m, v);
                        o.step = l.state.optimizer_step.unwrap_or(l.state.step as u64);
                    }
                    (model, opt)
                }
                None => {
                    let model = spec.from_params(l.params, cfg.precision, &recipe)?;
                    let mut opt = Optimizer::for_model(model.as_ref(), adam);
                    if let Optimizer::Plain(o) = &mut opt {
                        // Into the optimizer's own buffers (its backend's memory), not in their place.
                        if l.m.len() != o.m.data.len() || l.v.len() != o.v.data.len() {
                            return Err(Error::Shape {
                                name: "checkpoint adam m/v".into(),
                                expected: vec![o.m.data.len()],
                                found: vec![l.m.len(), l.v.len()],
                            });
                        }
                        o.m.data.copy_from_slice(&l.m);
                        o.v.data.copy_from_slice(&l.v);
                        o.step = l.state.optimizer_step.unwrap_or(l.state.step as u64);
                    }
                    (model, opt)
                }
            };
            let scaling = l.state.scaling;
            if !scaling.is_empty() {
                if scaling.len() != model.scaling().len() {
                    return Err(Error::config(
                        "scaling",
                        format!(
                            "checkpoint has {} FP8 scaling states, model needs {}",
                            scaling.len(),
                            model.scaling().len()
                        ),
                    ));
                }
                *model.scaling_mut() = scaling;
            }
            scaler = l.state.scaler;
            loaded_comm = l.state.comm;
            (model, opt, l.state.step)
        }
        None => {
            let mut model = match init {
                Some(pt) => spec.from_params(pt.params, cfg.precision, &recipe)?,
                None => spec.init(cfg.precision, &recipe, cfg.seed)?,
            };
            if cfg.lora_rank > 0 {
                model.enable_lora(cfg.lora_rank, cfg.lora_alpha, cfg.seed)?;
            }
            let opt = Optimizer::for_model(model.as_ref(), adam);
            (model, opt, 0)
        }
    };
    if let Some(c) = loaded_comm.filter(|c| c.ranks == ranks) {
        dp.comm = c;
    }
    if cfg.zero {
        let fresh = Optimizer::zero_for_model(model.as_ref(), adam, rank, ranks)?;
        opt = match (opt, fresh) {
            (Optimizer::Narrow(full), Optimizer::Zero(mut z)) => {
                // A fresh shard, or a checkpoint's full moments cut to this rank's units.
                z.load_full(&full.m, &full.v, full.step);
                Optimizer::Zero(z)
            }
            _ => unreachable!("zero_for_model succeeds for narrow models only"),
        };
    }
    let use_dp = ranks > 1 || cfg.zero;
    let sched =
        Schedule { lr: cfg.lr, warmup: cfg.warmup, total: cfg.steps, min_lr_frac: cfg.min_lr_frac, decay: cfg.decay };
    let stop = until.unwrap_or(cfg.steps).min(cfg.steps);
    on(&Event::Start {
        params: model.num_params(),
        train_tokens,
        val_tokens,
        vocab_size: vocab,
        start_step: start,
        steps: cfg.steps,
        ranks,
    });

    let tok_json = data_dir.join("tokenizer.json");
    let mut state = State {
        version: STATE_VERSION,
        step: start,
        model: spec,
        train: cfg.clone(),
        train_tokens,
        last_loss: None,
        scaling: vec![],
        scaler,
        optimizer_step: None,
        comm: None,
    };
    // A run from a pretrained model measures where it starts: the held-out loss before step 1.
    if start == 0 && cfg.init.is_some() {
        let v0 = evaluate(model.as_mut(), val, cfg.eval_batches)?;
        on(&Event::Eval { step: 0, val_loss: v0 });
        if let Some(h) = hooks.eval.as_mut() {
            h(0, model.as_mut())?;
        }
    }
    let (mut train_secs, mut trained_tokens) = (0.0f64, 0usize);
    let mut last_ckpt = PathBuf::new();
    let mut val_loss = f64::NAN;
    let mut last_loss = f64::NAN;
    let (mut step_traffic, mut traffic_steps) = (Traffic::default(), 0u64);
    for step in start..stop {
        let t0 = Instant::now();
        // Micro-batch i of step s is batch s * grad_accum + i of the shard's order (grad_accum = 1:
        // batch s, as without accumulation); this rank trains on its rows of it.
        let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..cfg.grad_accum)
            .map(|i| local_rows(&train.train_batch(step * cfg.grad_accum + i), &rows, cfg.seq))
            .collect();
        let micro: Vec<(&[u32], &[u32])> = batches.iter().map(|(x, y)| (&x[..], &y[..])).collect();
        let lr = sched.lr_at(step);
        let before = coll.traffic();
        let out = train_step_dist(
            model.as_mut(),
            &mut opt,
            &mut scaler,
            &micro,
            rows.len(),
            cfg.seq,
            cfg.grad_clip,
            lr,
            if use_dp { Some(&mut dp) } else { None },
        )?;
        let moved = coll.traffic().since(&before);
        step_traffic = step_traffic.plus(&moved);
        traffic_steps += 1;
        let (loss, grad_norm) = (out.loss, out.grad_norm);
        let dt = t0.elapsed().as_secs_f64();
        let step_tokens = cfg.batch * cfg.seq * cfg.grad_accum;
        train_secs += dt;
        trained_tokens += step_tokens;
        last_loss = loss;
        on(&Event::Step(StepLog {
            step: step + 1,
            loss,
            lr,
            grad_norm,
            tokens_per_s: step_tokens as f64 / dt,
            skipped: out.skipped,
            comm_bytes: use_dp.then_some(moved.payload()),
        }));
        let done = step + 1;
        if use_dp && cfg.check_weights_every > 0 && done % cfg.check_weights_every == 0 {
            dp.check_same_weights(model.as_ref(), done)?;
        }
        if done == stop || (cfg.eval_every > 0 && done % cfg.eval_every == 0) {
            val_loss = evaluate(model.as_mut(), val, cfg.eval_batches)?;
            on(&Event::Eval { step: done, val_loss });
            if let Some(h) = hooks.eval.as_mut() {
                h(done, model.as_mut())?;
            }
        }
        if done == stop || (cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) {
            state.step = done;
            state.last_loss = Some(loss);
            state.scaling = model.scaling().to_vec();
            state.scaler = scaler;
            state.optimizer_step = Some(opt.step());
            state.comm = (ranks > 1).then_some(dp.comm);
            // ZeRO: every rank sends its shard of m and v; rank 0 writes the whole state, so the
            // checkpoint is the unsharded one (it resumes on any number of ranks).
            let gathered = match &opt {
                Optimizer::Zero(z) => Some(z.gather_full(coll)),
                _ => None,
            };
            let merged = match model.merged_params() {
                Some(p) => Some(octet_core::Slab::from_vec(std::sync::Arc::new(model.full_layout()), p)?),
                None => None,
            };
            if rank == 0 {
                let tensors = match (&opt, &gathered, model.narrow(), model.plain()) {
                    (Optimizer::Lora(o), _, None, _) => Tensors::Lora {
                        merged: merged.as_ref().expect("a LoRA model merges"),
                        adapters: model.lora_params().expect("a LoRA optimizer has adapters"),
                        m: &o.m,
                        v: &o.v,
                    },
                    (Optimizer::Plain(o), _, None, Some((params, _))) => Tensors::Plain { params, m: &o.m, v: &o.v },
                    (Optimizer::Narrow(o), _, Some(nw), _) => {
                        Tensors::Narrow { weights: &nw.weights, m: &o.m, v: &o.v }
                    }
                    (Optimizer::Zero(_), Some((m, v)), Some(nw), _) => Tensors::Narrow { weights: &nw.weights, m, v },
                    _ => unreachable!("optimizer matches the model's storage (Optimizer::for_model)"),
                };
                last_ckpt = checkpoint::save(&cfg.out, &state, tensors, &tok_json, 2)?;
            } else {
                last_ckpt = cfg.out.join(format!("ckpt-{done:06}"));
            }
            // Nobody runs ahead (or reads `latest`) before rank 0 has written it.
            if ranks > 1 {
                coll.barrier();
            }
            on(&Event::Checkpoint { step: done, path: last_ckpt.clone() });
        }
    }
    let sample = if rank == 0 && cfg.sample_tokens > 0 && stop == cfg.steps {
        let prompt = tokenizer.encode("\n")?;
        let sc =
            SampleConfig { max_new_tokens: cfg.sample_tokens, temperature: 0.8, top_k: 40, top_p: 1.0, seed: cfg.seed };
        let ids = sample(model.as_mut(), &prompt, &sc)?;
        Some(tokenizer.decode(&ids)?)
    } else {
        None
    };
    // Every rank's optimizer bytes, for the summary (a collective: every rank takes part).
    let adam_bytes_per_rank = if use_dp {
        let (m, v) = opt.state_bytes();
        let mut all = vec![0u8; 8 * ranks];
        coll.all_gather_bytes(&((m + v) as u64).to_le_bytes(), &mut all);
        all.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
    } else {
        vec![]
    };
    Ok(Summary {
        steps: stop,
        final_loss: last_loss,
        val_loss,
        tokens_per_s: if train_secs > 0.0 { trained_tokens as f64 / train_secs } else { 0.0 },
        peak_rss_bytes: peak_rss_bytes(),
        memory: crate::memory::Ledger::of(model.as_ref(), opt.state_bytes()).to_json(),
        params: model.num_params(),
        trainable_params: model.lora_params().map_or(model.num_params(), |p| p.data.len()),
        precision: cfg.precision,
        skipped_steps: scaler.skipped,
        train_seconds: train_secs,
        checkpoint: last_ckpt,
        sample,
        comm: use_dp.then(|| {
            let per = |b: u64| b / traffic_steps.max(1);
            let wire_format = crate::dist::Wire::of(cfg.precision);
            let elem = match wire_format {
                crate::dist::Wire::F32 => 4,
                crate::dist::Wire::Bf16 => 2,
                crate::dist::Wire::E4M3 => 1,
            };
            CommSummary {
                ranks,
                backend: coll.name(),
                wire_format,
                zero: cfg.zero,
                bytes_per_step: per(step_traffic.payload()),
                all_reduce_per_step: per(step_traffic.all_reduce),
                reduce_scatter_per_step: per(step_traffic.reduce_scatter),
                all_gather_per_step: per(step_traffic.all_gather),
                wire_bytes_per_step: per(step_traffic.wire),
                gradient_payload_bytes: (model.num_params() * elem) as u64,
                mu_exp: (wire_format == crate::dist::Wire::E4M3).then_some(dp.comm.mu_exp),
                mu_backoffs: (wire_format == crate::dist::Wire::E4M3).then_some(dp.comm.backoffs),
                adam_bytes_per_rank,
            }
        }),
    })
}
