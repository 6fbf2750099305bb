//! The `octet` binary: flags are defined once here (clap), turned into validated library
//! configurations, and run; every error is printed with its context and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use octet_core::{Error, Result};
use octet_lm::blocks::BlockKind;
use octet_lm::generate::{SampleConfig, sample};
use octet_lm::precision::Precision;
use octet_lm::spec::{ArchKind, ModelSpec, Overrides};
use octet_lm::train::{self, Event, Source, Start, TrainConfig};
use octet_lm::{checkpoint, data::TextTokenizer};

mod adapt;
mod gguf_generate;
mod materials;

/// The default corpus compiled into the binary: the Python 3.11 tutorial, FAQ and language reference
/// (0.9 MB, PSF License v2, see crates/cli/assets/LICENSE-PSF.txt), rebuilt by tools/make_default_corpus.sh.
const EMBEDDED_CORPUS: &str = include_str!("../assets/python-docs.txt");

/// Default learning rate of a run that starts from a pretrained model (`train --init`).
const PRETRAINED_LR: f64 = 1e-4;

#[derive(Parser)]
#[command(name = "octet", version, about = "Efficient training of transformers and graph networks, FP8 included")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Cmd {
    /// Train a GPT-2 or Llama model, from scratch or from a pretrained GGUF / HuggingFace model (with
    /// no flags: a small GPT-2 on the embedded Python docs, ~2 min).
    Train(TrainArgs),
    /// Sample text from a checkpoint, or from a GGUF Llama model (SmolLM2) with --gguf.
    Generate(GenerateArgs),
    /// Bytes per role (weights, gradients, optimizer state, activations) of a training run, and bytes
    /// per parameter.
    Memory(MemoryArgs),
    /// Write a Llama checkpoint as a HuggingFace directory or a GGUF file (llama.cpp, `generate --gguf`).
    Export(ExportArgs),
    /// Measure throughput (machine-readable with --json).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// GNoME-style materials discovery: data, train, predict, discover (the active-learning loop).
    #[command(subcommand)]
    Materials(materials::MaterialsCmd),
    /// ChipNeMo-style domain adaptation: corpus, tokenizer, eval, index, retrieval-eval, retriever
    /// (DAPT, SFT: not yet).
    #[command(subcommand)]
    Adapt(adapt::AdaptCmd),
    /// The CUDA device octet would use, or why none (exit status 1 then; build with `--features cuda`).
    Device,
}

#[derive(Args)]
struct MemoryArgs {
    /// Architecture: gpt2, llama (smollm2-135m implies llama).
    #[arg(long)]
    arch: Option<ArchKind>,
    /// A preset of the architecture: tiny, small, gpt2-124m (gpt2); tiny, small, smollm2-135m (llama).
    #[arg(long, default_value = "gpt2-124m")]
    model: String,
    /// Block kind (preln, parallel, sas, sas-p, sas-p-nonorm); default: the architecture's own.
    #[arg(long)]
    block: Option<BlockKind>,
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Vocabulary for tiny/small (gpt2-124m keeps 50257).
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 1024)]
    seq: usize,
    #[arg(long)]
    json: bool,
    /// At scale, computed (nothing allocated): per-GPU bytes by role and data-parallel bytes per step
    /// of GPT-7B, 13B and 175B at every FP8-LM level (fp32, bf16, fp8-te, fp8-o1, fp8-o2, fp8-o3),
    /// without and with ZeRO. With --model gpt-7b|gpt-13b|gpt-175b: that model only, at --level.
    #[arg(long)]
    scale: bool,
    /// Level of --scale with one model: fp32, bf16, fp8-te, fp8-o1, fp8-o2, fp8-o3.
    #[arg(long, default_value = "fp8-o2")]
    level: String,
    /// Data, tensor and pipeline parallel degrees for --scale (default: the table's for the model).
    #[arg(long)]
    dp: Option<usize>,
    #[arg(long)]
    tp: Option<usize>,
    #[arg(long)]
    pp: Option<usize>,
    /// Shard the optimizer state over the data-parallel group (--scale with one model).
    #[arg(long)]
    zero: bool,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Training-step throughput of a GPT-2 on random tokens (forward, backward, clip, AdamW).
    Train(BenchTrainArgs),
    /// Screening throughput (graph building + GNoME ensemble inference) and GNN training throughput.
    Materials(materials::BenchMaterialsArgs),
}

#[derive(Args)]
struct BenchTrainArgs {
    /// Architecture: gpt2, llama (smollm2-135m implies llama).
    #[arg(long)]
    arch: Option<ArchKind>,
    /// A preset of the architecture: tiny, small, gpt2-124m (gpt2); tiny, small, smollm2-135m (llama).
    #[arg(long, default_value = "small")]
    model: String,
    /// Block kind (preln, parallel, sas, sas-p, sas-p-nonorm); default: GPT-2's own block.
    #[arg(long)]
    block: Option<BlockKind>,
    /// Precision level: fp32, bf16, fp8-te, fp8-o1, fp8-o2, fp8-o2-v8.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Vocabulary for tiny/small (gpt2-124m keeps 50257).
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps (after warm-up); the median is reported.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Where the steps run: cpu, or cuda (a build with `--features cuda` and a GPU; ops without a
    /// device kernel yet run on the host over the same managed memory).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// TOML file with TrainConfig keys; flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Architecture: gpt2 (default), llama (smollm2-135m implies llama).
    #[arg(long)]
    arch: Option<ArchKind>,
    /// A preset of the architecture: tiny, small (default), gpt2-124m (gpt2); tiny, small,
    /// smollm2-135m (llama).
    #[arg(long)]
    model: Option<String>,
    /// Start from a pretrained Llama: a GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf) or a
    /// HuggingFace directory (config.json, model.safetensors, tokenizer.json; what `octet adapt
    /// tokenizer` writes). Its tokenizer tokenizes --data.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Override the preset's number of layers.
    #[arg(long)]
    n_layer: Option<usize>,
    /// Override the preset's number of attention heads.
    #[arg(long)]
    n_head: Option<usize>,
    /// Override the preset's width.
    #[arg(long)]
    n_embd: Option<usize>,
    /// Block kind: preln, parallel, sas, sas-p, sas-p-nonorm (simplified transformer blocks, RMSNorm,
    /// ReLU, no biases); default: GPT-2's own block.
    #[arg(long)]
    block: Option<BlockKind>,
    /// Precision level: fp32, bf16, fp8-te, fp8-o1 (f16 weights, E4M3 gradients), fp8-o2 (also E4M3/f16
    /// Adam), fp8-o2-v8 (v in E4M3 with 1x128 block scales: beyond the paper).
    #[arg(long)]
    precision: Option<Precision>,
    /// Text file (UTF-8) or prepared data directory (tokenizer.json, train.bin, val.bin).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use this tokenizer.json instead of training a BPE on the data.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches of --batch sequences per optimizer step (gradient accumulation).
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    seq: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Validate every N steps (0: only at the end).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Run directory (data, checkpoints).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue a run from its directory or a checkpoint directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Replace an earlier run in --out (its checkpoints, `latest` and prepared data) instead of
    /// refusing to start.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Stop after this step, checkpointing as an interruption would (for tests and time slicing).
    #[arg(long)]
    until: Option<usize>,
    /// Print one JSON object per line (steps, evaluations, last a summary) instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// Shard the FP8 optimizer state over the ranks of an `mpirun` job (FP8-LM's ZeRO; fp8-o1/o2).
    #[arg(long)]
    zero: bool,
    /// Under mpirun: check every N steps that all ranks hold the same weights (a hash).
    #[arg(long)]
    check_weights_every: Option<usize>,
}

#[derive(Args)]
struct ExportArgs {
    /// Checkpoint directory or run directory (a Llama model).
    #[arg(long)]
    checkpoint: PathBuf,
    /// hf: directory with model.safetensors, config.json, tokenizer.json (HF's RoPE convention);
    /// gguf: one GGUF v3 `llama` file with the tokenizer in its metadata.
    #[arg(long)]
    format: String,
    /// GGUF weight type: f32 (default), f16, q8_0 (norm gains stay f32).
    #[arg(long = "type")]
    ty: Option<String>,
    /// The GGUF file, or the HF directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory or run directory (or give --gguf).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A GGUF Llama model file, e.g. SmolLM2-135M-Instruct.Q4_1.gguf (or give --checkpoint).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// With --gguf: wrap the prompt as a user turn of the model's chat template (ChatML) and stop at the
    /// end of the assistant's turn.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value = "\n")]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

fn load_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::format(path, "config", e.to_string().trim().replace('\n', " ")))
}

fn resolve_train(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => load_config(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! over {
        ($($f:ident),*) => { $(if let Some(v) = &a.$f { c.$f = v.clone(); })* };
    }
    over!(
        model,
        precision,
        vocab_size,
        steps,
        batch,
        grad_accum,
        seq,
        lr,
        seed,
        eval_every,
        checkpoint_every,
        out,
        check_weights_every
    );
    c.zero |= a.zero;
    if a.data.is_some() {
        c.data = a.data.clone();
    }
    for (dst, src) in [(&mut c.n_layer, a.n_layer), (&mut c.n_head, a.n_head), (&mut c.n_embd, a.n_embd)] {
        if src.is_some() {
            *dst = src;
        }
    }
    if a.tokenizer.is_some() {
        c.tokenizer = a.tokenizer.clone();
    }
    if a.block.is_some() {
        c.block = a.block;
    }
    if a.init.is_some() {
        c.init = a.init.clone();
        c.arch = ArchKind::Llama;
        if a.config.is_none() {
            // Fine-tuning a pretrained model: a small constant-then-cosine rate, no warm-up (the
            // from-scratch default of 2e-3 with warm-up overshoots and raises the held-out loss).
            c.lr = a.lr.unwrap_or(PRETRAINED_LR);
            c.warmup = 0;
        }
    }
    c.arch = arch_for(a.arch.unwrap_or(c.arch), &c.model, a.arch.is_some())?;
    c.overwrite = a.overwrite;
    c.validate()?;
    Ok(c)
}

/// The architecture of a run: as given, or implied by a preset only one architecture has.
fn arch_for(arch: ArchKind, model: &str, explicit: bool) -> Result<ArchKind> {
    match (model, explicit) {
        ("smollm2-135m", false) => Ok(ArchKind::Llama),
        ("smollm2-135m", true) if arch != ArchKind::Llama => {
            Err(Error::config("model", "smollm2-135m is a llama model (--arch llama)"))
        }
        _ => Ok(arch),
    }
}

fn run_train(a: TrainArgs) -> Result<()> {
    let start = match &a.resume {
        Some(dir) => {
            if a.config.is_some()
                || a.model.is_some()
                || a.data.is_some()
                || a.out.is_some()
                || a.init.is_some()
                || a.zero
            {
                return Err(Error::config(
                    "resume",
                    "a resumed run keeps its checkpoint's configuration; only --steps and --until may change",
                ));
            }
            Start::Resume { dir: dir.clone(), steps: a.steps }
        }
        None => {
            let cfg = resolve_train(&a)?;
            let source = match &cfg.data {
                Some(p) => Source::Path(p.clone()),
                None => Source::Embedded(EMBEDDED_CORPUS),
            };
            Start::Fresh(cfg, source)
        }
    };
    // One process, or a rank of an mpirun job (MPI initialises here, once).
    let coll = octet_dist::init().map_err(Error::Other)?;
    let (rank, ranks) = (coll.rank(), coll.size());
    let json = a.json;
    let pb = if json || rank != 0 { ProgressBar::hidden() } else { ProgressBar::new(0) };
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]")
            .expect("valid template"),
    );
    let mut on = |e: &Event| {
        if json {
            let v = match e {
                Event::Step(s) => {
                    let mut v = serde_json::json!({"event": "step", "step": s.step, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "tokens_per_s": s.tokens_per_s});
                    if let Some(b) = s.comm_bytes {
                        v["comm_bytes"] = b.into();
                    }
                    v
                }
                other => serde_json::to_value(other).expect("events serialise"),
            };
            println!("{v}");
            return;
        }
        // Without a terminal the bar is hidden: say the same things as plain lines on stderr.
        let say = |m: String| {
            if pb.is_hidden() { eprintln!("{m}") } else { pb.println(m) }
        };
        match e {
            Event::Start { params, train_tokens, val_tokens, vocab_size, start_step, steps, ranks } => {
                let procs = if *ranks > 1 { format!("; {ranks} ranks") } else { String::new() };
                say(format!(
                    "model {:.2}M parameters, vocabulary {vocab_size}; data {train_tokens} train / {val_tokens} validation tokens; steps {start_step}..{steps}{procs}",
                    *params as f64 / 1e6
                ));
                pb.set_length(*steps as u64);
                pb.set_position(*start_step as u64);
            }
            Event::Step(s) => {
                let msg = format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", s.loss, s.lr, s.tokens_per_s);
                if pb.is_hidden() && (s.step % 50 == 0 || s.step == 1) {
                    eprintln!("step {:>6}: {msg}", s.step);
                }
                pb.set_position(s.step as u64);
                pb.set_message(msg);
            }
            Event::Eval { step, val_loss } => say(format!("step {step:>6}: validation loss {val_loss:.4}")),
            Event::Checkpoint { step, path } => say(format!("step {step:>6}: checkpoint {}", path.display())),
            Event::Note { message } => say(message.clone()),
        }
    };
    let summary = match train::run_dist(start, a.until, coll.as_ref(), &mut on, train::Hooks::default()) {
        Ok(s) => s,
        // The other ranks would wait for this one in their next collective: end the job.
        Err(e) if ranks > 1 => {
            eprintln!("error (rank {rank} of {ranks}): {e}");
            coll.abort(1)
        }
        Err(e) => return Err(e),
    };
    pb.finish_and_clear();
    if rank != 0 {
        return Ok(());
    }
    if json {
        let mut v = serde_json::to_value(&summary).expect("summary serialises");
        v["event"] = "summary".into();
        println!("{v}");
    } else {
        println!(
            "done: {} steps, train loss {:.4}, validation loss {:.4}, {:.0} tokens/s, peak RSS {:.0} MiB\ncheckpoint: {}",
            summary.steps,
            summary.final_loss,
            summary.val_loss,
            summary.tokens_per_s,
            summary.peak_rss_bytes as f64 / (1 << 20) as f64,
            summary.checkpoint.display()
        );
        if let Some(s) = &summary.sample {
            println!("--- sample ---\n{s}\n--------------");
        }
    }
    Ok(())
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let sc = SampleConfig {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: 1.0,
        seed: a.seed,
    };
    let dir = match (&a.checkpoint, &a.gguf) {
        (Some(dir), None) => dir,
        (None, Some(path)) => {
            let g = gguf_generate::GgufGenerate { path, prompt: &a.prompt, chat: a.chat, sample: sc, json: a.json };
            return gguf_generate::run(&g);
        }
        _ => return Err(Error::config("generate", "give exactly one of --checkpoint DIR or --gguf FILE")),
    };
    if a.chat {
        return Err(Error::config("chat", "--chat needs --gguf (the chat template comes from the GGUF file)"));
    }
    let ck = checkpoint::load(dir, false)?;
    let tok = TextTokenizer::load(&ck.dir.join("tokenizer.json"))?;
    let recipe = octet_core::scaling::Recipe::default();
    let mut model = ck.state.model.from_params(ck.params, Precision::Fp32, &recipe)?;
    let prompt = tok.encode(&a.prompt)?;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= model.vocab().0) {
        return Err(Error::config("prompt", format!("token {bad} is outside the model's vocabulary")));
    }
    let t0 = std::time::Instant::now();
    let ids = sample(model.as_mut(), &prompt, &sc)?;
    let secs = t0.elapsed().as_secs_f64();
    let text = tok.decode(&ids)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"prompt": a.prompt, "text": text, "tokens": ids.len(), "tokens_per_s": ids.len() as f64 / secs})
        );
    } else {
        println!("{}{}", a.prompt, text);
        eprintln!("[{} tokens, {:.1} tokens/s]", ids.len(), ids.len() as f64 / secs);
    }
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    let format = octet_lm::export::Format::parse(&a.format, a.ty.as_deref())?;
    let e = octet_lm::export::export(&a.checkpoint, format, &a.out)?;
    let what = match format {
        octet_lm::export::Format::Hf => "hf".to_string(),
        octet_lm::export::Format::Gguf(t) => format!("gguf {}", t.name()),
    };
    if a.json {
        let v = serde_json::json!({
            "path": e.path, "format": what, "step": e.step, "bytes": e.bytes,
            "model": serde_json::to_value(e.config).expect("config serialises"),
        });
        println!("{v}");
    } else {
        eprintln!("wrote {} ({what}, step {}, {} bytes)", e.path.display(), e.step, e.bytes);
    }
    Ok(())
}

fn run_memory(a: MemoryArgs) -> Result<()> {
    if a.scale {
        return run_memory_scale(&a);
    }
    let arch = arch_for(a.arch.unwrap_or_default(), &a.model, a.arch.is_some())?;
    let spec = ModelSpec::preset(arch, &a.model, a.block, a.vocab_size, Overrides::default())?;
    let seq = a.seq.min(spec.dims().max_seq_len);
    let ledger = octet_lm::memory::plan(spec, a.precision, a.batch, seq)?;
    let mut v = ledger.to_json();
    v["arch"] = arch.name().into();
    v["model"] = a.model.clone().into();
    v["precision"] = a.precision.name().into();
    v["batch"] = a.batch.into();
    v["seq"] = seq.into();
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("{} at {}, B={} T={seq}: {} parameters", a.model, a.precision, a.batch, ledger.params);
    for (role, bytes) in &ledger.bytes {
        println!(
            "  {:<12} {:>10.1} MiB  {:>6.2} B/param",
            format!("{role:?}"),
            *bytes as f64 / (1 << 20) as f64,
            *bytes as f64 / ledger.params as f64
        );
    }
    println!(
        "  weight-related state {:.2} B/param; total {:.1} MiB",
        ledger.bytes_per_param(),
        ledger.total() as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// `octet memory --scale`: the analytical ledger (`octet_lm::memory::analytic`).
fn run_memory_scale(a: &MemoryArgs) -> Result<()> {
    use octet_lm::memory::{GPT_7B, GPT_13B, GPT_175B, GptShape, Parallel, ScaleLevel, analytic, default_parallel};
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let rows: Vec<_> = match GptShape::by_name(&a.model) {
        Some(shape) => {
            let level = ScaleLevel::parse(&a.level).ok_or_else(|| {
                Error::config(
                    "level",
                    format!("unknown level `{}` (fp32, bf16, fp8-te, fp8-o1, fp8-o2, fp8-o3)", a.level),
                )
            })?;
            let d = default_parallel(shape, a.zero);
            let par = Parallel { dp: a.dp.unwrap_or(d.dp), tp: a.tp.unwrap_or(d.tp), pp: a.pp.unwrap_or(d.pp), ..d };
            if par.dp == 0 || par.tp == 0 || par.pp == 0 {
                return Err(Error::config("dp", "parallel degrees must be positive"));
            }
            vec![analytic(shape, level, par)]
        }
        None => [GPT_7B, GPT_13B, GPT_175B]
            .into_iter()
            .flat_map(|shape| {
                [false, true].into_iter().flat_map(move |zero| {
                    ScaleLevel::ALL.into_iter().map(move |l| analytic(shape, l, default_parallel(shape, zero)))
                })
            })
            .collect(),
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_value(r).expect("analytic serialises"));
        }
        return Ok(());
    }
    println!(
        "| model | dp x tp x pp | ZeRO | level | weights | master | grads | m | v | weight state | activations | total | vs bf16 | DP comm / step |"
    );
    println!("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let bf16 = analytic(GptShape::by_name(r.model).expect("a scale model"), ScaleLevel::Bf16, r.parallel);
        let p = r.parallel;
        let b: Vec<String> = r.bytes.iter().map(|x| format!("{:.2}", gib(x.1))).collect();
        println!(
            "| {} | {} x {} x {} | {} | {} | {} | {:.2} | {} | {:.2} | {:+.0}% | {:.2} |",
            r.model,
            p.dp,
            p.tp,
            p.pp,
            if p.zero { "yes" } else { "no" },
            r.level.name(),
            b[..5].join(" | "),
            gib(r.weight_related_bytes),
            b[5],
            gib(r.total_bytes),
            (r.total_bytes / bf16.total_bytes - 1.0) * 100.0,
            gib(r.dp_comm_bytes_per_step),
        );
    }
    println!("(GiB per GPU; activations: micro-batch 1, T=2048, selective recomputation, 16-bit)");
    Ok(())
}

fn run_bench(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Materials(a) => materials::run_bench(a),
        BenchCmd::Train(a) => {
            let arch = arch_for(a.arch.unwrap_or_default(), &a.model, a.arch.is_some())?;
            let spec = ModelSpec::preset(arch, &a.model, a.block, a.vocab_size, Overrides::default())?;
            let max_t = spec.dims().max_seq_len;
            if a.seq == 0 || a.seq > max_t || a.batch == 0 || a.steps == 0 {
                return Err(Error::config("seq/batch/steps", format!("need 0 < seq <= {max_t}, batch > 0, steps > 0")));
            }
            let r = match a.device.as_str() {
                "cpu" => octet_lm::bench::bench_train(spec, a.precision, a.batch, a.seq, a.steps, a.warmup, 0)?,
                "cuda" => bench_train_cuda(spec, &a)?,
                other => return Err(Error::config("device", format!("`{other}`: expected cpu or cuda"))),
            };
            if a.json {
                println!("{}", serde_json::to_string(&r).expect("serialises"));
            } else {
                println!(
                    "{} {}{} {} on {} ({:.2}M params), B={} T={}: {:.1} ms/step, {:.0} tokens/s, {:.1} GFLOP/s, peak RSS {:.0} MiB",
                    arch,
                    a.model,
                    a.block.map_or(String::new(), |b| format!(" --block {b}")),
                    a.precision,
                    r.device,
                    r.params as f64 / 1e6,
                    r.batch,
                    r.seq,
                    r.median_step_ms,
                    r.tokens_per_s,
                    r.gflops,
                    r.peak_rss_bytes as f64 / (1 << 20) as f64
                );
            }
            Ok(())
        }
    }
}

#[cfg(feature = "cuda")]
fn bench_train_cuda(spec: ModelSpec, a: &BenchTrainArgs) -> Result<octet_lm::bench::BenchResult> {
    let be = octet_cuda::CudaBackend::new(0).map_err(|e| Error::config("device", format!("cuda: {e}")))?;
    octet_lm::bench::bench_train_on(be, spec, a.precision, a.batch, a.seq, a.steps, a.warmup, 0)
}

#[cfg(not(feature = "cuda"))]
fn bench_train_cuda(_: ModelSpec, _: &BenchTrainArgs) -> Result<octet_lm::bench::BenchResult> {
    Err(Error::config("device", "cuda is not built in: rebuild with `cargo build --release --features cuda`"))
}

/// Prints `cuda: <device>` (exit 0) or fails with why no CUDA device can be used (exit 1): a not
/// built-in backend, a missing driver or library, no GPU.
fn run_device() -> Result<()> {
    let device = octet_cuda::probe().map_err(Error::Other)?;
    println!("cuda: {device}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Train(a) => run_train(a),
        Cmd::Generate(a) => run_generate(a),
        Cmd::Bench(c) => run_bench(c),
        Cmd::Memory(a) => run_memory(a),
        Cmd::Export(a) => run_export(a),
        Cmd::Materials(c) => materials::run(c),
        Cmd::Adapt(c) => adapt::run(c),
        Cmd::Device => run_device(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
