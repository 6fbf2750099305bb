//! FP8-LM's low-precision AdamW (Peng et al. 2023, MS-AMP `FP8Adam`): the moments m and v (and, with
//! `update_master`, the master weights) are stored in narrow formats with per-tensor power-of-two
//! scales, and every update runs in f32 registers in two stages.
//!
//! Storage: `octet_core::scaled::ScaledBuf` (one buffer over a `Layout` in a `StateFormat`, with
//! power-of-two tensor or block scales; its module doc has the formats and their rounding).
//!
//! The update (same formula and f32 operation order as `octet_kernels::cpu::adamw_update`, so F32/F32 is bit-identical):
//! `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m/c1 / (sqrt(v/c2) + eps) + wd p)`,
//! `c1 = 1 - b1^t`, `c2 = 1 - b2^t`. The new m and v feed the parameter update unrounded; only what is
//! stored for the next step is rounded (FP8-LM).
//! - Stage 1, read only: for fixed chunks of `CHUNK` elements (never crossing a tensor boundary),
//!   decode m, v (and p) into f32 scratch, compute the new values, and keep only the amaxes of g and
//!   of the new m, v (p). Per-tensor amaxes are the max over the tensor's chunks: exact and
//!   independent of the order (no f32 copy of a whole tensor is ever made). Stage 1 computes only
//!   what some scale needs, plus what proves the results finite (`Probe`): for f32 parameters the
//!   division and square root run once, in stage 2.
//! - If any gradient (or any new value) is NaN or inf, nothing is written: the step is skipped, the
//!   step counter stays, and `UpdateReport::skipped` tells the trainer to back off its loss scale.
//!   (Parameters are assumed finite on entry.)
//! - Stage 2: the new scales come from the stage-1 amaxes; each chunk is recomputed (bit-identical to
//!   stage 1) and encoded. Block formats choose each block's scale from the block's own amax here.
//!
//! Error of a stored state, which the tests turn into parameter bounds (tests/fp8_adamw.rs): rounding
//! m each step perturbs the next m by `b1 * u_m |m|`, and the perturbations decay by `b1` per step;
//! rounding v perturbs v relatively by `u_v` per step, decaying by `b2`. The update's sensitivity is
//! `d(m/sqrt(v)) = dm/sqrt(v) - (m/sqrt(v)) dv/(2v)`, and `|m|/sqrt(v)` is bounded for Adam (Cauchy-
//! Schwarz, `b1^2 < b2`), so each step moves p by at most `lr * C * (u_m + u_v / 2)`-ish beyond the
//! exact update, C a small constant of b1, b2 and t. This holds while elements stay in the format's
//! normal range, and the second moment in FP8 fails exactly there: per-tensor E4M3 covers 2^18 of v
//! (max over min subnormal), i.e. only 2^9 of |g|, and an element whose v flushed to zero while its m
//! did not takes a step of `lr m^/eps`, ~10^4 times too large (FP8-LM: an FP8 v diverges).
//!
//! Hence the default, FP8-LM O2: m E4M3, v F16. The pairing is safe by a range ordering: F16 with
//! tensor scaling covers 2^40 of v = 2^20 of |g|, more than E4M3 m's 2^18 below its amax, so an
//! element whose v underflows has lost its m too and merely restarts its moments. The ordering is
//! what matters, not the widths: f32 m with F16 v breaks it (m survives, v flushes), and so does
//! `E4M3Block128` v inside a block (a Gaussian block of 128 has ~1% of its |g| below amax / 470).
//! Block scales change only which elements are subnormal, never the rounding of normal ones (scales
//! are powers of two), so on well-conditioned tensors a block format equals its per-tensor one.

//! Work is split into fixed chunks processed by rayon; every value depends only on its own element
//! (and the per-tensor scales, reduced with an order-independent max), so results do not depend on
//! the thread count.

use std::sync::Arc;

use octet_core::Layout;
use octet_core::codec::amax_bits;
use octet_core::scaled::{
    BufRef, CHUNK, DataMut, Item, Part, ScaledBuf, StateFormat, decode_run, encode_run, layout_items, split_parts,
};
use octet_core::scaling::compute_scale;
use rayon::prelude::*;

use crate::adamw::AdamWConfig;

/// Which storage formats the moments use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateFormats {
    pub m: StateFormat,
    pub v: StateFormat,
}

impl StateFormats {
    /// Plain f32 AdamW (same results as `AdamW`).
    pub const F32: StateFormats = StateFormats { m: StateFormat::F32, v: StateFormat::F32 };
    /// FP8-LM O2 / O3: m in E4M3, v in f16 with tensor scaling (3 bytes per parameter).
    pub const O2: StateFormats = StateFormats { m: StateFormat::E4M3, v: StateFormat::F16 };
}

impl Default for StateFormats {
    fn default() -> Self {
        StateFormats::O2
    }
}

/// What one `update` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateReport {
    /// True if nothing was changed because a gradient (or, on overflow, a new state or parameter)
    /// was NaN or inf: the trainer should lower its loss / gradient scale and try again.
    pub skipped: bool,
    /// The first tensor (layout index) with a non-finite gradient or result, if any.
    pub nonfinite_tensor: Option<usize>,
    /// max |g| over all tensors (NaN if any gradient is NaN, else inf if any is inf).
    pub grad_amax: f32,
    /// Completed steps after this call (unchanged when skipped).
    pub step: u64,
}

/// Per-item (then per-tensor) amaxes as |x| bit patterns: orders like the values, NaN above inf.
#[derive(Clone, Copy, Debug, Default)]
struct Amaxes {
    g: u32,
    m: u32,
    v: u32,
    p: u32,
}

impl Amaxes {
    fn max(self, o: Amaxes) -> Amaxes {
        Amaxes { g: self.g.max(o.g), m: self.m.max(o.m), v: self.v.max(o.v), p: self.p.max(o.p) }
    }
    fn all_finite(&self) -> bool {
        [self.g, self.m, self.v, self.p].iter().all(|&b| f32::from_bits(b).is_finite())
    }
}

/// How much of the update stage 1 computes: the least that yields every amax a new scale needs and
/// still proves that stage 2 writes only finite values.
/// - `Grads`: only g's amax. Enough when no state has per-tensor scales (F32, Bf16, block formats):
///   with every |g| <= `G_SAFE` < 2^64, g^2 cannot overflow and the new m and v, convex
///   combinations of finite values and g, g^2, are finite.
/// - `Moments`: the new m and v too (per-tensor scaled m or v, or |g| above `G_SAFE`).
/// - `Full`: the new p too (a scaled master's scale, or when `lr max|g| / eps` could approach f32's
///   max: then an element with v = 0 could step to inf, or to NaN with eps = 0). Otherwise the step
///   `lr (m^ / (sqrt(v^) + eps) + wd p)` is below `lr (max|g| / eps + wd |p|)` and stays finite for
///   finite parameters (|m^| <= max|g| as a weighted mean of gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Probe {
    Grads,
    Moments,
    Full,
}

/// Below sqrt(f32::MAX) = 2^64 with room for rounding.
const G_SAFE: f32 = 1e19;
/// Largest update magnitude `lr max|g| / eps` for which stage 1 skips computing p.
const STEP_SAFE: f64 = 1e36;

impl Probe {
    fn needed_for_scales(m: &ScaledBuf, v: &ScaledBuf, params: &Params<'_>) -> Probe {
        let per_tensor = |b: &ScaledBuf| b.format().is_scaled() && b.format().block().is_none();
        if matches!(params, Params::Master(b) if b.format().is_scaled()) {
            Probe::Full
        } else if per_tensor(m) || per_tensor(v) {
            Probe::Moments
        } else {
            Probe::Grads
        }
    }
    /// The probe needed to vouch for finite results given max|g| (None if g itself is not finite:
    /// the step is skipped anyway).
    fn needed_for_finiteness(g_amax: f32, lr: f64, eps: f64) -> Option<Probe> {
        let step = lr.abs() * g_amax as f64 / eps;
        if !g_amax.is_finite() {
            None
        } else if step.is_nan() || step > STEP_SAFE {
            Some(Probe::Full) // also eps = 0 (x / 0 = inf, 0 / 0 = NaN)
        } else if g_amax > G_SAFE {
            Some(Probe::Moments)
        } else {
            Some(Probe::Grads)
        }
    }
}

/// The f32 constants of one tensor's update at step `t`.
#[derive(Clone, Copy)]
struct Coeffs {
    b1: f32,
    b2: f32,
    eps: f32,
    lr: f32,
    c1: f32,
    c2: f32,
    wd: f32,
}

impl Coeffs {
    /// Exactly the conversions `octet_kernels::cpu::adamw_update` makes.
    fn new(cfg: &AdamWConfig, t: u64, lr: f64, decay: bool) -> Coeffs {
        Coeffs {
            b1: cfg.beta1 as f32,
            b2: cfg.beta2 as f32,
            eps: cfg.eps as f32,
            lr: lr as f32,
            c1: (1.0 - cfg.beta1.powi(t as i32)) as f32,
            c2: (1.0 - cfg.beta2.powi(t as i32)) as f32,
            wd: if decay { cfg.weight_decay as f32 } else { 0.0 },
        }
    }
}

/// The AdamW element update on decoded values, in place; same expression as `octet_kernels::cpu::adamw_update`.
#[inline(always)]
fn adam_chunk(k: &Coeffs, g: &[f32], m: &mut [f32], v: &mut [f32], p: &mut [f32]) {
    let Coeffs { b1, b2, eps, lr, c1, c2, wd } = *k;
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= lr * ((m[i] / c1) / ((v[i] / c2).sqrt() + eps) + wd * p[i]);
    }
}

/// The moment half of `adam_chunk` (bit-identical m and v), for stage 1 when p's amax is not needed.
#[inline(always)]
fn moments_chunk(k: &Coeffs, g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let Coeffs { b1, b2, .. } = *k;
    let n = m.len();
    let (g, v) = (&g[..n], &mut v[..n]);
    for i in 0..n {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
    }
}

/// Defines `$name(args)`, which runs `$body(args)` compiled for AVX2 when the CPU has it (8 f32 lanes
/// for the codecs, divides and square roots instead of SSE2's 4), else for the baseline target.
/// `$body` and all it calls are `#[inline(always)]`, so the whole item is built at that width.
/// Results are bit-identical: the same IEEE operations, each correctly rounded at any width, and
/// Rust never contracts to FMA.
macro_rules! avx2_dispatch {
    ($name:ident, $avx2:ident, $body:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx2($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }
    };
}

/// What stage 1 reads, shared by every item.
#[derive(Clone, Copy)]
struct Stage1<'a> {
    probe: Probe,
    coeffs: &'a [Coeffs],
    grads: Grads<'a>,
    m: BufRef<'a>,
    v: BufRef<'a>,
    p: BufRef<'a>,
}

avx2_dispatch!(stage1_item, stage1_item_avx2, stage1_item_body, (s: &Stage1<'_>, scratch: &mut Scratch, it: &Item) -> Amaxes);

/// Stage 1 for one item: the amaxes `s.probe` asks for (see `Probe`).
#[inline(always)]
fn stage1_item_body(s: &Stage1<'_>, scratch: &mut Scratch, it: &Item) -> Amaxes {
    let [ms, vs, ps, gs] = scratch.parts(it.len);
    let g = s.grads.item(it, gs);
    let k = &s.coeffs[it.tensor];
    let mut a = Amaxes { g: amax_bits(g), ..Amaxes::default() };
    if s.probe == Probe::Grads {
        return a;
    }
    s.m.decode_item(it, ms);
    s.v.decode_item(it, vs);
    if s.probe == Probe::Full {
        s.p.decode_item(it, ps);
        adam_chunk(k, g, ms, vs, ps);
        a.p = amax_bits(ps);
    } else {
        moments_chunk(k, g, ms, vs);
    }
    (a.m, a.v) = (amax_bits(ms), amax_bits(vs));
    a
}

/// One buffer in stage 2: its format, margin, and per-tensor scales before and after the step
/// (1.0 for unscaled and block formats).
struct Stage2Buf<'a> {
    format: StateFormat,
    margin: i32,
    old: &'a [f32],
    new: &'a [f32],
}

/// What stage 2 reads, shared by every item.
struct Stage2<'a> {
    coeffs: &'a [Coeffs],
    grads: Grads<'a>,
    m: Stage2Buf<'a>,
    v: Stage2Buf<'a>,
    p: Stage2Buf<'a>,
}

avx2_dispatch!(
    stage2_item,
    stage2_item_avx2,
    stage2_item_body,
    (s: &Stage2<'_>, scratch: &mut Scratch, it: &Item, m: Part<'_>, v: Part<'_>, p: Part<'_>)
);

/// Stage 2 for one item: decode with the old scales (a part's block scales are still the old ones
/// here), recompute exactly as stage 1 did, encode with the new scales.
#[inline(always)]
fn stage2_item_body(s: &Stage2<'_>, scratch: &mut Scratch, it: &Item, m: Part<'_>, v: Part<'_>, p: Part<'_>) {
    let t = it.tensor;
    let [ms, vs, ps, gs] = scratch.parts(it.len);
    let ((md, mb), (vd, vb), (pd, pb)) = (m, v, p);
    decode_run(s.m.format, md.as_ref(), run_scales(mb, s.m.old, t), ms);
    decode_run(s.v.format, vd.as_ref(), run_scales(vb, s.v.old, t), vs);
    let g = s.grads.item(it, gs);
    if let DataMut::F32(p) = pd {
        // f32 parameters are updated in place: no copy through scratch.
        adam_chunk(&s.coeffs[t], g, ms, vs, p);
    } else {
        decode_run(s.p.format, pd.as_ref(), run_scales(pb, s.p.old, t), ps);
        adam_chunk(&s.coeffs[t], g, ms, vs, ps);
        encode_part(&s.p, t, ps, pb, pd);
    }
    encode_part(&s.m, t, ms, mb, md);
    encode_part(&s.v, t, vs, vb, vd);
}

/// Where the parameters live: plain f32, or a `ScaledBuf` (e.g. f16 master weights).
enum Params<'a> {
    Plain(&'a mut [f32]),
    Master(&'a mut ScaledBuf),
}

/// Where the gradients live: plain f32, or a `ScaledBuf` (FP8-LM O1/O2 keep them in E4M3) read
/// through a multiplier (clipping factor / gradient scale), decoded per item into scratch.
#[derive(Clone, Copy)]
enum Grads<'a> {
    Plain(&'a [f32]),
    Scaled { buf: BufRef<'a>, mult: f32 },
}

impl Grads<'_> {
    /// The gradients of item `it`: a slice of the plain buffer, or decoded (times `mult`) into `scratch`.
    #[inline(always)]
    fn item<'s>(&'s self, it: &Item, scratch: &'s mut [f32]) -> &'s [f32] {
        match self {
            Grads::Plain(g) => &g[it.range()],
            Grads::Scaled { buf, mult } => {
                buf.decode_item(it, scratch);
                if *mult != 1.0 {
                    scratch.iter_mut().for_each(|x| *x *= mult);
                }
                scratch
            }
        }
    }
}

/// FP8-LM AdamW: moments stored as `ScaledBuf`s, two-stage update (see the module doc).
#[derive(Clone, Debug)]
pub struct Fp8AdamW {
    pub cfg: AdamWConfig,
    pub m: ScaledBuf,
    pub v: ScaledBuf,
    /// Completed (not skipped) steps; the next update uses t = step + 1.
    pub step: u64,
    /// One flag per tensor of the layout: apply weight decay?
    decay: Vec<bool>,
    /// Work items tiling the layout (fixed: results never depend on the thread count).
    items: Vec<Item>,
}

impl Fp8AdamW {
    pub fn new(layout: Arc<Layout>, decay: Vec<bool>, cfg: AdamWConfig, formats: StateFormats) -> Self {
        assert_eq!(decay.len(), layout.specs().len(), "one decay flag per tensor");
        let items = layout_items(&layout);
        let (m, v) = (ScaledBuf::zeros(formats.m, layout.clone()), ScaledBuf::zeros(formats.v, layout));
        Fp8AdamW { cfg, m, v, step: 0, decay, items }
    }

    /// FP8-LM's O2 optimizer: m E4M3, v F16 with tensor scaling.
    pub fn o2(layout: Arc<Layout>, decay: Vec<bool>, cfg: AdamWConfig) -> Self {
        Fp8AdamW::new(layout, decay, cfg, StateFormats::O2)
    }

    pub fn formats(&self) -> StateFormats {
        StateFormats { m: self.m.format(), v: self.v.format() }
    }

    pub fn layout(&self) -> &Arc<Layout> {
        self.m.layout()
    }

    /// Bytes of optimizer state (m and v with their scales).
    pub fn state_bytes(&self) -> usize {
        self.m.bytes() + self.v.bytes()
    }

    /// One AdamW step of f32 `params` (laid out as `self.layout()`) with learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) -> UpdateReport {
        assert_eq!(params.len(), self.layout().total(), "params length vs layout");
        assert_eq!(grads.len(), self.layout().total(), "grads length vs layout");
        self.step_impl(Params::Plain(params), Grads::Plain(grads), lr)
    }

    /// One AdamW step of weights stored in `master` (same layout; e.g. F16 master weights with
    /// tensor scaling, FP8-LM O2/O3): decoded, updated in f32, re-encoded with scales from the new
    /// weights' amax.
    pub fn update_master(&mut self, master: &mut ScaledBuf, grads: &[f32], lr: f64) -> UpdateReport {
        let same = Arc::ptr_eq(master.layout(), self.layout()) || **master.layout() == **self.layout();
        assert!(same, "master weights layout vs optimizer layout");
        assert_eq!(grads.len(), self.layout().total(), "grads length vs layout");
        self.step_impl(Params::Master(master), Grads::Plain(grads), lr)
    }

    /// `update_master` with gradients stored in a `ScaledBuf` of the same layout (FP8-LM O1/O2: E4M3
    /// weight gradients), each read as `decode(g) * grad_mult` (`grad_mult` folds in the clipping
    /// factor and the inverse gradient scale). Never materialises an f32 copy of the gradients.
    pub fn update_master_scaled(
        &mut self,
        master: &mut ScaledBuf,
        grads: &ScaledBuf,
        grad_mult: f32,
        lr: f64,
    ) -> UpdateReport {
        let same = |b: &ScaledBuf| Arc::ptr_eq(b.layout(), self.layout()) || **b.layout() == **self.layout();
        assert!(same(master) && same(grads), "master / gradient layout vs optimizer layout");
        self.step_impl(Params::Master(master), Grads::Scaled { buf: grads.as_ref(), mult: grad_mult }, lr)
    }

    fn step_impl(&mut self, mut params: Params<'_>, grads: Grads<'_>, lr: f64) -> UpdateReport {
        let layout = self.m.layout().clone();
        let t = self.step + 1;
        let coeffs: Vec<Coeffs> = self.decay.iter().map(|&d| Coeffs::new(&self.cfg, t, lr, d)).collect();
        let (m, v, items) = (&mut self.m, &mut self.v, &self.items);
        let ntensors = layout.specs().len();

        // Stage 1 (read only): amaxes of g and of whichever new values need them, per item, then per
        // tensor (see `Probe`).
        let mut probe = Probe::needed_for_scales(m, v, &params);
        let per_item = loop {
            let stage1 = Stage1 {
                probe,
                coeffs: &coeffs,
                grads,
                m: m.as_ref(),
                v: v.as_ref(),
                p: match &params {
                    Params::Plain(p) => BufRef::plain(p, &layout),
                    Params::Master(b) => b.as_ref(),
                },
            };
            let per_item: Vec<Amaxes> =
                items.par_iter().map_init(Scratch::new, |scratch, it| stage1_item(&stage1, scratch, it)).collect();
            let g = f32::from_bits(per_item.iter().map(|a| a.g).max().unwrap_or(0));
            match Probe::needed_for_finiteness(g, lr, self.cfg.eps) {
                Some(more) if more > probe => probe = more,
                _ => break per_item,
            }
        };
        let mut amax = vec![Amaxes::default(); ntensors];
        for (it, a) in items.iter().zip(&per_item) {
            amax[it.tensor] = amax[it.tensor].max(*a);
        }
        let grad_amax = f32::from_bits(amax.iter().map(|a| a.g).max().unwrap_or(0));
        if let Some(bad) = amax.iter().position(|a| !a.all_finite()) {
            return UpdateReport { skipped: true, nonfinite_tensor: Some(bad), grad_amax, step: self.step };
        }

        // Stage 2: new per-tensor scales from the amaxes, recompute (bit-identical), encode.
        let (old_m, new_m) = (per_tensor_scales(m), new_scales(m, &amax, |a| a.m));
        let (old_v, new_v) = (per_tensor_scales(v), new_scales(v, &amax, |a| a.v));
        let (p_format, p_margin, old_p, new_p) = match &params {
            Params::Plain(_) => (StateFormat::F32, 0, vec![1.0; ntensors], vec![1.0; ntensors]),
            Params::Master(b) => (b.format(), b.margin(), per_tensor_scales(b), new_scales(b, &amax, |a| a.p)),
        };
        let stage2 = Stage2 {
            coeffs: &coeffs,
            grads,
            m: Stage2Buf { format: m.format(), margin: m.margin(), old: &old_m, new: &new_m },
            v: Stage2Buf { format: v.format(), margin: v.margin(), old: &old_v, new: &new_v },
            p: Stage2Buf { format: p_format, margin: p_margin, old: &old_p, new: &new_p },
        };
        let (m_data, m_scales) = m.parts_mut();
        let m_parts = split_parts(m_data, m_scales, stage2.m.format, items);
        let (v_data, v_scales) = v.parts_mut();
        let v_parts = split_parts(v_data, v_scales, stage2.v.format, items);
        let p_parts = match &mut params {
            Params::Plain(p) => split_parts(DataMut::F32(p), &mut [], StateFormat::F32, items),
            Params::Master(b) => {
                let (data, scales) = b.parts_mut();
                split_parts(data, scales, p_format, items)
            }
        };
        items
            .par_iter()
            .zip(m_parts)
            .zip(v_parts)
            .zip(p_parts)
            .for_each_init(Scratch::new, |scratch, (((it, m), v), p)| stage2_item(&stage2, scratch, it, m, v, p));
        store_scales(m, &new_m);
        store_scales(v, &new_v);
        if let Params::Master(b) = &mut params {
            store_scales(b, &new_p);
        }
        self.step = t;
        UpdateReport { skipped: false, nonfinite_tensor: None, grad_amax, step: t }
    }
}

/// Scales for decoding one item: its block scales, or its tensor's (old) scale.
#[inline(always)]
fn run_scales<'s>(blocks: &'s [f32], per_tensor: &'s [f32], tensor: usize) -> &'s [f32] {
    if blocks.is_empty() { &per_tensor[tensor..=tensor] } else { blocks }
}

/// Encode one item of tensor `t`: block formats use (and update) their block scales `blocks`,
/// per-tensor formats the tensor's new scale.
#[inline(always)]
fn encode_part(buf: &Stage2Buf<'_>, t: usize, src: &[f32], blocks: &mut [f32], dst: DataMut<'_>) {
    if buf.format.block().is_some() {
        encode_run(buf.format, buf.margin, src, blocks, dst);
    } else {
        encode_run(buf.format, buf.margin, src, &mut [buf.new[t]], dst);
    }
}

/// The per-tensor scales of `buf` (1.0 for block formats, whose scales live with their blocks).
fn per_tensor_scales(buf: &ScaledBuf) -> Vec<f32> {
    let n = buf.layout().specs().len();
    if buf.format().block().is_some() { vec![1.0; n] } else { (0..n).map(|i| buf.scale(i)).collect() }
}

/// Next per-tensor scales of `buf` from each tensor's new amax (unchanged for unscaled and block
/// formats, and where the amax is zero).
fn new_scales(buf: &ScaledBuf, amax: &[Amaxes], field: impl Fn(&Amaxes) -> u32) -> Vec<f32> {
    let old = per_tensor_scales(buf);
    match (buf.format().fp_max(), buf.format().block()) {
        (Some(fp_max), None) => amax
            .iter()
            .zip(old)
            .map(|(a, prev)| compute_scale(f32::from_bits(field(a)), fp_max, buf.margin(), prev))
            .collect(),
        _ => old,
    }
}

fn store_scales(buf: &mut ScaledBuf, new: &[f32]) {
    for (i, &s) in new.iter().enumerate() {
        buf.set_scale(i, s);
    }
}

/// Scratch for one item's decoded m, v, p: allocated once per rayon job (`map_init`), not per item,
/// so its zeroing is not paid per chunk.
struct Scratch {
    m: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
    g: Vec<f32>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { m: vec![0.0; CHUNK], v: vec![0.0; CHUNK], p: vec![0.0; CHUNK], g: vec![0.0; CHUNK] }
    }
    /// The first `n` elements of each buffer: m, v, p, g.
    fn parts(&mut self, n: usize) -> [&mut [f32]; 4] {
        [&mut self.m[..n], &mut self.v[..n], &mut self.p[..n], &mut self.g[..n]]
    }
}
