//! The configuration of a training run (`TrainConfig`): TOML file keys, overridden by flags; a
//! checkpoint's `state.json` records it. Apart from the trainer so that checkpoints and the trainer
//! both read it without depending on each other.

use std::path::PathBuf;

use octet_core::{Error, Result};
use octet_optim::Decay;

use crate::blocks::BlockKind;
use crate::precision::Precision;
use crate::spec::{ArchKind, ModelSpec, Overrides};

/// Everything a training run is configured by (TOML file keys; flags override them).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Architecture: gpt2, llama.
    pub arch: ArchKind,
    /// Model preset of the architecture: tiny, small, gpt2-124m (gpt2); tiny, small, smollm2-135m (llama).
    pub model: String,
    /// Block kind (`crate::blocks`: preln, parallel, sas, sas-p, sas-p-nonorm); none = the
    /// architecture's own block.
    pub block: Option<BlockKind>,
    /// Start from a pretrained model instead of a preset: a GGUF file or a HuggingFace directory
    /// (config.json + model.safetensors + tokenizer.json). Its tokenizer tokenizes the data.
    pub init: Option<PathBuf>,
    /// Override the preset's depth, heads and width (e.g. 6 layers, d=256 for the parity runs).
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    /// Precision level: fp32, bf16, fp8-te, fp8-o1, fp8-o2 (see `precision`).
    pub precision: Precision,
    /// A text file, or a directory with tokenizer.json + train.bin + val.bin; none = embedded corpus.
    pub data: Option<PathBuf>,
    /// Use this tokenizer.json instead of training one on the data.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary of the BPE trained on the data.
    pub vocab_size: usize,
    pub steps: usize,
    pub batch: usize,
    /// Micro-batches of `batch` sequences per optimizer step (gradient accumulation): the update of
    /// a batch this many times larger.
    pub grad_accum: usize,
    pub seq: usize,
    pub lr: f64,
    pub warmup: usize,
    pub min_lr_frac: f64,
    pub decay: Decay,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    pub seed: u64,
    /// Validate every N steps (0 = only at the end).
    pub eval_every: usize,
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: usize,
    pub out: PathBuf,
    /// Replace an earlier run in `out` (its `latest`, `ckpt-*` and `data`) instead of refusing to
    /// start. A flag of this invocation, not recorded in checkpoints.
    #[serde(skip)]
    pub overwrite: bool,
    /// Fraction of the tokens held out for validation.
    pub val_frac: f64,
    /// Tokens of text sampled at the end (0 = none).
    pub sample_tokens: usize,
    /// Shard the optimizer state over the ranks of a data-parallel job (FP8-LM's ZeRO; narrow
    /// levels: fp8-o1, fp8-o2, fp8-o2-v8). See `crate::dist`.
    pub zero: bool,
    /// In a data-parallel job, check every N steps that all ranks hold the same weights (a hash;
    /// 0 = never). A debugging aid: it costs one small all-gather.
    pub check_weights_every: usize,
    /// LoRA adapters of this rank on every block linear, only they trained (0 = full fine-tuning;
    /// `crate::lora`). Checkpoints hold the merged weights.
    pub lora_rank: usize,
    /// LoRA scale numerator: the update is (alpha / rank) B A.
    pub lora_alpha: f64,
}

impl Default for TrainConfig {
    /// The embedded default: a 4-layer, d=128 GPT-2 on the Python tutorial, ~2 minutes on 2 cores.
    fn default() -> Self {
        TrainConfig {
            arch: ArchKind::Gpt2,
            model: "small".into(),
            block: None,
            init: None,
            n_layer: None,
            n_head: None,
            n_embd: None,
            precision: Precision::Fp32,
            data: None,
            tokenizer: None,
            vocab_size: 1024,
            steps: 600,
            batch: 16,
            grad_accum: 1,
            seq: 128,
            lr: 2e-3,
            warmup: 50,
            min_lr_frac: 0.1,
            decay: Decay::Cosine,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
            seed: 1337,
            eval_every: 100,
            eval_batches: 8,
            checkpoint_every: 200,
            out: PathBuf::from("runs/default"),
            overwrite: false,
            val_frac: 0.1,
            sample_tokens: 120,
            zero: false,
            check_weights_every: 0,
            lora_rank: 0,
            lora_alpha: 16.0,
        }
    }
}

impl TrainConfig {
    /// The preset model this configuration trains, for a tokenizer of `vocab_size` tokens.
    pub fn model_spec(&self, vocab_size: usize) -> Result<ModelSpec> {
        let over = Overrides { n_layer: self.n_layer, n_head: self.n_head, n_embd: self.n_embd };
        ModelSpec::preset(self.arch, &self.model, self.block, vocab_size, over)
    }

    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: usize| {
            if v == 0 { Err(Error::config(name, "must be positive")) } else { Ok(()) }
        };
        pos("steps", self.steps)?;
        pos("batch", self.batch)?;
        pos("grad_accum", self.grad_accum)?;
        pos("seq", self.seq)?;
        pos("eval_batches", self.eval_batches)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("lr", format!("must be a positive number, found {}", self.lr)));
        }
        if !(0.0..1.0).contains(&self.val_frac) || self.val_frac == 0.0 {
            return Err(Error::config("val_frac", format!("must be in (0, 1), found {}", self.val_frac)));
        }
        for (n, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::config(n, format!("must be in [0, 1), found {b}")));
            }
        }
        // Non-negative and finite (0 turns clipping / decay off); a negative clip would flip gradients.
        for (n, x) in [("grad_clip", self.grad_clip), ("weight_decay", self.weight_decay)] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(Error::config(n, format!("must be a number >= 0, found {x}")));
            }
        }
        if !(self.min_lr_frac.is_finite() && (0.0..=1.0).contains(&self.min_lr_frac)) {
            return Err(Error::config("min_lr_frac", format!("must be in [0, 1], found {}", self.min_lr_frac)));
        }
        Ok(())
    }
}
