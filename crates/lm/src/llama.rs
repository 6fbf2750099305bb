//! Llama (the architecture of SmolLM2, the base model for domain adaptation): token embedding, Pre-RMSNorm
//! blocks with rotary positions and grouped-query attention, SwiGLU MLP, tied or separate output head —
//! forward and hand-written backward side by side, written once against `Backend` like gpt2.rs, and a
//! loader for GGUF `llama` files.
//!
//! Parameters, activations and activation gradients each live in one `Slab` whose layout table is built
//! here; weights are (out, in), y = x @ W^T, no biases. Parameter gradients accumulate; activation
//! gradients overwrite, except the residual stream's.
//!
//! One block, x (N,C) -> residual3 (N,C), with hs = C/NH, KVD = NKV hs:
//! ```text
//! xn    = rmsnorm(x) * attn_norm                       (N, C)
//! raw   = xn @ attn_qkv^T                              (N, C + 2 KVD) = [q | k | v]
//! rot   = rope(raw) on the NH + NKV heads of q and k    (N, C + 2 KVD), v passes through
//! qkv   = repeat_kv(rot)                               (N, 3C): kv head g serves query heads g*NH/NKV..
//! y     = causal_attention(qkv)                        (N, C), scale 1/sqrt(hs)
//! r2    = x + y @ attn_output^T
//! gu    = (rmsnorm(r2) * ffn_norm) @ ffn_gate_up^T     (N, 2H) = [gate | up]
//! r3    = r2 + (silu(gate) * up) @ ffn_down^T
//! ```
//! then logits = (rmsnorm(r_L) * output_norm) @ head^T, head = `output` or, tied, `token_embd`.
//!
//! Inference lives apart: `Decoder::forward_last` (the head on each sequence's last row only),
//! `crate::infer` (the key/value cache and generation) and `crate::chat` (SmolLM2's chat template).
//!
//! RoPE pairing (the trap of GGUF Llama): HF's `LlamaAttention` rotates half-split pairs (i, i + hs/2)
//! (`rotate_half`, ggml's NEOX mode), but llama.cpp's `convert_hf_to_gguf.py` permutes the rows of
//! q_proj and k_proj (`LlamaModel.permute`: reshape (heads, 2, hs/2, C), swap axes 1 and 2) so that GGUF
//! `llama` weights expect *interleaved* pairs (2i, 2i + 1) — llama.cpp's `llama_model_rope_type` puts
//! `LLM_ARCH_LLAMA` under `LLAMA_ROPE_TYPE_NORM` ("a normal RoPE, operating on pairs of consecutive head
//! values"), with angle pos * base^(-2i/n_rot). The weights here are GGUF's, so `rope_forward` pairs
//! interleaved; tools/ref/llama_reference.py checks on the real model that this pairing predicts the
//! text far better than the half-split one (mean next-token NLL over three prompts: 3.69, 2.29, 4.46
//! nats interleaved against 4.21, 2.84, 5.86 half-split).

use octet_core::{Error, Float, Layout, Result, Slab, TensorId};
use octet_kernels::Backend;

pub use crate::decoder::init_params;
use crate::decoder::{Arch, Decoder, Pass, arch_tables, head_logits, init_each};
use crate::gguf::GgufFile;

/// Model shape and the two constants of its layers.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    /// >= vocab_size: embedding rows rounded up for efficient GEMMs; the loss ignores the extra columns.
    pub padded_vocab: usize,
    /// Longest sequence a forward accepts (RoPE itself has no table and no limit).
    pub max_seq_len: usize,
    pub n_layer: usize,
    /// Query heads NH.
    pub n_head: usize,
    /// Key/value heads NKV (divides NH; NKV = NH is plain multi-head attention).
    pub n_kv_head: usize,
    /// Width C (= NH * head size).
    pub n_embd: usize,
    /// SwiGLU hidden width H: gate and up are (H, C), down is (C, H).
    pub ffn_hidden: usize,
    /// RoPE base theta: pair i of a head rotates by pos * base^(-2i/hs).
    pub rope_base: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Output head = token embedding (no `output` tensor).
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    /// Tiny debug model: 2 layers, 4 query heads sharing 2 kv heads, d=32.
    pub fn tiny() -> Self {
        LlamaConfig {
            vocab_size: 61,
            padded_vocab: 64,
            max_seq_len: 16,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            n_embd: 32,
            ffn_hidden: 64,
            rope_base: 10_000.0,
            norm_eps: 1e-5,
            tied_embeddings: true,
        }
    }
    /// SmolLM2-135M: 30 layers, d=576, 9 heads / 3 kv heads, FFN 1536, RoPE base 1e5, vocabulary 49152,
    /// tied embeddings, 8192 positions (the GGUF's `llama.*` metadata).
    pub fn smollm2_135m() -> Self {
        LlamaConfig {
            vocab_size: 49152,
            padded_vocab: 49152,
            max_seq_len: 8192,
            n_layer: 30,
            n_head: 9,
            n_kv_head: 3,
            n_embd: 576,
            ffn_hidden: 1536,
            rope_base: 100_000.0,
            // 1e-5 as the GGUF stores it, an f32.
            norm_eps: 1e-5f32 as f64,
            tied_embeddings: true,
        }
    }
    /// Head size hs = C / NH.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }
    /// Width of the key (and of the value) projection: NKV * hs.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_size()
    }
    /// Columns of the fused projection [q | k | v]: C + 2 KVD.
    pub fn qkv_dim(&self) -> usize {
        self.n_embd + 2 * self.kv_dim()
    }
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, m: String| Err(Error::config(f, m));
        if self.vocab_size == 0 || self.padded_vocab < self.vocab_size {
            return bad("padded_vocab", format!("{} must be >= vocab_size {} > 0", self.padded_vocab, self.vocab_size));
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) || !self.head_size().is_multiple_of(2) {
            return bad(
                "n_head",
                format!("n_embd {} must be n_head {} times an even head size", self.n_embd, self.n_head),
            );
        }
        if self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad("n_kv_head", format!("{} must divide n_head {}", self.n_kv_head, self.n_head));
        }
        if self.n_layer == 0 || self.max_seq_len == 0 || self.ffn_hidden == 0 {
            return bad("n_layer", "n_layer, max_seq_len and ffn_hidden must be positive".into());
        }
        let ok = |x: f64, lo: f64| x.is_finite() && x > lo;
        if !ok(self.rope_base, 1.0) || !ok(self.norm_eps, 0.0) {
            return bad(
                "rope_base",
                format!("rope_base {} must be > 1, norm_eps {} > 0", self.rope_base, self.norm_eps),
            );
        }
        Ok(())
    }
    pub fn num_params(&self) -> usize {
        param_layout(self).total()
    }

    /// The shape of a GGUF `llama` model, from its `llama.*` metadata (defaults as llama.cpp: kv heads =
    /// heads, RoPE base 10000, rope dims = head size) and the token embedding's shape; tied when there
    /// is no `output.weight`. Refused with a clear error: another architecture, RoPE scaling, partial
    /// rotary dims, key/value head sizes other than C/NH.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let arch = g.architecture()?;
        if arch != "llama" {
            return Err(Error::format(path, "general.architecture", format!("`{arch}`; this loader reads `llama`")));
        }
        let opt_usize = |key: &str| g.get(key).map(|_| g.get_usize(key)).transpose();
        let (n_embd, n_head) = (g.get_usize("llama.embedding_length")?, g.get_usize("llama.attention.head_count")?);
        let n_kv_head = opt_usize("llama.attention.head_count_kv")?.unwrap_or(n_head);
        let emb =
            g.tensor_info("token_embd.weight").ok_or_else(|| Error::format(path, "token_embd.weight", "missing"))?;
        let vocab_size = match emb.dims[..] {
            [c, v] if c as usize == n_embd => v as usize,
            _ => {
                return Err(Error::format(
                    path,
                    "token_embd.weight",
                    format!("dims {:?}, want [{n_embd}, vocab]", emb.dims),
                ));
            }
        };
        if let Some(v) = opt_usize("llama.vocab_size")?
            && v != vocab_size
        {
            return Err(Error::format(path, "llama.vocab_size", format!("{v} but token_embd has {vocab_size} rows")));
        }
        if let Some(s) = g.get("llama.rope.scaling.type").map(|_| g.get_str("llama.rope.scaling.type")).transpose()?
            && s != "none"
        {
            return Err(Error::format(
                path,
                "llama.rope.scaling.type",
                format!("`{s}` is not supported (plain RoPE only)"),
            ));
        }
        let cfg = LlamaConfig {
            vocab_size,
            padded_vocab: vocab_size,
            max_seq_len: g.get_usize("llama.context_length")?,
            n_layer: g.get_usize("llama.block_count")?,
            n_head,
            n_kv_head,
            n_embd,
            ffn_hidden: g.get_usize("llama.feed_forward_length")?,
            rope_base: match g.get("llama.rope.freq_base") {
                Some(_) => g.get_f64("llama.rope.freq_base")?,
                None => 10_000.0,
            },
            norm_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            tied_embeddings: g.tensor_info("output.weight").is_none(),
        };
        cfg.validate().map_err(|e| Error::format(path, "llama.*", e.to_string()))?;
        let hs = cfg.head_size();
        for key in ["llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"] {
            if let Some(v) = opt_usize(key)?
                && v != hs
            {
                return Err(Error::format(path, key, format!("{v}; only the head size C/NH = {hs} is supported")));
            }
        }
        Ok(cfg)
    }
}

/// The parameter table. Fused tensors keep GGUF's pieces as row blocks: `attn_qkv` rows are
/// [attn_q (C) | attn_k (KVD) | attn_v (KVD)], `ffn_gate_up` rows [ffn_gate (H) | ffn_up (H)].
pub fn param_layout(c: &LlamaConfig) -> Layout {
    let (v, l, d, h) = (c.padded_vocab, c.n_layer, c.n_embd, c.ffn_hidden);
    let mut t = vec![
        ("token_embd", vec![v, d]),
        ("attn_norm", vec![l, d]),
        ("attn_qkv", vec![l, c.qkv_dim(), d]),
        ("attn_output", vec![l, d, d]),
        ("ffn_norm", vec![l, d]),
        ("ffn_gate_up", vec![l, 2 * h, d]),
        ("ffn_down", vec![l, d, h]),
        ("output_norm", vec![d]),
    ];
    if !c.tied_embeddings {
        t.push(("output", vec![v, d]));
    }
    Layout::new(t)
}

/// Which parameter tensors get weight decay: the matrices (embeddings included), not the norm gains.
pub fn decay_flags(layout: &Layout) -> Vec<bool> {
    layout.specs().iter().map(|s| !s.name.ends_with("norm")).collect()
}

/// Initialisation for training from scratch, one tensor at a time (`decoder::init_each`; all at
/// once: `decoder::init_params`): N(0, 0.02) matrices, residual projections (attn_output, ffn_down)
/// N(0, 0.02/sqrt(2L)), unit norm gains.
pub fn init_tensors(c: &LlamaConfig, layout: &Layout, seed: u64, f: &mut dyn FnMut(usize, &[f32])) {
    let proj_std = 0.02 / (2.0 * c.n_layer as f64).sqrt();
    init_each(
        layout,
        seed,
        |name, out, rng| {
            let std = match name {
                n if n.ends_with("norm") => return out.fill(1.0),
                "attn_output" | "ffn_down" => proj_std,
                _ => 0.02,
            };
            out.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
        },
        f,
    );
}

/// A block's six tensors, in `param_layout` order; `T` is a slice of parameters or gradients.
pub struct Block<T> {
    pub attn_norm: T,
    pub attn_qkv: T,
    pub attn_output: T,
    pub ffn_norm: T,
    pub ffn_gate_up: T,
    pub ffn_down: T,
}

impl<T> Block<T> {
    pub const NAMES: [&'static str; 6] =
        ["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_gate_up", "ffn_down"];
    fn from_array([attn_norm, attn_qkv, attn_output, ffn_norm, ffn_gate_up, ffn_down]: [T; 6]) -> Self {
        Block { attn_norm, attn_qkv, attn_output, ffn_norm, ffn_gate_up, ffn_down }
    }
}

/// Tensor ids of `Block::NAMES`, the embedding, the final norm and the output head, resolved once.
pub struct ParamIds {
    block: [TensorId; 6],
    pub(crate) token_embd: TensorId,
    pub(crate) output_norm: TensorId,
    /// `output`, or `token_embd` when tied.
    pub(crate) head: TensorId,
}

impl ParamIds {
    fn new(l: &Layout) -> Self {
        let token_embd = l.expect_id("token_embd");
        ParamIds {
            block: Block::<()>::NAMES.map(|n| l.expect_id(n)),
            token_embd,
            output_norm: l.expect_id("output_norm"),
            head: l.id("output").unwrap_or(token_embd),
        }
    }
    pub(crate) fn block<'a, F>(&self, s: &'a Slab<F>, l: usize) -> Block<&'a [F]> {
        Block::from_array(self.block.map(|id| &s.data[s.layout.range_at(id, l)]))
    }
    fn block_mut<'a, F>(&self, s: &'a mut Slab<F>, l: usize) -> Block<&'a mut [F]> {
        let r = self.block.map(|id| s.layout.range_at(id, l));
        Block::from_array(s.disjoint_mut(r))
    }
}

/// The activation table for a (B, T) batch: what forward saves for backward, then per-layer scratch.
pub fn act_layout(c: &LlamaConfig, b: usize, t: usize) -> Layout {
    let (l, d, h, n) = (c.n_layer, c.n_embd, c.ffn_hidden, b * t);
    Layout::new([
        ("encoded", vec![n, d]),
        ("attn_xn", vec![l, n, d]),
        ("attn_rrms", vec![l, n]),
        ("qkv", vec![l, n, 3 * d]),
        ("atty", vec![l, n, d]),
        ("att_lse", vec![l, b * c.n_head * t]),
        ("residual2", vec![l, n, d]),
        ("ffn_xn", vec![l, n, d]),
        ("ffn_rrms", vec![l, n]),
        ("gate_up", vec![l, n, 2 * h]),
        ("swiglu", vec![l, n, h]),
        ("residual3", vec![l, n, d]),
        ("out_xn", vec![n, d]),
        ("out_rrms", vec![n]),
        ("logits", vec![n, c.padded_vocab]),
        ("losses", vec![n]),
        // Scratch reused by every layer (backward needs none of it: RoPE and repeat_kv are linear).
        ("qkv_raw", vec![n, c.qkv_dim()]),
        ("qkv_rope", vec![n, c.qkv_dim()]),
        ("proj", vec![n, d]),
    ])
}

/// Activation-gradient scratch: one layer's worth, reused from the top layer down, plus the residual
/// stream's gradient.
pub fn grad_act_layout(c: &LlamaConfig, b: usize, t: usize) -> Layout {
    let (d, h, n) = (c.n_embd, c.ffn_hidden, b * t);
    Layout::new([
        ("dresidual", vec![n, d]),
        ("dxn", vec![n, d]),
        ("dswiglu", vec![n, h]),
        ("dgate_up", vec![n, 2 * h]),
        ("datty", vec![n, d]),
        ("dqkv", vec![n, 3 * d]),
        ("dqkv_rope", vec![n, c.qkv_dim()]),
        ("dqkv_raw", vec![n, c.qkv_dim()]),
    ])
}

// Activation indices (act_layout order).
const ENCODED: usize = 0;
const ATTN_XN: usize = 1;
const ATTN_RRMS: usize = 2;
const QKV: usize = 3;
const ATTY: usize = 4;
const ATT_LSE: usize = 5;
const RESIDUAL2: usize = 6;
const FFN_XN: usize = 7;
const FFN_RRMS: usize = 8;
const GATE_UP: usize = 9;
const SWIGLU: usize = 10;
const RESIDUAL3: usize = 11;
const OUT_XN: usize = 12;
const OUT_RRMS: usize = 13;
const LOGITS: usize = 14;
const QKV_RAW: usize = 16;
const QKV_ROPE: usize = 17;
const PROJ: usize = 18;
// Gradient scratch indices (grad_act_layout order).
const DRES: usize = 0;
const DXN: usize = 1;
const DSWIGLU: usize = 2;
const DGATE_UP: usize = 3;
const DATTY: usize = 4;
const DQKV: usize = 5;
const DQKV_ROPE: usize = 6;
const DQKV_RAW: usize = 7;

/// The four linears of a block, in order; `scaling[l * LINEARS + k]` is layer l's linear k.
pub const LINEARS: usize = 4;
const QKV_LIN: usize = 0;
const ATTN_OUT_LIN: usize = 1;
const GATE_UP_LIN: usize = 2;
const DOWN_LIN: usize = 3;

/// A Llama model bound to a backend (the decoder shell with Llama's architecture).
pub type Llama<Bk> = Decoder<Bk, LlamaConfig>;

impl Arch for LlamaConfig {
    type Ids = ParamIds;

    arch_tables!(LlamaConfig);
    fn workspace(&self, n: usize) -> (usize, usize, usize) {
        // Largest operands over the four linears: inputs (N, max(C, H)), weights and outputs of
        // qkv (C+2KVD, C), gate_up (2H, C), down (C, H).
        let (d, h) = (self.n_embd, self.ffn_hidden);
        let oc = self.qkv_dim().max(2 * h).max(d);
        (n * d.max(h), oc * d.max(h), n * oc)
    }
    fn linears_per_layer(&self) -> usize {
        LINEARS
    }
    fn ids(&self, params: &Layout) -> ParamIds {
        ParamIds::new(params)
    }
    fn linear_shapes(&self) -> Vec<(usize, usize)> {
        // Indexed by QKV_LIN, ATTN_OUT_LIN, GATE_UP_LIN, DOWN_LIN.
        let (d, h) = (self.n_embd, self.ffn_hidden);
        vec![(d, self.qkv_dim()), (d, d), (d, 2 * h), (h, d)]
    }
    fn linear_weight(&self, layout: &Layout, l: usize, k: usize) -> std::ops::Range<usize> {
        let name = ["attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"][k];
        layout.range_at(layout.expect_id(name), l)
    }

    fn embed_forward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, tokens: &[u32]) {
        let n = x.n();
        x.be.embed_forward(x.a.get_mut(TensorId(ENCODED)), tokens, p.get(pid.token_embd), n, self.n_embd);
    }

    fn embed_backward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, g: &mut Slab<Bk::F>, tokens: &[u32]) {
        let n = x.n();
        let dembd = &mut g.data[g.layout.range(pid.token_embd)];
        x.be.embed_backward(dembd, x.da.get(TensorId(DRES)), tokens, n, self.n_embd);
    }

    fn layer_forward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, l: usize, lw: usize) {
        let c = self;
        let (d, nh, nkv, hs, h, n, b, t) =
            (c.n_embd, c.n_head, c.n_kv_head, c.head_size(), c.ffn_hidden, x.n(), x.b, x.t);
        let (qd, eps) = (c.qkv_dim(), c.norm_eps);
        let (be, a, lin) = (x.be, &mut *x.a, &mut x.lin);
        let al = a.layout.clone();
        let ar = |i: usize, l: usize| al.range_at(TensorId(i), l);
        let aw = |i: usize| al.range(TensorId(i));
        let w = pid.block(p, lw);
        let res = if l == 0 { aw(ENCODED) } else { ar(RESIDUAL3, l - 1) };
        // Attention branch: residual2 = x + attn_output(attention(repeat_kv(rope(qkv(rmsnorm(x)))))).
        let [xn, rrms, x] = a.disjoint_mut([ar(ATTN_XN, l), ar(ATTN_RRMS, l), res.clone()]);
        be.rmsnorm_forward(xn, rrms, x, w.attn_norm, n, d, eps);
        let [raw, xn] = a.disjoint_mut([aw(QKV_RAW), ar(ATTN_XN, l)]);
        lin.forward(l, QKV_LIN, raw, xn, w.attn_qkv, None, n, d, qd);
        let [rot, raw] = a.disjoint_mut([aw(QKV_ROPE), aw(QKV_RAW)]);
        be.rope_forward(rot, raw, b, t, 0, qd, (nh + nkv) * hs, hs, c.rope_base);
        let [qkv, rot] = a.disjoint_mut([ar(QKV, l), aw(QKV_ROPE)]);
        be.repeat_kv_forward(qkv, rot, n, nh, nkv, hs);
        let [atty, lse, qkv] = a.disjoint_mut([ar(ATTY, l), ar(ATT_LSE, l), ar(QKV, l)]);
        be.attention_forward(atty, lse, qkv, b, t, d, nh);
        let [proj, atty] = a.disjoint_mut([aw(PROJ), ar(ATTY, l)]);
        lin.forward(l, ATTN_OUT_LIN, proj, atty, w.attn_output, None, n, d, d);
        let [r2, x, proj] = a.disjoint_mut([ar(RESIDUAL2, l), res, aw(PROJ)]);
        be.residual_forward(r2, x, proj);
        // MLP branch: residual3 = residual2 + ffn_down(swiglu(ffn_gate_up(rmsnorm(residual2)))).
        let [xn, rrms, r2] = a.disjoint_mut([ar(FFN_XN, l), ar(FFN_RRMS, l), ar(RESIDUAL2, l)]);
        be.rmsnorm_forward(xn, rrms, r2, w.ffn_norm, n, d, eps);
        let [gu, xn] = a.disjoint_mut([ar(GATE_UP, l), ar(FFN_XN, l)]);
        lin.forward(l, GATE_UP_LIN, gu, xn, w.ffn_gate_up, None, n, d, 2 * h);
        let [sw, gu] = a.disjoint_mut([ar(SWIGLU, l), ar(GATE_UP, l)]);
        be.swiglu_forward(sw, gu, n, h);
        let [proj, sw] = a.disjoint_mut([aw(PROJ), ar(SWIGLU, l)]);
        lin.forward(l, DOWN_LIN, proj, sw, w.ffn_down, None, n, h, d);
        let [r3, r2, proj] = a.disjoint_mut([ar(RESIDUAL3, l), ar(RESIDUAL2, l), aw(PROJ)]);
        be.residual_forward(r3, r2, proj);
    }

    fn layer_backward<Bk: Backend>(
        &self,
        pid: &ParamIds,
        x: &mut Pass<'_, Bk>,
        p: &Slab<Bk::F>,
        g: &mut Slab<Bk::F>,
        l: usize,
        lw: usize,
    ) {
        let c = self;
        let (d, nh, nkv, hs, h, n, b, t) =
            (c.n_embd, c.n_head, c.n_kv_head, c.head_size(), c.ffn_hidden, x.n(), x.b, x.t);
        let qd = c.qkv_dim();
        let (be, a, da, lin) = (x.be, &*x.a, &mut *x.da, &mut x.lin);
        let (al, dl) = (a.layout.clone(), da.layout.clone());
        let ar = |i: usize, l: usize| al.range_at(TensorId(i), l);
        let aw = |i: usize| al.range(TensorId(i));
        let dw = |i: usize| dl.range(TensorId(i));
        let (w, gw) = (pid.block(p, lw), pid.block_mut(g, lw));
        let res = if l == 0 { aw(ENCODED) } else { ar(RESIDUAL3, l - 1) };
        // MLP branch.
        let [dsw, dres] = da.disjoint_mut([dw(DSWIGLU), dw(DRES)]);
        lin.backward(l, DOWN_LIN, dsw, gw.ffn_down, None, dres, &a.data[ar(SWIGLU, l)], w.ffn_down, n, h, d);
        let [dgu, dsw] = da.disjoint_mut([dw(DGATE_UP), dw(DSWIGLU)]);
        be.swiglu_backward(dgu, &a.data[ar(GATE_UP, l)], dsw, n, h);
        let [dxn, dgu] = da.disjoint_mut([dw(DXN), dw(DGATE_UP)]);
        lin.backward(
            l,
            GATE_UP_LIN,
            dxn,
            gw.ffn_gate_up,
            None,
            dgu,
            &a.data[ar(FFN_XN, l)],
            w.ffn_gate_up,
            n,
            d,
            2 * h,
        );
        let [dres, dxn] = da.disjoint_mut([dw(DRES), dw(DXN)]);
        let (x, rrms) = (&a.data[ar(RESIDUAL2, l)], &a.data[ar(FFN_RRMS, l)]);
        be.rmsnorm_backward(dres, gw.ffn_norm, dxn, x, w.ffn_norm, rrms, n, d);
        // Attention branch.
        let [datty, dres] = da.disjoint_mut([dw(DATTY), dw(DRES)]);
        lin.backward(l, ATTN_OUT_LIN, datty, gw.attn_output, None, dres, &a.data[ar(ATTY, l)], w.attn_output, n, d, d);
        let [dqkv, datty] = da.disjoint_mut([dw(DQKV), dw(DATTY)]);
        let (qkv, atty, lse) = (&a.data[ar(QKV, l)], &a.data[ar(ATTY, l)], &a.data[ar(ATT_LSE, l)]);
        be.attention_backward(dqkv, datty, qkv, atty, lse, b, t, d, nh);
        let [drot, dqkv] = da.disjoint_mut([dw(DQKV_ROPE), dw(DQKV)]);
        be.repeat_kv_backward(drot, dqkv, n, nh, nkv, hs);
        let [draw, drot] = da.disjoint_mut([dw(DQKV_RAW), dw(DQKV_ROPE)]);
        be.rope_backward(draw, drot, b, t, 0, qd, (nh + nkv) * hs, hs, c.rope_base);
        let [dxn, draw] = da.disjoint_mut([dw(DXN), dw(DQKV_RAW)]);
        lin.backward(l, QKV_LIN, dxn, gw.attn_qkv, None, draw, &a.data[ar(ATTN_XN, l)], w.attn_qkv, n, d, qd);
        let [dres, dxn] = da.disjoint_mut([dw(DRES), dw(DXN)]);
        let (x, rrms) = (&a.data[res], &a.data[ar(ATTN_RRMS, l)]);
        be.rmsnorm_backward(dres, gw.attn_norm, dxn, x, w.attn_norm, rrms, n, d);
    }

    fn head_forward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>) {
        let (d, n) = (self.n_embd, x.n());
        let (be, a) = (x.be, &mut *x.a);
        let al = a.layout.clone();
        let last = al.range_at(TensorId(RESIDUAL3), self.n_layer - 1);
        let [xn, rrms, xv] = a.disjoint_mut([al.range(TensorId(OUT_XN)), al.range(TensorId(OUT_RRMS)), last]);
        be.rmsnorm_forward(xn, rrms, xv, p.get(pid.output_norm), n, d, self.norm_eps);
        let [logits, xn] = a.disjoint_mut([al.range(TensorId(LOGITS)), al.range(TensorId(OUT_XN))]);
        head_logits(be, x.head, logits, xn, p.get(pid.head), x.b, x.t, d, self.padded_vocab);
    }

    // Head and final norm: dlogits -> dxn -> dresidual.
    fn head_backward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, g: &mut Slab<Bk::F>) {
        let (d, n, vp) = (self.n_embd, x.n(), self.padded_vocab);
        let (be, a, da) = (x.be, &*x.a, &mut *x.da);
        let dl = da.layout.clone();
        let dhead = &mut g.data[g.layout.range(pid.head)];
        let (logits, xn) = (a.get(TensorId(LOGITS)), a.get(TensorId(OUT_XN)));
        be.matmul_backward(da.get_mut(TensorId(DXN)), dhead, None, logits, xn, p.get(pid.head), n, d, vp);
        be.zero(da.get_mut(TensorId(DRES)));
        let [dres, dxn] = da.disjoint_mut([dl.range(TensorId(DRES)), dl.range(TensorId(DXN))]);
        let dnorm = &mut g.data[g.layout.range(pid.output_norm)];
        let (xv, rrms) = (&a.data[a.layout.range_at(TensorId(RESIDUAL3), self.n_layer - 1)], a.get(TensorId(OUT_RRMS)));
        be.rmsnorm_backward(dres, dnorm, dxn, xv, p.get(pid.output_norm), rrms, n, d);
    }
}

impl<Bk: Backend> Decoder<Bk, LlamaConfig> {
    /// The model in a GGUF `llama` file, dequantised to the backend's float type.
    pub fn from_gguf(g: &GgufFile, backend: Bk) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(g)?;
        let params = params_from_gguf(g, &cfg)?;
        Self::new(cfg, backend, params)
    }
}

/// The parameters of a GGUF `llama` model in `param_layout(cfg)` order, dequantised (GGUF `[in, out]`
/// matrices are row-major (out, in), octet's convention, so each copies straight in); padded vocabulary
/// rows are zero. Every tensor's dims are checked against `cfg`.
pub fn params_from_gguf<F: Float>(g: &GgufFile, cfg: &LlamaConfig) -> Result<Vec<F>> {
    cfg.validate()?;
    let layout = param_layout(cfg);
    let mut p = vec![F::default(); layout.total()];
    let (d, h, kvd, v) = (cfg.n_embd, cfg.ffn_hidden, cfg.kv_dim(), cfg.vocab_size);
    let mut copy = |name: &str, dims: [usize; 2], dst: usize| -> Result<()> {
        let info = g.tensor_info(name).ok_or_else(|| Error::format(g.path(), name, "missing tensor"))?;
        let want: Vec<u64> = dims.iter().filter(|&&x| x > 0).map(|&x| x as u64).collect();
        if info.dims != want {
            return Err(Error::format(g.path(), name, format!("dims {:?}, expected {want:?}", info.dims)));
        }
        for (o, x) in p[dst..].iter_mut().zip(g.tensor_f32(name)?) {
            *o = F::from_f32(x);
        }
        Ok(())
    };
    let at = |name: &str, l: usize, row: usize, cols: usize| {
        let id = layout.expect_id(name);
        layout.range_at(id, l).start + row * cols
    };
    let start = |name: &str| layout.spec(layout.expect_id(name)).offset;
    // GGUF dims are [in, out] ([C] for a vector; 0 marks "absent" here).
    copy("token_embd.weight", [d, v], start("token_embd"))?;
    for l in 0..cfg.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        copy(&b("attn_norm"), [d, 0], at("attn_norm", l, 0, d))?;
        copy(&b("attn_q"), [d, d], at("attn_qkv", l, 0, d))?;
        copy(&b("attn_k"), [d, kvd], at("attn_qkv", l, d, d))?;
        copy(&b("attn_v"), [d, kvd], at("attn_qkv", l, d + kvd, d))?;
        copy(&b("attn_output"), [d, d], at("attn_output", l, 0, d))?;
        copy(&b("ffn_norm"), [d, 0], at("ffn_norm", l, 0, d))?;
        copy(&b("ffn_gate"), [d, h], at("ffn_gate_up", l, 0, d))?;
        copy(&b("ffn_up"), [d, h], at("ffn_gate_up", l, h, d))?;
        copy(&b("ffn_down"), [h, d], at("ffn_down", l, 0, h))?;
    }
    copy("output_norm.weight", [d, 0], start("output_norm"))?;
    if !cfg.tied_embeddings {
        copy("output.weight", [d, v], start("output"))?;
    }
    Ok(p)
}
