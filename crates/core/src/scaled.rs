//! Scaled buffers: a buffer over a `Layout` stored in a narrow format with per-tensor (or per-block)
//! power-of-two scales — FP8-LM's "tensor scaling". The optimizer keeps its moments and master weights
//! in them (`octet_optim::fp8_adamw`), the narrow precision levels their f16 weights and E4M3
//! gradients (`octet_lm::narrow`), checkpoints and the distributed all-reduce their raw codes.
//!
//! A tensor `x` is held as `q = round(x * scale)` in its format and read back as
//! `decode(q) * (1 / scale)`. The scale is `2^k` with `k = floor(log2(fp_max / amax)) - margin`
//! (`crate::scaling::compute_scale`), so the tensor's largest element lands in `(fp_max / 2, fp_max]`;
//! a zero or non-finite amax keeps the previous scale. Powers of two make the scaling itself exact:
//! only the format's rounding loses information, at most its unit roundoff `u` relative for elements
//! in its normal range.
//! - `F32`: no rounding. `Bf16`: f32's range, so no scale. `F16`: FP8-LM's "FP16 with tensor scaling"
//!   (fp_max 65504): the scale moves the tensor into f16's range, whose normal part then covers 2^30
//!   below the amax. `E4M3` / `E5M2`: OCP FP8, saturating casts (`crate::fp8::quantize`).
//! - `E4M3Block128`: E4M3 with one scale per run of 128 consecutive elements of a tensor (MS-AMP's
//!   block-wise idea for an FP8 second moment): a small element only competes with its 127 neighbours.
//!
//! Work over a buffer is split into fixed `Item`s of at most `CHUNK` elements that never cross a tensor
//! boundary (`layout_items`), so parallel results never depend on the thread count. `decode_run` /
//! `encode_run` are the run codecs (`crate::codec` inside, `#[inline(always)]`): a caller that builds
//! its loop for AVX2 gets them at that width.

use std::ops::Range;
use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use crate::Layout;
use crate::codec::{E4M3, E5M2, amax_bits, bf16_bits, bf16_value, decode_fp8, f16_bits, f16_value};
use crate::fp8::{self, Fp8Format};
use crate::scaling::compute_scale;

/// Elements per work item, a multiple of `BLOCK`: an item's working set (12 KiB of f32 scratch for
/// m, v, p plus ~11 KiB of g, p and states) fits a 32 KiB L1, and an item (~1-3 µs) is long enough
/// to amortise rayon's scheduling. (512 and 2048 measured the same within noise.)
pub const CHUNK: usize = 1024;
/// Elements per scale of the block formats.
pub const BLOCK: usize = 128;
const _: () = assert!(CHUNK.is_multiple_of(BLOCK));

/// Codes format of one optimizer buffer (moments or master weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateFormat {
    /// 4 bytes, exact.
    F32,
    /// 2 bytes, IEEE half with a per-tensor power-of-two scale (FP8-LM "FP16 with tensor scaling").
    F16,
    /// 2 bytes, bfloat16 (f32's exponent range: no scale).
    Bf16,
    /// 1 byte, OCP E4M3 with a per-tensor scale.
    E4M3,
    /// 1 byte, OCP E5M2 with a per-tensor scale.
    E5M2,
    /// 1 byte, E4M3 with one scale per `BLOCK` consecutive elements of a tensor.
    E4M3Block128,
}

impl StateFormat {
    /// The per-tensor formats (the differential tests run every pair of these).
    pub const PER_TENSOR: [StateFormat; 5] =
        [StateFormat::F32, StateFormat::F16, StateFormat::Bf16, StateFormat::E4M3, StateFormat::E5M2];

    pub const fn name(self) -> &'static str {
        match self {
            StateFormat::F32 => "f32",
            StateFormat::F16 => "f16",
            StateFormat::Bf16 => "bf16",
            StateFormat::E4M3 => "e4m3",
            StateFormat::E5M2 => "e5m2",
            StateFormat::E4M3Block128 => "e4m3_block128",
        }
    }

    /// Bytes per stored element (scales not included).
    pub const fn element_bytes(self) -> usize {
        match self {
            StateFormat::F32 => 4,
            StateFormat::F16 | StateFormat::Bf16 => 2,
            StateFormat::E4M3 | StateFormat::E5M2 | StateFormat::E4M3Block128 => 1,
        }
    }

    /// Significant bits including the implicit one: 24, 11, 8, 4, 3, 4.
    pub const fn significand_bits(self) -> u32 {
        match self {
            StateFormat::F32 => 24,
            StateFormat::F16 => 11,
            StateFormat::Bf16 => 8,
            StateFormat::E4M3 | StateFormat::E4M3Block128 => Fp8Format::E4M3.mantissa_bits() + 1,
            StateFormat::E5M2 => Fp8Format::E5M2.mantissa_bits() + 1,
        }
    }

    /// Unit roundoff `2^-significand_bits`: the largest relative error of one round-to-nearest of a
    /// value in the format's normal range.
    pub fn unit_roundoff(self) -> f64 {
        0.5f64.powi(self.significand_bits() as i32)
    }

    /// Largest finite value, for the scaled formats (the target of `amax * scale`).
    pub fn fp_max(self) -> Option<f32> {
        match self {
            StateFormat::F32 | StateFormat::Bf16 => None,
            StateFormat::F16 => Some(f16::MAX.to_f32()),
            StateFormat::E4M3 | StateFormat::E4M3Block128 => Some(Fp8Format::E4M3.max()),
            StateFormat::E5M2 => Some(Fp8Format::E5M2.max()),
        }
    }

    /// Whether the stored values carry scales (counted by `ScaledBuf::bytes`).
    pub fn is_scaled(self) -> bool {
        self.fp_max().is_some()
    }

    /// Elements per scale for the block formats; `None` for one scale per tensor.
    pub const fn block(self) -> Option<usize> {
        match self {
            StateFormat::E4M3Block128 => Some(BLOCK),
            _ => None,
        }
    }

    /// Scales a tensor of `numel` elements holds: one, or one per started block.
    fn scale_count(self, numel: usize) -> usize {
        self.block().map_or(1, |b| numel.div_ceil(b))
    }
}

impl std::fmt::Display for StateFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The stored values of a buffer (or of one tensor of it), in their real format: f32 values, f16 /
/// bf16 bit patterns, or FP8 codes.
#[derive(Clone, Copy, Debug)]
pub enum StateData<'a> {
    F32(&'a [f32]),
    U16(&'a [u16]),
    U8(&'a [u8]),
}

impl<'a> StateData<'a> {
    pub fn slice(self, r: Range<usize>) -> StateData<'a> {
        match self {
            StateData::F32(d) => StateData::F32(&d[r]),
            StateData::U16(d) => StateData::U16(&d[r]),
            StateData::U8(d) => StateData::U8(&d[r]),
        }
    }
}

/// Mutable counterpart of `StateData`, split into disjoint pieces for parallel encoding.
pub enum DataMut<'a> {
    F32(&'a mut [f32]),
    U16(&'a mut [u16]),
    U8(&'a mut [u8]),
}

impl<'a> DataMut<'a> {
    pub fn split_at(self, n: usize) -> (DataMut<'a>, DataMut<'a>) {
        match self {
            DataMut::F32(d) => {
                let (a, b) = d.split_at_mut(n);
                (DataMut::F32(a), DataMut::F32(b))
            }
            DataMut::U16(d) => {
                let (a, b) = d.split_at_mut(n);
                (DataMut::U16(a), DataMut::U16(b))
            }
            DataMut::U8(d) => {
                let (a, b) = d.split_at_mut(n);
                (DataMut::U8(a), DataMut::U8(b))
            }
        }
    }
    pub fn as_ref(&self) -> StateData<'_> {
        match self {
            DataMut::F32(d) => StateData::F32(d),
            DataMut::U16(d) => StateData::U16(d),
            DataMut::U8(d) => StateData::U8(d),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Codes {
    F32(Vec<f32>),
    U16(Vec<u16>),
    U8(Vec<u8>),
}

impl Codes {
    fn zeros(format: StateFormat, n: usize) -> Codes {
        match format.element_bytes() {
            4 => Codes::F32(vec![0.0; n]),
            2 => Codes::U16(vec![0; n]), // +0.0 in f16 and bf16
            _ => Codes::U8(vec![0; n]),  // +0.0 in E4M3 and E5M2
        }
    }
    fn data(&self) -> StateData<'_> {
        match self {
            Codes::F32(d) => StateData::F32(d),
            Codes::U16(d) => StateData::U16(d),
            Codes::U8(d) => StateData::U8(d),
        }
    }
    fn data_mut(&mut self) -> DataMut<'_> {
        match self {
            Codes::F32(d) => DataMut::F32(d),
            Codes::U16(d) => DataMut::U16(d),
            Codes::U8(d) => DataMut::U8(d),
        }
    }
}

/// `out = decode(src) / scale`; `scales` holds the run's one per-tensor scale or its block scales
/// (the run starts on a block boundary of its tensor; unscaled formats ignore it). Scales are powers
/// of two, so `1 / scale` is exact and so is the product.
#[inline(always)]
pub fn decode_run(format: StateFormat, src: StateData<'_>, scales: &[f32], out: &mut [f32]) {
    match (format, src) {
        (StateFormat::F32, StateData::F32(s)) => out.copy_from_slice(s),
        (StateFormat::Bf16, StateData::U16(s)) => {
            for (o, &b) in out.iter_mut().zip(s) {
                *o = bf16_value(b);
            }
        }
        (StateFormat::F16, StateData::U16(s)) => {
            let inv = scales[0].recip();
            for (o, &h) in out.iter_mut().zip(s) {
                *o = f16_value(h) * inv;
            }
        }
        (StateFormat::E4M3, StateData::U8(s)) => decode_fp8(E4M3, s, scales[0].recip(), out),
        (StateFormat::E5M2, StateData::U8(s)) => decode_fp8(E5M2, s, scales[0].recip(), out),
        (StateFormat::E4M3Block128, StateData::U8(s)) => {
            for ((o, s), &scale) in out.chunks_mut(BLOCK).zip(s.chunks(BLOCK)).zip(scales) {
                decode_fp8(E4M3, s, scale.recip(), o);
            }
        }
        _ => unreachable!("storage does not match format {format}"),
    }
}

/// `dst = round(src * scale)` in `format`. FP8 goes through `crate::fp8::quantize` (saturating;
/// its own AVX2 build), whose `encode` cannot be inlined here across crates with its constants.
/// Per-tensor formats use `scales[0]` as given; block formats first set each block's scale from its
/// amax (a zero amax keeps the block's previous scale).
#[inline(always)]
pub fn encode_run(format: StateFormat, margin: i32, src: &[f32], scales: &mut [f32], dst: DataMut<'_>) {
    match (format, dst) {
        (StateFormat::F32, DataMut::F32(d)) => d.copy_from_slice(src),
        (StateFormat::Bf16, DataMut::U16(d)) => {
            for (d, &x) in d.iter_mut().zip(src) {
                *d = bf16_bits(x);
            }
        }
        (StateFormat::F16, DataMut::U16(d)) => {
            let scale = scales[0];
            for (d, &x) in d.iter_mut().zip(src) {
                *d = f16_bits(x * scale);
            }
        }
        (StateFormat::E4M3, DataMut::U8(d)) => _ = fp8::quantize(Fp8Format::E4M3, src, scales[0], d),
        (StateFormat::E5M2, DataMut::U8(d)) => _ = fp8::quantize(Fp8Format::E5M2, src, scales[0], d),
        (StateFormat::E4M3Block128, DataMut::U8(d)) => {
            let fp_max = Fp8Format::E4M3.max();
            for ((s, d), scale) in src.chunks(BLOCK).zip(d.chunks_mut(BLOCK)).zip(scales) {
                *scale = compute_scale(f32::from_bits(amax_bits(s)), fp_max, margin, *scale);
                fp8::quantize(Fp8Format::E4M3, s, *scale, d);
            }
        }
        _ => unreachable!("storage does not match format {format}"),
    }
}

/// A buffer over a `Layout` stored in a `StateFormat`, with its scales: one per tensor (1.0 and not
/// counted for the unscaled F32 and Bf16), or one per `BLOCK` elements of each tensor for block
/// formats. Read with `get_f32`, write with `set_f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaledBuf {
    format: StateFormat,
    layout: Arc<Layout>,
    data: Codes,
    /// `stored = round(x * scale)`; tensor `i` owns `scales[scale_offsets[i]..scale_offsets[i + 1]]`.
    scales: Vec<f32>,
    scale_offsets: Vec<usize>,
    /// Powers of two of headroom below `fp_max` (0 in FP8-LM).
    margin: i32,
}

impl ScaledBuf {
    /// All zeros, every scale 1, margin 0.
    pub fn zeros(format: StateFormat, layout: Arc<Layout>) -> Self {
        let mut scale_offsets = vec![0];
        for spec in layout.specs() {
            scale_offsets.push(scale_offsets.last().unwrap() + format.scale_count(spec.numel()));
        }
        let scales = vec![1.0; *scale_offsets.last().unwrap()];
        let data = Codes::zeros(format, layout.total());
        ScaledBuf { format, layout, data, scales, scale_offsets, margin: 0 }
    }

    /// Encode `src` (laid out as `layout`), every tensor scaled from its own amax.
    pub fn from_f32(format: StateFormat, layout: Arc<Layout>, src: &[f32]) -> Self {
        assert_eq!(src.len(), layout.total(), "ScaledBuf::from_f32: source length vs layout");
        let mut buf = ScaledBuf::zeros(format, layout);
        for i in 0..buf.layout.specs().len() {
            buf.set_f32(i, &src[buf.layout.specs()[i].range()]);
        }
        buf
    }

    /// The same buffer with `margin` powers of two of headroom in later scale choices.
    pub fn with_margin(mut self, margin: i32) -> Self {
        self.margin = margin;
        self
    }

    pub fn format(&self) -> StateFormat {
        self.format
    }
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }
    pub fn margin(&self) -> i32 {
        self.margin
    }
    pub fn numel(&self) -> usize {
        self.layout.total()
    }

    /// Real storage size in bytes: the elements in their format plus 4 bytes per f32 scale of the
    /// scaled formats (for a memory ledger).
    pub fn bytes(&self) -> usize {
        let scales = if self.format.is_scaled() { self.scales.len() } else { 0 };
        self.numel() * self.format.element_bytes() + scales * size_of::<f32>()
    }

    /// Scales of tensor `i`: one (per-tensor formats; 1.0 for F32 and Bf16) or one per block.
    pub fn scales(&self, i: usize) -> &[f32] {
        &self.scales[self.scale_offsets[i]..self.scale_offsets[i + 1]]
    }

    /// The per-tensor scale of tensor `i`. Panics for block formats (use `scales`).
    pub fn scale(&self, i: usize) -> f32 {
        assert!(self.format.block().is_none(), "{} has one scale per block; use scales()", self.format);
        self.scales[self.scale_offsets[i]]
    }

    /// Set the per-tensor scale of tensor `i` (block formats keep theirs with their blocks: no-op).
    /// The caller re-encodes the tensor's elements to match (`stored = round(x * scale)`).
    pub fn set_scale(&mut self, i: usize, scale: f32) {
        if self.format.block().is_none() {
            self.scales[self.scale_offsets[i]] = scale;
        }
    }

    /// The stored elements and all scales, mutable, to split into `Part`s (`split_parts`).
    pub fn parts_mut(&mut self) -> (DataMut<'_>, &mut [f32]) {
        (self.data.data_mut(), &mut self.scales)
    }

    /// A read-only view for item-wise decoding.
    pub fn as_ref(&self) -> BufRef<'_> {
        BufRef {
            format: self.format,
            data: self.data.data(),
            scales: &self.scales,
            scale_offsets: &self.scale_offsets,
            layout: &self.layout,
        }
    }

    /// The stored values of the whole buffer, in their real format.
    pub fn data(&self) -> StateData<'_> {
        self.data.data()
    }

    /// Decode tensor `i` into `out` (its length). Parallel over chunks for large tensors.
    pub fn get_f32(&self, i: usize, out: &mut [f32]) {
        let r = self.layout.specs()[i].range();
        assert_eq!(out.len(), r.len(), "get_f32: tensor {i} has {} elements, out {}", r.len(), out.len());
        let (data, scales) = (self.data.data().slice(r), self.scales(i));
        let per_chunk = self.format.block().map_or(0, |b| CHUNK / b);
        let decode = |(c, out): (usize, &mut [f32])| {
            let s = if per_chunk == 0 { scales } else { &scales[c * per_chunk..] };
            decode_run(self.format, data.slice(c * CHUNK..c * CHUNK + out.len()), s, out);
        };
        if out.len() >= fp8::PARALLEL_THRESHOLD {
            out.par_chunks_mut(CHUNK).enumerate().for_each(decode);
        } else {
            out.chunks_mut(CHUNK).enumerate().for_each(decode);
        }
    }

    /// Decode the whole buffer.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        for (i, spec) in self.layout.specs().iter().enumerate() {
            self.get_f32(i, &mut out[spec.range()]);
        }
        out
    }

    /// Encode `src` into tensor `i`, the scale chosen from `amax(src)` (a zero or non-finite amax
    /// keeps the previous scale; block formats do this per block). Returns `amax(src)`.
    pub fn set_f32(&mut self, i: usize, src: &[f32]) -> f32 {
        let r = self.layout.specs()[i].range();
        assert_eq!(src.len(), r.len(), "set_f32: tensor {i} has {} elements, src {}", r.len(), src.len());
        let amax = fp8::amax(src);
        let (format, margin) = (self.format, self.margin);
        let srange = self.scale_offsets[i]..self.scale_offsets[i + 1];
        if let (Some(fp_max), None) = (format.fp_max(), format.block()) {
            self.scales[srange.start] = compute_scale(amax, fp_max, margin, self.scales[srange.start]);
        }
        let tensor_scale = self.scales[srange.start];
        let data = self.data.data_mut().split_at(r.start).1.split_at(r.len()).0;
        let items = chunk_items(0, src.len());
        let parts = split_parts(data, &mut self.scales[srange], format, &items);
        let encode = |(it, (d, s)): (&Item, (DataMut<'_>, &mut [f32]))| {
            let mut tensor = [tensor_scale];
            let scales = if format.block().is_some() { s } else { &mut tensor[..] };
            encode_run(format, margin, &src[it.range()], scales, d);
        };
        if src.len() >= fp8::PARALLEL_THRESHOLD {
            items.par_iter().zip(parts).for_each(encode);
        } else {
            items.iter().zip(parts).for_each(encode);
        }
        amax
    }

    /// Sum of squares of the decoded buffer, accumulated in f64 (for the global gradient norm of
    /// gradients stored narrow). Chunked and parallel; the sum is reduced in a fixed order, so the
    /// result does not depend on the thread count.
    pub fn sum_squares(&self) -> f64 {
        self.sum_squares_parts().iter().map(|p| p.1).sum()
    }

    /// The partial sums `sum_squares` adds up in order: (tensor index, sum of squares) per fixed
    /// chunk. A sharded optimizer (ZeRO) sums its own tensors' chunks on each rank, zero elsewhere,
    /// all-reduces the list (adding zeros is exact) and gets `sum_squares` bit for bit.
    pub fn sum_squares_parts(&self) -> Vec<(usize, f64)> {
        let items = layout_items(&self.layout);
        let view = self.as_ref();
        items
            .par_iter()
            .map_init(
                || vec![0.0f32; CHUNK],
                |scratch, it| {
                    let out = &mut scratch[..it.len];
                    view.decode_item(it, out);
                    (it.tensor, out.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                },
            )
            .collect()
    }

    /// Tensor `i`'s stored elements as little-endian bytes, and its scales (one tensor of `to_raw`).
    pub fn tensor_raw(&self, i: usize) -> (Vec<u8>, &[f32]) {
        let r = self.layout.specs()[i].range();
        let bytes = match self.data.data().slice(r) {
            StateData::F32(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U16(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U8(d) => d.to_vec(),
        };
        (bytes, self.scales(i))
    }

    /// Overwrite tensor `i` with `tensor_raw`'s bytes and scales (from a buffer of the same format;
    /// e.g. a ZeRO shard's updated weights). Panics if the lengths do not match.
    pub fn set_tensor_raw(&mut self, i: usize, bytes: &[u8], scales: &[f32]) {
        let r = self.layout.specs()[i].range();
        assert_eq!(bytes.len(), r.len() * self.format.element_bytes(), "set_tensor_raw: tensor {i} bytes");
        let sr = self.scale_offsets[i]..self.scale_offsets[i + 1];
        self.scales[sr].copy_from_slice(scales);
        match &mut self.data {
            Codes::F32(d) => d[r].iter_mut().zip(bytes.chunks_exact(4)).for_each(|(x, b)| {
                *x = f32::from_le_bytes(b.try_into().unwrap());
            }),
            Codes::U16(d) => d[r].iter_mut().zip(bytes.chunks_exact(2)).for_each(|(x, b)| {
                *x = u16::from_le_bytes(b.try_into().unwrap());
            }),
            Codes::U8(d) => d[r].copy_from_slice(bytes),
        }
    }

    /// The codes and per-tensor scales of a one-byte per-tensor format (E4M3, E5M2), mutable: for
    /// a distributed all-reduce, which re-encodes every tensor under a scale shared by all ranks and
    /// sums the codes. Keep `stored = round(x * scale)` true. Panics for other formats.
    pub fn codes_and_scales_mut(&mut self) -> (&mut [u8], &mut [f32]) {
        assert!(self.format.block().is_none(), "codes_and_scales_mut: {} has block scales", self.format);
        match &mut self.data {
            Codes::U8(d) => (d, &mut self.scales),
            _ => panic!("codes_and_scales_mut: {} is not a one-byte format", self.format),
        }
    }

    /// The stored elements as little-endian bytes and the scales (for checkpoints; `from_raw`
    /// restores the buffer bit for bit).
    pub fn to_raw(&self) -> (Vec<u8>, Vec<f32>) {
        let bytes = match self.data.data() {
            StateData::F32(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U16(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateData::U8(d) => d.to_vec(),
        };
        (bytes, self.scales.clone())
    }

    /// Inverse of `to_raw`: a buffer of `format` over `layout` from its bytes and scales; an error
    /// names what does not match.
    pub fn from_raw(
        format: StateFormat,
        layout: Arc<Layout>,
        bytes: &[u8],
        scales: &[f32],
        margin: i32,
    ) -> Result<Self, String> {
        let mut buf = ScaledBuf::zeros(format, layout).with_margin(margin);
        let want = buf.numel() * format.element_bytes();
        if bytes.len() != want {
            return Err(format!("{format} buffer needs {want} bytes, found {}", bytes.len()));
        }
        if scales.len() != buf.scales.len() {
            return Err(format!("{format} buffer needs {} scales, found {}", buf.scales.len(), scales.len()));
        }
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("scale {bad} is not a positive finite number"));
        }
        buf.scales.copy_from_slice(scales);
        match &mut buf.data {
            Codes::F32(d) => d.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(x, b)| {
                *x = f32::from_le_bytes(b.try_into().unwrap());
            }),
            Codes::U16(d) => d.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(x, b)| {
                *x = u16::from_le_bytes(b.try_into().unwrap());
            }),
            Codes::U8(d) => d.copy_from_slice(bytes),
        }
        Ok(buf)
    }
}

/// One unit of work: `len <= CHUNK` elements of tensor `tensor` starting at element `start` of the
/// buffer and at a multiple of `CHUNK` within the tensor.
#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub tensor: usize,
    pub start: usize,
    pub len: usize,
}

impl Item {
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// Items covering `[start, start + n)` of tensor 0 (for one tensor) in order.
pub fn chunk_items(start: usize, n: usize) -> Vec<Item> {
    (0..n).step_by(CHUNK).map(|c| Item { tensor: 0, start: start + c, len: CHUNK.min(n - c) }).collect()
}

/// Items covering every tensor of `layout`, in order (so they tile `[0, total)`).
pub fn layout_items(layout: &Layout) -> Vec<Item> {
    let mut items = Vec::new();
    for (t, spec) in layout.specs().iter().enumerate() {
        items.extend(chunk_items(spec.offset, spec.numel()).into_iter().map(|it| Item { tensor: t, ..it }));
    }
    items
}

/// One item's disjoint pieces of a buffer: its elements and its block scales (empty for per-tensor
/// formats, whose scale the caller keeps).
pub type Part<'a> = (DataMut<'a>, &'a mut [f32]);

/// Split `data` (the elements `items` tile, in order) and, for block formats, `scales` (the blocks of
/// those elements, in order) into one disjoint piece per item. Per-tensor formats get an empty scale
/// piece: their scale is passed separately.
pub fn split_parts<'a>(
    mut data: DataMut<'a>,
    mut scales: &'a mut [f32],
    format: StateFormat,
    items: &[Item],
) -> Vec<Part<'a>> {
    let mut parts = Vec::with_capacity(items.len());
    for it in items {
        let (d, rest) = data.split_at(it.len);
        data = rest;
        let nblocks = format.block().map_or(0, |b| it.len.div_ceil(b));
        let (s, rest) = std::mem::take(&mut scales).split_at_mut(nblocks);
        scales = rest;
        parts.push((d, s));
    }
    parts
}

/// A read-only view of a `ScaledBuf`, or of plain f32 parameters (format F32, no scales).
#[derive(Clone, Copy)]
pub struct BufRef<'a> {
    format: StateFormat,
    data: StateData<'a>,
    scales: &'a [f32],
    scale_offsets: &'a [usize],
    layout: &'a Layout,
}

impl<'a> BufRef<'a> {
    pub fn plain(p: &'a [f32], layout: &'a Layout) -> BufRef<'a> {
        BufRef { format: StateFormat::F32, data: StateData::F32(p), scales: &[], scale_offsets: &[], layout }
    }

    /// Decode item `it` into `out`.
    #[inline(always)]
    pub fn decode_item(&self, it: &Item, out: &mut [f32]) {
        let s = if !self.format.is_scaled() {
            &[][..]
        } else {
            let first = self.scale_offsets[it.tensor];
            match self.format.block() {
                None => &self.scales[first..=first],
                Some(b) => {
                    let within = it.start - self.layout.specs()[it.tensor].offset;
                    &self.scales[first + within / b..first + (within + it.len).div_ceil(b)]
                }
            }
        };
        decode_run(self.format, self.data.slice(it.range()), s, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_tile_the_layout_in_chunks() {
        let layout = Layout::new([("a", vec![CHUNK * 2 + 5]), ("b", vec![3]), ("c", vec![0]), ("d", vec![CHUNK])]);
        let items = layout_items(&layout);
        let mut next = 0;
        for it in &items {
            assert_eq!(it.start, next);
            assert!(it.len > 0 && it.len <= CHUNK);
            assert_eq!((it.start - layout.specs()[it.tensor].offset) % CHUNK, 0);
            next += it.len;
        }
        assert_eq!(next, layout.total());
        assert_eq!(items.len(), 3 + 1 + 1);
    }
}
