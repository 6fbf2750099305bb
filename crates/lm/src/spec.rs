//! What model a run trains, a checkpoint holds and an export writes: the architecture with every
//! dimension (`ModelSpec`), the presets the command line names (`--arch`, `--model`, `--block`), and
//! the one place a spec becomes a model (`init`, `from_params`) on any backend.
//!
//! Serialised (in `state.json`) as `{"arch": "gpt2" | "blocks" | "llama", "config": {...}}`.

use std::fmt;
use std::str::FromStr;

use octet_core::scaling::Recipe;
use octet_core::{Error, Layout, Result};
use octet_kernels::{Backend, CpuBackend};

use crate::blocks::{BlockKind, BlocksConfig};
use crate::decoder::{Arch, Decoder, Dims};
use crate::gpt2::{Gpt2Config, pad_vocab};
use crate::llama::LlamaConfig;
use crate::model::LanguageModel;
use crate::precision::Precision;

/// The architecture family `--arch` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchKind {
    /// GPT-2: learned positions, LayerNorm, GELU, biases (or, with `--block`, the simplified blocks
    /// on GPT-2's embeddings with RMSNorm and ReLU).
    #[default]
    Gpt2,
    /// Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases (SmolLM2's architecture).
    Llama,
}

impl ArchKind {
    pub fn name(self) -> &'static str {
        match self {
            ArchKind::Gpt2 => "gpt2",
            ArchKind::Llama => "llama",
        }
    }
}

impl fmt::Display for ArchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ArchKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpt2" => Ok(ArchKind::Gpt2),
            "llama" => Ok(ArchKind::Llama),
            _ => Err(Error::config("arch", format!("unknown architecture `{s}`; expected one of: gpt2, llama"))),
        }
    }
}

/// A model: its architecture and every dimension.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "arch", content = "config", rename_all = "lowercase")]
pub enum ModelSpec {
    Gpt2(Gpt2Config),
    /// The simplified blocks (and the Pre-LN / Parallel baselines they are compared with) on GPT-2's
    /// embeddings, or Llama-style (RoPE, grouped-query keys, SwiGLU; `BlocksConfig::llama`).
    Blocks(BlocksConfig),
    Llama(LlamaConfig),
}

/// `$body` with `$c` bound to the configuration of whichever architecture `$spec` holds: one match
/// arm per architecture, the same body in each (each arm is a different `Arch` type).
macro_rules! each_arch {
    ($spec:expr, $c:ident => $body:expr) => {
        match $spec {
            ModelSpec::Gpt2($c) => $body,
            ModelSpec::Blocks($c) => $body,
            ModelSpec::Llama($c) => $body,
        }
    };
}

/// Presets per architecture, for `--model`.
pub const GPT2_PRESETS: [&str; 3] = ["tiny", "small", "gpt2-124m"];
pub const LLAMA_PRESETS: [&str; 3] = ["tiny", "small", "smollm2-135m"];

/// The small Llama of tests and quick runs: 4 layers, d=128, 4 query heads sharing 2 key/value heads,
/// SwiGLU width 384 (3C), context 128, RoPE base 10000, tied embeddings.
pub fn llama_small(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size,
        padded_vocab: pad_vocab(vocab_size, 64),
        max_seq_len: 128,
        n_layer: 4,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 128,
        ffn_hidden: 384,
        rope_base: 10_000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
    }
}

/// Shape overrides of a preset (`--n-layer`, `--n-head`, `--n-embd`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
}

impl ModelSpec {
    /// The preset `name` of `arch` for a tokenizer of `vocab_size` tokens (`gpt2-124m` and
    /// `smollm2-135m` keep their own vocabularies), with `block` and `over` applied.
    pub fn preset(
        arch: ArchKind,
        name: &str,
        block: Option<BlockKind>,
        vocab_size: usize,
        over: Overrides,
    ) -> Result<ModelSpec> {
        let spec = match arch {
            ArchKind::Gpt2 => {
                let p = Gpt2Config::named(name, vocab_size)?;
                let c = Gpt2Config {
                    n_layer: over.n_layer.unwrap_or(p.n_layer),
                    n_head: over.n_head.unwrap_or(p.n_head),
                    n_embd: over.n_embd.unwrap_or(p.n_embd),
                    ..p
                };
                match block {
                    None => ModelSpec::Gpt2(c),
                    Some(k) => ModelSpec::Blocks(BlocksConfig::from_gpt2(&c, k)),
                }
            }
            ArchKind::Llama => {
                let p = match name {
                    "tiny" => {
                        LlamaConfig { vocab_size, padded_vocab: pad_vocab(vocab_size, 64), ..LlamaConfig::tiny() }
                    }
                    "small" => llama_small(vocab_size),
                    "smollm2-135m" => LlamaConfig::smollm2_135m(),
                    other => {
                        return Err(Error::config(
                            "model",
                            format!("unknown llama model `{other}`; expected one of: {}", LLAMA_PRESETS.join(", ")),
                        ));
                    }
                };
                let c = LlamaConfig {
                    n_layer: over.n_layer.unwrap_or(p.n_layer),
                    n_head: over.n_head.unwrap_or(p.n_head),
                    n_kv_head: over.n_head.map_or(p.n_kv_head, |h| h.min(p.n_kv_head)),
                    n_embd: over.n_embd.unwrap_or(p.n_embd),
                    ..p
                };
                match block {
                    None => ModelSpec::Llama(c),
                    Some(k) => ModelSpec::Blocks(BlocksConfig::from_llama(&c, k)),
                }
            }
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn arch(&self) -> ArchKind {
        match self {
            ModelSpec::Gpt2(_) => ArchKind::Gpt2,
            ModelSpec::Blocks(c) if c.llama.is_none() => ArchKind::Gpt2,
            ModelSpec::Blocks(_) | ModelSpec::Llama(_) => ArchKind::Llama,
        }
    }

    /// The block kind (None: the architecture's own block).
    pub fn block(&self) -> Option<BlockKind> {
        match self {
            ModelSpec::Blocks(c) => Some(c.block),
            _ => None,
        }
    }

    pub fn dims(&self) -> Dims {
        each_arch!(self, c => c.dims())
    }

    pub fn validate(&self) -> Result<()> {
        each_arch!(self, c => Arch::validate(c))
    }

    pub fn param_layout(&self) -> Layout {
        each_arch!(self, c => c.param_layout())
    }

    /// The narrow levels' working set: the same model with one layer.
    pub fn working_layout(&self) -> Layout {
        each_arch!(self, c => c.with_layers(1).param_layout())
    }

    pub fn num_params(&self) -> usize {
        self.param_layout().total()
    }

    /// A freshly initialised model (seed `seed`) at `precision` on `backend`.
    pub fn init_on<Bk: Backend<F = f32> + 'static>(
        &self,
        backend: Bk,
        precision: Precision,
        recipe: &Recipe,
        seed: u64,
    ) -> Result<Box<dyn LanguageModel>> {
        Ok(each_arch!(self, c => Box::new(Decoder::init(*c, backend, precision, recipe, seed)?)))
    }

    /// `init_on` the CPU.
    pub fn init(&self, precision: Precision, recipe: &Recipe, seed: u64) -> Result<Box<dyn LanguageModel>> {
        self.init_on(CpuBackend, precision, recipe, seed)
    }

    /// A CPU model with the given f32 parameters (laid out as `param_layout`) at `precision`.
    pub fn from_params(
        &self,
        params: Vec<f32>,
        precision: Precision,
        recipe: &Recipe,
    ) -> Result<Box<dyn LanguageModel>> {
        Ok(each_arch!(self, c => Box::new(Decoder::new(*c, CpuBackend, params)?.with_precision(precision, recipe)?)))
    }

    /// Matmul FLOPs per trained token, forward + backward: 6 per weight of every GEMM (the block
    /// matrices and the output head; embedding lookups are not GEMMs) plus causal attention's
    /// 6 * L * T * C (QK^T and PV, half the T x T masked off).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let layout = self.param_layout();
        let tied = match self {
            ModelSpec::Llama(c) => c.tied_embeddings,
            _ => true,
        };
        const GEMM: [&str; 11] = [
            "wte",
            "qkvw",
            "qkw",
            "attprojw",
            "fcw",
            "fcprojw",
            "v0w",
            "attn_qkv",
            "attn_output",
            "ffn_gate_up",
            "ffn_down",
        ];
        let is_gemm = |n: &str| GEMM.contains(&n) || n == "output" || (tied && n == "token_embd");
        let w: usize = layout.specs().iter().filter(|s| is_gemm(&s.name)).map(|s| s.numel()).sum();
        let d = self.dims();
        6.0 * w as f64 + 6.0 * (d.n_layer * t * d.n_embd) as f64
    }
}
