//! The one decoder shell every architecture runs in: `Decoder<Bk, A>` owns, once, what GPT-2, the
//! simplified blocks and Llama used to carry each — backend, parameter and gradient slabs, narrow
//! (fp8-o1/o2) storage and its layer-by-layer staging, activations, precision and FP8 scaling state,
//! the gradient scale, token checks, the loss, and the per-layer forward and backward loops. An
//! architecture (`Arch`) is the model's configuration plus its layer tables and the bodies of four
//! steps, each forward beside its backward: embed, one layer, the head (final norm and logits).
//!
//! Conventions (llm.c): arguments are outputs, saved-for-backward, inputs, dimensions. Parameter
//! gradients accumulate (`+=`); activation gradients overwrite (`=`), except the residual stream's
//! gradient (`dres`), which the head sets and each layer updates in place.
//!
//! The loop, for tokens (B, T), N = B*T:
//! ```text
//! forward:  stage_top; embed; for l in 0..L { stage_forward(l); layer(l) }; head -> logits (N, Vp);
//!           with targets: losses (N) = softmax_xent(logits) and the mean
//! backward: dlogits = (softmax - onehot) * grad_scale / K (in place of the probabilities; K = N, or
//!           the unmasked targets' count when some are IGNORE_TARGET, whose rows get 0); head_backward;
//!           for l in L-1..=0 { stage_backward(l); layer_backward(l); store_backward(l) }; embed_backward;
//!           store_top
//! ```
//! At the narrow levels `params` / `grads` hold the working set only (the tensors outside the blocks
//! and one block, `A::with_layers(1)`'s layout): `stage_*` decode layer l into it and return the
//! index (0) the layer's body must read, `store_*` encode its gradient to E4M3 (`crate::narrow`).

use std::ops::Range;
use std::sync::Arc;

use octet_core::scaling::{Recipe, ScalingMode};
use octet_core::{Error, Float, Layout, Result, Rng, Slab};
use octet_kernels::Backend;

use crate::acts::Acts;
use crate::lora::Lora;
use crate::narrow::{Narrow, stage_backward, stage_forward, stage_top, store_backward, store_top, switch_storage};
use crate::precision::{LinearScaling, Linears, Precision};

/// The dimensions the shell reads from every architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub vocab_size: usize,
    /// >= vocab_size: embedding rows rounded up for efficient GEMMs; the loss ignores the extra columns.
    pub padded_vocab: usize,
    pub max_seq_len: usize,
    pub n_layer: usize,
    pub n_embd: usize,
}

impl Dims {
    /// The checks every architecture makes of its dimensions (`n_head` heads of `n_embd`): an error
    /// names the config field.
    pub fn validate(&self, n_head: usize) -> Result<()> {
        let bad = |f: &str, m: String| Err(Error::config(f, m));
        if self.vocab_size == 0 || self.padded_vocab < self.vocab_size {
            return bad("padded_vocab", format!("{} must be >= vocab_size {} > 0", self.padded_vocab, self.vocab_size));
        }
        if n_head == 0 || !self.n_embd.is_multiple_of(n_head) {
            return bad("n_head", format!("n_embd {} must be divisible by n_head {n_head}", self.n_embd));
        }
        if self.n_layer == 0 || self.max_seq_len == 0 {
            return bad("n_layer", "n_layer and max_seq_len must be positive".into());
        }
        Ok(())
    }
}

/// Which rows of the output head a forward computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Every position: (B*T, Vp), as training needs.
    All,
    /// Each sequence's last position into rows 0..B, as generation needs.
    Last,
}

/// One forward or backward pass's view of the shell: the backend, the block linears at the model's
/// precision, the activations (`a`) and the activation-gradient scratch (`da`, unused by forward).
pub struct Pass<'a, Bk: Backend> {
    pub be: &'a Bk,
    pub lin: Linears<'a, Bk>,
    pub a: &'a mut Slab<Bk::F>,
    pub da: &'a mut Slab<Bk::F>,
    pub b: usize,
    pub t: usize,
    pub head: Head,
}

impl<Bk: Backend> Pass<'_, Bk> {
    /// Rows N = B*T.
    pub fn n(&self) -> usize {
        self.b * self.t
    }
}

/// Initial parameters for training from scratch, as one f32 vector in `layout` order
/// (`Arch::init_tensors` one tensor after another).
pub fn init_params<A: Arch>(c: &A, layout: &Layout, seed: u64) -> Vec<f32> {
    let mut p = vec![0.0f32; layout.total()];
    c.init_tensors(layout, seed, &mut |t, v| p[layout.specs()[t].range()].copy_from_slice(v));
    p
}

/// The loop of every architecture's `init_tensors`: each tensor of `layout` in order is filled by
/// `fill(name, values, rng)` (one `Rng` from `seed`, drawn tensor by tensor) in one scratch buffer the
/// size of the largest tensor, then handed to `f(tensor index, values)`. Narrow storage encodes each
/// as it comes, so no f32 copy of the whole model is ever held.
pub fn init_each(
    layout: &Layout,
    seed: u64,
    mut fill: impl FnMut(&str, &mut [f32], &mut Rng),
    f: &mut dyn FnMut(usize, &[f32]),
) {
    let mut rng = Rng::new(seed);
    let mut scratch = vec![0.0f32; layout.specs().iter().map(|s| s.numel()).max().unwrap_or(0)];
    for (t, s) in layout.specs().iter().enumerate() {
        let out = &mut scratch[..s.numel()];
        fill(&s.name, out, &mut rng);
        f(t, out);
    }
}

/// The `Arch` methods every architecture answers the same way, generated inside its `impl Arch`
/// (`arch_tables!(Gpt2Config);`): `dims` and `with_layers` from the config's fields of those names,
/// `validate` from its inherent method, and the parameter / activation tables from its module's free
/// functions `param_layout`, `decay_flags`, `init_tensors`, `act_layout` and `grad_act_layout` (resolved
/// where the macro is invoked). A model file then holds only what differs: its tables and its bodies.
macro_rules! arch_tables {
    ($cfg:ident) => {
        fn dims(&self) -> $crate::decoder::Dims {
            let $cfg { vocab_size, padded_vocab, max_seq_len, n_layer, n_embd, .. } = *self;
            $crate::decoder::Dims { vocab_size, padded_vocab, max_seq_len, n_layer, n_embd }
        }
        fn validate(&self) -> octet_core::Result<()> {
            $cfg::validate(self)
        }
        fn with_layers(&self, n: usize) -> Self {
            $cfg { n_layer: n, ..*self }
        }
        fn param_layout(&self) -> octet_core::Layout {
            param_layout(self)
        }
        fn decay_flags(&self, layout: &octet_core::Layout) -> Vec<bool> {
            decay_flags(layout)
        }
        fn init_tensors(&self, layout: &octet_core::Layout, seed: u64, f: &mut dyn FnMut(usize, &[f32])) {
            init_tensors(self, layout, seed, f)
        }
        fn act_layout(&self, b: usize, t: usize) -> octet_core::Layout {
            act_layout(self, b, t)
        }
        fn grad_act_layout(&self, b: usize, t: usize) -> octet_core::Layout {
            grad_act_layout(self, b, t)
        }
    };
}
pub(crate) use arch_tables;

/// An architecture: its configuration value, its tables and its step bodies. The shell calls the
/// bodies in the order of the module doc; `lw` is where layer l's weights are in `p` / `g` (l itself,
/// or 0 when the narrow levels stage one block).
pub trait Arch: Copy + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    /// Parameter (and activation) tensor ids, resolved once per parameter layout.
    type Ids: Send + Sync;

    fn dims(&self) -> Dims;
    fn validate(&self) -> Result<()>;
    /// The same model with `n` layers (`n = 1`: the narrow levels' working set).
    fn with_layers(&self, n: usize) -> Self;
    fn param_layout(&self) -> Layout;
    /// Weight decay per tensor of `layout` (this architecture's parameter layout).
    fn decay_flags(&self, layout: &Layout) -> Vec<bool>;
    /// Initial values for training from scratch, one tensor at a time in layout order:
    /// `f(tensor index, values)`.
    fn init_tensors(&self, layout: &Layout, seed: u64, f: &mut dyn FnMut(usize, &[f32]));
    /// What forward saves for a (B, T) batch; must hold `logits` (N, Vp) and `losses` (N).
    fn act_layout(&self, b: usize, t: usize) -> Layout;
    /// One layer's activation-gradient scratch plus the residual stream's gradient.
    fn grad_act_layout(&self, b: usize, t: usize) -> Layout;
    /// Largest cast operands of the block linears for N rows: (inputs, weights, output gradients).
    fn workspace(&self, n: usize) -> (usize, usize, usize);
    /// Block linears per layer; FP8 scaling state is `scaling[l * per_layer + k]`.
    fn linears_per_layer(&self) -> usize;
    /// Every linear with FP8 scaling state (per-layer ones, then any outside the layers).
    fn n_linears(&self) -> usize {
        self.dims().n_layer * self.linears_per_layer()
    }
    fn ids(&self, params: &Layout) -> Self::Ids;
    /// (IC, OC) of each block linear of a layer, in the order of its linear index k: the LoRA targets
    /// (`crate::lora`); empty: no LoRA for this architecture.
    fn linear_shapes(&self) -> Vec<(usize, usize)> {
        vec![]
    }
    /// Where the (OC, IC) weight of linear k of layer l is in the full parameter layout.
    fn linear_weight(&self, _layout: &Layout, _l: usize, _k: usize) -> Range<usize> {
        unreachable!("an architecture with linear_shapes says where their weights are")
    }

    /// Token (and position) embedding of `tokens` (B*T) into the first layer's input.
    fn embed_forward<Bk: Backend>(&self, ids: &Self::Ids, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, tokens: &[u32]);
    /// Layer `l` (weights at `lw`).
    fn layer_forward<Bk: Backend>(&self, ids: &Self::Ids, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, l: usize, lw: usize);
    /// Final norm and output head into `logits` (rows per `x.head`).
    fn head_forward<Bk: Backend>(&self, ids: &Self::Ids, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>);
    /// From dlogits (in `logits`) to the residual stream's gradient `dres` (set, not added).
    fn head_backward<Bk: Backend>(&self, ids: &Self::Ids, x: &mut Pass<'_, Bk>, p: &Slab<Bk::F>, g: &mut Slab<Bk::F>);
    /// Layer `l`'s backward: `dres` from its output's gradient to its input's.
    fn layer_backward<Bk: Backend>(
        &self,
        ids: &Self::Ids,
        x: &mut Pass<'_, Bk>,
        p: &Slab<Bk::F>,
        g: &mut Slab<Bk::F>,
        l: usize,
        lw: usize,
    );
    /// Embedding gradients from `dres`.
    fn embed_backward<Bk: Backend>(&self, ids: &Self::Ids, x: &mut Pass<'_, Bk>, g: &mut Slab<Bk::F>, tokens: &[u32]);
}

/// The logits (N, Vp) = xn (N, C) @ w^T, or with `Head::Last` row b = xn[b, T-1] @ w^T (b < B): the
/// output head every architecture ends with, kept in f32 at every level (as Transformer Engine leaves
/// the head).
#[allow(clippy::too_many_arguments)]
pub fn head_logits<Bk: Backend>(
    be: &Bk,
    head: Head,
    logits: &mut [Bk::F],
    xn: &[Bk::F],
    w: &[Bk::F],
    b: usize,
    t: usize,
    d: usize,
    vp: usize,
) {
    match head {
        Head::All => be.matmul_forward(logits, xn, w, None, b * t, d, vp),
        Head::Last => {
            for bi in 0..b {
                let row = &xn[(bi * t + t - 1) * d..][..d];
                be.matmul_forward(&mut logits[bi * vp..][..vp], row, w, None, 1, d, vp);
            }
        }
    }
}

/// A model of architecture `A` bound to a backend: parameters, their gradients, and activations for
/// one batch shape.
///
/// At `fp8-o1` / `fp8-o2` the weights and gradients live in `narrow` (f16 and E4M3, see
/// `crate::narrow`) and `params` / `grads` are only the f32 working set.
pub struct Decoder<Bk: Backend, A: Arch> {
    pub cfg: A,
    pub backend: Bk,
    pub params: Slab<Bk::F>,
    /// Allocated zeroed; pages the OS maps lazily, so inference never touches them.
    pub grads: Slab<Bk::F>,
    /// Narrow weight and gradient storage (O1/O2), else None.
    pub narrow: Option<Narrow>,
    /// Multiplies the loss gradient in backward (a power of two; the trainer lowers it when a
    /// gradient overflows). Gradients come out scaled by it.
    pub grad_scale: f64,
    pub(crate) ids: A::Ids,
    acts: Option<Acts<Bk::F>>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    /// Targets of the last forward that count (not `IGNORE_TARGET`): the mean's denominator.
    kept: usize,
    /// Mean loss of the last forward with targets.
    pub loss: Option<f64>,
    /// GEMM precision of the block linears (the output head stays f32).
    pub precision: Precision,
    pub scaling_mode: ScalingMode,
    /// FP8 scaling state per linear (empty unless the precision is FP8).
    pub scaling: Vec<LinearScaling>,
    /// LoRA adapters on the block linears (`enable_lora`); then only they are trained.
    pub lora: Option<Lora<Bk::F>>,
}

impl<Bk: Backend, A: Arch> Decoder<Bk, A> {
    /// A model with the given parameter values (laid out as `cfg.param_layout()`).
    pub fn new(cfg: A, backend: Bk, params: Vec<Bk::F>) -> Result<Self> {
        cfg.validate()?;
        let layout = Arc::new(cfg.param_layout());
        let ids = cfg.ids(&layout);
        let alloc = backend.allocator();
        let params = Slab::from_vec_in(layout.clone(), params, alloc.as_ref())?;
        let grads = Slab::zeros_in(layout, alloc.as_ref())?;
        Ok(Decoder {
            cfg,
            backend,
            params,
            grads,
            narrow: None,
            grad_scale: 1.0,
            ids,
            acts: None,
            tokens: vec![],
            targets: vec![],
            kept: 0,
            loss: None,
            precision: Precision::Fp32,
            scaling_mode: ScalingMode::Delayed,
            scaling: vec![],
            lora: None,
        })
    }

    /// A freshly initialised model (`Arch::init_tensors` with `seed`) at `precision`. At the narrow
    /// levels the weights are encoded tensor by tensor: no f32 copy of the whole model is ever made.
    pub fn init(cfg: A, backend: Bk, precision: Precision, recipe: &Recipe, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let full = cfg.param_layout();
        if !precision.is_narrow() {
            let mut p = vec![Bk::F::default(); full.total()];
            cfg.init_tensors(&full, seed, &mut |t, v| {
                for (o, &x) in p[full.specs()[t].range()].iter_mut().zip(v) {
                    *o = Bk::F::from_f32(x);
                }
            });
            return Decoder::new(cfg, backend, p)?.with_precision(precision, recipe);
        }
        let mut nw = Narrow::zeros(&full, &cfg.with_layers(1).param_layout(), cfg.dims().n_layer);
        cfg.init_tensors(&full, seed, &mut |t, v| nw.set_tensor(t, v));
        Decoder::with_narrow(cfg, backend, nw)?.with_precision(precision, recipe)
    }

    /// A model whose weights are `nw` (narrow storage over `cfg.param_layout()`'s units).
    pub fn with_narrow(cfg: A, backend: Bk, nw: Narrow) -> Result<Self> {
        if std::any::TypeId::of::<Bk::F>() != std::any::TypeId::of::<f32>() {
            return Err(Error::config("precision", "narrow weight storage is for f32 compute only"));
        }
        let working = cfg.with_layers(1);
        let n = working.param_layout().total();
        let mut m = Decoder::new(working, backend, vec![Bk::F::default(); n])?;
        m.cfg = cfg;
        m.narrow = Some(nw);
        Ok(m)
    }

    /// Run the block linears at `precision`, FP8 scaling per `recipe`. At fp8-o1 / fp8-o2 every
    /// parameter moves into f16 storage with per-unit scales (`crate::narrow`); it computes in f32.
    pub fn with_precision(mut self, precision: Precision, recipe: &Recipe) -> Result<Self> {
        recipe.validate()?;
        let (full, working) = (self.cfg.param_layout(), self.cfg.with_layers(1).param_layout());
        let n_layer = self.cfg.dims().n_layer;
        let (narrow, params, grads) = (&mut self.narrow, &mut self.params, &mut self.grads);
        let alloc = self.backend.allocator();
        if let Some(l) = switch_storage(precision, narrow, params, grads, full, working, n_layer, alloc.as_ref())? {
            self.ids = self.cfg.ids(&l);
        }
        self.precision = precision;
        self.scaling_mode = recipe.mode;
        self.scaling = if precision.is_fp8() { vec![LinearScaling::new(recipe); self.cfg.n_linears()] } else { vec![] };
        self.acts = None;
        Ok(self)
    }

    pub fn zero_grad(&mut self) {
        self.backend.zero(&mut self.grads.data);
        if let Some(lo) = &mut self.lora {
            self.backend.zero(&mut lo.grads.data);
        }
    }

    /// Add rank-`rank` LoRA adapters (scale alpha / rank; A random with `seed`, B zero) to every block
    /// linear; from now on the optimizer trains only them (`step::Optimizer::for_model`). Plain levels
    /// only (fp32, bf16, fp8-te).
    pub fn enable_lora(&mut self, rank: usize, alpha: f64, seed: u64) -> Result<()> {
        if self.narrow.is_some() {
            return Err(Error::config(
                "lora_rank",
                format!("LoRA runs at the plain levels (fp32, bf16, fp8-te), not {}", self.precision),
            ));
        }
        let alloc = self.backend.allocator();
        let n = self.cfg.dims().n_layer;
        self.lora = Some(Lora::new(self.cfg.linear_shapes(), n, rank, alpha, seed, alloc.as_ref())?);
        Ok(())
    }

    /// The f32 parameters with the adapters merged (W += s B A); None without LoRA.
    pub fn merged_params(&self) -> Option<Vec<f32>> {
        let lo = self.lora.as_ref()?;
        let mut p = self.params_f32();
        let layout = self.cfg.param_layout();
        lo.merge(&mut p, |l, k| self.cfg.linear_weight(&layout, l, k));
        Some(p)
    }

    /// Elements of activations, activation-gradient scratch and cast-operand workspace for the
    /// current batch shape.
    pub fn activation_elems(&self) -> (usize, usize, usize) {
        self.acts.as_ref().map_or((0, 0, 0), |a| (a.a.data.len(), a.d.data.len(), a.ws.elems()))
    }

    /// Every parameter in f32 over the full parameter layout (decoded from narrow storage at O1/O2).
    pub fn params_f32(&self) -> Vec<f32> {
        match &self.narrow {
            Some(nw) => nw.weights_f32(),
            None => self.params.data.iter().map(|&x| x.into() as f32).collect(),
        }
    }

    /// Allocate activations for (B, T) batches (forward does this on demand).
    pub fn ensure_acts(&mut self, b: usize, t: usize) -> Result<()> {
        if self.acts.as_ref().is_some_and(|a| a.b == b && a.t == t) {
            return Ok(());
        }
        let (al, dl) = (self.cfg.act_layout(b, t), self.cfg.grad_act_layout(b, t));
        let ws = self.cfg.workspace(b * t);
        let alloc = self.backend.allocator();
        self.acts = Some(Acts::alloc(b, t, al, dl, self.precision, ws, alloc.as_ref())?);
        Ok(())
    }

    /// Token checks every forward makes: shape (B, T) with 0 < T <= max_seq_len, ids below vocab_size.
    pub fn check_tokens(&self, tokens: &[u32], targets: Option<&[u32]>, b: usize, t: usize) -> Result<()> {
        let c = self.cfg.dims();
        if b == 0 || t == 0 || t > c.max_seq_len || tokens.len() != b * t || targets.is_some_and(|x| x.len() != b * t) {
            return Err(Error::Shape {
                name: "tokens".into(),
                expected: vec![b, t.min(c.max_seq_len)],
                found: vec![tokens.len()],
            });
        }
        // Targets may be IGNORE_TARGET (masked cross-entropy); inputs may not.
        let ignored = |&&x: &&u32| x == octet_kernels::IGNORE_TARGET;
        let real_targets = targets.unwrap_or(&[]).iter().filter(|x| !ignored(x));
        if let Some(&bad) = tokens.iter().chain(real_targets).find(|&&x| x as usize >= c.vocab_size) {
            return Err(Error::config("tokens", format!("token id {bad} >= vocab_size {}", c.vocab_size)));
        }
        Ok(())
    }

    /// Forward over `tokens` (B*T). With `targets`, returns the mean cross-entropy and leaves the
    /// softmax probabilities for backward; without, leaves raw logits (see `logits`). Targets equal to
    /// `octet_kernels::IGNORE_TARGET` are masked: the mean is over the other K positions (0 when K = 0)
    /// and backward's loss gradient is grad_scale / K per kept row (masked cross-entropy, SFT).
    pub fn forward(&mut self, tokens: &[u32], targets: Option<&[u32]>, b: usize, t: usize) -> Result<Option<f64>> {
        self.check_tokens(tokens, targets, b, t)?;
        self.run_forward(tokens, b, t, Head::All)?;
        self.loss = None;
        if let Some(tg) = targets {
            let c = self.cfg.dims();
            let n = b * t;
            self.targets.clear();
            self.targets.extend_from_slice(tg);
            let a = &mut self.acts.as_mut().expect("allocated by run_forward").a;
            let [losses, logits] = a.disjoint_mut([named(&a.layout, "losses"), named(&a.layout, "logits")]);
            self.backend.softmax_xent_forward(losses, logits, tg, n, c.vocab_size, c.padded_vocab);
            self.backend.synchronize();
            self.kept = kept_targets(tg);
            self.loss = Some(losses.iter().map(|&x| x.into()).sum::<f64>() / self.kept.max(1) as f64);
        }
        Ok(self.loss)
    }

    /// Forward for generation: the logits (B, Vp) of each sequence's last position only (the output
    /// head is skipped for the other rows). No backward after this.
    pub fn forward_last(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<&[Bk::F]> {
        self.check_tokens(tokens, None, b, t)?;
        self.run_forward(tokens, b, t, Head::Last)?;
        self.loss = None;
        let vp = self.cfg.dims().padded_vocab;
        self.backend.synchronize();
        let a = &self.acts.as_ref().expect("allocated by run_forward").a;
        Ok(&a.data[named(&a.layout, "logits")][..b * vp])
    }

    /// Per-position losses (B*T) of the last forward with targets (0 at masked positions).
    pub fn row_losses(&self) -> &[Bk::F] {
        self.backend.synchronize();
        let a = &self.acts.as_ref().expect("forward first").a;
        &a.data[named(&a.layout, "losses")]
    }

    /// Raw logits (B*T, Vp) of the last forward without targets.
    pub fn logits(&self) -> &[Bk::F] {
        self.backend.synchronize();
        let a = &self.acts.as_ref().expect("forward first").a;
        &a.data[named(&a.layout, "logits")]
    }

    fn run_forward(&mut self, tokens: &[u32], b: usize, t: usize, head: Head) -> Result<()> {
        self.ensure_acts(b, t)?;
        self.tokens.clear();
        self.tokens.extend_from_slice(tokens);
        stage_top(&self.backend, self.narrow.as_ref(), &mut self.params.data);
        let (cfg, be, ids) = (self.cfg, &self.backend, &self.ids);
        let acts = self.acts.as_mut().expect("allocated above");
        let lin = (self.precision, self.scaling_mode, cfg.linears_per_layer());
        if let Some(lo) = &mut self.lora {
            lo.ensure_rows(b * t)?;
        }
        let mut x = pass(be, lin, &mut self.scaling, acts, head, self.lora.as_mut());
        cfg.embed_forward(ids, &mut x, &self.params, tokens);
        for l in 0..cfg.dims().n_layer {
            let lw = stage_forward(be, self.narrow.as_ref(), l, &mut self.params.data);
            cfg.layer_forward(ids, &mut x, &self.params, l, lw);
        }
        cfg.head_forward(ids, &mut x, &self.params);
        Ok(())
    }

    /// Backward of the last forward with targets: parameter gradients accumulate into `grads`.
    pub fn backward(&mut self) -> Result<()> {
        if self.loss.is_none() {
            return Err(Error::Other("backward needs a forward with targets first".into()));
        }
        let (cfg, be, ids) = (self.cfg, &self.backend, &self.ids);
        let c = cfg.dims();
        let acts = self.acts.as_mut().expect("forward allocated activations");
        let (b, t) = (acts.b, acts.t);
        let n = b * t;
        let (p, g) = (&mut self.params, &mut self.grads);
        if let Some(nw) = &mut self.narrow {
            nw.begin_backward();
        }
        let logits = named(&acts.a.layout, "logits");
        be.softmax_xent_backward(
            &mut acts.a.data[logits],
            &self.targets,
            self.grad_scale / self.kept.max(1) as f64,
            n,
            c.vocab_size,
            c.padded_vocab,
        );
        let lin = (self.precision, self.scaling_mode, cfg.linears_per_layer());
        let mut x = pass(be, lin, &mut self.scaling, acts, Head::All, self.lora.as_mut());
        cfg.head_backward(ids, &mut x, p, g);
        for l in (0..c.n_layer).rev() {
            let lw = stage_backward(be, self.narrow.as_ref(), l, &mut p.data, &mut g.data);
            cfg.layer_backward(ids, &mut x, p, g, l, lw);
            store_backward(be, self.narrow.as_mut(), l, &g.data);
        }
        cfg.embed_backward(ids, &mut x, g, &self.tokens);
        store_top(be, self.narrow.as_mut(), &g.data);
        // The gradients are read on the host next (clipping, the optimizer).
        be.synchronize();
        Ok(())
    }
}

/// A pass over `acts`' batch: the block linears at (level, scaling mode, linears per layer).
fn pass<'a, Bk: Backend>(
    be: &'a Bk,
    (prec, mode, per_layer): (Precision, ScalingMode, usize),
    scaling: &'a mut [LinearScaling],
    acts: &'a mut Acts<Bk::F>,
    head: Head,
    lora: Option<&'a mut Lora<Bk::F>>,
) -> Pass<'a, Bk> {
    let (b, t) = (acts.b, acts.t);
    Pass {
        be,
        lin: Linears { be, prec, mode, scaling, ws: &mut acts.ws, per_layer, lora },
        a: &mut acts.a,
        da: &mut acts.d,
        b,
        t,
        head,
    }
}

/// Targets that take part in the loss (not `IGNORE_TARGET`).
fn kept_targets(targets: &[u32]) -> usize {
    targets.iter().filter(|&&x| x != octet_kernels::IGNORE_TARGET).count()
}

/// Range of the tensor `name` of an activation layout.
fn named(l: &Layout, name: &str) -> Range<usize> {
    l.range(l.expect_id(name))
}
