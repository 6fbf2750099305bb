//! ggml block formats against the `gguf` package (tests/golden/gguf/kquants.json, written by
//! tools/ref/gguf_kquants.py): dequantisation of Q8_0, Q4_0, Q4_1 and the K-quants Q2_K..Q6_K on
//! synthetic blocks, Q8_0 quantisation and f32 -> f16 rounding, all bit for bit; plus f32 -> f16
//! against `half` on every f16 value and the midpoints around it.

use octet_core::codec::{f16_bits, f16_value};
use octet_core::dtype::round_f16;
use octet_lm::gguf::{GGML_TYPES, GgmlType, dequantize, quantize, quantize_q8_0};

fn golden() -> serde_json::Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/gguf/kquants.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn unhex(v: &serde_json::Value) -> Vec<u8> {
    let s = v.as_str().expect("hex string");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[track_caller]
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i}: {} ({:#x}) vs gguf {} ({:#x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn every_block_format_dequantises_bit_exactly_like_the_gguf_package() {
    let g = golden();
    let types = g["dequant"].as_object().unwrap();
    let want = ["Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0"];
    assert_eq!(types.keys().map(String::as_str).collect::<Vec<_>>(), want);
    for (name, case) in types {
        let info = GGML_TYPES.iter().find(|t| t.name == name).unwrap();
        let ty = GgmlType(info.id);
        assert!(ty.can_dequantize(), "{name}");
        let (blocks, values) = (unhex(&case["blocks"]), f32s(&unhex(&case["values"])));
        assert_eq!(blocks.len() as u64 / info.block_bytes * info.block_elems, values.len() as u64, "{name}");
        let mut out = vec![f32::NAN; values.len()];
        dequantize(ty, &blocks, &mut out).unwrap();
        assert_bits(&out, &values, name);
        // Sizes that are not whole blocks are refused.
        let err = dequantize(ty, &blocks[1..], &mut out).unwrap_err();
        assert!(err.contains("do not hold"), "{name}: {err}");
    }
}

#[test]
fn q8_0_quantisation_matches_the_gguf_package_bit_for_bit() {
    let g = golden();
    let x = f32s(&unhex(&g["q8_0_quantize"]["input"]));
    let want = unhex(&g["q8_0_quantize"]["output"]);
    let got = quantize_q8_0(&x);
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("byte {i} (block {}, offset {}): {} vs gguf {}", i / 34, i % 34, got[i], want[i]);
    }
    assert_eq!(quantize(GgmlType::Q8_0, &x).unwrap(), want);
}

/// The error bound of the definition: per block of 32, q = round(x / dt) with dt = amax / 127 in f32
/// (|q| <= 127), stored d = f16(dt); dequantised y = q d, so |x - y| <= |x - q dt| + |q| |dt - d|
/// <= dt / 2 + 127 |dt - d| (the second term is the f16 rounding of the scale, <= 127 dt 2^-11).
#[test]
fn q8_0_round_trip_error_is_within_half_a_step() {
    let mut rng = octet_core::Rng::new(7);
    let x: Vec<f32> = (0..32 * 64).map(|i| (rng.normal() * (1.0 + (i / 32) as f64)) as f32).collect();
    let q = quantize_q8_0(&x);
    let mut y = vec![0.0; x.len()];
    dequantize(GgmlType::Q8_0, &q, &mut y).unwrap();
    for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f16_value(u16::from_le_bytes([q[b * 34], q[b * 34 + 1]]));
        assert_eq!(d, round_f16(amax / 127.0), "block {b}: stored scale");
        for (xi, yi) in xb.iter().zip(yb) {
            let dt = amax / 127.0;
            let bound = dt / 2.0 + 127.0 * (dt - d).abs() + 1e-6 * amax;
            assert!((xi - yi).abs() <= bound, "block {b}: {xi} -> {yi}, bound {bound}");
        }
    }
    // All zeros: d = 0 and q = 0, no division by zero.
    assert_eq!(quantize_q8_0(&[0.0; 32]), vec![0u8; 34]);
}

#[test]
fn f16_encoding_matches_numpy_on_ties_overflow_and_subnormals() {
    let g = golden();
    let x = f32s(&unhex(&g["f16_encode"]["input"]));
    let want: Vec<u16> =
        unhex(&g["f16_encode"]["output"]).chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    for (v, w) in x.iter().zip(&want) {
        assert_eq!(f16_bits(*v), *w, "{v:e}");
    }
    assert_eq!(quantize(GgmlType::F16, &x).unwrap(), unhex(&g["f16_encode"]["output"]));
}

/// Every finite f16 value encodes to itself, and the values around each gap between neighbours (the
/// midpoint, and one f32 ulp either side) round as `half` rounds them (nearest, ties to even).
#[test]
fn f16_encoding_agrees_with_half_everywhere() {
    for h in 0u16..=0xffff {
        let x = f16_value(h);
        if x.is_nan() {
            assert!(f16_value(f16_bits(x)).is_nan());
            continue;
        }
        assert_eq!(f16_bits(x), h, "{x:e}");
        if h & 0x7fff < 0x7bff {
            let next = f16_value(h + 1);
            let mid = ((f64::from(x) + f64::from(next)) / 2.0) as f32;
            for v in [mid, f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1)] {
                assert_eq!(f16_value(f16_bits(v)).to_bits(), round_f16(v).to_bits(), "{v:e} (after {h:#x})");
            }
        }
    }
    for v in [1e-30f32, -1e-30, f32::MIN_POSITIVE / 2.0, 1e30, f32::INFINITY, f32::NEG_INFINITY] {
        assert_eq!(f16_value(f16_bits(v)).to_bits(), round_f16(v).to_bits(), "{v:e}");
    }
}
