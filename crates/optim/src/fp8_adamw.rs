//! FP8-LM's low-precision AdamW (Peng et al. 2023, MS-AMP `FP8Adam`): the moments m and v (and, with
//! `update_master`, the master weights) are stored in narrow formats with per-tensor power-of-two
//! scales, and every update runs in f32 registers in two stages.
//!
//! Storage (`ScaledBuf`, one buffer over a `Layout`, formats in `StateFormat`): a tensor `x` is held
//! as `q = round(x * scale)` in its format and read back as `decode(q) * (1 / scale)`. The scale is
//! `2^k` with `k = floor(log2(fp_max / amax)) - margin` (`octet_core::scaling::compute_scale`), so the
//! tensor's largest element lands in `(fp_max / 2, fp_max]`; a zero or non-finite amax keeps the
//! previous scale. Powers of two make the scaling itself exact: only the format's rounding loses
//! information, at most its unit roundoff `u` relative for elements in its normal range.
//! - `F32`: no rounding. `Bf16`: f32's range, so no scale. `F16`: FP8-LM's "FP16 with tensor scaling"
//!   (fp_max 65504): the scale moves the tensor into f16's range, whose normal part then covers 2^30
//!   below the amax. `E4M3` / `E5M2`: OCP FP8, saturating casts (`octet_core::fp8::quantize`).
//! - `E4M3Block128`: E4M3 with one scale per run of 128 consecutive elements of a tensor (MS-AMP's
//!   block-wise idea for an FP8 second moment): a small element only competes with its 127 neighbours.
//!
//! The update (same formula and f32 operation order as `adamw_fast`, so F32/F32 is bit-identical):
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

use std::ops::Range;
use std::sync::Arc;

use half::f16;
use octet_core::Layout;
use octet_core::fp8::{self, Fp8Format};
use octet_core::scaling::compute_scale;
use rayon::prelude::*;

use crate::adamw::AdamWConfig;

/// Elements per work item, a multiple of `BLOCK`: an item's working set (12 KiB of f32 scratch for
/// m, v, p plus ~11 KiB of g, p and states) fits a 32 KiB L1, and an item (~1-3 µs) is long enough
/// to amortise rayon's scheduling. (512 and 2048 measured the same within noise.)
const CHUNK: usize = 1024;
/// Elements per scale of the block formats.
pub const BLOCK: usize = 128;
const _: () = assert!(CHUNK.is_multiple_of(BLOCK));

/// Storage format of one optimizer buffer (moments or master weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateFormat {
    /// 4 bytes, exact.
    F32,
    /// 2 bytes, IEEE half with a per-tensor power-of-two scale (FP8-LM "FP16 with tensor scaling").
    F16,
    /// 2 bytes, bfloat16 (f32's exponent range: no scale).
    Bf16,
    /// 1 byte, OCP E4M3 with a per-tensor scale.
    E4M3,
    /// 1 byte, OCP E5M2 with a per-tensor scale.
    E5M2,
    /// 1 byte, E4M3 with one scale per `BLOCK` consecutive elements of a tensor.
    E4M3Block128,
}

impl StateFormat {
    /// The per-tensor formats (the differential tests run every pair of these).
    pub const PER_TENSOR: [StateFormat; 5] =
        [StateFormat::F32, StateFormat::F16, StateFormat::Bf16, StateFormat::E4M3, StateFormat::E5M2];

    pub const fn name(self) -> &'static str {
        match self {
            StateFormat::F32 => "f32",
            StateFormat::F16 => "f16",
            StateFormat::Bf16 => "bf16",
            StateFormat::E4M3 => "e4m3",
            StateFormat::E5M2 => "e5m2",
            StateFormat::E4M3Block128 => "e4m3_block128",
        }
    }

    /// Bytes per stored element (scales not included).
    pub const fn element_bytes(self) -> usize {
        match self {
            StateFormat::F32 => 4,
            StateFormat::F16 | StateFormat::Bf16 => 2,
            StateFormat::E4M3 | StateFormat::E5M2 | StateFormat::E4M3Block128 => 1,
        }
    }

    /// Significant bits including the implicit one: 24, 11, 8, 4, 3, 4.
    pub const fn significand_bits(self) -> u32 {
        match self {
            StateFormat::F32 => 24,
            StateFormat::F16 => 11,
            StateFormat::Bf16 => 8,
            StateFormat::E4M3 | StateFormat::E4M3Block128 => Fp8Format::E4M3.mantissa_bits() + 1,
            StateFormat::E5M2 => Fp8Format::E5M2.mantissa_bits() + 1,
        }
    }

    /// Unit roundoff `2^-significand_bits`: the largest relative error of one round-to-nearest of a
    /// value in the format's normal range.
    pub fn unit_roundoff(self) -> f64 {
        0.5f64.powi(self.significand_bits() as i32)
    }

    /// Largest finite value, for the scaled formats (the target of `amax * scale`).
    pub fn fp_max(self) -> Option<f32> {
        match self {
            StateFormat::F32 | StateFormat::Bf16 => None,
            StateFormat::F16 => Some(f16::MAX.to_f32()),
            StateFormat::E4M3 | StateFormat::E4M3Block128 => Some(Fp8Format::E4M3.max()),
            StateFormat::E5M2 => Some(Fp8Format::E5M2.max()),
        }
    }

    /// Whether the stored values carry scales (counted by `ScaledBuf::bytes`).
    pub fn is_scaled(self) -> bool {
        self.fp_max().is_some()
    }

    /// Elements per scale for the block formats; `None` for one scale per tensor.
    pub const fn block(self) -> Option<usize> {
        match self {
            StateFormat::E4M3Block128 => Some(BLOCK),
            _ => None,
        }
    }

    /// Scales a tensor of `numel` elements holds: one, or one per started block.
    fn scale_count(self, numel: usize) -> usize {
        self.block().map_or(1, |b| numel.div_ceil(b))
    }
}

impl std::fmt::Display for StateFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The stored values of a buffer (or of one tensor of it), in their real format: f32 values, f16 /
/// bf16 bit patterns, or FP8 codes.
#[derive(Clone, Copy, Debug)]
pub enum StateData<'a> {
    F32(&'a [f32]),
    U16(&'a [u16]),
    U8(&'a [u8]),
}

impl<'a> StateData<'a> {
    fn slice(self, r: Range<usize>) -> StateData<'a> {
        match self {
            StateData::F32(d) => StateData::F32(&d[r]),
            StateData::U16(d) => StateData::U16(&d[r]),
            StateData::U8(d) => StateData::U8(&d[r]),
        }
    }
}

/// Mutable counterpart of `StateData`, split into disjoint pieces for parallel encoding.
enum DataMut<'a> {
    F32(&'a mut [f32]),
    U16(&'a mut [u16]),
    U8(&'a mut [u8]),
}

impl<'a> DataMut<'a> {
    fn split_at(self, n: usize) -> (DataMut<'a>, DataMut<'a>) {
        match self {
            DataMut::F32(d) => {
                let (a, b) = d.split_at_mut(n);
                (DataMut::F32(a), DataMut::F32(b))
            }
            DataMut::U16(d) => {
                let (a, b) = d.split_at_mut(n);
                (DataMut::U16(a), DataMut::U16(b))
            }
            DataMut::U8(d) => {
                let (a, b) = d.split_at_mut(n);
                (DataMut::U8(a), DataMut::U8(b))
            }
        }
    }
    fn as_ref(&self) -> StateData<'_> {
        match self {
            DataMut::F32(d) => StateData::F32(d),
            DataMut::U16(d) => StateData::U16(d),
            DataMut::U8(d) => StateData::U8(d),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Storage {
    F32(Vec<f32>),
    U16(Vec<u16>),
    U8(Vec<u8>),
}

impl Storage {
    fn zeros(format: StateFormat, n: usize) -> Storage {
        match format.element_bytes() {
            4 => Storage::F32(vec![0.0; n]),
            2 => Storage::U16(vec![0; n]), // +0.0 in f16 and bf16
            _ => Storage::U8(vec![0; n]),  // +0.0 in E4M3 and E5M2
        }
    }
    fn data(&self) -> StateData<'_> {
        match self {
            Storage::F32(d) => StateData::F32(d),
            Storage::U16(d) => StateData::U16(d),
            Storage::U8(d) => StateData::U8(d),
        }
    }
    fn data_mut(&mut self) -> DataMut<'_> {
        match self {
            Storage::F32(d) => DataMut::F32(d),
            Storage::U16(d) => DataMut::U16(d),
            Storage::U8(d) => DataMut::U8(d),
        }
    }
}

// Scalar codecs, all branch-free (selects, no table lookups) so that the loops over a chunk
// vectorise; `stage1_item` / `stage2_item` compile them for AVX2 where the CPU has it. Each is tested
// bit for bit against `half` or `octet_core::fp8` below.

/// f32 -> bf16 bits, round to nearest even (add 0x7FFF plus the kept lsb); NaN stays a quiet NaN.
/// Equal to `half::bf16::from_f32(x).to_bits()`.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { ((b >> 16) as u16) | 0x0040 } else { rounded }
}

/// f16 has 10 stored mantissa bits and bias 15; f32 has 23 and 127.
const F16_SHIFT: u32 = 23 - 10;
const F16_REBIAS: u32 = 127 - 15;
/// f16 exponent field all ones (inf / NaN), shifted into place.
const F16_INF: u32 = 0x7C00;

/// f32 -> f16 bits, round to nearest even, overflow to inf, NaN to a quiet NaN keeping the top of the
/// payload (what F16C's `vcvtps2ph` and `half::f16::from_f32` do). As `octet_core::fp8::encode`:
/// normal results round the f32 bit pattern at bit 13 and rebias (a carry into the exponent is the
/// right next binade, up to inf); results below 2^-14 come from adding 0.5, whose f32 ulp 2^-24 is
/// f16's smallest subnormal, so the FPU's own rounding lands on the subnormal grid.
#[inline(always)]
fn f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let abs = bits & 0x7FFF_FFFF;
    let round = ((1 << (F16_SHIFT - 1)) - 1) + ((abs >> F16_SHIFT) & 1);
    let normal = ((abs + round) >> F16_SHIFT).wrapping_sub(F16_REBIAS << 10);
    let subnormal = (f32::from_bits(abs) + 0.5).to_bits().wrapping_sub(0.5f32.to_bits());
    let mut code = if abs < (F16_REBIAS + 1) << 23 { subnormal } else { normal };
    if code > F16_INF {
        code = F16_INF;
    }
    if abs > 0x7F80_0000 {
        code = F16_INF | 0x0200 | ((abs & 0x007F_FFFF) >> F16_SHIFT);
    }
    (sign | code) as u16
}

/// f16 bits -> f32 (exact). NaN keeps its payload with the quiet bit set, as `half` does.
#[inline(always)]
fn f16_value(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7FFF;
    let normal = (em << F16_SHIFT) + (F16_REBIAS << 23);
    // Subnormal: em * 2^-24, exact (em < 2^10).
    let subnormal = (em as f32 * (1.0 / (1u32 << 24) as f32)).to_bits();
    let special = 0x7F80_0000 | (em << F16_SHIFT) | if em > F16_INF { 0x0040_0000 } else { 0 };
    let bits = if em < 0x0400 {
        subnormal
    } else if em >= F16_INF {
        special
    } else {
        normal
    };
    f32::from_bits(sign | bits)
}

/// The FP8 constants `fp8_value` needs, evaluated at compile time: `Fp8Format`'s methods are not
/// inlinable across crates, and a call per element would cost more than the decode itself.
#[derive(Clone, Copy)]
struct Fp8Consts {
    mantissa_bits: u32,
    bias: u32,
    min_subnormal: f32,
    has_infinity: bool,
    /// Exponent field all ones, in place (E5M2: inf if the mantissa is 0, else NaN).
    top: u32,
}

const fn fp8_consts(fmt: Fp8Format) -> Fp8Consts {
    Fp8Consts {
        mantissa_bits: fmt.mantissa_bits(),
        bias: fmt.bias() as u32,
        min_subnormal: fmt.min_subnormal(),
        has_infinity: fmt.has_infinity(),
        top: ((1 << fmt.exponent_bits()) - 1) << fmt.mantissa_bits(),
    }
}

const E4M3: Fp8Consts = fp8_consts(Fp8Format::E4M3);
const E5M2: Fp8Consts = fp8_consts(Fp8Format::E5M2);

/// FP8 code -> f32 (exact), computed from the fields like `octet_core::fp8`'s table.
#[inline(always)]
fn fp8_value(f: Fp8Consts, c: u8) -> f32 {
    let m = f.mantissa_bits;
    let c = c as u32;
    let sign = (c & 0x80) << 24;
    let em = c & 0x7F;
    let normal = (em << (23 - m)) + ((127 - f.bias) << 23);
    let subnormal = (em as f32 * f.min_subnormal).to_bits(); // em < 2^m: exact
    let mut bits = if em < 1 << m { subnormal } else { normal };
    if f.has_infinity {
        if em == f.top {
            bits = 0x7F80_0000;
        } else if em > f.top {
            bits = 0x7FC0_0000;
        }
    } else if em == 0x7F {
        bits = 0x7FC0_0000; // E4M3's only NaN, S.1111.111
    }
    f32::from_bits(sign | bits)
}

/// Largest |x| as a bit pattern (NaN above inf), like `octet_core::fp8::amax`.
#[inline(always)]
fn amax_bits(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |acc, v| acc.max(v.to_bits() & 0x7FFF_FFFF))
}

#[inline(always)]
fn decode_fp8(f: Fp8Consts, src: &[u8], inv: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(src) {
        *o = fp8_value(f, c) * inv;
    }
}

/// `out = decode(src) / scale`; `scales` holds the run's one per-tensor scale or its block scales
/// (the run starts on a block boundary of its tensor; unscaled formats ignore it). Scales are powers
/// of two, so `1 / scale` is exact and so is the product.
#[inline(always)]
fn decode_run(format: StateFormat, src: StateData<'_>, scales: &[f32], out: &mut [f32]) {
    match (format, src) {
        (StateFormat::F32, StateData::F32(s)) => out.copy_from_slice(s),
        (StateFormat::Bf16, StateData::U16(s)) => {
            for (o, &b) in out.iter_mut().zip(s) {
                *o = f32::from_bits((b as u32) << 16);
            }
        }
        (StateFormat::F16, StateData::U16(s)) => {
            let inv = scales[0].recip();
            for (o, &h) in out.iter_mut().zip(s) {
                *o = f16_value(h) * inv;
            }
        }
        (StateFormat::E4M3, StateData::U8(s)) => decode_fp8(E4M3, s, scales[0].recip(), out),
        (StateFormat::E5M2, StateData::U8(s)) => decode_fp8(E5M2, s, scales[0].recip(), out),
        (StateFormat::E4M3Block128, StateData::U8(s)) => {
            for ((o, s), &scale) in out.chunks_mut(BLOCK).zip(s.chunks(BLOCK)).zip(scales) {
                decode_fp8(E4M3, s, scale.recip(), o);
            }
        }
        _ => unreachable!("storage does not match format {format}"),
    }
}

/// `dst = round(src * scale)` in `format`. FP8 goes through `octet_core::fp8::quantize` (saturating;
/// its own AVX2 build), whose `encode` cannot be inlined here across crates with its constants.
/// Per-tensor formats use `scales[0]` as given; block formats first set each block's scale from its
/// amax (a zero amax keeps the block's previous scale).
#[inline(always)]
fn encode_run(format: StateFormat, margin: i32, src: &[f32], scales: &mut [f32], dst: DataMut<'_>) {
    match (format, dst) {
        (StateFormat::F32, DataMut::F32(d)) => d.copy_from_slice(src),
        (StateFormat::Bf16, DataMut::U16(d)) => {
            for (d, &x) in d.iter_mut().zip(src) {
                *d = bf16_bits(x);
            }
        }
        (StateFormat::F16, DataMut::U16(d)) => {
            let scale = scales[0];
            for (d, &x) in d.iter_mut().zip(src) {
                *d = f16_bits(x * scale);
            }
        }
        (StateFormat::E4M3, DataMut::U8(d)) => _ = fp8::quantize(Fp8Format::E4M3, src, scales[0], d),
        (StateFormat::E5M2, DataMut::U8(d)) => _ = fp8::quantize(Fp8Format::E5M2, src, scales[0], d),
        (StateFormat::E4M3Block128, DataMut::U8(d)) => {
            let fp_max = Fp8Format::E4M3.max();
            for ((s, d), scale) in src.chunks(BLOCK).zip(d.chunks_mut(BLOCK)).zip(scales) {
                *scale = compute_scale(f32::from_bits(amax_bits(s)), fp_max, margin, *scale);
                fp8::quantize(Fp8Format::E4M3, s, *scale, d);
            }
        }
        _ => unreachable!("storage does not match format {format}"),
    }
}

/// A buffer over a `Layout` stored in a `StateFormat`, with its scales: one per tensor (1.0 and not
/// counted for the unscaled F32 and Bf16), or one per `BLOCK` elements of each tensor for block
/// formats. Read with `get_f32`, write with `set_f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaledBuf {
    format: StateFormat,
    layout: Arc<Layout>,
    data: Storage,
    /// `stored = round(x * scale)`; tensor `i` owns `scales[scale_offsets[i]..scale_offsets[i + 1]]`.
    scales: Vec<f32>,
    scale_offsets: Vec<usize>,
    /// Powers of two of headroom below `fp_max` (0 in FP8-LM).
    margin: i32,
}

impl ScaledBuf {
    /// All zeros, every scale 1, margin 0.
    pub fn zeros(format: StateFormat, layout: Arc<Layout>) -> Self {
        let mut scale_offsets = vec![0];
        for spec in layout.specs() {
            scale_offsets.push(scale_offsets.last().unwrap() + format.scale_count(spec.numel()));
        }
        let scales = vec![1.0; *scale_offsets.last().unwrap()];
        let data = Storage::zeros(format, layout.total());
        ScaledBuf { format, layout, data, scales, scale_offsets, margin: 0 }
    }

    /// Encode `src` (laid out as `layout`), every tensor scaled from its own amax.
    pub fn from_f32(format: StateFormat, layout: Arc<Layout>, src: &[f32]) -> Self {
        assert_eq!(src.len(), layout.total(), "ScaledBuf::from_f32: source length vs layout");
        let mut buf = ScaledBuf::zeros(format, layout);
        for i in 0..buf.layout.specs().len() {
            buf.set_f32(i, &src[buf.layout.specs()[i].range()]);
        }
        buf
    }

    /// The same buffer with `margin` powers of two of headroom in later scale choices.
    pub fn with_margin(mut self, margin: i32) -> Self {
        self.margin = margin;
        self
    }

    pub fn format(&self) -> StateFormat {
        self.format
    }
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }
    pub fn margin(&self) -> i32 {
        self.margin
    }
    pub fn numel(&self) -> usize {
        self.layout.total()
    }

    /// Real storage size in bytes: the elements in their format plus 4 bytes per f32 scale of the
    /// scaled formats (for a memory ledger).
    pub fn bytes(&self) -> usize {
        let scales = if self.format.is_scaled() { self.scales.len() } else { 0 };
        self.numel() * self.format.element_bytes() + scales * size_of::<f32>()
    }

    /// Scales of tensor `i`: one (per-tensor formats; 1.0 for F32 and Bf16) or one per block.
    pub fn scales(&self, i: usize) -> &[f32] {
        &self.scales[self.scale_offsets[i]..self.scale_offsets[i + 1]]
    }

    /// The per-tensor scale of tensor `i`. Panics for block formats (use `scales`).
    pub fn scale(&self, i: usize) -> f32 {
        assert!(self.format.block().is_none(), "{} has one scale per block; use scales()", self.format);
        self.scales[self.scale_offsets[i]]
    }

    fn as_ref(&self) -> BufRef<'_> {
        BufRef {
            format: self.format,
            data: self.data.data(),
            scales: &self.scales,
            scale_offsets: &self.scale_offsets,
            layout: &self.layout,
        }
    }

    /// The stored values of the whole buffer, in their real format.
    pub fn data(&self) -> StateData<'_> {
        self.data.data()
    }

    /// Decode tensor `i` into `out` (its length). Parallel over chunks for large tensors.
    pub fn get_f32(&self, i: usize, out: &mut [f32]) {
        let r = self.layout.specs()[i].range();
        assert_eq!(out.len(), r.len(), "get_f32: tensor {i} has {} elements, out {}", r.len(), out.len());
        let (data, scales) = (self.data.data().slice(r), self.scales(i));
        let per_chunk = self.format.block().map_or(0, |b| CHUNK / b);
        let decode = |(c, out): (usize, &mut [f32])| {
            let s = if per_chunk == 0 { scales } else { &scales[c * per_chunk..] };
            decode_run(self.format, data.slice(c * CHUNK..c * CHUNK + out.len()), s, out);
        };
        if out.len() >= fp8::PARALLEL_THRESHOLD {
            out.par_chunks_mut(CHUNK).enumerate().for_each(decode);
        } else {
            out.chunks_mut(CHUNK).enumerate().for_each(decode);
        }
    }

    /// Decode the whole buffer.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        for (i, spec) in self.layout.specs().iter().enumerate() {
            self.get_f32(i, &mut out[spec.range()]);
        }
        out
    }

    /// Encode `src` into tensor `i`, the scale chosen from `amax(src)` (a zero or non-finite amax
    /// keeps the previous scale; block formats do this per block). Returns `amax(src)`.
    pub fn set_f32(&mut self, i: usize, src: &[f32]) -> f32 {
        let r = self.layout.specs()[i].range();
        assert_eq!(src.len(), r.len(), "set_f32: tensor {i} has {} elements, src {}", r.len(), src.len());
        let amax = fp8::amax(src);
        let (format, margin) = (self.format, self.margin);
        let srange = self.scale_offsets[i]..self.scale_offsets[i + 1];
        if let (Some(fp_max), None) = (format.fp_max(), format.block()) {
            self.scales[srange.start] = compute_scale(amax, fp_max, margin, self.scales[srange.start]);
        }
        let tensor_scale = self.scales[srange.start];
        let data = self.data.data_mut().split_at(r.start).1.split_at(r.len()).0;
        let items = chunk_items(0, src.len());
        let parts = split_parts(data, &mut self.scales[srange], format, &items);
        let encode = |(it, (d, s)): (&Item, (DataMut<'_>, &mut [f32]))| {
            let mut tensor = [tensor_scale];
            let scales = if format.block().is_some() { s } else { &mut tensor[..] };
            encode_run(format, margin, &src[it.range()], scales, d);
        };
        if src.len() >= fp8::PARALLEL_THRESHOLD {
            items.par_iter().zip(parts).for_each(encode);
        } else {
            items.iter().zip(parts).for_each(encode);
        }
        amax
    }

    /// Sum of squares of the decoded buffer, accumulated in f64 (for the global gradient norm of
    /// gradients stored narrow). Chunked and parallel; the sum is reduced in a fixed order, so the
    /// result does not depend on the thread count.
    pub fn sum_squares(&self) -> f64 {
        self.sum_squares_parts().iter().map(|p| p.1).sum()
    }

    /// The partial sums `sum_squares` adds up in order: (tensor index, sum of squares) per fixed
    /// chunk. A sharded optimizer (ZeRO) sums its own tensors' chunks on each rank, zero elsewhere,
    /// all-reduces the list (adding zeros is exact) and gets `sum_squares` bit for bit.
    pub fn sum_squares_parts(&self) -> Vec<(usize, f64)> {
        let items = layout_items(&self.layout);
        let view = self.as_ref();
        items
            .par_iter()
            .map_init(
                || vec![0.0f32; CHUNK],
                |scratch, it| {
                    let out = &mut scratch[..it.len];
                    view.decode_item(it, out);
                    (it.tensor, out.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                },
            )
            .collect()
    }

    /// Tensor `i`'s stored elements as little-endian bytes, and its scales (one tensor of `to_raw`).
    pub fn tensor_raw(&self, i: usize) -> (Vec<u8>, &[f32]) {
        let r = self.layout.specs()[i].range();
        let bytes = match self.data.data().slice(r) {
            StateData::F32(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U16(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U8(d) => d.to_vec(),
        };
        (bytes, self.scales(i))
    }

    /// Overwrite tensor `i` with `tensor_raw`'s bytes and scales (from a buffer of the same format;
    /// e.g. a ZeRO shard's updated weights). Panics if the lengths do not match.
    pub fn set_tensor_raw(&mut self, i: usize, bytes: &[u8], scales: &[f32]) {
        let r = self.layout.specs()[i].range();
        assert_eq!(bytes.len(), r.len() * self.format.element_bytes(), "set_tensor_raw: tensor {i} bytes");
        let sr = self.scale_offsets[i]..self.scale_offsets[i + 1];
        self.scales[sr].copy_from_slice(scales);
        match &mut self.data {
            Storage::F32(d) => d[r].iter_mut().zip(bytes.chunks_exact(4)).for_each(|(x, b)| {
                *x = f32::from_le_bytes(b.try_into().unwrap());
            }),
            Storage::U16(d) => d[r].iter_mut().zip(bytes.chunks_exact(2)).for_each(|(x, b)| {
                *x = u16::from_le_bytes(b.try_into().unwrap());
            }),
            Storage::U8(d) => d[r].copy_from_slice(bytes),
        }
    }

    /// The codes and per-tensor scales of a one-byte per-tensor format (E4M3, E5M2), mutable: for
    /// a distributed all-reduce, which re-encodes every tensor under a scale shared by all ranks and
    /// sums the codes. Keep `stored = round(x * scale)` true. Panics for other formats.
    pub fn codes_and_scales_mut(&mut self) -> (&mut [u8], &mut [f32]) {
        assert!(self.format.block().is_none(), "codes_and_scales_mut: {} has block scales", self.format);
        match &mut self.data {
            Storage::U8(d) => (d, &mut self.scales),
            _ => panic!("codes_and_scales_mut: {} is not a one-byte format", self.format),
        }
    }

    /// The stored elements as little-endian bytes and the scales (for checkpoints; `from_raw`
    /// restores the buffer bit for bit).
    pub fn to_raw(&self) -> (Vec<u8>, Vec<f32>) {
        let bytes = match self.data.data() {
            StateData::F32(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U16(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U8(d) => d.to_vec(),
        };
        (bytes, self.scales.clone())
    }

    /// Inverse of `to_raw`: a buffer of `format` over `layout` from its bytes and scales; an error
    /// names what does not match.
    pub fn from_raw(
        format: StateFormat,
        layout: Arc<Layout>,
        bytes: &[u8],
        scales: &[f32],
        margin: i32,
    ) -> Result<Self, String> {
        let mut buf = ScaledBuf::zeros(format, layout).with_margin(margin);
        let want = buf.numel() * format.element_bytes();
        if bytes.len() != want {
            return Err(format!("{format} buffer needs {want} bytes, found {}", bytes.len()));
        }
        if scales.len() != buf.scales.len() {
            return Err(format!("{format} buffer needs {} scales, found {}", buf.scales.len(), scales.len()));
        }
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("scale {bad} is not a positive finite number"));
        }
        buf.scales.copy_from_slice(scales);
        match &mut buf.data {
            Storage::F32(d) => d.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(x, b)| {
                *x = f32::from_le_bytes(b.try_into().unwrap());
            }),
            Storage::U16(d) => d.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(x, b)| {
                *x = u16::from_le_bytes(b.try_into().unwrap());
            }),
            Storage::U8(d) => d.copy_from_slice(bytes),
        }
        Ok(buf)
    }
}

/// One unit of work: `len <= CHUNK` elements of tensor `tensor` starting at element `start` of the
/// buffer and at a multiple of `CHUNK` within the tensor.
#[derive(Clone, Copy, Debug)]
struct Item {
    tensor: usize,
    start: usize,
    len: usize,
}

impl Item {
    fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// Items covering `[start, start + n)` of tensor 0 (for one tensor) in order.
fn chunk_items(start: usize, n: usize) -> Vec<Item> {
    (0..n).step_by(CHUNK).map(|c| Item { tensor: 0, start: start + c, len: CHUNK.min(n - c) }).collect()
}

/// Items covering every tensor of `layout`, in order (so they tile `[0, total)`).
fn layout_items(layout: &Layout) -> Vec<Item> {
    let mut items = Vec::new();
    for (t, spec) in layout.specs().iter().enumerate() {
        items.extend(chunk_items(spec.offset, spec.numel()).into_iter().map(|it| Item { tensor: t, ..it }));
    }
    items
}

/// Split `data` (the elements `items` tile, in order) and, for block formats, `scales` (the blocks of
/// those elements, in order) into one disjoint piece per item. Per-tensor formats get an empty scale
/// piece: their scale is passed separately.
fn split_parts<'a>(
    mut data: DataMut<'a>,
    mut scales: &'a mut [f32],
    format: StateFormat,
    items: &[Item],
) -> Vec<Part<'a>> {
    let mut parts = Vec::with_capacity(items.len());
    for it in items {
        let (d, rest) = data.split_at(it.len);
        data = rest;
        let nblocks = format.block().map_or(0, |b| it.len.div_ceil(b));
        let (s, rest) = std::mem::take(&mut scales).split_at_mut(nblocks);
        scales = rest;
        parts.push((d, s));
    }
    parts
}

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
        let per_tensor = |b: &ScaledBuf| b.format.is_scaled() && b.format.block().is_none();
        if matches!(params, Params::Master(b) if b.format.is_scaled()) {
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
    /// Exactly the conversions `adamw_fast` makes.
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

/// The AdamW element update on decoded values, in place; same expression as `adamw_fast`.
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

/// One item's disjoint pieces of a buffer: its elements and its block scales (empty for per-tensor
/// formats, whose scale is in `Stage2Buf`).
type Part<'a> = (DataMut<'a>, &'a mut [f32]);

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
        let layout = self.m.layout.clone();
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
            Params::Master(b) => (b.format, b.margin, per_tensor_scales(b), new_scales(b, &amax, |a| a.p)),
        };
        let stage2 = Stage2 {
            coeffs: &coeffs,
            grads,
            m: Stage2Buf { format: m.format, margin: m.margin, old: &old_m, new: &new_m },
            v: Stage2Buf { format: v.format, margin: v.margin, old: &old_v, new: &new_v },
            p: Stage2Buf { format: p_format, margin: p_margin, old: &old_p, new: &new_p },
        };
        let m_parts = split_parts(m.data.data_mut(), &mut m.scales, stage2.m.format, items);
        let v_parts = split_parts(v.data.data_mut(), &mut v.scales, stage2.v.format, items);
        let p_parts = match &mut params {
            Params::Plain(p) => split_parts(DataMut::F32(p), &mut [], StateFormat::F32, items),
            Params::Master(b) => split_parts(b.data.data_mut(), &mut b.scales, p_format, items),
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
    let n = buf.layout.specs().len();
    if buf.format.block().is_some() { vec![1.0; n] } else { (0..n).map(|i| buf.scale(i)).collect() }
}

/// Next per-tensor scales of `buf` from each tensor's new amax (unchanged for unscaled and block
/// formats, and where the amax is zero).
fn new_scales(buf: &ScaledBuf, amax: &[Amaxes], field: impl Fn(&Amaxes) -> u32) -> Vec<f32> {
    let old = per_tensor_scales(buf);
    match (buf.format.fp_max(), buf.format.block()) {
        (Some(fp_max), None) => amax
            .iter()
            .zip(old)
            .map(|(a, prev)| compute_scale(f32::from_bits(field(a)), fp_max, buf.margin, prev))
            .collect(),
        _ => old,
    }
}

fn store_scales(buf: &mut ScaledBuf, new: &[f32]) {
    if buf.format.block().is_none() {
        for (i, &s) in new.iter().enumerate() {
            buf.scales[buf.scale_offsets[i]] = s;
        }
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

/// A read-only view of a `ScaledBuf`, or of plain f32 parameters (format F32, no scales).
#[derive(Clone, Copy)]
struct BufRef<'a> {
    format: StateFormat,
    data: StateData<'a>,
    scales: &'a [f32],
    scale_offsets: &'a [usize],
    layout: &'a Layout,
}

impl<'a> BufRef<'a> {
    fn plain(p: &'a [f32], layout: &'a Layout) -> BufRef<'a> {
        BufRef { format: StateFormat::F32, data: StateData::F32(p), scales: &[], scale_offsets: &[], layout }
    }

    /// Decode item `it` into `out`.
    #[inline(always)]
    fn decode_item(&self, it: &Item, out: &mut [f32]) {
        let s = if !self.format.is_scaled() {
            &[][..]
        } else {
            let first = self.scale_offsets[it.tensor];
            match self.format.block() {
                None => &self.scales[first..=first],
                Some(b) => {
                    let within = it.start - self.layout.specs()[it.tensor].offset;
                    &self.scales[first + within / b..first + (within + it.len).div_ceil(b)]
                }
            }
        };
        decode_run(self.format, self.data.slice(it.range()), s, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_bits_matches_half() {
        for v in f32_samples() {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v:e} ({:#x})", v.to_bits());
        }
    }

    /// Every f32 bit pattern class: specials, f16 boundaries (max, overflow, min normal and
    /// subnormal, ties) and pseudo-random bits.
    fn f32_samples() -> Vec<f32> {
        let mut v = vec![0.0f32, -0.0, 1.0, -1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY];
        v.extend([f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001), f32::from_bits(0xFFC1_2345)]);
        v.extend([65504.0, 65519.0, 65520.0, 65536.0, 6.1035156e-5, 6.1e-5, 5.9604645e-8, 2.9802322e-8]);
        v.extend([2.9802326e-8, 8.940697e-8, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0]);
        let mut x = 0x1234_5678u32;
        v.extend((0..100_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            f32::from_bits(x)
        }));
        // Dense around f16's range, where the rounding matters.
        v.extend((0..100_000).map(|i| f32::from_bits(0x3300_0000 + i * 1237)));
        v
    }

    #[test]
    fn f16_codecs_match_half() {
        for v in f32_samples() {
            assert_eq!(f16_bits(v), f16::from_f32(v).to_bits(), "{v:e} ({:#x})", v.to_bits());
        }
        for h in 0..=u16::MAX {
            let (got, want) = (f16_value(h), f16::from_bits(h).to_f32());
            assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
        }
    }

    #[test]
    fn fp8_values_match_the_decode_table() {
        for (fmt, consts) in [(Fp8Format::E4M3, E4M3), (Fp8Format::E5M2, E5M2)] {
            for c in 0..=255u8 {
                let (got, want) = (fp8_value(consts, c), fp8::decode(fmt, c));
                let same = got.to_bits() == want.to_bits()
                    || (got.is_nan() && want.is_nan() && got.is_sign_negative() == want.is_sign_negative());
                assert!(same, "{fmt} {c:#04x}: {got:e} vs {want:e}");
            }
        }
    }

    #[test]
    fn items_tile_the_layout_in_chunks() {
        let layout = Layout::new([("a", vec![CHUNK * 2 + 5]), ("b", vec![3]), ("c", vec![0]), ("d", vec![CHUNK])]);
        let items = layout_items(&layout);
        let mut next = 0;
        for it in &items {
            assert_eq!(it.start, next);
            assert!(it.len > 0 && it.len <= CHUNK);
            assert_eq!((it.start - layout.specs()[it.tensor].offset) % CHUNK, 0);
            next += it.len;
        }
        assert_eq!(next, layout.total());
        assert_eq!(items.len(), 3 + 1 + 1);
    }
}
