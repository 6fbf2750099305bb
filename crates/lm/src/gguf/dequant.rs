//! ggml block formats: decoding every type octet reads to f32 ([`dequantize`], one function per
//! type, each following ggml's `dequantize_row_*` in ggml-quants.c operation for operation so that
//! the result is bit-exact), and encoding the types octet writes (F16, Q8_0).
//!
//! Block layouts (little endian; `f16` is IEEE binary16; every product and sum is one f32 operation,
//! rounded, never fused, in the order written):
//! ```text
//! Q8_0  34 B / 32:  d f16 | q i8 x32                              x[i] = q[i] * d
//! Q4_0  18 B / 32:  d f16 | qs u8 x16                             x[i] = (nib(i) - 8) * d
//! Q4_1  20 B / 32:  d f16 | m f16 | qs u8 x16                     x[i] = nib(i) * d + m
//!       nib(i): byte i (i < 16) low nibble, byte i - 16 high nibble
//! Q2_K  84 B / 256: scales u8 x16 | qs u8 x64 | d f16 | dmin f16
//!       e = 128h + 32t + l (h < 2, t < 4, l < 32):  q = (qs[32h + l] >> 2t) & 3
//!       s = scales[e / 16]:  x[e] = (d * (s & 15)) * q - dmin * (s >> 4)
//! Q3_K  110 B / 256: hmask u8 x32 | qs u8 x64 | scales 12 B (16 x 6 bits) | d f16
//!       e = 128h + 32t + l:  q = ((qs[32h + l] >> 2t) & 3) - (bit e/32 of hmask[l] ? 0 : 4)
//!       scale j < 16: low 4 bits = scales[j % 8] >> 4(j / 8), high 2 bits = scales[8 + j % 4] >> 2(j / 4)
//!       x[e] = (d * (scale[e / 16] - 32)) * q
//! Q4_K  144 B / 256: d f16 | dmin f16 | scales 12 B (8 x (6-bit sc, 6-bit m)) | qs u8 x128
//!       j < 4: sc = s[j] & 63, m = s[j + 4] & 63
//!       j >= 4: sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4, m = (s[j + 4] >> 4) | (s[j] >> 6) << 4
//!       e = 32j + l:  q = (qs[32(j / 2) + l] >> 4(j % 2)) & 15;  x[e] = (d * sc[j]) * q - dmin * m[j]
//! Q5_K  176 B / 256: d f16 | dmin f16 | scales 12 B (as Q4_K) | qh u8 x32 | qs u8 x128
//!       e = 32j + l:  q = Q4_K's q | ((qh[l] >> j) & 1) << 4;    x[e] = (d * sc[j]) * q - dmin * m[j]
//! Q6_K  210 B / 256: ql u8 x128 | qh u8 x64 | scales i8 x16 | d f16
//!       e = 128h + 64s + k = 128h + 32t + l (s < 2, k < 64):
//!       q = ((ql[64h + k] >> 4s) & 15 | ((qh[32h + l] >> 2t) & 3) << 4) - 32
//!       x[e] = (d * scales[e / 16]) * q
//! ```
//! These are ggml's `dequantize_row_q2_K` .. `dequantize_row_q6_K` loops flattened to one index;
//! `crates/lm/tests/gguf_kquants.rs` checks them bit for bit against the `gguf` package's
//! `gguf.quants` on synthetic blocks (tests/golden/gguf/kquants.json, tools/ref/gguf_kquants.py).
//!
//! Encoding: F16 rounds to nearest, ties to even (`octet_core::codec::f16_bits`, octet's one f16
//! codec); Q8_0 ([`quantize_q8_0`]) is `quantize_row_q8_0_ref`: per block of 32, `amax = max |x|`, `d = amax / 127`, `id = 1 / d`
//! (0 when d = 0), `q = round(x * id)` (half away from zero), `d` stored as f16.

use octet_core::codec::{bf16_value, f16_bits, f16_value};

use super::reader::GgmlType;

#[inline]
fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// Decode `src`, the data of `out.len()` elements of type `ty`, into `out`. The error message says
/// why (unsupported type, or sizes that do not agree).
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
    let info = ty.info().ok_or_else(|| format!("unknown ggml type {}", ty.0))?;
    let n = out.len() as u64;
    if !n.is_multiple_of(info.block_elems) || (n / info.block_elems) * info.block_bytes != src.len() as u64 {
        return Err(format!("{} bytes of {} do not hold {n} elements", src.len(), info.name));
    }
    let f: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => dequantize_f32,
        GgmlType::F16 => dequantize_f16,
        GgmlType::BF16 => dequantize_bf16,
        GgmlType::Q8_0 => dequantize_q8_0,
        GgmlType::Q4_0 => dequantize_q4_0,
        GgmlType::Q4_1 => dequantize_q4_1,
        GgmlType::Q2_K => dequantize_q2_k,
        GgmlType::Q3_K => dequantize_q3_k,
        GgmlType::Q4_K => dequantize_q4_k,
        GgmlType::Q5_K => dequantize_q5_k,
        GgmlType::Q6_K => dequantize_q6_k,
        _ => return Err(format!("unsupported ggml type {ty}")),
    };
    f(src, out);
    Ok(())
}

// Each `dequantize_*` below takes whole blocks: `src.len()` is `out.len()` / block elements times the
// block bytes (checked by `dequantize`).

fn dequantize_f32(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn dequantize_f16(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16_value(le16(b));
    }
}

fn dequantize_bf16(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16_value(le16(b));
    }
}

fn dequantize_q8_0(src: &[u8], out: &mut [f32]) {
    for (blk, o) in src.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_value(le16(blk));
        for (x, &q) in o.iter_mut().zip(&blk[2..]) {
            *x = f32::from(q as i8) * d;
        }
    }
}

fn dequantize_q4_0(src: &[u8], out: &mut [f32]) {
    for (blk, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_value(le16(blk));
        let (lo, hi) = o.split_at_mut(16);
        for (j, &q) in blk[2..].iter().enumerate() {
            lo[j] = f32::from((q & 0x0f) as i8 - 8) * d;
            hi[j] = f32::from((q >> 4) as i8 - 8) * d;
        }
    }
}

fn dequantize_q4_1(src: &[u8], out: &mut [f32]) {
    for (blk, o) in src.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = f16_value(le16(blk));
        let m = f16_value(le16(&blk[2..]));
        let (lo, hi) = o.split_at_mut(16);
        for (j, &q) in blk[4..].iter().enumerate() {
            lo[j] = f32::from(q & 0x0f) * d + m;
            hi[j] = f32::from(q >> 4) * d + m;
        }
    }
}

/// Elements per K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

fn dequantize_q2_k(src: &[u8], out: &mut [f32]) {
    for (blk, y) in src.chunks_exact(84).zip(out.chunks_exact_mut(QK_K)) {
        let (scales, qs) = (&blk[..16], &blk[16..80]);
        let (d, dmin) = (f16_value(le16(&blk[80..])), f16_value(le16(&blk[82..])));
        for (e, x) in y.iter_mut().enumerate() {
            let (h, t, l) = (e / 128, e % 128 / 32, e % 32);
            let q = (qs[32 * h + l] >> (2 * t)) & 3;
            let s = scales[e / 16];
            *x = d * f32::from(s & 15) * f32::from(q) - dmin * f32::from(s >> 4);
        }
    }
}

fn dequantize_q3_k(src: &[u8], out: &mut [f32]) {
    for (blk, y) in src.chunks_exact(110).zip(out.chunks_exact_mut(QK_K)) {
        let (hmask, qs, sc) = (&blk[..32], &blk[32..96], &blk[96..108]);
        let d = f16_value(le16(&blk[108..]));
        let scale: [f32; 16] = std::array::from_fn(|j| {
            let lo = (sc[j % 8] >> (4 * (j / 8))) & 15;
            let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
            d * f32::from((lo | hi << 4) as i8 - 32)
        });
        for (e, x) in y.iter_mut().enumerate() {
            let (h, t, l) = (e / 128, e % 128 / 32, e % 32);
            let low = ((qs[32 * h + l] >> (2 * t)) & 3) as i8;
            let q = if (hmask[l] >> (e / 32)) & 1 == 1 { low } else { low - 4 };
            *x = scale[e / 16] * f32::from(q);
        }
    }
}

/// The eight (scale, min) pairs of a Q4_K / Q5_K block's 12 scale bytes (ggml's `get_scale_min_k4`).
fn scale_min_k4(s: &[u8]) -> [(u8, u8); 8] {
    std::array::from_fn(|j| {
        if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            ((s[j + 4] & 15) | (s[j - 4] >> 6) << 4, (s[j + 4] >> 4) | (s[j] >> 6) << 4)
        }
    })
}

fn dequantize_q4_k(src: &[u8], out: &mut [f32]) {
    for (blk, y) in src.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_value(le16(blk)), f16_value(le16(&blk[2..])));
        let sm = scale_min_k4(&blk[4..16]);
        let qs = &blk[16..];
        for (j, ys) in y.chunks_exact_mut(32).enumerate() {
            let (dl, ml) = (d * f32::from(sm[j].0), dmin * f32::from(sm[j].1));
            for (l, x) in ys.iter_mut().enumerate() {
                let q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15;
                *x = dl * f32::from(q) - ml;
            }
        }
    }
}

fn dequantize_q5_k(src: &[u8], out: &mut [f32]) {
    for (blk, y) in src.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_value(le16(blk)), f16_value(le16(&blk[2..])));
        let sm = scale_min_k4(&blk[4..16]);
        let (qh, qs) = (&blk[16..48], &blk[48..]);
        for (j, ys) in y.chunks_exact_mut(32).enumerate() {
            let (dl, ml) = (d * f32::from(sm[j].0), dmin * f32::from(sm[j].1));
            for (l, x) in ys.iter_mut().enumerate() {
                let q = ((qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15) | ((qh[l] >> j) & 1) << 4;
                *x = dl * f32::from(q) - ml;
            }
        }
    }
}

fn dequantize_q6_k(src: &[u8], out: &mut [f32]) {
    for (blk, y) in src.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
        let d = f16_value(le16(&blk[208..]));
        for (e, x) in y.iter_mut().enumerate() {
            let (h, r) = (e / 128, e % 128);
            let lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 15;
            let hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            let q = (lo | hi << 4) as i8 - 32;
            *x = d * f32::from(scales[e / 16] as i8) * f32::from(q);
        }
    }
}

/// Encode `x` as `ty` (F32, F16 or Q8_0: the types the writer emits); `x.len()` must be a whole
/// number of blocks.
pub fn quantize(ty: GgmlType, x: &[f32]) -> std::result::Result<Vec<u8>, String> {
    let info = ty.info().ok_or_else(|| format!("unknown ggml type {}", ty.0))?;
    if !(x.len() as u64).is_multiple_of(info.block_elems) {
        return Err(format!("{} elements are not whole {} blocks of {}", x.len(), info.name, info.block_elems));
    }
    Ok(match ty {
        GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => x.iter().flat_map(|&v| f16_bits(v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => quantize_q8_0(x),
        _ => return Err(format!("writing ggml type {ty} is not supported (F32, F16, Q8_0)")),
    })
}

/// Q8_0 blocks of `x` (`x.len()` a multiple of 32): see the module doc.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(32), "Q8_0 needs whole blocks of 32, got {} values", x.len());
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bits(d).to_le_bytes());
        // |x id| <= 127 up to rounding, so the cast never saturates on finite input.
        out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}
