//! GPT-2 as an architecture of the decoder shell (`crate::decoder`): learned positions, Pre-LN blocks
//! with LayerNorm and biases, GELU MLP, tied embeddings, padded vocabulary. Its tables and its step
//! bodies, each forward beside its backward, written once against `Backend` so the same code runs the
//! fast CPU kernels (f32) and the reference kernels (f64, for finite differences).
//!
//! Weights are (out, in) and y = x @ W^T + b. Parameter gradients accumulate; activation gradients
//! overwrite, except the residual stream's.

use octet_core::{Error, Layout, Result, Rng, Slab, TensorId};
use octet_kernels::Backend;

pub use crate::decoder::init_params;
use crate::decoder::{Arch, Decoder, Pass, arch_tables, head_logits, init_each};

/// Model shape. `padded_vocab` >= `vocab_size` rounds the embedding rows up for efficient GEMMs;
/// the loss ignores the padded columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub padded_vocab: usize,
    pub max_seq_len: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
}

/// Round a vocabulary up to a multiple of `m` (GPT-2's 50257 -> 50304 with m = 128).
pub fn pad_vocab(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

impl Gpt2Config {
    /// Tiny debug model (matches tools/ref/gpt2_golden.py).
    pub fn tiny() -> Self {
        Gpt2Config { vocab_size: 61, padded_vocab: 64, max_seq_len: 16, n_layer: 2, n_head: 4, n_embd: 32 }
    }
    /// Exactly GPT-2 small: 12 layers, d=768, 12 heads, 1024 positions, 50257 tokens (padded 50304).
    pub fn gpt2_124m() -> Self {
        Gpt2Config { vocab_size: 50257, padded_vocab: 50304, max_seq_len: 1024, n_layer: 12, n_head: 12, n_embd: 768 }
    }
    /// The default model of `octet train`: small enough to learn in two minutes on 2 cores.
    pub fn small(vocab_size: usize) -> Self {
        Gpt2Config {
            vocab_size,
            padded_vocab: pad_vocab(vocab_size, 64),
            max_seq_len: 128,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
        }
    }
    /// A named preset with the given tokenizer vocabulary (`gpt2-124m` keeps its own).
    pub fn named(name: &str, vocab_size: usize) -> Result<Self> {
        let with_vocab = |c: Gpt2Config| Gpt2Config { vocab_size, padded_vocab: pad_vocab(vocab_size, 64), ..c };
        match name {
            "tiny" => Ok(with_vocab(Self::tiny())),
            "small" => Ok(Self::small(vocab_size)),
            "gpt2-124m" => Ok(Self::gpt2_124m()),
            other => {
                Err(Error::config("model", format!("unknown model `{other}`; expected one of: tiny, small, gpt2-124m")))
            }
        }
    }
    pub fn validate(&self) -> Result<()> {
        self.dims().validate(self.n_head)
    }
    pub fn num_params(&self) -> usize {
        param_layout(self).total()
    }
}

/// The parameter table, in llm.c order.
pub fn param_layout(c: &Gpt2Config) -> Layout {
    let (v, t, l, d) = (c.padded_vocab, c.max_seq_len, c.n_layer, c.n_embd);
    Layout::new([
        ("wte", vec![v, d]),
        ("wpe", vec![t, d]),
        ("ln1w", vec![l, d]),
        ("ln1b", vec![l, d]),
        ("qkvw", vec![l, 3 * d, d]),
        ("qkvb", vec![l, 3 * d]),
        ("attprojw", vec![l, d, d]),
        ("attprojb", vec![l, d]),
        ("ln2w", vec![l, d]),
        ("ln2b", vec![l, d]),
        ("fcw", vec![l, 4 * d, d]),
        ("fcb", vec![l, 4 * d]),
        ("fcprojw", vec![l, d, 4 * d]),
        ("fcprojb", vec![l, d]),
        ("lnfw", vec![d]),
        ("lnfb", vec![d]),
    ])
}

/// Which parameter tensors get weight decay: the matrices (embeddings included), not norms or biases.
pub fn decay_flags(layout: &Layout) -> Vec<bool> {
    const MATRICES: [&str; 6] = ["wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"];
    layout.specs().iter().map(|s| MATRICES.contains(&s.name.as_str())).collect()
}

/// GPT-2 initialisation, one tensor at a time (`decoder::init_each`; all at once:
/// `decoder::init_params`): N(0, 0.02) matrices, residual projections N(0, 0.02/sqrt(2L)), zero
/// biases, unit norm gains.
pub fn init_tensors(c: &Gpt2Config, layout: &Layout, seed: u64, f: &mut dyn FnMut(usize, &[f32])) {
    let proj_std = 0.02 / (2.0 * c.n_layer as f64).sqrt();
    let normal =
        |out: &mut [f32], rng: &mut Rng, std: f64| out.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
    init_each(
        layout,
        seed,
        |name, out, rng| match name {
            "ln1w" | "ln2w" | "lnfw" => out.fill(1.0),
            "attprojw" | "fcprojw" => normal(out, rng, proj_std),
            n if n.ends_with('w') || n == "wte" || n == "wpe" => normal(out, rng, 0.02),
            _ => out.fill(0.0), // biases
        },
        f,
    );
}

/// A block's twelve tensors, in `param_layout` order; `T` is a slice of parameters or gradients.
pub struct Block<T> {
    pub ln1w: T,
    pub ln1b: T,
    pub qkvw: T,
    pub qkvb: T,
    pub attprojw: T,
    pub attprojb: T,
    pub ln2w: T,
    pub ln2b: T,
    pub fcw: T,
    pub fcb: T,
    pub fcprojw: T,
    pub fcprojb: T,
}

impl<T> Block<T> {
    pub const NAMES: [&'static str; 12] =
        ["ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb"];
    fn from_array(
        [ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb]: [T; 12],
    ) -> Self {
        Block { ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb }
    }
}

/// The tensors outside the blocks.
pub struct Top<T> {
    pub wte: T,
    pub wpe: T,
    pub lnfw: T,
    pub lnfb: T,
}

impl<T> Top<T> {
    pub const NAMES: [&'static str; 4] = ["wte", "wpe", "lnfw", "lnfb"];
    fn from_array([wte, wpe, lnfw, lnfb]: [T; 4]) -> Self {
        Top { wte, wpe, lnfw, lnfb }
    }
}

/// Tensor ids of `Block::NAMES` and `Top::NAMES`, resolved once.
pub struct ParamIds {
    block: [TensorId; 12],
    top: [TensorId; 4],
}

impl ParamIds {
    fn new(l: &Layout) -> Self {
        ParamIds { block: Block::<()>::NAMES.map(|n| l.expect_id(n)), top: Top::<()>::NAMES.map(|n| l.expect_id(n)) }
    }
    fn block<'a, F>(&self, s: &'a Slab<F>, l: usize) -> Block<&'a [F]> {
        Block::from_array(self.block.map(|id| &s.data[s.layout.range_at(id, l)]))
    }
    fn block_mut<'a, F>(&self, s: &'a mut Slab<F>, l: usize) -> Block<&'a mut [F]> {
        let r = self.block.map(|id| s.layout.range_at(id, l));
        Block::from_array(s.disjoint_mut(r))
    }
    fn top<'a, F>(&self, s: &'a Slab<F>) -> Top<&'a [F]> {
        Top::from_array(self.top.map(|id| s.get(id)))
    }
    fn top_mut<'a, F>(&self, s: &'a mut Slab<F>) -> Top<&'a mut [F]> {
        let r = self.top.map(|id| s.layout.range(id));
        Top::from_array(s.disjoint_mut(r))
    }
}

/// The activation table for a (B, T) batch: what forward saves for backward.
pub fn act_layout(c: &Gpt2Config, b: usize, t: usize) -> Layout {
    let (l, d, nh, n) = (c.n_layer, c.n_embd, c.n_head, b * t);
    Layout::new([
        ("encoded", vec![n, d]),
        ("ln1", vec![l, n, d]),
        ("ln1_mean", vec![l, n]),
        ("ln1_rstd", vec![l, n]),
        ("qkv", vec![l, n, 3 * d]),
        ("atty", vec![l, n, d]),
        ("att_lse", vec![l, b * nh * t]),
        ("attproj", vec![l, n, d]),
        ("residual2", vec![l, n, d]),
        ("ln2", vec![l, n, d]),
        ("ln2_mean", vec![l, n]),
        ("ln2_rstd", vec![l, n]),
        ("fch", vec![l, n, 4 * d]),
        ("fch_gelu", vec![l, n, 4 * d]),
        ("fcproj", vec![l, n, d]),
        ("residual3", vec![l, n, d]),
        ("lnf", vec![n, d]),
        ("lnf_mean", vec![n]),
        ("lnf_rstd", vec![n]),
        ("logits", vec![n, c.padded_vocab]),
        ("losses", vec![n]),
    ])
}

/// Activation-gradient scratch: one layer's worth, reused from the top layer down, plus the
/// residual stream's gradient.
pub fn grad_act_layout(c: &Gpt2Config, b: usize, t: usize) -> Layout {
    let (d, n) = (c.n_embd, b * t);
    Layout::new([
        ("dresidual", vec![n, d]),
        ("dln", vec![n, d]),
        ("dfch_gelu", vec![n, 4 * d]),
        ("dfch", vec![n, 4 * d]),
        ("datty", vec![n, d]),
        ("dqkv", vec![n, 3 * d]),
    ])
}

/// The four linears of a block, in order; `scaling[l * LINEARS + k]` is layer l's linear k.
pub const LINEARS: usize = 4;
const QKV_LIN: usize = 0;
const ATTPROJ_LIN: usize = 1;
const FC_LIN: usize = 2;
const FCPROJ_LIN: usize = 3;

/// A GPT-2 model bound to a backend (the decoder shell with GPT-2's architecture).
pub type Gpt2<Bk> = Decoder<Bk, Gpt2Config>;

// Activation indices (act_layout order).
const ENCODED: usize = 0;
const LN1: usize = 1;
const LN1_MEAN: usize = 2;
const LN1_RSTD: usize = 3;
const QKV: usize = 4;
const ATTY: usize = 5;
const ATT_LSE: usize = 6;
const ATTPROJ: usize = 7;
const RESIDUAL2: usize = 8;
const LN2: usize = 9;
const LN2_MEAN: usize = 10;
const LN2_RSTD: usize = 11;
const FCH: usize = 12;
const FCH_GELU: usize = 13;
const FCPROJ: usize = 14;
const RESIDUAL3: usize = 15;
const LNF: usize = 16;
const LNF_MEAN: usize = 17;
const LNF_RSTD: usize = 18;
const LOGITS: usize = 19;
// Gradient scratch indices (grad_act_layout order).
const DRES: usize = 0;
const DLN: usize = 1;
const DFCH_GELU: usize = 2;
const DFCH: usize = 3;
const DATTY: usize = 4;
const DQKV: usize = 5;

impl Arch for Gpt2Config {
    type Ids = ParamIds;

    arch_tables!(Gpt2Config);
    fn workspace(&self, n: usize) -> (usize, usize, usize) {
        // Largest block linear: the MLP's (N, 4C) activations and (4C, C) weights.
        let d = self.n_embd;
        (n * 4 * d, 4 * d * d, n * 4 * d)
    }
    fn linears_per_layer(&self) -> usize {
        LINEARS
    }
    fn ids(&self, params: &Layout) -> ParamIds {
        ParamIds::new(params)
    }

    fn embed_forward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, tokens: &[u32]) {
        let top = pid.top(p);
        x.be.encoder_forward(x.a.get_mut(TensorId(ENCODED)), tokens, top.wte, top.wpe, x.b, x.t, self.n_embd);
    }

    fn embed_backward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, g: &mut Slab<Bk::F>, tokens: &[u32]) {
        let gt = pid.top_mut(g);
        x.be.encoder_backward(gt.wte, gt.wpe, x.da.get(TensorId(DRES)), tokens, x.b, x.t, self.n_embd);
    }

    // x -> residual2 = x + attproj(attention(qkv(ln1(x)))) -> residual3 = residual2 + mlp(ln2(residual2))
    fn layer_forward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, l: usize, lw: usize) {
        let (d, nh, n, b, t) = (self.n_embd, self.n_head, x.n(), x.b, x.t);
        let (be, a, lin) = (x.be, &mut *x.a, &mut x.lin);
        let al = a.layout.clone();
        let ar = |i: usize, l: usize| al.range_at(TensorId(i), l);
        let w = pid.block(p, lw);
        let res = if l == 0 { al.range(TensorId(ENCODED)) } else { ar(RESIDUAL3, l - 1) };
        let [ln1, mean, rstd, xv] = a.disjoint_mut([ar(LN1, l), ar(LN1_MEAN, l), ar(LN1_RSTD, l), res.clone()]);
        be.layernorm_forward(ln1, mean, rstd, xv, w.ln1w, w.ln1b, n, d);
        let [qkv, ln1] = a.disjoint_mut([ar(QKV, l), ar(LN1, l)]);
        lin.forward(l, QKV_LIN, qkv, ln1, w.qkvw, Some(w.qkvb), n, d, 3 * d);
        let [atty, lse, qkv] = a.disjoint_mut([ar(ATTY, l), ar(ATT_LSE, l), ar(QKV, l)]);
        be.attention_forward(atty, lse, qkv, b, t, d, nh);
        let [proj, atty] = a.disjoint_mut([ar(ATTPROJ, l), ar(ATTY, l)]);
        lin.forward(l, ATTPROJ_LIN, proj, atty, w.attprojw, Some(w.attprojb), n, d, d);
        let [r2, xv, proj] = a.disjoint_mut([ar(RESIDUAL2, l), res, ar(ATTPROJ, l)]);
        be.residual_forward(r2, xv, proj);
        let [ln2, mean, rstd, r2] = a.disjoint_mut([ar(LN2, l), ar(LN2_MEAN, l), ar(LN2_RSTD, l), ar(RESIDUAL2, l)]);
        be.layernorm_forward(ln2, mean, rstd, r2, w.ln2w, w.ln2b, n, d);
        let [fch, ln2] = a.disjoint_mut([ar(FCH, l), ar(LN2, l)]);
        lin.forward(l, FC_LIN, fch, ln2, w.fcw, Some(w.fcb), n, d, 4 * d);
        let [gl, fch] = a.disjoint_mut([ar(FCH_GELU, l), ar(FCH, l)]);
        be.gelu_forward(gl, fch);
        let [proj, gl] = a.disjoint_mut([ar(FCPROJ, l), ar(FCH_GELU, l)]);
        lin.forward(l, FCPROJ_LIN, proj, gl, w.fcprojw, Some(w.fcprojb), n, 4 * d, d);
        let [r3, r2, proj] = a.disjoint_mut([ar(RESIDUAL3, l), ar(RESIDUAL2, l), ar(FCPROJ, l)]);
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
        let (d, nh, n, b, t) = (self.n_embd, self.n_head, x.n(), x.b, x.t);
        let (be, a, da, lin) = (x.be, &*x.a, &mut *x.da, &mut x.lin);
        let (al, dl) = (&a.layout, da.layout.clone());
        let ar = |i: usize, l: usize| al.range_at(TensorId(i), l);
        let dw = |i: usize| dl.range(TensorId(i));
        let (w, gw) = (pid.block(p, lw), pid.block_mut(g, lw));
        let res = if l == 0 { al.range(TensorId(ENCODED)) } else { ar(RESIDUAL3, l - 1) };
        // MLP branch: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
        let [dfg, dres] = da.disjoint_mut([dw(DFCH_GELU), dw(DRES)]);
        let fg = &a.data[ar(FCH_GELU, l)];
        lin.backward(l, FCPROJ_LIN, dfg, gw.fcprojw, Some(gw.fcprojb), dres, fg, w.fcprojw, n, 4 * d, d);
        let [dfch, dfg] = da.disjoint_mut([dw(DFCH), dw(DFCH_GELU)]);
        be.gelu_backward(dfch, &a.data[ar(FCH, l)], dfg);
        let [dln, dfch] = da.disjoint_mut([dw(DLN), dw(DFCH)]);
        lin.backward(l, FC_LIN, dln, gw.fcw, Some(gw.fcb), dfch, &a.data[ar(LN2, l)], w.fcw, n, d, 4 * d);
        let [dres, dln] = da.disjoint_mut([dw(DRES), dw(DLN)]);
        let (xv, mean, rstd) = (&a.data[ar(RESIDUAL2, l)], &a.data[ar(LN2_MEAN, l)], &a.data[ar(LN2_RSTD, l)]);
        be.layernorm_backward(dres, gw.ln2w, gw.ln2b, dln, xv, w.ln2w, mean, rstd, n, d);
        // Attention branch: residual2 = residual + attproj(attention(qkv(ln1(residual)))).
        let [datty, dres] = da.disjoint_mut([dw(DATTY), dw(DRES)]);
        let atty = &a.data[ar(ATTY, l)];
        lin.backward(l, ATTPROJ_LIN, datty, gw.attprojw, Some(gw.attprojb), dres, atty, w.attprojw, n, d, d);
        let [dqkv, datty] = da.disjoint_mut([dw(DQKV), dw(DATTY)]);
        let (qkv, atty, lse) = (&a.data[ar(QKV, l)], &a.data[ar(ATTY, l)], &a.data[ar(ATT_LSE, l)]);
        be.attention_backward(dqkv, datty, qkv, atty, lse, b, t, d, nh);
        let [dln, dqkv] = da.disjoint_mut([dw(DLN), dw(DQKV)]);
        lin.backward(l, QKV_LIN, dln, gw.qkvw, Some(gw.qkvb), dqkv, &a.data[ar(LN1, l)], w.qkvw, n, d, 3 * d);
        let [dres, dln] = da.disjoint_mut([dw(DRES), dw(DLN)]);
        let (xv, mean, rstd) = (&a.data[res], &a.data[ar(LN1_MEAN, l)], &a.data[ar(LN1_RSTD, l)]);
        be.layernorm_backward(dres, gw.ln1w, gw.ln1b, dln, xv, w.ln1w, mean, rstd, n, d);
    }

    fn head_forward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>) {
        let (d, n) = (self.n_embd, x.n());
        let (be, a) = (x.be, &mut *x.a);
        let al = a.layout.clone();
        let top = pid.top(p);
        let last = al.range_at(TensorId(RESIDUAL3), self.n_layer - 1);
        let [lnf, mean, rstd, xv] =
            a.disjoint_mut([al.range(TensorId(LNF)), al.range(TensorId(LNF_MEAN)), al.range(TensorId(LNF_RSTD)), last]);
        be.layernorm_forward(lnf, mean, rstd, xv, top.lnfw, top.lnfb, n, d);
        // Tied output projection.
        let [logits, lnf] = a.disjoint_mut([al.range(TensorId(LOGITS)), al.range(TensorId(LNF))]);
        head_logits(be, x.head, logits, lnf, top.wte, x.b, x.t, d, self.padded_vocab);
    }

    // Tied head and final norm: dlogits -> dlnf (scratch DLN) -> dresidual.
    fn head_backward<Bk: Backend>(&self, pid: &ParamIds, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, g: &mut Slab<Bk::F>) {
        let (d, n, vp) = (self.n_embd, x.n(), self.padded_vocab);
        let (be, a, da) = (x.be, &*x.a, &mut *x.da);
        let dl = da.layout.clone();
        let (top, gt) = (pid.top(p), pid.top_mut(g));
        let dln = da.get_mut(TensorId(DLN));
        be.matmul_backward(dln, gt.wte, None, a.get(TensorId(LOGITS)), a.get(TensorId(LNF)), top.wte, n, d, vp);
        be.zero(da.get_mut(TensorId(DRES)));
        let [dres, dln] = da.disjoint_mut([dl.range(TensorId(DRES)), dl.range(TensorId(DLN))]);
        let last = &a.data[a.layout.range_at(TensorId(RESIDUAL3), self.n_layer - 1)];
        let (mean, rstd) = (a.get(TensorId(LNF_MEAN)), a.get(TensorId(LNF_RSTD)));
        be.layernorm_backward(dres, gt.lnfw, gt.lnfb, dln, last, top.lnfw, mean, rstd, n, d);
    }
}
