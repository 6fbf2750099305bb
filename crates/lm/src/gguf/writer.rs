//! GGUF v3 writer: metadata key/values and tensors (F32, F16, Q8_0, or bytes already encoded) into the
//! layout [`super::reader`] documents, the file written atomically.
//!
//! What it emits, in order:
//! ```text
//! b"GGUF" | u32 3 | u64 tensor_count | u64 kv_count
//! kv *    in insertion order (string key, u32 type, value; arrays: u32 elem type, u64 count, values)
//! info *  in insertion order (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
//! zeros   to the alignment (32: `general.alignment` is not written, readers default to 32)
//! data    each tensor at its offset, offsets rising and multiples of 32, zero padding between
//! ```
//! Dims are GGUF order (`ne[0]` fastest): a row-major (out, in) matrix is `[in, out]`.

use std::collections::HashSet;
use std::path::Path;

use octet_core::fs::write_atomic;
use octet_core::{Error, Result};

use super::dequant::quantize;
use super::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GgmlType, MAX_DIMS, Value, ValueType};

/// One tensor to write: name, GGUF dims, type and encoded bytes.
struct Entry {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// A GGUF file being assembled in memory; [`GgufWriter::write`] puts it on disk.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<Entry>,
    names: HashSet<String>,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a metadata key; a key added twice is an error (GGUF keys are unique).
    pub fn add(&mut self, key: &str, value: Value) -> Result<()> {
        if !self.keys.insert(key.to_string()) {
            return Err(Error::config(key, "metadata key added twice"));
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    pub fn add_str(&mut self, key: &str, v: &str) -> Result<()> {
        self.add(key, Value::String(v.to_string()))
    }

    /// A u32 value; `v` must fit.
    pub fn add_u32(&mut self, key: &str, v: usize) -> Result<()> {
        let v = u32::try_from(v).map_err(|_| Error::config(key, format!("{v} does not fit in u32")))?;
        self.add(key, Value::U32(v))
    }

    pub fn add_f32(&mut self, key: &str, v: f32) -> Result<()> {
        self.add(key, Value::F32(v))
    }

    pub fn add_bool(&mut self, key: &str, v: bool) -> Result<()> {
        self.add(key, Value::Bool(v))
    }

    pub fn add_str_array(&mut self, key: &str, v: &[String]) -> Result<()> {
        self.add(key, Value::Array(ValueType::String, v.iter().map(|s| Value::String(s.clone())).collect()))
    }

    pub fn add_i32_array(&mut self, key: &str, v: &[i32]) -> Result<()> {
        self.add(key, Value::Array(ValueType::I32, v.iter().map(|&x| Value::I32(x)).collect()))
    }

    /// Add a tensor whose bytes are already encoded as `ty`; `dims` in GGUF order.
    pub fn add_tensor_bytes(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Result<()> {
        let info = ty.info().ok_or_else(|| Error::config(name, format!("unknown ggml type {}", ty.0)))?;
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(Error::config(name, format!("{} dims; 1 to {MAX_DIMS} are allowed", dims.len())));
        }
        if !dims[0].is_multiple_of(info.block_elems) {
            return Err(Error::config(
                name,
                format!("ne[0] = {} is not a multiple of the {} block size {}", dims[0], info.name, info.block_elems),
            ));
        }
        let n: u64 = dims.iter().product();
        let want = n / info.block_elems * info.block_bytes;
        if want != data.len() as u64 {
            return Err(Error::config(
                name,
                format!("{} bytes, but {dims:?} of {} take {want}", data.len(), info.name),
            ));
        }
        if !self.names.insert(name.to_string()) {
            return Err(Error::config(name, "tensor added twice"));
        }
        self.tensors.push(Entry { name: name.to_string(), dims: dims.to_vec(), ty, data });
        Ok(())
    }

    /// Add a tensor of f32 values (GGUF order, `dims[0]` fastest), encoded as `ty` (F32, F16, Q8_0).
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, values: &[f32]) -> Result<()> {
        let n: u64 = dims.iter().product();
        if n != values.len() as u64 {
            return Err(Error::config(name, format!("{} values for dims {dims:?}", values.len())));
        }
        let data = quantize(ty, values).map_err(|e| Error::config(name, e))?;
        self.add_tensor_bytes(name, dims, ty, data)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT;
        let mut b = Vec::new();
        b.extend_from_slice(GGUF_MAGIC);
        b.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut b, k);
            b.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut b, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.0.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).next_multiple_of(align);
        }
        let data_start = (b.len() as u64).next_multiple_of(align);
        b.resize(data_start as usize, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            b.resize((data_start + off) as usize, 0);
            b.extend_from_slice(&t.data);
        }
        let end = (b.len() as u64).next_multiple_of(align);
        b.resize(end as usize, 0);
        b
    }

    /// Write the file atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
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
        Value::String(s) => put_str(b, s),
        Value::Array(t, items) => {
            b.extend_from_slice(&(*t as u32).to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                debug_assert_eq!(it.value_type(), *t, "array elements share one type");
                put_value(b, it);
            }
        }
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}
