//! FP8 codec tests: decode and encode bit for bit against ml_dtypes (tests/golden/fp8/, written by
//! tools/ref/fp8_tables.py), a million random inputs against a naive nearest-value reference encoder
//! (itself checked against ml_dtypes), overflow and NaN rules, the slice kernels and stochastic
//! rounding. `quantize_throughput` (ignored) times the slice kernels.

use octet_core::Rng;
use octet_core::fp8::{self, Fp8Format, Overflow, PARALLEL_THRESHOLD, decode, encode, encode_stochastic};
use octet_core::{DType, Tolerance};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/fp8/");
const SIGN: u8 = 0x80;

fn golden_bytes(name: &str) -> Vec<u8> {
    let path = format!("{GOLDEN}{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (regenerate with `python tools/ref/fp8_tables.py`)"))
}

fn golden_u32(name: &str) -> Vec<u32> {
    let bytes = golden_bytes(name);
    assert_eq!(bytes.len() % 4, 0, "{name}: not a whole number of u32");
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// ml_dtypes' value of every code, in code order.
fn golden_decode(fmt: Fp8Format) -> Vec<f32> {
    let table: Vec<f32> = golden_u32(&format!("{}_decode.f32le", fmt.name())).into_iter().map(f32::from_bits).collect();
    assert_eq!(table.len(), 256);
    table
}

/// The structured inputs and ml_dtypes' (non-saturating) encoding of each.
fn golden_encode(fmt: Fp8Format) -> (Vec<f32>, Vec<u8>) {
    let inputs: Vec<f32> = golden_u32("encode_inputs.f32le").into_iter().map(f32::from_bits).collect();
    let codes = golden_bytes(&format!("{}_encode.u8", fmt.name()));
    let manifest = String::from_utf8(golden_bytes("MANIFEST.txt")).unwrap();
    let count: usize = manifest
        .lines()
        .find_map(|l| l.strip_prefix("encode_inputs "))
        .expect("MANIFEST.txt names the input count")
        .parse()
        .unwrap();
    assert_eq!(inputs.len(), count, "encode_inputs.f32le vs MANIFEST.txt");
    assert_eq!(codes.len(), count, "{}_encode.u8 vs MANIFEST.txt", fmt.name());
    (inputs, codes)
}

/// Naive reference encoder, independent of the library: the nearest of the format's finite values
/// (taken from ml_dtypes' decode table) in f64, ties to the even code (the code's lowest bit is the
/// mantissa's). One extra candidate stands for overflow: the next value of the unbounded format,
/// `max + (max - previous)`, with code `max_code + 1` (odd for E4M3, whose next mantissa would be
/// 111; even for E5M2, whose next value starts a new binade). If it wins, the input overflows.
struct Reference {
    fmt: Fp8Format,
    /// (value, code) of the non-negative finite codes, ascending, then the overflow candidate.
    candidates: Vec<(f64, u32)>,
}

impl Reference {
    fn new(fmt: Fp8Format) -> Self {
        let table = golden_decode(fmt);
        let mut candidates: Vec<(f64, u32)> = (0..SIGN as u32)
            .filter(|&c| table[c as usize].is_finite())
            .map(|c| (table[c as usize] as f64, c))
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (max, max_code) = candidates[candidates.len() - 1];
        let previous = candidates[candidates.len() - 2].0;
        candidates.push((max + (max - previous), max_code + 1));
        Reference { fmt, candidates }
    }

    /// The positive code of the nearest value to |x|, or None when the overflow candidate wins.
    fn nearest(&self, x: f32) -> Option<u32> {
        let a = (x as f64).abs();
        let overflow = self.candidates[self.candidates.len() - 1];
        // At or past the overflow candidate it is the nearest; say so directly, because far out
        // (|x| ~ 1e17 and up) the f64 distances to 448 and 480 round to the same number.
        if a >= overflow.0 {
            return None;
        }
        let mut best = self.candidates[0];
        for &(v, c) in &self.candidates[1..] {
            let (d, d_best) = ((a - v).abs(), (a - best.0).abs());
            if d < d_best || (d == d_best && c % 2 == 0) {
                best = (v, c);
            }
        }
        (best.1 != overflow.1).then_some(best.1)
    }

    fn encode(&self, x: f32, overflow: Overflow) -> u8 {
        let sign = if x.is_sign_negative() { SIGN } else { 0 };
        if x.is_nan() {
            return sign | self.fmt.nan_code();
        }
        let code = match (self.nearest(x), overflow) {
            (Some(c), _) => c as u8,
            (None, Overflow::Saturate) => self.fmt.max_code(),
            (None, Overflow::NonSaturating) => match self.fmt {
                Fp8Format::E4M3 => self.fmt.nan_code(),
                Fp8Format::E5M2 => self.fmt.inf_code().unwrap(),
            },
        };
        sign | code
    }
}

/// Same bits, or both NaN.
fn same_value(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn format_limits_are_derived_from_bits_and_match_ocp() {
    let e4 = Fp8Format::E4M3;
    assert_eq!(e4.bias(), 7);
    assert_eq!(e4.max(), 448.0);
    assert_eq!(e4.min_normal(), 2f32.powi(-6));
    assert_eq!(e4.min_subnormal(), 2f32.powi(-9));
    assert_eq!(e4.max_code(), 0x7E);
    assert_eq!(e4.nan_code(), 0x7F);
    assert_eq!(e4.inf_code(), None);
    let e5 = Fp8Format::E5M2;
    assert_eq!(e5.bias(), 15);
    assert_eq!(e5.max(), 57344.0);
    assert_eq!(e5.min_normal(), 2f32.powi(-14));
    assert_eq!(e5.min_subnormal(), 2f32.powi(-16));
    assert_eq!(e5.max_code(), 0x7B);
    assert_eq!(e5.inf_code(), Some(0x7C));
    assert!(e5.is_nan_code(e5.nan_code()));
    for fmt in Fp8Format::ALL {
        assert_eq!(fmt.exponent_bits() + fmt.mantissa_bits() + 1, u8::BITS);
    }
}

#[test]
fn fp8_format_converts_to_and_from_dtype() {
    for fmt in Fp8Format::ALL {
        assert_eq!(Fp8Format::try_from(DType::from(fmt)).unwrap(), fmt);
        assert_eq!(fmt.to_string(), fmt.dtype().name());
    }
    assert!(Fp8Format::try_from(DType::BF16).is_err());
}

fn check_decode_table(fmt: Fp8Format) {
    let golden = golden_decode(fmt);
    for code in 0..=u8::MAX {
        let (got, want) = (decode(fmt, code), golden[code as usize]);
        assert!(same_value(got, want), "{fmt} code {code:#04x}: decoded {got:e}, ml_dtypes {want:e}");
        assert_eq!(fmt.is_nan_code(code), want.is_nan(), "{fmt} {code:#04x}");
    }
}

#[test]
fn e4m3_decode_matches_ml_dtypes_table() {
    check_decode_table(Fp8Format::E4M3);
}

#[test]
fn e5m2_decode_matches_ml_dtypes_table() {
    check_decode_table(Fp8Format::E5M2);
}

/// Compare an encoder with ml_dtypes on every golden input; report the first few mismatches.
fn check_against_golden(fmt: Fp8Format, who: &str, enc: impl Fn(f32) -> u8) {
    let (inputs, codes) = golden_encode(fmt);
    let bad: Vec<String> = inputs
        .iter()
        .zip(&codes)
        .filter(|&(&x, &want)| enc(x) != want)
        .take(5)
        .map(|(&x, &want)| format!("x = {x:e} ({:#010x}): got {:#04x}, ml_dtypes {want:#04x}", x.to_bits(), enc(x)))
        .collect();
    assert!(bad.is_empty(), "{who} {fmt} vs ml_dtypes on {} inputs:\n{}", inputs.len(), bad.join("\n"));
}

#[test]
fn e4m3_encode_matches_ml_dtypes_on_every_golden_input() {
    let fmt = Fp8Format::E4M3;
    check_against_golden(fmt, "encode", |x| encode(fmt, x, Overflow::NonSaturating));
}

#[test]
fn e5m2_encode_matches_ml_dtypes_on_every_golden_input() {
    let fmt = Fp8Format::E5M2;
    check_against_golden(fmt, "encode", |x| encode(fmt, x, Overflow::NonSaturating));
}

#[test]
fn reference_encoder_matches_ml_dtypes_on_every_golden_input() {
    for fmt in Fp8Format::ALL {
        let r = Reference::new(fmt);
        check_against_golden(fmt, "reference", |x| r.encode(x, Overflow::NonSaturating));
    }
}

/// Deterministic random f32 inputs: a third raw bit patterns (every exponent, NaNs, infinities), a
/// third with exponents around both formats' ranges and random mantissas, a third within a few f32
/// ulps of an FP8 value or of a midpoint between neighbours (where rounding decides).
fn random_inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    // Unbiased exponents from below E5M2's min subnormal (2^-16) to above E5M2's max (2^15).
    const LOW_EXPONENT: i32 = -20;
    const HIGH_EXPONENT: i32 = 17;
    const MAX_ULPS: i32 = 3;
    let tables = Fp8Format::ALL.map(|f| f.decode_table());
    (0..n)
        .map(|i| match i % 3 {
            0 => f32::from_bits(rng.next_u32()),
            1 => {
                let span = (HIGH_EXPONENT - LOW_EXPONENT + 1) as usize;
                let e = LOW_EXPONENT + rng.below(span) as i32;
                let bits = (rng.next_u32() & 0x8000_0000) | (((e + 127) as u32) << 23) | (rng.next_u32() & 0x007F_FFFF);
                f32::from_bits(bits)
            }
            _ => {
                let table = tables[rng.below(tables.len())];
                let c = rng.below(255) as u8;
                let (a, b) = (table[c as usize], table[c as usize + 1]);
                let base = if rng.below(2) == 0 || !(a.is_finite() && b.is_finite()) {
                    a
                } else {
                    ((a as f64 + b as f64) / 2.0) as f32
                };
                let ulps = rng.below((2 * MAX_ULPS + 1) as usize) as i32 - MAX_ULPS;
                if base.is_finite() && base != 0.0 {
                    f32::from_bits(base.to_bits().wrapping_add_signed(ulps))
                } else {
                    base
                }
            }
        })
        .collect()
}

#[test]
fn encode_matches_reference_on_a_million_random_inputs() {
    const N: usize = 1_000_000;
    let inputs = random_inputs(N, 0xF8);
    for fmt in Fp8Format::ALL {
        let r = Reference::new(fmt);
        for overflow in [Overflow::Saturate, Overflow::NonSaturating] {
            let mut bad = 0usize;
            let mut first = None;
            for &x in &inputs {
                let (got, want) = (encode(fmt, x, overflow), r.encode(x, overflow));
                if got != want {
                    bad += 1;
                    first.get_or_insert((x, got, want));
                }
            }
            if let Some((x, got, want)) = first {
                panic!(
                    "{fmt} {overflow:?}: {bad}/{N} differ; first x = {x:e} ({:#010x}): \
                     got {got:#04x}, reference {want:#04x}",
                    x.to_bits()
                );
            }
        }
    }
}

#[test]
fn encode_saturates_on_overflow() {
    for fmt in Fp8Format::ALL {
        let max = fmt.max_code();
        for x in [fmt.max() * 1.5, fmt.max() * 4.0, f32::MAX, f32::INFINITY] {
            assert_eq!(encode(fmt, x, Overflow::Saturate), max, "{fmt} {x:e}");
            assert_eq!(encode(fmt, -x, Overflow::Saturate), SIGN | max, "{fmt} {:e}", -x);
        }
        // The max itself and values rounding down to it are not overflow.
        assert_eq!(encode(fmt, fmt.max(), Overflow::NonSaturating), max);
    }
}

#[test]
fn non_saturating_overflow_is_nan_for_e4m3_and_inf_for_e5m2() {
    let e4 = Fp8Format::E4M3;
    // 464 = 448 + 32/2 is a tie between 448 (mantissa 110, even) and the absent 480: stays 448.
    assert_eq!(encode(e4, 464.0, Overflow::NonSaturating), e4.max_code());
    assert!(e4.is_nan_code(encode(e4, 464.5, Overflow::NonSaturating)));
    assert!(e4.is_nan_code(encode(e4, f32::INFINITY, Overflow::NonSaturating)));
    let e5 = Fp8Format::E5M2;
    // 61440 = 57344 + 8192/2 ties to the next binade 65536 (mantissa 00, even): overflow.
    let inf = e5.inf_code().unwrap();
    assert_eq!(encode(e5, 61439.996, Overflow::NonSaturating), e5.max_code());
    assert_eq!(encode(e5, 61440.0, Overflow::NonSaturating), inf);
    assert_eq!(encode(e5, -1e30, Overflow::NonSaturating), SIGN | inf);
}

#[test]
fn nan_stays_nan_with_its_sign() {
    for fmt in Fp8Format::ALL {
        for overflow in [Overflow::Saturate, Overflow::NonSaturating] {
            assert_eq!(encode(fmt, f32::NAN, overflow), fmt.nan_code());
            assert_eq!(encode(fmt, -f32::NAN, overflow), SIGN | fmt.nan_code());
            let signalling = f32::from_bits(0x7F80_0001);
            assert!(fmt.is_nan_code(encode(fmt, signalling, overflow)));
        }
        assert!(fmt.is_nan_code(encode_stochastic(fmt, f32::NAN, 0)));
    }
}

#[test]
fn every_code_roundtrips_through_decode_and_encode() {
    for fmt in Fp8Format::ALL {
        for code in 0..=u8::MAX {
            let back = encode(fmt, decode(fmt, code), Overflow::NonSaturating);
            if fmt.is_nan_code(code) {
                assert!(fmt.is_nan_code(back), "{fmt} {code:#04x}");
            } else {
                assert_eq!(back, code, "{fmt} {code:#04x}");
            }
        }
    }
}

/// Random N(0, sigma) data with a few exact zeros, as activations look.
fn normal_data(n: usize, sigma: f64, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| if i % 97 == 0 { 0.0 } else { (rng.normal() * sigma) as f32 }).collect()
}

#[test]
fn quantize_returns_amax_and_encodes_each_scaled_element() {
    // One length on the serial path, one on the parallel path with a ragged last chunk.
    for n in [1000, PARALLEL_THRESHOLD * 3 + 17] {
        let src = normal_data(n, 3.0, n as u64);
        let want_amax = src.iter().fold(0f32, |m, x| m.max(x.abs()));
        for fmt in Fp8Format::ALL {
            let scale = 16.0;
            let mut dst = vec![0u8; n];
            let amax = fp8::quantize(fmt, &src, scale, &mut dst);
            assert_eq!(amax, want_amax, "{fmt} n={n}");
            assert_eq!(fp8::amax(&src), want_amax);
            for (i, (&x, &c)) in src.iter().zip(&dst).enumerate() {
                assert_eq!(c, encode(fmt, x * scale, Overflow::Saturate), "[{i}]");
            }
        }
    }
}

#[test]
fn quantize_reports_nan_in_amax_and_saturates_inf() {
    for n in [100, PARALLEL_THRESHOLD + 1] {
        let mut src = normal_data(n, 1.0, 5);
        src[n / 2] = f32::INFINITY;
        let mut dst = vec![0u8; n];
        let fmt = Fp8Format::E4M3;
        assert_eq!(fp8::quantize(fmt, &src, 1.0, &mut dst), f32::INFINITY);
        assert_eq!(dst[n / 2], fmt.max_code());
        src[n - 1] = -f32::NAN;
        assert!(fp8::quantize(fmt, &src, 1.0, &mut dst).is_nan());
        assert!(fp8::amax(&src).is_nan());
        assert!(fmt.is_nan_code(dst[n - 1]));
    }
    assert_eq!(fp8::amax(&[]), 0.0);
    assert_eq!(fp8::amax(&[-0.0, -3.0, 2.0]), 3.0);
}

#[test]
fn dequantize_multiplies_decoded_values_by_scale_inv() {
    for n in [256, PARALLEL_THRESHOLD * 2 + 3] {
        let src: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
        for fmt in Fp8Format::ALL {
            let scale_inv = 0.125;
            let mut dst = vec![0f32; n];
            fp8::dequantize(fmt, &src, scale_inv, &mut dst);
            for (&c, &y) in src.iter().zip(&dst) {
                assert!(same_value(y, decode(fmt, c) * scale_inv), "{fmt} {c:#04x}");
            }
        }
    }
}

#[test]
fn quantize_then_dequantize_is_within_one_rounding() {
    let src = normal_data(10_000, 1.0, 11);
    for (fmt, tol) in [(Fp8Format::E4M3, Tolerance::E4M3), (Fp8Format::E5M2, Tolerance::E5M2)] {
        let (scale, scale_inv) = (64.0, 1.0 / 64.0);
        let mut q = vec![0u8; src.len()];
        fp8::quantize(fmt, &src, scale, &mut q);
        let mut back = vec![0f32; src.len()];
        fp8::dequantize(fmt, &q, scale_inv, &mut back);
        tol.assert_close(fmt.name(), &back, &src);
    }
}

/// The two FP8 values around |x| (equal when x is representable), from the golden table.
fn neighbours(fmt: Fp8Format, x: f32) -> (f32, f32) {
    let mut finite: Vec<f32> = golden_decode(fmt).into_iter().filter(|v| v.is_finite() && *v >= 0.0).collect();
    finite.sort_by(f32::total_cmp);
    let a = x.abs();
    let below = *finite.iter().rev().find(|&&v| v <= a).unwrap();
    let above = *finite.iter().find(|&&v| v >= a).unwrap_or(&fmt.max());
    (below, above)
}

#[test]
fn stochastic_rounding_is_unbiased() {
    const DRAWS: usize = 200_000;
    // The mean of DRAWS Bernoulli(p) choices between values `gap` apart has standard deviation
    // gap * sqrt(p (1 - p) / DRAWS) <= gap / (2 sqrt(DRAWS)); allow 5 of those.
    const SIGMAS: f64 = 5.0;
    let mut rng = Rng::new(42);
    for fmt in Fp8Format::ALL {
        let tiny = fmt.min_subnormal();
        let cases = [
            1.3f32,
            -1.3,
            0.7,
            100.1,
            fmt.max() * 0.97,
            fmt.min_normal() * 1.37,
            tiny * 0.3,
            tiny * 2.71,
            -tiny * 5.5,
            fmt.min_normal() * 0.9,
        ];
        for x in cases {
            let (lo, hi) = neighbours(fmt, x);
            let gap = (hi - lo) as f64;
            let mean = (0..DRAWS).map(|_| decode(fmt, encode_stochastic(fmt, x, rng.next_u32())) as f64).sum::<f64>()
                / DRAWS as f64;
            let bound = SIGMAS * gap / (2.0 * (DRAWS as f64).sqrt());
            assert!(
                (mean - x as f64).abs() <= bound,
                "{fmt} x = {x:e}: mean {mean:e}, |error| {:e} > {bound:e}",
                (mean - x as f64).abs()
            );
        }
    }
}

#[test]
fn stochastic_rounding_picks_a_neighbour_and_keeps_exact_values() {
    let mut rng = Rng::new(7);
    for fmt in Fp8Format::ALL {
        for x in random_inputs(30_000, 3) {
            if !x.is_finite() || x.abs() > fmt.max() {
                continue;
            }
            let y = decode(fmt, encode_stochastic(fmt, x, rng.next_u32()));
            let (lo, hi) = neighbours(fmt, x);
            assert!(y.abs() == lo || y.abs() == hi, "{fmt} x = {x:e}: got {y:e}, neighbours {lo:e} {hi:e}");
            assert_eq!(y.is_sign_negative(), x.is_sign_negative(), "{fmt} {x:e}");
        }
        for code in 0..=u8::MAX {
            let v = decode(fmt, code);
            if v.is_finite() {
                for bits in [0, u32::MAX, rng.next_u32()] {
                    assert_eq!(encode_stochastic(fmt, v, bits), code, "{fmt} {code:#04x}");
                }
            }
        }
        // Beyond max saturates, whatever the random bits.
        for bits in [0, u32::MAX] {
            assert_eq!(encode_stochastic(fmt, f32::INFINITY, bits), fmt.max_code());
            assert_eq!(encode_stochastic(fmt, -fmt.max() * 1.01, bits), SIGN | fmt.max_code());
        }
    }
}

/// Time the slice kernels on 2^24 elements (64 MiB of f32). Run with
/// `cargo test -p octet-core --test fp8_codec -- --ignored --nocapture quantize_throughput`.
#[test]
#[ignore = "timing, not a check"]
fn quantize_throughput() {
    const N: usize = 1 << 24;
    const REPS: u32 = 10;
    let src = normal_data(N, 1.0, 1);
    let mut q = vec![0u8; N];
    let mut back = vec![0f32; N];
    let time = |name: &str, bytes_moved: usize, f: &mut dyn FnMut()| {
        f(); // warm up (page faults, thread pool)
        let start = std::time::Instant::now();
        for _ in 0..REPS {
            f();
        }
        let s = start.elapsed().as_secs_f64() / REPS as f64;
        println!(
            "{name:<18} {:7.2} ms  {:6.0} M elem/s  {:5.1} GB/s",
            s * 1e3,
            N as f64 / s / 1e6,
            bytes_moved as f64 / s / 1e9
        );
    };
    println!("{N} elements, {} rayon threads", rayon::current_num_threads());
    for fmt in Fp8Format::ALL {
        time(&format!("quantize {fmt}"), N * 5, &mut || {
            std::hint::black_box(fp8::quantize(fmt, &src, 2.0, &mut q));
        });
        time(&format!("dequantize {fmt}"), N * 5, &mut || {
            fp8::dequantize(fmt, &q, 0.5, &mut back);
        });
    }
    time("amax", N * 4, &mut || {
        std::hint::black_box(fp8::amax(&src));
    });
    let serial = &src[..PARALLEL_THRESHOLD - 1];
    let mut qs = vec![0u8; serial.len()];
    let reps = 2000;
    let start = std::time::Instant::now();
    for _ in 0..reps {
        std::hint::black_box(fp8::quantize(Fp8Format::E4M3, serial, 2.0, &mut qs));
    }
    let s = start.elapsed().as_secs_f64() / reps as f64;
    println!("quantize e4m3 single thread ({} elements): {:.0} M elem/s", serial.len(), serial.len() as f64 / s / 1e6);
}
