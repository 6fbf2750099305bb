//! FP8 E4M3 / E5M2 codecs (OCP FP8): format limits derived from exponent and mantissa bits, scalar
//! encode (round to nearest even, saturating or not, optionally stochastic) and decode, and the
//! vectorised slice kernels the training loop calls (`quantize`, `dequantize`, `amax`).
//!
//! A code is `S.E...E.M...M` (sign, `exponent_bits`, `mantissa_bits`). With `bias = 2^(e-1) - 1`:
//! exponent field 0 is zero / subnormal, `0.M * 2^(1 - bias)`; fields 1..=max are normal,
//! `1.M * 2^(E - bias)`. The two formats differ in what the top exponent field means:
//! - E5M2 is IEEE-like: field 31 holds inf (mantissa 0) and NaN (mantissa != 0), so the largest finite
//!   value is `1.11 * 2^(30 - 15) = 57344`.
//! - E4M3 "fn" (finite, NaN only): field 15 holds ordinary values except `S.1111.111`, the only NaN, so
//!   the largest finite value is `1.110 * 2^(15 - 7) = 448`.
//!
//! Everything the codecs need (bias, max, min normal, NaN / inf / max codes) is computed from those two
//! bit counts by the `const fn`s below; tests compare them with the OCP numbers, and the codecs with
//! ml_dtypes bit for bit (`tests/golden/fp8/`, written by `tools/ref/fp8_tables.py`).
//!
//! NaN handling is that of ml_dtypes: a NaN input keeps its sign and becomes the format's canonical NaN
//! (E4M3 `S.1111.111`, E5M2 `S.11111.10`). `amax` and `quantize` report NaN inputs by returning a NaN
//! amax (see `amax`), so scaling code can keep its previous scale.

use rayon::prelude::*;

use crate::dtype::DType;

/// f32 layout: 1 sign bit, 8 exponent bits (bias 127), 23 stored mantissa bits.
const F32_MANTISSA_BITS: u32 = 23;
const F32_BIAS: i32 = 127;
const F32_ABS_MASK: u32 = 0x7FFF_FFFF;
/// Bit pattern of +inf; any larger |x| bit pattern is a NaN.
const F32_INF_BITS: u32 = 0x7F80_0000;
/// The sign bit of an FP8 code.
const FP8_SIGN: u8 = 0x80;

/// Slices at least this long are split across the rayon pool. Below it one core finishes in
/// ~10-30 µs, about the cost of waking the pool, so splitting would not pay.
pub const PARALLEL_THRESHOLD: usize = 1 << 16;
/// Elements per rayon task: 64 KiB of f32 in and 16 KiB of FP8 out fit in L2 with room to spare, and
/// each task runs long enough (~5 µs) to amortise work stealing.
const PARALLEL_CHUNK: usize = 1 << 14;

/// An OCP FP8 format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fp8Format {
    /// 4 exponent bits, 3 mantissa bits, no infinities ("fn"): forward tensors (weights, activations).
    E4M3,
    /// 5 exponent bits, 2 mantissa bits, IEEE-like: gradients (wider range, less precision).
    E5M2,
}

/// What `encode` does with a finite value whose magnitude rounds above the format's max, and with inf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Clamp to +-max (training casts; FP8-LM, Transformer Engine). inf also becomes +-max.
    Saturate,
    /// What ml_dtypes' `astype` does: overflow becomes NaN in E4M3 (which has no inf) and +-inf in
    /// E5M2.
    NonSaturating,
}

impl Fp8Format {
    pub const ALL: [Fp8Format; 2] = [Fp8Format::E4M3, Fp8Format::E5M2];

    pub const fn exponent_bits(self) -> u32 {
        match self {
            Fp8Format::E4M3 => 4,
            Fp8Format::E5M2 => 5,
        }
    }

    pub const fn mantissa_bits(self) -> u32 {
        match self {
            Fp8Format::E4M3 => 3,
            Fp8Format::E5M2 => 2,
        }
    }

    /// Whether the top exponent field is reserved for inf / NaN (IEEE-like) rather than holding
    /// ordinary values with a single NaN code ("fn" formats).
    pub const fn has_infinity(self) -> bool {
        match self {
            Fp8Format::E4M3 => false,
            Fp8Format::E5M2 => true,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Fp8Format::E4M3 => "e4m3",
            Fp8Format::E5M2 => "e5m2",
        }
    }

    pub const fn dtype(self) -> DType {
        match self {
            Fp8Format::E4M3 => DType::E4M3,
            Fp8Format::E5M2 => DType::E5M2,
        }
    }

    /// IEEE-style bias `2^(exponent_bits - 1) - 1`: 7 for E4M3, 15 for E5M2.
    pub const fn bias(self) -> i32 {
        (1 << (self.exponent_bits() - 1)) - 1
    }

    /// All-ones exponent field.
    const fn exponent_field_max(self) -> u32 {
        (1 << self.exponent_bits()) - 1
    }

    /// All-ones mantissa field.
    const fn mantissa_field_max(self) -> u32 {
        (1 << self.mantissa_bits()) - 1
    }

    /// Code of the largest finite positive value. IEEE-like: exponent all-ones minus one, mantissa
    /// all-ones (E5M2 `0.11110.11` = 0x7B). "fn": exponent all-ones, mantissa all-ones minus one,
    /// because all-ones is the NaN (E4M3 `0.1111.110` = 0x7E).
    pub const fn max_code(self) -> u8 {
        let m = self.mantissa_bits();
        let code = if self.has_infinity() {
            ((self.exponent_field_max() - 1) << m) | self.mantissa_field_max()
        } else {
            (self.exponent_field_max() << m) | (self.mantissa_field_max() - 1)
        };
        code as u8
    }

    /// Code of the smallest positive normal value: exponent field 1, mantissa 0.
    pub const fn min_normal_code(self) -> u8 {
        (1u32 << self.mantissa_bits()) as u8
    }

    /// The positive NaN `encode` produces (ml_dtypes' choice). E4M3: its only NaN, all ones
    /// (0x7F). E5M2: the quiet NaN, exponent all-ones and the top mantissa bit (0x7E).
    pub const fn nan_code(self) -> u8 {
        let m = self.mantissa_bits();
        let mantissa = if self.has_infinity() { 1 << (m - 1) } else { self.mantissa_field_max() };
        ((self.exponent_field_max() << m) | mantissa) as u8
    }

    /// Code of +inf (exponent all-ones, mantissa 0), if the format has one.
    pub const fn inf_code(self) -> Option<u8> {
        if self.has_infinity() { Some((self.exponent_field_max() << self.mantissa_bits()) as u8) } else { None }
    }

    /// Largest finite value: 448 for E4M3, 57344 for E5M2.
    pub const fn max(self) -> f32 {
        decode_bits(self, self.max_code())
    }

    /// Smallest positive normal value `2^(1 - bias)`: 2^-6 for E4M3, 2^-14 for E5M2.
    pub const fn min_normal(self) -> f32 {
        decode_bits(self, self.min_normal_code())
    }

    /// Smallest positive subnormal value `2^(1 - bias - mantissa_bits)`: 2^-9 for E4M3, 2^-16 for E5M2.
    pub const fn min_subnormal(self) -> f32 {
        decode_bits(self, 1)
    }

    /// Whether `code` is a NaN of this format.
    pub const fn is_nan_code(self, code: u8) -> bool {
        let abs = (code & !FP8_SIGN) as u32;
        let top = self.exponent_field_max() << self.mantissa_bits();
        if self.has_infinity() { abs > top } else { abs == (top | self.mantissa_field_max()) }
    }

    /// The f32 value of every code, indexed by code; NaN codes decode to NaN with the code's sign.
    pub fn decode_table(self) -> &'static [f32; 256] {
        match self {
            Fp8Format::E4M3 => &E4M3_DECODE,
            Fp8Format::E5M2 => &E5M2_DECODE,
        }
    }

    /// What a non-saturating overflow produces: +inf where the format has it (E5M2), else NaN (E4M3).
    const fn overflow_code(self) -> u8 {
        match self.inf_code() {
            Some(inf) => inf,
            None => self.nan_code(),
        }
    }
}

impl std::fmt::Display for Fp8Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Fp8Format> for DType {
    fn from(f: Fp8Format) -> DType {
        f.dtype()
    }
}

impl TryFrom<DType> for Fp8Format {
    type Error = crate::Error;
    fn try_from(d: DType) -> crate::Result<Fp8Format> {
        match d {
            DType::E4M3 => Ok(Fp8Format::E4M3),
            DType::E5M2 => Ok(Fp8Format::E5M2),
            other => Err(crate::Error::Config {
                field: "dtype".into(),
                msg: format!("expected an FP8 format (e4m3 or e5m2), found {}", other.name()),
            }),
        }
    }
}

/// `2^k` for `k` in the f32 normal exponent range [-126, 127], built from its bits (exact).
const fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + F32_BIAS) as u32) << F32_MANTISSA_BITS)
}

/// Value of `code`, computed from its fields (the definition; `decode` uses a table built from it).
const fn decode_bits(fmt: Fp8Format, code: u8) -> f32 {
    let m = fmt.mantissa_bits();
    let exponent = ((code as u32) >> m) & fmt.exponent_field_max();
    let mantissa = (code as u32) & fmt.mantissa_field_max();
    let magnitude = if fmt.is_nan_code(code) {
        f32::NAN
    } else if fmt.has_infinity() && exponent == fmt.exponent_field_max() {
        f32::INFINITY
    } else if exponent == 0 {
        // Subnormal: 0.M * 2^(1 - bias) = M * 2^(1 - bias - m); M < 8, so the product is exact.
        mantissa as f32 * pow2(1 - fmt.bias() - m as i32)
    } else {
        // Normal: rebias the exponent and left-align the mantissa in f32's 23 bits.
        let f32_exponent = (exponent as i32 - fmt.bias() + F32_BIAS) as u32;
        f32::from_bits((f32_exponent << F32_MANTISSA_BITS) | (mantissa << (F32_MANTISSA_BITS - m)))
    };
    if code & FP8_SIGN != 0 { -magnitude } else { magnitude }
}

const fn build_decode_table(fmt: Fp8Format) -> [f32; 256] {
    let mut table = [0.0f32; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = decode_bits(fmt, code as u8);
        code += 1;
    }
    table
}

static E4M3_DECODE: [f32; 256] = build_decode_table(Fp8Format::E4M3);
static E5M2_DECODE: [f32; 256] = build_decode_table(Fp8Format::E5M2);

/// The f32 value of an FP8 code (exact: every FP8 value is an f32).
#[inline]
pub fn decode(fmt: Fp8Format, code: u8) -> f32 {
    fmt.decode_table()[code as usize]
}

/// Round an f32 to the nearest FP8 code, ties to even; see `Overflow` for values beyond max.
///
/// Branch-free so that slice loops vectorise. Both candidate results are computed and one selected:
/// - normal range (|x| >= min_normal): FP8 keeps the top `m` of f32's 23 mantissa bits, so round
///   the f32 bit pattern at bit `shift = 23 - m`: add `2^(shift-1) - 1` plus the lowest kept bit
///   (ties to even), truncate, rebias the exponent from 127 to `bias`. A mantissa carry spills into
///   the exponent, which is the correct next binade; far too large results are caught as overflow.
/// - subnormal range: add `magic = 2^(23 + min_subnormal exponent)`, whose f32 ulp is exactly the FP8
///   min subnormal, so the f32 adder rounds |x| to that grid (nearest even, the default mode); the
///   bits above `magic`'s are the subnormal code (possibly `min_normal_code`, correctly). f32
///   subnormal inputs take this path too; it relies on the FPU not flushing them (no FTZ / DAZ),
///   which Rust never enables.
#[inline(always)]
pub fn encode(fmt: Fp8Format, x: f32, overflow: Overflow) -> u8 {
    let m = fmt.mantissa_bits();
    let shift = F32_MANTISSA_BITS - m;
    let bits = x.to_bits();
    let sign = (bits >> 24) as u8 & FP8_SIGN;
    let abs = bits & F32_ABS_MASK;

    let round = ((1u32 << (shift - 1)) - 1) + ((abs >> shift) & 1);
    let rebias = ((F32_BIAS - fmt.bias()) as u32) << m;
    // abs <= 0x7FFF_FFFF and round < 2^shift, so the sum cannot wrap; the subtraction wraps only for
    // |x| below min_normal, where this candidate is not selected.
    let normal = ((abs + round) >> shift).wrapping_sub(rebias);

    let magic = fmt.min_subnormal() * pow2(F32_MANTISSA_BITS as i32);
    let subnormal = (f32::from_bits(abs) + magic).to_bits().wrapping_sub(magic.to_bits());

    let mut code = if abs < fmt.min_normal().to_bits() { subnormal } else { normal };
    let overflow_code = match overflow {
        Overflow::Saturate => fmt.max_code(),
        Overflow::NonSaturating => fmt.overflow_code(),
    };
    if code > fmt.max_code() as u32 {
        code = overflow_code as u32;
    }
    if abs > F32_INF_BITS {
        code = fmt.nan_code() as u32;
    }
    sign | code as u8
}

/// Stochastic rounding: round |x| up to the next FP8 value with probability equal to its distance
/// from the value below, in units of the gap (so E[decode] = x for |x| <= max), using the 32
/// uniformly random bits `random_bits`. Always saturating (overflow and inf give +-max); NaN stays NaN.
///
/// |x| is written as an integer significand `sig` times a power of two, then shifted right by the `s`
/// bits that fall below the FP8 grid. Those `s` bits are the fraction `f = rem / 2^s`, taken to 32
/// bits (truncated when `s > 32`: a bias below 2^-32 of a gap) and compared with `random_bits`:
/// round up iff `random_bits < f * 2^32`, which happens with probability `f`.
pub fn encode_stochastic(fmt: Fp8Format, x: f32, random_bits: u32) -> u8 {
    let m = fmt.mantissa_bits();
    let bits = x.to_bits();
    let sign = (bits >> 24) as u8 & FP8_SIGN;
    let abs = bits & F32_ABS_MASK;
    if abs > F32_INF_BITS {
        return sign | fmt.nan_code();
    }
    let (sig, s, offset) = if abs >= fmt.min_normal().to_bits() {
        // Normal range: the f32 bit pattern itself is the significand; its low 23 - m bits are the
        // fraction and the rest, rebiased, is the code (a carry spills into the exponent correctly).
        let rebias = ((F32_BIAS - fmt.bias()) as u64) << m;
        (abs as u64, F32_MANTISSA_BITS - m, rebias)
    } else {
        // Subnormal range: |x| = sig * 2^(e - 150) with e the f32 exponent field (1 for f32
        // subnormals), and in units of the FP8 min subnormal 2^(1 - bias - m) that is
        // sig * 2^-s with s = 151 - bias - m - e > 0 (because |x| < 2^(1 - bias)).
        let field = abs >> F32_MANTISSA_BITS;
        let mantissa = abs & ((1 << F32_MANTISSA_BITS) - 1);
        let (sig, e) = if field == 0 { (mantissa, 1) } else { (mantissa | (1 << F32_MANTISSA_BITS), field as i32) };
        let s = (F32_BIAS + F32_MANTISSA_BITS as i32 + 1 - fmt.bias() - m as i32 - e) as u32;
        (sig as u64, s, 0)
    };
    let truncated = sig.checked_shr(s).unwrap_or(0);
    let rem = sig - (truncated.checked_shl(s).unwrap_or(0));
    let fraction32 = if s <= 32 { rem << (32 - s) } else { rem.checked_shr(s - 32).unwrap_or(0) };
    let up = u64::from((random_bits as u64) < fraction32);
    let code = (truncated + up).saturating_sub(offset);
    let code = code.min(fmt.max_code() as u64);
    sign | code as u8
}

/// Largest |x| over `src` (0 for an empty slice), parallel above `PARALLEL_THRESHOLD`.
///
/// NaN is reported, not skipped: if any element is NaN the result is NaN, so that a caller updating
/// a scale from it sees a non-finite amax and keeps its previous scale (and can count the overflow).
/// The comparison is on |x| bit patterns, which order non-negative floats like their values and put
/// every NaN above +inf; the result is exact and independent of the chunking.
pub fn amax(src: &[f32]) -> f32 {
    let bits = if src.len() >= PARALLEL_THRESHOLD {
        src.par_chunks(PARALLEL_CHUNK).map(amax_bits).reduce(|| 0, u32::max)
    } else {
        amax_bits(src)
    };
    f32::from_bits(bits)
}

fn amax_bits(src: &[f32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { amax_bits_avx2(src) };
    }
    amax_bits_kernel(src)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn amax_bits_avx2(src: &[f32]) -> u32 {
    amax_bits_kernel(src)
}

#[inline(always)]
fn amax_bits_kernel(src: &[f32]) -> u32 {
    // i32 rather than u32: |x| bits fit in 31 bits, and signed max vectorises on plain x86-64 (SSE2)
    // where unsigned max needs SSE4.1.
    src.iter().fold(0i32, |acc, x| acc.max((x.to_bits() & F32_ABS_MASK) as i32)) as u32
}

/// `dst[i] = encode(fmt, src[i] * scale, Saturate)`, the training cast; returns `amax(src)` (of the
/// unscaled input, NaN if any element is NaN), computed in the same pass. Parallel above
/// `PARALLEL_THRESHOLD`. Panics if the lengths differ.
pub fn quantize(fmt: Fp8Format, src: &[f32], scale: f32, dst: &mut [u8]) -> f32 {
    assert_eq!(src.len(), dst.len(), "quantize: src has {} elements, dst {}", src.len(), dst.len());
    // One monomorphised kernel per format, so the format's constants fold into the loop.
    let kernel: fn(&[f32], f32, &mut [u8]) -> u32 = match fmt {
        Fp8Format::E4M3 => quantize_dispatch::<true>,
        Fp8Format::E5M2 => quantize_dispatch::<false>,
    };
    let bits = if src.len() >= PARALLEL_THRESHOLD {
        src.par_chunks(PARALLEL_CHUNK)
            .zip(dst.par_chunks_mut(PARALLEL_CHUNK))
            .map(|(s, d)| kernel(s, scale, d))
            .reduce(|| 0, u32::max)
    } else {
        kernel(src, scale, dst)
    };
    f32::from_bits(bits)
}

/// Runs the kernel compiled for AVX2 when the CPU has it (8 lanes instead of SSE2's 4: about twice
/// the in-cache throughput), else the baseline x86-64 build. Results are bit-identical: the same
/// integer operations and the same single f32 multiply and add, which Rust never fuses.
fn quantize_dispatch<const E4M3: bool>(src: &[f32], scale: f32, dst: &mut [u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { quantize_avx2::<E4M3>(src, scale, dst) };
    }
    quantize_kernel::<E4M3>(src, scale, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_avx2<const E4M3: bool>(src: &[f32], scale: f32, dst: &mut [u8]) -> u32 {
    quantize_kernel::<E4M3>(src, scale, dst)
}

#[inline(always)]
fn quantize_kernel<const E4M3: bool>(src: &[f32], scale: f32, dst: &mut [u8]) -> u32 {
    let fmt = if E4M3 { Fp8Format::E4M3 } else { Fp8Format::E5M2 };
    let mut acc = 0i32;
    for (d, &x) in dst.iter_mut().zip(src) {
        acc = acc.max((x.to_bits() & F32_ABS_MASK) as i32);
        *d = encode(fmt, x * scale, Overflow::Saturate);
    }
    acc as u32
}

/// `dst[i] = decode(fmt, src[i]) * scale_inv`. Parallel above `PARALLEL_THRESHOLD`. Panics if the
/// lengths differ. The 256 products are formed once (the same roundings as per element), so the loop
/// is a single table lookup.
pub fn dequantize(fmt: Fp8Format, src: &[u8], scale_inv: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize: src has {} elements, dst {}", src.len(), dst.len());
    let table = fmt.decode_table().map(|v| v * scale_inv);
    let kernel = |s: &[u8], d: &mut [f32]| {
        for (d, &c) in d.iter_mut().zip(s) {
            *d = table[c as usize];
        }
    };
    if src.len() >= PARALLEL_THRESHOLD {
        src.par_chunks(PARALLEL_CHUNK).zip(dst.par_chunks_mut(PARALLEL_CHUNK)).for_each(|(s, d)| kernel(s, d));
    } else {
        kernel(src, dst);
    }
}
