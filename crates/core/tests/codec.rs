//! The branch-free codecs of `octet_core::codec` against their references, bit for bit: `half` for
//! f16/bf16, `octet_core::fp8::decode` (ml_dtypes' tables) for FP8.

use half::f16;
use octet_core::codec::{E4M3, E5M2, bf16_bits, bf16_value, f16_bits, f16_value, fp8_value};
use octet_core::fp8::{self, Fp8Format};

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
fn bf16_values_match_half() {
    for h in 0..=u16::MAX {
        let (got, want) = (bf16_value(h), half::bf16::from_bits(h).to_f32());
        assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
    }
}
