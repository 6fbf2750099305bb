//! Branch-free scalar codecs for bf16, f16 and FP8 (selects, no table lookups, `#[inline(always)]`),
//! so that loops over a run of elements vectorise wherever they are inlined: the scaled buffers
//! (`crate::scaled`) and FP8-LM's AdamW compile their loops for AVX2 with these inside.
//!
//! One reference per format: f16/bf16 are IEEE binary16 and bfloat16 as the `half` crate implements
//! them (`crate::dtype::round_f16` / `round_bf16`); FP8 is `crate::fp8::{encode, decode}` (checked
//! against ml_dtypes' tables). `tests/codec.rs` checks every function here bit for bit against its
//! reference: all 65,536 f16 codes, all 256 codes of each FP8 format, and f32 inputs covering the
//! specials, every rounding boundary of f16 and 200,000 further bit patterns. NaNs come out quiet,
//! keeping the top of their payload (what F16C's `vcvtps2ph` and `half` do).
//!
//! FP8 encoding stays in `crate::fp8::quantize` (saturating, its own AVX2 build); decoding is here.

use crate::fp8::Fp8Format;

/// bf16 bits -> f32 (exact: bf16 is the top half of an f32). A NaN comes out quiet (its quiet bit
/// set, the rest of the payload kept), as `half` does.
#[inline(always)]
pub fn bf16_value(h: u16) -> f32 {
    let bits = (h as u32) << 16;
    let quiet = if bits & 0x7FFF_FFFF > 0x7F80_0000 { 0x0040_0000 } else { 0 };
    f32::from_bits(bits | quiet)
}

/// f32 -> bf16 bits, round to nearest even (add 0x7FFF plus the kept lsb); NaN stays a quiet NaN.
/// Equal to `half::bf16::from_f32(x).to_bits()`.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
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
/// payload (what F16C's `vcvtps2ph` and `half::f16::from_f32` do). As `crate::fp8::encode`:
/// normal results round the f32 bit pattern at bit 13 and rebias (a carry into the exponent is the
/// right next binade, up to inf); results below 2^-14 come from adding 0.5, whose f32 ulp 2^-24 is
/// f16's smallest subnormal, so the FPU's own rounding lands on the subnormal grid.
#[inline(always)]
pub fn f16_bits(x: f32) -> u16 {
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
pub fn f16_value(h: u16) -> f32 {
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
pub struct Fp8Consts {
    mantissa_bits: u32,
    bias: u32,
    min_subnormal: f32,
    has_infinity: bool,
    /// Exponent field all ones, in place (E5M2: inf if the mantissa is 0, else NaN).
    top: u32,
}

/// The constants of `fmt` (use the `E4M3` / `E5M2` consts below).
pub const fn fp8_consts(fmt: Fp8Format) -> Fp8Consts {
    Fp8Consts {
        mantissa_bits: fmt.mantissa_bits(),
        bias: fmt.bias() as u32,
        min_subnormal: fmt.min_subnormal(),
        has_infinity: fmt.has_infinity(),
        top: ((1 << fmt.exponent_bits()) - 1) << fmt.mantissa_bits(),
    }
}

/// OCP E4M3's constants.
pub const E4M3: Fp8Consts = fp8_consts(Fp8Format::E4M3);
/// OCP E5M2's constants.
pub const E5M2: Fp8Consts = fp8_consts(Fp8Format::E5M2);

/// FP8 code -> f32 (exact), computed from the fields like `crate::fp8`'s table.
#[inline(always)]
pub fn fp8_value(f: Fp8Consts, c: u8) -> f32 {
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

/// Largest |x| as a bit pattern (NaN above inf), like `crate::fp8::amax`.
#[inline(always)]
pub fn amax_bits(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |acc, v| acc.max(v.to_bits() & 0x7FFF_FFFF))
}

/// `out[i] = fp8_value(src[i]) * inv` (`inv` a power of two: exact).
#[inline(always)]
pub fn decode_fp8(f: Fp8Consts, src: &[u8], inv: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(src) {
        *o = fp8_value(f, c) * inv;
    }
}
