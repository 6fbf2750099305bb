//! The trainer: data preparation, the AdamW loop with schedule and clipping, periodic validation and
//! atomic checkpoints, bit-identical resume, and a summary. It reports through `Event`s so the CLI
//! decides how to show them (progress bar or JSON lines).

use std::path::{Path, PathBuf};
use std::time::Instant;

use octet_core::{Error, Result};
use octet_optim::{AdamWConfig, Schedule};

use crate::checkpoint::{self, STATE_VERSION, State, Tensors};
pub use crate::config::TrainConfig;
use crate::data::{self, Batches, Shard, TextTokenizer};
use crate::generate::{SampleConfig, sample};
use crate::gguf::GgufFile;
use crate::llama::{LlamaConfig, params_from_gguf};
use crate::model::{Buffers, LanguageModel};
use crate::precision::Precision;
use crate::spec::ModelSpec;
use crate::step::{GradScaler, Optimizer, train_step_accum};
use octet_core::scaling::Recipe;

/// What the trainer reports as it goes.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start { params: usize, train_tokens: usize, val_tokens: usize, vocab_size: usize, start_step: usize, steps: usize },
    Step(StepLog),
    Eval { step: usize, val_loss: f64 },
    Checkpoint { step: usize, path: PathBuf },
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

/// Prepare (or reuse) the tokenizer and shards for a run under `out/data`; `given` (a pretrained
/// model's tokenizer) replaces training one.
fn prepare_data(cfg: &TrainConfig, source: &Source, given: Option<&TextTokenizer>) -> Result<(PathBuf, TextTokenizer)> {
    if let Source::Path(p) = source
        && p.is_dir()
    {
        let tok = TextTokenizer::load(&p.join("tokenizer.json"))?;
        return Ok((p.clone(), tok));
    }
    let text = match source {
        Source::Embedded(t) => t.to_string(),
        Source::Path(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            String::from_utf8(bytes)
                .map_err(|e| Error::format(p, "text", format!("not UTF-8 at byte {}", e.utf8_error().valid_up_to())))?
        }
    };
    let dir = cfg.out.join("data");
    let prep = match given {
        Some(tok) => data::prepare_with(&text, &dir, cfg.val_frac, tok.clone())?,
        None => data::prepare(&text, &dir, cfg.vocab_size, cfg.val_frac, cfg.tokenizer.as_deref())?,
    };
    Ok((dir, prep.tokenizer))
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
pub fn run_with(start: Start, until: Option<usize>, on: &mut dyn FnMut(&Event), mut hooks: Hooks) -> Result<Summary> {
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
    let (data_dir, tokenizer) = prepare_data(&cfg, &source, init.as_ref().map(|pt| &pt.tokenizer))?;
    let train_shard = Shard::open(&data_dir.join("train.bin"))?;
    let val_shard = Shard::open(&data_dir.join("val.bin"))?;
    let vocab = tokenizer.vocab_size();
    if train_shard.vocab_size > vocab {
        return Err(Error::format(
            &train_shard.path,
            "vocab_size",
            format!("shard vocabulary {} exceeds tokenizer's {vocab}", train_shard.vocab_size),
        ));
    }
    let spec = spec_for(vocab)?;
    if vocab > spec.dims().vocab_size {
        return Err(Error::config(
            "vocab_size",
            format!("the tokenizer has {vocab} tokens, the model {} embedding rows", spec.dims().vocab_size),
        ));
    }
    let (train_tokens, val_tokens) = (train_shard.len(), val_shard.len());
    if let Some(l) = &loaded
        && l.state.train_tokens != train_tokens
    {
        return Err(Error::format(
            data_dir.join("train.bin"),
            "count",
            format!(
                "checkpoint trained on {} tokens, this shard has {train_tokens}: not the same data",
                l.state.train_tokens
            ),
        ));
    }
    // The shards' windows, unless the application brings its own batches (whose rows may be exactly
    // T tokens, too few for a window of T + 1).
    let shard_train = match hooks.train {
        Some(_) => None,
        None => Some(Batches::new(train_shard, cfg.batch, cfg.seq, cfg.seed)?),
    };
    let val_b = cfg.batch.min(val_tokens.saturating_sub(1) / cfg.seq).max(1);
    let shard_val = match hooks.val {
        Some(_) => None,
        None => Some(Batches::new(val_shard, val_b, cfg.seq, cfg.seed)?),
    };
    let train: &dyn BatchSource = match (hooks.train, &shard_train) {
        (Some(h), _) => h,
        (None, s) => s.as_ref().expect("built above"),
    };
    let val: &dyn BatchSource = match (hooks.val, &shard_val) {
        (Some(h), _) => h,
        (None, s) => s.as_ref().expect("built above"),
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
    for step in start..stop {
        let t0 = Instant::now();
        // Micro-batch i of step s is batch s * grad_accum + i of the shard's order (grad_accum = 1:
        // batch s, as without accumulation).
        let batches: Vec<(Vec<u32>, Vec<u32>)> =
            (0..cfg.grad_accum).map(|i| train.train_batch(step * cfg.grad_accum + i)).collect();
        let micro: Vec<(&[u32], &[u32])> = batches.iter().map(|(x, y)| (&x[..], &y[..])).collect();
        let lr = sched.lr_at(step);
        let out =
            train_step_accum(model.as_mut(), &mut opt, &mut scaler, &micro, cfg.batch, cfg.seq, cfg.grad_clip, lr)?;
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
        }));
        let done = step + 1;
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
            let merged = match model.merged_params() {
                Some(p) => Some(octet_core::Slab::from_vec(std::sync::Arc::new(model.full_layout()), p)?),
                None => None,
            };
            let tensors = match (&opt, model.narrow(), model.plain()) {
                (Optimizer::Lora(o), None, _) => Tensors::Lora {
                    merged: merged.as_ref().expect("a LoRA model merges"),
                    adapters: model.lora_params().expect("a LoRA optimizer has adapters"),
                    m: &o.m,
                    v: &o.v,
                },
                (Optimizer::Plain(o), None, Some((params, _))) => Tensors::Plain { params, m: &o.m, v: &o.v },
                (Optimizer::Narrow(o), Some(nw), _) => Tensors::Narrow { weights: &nw.weights, m: &o.m, v: &o.v },
                _ => unreachable!("optimizer matches the model's storage (Optimizer::for_model)"),
            };
            last_ckpt = checkpoint::save(&cfg.out, &state, tensors, &tok_json, 2)?;
            on(&Event::Checkpoint { step: done, path: last_ckpt.clone() });
        }
    }
    let sample = if cfg.sample_tokens > 0 && stop == cfg.steps {
        let prompt = tokenizer.encode("\n")?;
        let sc =
            SampleConfig { max_new_tokens: cfg.sample_tokens, temperature: 0.8, top_k: 40, top_p: 1.0, seed: cfg.seed };
        let ids = sample(model.as_mut(), &prompt, &sc)?;
        Some(tokenizer.decode(&ids)?)
    } else {
        None
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
    })
}
