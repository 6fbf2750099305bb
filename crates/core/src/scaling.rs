//! Per-tensor FP8 scaling (FP8-LM; MS-AMP's `ScalingMeta` / `ScalingTensor`): power-of-two scales
//! from amax, delayed and just-in-time scaling, the per-role `Recipe`, and `Fp8Tensor`, FP8 bytes that
//! never travel without the metadata needed to read them.
//!
//! A tensor `x` is stored as `q = encode(x * scale)` and read back as `decode(q) * scale_inv`, with
//! `scale = 2^k` chosen so that `amax * scale` lands just under the format's max:
//! `k = floor(log2(fp_max / amax)) - margin`. Powers of two make scaling exact (only the FP8 rounding
//! loses information) and `scale_inv = 1 / scale` exact too.
//!
//! Choices (with the reference they follow):
//! - `k` is the largest integer with `amax * 2^k <= fp_max`, found from exponents and significands,
//!   so it never overshoots by one as `log2` of a rounded quotient can; clamped to
//!   +-`MAX_SCALE_EXPONENT` so scale and scale_inv stay normal f32.
//! - A zero, inf or NaN amax keeps the previous scale (MS-AMP `compute_scaling_factor`).
//! - Every cast records its amax in the history, NaN and inf included (MS-AMP and Transformer Engine
//!   both do), and the window max propagates NaN: a non-finite amax therefore freezes the delayed scale
//!   until it has left the window, `window` updates later.
//! - Delayed casts are just-in-time while the history is warming up (fewer than `window` amaxes
//!   recorded) and always when `window == 1`: MS-AMP's `is_in_time_scaling`.

use serde::{Deserialize, Serialize};

use crate::fp8::{self, Fp8Format};
use crate::{Error, Result};

/// Scale exponents are clamped to `[-MAX_SCALE_EXPONENT, MAX_SCALE_EXPONENT]`: f32 normal exponents
/// run from -126 to 127, so both `2^k` and `2^-k` stay normal (and exactly reciprocal).
pub const MAX_SCALE_EXPONENT: i32 = 126;

/// How a cast chooses its scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalingMode {
    /// Scale from the max over the amax history of earlier casts (one pass over the data; the
    /// Transformer Engine / FP8-LM default). Just-in-time during warm-up and for window 1 (MS-AMP).
    #[default]
    Delayed,
    /// Scale from this tensor's own amax ("current scaling"; two passes over the data).
    JustInTime,
}

/// Ring buffer of the last `window` amax values (the newest overwrites the oldest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "AmaxHistoryRepr", try_from = "AmaxHistoryRepr")]
pub struct AmaxHistory {
    window: usize,
    /// At most `window` values; once full, `next` is the slot of the oldest.
    values: Vec<f32>,
    next: usize,
}

/// Serialised form: the window and the values oldest first, validated on load.
#[derive(Serialize, Deserialize)]
struct AmaxHistoryRepr {
    window: usize,
    values: Vec<f32>,
}

impl From<AmaxHistory> for AmaxHistoryRepr {
    fn from(h: AmaxHistory) -> Self {
        AmaxHistoryRepr { window: h.window, values: h.iter().collect() }
    }
}

impl TryFrom<AmaxHistoryRepr> for AmaxHistory {
    type Error = String;
    fn try_from(r: AmaxHistoryRepr) -> std::result::Result<Self, String> {
        if r.window == 0 || r.values.len() > r.window {
            return Err(format!("amax history: window {} must be >= 1 and >= the {} values", r.window, r.values.len()));
        }
        let mut h = AmaxHistory::new(r.window);
        r.values.into_iter().for_each(|v| h.push(v));
        Ok(h)
    }
}

impl AmaxHistory {
    /// An empty history. Panics if `window == 0` (`Recipe::validate` reports that as an error).
    pub fn new(window: usize) -> Self {
        assert!(window >= 1, "amax history window must be at least 1");
        AmaxHistory { window, values: Vec::with_capacity(window), next: 0 }
    }
    pub fn window(&self) -> usize {
        self.window
    }
    pub fn len(&self) -> usize {
        self.values.len()
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    pub fn is_full(&self) -> bool {
        self.values.len() == self.window
    }
    /// Record an amax, forgetting the oldest once `window` are held.
    pub fn push(&mut self, amax: f32) {
        if self.is_full() {
            self.values[self.next] = amax;
            self.next = (self.next + 1) % self.window;
        } else {
            self.values.push(amax);
        }
    }
    /// Max over the window: 0 when empty (which keeps the scale), NaN if any value is NaN.
    pub fn max(&self) -> f32 {
        self.values.iter().fold(0.0f32, |acc, &v| if acc.is_nan() || v.is_nan() { f32::NAN } else { acc.max(v) })
    }
    /// The most recent amax.
    pub fn latest(&self) -> Option<f32> {
        if self.is_full() {
            Some(self.values[(self.next + self.window - 1) % self.window])
        } else {
            self.values.last().copied()
        }
    }
    /// The recorded values in storage order (a ring once full). Histories pushed in lockstep (the
    /// ranks of a data-parallel job) share the order, so an element-wise max over them is the history
    /// of the max.
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }
    /// Values oldest first.
    pub fn iter(&self) -> impl Iterator<Item = f32> + '_ {
        let (newer, older) = self.values.split_at(if self.is_full() { self.next } else { 0 });
        older.iter().chain(newer).copied()
    }
}

/// Significand (with its implicit bit, so in [2^23, 2^24)) and unbiased exponent of a positive finite
/// f32, normalising subnormals: `x = sig * 2^(exp - 23)`.
fn significand_exponent(x: f32) -> (u32, i32) {
    const MANTISSA_BITS: u32 = 23;
    const IMPLICIT: u32 = 1 << MANTISSA_BITS;
    let bits = x.to_bits();
    let field = (bits >> MANTISSA_BITS) as i32;
    let mantissa = bits & (IMPLICIT - 1);
    if field == 0 {
        // Subnormal: value = mantissa * 2^(-126 - 23); shift its top bit up to bit 23.
        let lz = mantissa.leading_zeros() - (u32::BITS - 1 - MANTISSA_BITS);
        (mantissa << lz, -126 - lz as i32)
    } else {
        (mantissa | IMPLICIT, field - 127)
    }
}

/// `floor(log2(num / den))` exactly, for positive finite `num` and `den`. With `x = sig_x * 2^e_x`
/// (sig in [1, 2)): `log2(num / den) = e_num - e_den + log2(sig_num / sig_den)`, and the last term
/// lies in (-1, 1), negative exactly when `sig_num < sig_den`.
fn floor_log2_ratio(num: f32, den: f32) -> i32 {
    let (sig_num, e_num) = significand_exponent(num);
    let (sig_den, e_den) = significand_exponent(den);
    e_num - e_den - i32::from(sig_num < sig_den)
}

/// The scale exponent `k = floor(log2(fp_max / amax)) - margin`, clamped to +-`MAX_SCALE_EXPONENT`;
/// `None` when amax is zero, negative or not finite (keep the previous scale). Without margin or
/// clamping, `k` is the largest integer with `amax * 2^k <= fp_max`.
pub fn scale_exponent(amax: f32, fp_max: f32, margin: i32) -> Option<i32> {
    if !(amax.is_finite() && amax > 0.0) {
        return None;
    }
    let k = floor_log2_ratio(fp_max, amax).saturating_sub(margin);
    Some(k.clamp(-MAX_SCALE_EXPONENT, MAX_SCALE_EXPONENT))
}

/// `2^k` for `k` in +-`MAX_SCALE_EXPONENT`, built from its exponent bits (no `powf` roundoff).
pub fn pow2(k: i32) -> f32 {
    assert!(
        (-MAX_SCALE_EXPONENT..=MAX_SCALE_EXPONENT).contains(&k),
        "pow2({k}) outside the normal f32 range used for scales"
    );
    f32::from_bits(((k + 127) as u32) << 23)
}

/// The power-of-two scale for `amax`, or `previous` when amax is zero or not finite.
pub fn compute_scale(amax: f32, fp_max: f32, margin: i32, previous: f32) -> f32 {
    scale_exponent(amax, fp_max, margin).map_or(previous, pow2)
}

/// Scaling state of one tensor role: the scale the last (or next) cast uses, its inverse, the amax
/// history and the margin. Invariant: `scale_inv == 1 / scale`, and after a cast `scale` is the one
/// that cast used; keep it by changing the scale only through the methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingMeta {
    pub format: Fp8Format,
    pub scale: f32,
    pub scale_inv: f32,
    pub amax_history: AmaxHistory,
    /// Extra powers of two of headroom below fp_max (0 in FP8-LM).
    pub margin: i32,
}

impl ScalingMeta {
    /// Scale 1, empty history. Panics if `window == 0`.
    pub fn new(format: Fp8Format, window: usize, margin: i32) -> Self {
        ScalingMeta { format, scale: 1.0, scale_inv: 1.0, amax_history: AmaxHistory::new(window), margin }
    }
    pub fn fp_max(&self) -> f32 {
        self.format.max()
    }
    /// Set the scale and its exact inverse (exact for the power-of-two scales computed here).
    pub fn set_scale(&mut self, scale: f32) {
        self.scale = scale;
        self.scale_inv = scale.recip();
    }
    /// Whether a `Delayed` cast would be just-in-time now: window 1, or fewer than `window` amaxes
    /// recorded (MS-AMP's warm-up).
    pub fn in_warm_up(&self) -> bool {
        self.amax_history.window() == 1 || !self.amax_history.is_full()
    }
    /// Delayed-scaling update: record `amax`, then set the scale from the max over the window (kept if
    /// that max is zero or not finite).
    pub fn update(&mut self, amax: f32) {
        self.amax_history.push(amax);
        self.refresh_scale();
    }
    /// Just-in-time update: record `amax` and set the scale from it alone (kept if zero or not
    /// finite).
    pub fn update_just_in_time(&mut self, amax: f32) {
        self.amax_history.push(amax);
        self.set_scale(compute_scale(amax, self.fp_max(), self.margin, self.scale));
    }
    /// Set the scale from the max over the recorded window (idempotent).
    fn refresh_scale(&mut self) {
        let amax = self.amax_history.max();
        self.set_scale(compute_scale(amax, self.fp_max(), self.margin, self.scale));
    }
    /// Cast `src` into `dst` (saturating), update the history, return the amax of `src` (NaN if
    /// `src` holds a NaN). Afterwards `scale` / `scale_inv` are the ones `dst` was encoded with.
    /// - `JustInTime` (and `Delayed` in warm-up): amax first, scale from it, then encode (two passes).
    /// - `Delayed`: scale from the window of earlier amaxes, encode, then record this amax (one pass).
    ///
    /// Panics if the lengths differ.
    pub fn quantize(&mut self, mode: ScalingMode, src: &[f32], dst: &mut [u8]) -> f32 {
        let format = self.format;
        self.cast_with(mode, || fp8::amax(src), |scale| fp8::quantize(format, src, scale, dst))
    }
    /// The scaling policy of `quantize` with the cast itself supplied: `amax()` measures the source
    /// (called only when the scale must come from it), `cast(scale)` casts at `scale` and returns the
    /// source's amax. Lets a backend cast in its own memory (a quantise-dequantise into f32 scratch,
    /// a device kernel) under exactly the same scale decisions.
    pub fn cast_with(&mut self, mode: ScalingMode, amax: impl FnOnce() -> f32, cast: impl FnOnce(f32) -> f32) -> f32 {
        let pending = self.begin_cast(mode, amax);
        let a = cast(pending.scale);
        self.finish_cast(pending, a)
    }
    /// `cast_with` in two halves, for a cast made elsewhere in between (one backend operation that
    /// casts several operands, each under its own meta): the scale the cast must use (`amax()` is
    /// called only when it must come from the source: just-in-time, or delayed in warm-up). Pass the
    /// result and the cast's amax of its source to `finish_cast`.
    pub fn begin_cast(&mut self, mode: ScalingMode, amax: impl FnOnce() -> f32) -> PendingCast {
        if mode == ScalingMode::JustInTime || self.in_warm_up() {
            let a = amax();
            self.update_just_in_time(a);
            PendingCast { scale: self.scale, jit_amax: Some(a) }
        } else {
            self.refresh_scale();
            PendingCast { scale: self.scale, jit_amax: None }
        }
    }
    /// The second half of `cast_with`: a delayed cast records `cast_amax` (the amax of the source it
    /// read); returns the source's amax as `cast_with` does.
    pub fn finish_cast(&mut self, pending: PendingCast, cast_amax: f32) -> f32 {
        match pending.jit_amax {
            Some(a) => a,
            None => {
                self.amax_history.push(cast_amax);
                cast_amax
            }
        }
    }
    /// `dst = decode(src) * scale_inv`. Panics if the lengths differ.
    pub fn dequantize(&self, src: &[u8], dst: &mut [f32]) {
        fp8::dequantize(self.format, src, self.scale_inv, dst);
    }
}

/// A cast between `ScalingMeta::begin_cast` and `finish_cast`: the scale it must use, and the amax
/// already measured and recorded when the scale came from the source itself (just-in-time).
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use = "pass it to finish_cast after the cast"]
pub struct PendingCast {
    pub scale: f32,
    jit_amax: Option<f32>,
}

/// FP8 values with the scaling metadata they were encoded with (MS-AMP `ScalingTensor`):
/// `bytes.len()` is the product of `shape`, and `meta.scale_inv` reads them back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fp8Tensor {
    pub bytes: Vec<u8>,
    pub shape: Vec<usize>,
    pub meta: ScalingMeta,
}

impl Fp8Tensor {
    /// Quantise `src` (of `shape`) with `meta` (see `ScalingMeta::quantize`), which the tensor keeps.
    pub fn quantize(src: &[f32], shape: &[usize], mut meta: ScalingMeta, mode: ScalingMode) -> Result<Self> {
        check_len("Fp8Tensor::quantize src", shape, src.len())?;
        let mut bytes = vec![0u8; src.len()];
        meta.quantize(mode, src, &mut bytes);
        Ok(Fp8Tensor { bytes, shape: shape.to_vec(), meta })
    }
    /// Quantise new values of the same shape into this tensor (e.g. a weight after an optimizer
    /// step), continuing its scaling history; returns the amax of `src`.
    pub fn requantize(&mut self, src: &[f32], mode: ScalingMode) -> Result<f32> {
        check_len("Fp8Tensor::requantize src", &self.shape, src.len())?;
        Ok(self.meta.quantize(mode, src, &mut self.bytes))
    }
    pub fn format(&self) -> Fp8Format {
        self.meta.format
    }
    pub fn numel(&self) -> usize {
        self.bytes.len()
    }
    /// Decode into a new f32 vector.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.bytes.len()];
        self.meta.dequantize(&self.bytes, &mut out);
        out
    }
    /// Decode into `dst`, which must have `numel()` elements.
    pub fn dequantize_into(&self, dst: &mut [f32]) -> Result<()> {
        check_len("Fp8Tensor::dequantize_into dst", &self.shape, dst.len())?;
        self.meta.dequantize(&self.bytes, dst);
        Ok(())
    }
}

fn check_len(name: &str, shape: &[usize], len: usize) -> Result<()> {
    if shape.iter().product::<usize>() == len {
        Ok(())
    } else {
        Err(Error::Shape { name: name.into(), expected: shape.to_vec(), found: vec![len] })
    }
}

/// The tensors of a linear layer that are cast to FP8, one GEMM operand each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The activation entering the layer (forward GEMM).
    Input,
    /// The layer's weight (forward and data-gradient GEMMs).
    Weight,
    /// The gradient arriving at the layer's output (data- and weight-gradient GEMMs).
    GradOutput,
    /// The weight gradient (FP8 communication and optimizer input, FP8-LM O1+).
    WeightGrad,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Input, Role::Weight, Role::GradOutput, Role::WeightGrad];

    /// The name used in recipes and config files.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Weight => "weight",
            Role::GradOutput => "grad_output",
            Role::WeightGrad => "weight_grad",
        }
    }
}

/// Format and amax-history window of one role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRecipe {
    pub format: Fp8Format,
    pub window: usize,
}

/// Everything that decides how FP8 casts scale: one value passed around, never global flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    pub input: RoleRecipe,
    pub weight: RoleRecipe,
    pub grad_output: RoleRecipe,
    pub weight_grad: RoleRecipe,
    /// Powers of two of headroom below the format's max.
    pub margin: i32,
    pub mode: ScalingMode,
}

impl Default for Recipe {
    /// MS-AMP / FP8-LM: forward operands E4M3 (precision), output gradients E5M2 (range), windows 16,
    /// the weight gradient E4M3 with window 1 (scaled from its own amax); margin 0; delayed scaling.
    fn default() -> Self {
        const WINDOW: usize = 16;
        Recipe {
            input: RoleRecipe { format: Fp8Format::E4M3, window: WINDOW },
            weight: RoleRecipe { format: Fp8Format::E4M3, window: WINDOW },
            grad_output: RoleRecipe { format: Fp8Format::E5M2, window: WINDOW },
            weight_grad: RoleRecipe { format: Fp8Format::E4M3, window: 1 },
            margin: 0,
            mode: ScalingMode::Delayed,
        }
    }
}

impl Recipe {
    pub fn role(&self, role: Role) -> RoleRecipe {
        match role {
            Role::Input => self.input,
            Role::Weight => self.weight,
            Role::GradOutput => self.grad_output,
            Role::WeightGrad => self.weight_grad,
        }
    }
    /// Fresh scaling metadata for `role`.
    pub fn meta(&self, role: Role) -> ScalingMeta {
        let r = self.role(role);
        ScalingMeta::new(r.format, r.window, self.margin)
    }
    /// Reject what `meta` would panic on (a zero window), naming the role.
    pub fn validate(&self) -> Result<()> {
        for role in Role::ALL {
            if self.role(role).window == 0 {
                return Err(Error::Config {
                    field: format!("recipe.{}.window", role.name()),
                    msg: "the amax history window must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}
