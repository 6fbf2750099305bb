//! GGUF reader (llama.cpp's model format, v3; v2 has the same layout and is accepted): typed
//! metadata, tensor infos and memory-mapped tensor data, every field bounds-checked.
//!
//! File layout (little endian; a string is `u64 len` + that many UTF-8 bytes, no terminator):
//! ```text
//! magic    b"GGUF"
//! u32      version                 3 (2 accepted: same layout; 1 had u32 counts and is refused)
//! u64      tensor_count
//! u64      metadata_kv_count
//! kv *     key: string, value_type: u32, value
//!          (array value: elem_type u32, count u64, count values; arrays may nest)
//! info *   name: string, n_dims: u32 (<= 4), ne: u64 * n_dims, ggml_type: u32, offset: u64
//! padding  to `general.alignment` (u32, a power of two, default 32)
//! data     tensor i at data_start + offset_i; every offset is a multiple of the alignment
//! ```
//!
//! Shapes are kept in GGUF order: `dims[0]` (ggml's `ne[0]`) varies fastest. A GGUF matrix with
//! `dims = [in, out]` (ne0 = in, ne1 = out) is therefore exactly the row-major `(out, in)` matrix
//! of a PyTorch `nn.Linear` weight; [`TensorInfo::shape_row_major`] gives the reversed dims.
//!
//! Every malformed input (truncation, bad magic, unknown value or ggml type, a count or length larger
//! than the bytes left, tensor data outside the file) is an `Error::Format` naming the field, and no
//! buffer is sized from the file before that size has been checked against the bytes available.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use octet_core::{Error, Result};

use super::dequant::dequantize;
use super::tokenizer::GgufTokenizer;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// The version this reader is written against; version 2 has the same layout and is accepted.
pub const GGUF_VERSION: u32 = 3;
/// `general.alignment` when the key is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (real files use 1, nested string arrays 2).
pub const MAX_ARRAY_DEPTH: usize = 8;

// ---------------------------------------------------------------------------------------------
// Metadata values

/// The type tag of a metadata value (GGUF `gguf_metadata_value_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type takes in the file: bounds array counts.
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value. Arrays keep their element type so that empty arrays stay typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value as i128 (every GGUF integer type fits).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any integer value that fits in u64 (writers differ on u32/i32/u64 for the same key).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer value that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// An f32 or f64 value, widened to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// A short description for error messages: the type, and the element type of arrays.
    fn describe(&self) -> String {
        match self {
            Value::Array(t, v) => format!("array of {} {}", v.len(), t.name()),
            v => v.value_type().name().to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ggml tensor types

/// A ggml tensor type id (`enum ggml_type`). Only ids in [`GGML_TYPES`] are accepted by
/// [`GgufFile::open`]; [`GgmlType::can_dequantize`] says which of those [`dequantize`] decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// One row of the ggml type table: id, name, elements per block, bytes per block.
#[derive(Clone, Copy, Debug)]
pub struct GgmlTypeInfo {
    pub id: u32,
    pub name: &'static str,
    pub block_elems: u64,
    pub block_bytes: u64,
}

const fn ty(id: u32, name: &'static str, block_elems: u64, block_bytes: u64) -> GgmlTypeInfo {
    GgmlTypeInfo { id, name, block_elems, block_bytes }
}

/// ggml's type traits (`blck_size`, `type_size` in ggml.c), for bounds checks and error messages.
/// Ids 4 and 5 (Q4_2, Q4_3) and 31..33 (Q4_0_4_4 etc.) were removed from ggml and are refused.
pub const GGML_TYPES: &[GgmlTypeInfo] = &[
    ty(0, "F32", 1, 4),
    ty(1, "F16", 1, 2),
    ty(2, "Q4_0", 32, 18),
    ty(3, "Q4_1", 32, 20),
    ty(6, "Q5_0", 32, 22),
    ty(7, "Q5_1", 32, 24),
    ty(8, "Q8_0", 32, 34),
    ty(9, "Q8_1", 32, 36),
    ty(10, "Q2_K", 256, 84),
    ty(11, "Q3_K", 256, 110),
    ty(12, "Q4_K", 256, 144),
    ty(13, "Q5_K", 256, 176),
    ty(14, "Q6_K", 256, 210),
    ty(15, "Q8_K", 256, 292),
    ty(16, "IQ2_XXS", 256, 66),
    ty(17, "IQ2_XS", 256, 74),
    ty(18, "IQ3_XXS", 256, 98),
    ty(19, "IQ1_S", 256, 50),
    ty(20, "IQ4_NL", 32, 18),
    ty(21, "IQ3_S", 256, 110),
    ty(22, "IQ2_S", 256, 82),
    ty(23, "IQ4_XS", 256, 136),
    ty(24, "I8", 1, 1),
    ty(25, "I16", 1, 2),
    ty(26, "I32", 1, 4),
    ty(27, "I64", 1, 8),
    ty(28, "F64", 1, 8),
    ty(29, "IQ1_M", 256, 56),
    ty(30, "BF16", 1, 2),
    ty(34, "TQ1_0", 256, 54),
    ty(35, "TQ2_0", 256, 66),
    ty(39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    pub fn info(self) -> Option<&'static GgmlTypeInfo> {
        GGML_TYPES.iter().find(|t| t.id == self.0)
    }

    /// The ggml name ("Q4_1"), or "unknown".
    pub fn name(self) -> &'static str {
        self.info().map_or("unknown", |t| t.name)
    }

    /// Whether [`dequantize`] decodes this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q2_K
                | GgmlType::Q3_K
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// One tensor's entry in the tensor-info table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` (ne0) varies fastest.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section (a multiple of the alignment).
    pub offset: u64,
    /// Product of `dims` (1 for zero dims).
    pub n_elements: u64,
    /// Bytes of tensor data: `n_elements / block_elems * block_bytes`.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Dims reversed, slowest first: the row-major shape (`[out, in]` for a GGUF `[in, out]`).
    pub fn shape_row_major(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A bounds-checked little-endian cursor; every read names the field it is for.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::format(self.path, field, msg)
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(
                field,
                format!("truncated: needs {n} bytes at offset {}, the file has {} bytes", self.pos, self.buf.len()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, field)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u64(field)?;
        if len > self.remaining() {
            return Err(
                self.err(field, format!("string length {len} exceeds the {} bytes left in the file", self.remaining()))
            );
        }
        let bytes = self.take(len, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(field, format!("string is not UTF-8: {e}"))),
        }
    }

    fn value_type(&mut self, field: &str) -> Result<ValueType> {
        let t = self.u32(field)?;
        ValueType::from_u32(t)
            .ok_or_else(|| self.err(field, format!("unknown metadata value type {t} (known: 0..=12)")))
    }

    fn value(&mut self, t: ValueType, field: &str, depth: usize) -> Result<Value> {
        Ok(match t {
            ValueType::U8 => Value::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(field)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            ValueType::Bool => match self.array::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(field, format!("bool byte is {b}, not 0 or 1"))),
            },
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(field, format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.value_type(&format!("{field}.elem_type"))?;
                let count = self.u64(&format!("{field}.count"))?;
                let max = self.remaining() / elem.min_bytes();
                if count > max {
                    return Err(self.err(
                        &format!("{field}.count"),
                        format!(
                            "array of {count} {} cannot fit in the {} bytes left (at most {max})",
                            elem.name(),
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    items.push(self.value(elem, &format!("{field}[{i}]"), depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// The parsed header, metadata and tensor table of a GGUF file.
struct Parsed {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

fn parse(buf: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>("magic")?;
    if &magic != GGUF_MAGIC {
        return Err(c.err("magic", format!("expected b\"GGUF\", found {:?}", magic.escape_ascii().to_string())));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.err("version", "GGUF v1 (u32 counts) is not supported; convert to v3"));
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(c.err("version", format!("{v}: a big-endian GGUF? only little-endian files are supported")));
        }
        v => {
            return Err(c.err("version", format!("unsupported version {v} (reads 2 and 3)")));
        }
    }
    let tensor_count = c.u64("tensor_count")?;
    let kv_count = c.u64("metadata_kv_count")?;
    // Each kv takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least
    // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    if kv_count > c.remaining() / 13 {
        return Err(
            c.err("metadata_kv_count", format!("{kv_count} entries cannot fit in the {} bytes left", c.remaining()))
        );
    }
    if tensor_count > c.remaining() / 24 {
        return Err(c.err(
            "tensor_count",
            format!("{tensor_count} tensor infos cannot fit in the {} bytes left", c.remaining()),
        ));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = c.string(&format!("metadata[{i}].key"))?;
        let field = format!("metadata `{key}`");
        let t = c.value_type(&format!("{field}.type"))?;
        let v = c.value(t, &field, 0)?;
        if metadata.insert(key, v).is_some() {
            return Err(c.err(&field, "duplicate key"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(c.err("metadata `general.alignment`", format!("must be a u32 power of two, found {v:?}")));
        }
    };

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut index: HashMap<String, usize> = HashMap::new();
    for i in 0..tensor_count {
        let name = c.string(&format!("tensor_infos[{i}].name"))?;
        let field = format!("tensor_infos[{i}] `{name}`");
        let n_dims = c.u32(&format!("{field}.n_dims"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.err(&format!("{field}.n_dims"), format!("{n_dims} dims, at most {MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&format!("{field}.ne[{d}]"))?);
        }
        let type_id = c.u32(&format!("{field}.type"))?;
        let ggml_type = GgmlType(type_id);
        let info =
            ggml_type.info().ok_or_else(|| c.err(&format!("{field}.type"), format!("unknown ggml type {type_id}")))?;
        let offset = c.u64(&format!("{field}.offset"))?;

        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| c.err(&format!("{field}.ne"), format!("{dims:?}: too many elements")))?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(info.block_elems) {
            return Err(c.err(
                &format!("{field}.ne[0]"),
                format!("{ne0} is not a multiple of the {} block size {}", info.name, info.block_elems),
            ));
        }
        let n_bytes = (n_elements / info.block_elems)
            .checked_mul(info.block_bytes)
            .ok_or_else(|| c.err(&format!("{field}.ne"), format!("{dims:?}: too many bytes")))?;
        if index.insert(name.clone(), tensors.len()).is_some() {
            return Err(c.err(&field, "duplicate tensor name"));
        }
        tensors.push(TensorInfo { name, dims, ggml_type, offset, n_elements, n_bytes });
    }

    let data_start = align_up(c.pos as u64, alignment);
    let file_len = buf.len() as u64;
    for (i, t) in tensors.iter().enumerate() {
        let field = format!("tensor_infos[{i}] `{}`.offset", t.name);
        if !t.offset.is_multiple_of(alignment) {
            return Err(c.err(&field, format!("{} is not a multiple of the alignment {alignment}", t.offset)));
        }
        let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(c.err(
                    &field,
                    format!(
                        "tensor data out of bounds: {} bytes at data_start {data_start} + offset {} \
                         but the file has {file_len} bytes",
                        t.n_bytes, t.offset
                    ),
                ));
            }
        }
    }

    check_model_sizes(&metadata, &tensors, &c)?;
    Ok(Parsed { version, metadata, tensors, index, alignment, data_start })
}

/// The GGUF spec's `[arch].block_count`, `[arch].embedding_length` and `[arch].feed_forward_length`
/// size a model's buffers, and a loader allocates from them before it reads a single tensor. So they
/// are checked here against the tensors present (each already checked against the file's bytes),
/// with the weakest bounds every transformer meets: a block has at least one tensor, at least one
/// vector of `embedding_length` (its norm) and at least one `embedding_length x feed_forward_length`
/// matrix (its feed-forward). A file that claims more parameters than it holds is refused by name
/// instead of aborting an allocation. Keys that are absent or not a single integer are left alone.
fn check_model_sizes(metadata: &BTreeMap<String, Value>, tensors: &[TensorInfo], c: &Cursor) -> Result<()> {
    let Some(Value::String(arch)) = metadata.get("general.architecture") else {
        return Ok(());
    };
    let int = |key: &str| {
        let key = format!("{arch}.{key}");
        metadata.get(&key).and_then(Value::as_u64).map(|v| (key, u128::from(v)))
    };
    let held: u128 = tensors.iter().map(|t| u128::from(t.n_elements)).sum();
    let over = |key: &str, claim: u128, what: &str| {
        c.err(
            &format!("metadata `{key}`"),
            format!("{what} ({claim}) is more than the {held} elements of the file's {} tensors", tensors.len()),
        )
    };
    let blocks = int("block_count");
    let embd = int("embedding_length");
    if let Some((key, l)) = &blocks
        && *l > tensors.len() as u128
    {
        return Err(c.err(
            &format!("metadata `{key}`"),
            format!("{l} blocks but the file has {} tensors (a block has at least one)", tensors.len()),
        ));
    }
    let l = blocks.as_ref().map_or(1, |(_, l)| (*l).max(1));
    if let Some((key, d)) = &embd
        && d * l > held
    {
        return Err(over(key, d * l, "embedding_length x block_count"));
    }
    if let (Some((_, d)), Some((key, h))) = (&embd, int("feed_forward_length")) {
        let claim = d.saturating_mul(h).saturating_mul(l);
        if claim > held {
            return Err(over(&key, claim, "embedding_length x feed_forward_length x block_count"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The file

/// An open, memory-mapped GGUF file with its metadata and tensor table parsed and validated.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl GgufFile {
    /// Memory-map `path` and parse its header, metadata and tensor table; every tensor's data is
    /// checked to lie inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; as for every memory-mapped reader, the file must not be
        // truncated or rewritten by another process while it is open.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let p = parse(&map, path)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: p.version,
            metadata: p.metadata,
            tensors: p.tensors,
            index: p.index,
            alignment: p.alignment,
            data_start: p.data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset of the data section (tensor offsets are relative to it).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn get_as<'s, T>(&'s self, key: &str, want: &str, f: impl FnOnce(&'s Value) -> Option<T>) -> Result<T> {
        let v = self.metadata.get(key).ok_or_else(|| Error::format(&self.path, key, "missing metadata key"))?;
        f(v).ok_or_else(|| Error::format(&self.path, key, format!("expected {want}, found {}", v.describe())))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get_as(key, "a string", Value::as_str)
    }

    /// Any integer value that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_as(key, "an integer in u32 range", |v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
    }

    /// Any integer value that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_as(key, "a non-negative integer", Value::as_u64)
    }

    /// Any integer value that fits in usize.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.get_as(key, "an integer in usize range", |v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
    }

    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_as(key, "an integer in i64 range", Value::as_i64)
    }

    /// An f32 value, or an f64 rounded to f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_as(key, "a float", |v| v.as_f64().map(|x| x as f32))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get_as(key, "a float", Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get_as(key, "a bool", Value::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        self.get_as(key, "an array", Value::as_array)
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_as(key, "an array of strings", |v| v.as_array()?.iter().map(Value::as_str).collect())
    }

    /// An array of integers, each widened to i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.get_as(key, "an array of integers", |v| v.as_array()?.iter().map(Value::as_i64).collect())
    }

    /// `general.architecture` ("llama" for SmolLM2): the prefix of the model's hyperparameter keys.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_err(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name).ok_or_else(|| Error::format(&self.path, name, "no tensor of that name"))
    }

    /// The raw (possibly quantised) bytes of a tensor, borrowed from the memory map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.info_or_err(name)?;
        // In bounds: checked by `parse` against the file length.
        let start = (self.data_start + t.offset) as usize;
        Ok(&self.map[start..start + t.n_bytes as usize])
    }

    /// A tensor dequantised to f32, flat in GGUF order (`dims[0]` fastest; see the module doc).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.info_or_err(name)?;
        let bytes = self.tensor_bytes(name)?;
        let mut out = vec![0f32; t.n_elements as usize];
        dequantize(t.ggml_type, bytes, &mut out)
            .map_err(|msg| Error::format(&self.path, name, format!("{msg} for tensor `{name}`")))?;
        Ok(out)
    }

    /// The byte-level BPE tokenizer described by the `tokenizer.*` metadata (see [`GgufTokenizer`]).
    pub fn tokenizer(&self) -> Result<GgufTokenizer> {
        GgufTokenizer::from_gguf(self)
    }
}
