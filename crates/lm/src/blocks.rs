//! A decoder-only LM whose transformer block is chosen by `BlockKind`: the Pre-LN baseline, the
//! Parallel block (GPT-J), and He & Hofmann's simplified blocks SAS, SAS-P and SAS-P without
//! normalisation (PAPERS.md section 2; reference code bobby-he/simplified_transformers). All five share
//! the token and position embeddings, the final RMSNorm, the tied head and the loss, so a comparison
//! isolates the block. Forward and hand-written backward side by side, written once against `Backend`
//! (CPU f32, reference f64 for finite differences).
//!
//! The blocks, for a block input x (B,T,C), RMSNorm N (eps `RMS_EPS`), ReLU MLP of width 4C, no biases:
//! - `preln`:    x' = x + Wo Attn(Wqkv N1 x);           y = x' + MLP(N2 x')
//! - `parallel`: h = N1 x;                                y = x + Wo Attn(Wqkv h) + MLP(h)
//! - `sas`:      x' = g_attn SA(Wqk N1 x, v = N1 x);      y = g_ff MLP(N2 x') + g_skip x'
//! - `sas-p`:    h = N1 x;                                y = g_attn SA(Wqk h, v = h) + g_ff MLP(h)
//! - `sas-p-nonorm`: as `sas-p` with h = x in every layer but the first.
//!
//! SA is shaped attention, per head: (alpha I + beta softmax(q k^T / sqrt(hs) + M) - gamma C) v with C the
//! uniform causal matrix; values and output projection are the identity, except that layer 0's value is
//! v = alpha_V h + beta_V h dW^T (dW initialised to zero). Initialisation follows the reference code:
//! W_Q = 0 and alpha = beta = gamma = 1 (so SA = I), g_attn = 1, g_ff = beta_FF = 0.1, g_skip = 1,
//! alpha_V = beta_V = 1, every matrix N(0, 0.02), norm gains 1. All gains are trainable f32 scalars,
//! never cast by the precision levels and never weight-decayed. The reference code keeps a trainable
//! bias on its q/k projection and a LayerNorm as the first layer's norm in the no-norm variant; here
//! there are no biases and that norm is an RMSNorm, like every other.
//!
//! Parameters, activations and activation gradients each live in one `Slab` described by a layout
//! table built here per block kind (block tensors carry a leading n_layer dimension; absent tensors are
//! absent, and read as empty slices). Weights are (out, in): y = x @ W^T. Parameter gradients accumulate;
//! activation gradients overwrite, except the residual stream's.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use octet_core::{Error, Layout, Result, Slab, TensorId};
use octet_kernels::Backend;

pub use crate::decoder::init_params;
use crate::decoder::{Arch, Decoder, Pass, arch_tables, head_logits, init_each};
use crate::gpt2::Gpt2Config;

/// RMSNorm epsilon (the paper's 1e-8, inside the square root: 1/sqrt(mean(x^2) + eps)).
pub const RMS_EPS: f64 = 1e-8;
/// Initial MLP branch gain beta_FF of the simplified blocks (reference code: 0.1).
pub const MLP_GAIN_INIT: f32 = 0.1;
/// Standard deviation of every initialised matrix (reference code and GPT-2: 0.02).
pub const INIT_STD: f64 = 0.02;

/// Which transformer block the model stacks (`--block`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BlockKind {
    #[default]
    PreLn,
    Parallel,
    Sas,
    SasP,
    SasPNoNorm,
}

impl BlockKind {
    pub const ALL: [BlockKind; 5] =
        [BlockKind::PreLn, BlockKind::Parallel, BlockKind::Sas, BlockKind::SasP, BlockKind::SasPNoNorm];
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::PreLn => "preln",
            BlockKind::Parallel => "parallel",
            BlockKind::Sas => "sas",
            BlockKind::SasP => "sas-p",
            BlockKind::SasPNoNorm => "sas-p-nonorm",
        }
    }
    /// Shaped attention with identity values and projection (SAS, SAS-P, SAS-P without norm).
    pub fn is_shaped(self) -> bool {
        matches!(self, BlockKind::Sas | BlockKind::SasP | BlockKind::SasPNoNorm)
    }
    /// Attention and MLP read the same normalised input (Parallel, SAS-P, SAS-P without norm).
    pub fn is_parallel(self) -> bool {
        matches!(self, BlockKind::Parallel | BlockKind::SasP | BlockKind::SasPNoNorm)
    }
    /// Sequential blocks normalise the MLP input too.
    pub fn has_mlp_norm(self) -> bool {
        !self.is_parallel()
    }
    /// How many layers (from the first) normalise the block input: all, or only the first.
    pub fn normed_layers(self, n_layer: usize) -> usize {
        if self == BlockKind::SasPNoNorm { 1 } else { n_layer }
    }
    /// Block linears per layer: qkv, fc, fcproj (+ attproj for the unshaped blocks).
    pub fn linears_per_layer(self) -> usize {
        if self.is_shaped() { 3 } else { 4 }
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BlockKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BlockKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            Error::config(
                "block",
                format!("unknown block `{s}`; expected one of: preln, parallel, sas, sas-p, sas-p-nonorm"),
            )
        })
    }
}

impl serde::Serialize for BlockKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for BlockKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Model shape and block. `padded_vocab` >= `vocab_size` rounds the embedding rows up for efficient
/// GEMMs; the loss ignores the padded columns.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocksConfig {
    pub vocab_size: usize,
    pub padded_vocab: usize,
    pub max_seq_len: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block: BlockKind,
    /// Llama-style blocks (`--arch llama --block ...`); None: GPT-2-style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama: Option<LlamaStyle>,
}

/// What makes the blocks Llama-style: RoPE instead of learned positions (no `wpe`), grouped-query
/// keys (the qk(v) projection has NKV key (and value) heads, each serving NH/NKV query heads; values
/// of the shaped blocks stay the block input, head by head), a SwiGLU MLP of width H instead of
/// ReLU of width 4C, and Llama's RMSNorm epsilon.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaStyle {
    pub n_kv_head: usize,
    pub ffn_hidden: usize,
    pub rope_base: f64,
    pub norm_eps: f64,
}

impl BlocksConfig {
    /// Tiny debug model (matches tools/ref/sas_golden.py).
    pub fn tiny(block: BlockKind) -> Self {
        BlocksConfig {
            vocab_size: 61,
            padded_vocab: 64,
            max_seq_len: 16,
            n_layer: 2,
            n_head: 4,
            n_embd: 32,
            block,
            llama: None,
        }
    }
    /// The same shape as a GPT-2 configuration, with `block`.
    pub fn from_gpt2(g: &Gpt2Config, block: BlockKind) -> Self {
        BlocksConfig {
            vocab_size: g.vocab_size,
            padded_vocab: g.padded_vocab,
            max_seq_len: g.max_seq_len,
            n_layer: g.n_layer,
            n_head: g.n_head,
            n_embd: g.n_embd,
            block,
            llama: None,
        }
    }
    /// The same shape as a Llama configuration (RoPE, grouped-query keys, SwiGLU), with `block`; the
    /// head is tied.
    pub fn from_llama(c: &crate::llama::LlamaConfig, block: BlockKind) -> Self {
        BlocksConfig {
            vocab_size: c.vocab_size,
            padded_vocab: c.padded_vocab,
            max_seq_len: c.max_seq_len,
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_embd: c.n_embd,
            block,
            llama: Some(LlamaStyle {
                n_kv_head: c.n_kv_head,
                ffn_hidden: c.ffn_hidden,
                rope_base: c.rope_base,
                norm_eps: c.norm_eps,
            }),
        }
    }
    /// Head size hs = C / NH.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }
    /// Key (and value) heads: NKV (Llama-style) or NH.
    pub fn n_kv_head(&self) -> usize {
        self.llama.map_or(self.n_head, |s| s.n_kv_head)
    }
    /// Rows of the attention input projection: [W_Q; W_K] (C + KVD) for the shaped blocks,
    /// [W_Q; W_K; W_V] (C + 2 KVD) otherwise, KVD = NKV hs.
    pub fn qk_rows(&self) -> usize {
        let kvd = self.n_kv_head() * self.head_size();
        if self.block.is_shaped() { self.n_embd + kvd } else { self.n_embd + 2 * kvd }
    }
    /// (fc output width, MLP hidden width): (4C, 4C) for ReLU, (2H, H) for SwiGLU.
    pub fn ffn(&self) -> (usize, usize) {
        match self.llama {
            Some(s) => (2 * s.ffn_hidden, s.ffn_hidden),
            None => (4 * self.n_embd, 4 * self.n_embd),
        }
    }
    /// RMSNorm epsilon: the paper's `RMS_EPS`, or Llama's.
    pub fn eps(&self) -> f64 {
        self.llama.map_or(RMS_EPS, |s| s.norm_eps)
    }
    /// A named preset (`Gpt2Config::named`: tiny, small, gpt2-124m) with `block`.
    pub fn named(name: &str, vocab_size: usize, block: BlockKind) -> Result<Self> {
        Ok(Self::from_gpt2(&Gpt2Config::named(name, vocab_size)?, block))
    }
    pub fn validate(&self) -> Result<()> {
        self.dims().validate(self.n_head)?;
        let bad = |f: &str, m: String| Err(Error::config(f, m));
        if let Some(s) = self.llama {
            if s.n_kv_head == 0 || !self.n_head.is_multiple_of(s.n_kv_head) {
                return bad("n_kv_head", format!("{} must divide n_head {}", s.n_kv_head, self.n_head));
            }
            if !self.head_size().is_multiple_of(2) || s.ffn_hidden == 0 {
                return bad("n_head", "RoPE needs an even head size, SwiGLU a positive width".into());
            }
            if !(s.rope_base.is_finite() && s.rope_base > 1.0 && s.norm_eps.is_finite() && s.norm_eps > 0.0) {
                return bad("rope_base", format!("rope_base {} must be > 1, norm_eps {} > 0", s.rope_base, s.norm_eps));
            }
        }
        Ok(())
    }
    pub fn num_params(&self) -> usize {
        param_layout(self).total()
    }
}

/// The parameter table of a block kind: embeddings, the block tensors (leading n_layer dimension;
/// `ln1w` has one row per normalised layer), layer 0's value reparameterisation, the final norm.
pub fn param_layout(c: &BlocksConfig) -> Layout {
    let (v, t, l, d, nh, k) = (c.padded_vocab, c.max_seq_len, c.n_layer, c.n_embd, c.n_head, c.block);
    let (qk, (fc, hidden)) = (c.qk_rows(), c.ffn());
    let mut e: Vec<(&str, Vec<usize>)> = vec![("wte", vec![v, d])];
    if c.llama.is_none() {
        e.push(("wpe", vec![t, d]));
    }
    e.push(("ln1w", vec![k.normed_layers(l), d]));
    if k.is_shaped() {
        e.extend([
            ("qkw", vec![l, qk, d]),
            ("attn_alpha", vec![l, nh]),
            ("attn_beta", vec![l, nh]),
            ("attn_gamma", vec![l, nh]),
            ("attn_gain", vec![l]),
            ("v0w", vec![d, d]),
            ("v0_alpha", vec![1]),
            ("v0_beta", vec![1]),
        ]);
    } else {
        e.extend([("qkvw", vec![l, qk, d]), ("attprojw", vec![l, d, d])]);
    }
    if k.has_mlp_norm() {
        e.push(("ln2w", vec![l, d]));
    }
    e.extend([("fcw", vec![l, fc, d]), ("fcprojw", vec![l, d, hidden])]);
    if k.is_shaped() {
        e.push(("mlp_gain", vec![l]));
    }
    if k == BlockKind::Sas {
        e.push(("skip_gain", vec![l]));
    }
    e.push(("lnfw", vec![d]));
    Layout::new(e)
}

/// The weight matrices get weight decay (embeddings included); norms and scalar gains do not.
pub fn decay_flags(layout: &Layout) -> Vec<bool> {
    const MATRICES: [&str; 8] = ["wte", "wpe", "qkvw", "qkw", "attprojw", "fcw", "fcprojw", "v0w"];
    layout.specs().iter().map(|s| MATRICES.contains(&s.name.as_str())).collect()
}

/// Initialisation (reference code), one tensor at a time (`decoder::init_each`; all at once:
/// `decoder::init_params`): every matrix N(0, 0.02) except W_Q (the first C rows of each layer's
/// `qkw`) and layer 0's value increment dW, which start at zero; norm gains, alpha, beta, gamma,
/// g_attn, g_skip, alpha_V, beta_V start at 1 and g_ff at 0.1. Values are drawn tensor by tensor in
/// layout order from one `Rng`.
pub fn init_tensors(c: &BlocksConfig, layout: &Layout, seed: u64, f: &mut dyn FnMut(usize, &[f32])) {
    let d = c.n_embd;
    init_each(
        layout,
        seed,
        |name, out, rng| match name {
            "qkw" => {
                for layer in out.chunks_mut(c.qk_rows() * d) {
                    layer[..d * d].fill(0.0); // W_Q = 0: scores are 0, softmax is uniform causal
                    layer[d * d..].iter_mut().for_each(|x| *x = (rng.normal() * INIT_STD) as f32);
                }
            }
            "v0w" => out.fill(0.0),
            "mlp_gain" => out.fill(MLP_GAIN_INIT),
            "wte" | "wpe" | "qkvw" | "attprojw" | "fcw" | "fcprojw" => {
                out.iter_mut().for_each(|x| *x = (rng.normal() * INIT_STD) as f32)
            }
            _ => out.fill(1.0), // norm gains, attention gains, branch gains
        },
        f,
    );
}

/// A block's tensors (layer l); absent ones are empty slices.
pub struct Block<T> {
    pub ln1w: T,
    /// (3C, C) = [W_Q; W_K; W_V] for Pre-LN / Parallel, (2C, C) = [W_Q; W_K] for the shaped blocks.
    pub qkvw: T,
    pub attprojw: T,
    pub alpha: T,
    pub beta: T,
    pub gamma: T,
    pub attn_gain: T,
    pub ln2w: T,
    pub fcw: T,
    pub fcprojw: T,
    pub mlp_gain: T,
    pub skip_gain: T,
}

/// The tensors outside the blocks; absent ones are empty slices.
pub struct Top<T> {
    pub wte: T,
    pub wpe: T,
    pub lnfw: T,
    pub v0w: T,
    pub v0_alpha: T,
    pub v0_beta: T,
}

/// Layout names of `Block` then `Top`, in field order.
const PARAM_NAMES: [&str; 18] = [
    "ln1w",
    "qkw|qkvw",
    "attprojw",
    "attn_alpha",
    "attn_beta",
    "attn_gamma",
    "attn_gain",
    "ln2w",
    "fcw",
    "fcprojw",
    "mlp_gain",
    "skip_gain",
    "wte",
    "wpe",
    "lnfw",
    "v0w",
    "v0_alpha",
    "v0_beta",
];
const N_BLOCK: usize = 12;

fn split<T>(v: [T; 18]) -> (Block<T>, Top<T>) {
    let [
        ln1w,
        qkvw,
        attprojw,
        alpha,
        beta,
        gamma,
        attn_gain,
        ln2w,
        fcw,
        fcprojw,
        mlp_gain,
        skip_gain,
        wte,
        wpe,
        lnfw,
        v0w,
        v0_alpha,
        v0_beta,
    ] = v;
    (
        Block { ln1w, qkvw, attprojw, alpha, beta, gamma, attn_gain, ln2w, fcw, fcprojw, mlp_gain, skip_gain },
        Top { wte, wpe, lnfw, v0w, v0_alpha, v0_beta },
    )
}

/// Parameter tensor ids, resolved once (None where the block kind has no such tensor).
pub struct ParamIds {
    ids: [Option<TensorId>; 18],
}

impl ParamIds {
    fn new(l: &Layout) -> Self {
        ParamIds { ids: PARAM_NAMES.map(|n| n.split('|').find_map(|n| l.id(n))) }
    }
    /// Ranges of `PARAM_NAMES` for layer `layer`: block tensors at that layer (empty where the tensor is
    /// absent or has fewer rows, like `ln1w` without norms), top tensors whole.
    fn ranges(&self, lay: &Layout, layer: usize) -> [Range<usize>; 18] {
        let mut i = 0;
        self.ids.map(|id| {
            let block = i < N_BLOCK;
            i += 1;
            match id {
                Some(id) if !block => lay.range(id),
                Some(id) if layer < lay.spec(id).shape[0] => lay.range_at(id, layer),
                _ => 0..0,
            }
        })
    }
    fn views<'a, F>(&self, s: &'a Slab<F>, layer: usize) -> (Block<&'a [F]>, Top<&'a [F]>) {
        split(self.ranges(&s.layout, layer).map(|r| &s.data[r]))
    }
    fn views_mut<'a, F>(&self, s: &'a mut Slab<F>, layer: usize) -> (Block<&'a mut [F]>, Top<&'a mut [F]>) {
        let r = self.ranges(&s.layout, layer);
        split(s.disjoint_mut(r))
    }
}

// Activation tensors (act_layout); each block kind allocates the ones it uses.
const ENCODED: usize = 0; // (N, C) embeddings: layer 0's input
const LN1: usize = 1; // (L1, N, C) normalised block input
const LN1_RRMS: usize = 2; // (L1, N)
const QKV: usize = 3; // (L, N, 3C) or (L, N, 2C)
const V0U: usize = 4; // (N, C) h dW^T of layer 0 (shaped)
const V0: usize = 5; // (N, C) layer 0's value alpha_V h + beta_V h dW^T (shaped)
const ATTY: usize = 6; // (L, N, C) attention output (before Wo, or SA's)
const LSE: usize = 7; // (L, B NH T)
const MID: usize = 8; // (L, N, C) x' of the sequential blocks
const LN2: usize = 9; // (L, N, C)
const LN2_RRMS: usize = 10; // (L, N)
const FCH_RELU: usize = 11; // (L, N, 4C) relu(h W_fc^T); relu' reads it (relu(x) > 0 iff x > 0)
const MLP: usize = 12; // (L, N, C) MLP output (shaped: its gain's gradient needs it)
const RESIDUAL: usize = 13; // (L, N, C) block output
const FCH: usize = 14; // (N, 4C) scratch: ReLU's pre-activation; SwiGLU: (L, N, 2H) saved [gate | up]
const SCRATCH: usize = 15; // (N, C) scratch: a projection before it joins the residual stream
const LNF: usize = 16; // (N, C)
const LNF_RRMS: usize = 17; // (N)
const LOGITS: usize = 18; // (N, Vp)
// Llama-style scratch (absent otherwise): the attention projection before RoPE and after.
const QKV_RAW: usize = 20; // (N, C + KVD) or (N, C + 2 KVD)
const QKV_ROPE: usize = 21;
const ACT_NAMES: [&str; 22] = [
    "encoded", "ln1", "ln1_rrms", "qkv", "v0_u", "v0", "atty", "lse", "mid", "ln2", "ln2_rrms", "fch_relu", "mlp",
    "residual", "fch", "scratch", "lnf", "lnf_rrms", "logits", "losses", "qkv_raw", "qkv_rope",
];

// Gradient scratch (grad_act_layout): one layer's worth, reused from the top layer down.
const DRES: usize = 0; // (N, C) the residual stream's gradient
const DLN: usize = 1; // (N, C) gradient at the normalised input h
const DTMP: usize = 2; // (N, C)
const DFCH_RELU: usize = 3; // (N, 4C)
const DFCH: usize = 4; // (N, 4C)
const DATTY: usize = 5; // (N, C)
const DQKV: usize = 6; // (N, 3C) or (N, 2C)
const DV: usize = 7; // (N, C) shaped: value gradient
const DMID: usize = 8; // (N, C) shaped
const DMLP: usize = 9; // (N, C) shaped
const DQKV_ROPE: usize = 10; // Llama-style: gradients at the rotated and the raw projection
const DQKV_RAW: usize = 11;
const GRAD_NAMES: [&str; 12] =
    ["dres", "dln", "dtmp", "dfch_relu", "dfch", "datty", "dqkv", "dv", "dmid", "dmlp", "dqkv_rope", "dqkv_raw"];

fn qkv_width(c: &BlocksConfig) -> usize {
    if c.block.is_shaped() { 2 * c.n_embd } else { 3 * c.n_embd }
}

/// The activation table for a (B, T) batch: what forward saves for backward, plus two scratch buffers.
pub fn act_layout(c: &BlocksConfig, b: usize, t: usize) -> Layout {
    let (l, d, nh, n, k) = (c.n_layer, c.n_embd, c.n_head, b * t, c.block);
    let l1 = k.normed_layers(l);
    let mut e: Vec<(&str, Vec<usize>)> = vec![
        ("encoded", vec![n, d]),
        ("ln1", vec![l1, n, d]),
        ("ln1_rrms", vec![l1, n]),
        ("qkv", vec![l, n, qkv_width(c)]),
    ];
    if k.is_shaped() {
        e.extend([("v0_u", vec![n, d]), ("v0", vec![n, d])]);
    }
    e.extend([("atty", vec![l, n, d]), ("lse", vec![l, b * nh * t])]);
    if k.has_mlp_norm() {
        e.extend([("mid", vec![l, n, d]), ("ln2", vec![l, n, d]), ("ln2_rrms", vec![l, n])]);
    }
    let (fc, hidden) = c.ffn();
    e.push(("fch_relu", vec![l, n, hidden]));
    if k.is_shaped() {
        e.push(("mlp", vec![l, n, d]));
    }
    e.push(("residual", vec![l, n, d]));
    e.push(("fch", if c.llama.is_some() { vec![l, n, fc] } else { vec![n, fc] }));
    if !k.is_shaped() {
        e.push(("scratch", vec![n, d]));
    }
    e.extend([("lnf", vec![n, d]), ("lnf_rrms", vec![n]), ("logits", vec![n, c.padded_vocab]), ("losses", vec![n])]);
    if c.llama.is_some() {
        e.extend([("qkv_raw", vec![n, c.qk_rows()]), ("qkv_rope", vec![n, c.qk_rows()])]);
    }
    Layout::new(e)
}

/// Activation-gradient scratch for one layer, reused from the top layer down.
pub fn grad_act_layout(c: &BlocksConfig, b: usize, t: usize) -> Layout {
    let (d, n, (fc, hidden)) = (c.n_embd, b * t, c.ffn());
    let mut e: Vec<(&str, Vec<usize>)> = vec![
        ("dres", vec![n, d]),
        ("dln", vec![n, d]),
        ("dtmp", vec![n, d]),
        ("dfch_relu", vec![n, hidden]),
        ("dfch", vec![n, fc]),
        ("datty", vec![n, d]),
        ("dqkv", vec![n, qkv_width(c)]),
    ];
    if c.block.is_shaped() {
        e.extend([("dv", vec![n, d]), ("dmid", vec![n, d]), ("dmlp", vec![n, d])]);
    }
    if c.llama.is_some() {
        e.extend([("dqkv_rope", vec![n, c.qk_rows()]), ("dqkv_raw", vec![n, c.qk_rows()])]);
    }
    Layout::new(e)
}

/// Resolved ids of a table whose entries may be absent; absent ones give empty ranges.
pub struct Ids<const K: usize> {
    ids: [Option<TensorId>; K],
}

impl<const K: usize> Ids<K> {
    fn new(l: &Layout, names: [&str; K]) -> Self {
        Ids { ids: names.map(|n| l.id(n)) }
    }
    /// Whole tensor i.
    fn w(&self, l: &Layout, i: usize) -> Range<usize> {
        self.ids[i].map_or(0..0, |id| l.range(id))
    }
    /// Tensor i at layer `layer` (its leading dimension).
    fn at(&self, l: &Layout, i: usize, layer: usize) -> Range<usize> {
        self.ids[i].map_or(0..0, |id| l.range_at(id, layer))
    }
}

// Linear indices within a layer; `scaling[l * per_layer + k]` is layer l's linear k. The shaped blocks'
// layer-0 value matrix dW is one more linear after all layers: (l, k) = (n_layer, 0).
const QKV_LIN: usize = 0;
const FC_LIN: usize = 1;
const FCPROJ_LIN: usize = 2;
const ATTPROJ_LIN: usize = 3;

/// The model bound to a backend (the decoder shell with this block's architecture).
pub type BlocksLm<Bk> = Decoder<Bk, BlocksConfig>;

/// Resolved ids of the parameter, activation and activation-gradient tables.
pub struct BlockIds {
    params: ParamIds,
    aid: Ids<22>,
    did: Ids<12>,
}

impl BlocksConfig {
    /// From the gradient at the attention's input (DQKV: (N, 2C) or (N, 3C), keys (and values)
    /// repeated, q and k rotated) back to the gradient at the projection's output: Llama-style
    /// through repeat_k(v) and RoPE into DQKV_RAW (N, qk rows); GPT-2-style that is DQKV itself.
    fn unrope<Bk: Backend>(
        &self,
        be: &Bk,
        da: &mut Slab<Bk::F>,
        did: &Ids<12>,
        n: usize,
        b: usize,
        t: usize,
    ) -> Range<usize> {
        let dl = da.layout.clone();
        let dw = |i: usize| did.w(&dl, i);
        let Some(s) = self.llama else { return dw(DQKV) };
        let (nh, nkv, hs, qk) = (self.n_head, s.n_kv_head, self.head_size(), self.qk_rows());
        let [drot, dqkv] = da.disjoint_mut([dw(DQKV_ROPE), dw(DQKV)]);
        if self.block.is_shaped() {
            be.repeat_k_backward(drot, dqkv, n, nh, nkv, hs);
        } else {
            be.repeat_kv_backward(drot, dqkv, n, nh, nkv, hs);
        }
        let [draw, drot] = da.disjoint_mut([dw(DQKV_RAW), dw(DQKV_ROPE)]);
        be.rope_backward(draw, drot, b, t, 0, qk, (nh + nkv) * hs, hs, s.rope_base);
        dw(DQKV_RAW)
    }
}

impl Arch for BlocksConfig {
    type Ids = BlockIds;

    arch_tables!(BlocksConfig);
    fn workspace(&self, n: usize) -> (usize, usize, usize) {
        // Largest block linear: inputs (N, max(C, hidden)), weights and outputs of fc (fc, C),
        // fcproj (C, hidden) and the attention projection (qk rows, C).
        let (d, (fc, hidden)) = (self.n_embd, self.ffn());
        let oc = fc.max(self.qk_rows()).max(d);
        (n * d.max(hidden), oc * d.max(hidden), n * oc)
    }
    fn linears_per_layer(&self) -> usize {
        self.block.linears_per_layer()
    }
    /// The per-layer linears, then (shaped blocks) layer 0's value matrix dW at (n_layer, 0).
    fn n_linears(&self) -> usize {
        self.n_layer * self.block.linears_per_layer() + usize::from(self.block.is_shaped())
    }
    fn ids(&self, params: &Layout) -> BlockIds {
        let (al, dl) = (act_layout(self, 1, 1), grad_act_layout(self, 1, 1));
        BlockIds { params: ParamIds::new(params), aid: Ids::new(&al, ACT_NAMES), did: Ids::new(&dl, GRAD_NAMES) }
    }

    fn embed_forward<Bk: Backend>(&self, ids: &BlockIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, tokens: &[u32]) {
        let (_, top) = ids.params.views(p, 0);
        let r = ids.aid.w(&x.a.layout, ENCODED);
        let n = x.n();
        match self.llama {
            None => x.be.encoder_forward(&mut x.a.data[r], tokens, top.wte, top.wpe, x.b, x.t, self.n_embd),
            Some(_) => x.be.embed_forward(&mut x.a.data[r], tokens, top.wte, n, self.n_embd),
        }
    }

    fn embed_backward<Bk: Backend>(&self, ids: &BlockIds, x: &mut Pass<'_, Bk>, g: &mut Slab<Bk::F>, tokens: &[u32]) {
        let (_, gt) = ids.params.views_mut(g, 0);
        let r = ids.did.w(&x.da.layout, DRES);
        let n = x.n();
        match self.llama {
            None => x.be.encoder_backward(gt.wte, gt.wpe, &x.da.data[r], tokens, x.b, x.t, self.n_embd),
            Some(_) => x.be.embed_backward(gt.wte, &x.da.data[r], tokens, n, self.n_embd),
        }
    }

    fn layer_forward<Bk: Backend>(&self, ids: &BlockIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, l: usize, lw: usize) {
        let (d, nh, l_n, n, b, t, kind) = (self.n_embd, self.n_head, self.n_layer, x.n(), x.b, x.t, self.block);
        let (l1, qk, pid, aid, eps) = (kind.normed_layers(l_n), self.qk_rows(), ids, &ids.aid, self.eps());
        let (fc, hidden) = self.ffn();
        let (be, a, lin) = (x.be, &mut *x.a, &mut x.lin);
        let al = a.layout.clone();
        let ar = |i: usize, l: usize| aid.at(&al, i, l);
        let aw = |i: usize| aid.w(&al, i);
        let (w, top) = pid.params.views(p, lw);
        let x = if l == 0 { aw(ENCODED) } else { ar(RESIDUAL, l - 1) };
        // h = N1 x (every layer, or only the first without norms)
        let h = if l < l1 {
            let [hn, rrms, xv] = a.disjoint_mut([ar(LN1, l), ar(LN1_RRMS, l), x.clone()]);
            be.rmsnorm_forward(hn, rrms, xv, w.ln1w, n, d, eps);
            ar(LN1, l)
        } else {
            x.clone()
        };
        match self.llama {
            None => {
                let [qkv, hv] = a.disjoint_mut([ar(QKV, l), h.clone()]);
                lin.forward(l, QKV_LIN, qkv, hv, w.qkvw, None, n, d, qk);
            }
            Some(s) => {
                // [q | k (| v)] with NKV key heads -> RoPE on q and k -> keys (and values) repeated.
                let (nkv, hs) = (s.n_kv_head, self.head_size());
                let [raw, hv] = a.disjoint_mut([aw(QKV_RAW), h.clone()]);
                lin.forward(l, QKV_LIN, raw, hv, w.qkvw, None, n, d, qk);
                let [rot, raw] = a.disjoint_mut([aw(QKV_ROPE), aw(QKV_RAW)]);
                be.rope_forward(rot, raw, b, t, 0, qk, (nh + nkv) * hs, hs, s.rope_base);
                let [qkv, rot] = a.disjoint_mut([ar(QKV, l), aw(QKV_ROPE)]);
                if kind.is_shaped() {
                    be.repeat_k_forward(qkv, rot, n, nh, nkv, hs);
                } else {
                    be.repeat_kv_forward(qkv, rot, n, nh, nkv, hs);
                }
            }
        }
        if kind.is_shaped() {
            // Values: h itself (identity W_V), or in layer 0 v = alpha_V h + beta_V h dW^T.
            let v = if l == 0 {
                let [u, hv] = a.disjoint_mut([aw(V0U), h.clone()]);
                lin.forward(l_n, 0, u, hv, top.v0w, None, n, d, d);
                let [v0, hv, u] = a.disjoint_mut([aw(V0), h.clone(), aw(V0U)]);
                be.scale_add_forward(v0, hv, u, top.v0_alpha, top.v0_beta);
                aw(V0)
            } else {
                h.clone()
            };
            let [sa, lse, qk, vv] = a.disjoint_mut([ar(ATTY, l), ar(LSE, l), ar(QKV, l), v]);
            be.shaped_attention_forward(sa, lse, qk, vv, w.alpha, w.beta, w.gamma, b, t, d, nh);
        } else {
            let [atty, lse, qkv] = a.disjoint_mut([ar(ATTY, l), ar(LSE, l), ar(QKV, l)]);
            be.attention_forward(atty, lse, qkv, b, t, d, nh);
            let [proj, atty] = a.disjoint_mut([aw(SCRATCH), ar(ATTY, l)]);
            lin.forward(l, ATTPROJ_LIN, proj, atty, w.attprojw, None, n, d, d);
        }
        // The attention branch joins; the MLP reads h (parallel) or N2 of the join (sequential).
        let mlp_in = match kind {
            BlockKind::PreLn => {
                let [mid, xv, proj] = a.disjoint_mut([ar(MID, l), x.clone(), aw(SCRATCH)]);
                be.residual_forward(mid, xv, proj);
                Some(ar(MID, l))
            }
            BlockKind::Sas => {
                let [mid, sa] = a.disjoint_mut([ar(MID, l), ar(ATTY, l)]);
                be.scale_forward(mid, sa, w.attn_gain);
                Some(ar(MID, l))
            }
            BlockKind::Parallel => {
                let [r, xv, proj] = a.disjoint_mut([ar(RESIDUAL, l), x.clone(), aw(SCRATCH)]);
                be.residual_forward(r, xv, proj);
                None
            }
            BlockKind::SasP | BlockKind::SasPNoNorm => None,
        };
        let h2 = match mlp_in {
            Some(mid) => {
                let [h2, rrms, mv] = a.disjoint_mut([ar(LN2, l), ar(LN2_RRMS, l), mid]);
                be.rmsnorm_forward(h2, rrms, mv, w.ln2w, n, d, eps);
                ar(LN2, l)
            }
            None => h.clone(),
        };
        // MLP: relu(h2 W_fc^T) W_proj^T (or swiglu(h2 [W_gate; W_up]^T) W_down^T), into `mlp`
        // (shaped: its gain needs it) or scratch. SwiGLU's backward needs its input: saved per layer.
        let fch = if self.llama.is_some() { ar(FCH, l) } else { aw(FCH) };
        let [fo, hv] = a.disjoint_mut([fch.clone(), h2]);
        lin.forward(l, FC_LIN, fo, hv, w.fcw, None, n, d, fc);
        let [g, fo] = a.disjoint_mut([ar(FCH_RELU, l), fch]);
        if self.llama.is_some() {
            be.swiglu_forward(g, fo, n, hidden);
        } else {
            be.relu_forward(g, fo);
        }
        let m = if kind.is_shaped() { ar(MLP, l) } else { aw(SCRATCH) };
        let [mo, g] = a.disjoint_mut([m.clone(), ar(FCH_RELU, l)]);
        lin.forward(l, FCPROJ_LIN, mo, g, w.fcprojw, None, n, hidden, d);
        match kind {
            BlockKind::PreLn => {
                let [r, mid, mo] = a.disjoint_mut([ar(RESIDUAL, l), ar(MID, l), m]);
                be.residual_forward(r, mid, mo);
            }
            BlockKind::Parallel => {
                let [r, mo] = a.disjoint_mut([ar(RESIDUAL, l), m]);
                be.accumulate(r, mo);
            }
            BlockKind::Sas => {
                let [r, mo, mid] = a.disjoint_mut([ar(RESIDUAL, l), m, ar(MID, l)]);
                be.scale_add_forward(r, mo, mid, w.mlp_gain, w.skip_gain);
            }
            BlockKind::SasP | BlockKind::SasPNoNorm => {
                let [r, sa, mo] = a.disjoint_mut([ar(RESIDUAL, l), ar(ATTY, l), m]);
                be.scale_add_forward(r, sa, mo, w.attn_gain, w.mlp_gain);
            }
        }
    }

    fn layer_backward<Bk: Backend>(
        &self,
        ids: &BlockIds,
        x: &mut Pass<'_, Bk>,
        p: &Slab<Bk::F>,
        g: &mut Slab<Bk::F>,
        l: usize,
        lw: usize,
    ) {
        let (d, nh, l_n, n, b, t, kind) = (self.n_embd, self.n_head, self.n_layer, x.n(), x.b, x.t, self.block);
        let (l1, qk_rows, pid, aid, did) = (kind.normed_layers(l_n), self.qk_rows(), ids, &ids.aid, &ids.did);
        let (fc, hidden) = self.ffn();
        let (be, a, da, lin) = (x.be, &*x.a, &mut *x.da, &mut x.lin);
        let (al, dl) = (a.layout.clone(), da.layout.clone());
        let ar = |i: usize, l: usize| aid.at(&al, i, l);
        let aw = |i: usize| aid.w(&al, i);
        let dw = |i: usize| did.w(&dl, i);
        let (w, top) = pid.params.views(p, lw);
        let (gw, gt) = pid.params.views_mut(g, lw);
        let x = if l == 0 { aw(ENCODED) } else { ar(RESIDUAL, l - 1) };
        let h = if l < l1 { ar(LN1, l) } else { x.clone() };
        // Split dy (in dres) over the branches. Afterwards: d(MLP output) in `dm`, d(attention branch
        // output before Wo / of SA) in DATTY or DMID (sequential), and dres the skip's share.
        let dm = match kind {
            BlockKind::PreLn | BlockKind::Parallel => dw(DRES), // y = (x|x') + MLP + ...
            BlockKind::Sas => {
                let [dmlp, dmid, dres] = da.disjoint_mut([dw(DMLP), dw(DMID), dw(DRES)]);
                let (m, mid) = (&a.data[ar(MLP, l)], &a.data[ar(MID, l)]);
                be.scale_add_backward(dmlp, dmid, gw.mlp_gain, gw.skip_gain, dres, m, mid, w.mlp_gain, w.skip_gain);
                dw(DMLP)
            }
            BlockKind::SasP | BlockKind::SasPNoNorm => {
                let [datty, dmlp, dres] = da.disjoint_mut([dw(DATTY), dw(DMLP), dw(DRES)]);
                let (sa, m) = (&a.data[ar(ATTY, l)], &a.data[ar(MLP, l)]);
                be.scale_add_backward(datty, dmlp, gw.attn_gain, gw.mlp_gain, dres, sa, m, w.attn_gain, w.mlp_gain);
                dw(DMLP)
            }
        };
        // MLP backward into DLN (sequential: gradient at N2's output) or DTMP (parallel: one part of dh).
        let dh2 = if kind.is_parallel() { dw(DTMP) } else { dw(DLN) };
        let h2 = if kind.has_mlp_norm() { ar(LN2, l) } else { h.clone() };
        {
            let [dg, dmv] = da.disjoint_mut([dw(DFCH_RELU), dm]);
            let g_act = &a.data[ar(FCH_RELU, l)];
            lin.backward(l, FCPROJ_LIN, dg, gw.fcprojw, None, dmv, g_act, w.fcprojw, n, hidden, d);
            let [dfch, dg] = da.disjoint_mut([dw(DFCH), dw(DFCH_RELU)]);
            if self.llama.is_some() {
                be.swiglu_backward(dfch, &a.data[ar(FCH, l)], dg, n, hidden);
            } else {
                be.relu_backward(dfch, g_act, dg);
            }
            let [dhv, dfch] = da.disjoint_mut([dh2.clone(), dw(DFCH)]);
            lin.backward(l, FC_LIN, dhv, gw.fcw, None, dfch, &a.data[h2], w.fcw, n, d, fc);
        }
        // Sequential blocks: through N2 into the join x', then to the attention branch's output.
        match kind {
            BlockKind::PreLn => {
                let [dres, dln] = da.disjoint_mut([dw(DRES), dw(DLN)]);
                let (mid, rrms) = (&a.data[ar(MID, l)], &a.data[ar(LN2_RRMS, l)]);
                be.rmsnorm_backward(dres, gw.ln2w, dln, mid, w.ln2w, rrms, n, d); // dres = dx'
            }
            BlockKind::Sas => {
                let [dmid, dln] = da.disjoint_mut([dw(DMID), dw(DLN)]);
                let (mid, rrms) = (&a.data[ar(MID, l)], &a.data[ar(LN2_RRMS, l)]);
                be.rmsnorm_backward(dmid, gw.ln2w, dln, mid, w.ln2w, rrms, n, d);
                let [datty, dmid] = da.disjoint_mut([dw(DATTY), dw(DMID)]);
                be.scale_backward(datty, gw.attn_gain, dmid, &a.data[ar(ATTY, l)], w.attn_gain);
            }
            _ => {}
        }
        // Attention backward: the gradient at h lands in DLN (overwrite), then the MLP's share joins.
        if kind.is_shaped() {
            let v = if l == 0 { aw(V0) } else { h.clone() };
            let [dqk, dv, datty] = da.disjoint_mut([dw(DQKV), dw(DV), dw(DATTY)]);
            let (qk, vv, lse) = (&a.data[ar(QKV, l)], &a.data[v], &a.data[ar(LSE, l)]);
            be.shaped_attention_backward(
                dqk, dv, gw.alpha, gw.beta, gw.gamma, datty, qk, vv, lse, w.alpha, w.beta, w.gamma, b, t, d, nh,
            );
            let dproj = self.unrope(be, da, did, n, b, t);
            let [dln, dqk] = da.disjoint_mut([dw(DLN), dproj]);
            lin.backward(l, QKV_LIN, dln, gw.qkvw, None, dqk, &a.data[h.clone()], w.qkvw, n, d, qk_rows);
            if l == 0 {
                // v = alpha_V h + beta_V u, u = h dW^T: dh += alpha_V dv + (beta_V dv) dW.
                let [dah, du, dv] = da.disjoint_mut([dw(DMID), dw(DMLP), dw(DV)]);
                let (hv, u) = (&a.data[h.clone()], &a.data[aw(V0U)]);
                be.scale_add_backward(dah, du, gt.v0_alpha, gt.v0_beta, dv, hv, u, top.v0_alpha, top.v0_beta);
                let [dhu, du] = da.disjoint_mut([dw(DV), dw(DMLP)]);
                lin.backward(l_n, 0, dhu, gt.v0w, None, du, &a.data[h.clone()], top.v0w, n, d, d);
                let [dln, dah] = da.disjoint_mut([dw(DLN), dw(DMID)]);
                be.accumulate(dln, dah);
            }
            let [dln, dv] = da.disjoint_mut([dw(DLN), dw(DV)]);
            be.accumulate(dln, dv);
        } else {
            let [datty, dres] = da.disjoint_mut([dw(DATTY), dw(DRES)]);
            lin.backward(l, ATTPROJ_LIN, datty, gw.attprojw, None, dres, &a.data[ar(ATTY, l)], w.attprojw, n, d, d);
            let [dqkv, datty] = da.disjoint_mut([dw(DQKV), dw(DATTY)]);
            let (qkv, atty, lse) = (&a.data[ar(QKV, l)], &a.data[ar(ATTY, l)], &a.data[ar(LSE, l)]);
            be.attention_backward(dqkv, datty, qkv, atty, lse, b, t, d, nh);
            let dproj = self.unrope(be, da, did, n, b, t);
            let [dln, dqkv] = da.disjoint_mut([dw(DLN), dproj]);
            lin.backward(l, QKV_LIN, dln, gw.qkvw, None, dqkv, &a.data[h.clone()], w.qkvw, n, d, qk_rows);
        }
        if kind.is_parallel() {
            let [dln, dtmp] = da.disjoint_mut([dw(DLN), dw(DTMP)]);
            be.accumulate(dln, dtmp);
        }
        // Through N1 into the block input. Blocks with a skip keep dy in dres and add to it; blocks
        // without one start from zero (or, with no norm, dx = dh).
        let skip = matches!(kind, BlockKind::PreLn | BlockKind::Parallel);
        let [dres, dln] = da.disjoint_mut([dw(DRES), dw(DLN)]);
        if !skip {
            be.zero(dres);
        }
        if l < l1 {
            be.rmsnorm_backward(dres, gw.ln1w, dln, &a.data[x], w.ln1w, &a.data[ar(LN1_RRMS, l)], n, d);
        } else {
            be.accumulate(dres, dln);
        }
    }

    fn head_forward<Bk: Backend>(&self, ids: &BlockIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>) {
        let (d, n, aid, eps) = (self.n_embd, x.n(), &ids.aid, self.eps());
        let (be, a) = (x.be, &mut *x.a);
        let al = a.layout.clone();
        let (_, top) = ids.params.views(p, 0);
        let last = aid.at(&al, RESIDUAL, self.n_layer - 1);
        let [lnf, rrms, xv] = a.disjoint_mut([aid.w(&al, LNF), aid.w(&al, LNF_RRMS), last]);
        be.rmsnorm_forward(lnf, rrms, xv, top.lnfw, n, d, eps);
        // Tied output projection.
        let [logits, lnf] = a.disjoint_mut([aid.w(&al, LOGITS), aid.w(&al, LNF)]);
        head_logits(be, x.head, logits, lnf, top.wte, x.b, x.t, d, self.padded_vocab);
    }

    // Tied head and final norm: dlogits -> dlnf (scratch DLN) -> dresidual.
    fn head_backward<Bk: Backend>(&self, ids: &BlockIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, g: &mut Slab<Bk::F>) {
        let (d, n, vp, aid, did) = (self.n_embd, x.n(), self.padded_vocab, &ids.aid, &ids.did);
        let (be, a, da) = (x.be, &*x.a, &mut *x.da);
        let (al, dl) = (&a.layout, da.layout.clone());
        let (_, top) = ids.params.views(p, 0);
        let (_, gt) = ids.params.views_mut(g, 0);
        let dln = &mut da.data[did.w(&dl, DLN)];
        be.matmul_backward(dln, gt.wte, None, &a.data[aid.w(al, LOGITS)], &a.data[aid.w(al, LNF)], top.wte, n, d, vp);
        let [dres, dln] = da.disjoint_mut([did.w(&dl, DRES), did.w(&dl, DLN)]);
        be.zero(dres);
        let (xv, rrms) = (&a.data[aid.at(al, RESIDUAL, self.n_layer - 1)], &a.data[aid.w(al, LNF_RRMS)]);
        be.rmsnorm_backward(dres, gt.lnfw, dln, xv, top.lnfw, rrms, n, d);
    }
}
