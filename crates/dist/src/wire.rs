//! The arithmetic of the narrow all-reduces, as plain functions: the bodies of the custom MPI
//! reductions (`crate::mpi`) and what the tests check them against.
//!
//! E4M3 sum (FP8-LM's FP8 gradient all-reduce): every rank's codes are under one shared scale S, so
//! adding codes adds the scaled values. One addition `a (+) b = encode(decode(a) + decode(b))`:
//! decoding is exact, and the f32 sum of two E4M3 values is exact too (each has 4 significant bits
//! between 2^-9 and 2^8, so the sum needs at most 4 + 17 < 24 bits); the only rounding is the encode
//! (nearest even, saturating at +-448). An addition therefore errs by at most half an E4M3 ulp of its
//! result: `|e| <= u |a + b| + d` with `u = 2^-4` (3 mantissa bits) in the normal range and `d =
//! 2^-10` (half the subnormal spacing 2^-9) below it. `crate`'s users derive the bound of a whole
//! N-rank sum from this (octet-lm `dist`); NaN codes propagate; saturation is counted by the caller
//! (`saturated`).
//!
//! bf16 sum: `a (+) b = bf16(f32(a) + f32(b))`, the f32 addition exact or rounded once (a and b have 8
//! significant bits, an f32 holds 24), then one rounding to bf16 (nearest even).

use octet_core::codec::{bf16_bits, bf16_value};
use octet_core::fp8::{self, Fp8Format, Overflow};

/// `acc[i] = acc[i] (+) x[i]` in E4M3 (module doc). Never panics (it runs inside MPI): extra
/// elements of the longer slice are left alone.
pub fn e4m3_add_into(acc: &mut [u8], x: &[u8]) {
    let t = Fp8Format::E4M3.decode_table();
    for (a, &b) in acc.iter_mut().zip(x) {
        *a = fp8::encode(Fp8Format::E4M3, t[*a as usize] + t[b as usize], Overflow::Saturate);
    }
}

/// `acc[i] = acc[i] (+) x[i]` in bf16 (module doc). Never panics.
pub fn bf16_add_into(acc: &mut [u16], x: &[u16]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a = bf16_bits(bf16_value(*a) + bf16_value(b));
    }
}

/// Codes at +-448, the E4M3 maximum: values the sum may have clipped (FP8-LM's overflow signal for
/// its automatic gradient scaling factor).
pub fn saturated(codes: &[u8]) -> usize {
    let max = Fp8Format::E4M3.max_code();
    codes.iter().filter(|&&c| c & 0x7F == max).count()
}

/// f32 values to bf16 bit patterns (nearest even).
pub fn to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_bits(s);
    }
}

/// bf16 bit patterns to f32 (exact).
pub fn from_bf16(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_value(s);
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    #[test]
    fn e4m3_addition_is_exact_on_the_grid_and_rounds_once_off_it() {
        let e = |x: f32| fp8::encode(Fp8Format::E4M3, x, Overflow::Saturate);
        let d = |c: u8| fp8::decode(Fp8Format::E4M3, c);
        let mut acc = [e(1.0), e(-2.0), e(448.0), e(1.0), e(2f32.powi(-9))];
        e4m3_add_into(&mut acc, &[e(2.0), e(0.5), e(448.0), e(0.0625), e(2f32.powi(-9))]);
        assert_eq!(d(acc[0]), 3.0);
        assert_eq!(d(acc[1]), -1.5);
        assert_eq!(d(acc[2]), 448.0, "saturates, no NaN");
        // 1.0625 lies halfway between 1 and 1.125: ties to even (1.000).
        assert_eq!(d(acc[3]), 1.0);
        assert_eq!(d(acc[4]), 2f32.powi(-8), "subnormals add exactly");
        assert_eq!(saturated(&acc), 1);
    }

    #[test]
    fn bf16_addition_rounds_the_exact_sum_once() {
        let mut a = [bf16::from_f32(1.0).to_bits()];
        e_bf16(&mut a, 2f32.powi(-9));
        assert_eq!(bf16::from_bits(a[0]).to_f32(), 1.0, "below half an ulp (2^-8) of 1");
        let mut a = [bf16::from_f32(1.0).to_bits()];
        e_bf16(&mut a, 2f32.powi(-7));
        assert_eq!(bf16::from_bits(a[0]).to_f32(), 1.0 + 2f32.powi(-7));
    }

    fn e_bf16(acc: &mut [u16], x: f32) {
        bf16_add_into(acc, &[bf16::from_f32(x).to_bits()]);
    }
}
