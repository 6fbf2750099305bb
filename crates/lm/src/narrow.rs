//! Narrow parameter storage for FP8-LM's O1 and O2 levels (PAPERS.md section 1): weights held in f16
//! with a per-tensor power-of-two scale (2 bytes per parameter) and weight gradients in E4M3 with a
//! just-in-time per-tensor scale (1 byte), instead of f32 (4 + 4).
//!
//! Scales are per *unit*: each layer's slice of a block tensor (`qkvw` of layer 3 = unit `qkvw.3`) is
//! its own tensor with its own scale, as MS-AMP scales each parameter tensor of each layer. The unit
//! layout lists the same elements at the same offsets as the model's parameter layout, so the
//! optimizer, the narrow buffers and the model's f32 layout index the same element the same way.
//!
//! The model computes in f32 on a small working set (the tensors outside the blocks plus ONE block,
//! i.e. the parameter layout built with `n_layer = 1`): forward decodes layer l into it before
//! running layer l; backward decodes it again, zeroes the block's gradient, runs layer l's backward
//! and encodes the block's f32 gradient into E4M3 (so at most one block's f32 gradient exists at a
//! time); the top tensors' gradients are encoded after the whole backward. A GPU FP8 GEMM would read
//! the f16 weights and cast them per layer the same way.
//!
//! Gradients are stored per backward (not accumulated across calls) unless `accumulate` is set
//! (gradient accumulation): then each layer's stored E4M3 gradient is decoded, the new f32 block
//! gradient added, and the sum re-encoded under a new just-in-time scale; the top tensors' f32
//! gradients stay in the working set across backwards (only `zero_grad` clears them), so their
//! encode already holds the sum. An encode whose f32 amax is not finite sets `overflow` (kept across
//! an accumulation): the trainer skips that step and lowers its gradient scale.

use std::ops::Range;
use std::sync::Arc;

use octet_core::{Allocator, Error, Float, Layout, Result, ScaledBuf, Slab, StateFormat};
use octet_kernels::Memory;

use crate::precision::Precision;

/// Storage formats of the narrow levels: f16 weights with tensor scaling, E4M3 weight gradients.
pub const WEIGHT_FORMAT: StateFormat = StateFormat::F16;
pub const GRAD_FORMAT: StateFormat = StateFormat::E4M3;

/// One unit and where it lives in the working set.
#[derive(Clone, Debug)]
struct Unit {
    /// Index in the unit layout (and in the narrow buffers' scale tables).
    index: usize,
    /// Its elements in the working (one-block) f32 buffers.
    work: Range<usize>,
}

/// Weights (f16) and gradients (E4M3) of a model over its unit layout, plus the map to the working set.
#[derive(Clone, Debug)]
pub struct Narrow {
    pub units: Arc<Layout>,
    pub weights: ScaledBuf,
    pub grads: ScaledBuf,
    /// Index of the parameter tensor each unit belongs to (for per-tensor flags such as weight decay).
    pub parent: Vec<usize>,
    layers: Vec<Vec<Unit>>,
    top: Vec<Unit>,
    /// True once an encoded gradient had a NaN or inf; cleared by `begin_backward` (unless accumulating).
    pub overflow: bool,
    /// Add each layer's new gradient to the stored one (micro-batches after the first of a step).
    pub accumulate: bool,
}

/// The unit layout of `full`: tensors whose shape differs from the same-named tensor of `working`
/// (the one-block layout) are split along their leading (layer) dimension into `name.l`; the others
/// are kept whole. Offsets equal `full`'s. Also returns each unit's parent tensor index.
pub fn unit_layout(full: &Layout, working: &Layout) -> (Layout, Vec<usize>) {
    let mut entries = vec![];
    let mut parent = vec![];
    for (t, s) in full.specs().iter().enumerate() {
        let w = working.spec(working.expect_id(&s.name));
        if w.shape == s.shape {
            entries.push((s.name.clone(), s.shape.clone()));
            parent.push(t);
        } else {
            assert_eq!(w.shape[1..], s.shape[1..], "{}: working tensor must be one layer of the full one", s.name);
            for l in 0..s.shape[0] {
                entries.push((format!("{}.{l}", s.name), s.shape[1..].to_vec()));
                parent.push(t);
            }
        }
    }
    let units = Layout::new(entries);
    debug_assert_eq!(units.total(), full.total());
    (units, parent)
}

impl Narrow {
    /// Encode `params` (laid out as `full`) into narrow storage; `working` is `full` with one layer.
    pub fn new(full: &Layout, working: &Layout, n_layer: usize, params: &[f32]) -> Narrow {
        let mut nw = Narrow::zeros(full, working, n_layer);
        for (t, s) in full.specs().iter().enumerate() {
            nw.set_tensor(t, &params[s.range()]);
        }
        nw
    }

    /// Parameter tensor `t` of the full layout from f32 values: each of its units encoded with its
    /// own scale.
    pub fn set_tensor(&mut self, t: usize, values: &[f32]) {
        let first = self.parent.iter().position(|&p| p == t).expect("tensor index in layout");
        let mut at = 0;
        for u in first..self.parent.len() {
            if self.parent[u] != t {
                break;
            }
            let n = self.units.specs()[u].numel();
            self.weights.set_f32(u, &values[at..at + n]);
            at += n;
        }
        assert_eq!(at, values.len(), "set_tensor: values vs tensor {t}");
    }

    /// Narrow storage holding `weights` (as saved in a checkpoint: over the unit layout of `full`).
    pub fn from_weights(full: &Layout, working: &Layout, n_layer: usize, weights: ScaledBuf) -> Narrow {
        let mut nw = Narrow::zeros(full, working, n_layer);
        assert_eq!(**weights.layout(), *nw.units, "weights over the unit layout");
        assert_eq!(weights.format(), WEIGHT_FORMAT, "narrow weights format");
        nw.weights = weights;
        nw
    }

    /// All-zero narrow storage for `full` (fill it with `set_tensor`).
    pub fn zeros(full: &Layout, working: &Layout, n_layer: usize) -> Narrow {
        let (units, parent) = unit_layout(full, working);
        let units = Arc::new(units);
        let mut layers = vec![vec![]; n_layer];
        let mut top = vec![];
        let mut index = 0;
        for s in full.specs() {
            let wid = working.expect_id(&s.name);
            if working.spec(wid).shape == s.shape {
                top.push(Unit { index, work: working.range(wid) });
                index += 1;
            } else {
                for layer in layers.iter_mut().take(s.shape[0]) {
                    layer.push(Unit { index, work: working.range_at(wid, 0) });
                    index += 1;
                }
            }
        }
        let weights = ScaledBuf::zeros(WEIGHT_FORMAT, units.clone());
        let grads = ScaledBuf::zeros(GRAD_FORMAT, units.clone());
        Narrow { units, weights, grads, parent, layers, top, overflow: false, accumulate: false }
    }

    /// Decode the tensors outside the blocks into the working set `work`.
    pub fn stage_top(&self, work: &mut [f32]) {
        for u in &self.top {
            self.weights.get_f32(u.index, &mut work[u.work.clone()]);
        }
    }

    /// Decode layer `l`'s block tensors into the working set's block.
    pub fn stage_layer(&self, l: usize, work: &mut [f32]) {
        for u in &self.layers[l] {
            self.weights.get_f32(u.index, &mut work[u.work.clone()]);
        }
    }

    /// Zero layer `l`'s block gradient in the working set (before its backward).
    pub fn zero_layer_grads(&self, l: usize, gwork: &mut [f32]) {
        for u in &self.layers[l] {
            gwork[u.work.clone()].fill(0.0);
        }
    }

    pub fn begin_backward(&mut self) {
        if !self.accumulate {
            self.overflow = false;
        }
    }

    /// Encode layer `l`'s f32 block gradient from the working set into E4M3 (with `accumulate`: the
    /// stored gradient plus it).
    pub fn store_layer_grads(&mut self, l: usize, gwork: &[f32]) {
        let mut sum = vec![];
        for i in 0..self.layers[l].len() {
            let u = self.layers[l][i].clone();
            let amax = if self.accumulate {
                sum.resize(u.work.len(), 0.0);
                self.grads.get_f32(u.index, &mut sum);
                sum.iter_mut().zip(&gwork[u.work]).for_each(|(s, &g)| *s += g);
                self.grads.set_f32(u.index, &sum)
            } else {
                self.grads.set_f32(u.index, &gwork[u.work])
            };
            self.overflow |= !amax.is_finite();
        }
    }

    /// Encode the gradients of the tensors outside the blocks.
    pub fn store_top_grads(&mut self, gwork: &[f32]) {
        for i in 0..self.top.len() {
            let u = self.top[i].clone();
            let amax = self.grads.set_f32(u.index, &gwork[u.work]);
            self.overflow |= !amax.is_finite();
        }
    }

    /// Every weight decoded to f32, laid out as the full parameter layout (for export and sampling).
    pub fn weights_f32(&self) -> Vec<f32> {
        self.weights.to_f32()
    }

    /// Per-unit flags from per-parameter-tensor flags (e.g. weight decay).
    pub fn unit_flags(&self, per_tensor: &[bool]) -> Vec<bool> {
        self.parent.iter().map(|&t| per_tensor[t]).collect()
    }
}

// The model-facing staging steps. Each waits for the backend (`Memory::synchronize`) before the host
// writes or reads the working set, so a device backend's queued kernels never see it change under them.

/// Decode the tensors outside the blocks into the working set (no-op without narrow storage).
pub fn stage_top<F: 'static>(be: &impl Memory, narrow: Option<&Narrow>, params: &mut [F]) {
    if let Some(nw) = narrow {
        be.synchronize();
        nw.stage_top(as_f32_mut(params));
    }
}

/// Where layer `l`'s weights are in a model's f32 parameter buffer for its forward: with narrow
/// storage, decoded into the working set's one block (index 0); without, layer `l` in place.
pub fn stage_forward<F: 'static>(be: &impl Memory, narrow: Option<&Narrow>, l: usize, params: &mut [F]) -> usize {
    match narrow {
        Some(nw) => {
            be.synchronize();
            nw.stage_layer(l, as_f32_mut(params));
            0
        }
        None => l,
    }
}

/// The same for layer `l`'s backward, whose gradient block is also zeroed in the working set (it is
/// encoded by `store_backward` after the layer). Re-decodes the layer even when forward left it staged,
/// so nothing run in between (sampling, a cached forward) can leave stale weights there.
pub fn stage_backward<F: 'static>(
    be: &impl Memory,
    narrow: Option<&Narrow>,
    l: usize,
    params: &mut [F],
    grads: &mut [F],
) -> usize {
    match narrow {
        Some(nw) => {
            be.synchronize();
            nw.stage_layer(l, as_f32_mut(params));
            nw.zero_layer_grads(l, as_f32_mut(grads));
            0
        }
        None => l,
    }
}

/// After layer `l`'s backward: its f32 gradient block into E4M3 (no-op without narrow storage).
pub fn store_backward<F: 'static>(be: &impl Memory, narrow: Option<&mut Narrow>, l: usize, grads: &[F]) {
    if let Some(nw) = narrow {
        be.synchronize();
        nw.store_layer_grads(l, as_f32(grads));
    }
}

/// After the whole backward: the top tensors' f32 gradients into E4M3.
pub fn store_top<F: 'static>(be: &impl Memory, narrow: Option<&mut Narrow>, grads: &[F]) {
    if let Some(nw) = narrow {
        be.synchronize();
        nw.store_top_grads(as_f32(grads));
    }
}

/// `x` as f32 when `F` is f32 (narrow storage is f32-only; the f64 reference backend never uses it).
pub fn as_f32_mut<F: 'static>(x: &mut [F]) -> &mut [f32] {
    assert_eq!(std::any::TypeId::of::<F>(), std::any::TypeId::of::<f32>(), "narrow storage needs f32 compute");
    // SAFETY: F is f32 (checked above), so the slice is a valid &mut [f32] of the same length.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
}

/// Shared-reference counterpart of `as_f32_mut`.
pub fn as_f32<F: 'static>(x: &[F]) -> &[f32] {
    assert_eq!(std::any::TypeId::of::<F>(), std::any::TypeId::of::<f32>(), "narrow storage needs f32 compute");
    // SAFETY: as in `as_f32_mut`.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
}

/// Move a model's weights into or out of narrow storage as `precision` requires: into `narrow` (the
/// f32 `params` / `grads` shrink to the one-block `working` layout) for fp8-o1/o2, back to f32 over
/// `full` otherwise; nothing between two narrow levels. Returns the layout of the model's f32 buffers
/// when it changed (the model re-resolves its parameter ids from it). New buffers come from `alloc`
/// (the backend's memory; None: the host heap).
pub fn switch_storage<F: Float>(
    precision: Precision,
    narrow: &mut Option<Narrow>,
    params: &mut Slab<F>,
    grads: &mut Slab<F>,
    full: Layout,
    working: Layout,
    n_layer: usize,
    alloc: Option<&Arc<dyn Allocator>>,
) -> Result<Option<Arc<Layout>>> {
    let layout = match (precision.is_narrow(), narrow.take()) {
        (true, Some(nw)) => {
            *narrow = Some(nw);
            return Ok(None);
        }
        (true, None) => {
            if std::any::TypeId::of::<F>() != std::any::TypeId::of::<f32>() {
                return Err(Error::config("precision", format!("`{precision}` stores weights for f32 compute only")));
            }
            let working = Arc::new(working);
            *narrow = Some(Narrow::new(&params.layout, &working, n_layer, as_f32(&params.data)));
            *params = Slab::zeros_in(working.clone(), alloc)?;
            working
        }
        (false, Some(nw)) => {
            let full = Arc::new(full);
            let w = nw.weights_f32().into_iter().map(F::from_f32).collect();
            *params = Slab::from_vec_in(full.clone(), w, alloc)?;
            full
        }
        (false, None) => return Ok(None),
    };
    *grads = Slab::zeros_in(layout.clone(), alloc)?;
    Ok(Some(layout))
}
