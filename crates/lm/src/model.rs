//! The one interface the trainer, the training benchmark, the memory ledger and the sampler drive a
//! decoder-only language model through, so `octet train --block ...` runs every block kind with the
//! same loop, checkpoints and precision levels as GPT-2. Implemented once, for the decoder shell
//! (`crate::decoder::Decoder`) of every architecture over every f32 backend (the CPU; a device over
//! host-addressable memory). A `crate::spec::ModelSpec` builds one.

use octet_core::{Result, Slab};
use octet_kernels::Backend;
use octet_optim::AdamW;

use crate::decoder::{Arch, Decoder};
use crate::narrow::Narrow;
use crate::precision::{LinearScaling, Precision};

/// Where a model keeps its weights and gradients.
pub enum Buffers<'a> {
    /// f32 parameters and gradients over the model's parameter layout (fp32, bf16, fp8-te).
    Plain { params: &'a mut Slab<f32>, grads: &'a mut Slab<f32> },
    /// f16 weights and E4M3 gradients (fp8-o1, fp8-o2; `crate::narrow`).
    Narrow(&'a mut Narrow),
}

/// A decoder-only language model with hand-written backward (see `Gpt2` for the conventions).
pub trait LanguageModel {
    /// Forward over `tokens` (B*T); with `targets`, the mean cross-entropy.
    fn forward(&mut self, tokens: &[u32], targets: Option<&[u32]>, b: usize, t: usize) -> Result<Option<f64>>;
    /// Backward of the last forward with targets (loss gradient times the gradient scale).
    fn backward(&mut self) -> Result<()>;
    fn zero_grad(&mut self);
    /// Raw logits (B*T, padded vocab) of the last forward without targets.
    fn logits(&self) -> &[f32];
    /// (vocab_size, padded_vocab).
    fn vocab(&self) -> (usize, usize);
    fn max_seq_len(&self) -> usize;
    fn num_params(&self) -> usize;
    /// Weight decay per tensor of the full parameter layout.
    fn decay_flags(&self) -> Vec<bool>;
    /// The full parameter layout (also at the narrow levels, whose f32 buffers hold one block).
    fn full_layout(&self) -> octet_core::Layout;
    fn buffers(&mut self) -> Buffers<'_>;
    fn narrow(&self) -> Option<&Narrow>;
    /// Plain parameters and gradients (None at the narrow levels).
    fn plain(&self) -> Option<(&Slab<f32>, &Slab<f32>)>;
    fn set_grad_scale(&mut self, s: f64);
    /// Add the next backward's gradients to the stored ones (gradient accumulation) instead of
    /// starting from the zeroed gradients of `zero_grad`; matters at the narrow levels, whose layer
    /// gradients are stored per backward.
    fn set_accumulate(&mut self, on: bool);
    fn precision(&self) -> Precision;
    fn scaling(&self) -> &[LinearScaling];
    fn scaling_mut(&mut self) -> &mut Vec<LinearScaling>;
    /// Elements of activations, activation-gradient scratch and cast workspace.
    fn activation_elems(&self) -> (usize, usize, usize);
    /// Bytes of f32 buffers besides the weight-related state (the narrow levels' working set).
    fn working_bytes(&self) -> usize;
    /// Allocate activations for (B, T) batches (forward does this on demand).
    fn ensure_acts(&mut self, b: usize, t: usize) -> Result<()>;
    /// The memory the model's buffers come from (its backend's; None: the host heap).
    fn allocator(&self) -> Option<std::sync::Arc<dyn octet_core::Allocator>>;
    /// Clip and AdamW-update the plain parameters on the model's backend (`plain_update`);
    /// returns the gradient norm before clipping. Plain levels only.
    fn plain_update(&mut self, opt: &mut AdamW, clip: f64, lr: f64) -> f64;
    /// Add LoRA adapters (`crate::lora`); the optimizer then trains only them.
    fn enable_lora(&mut self, rank: usize, alpha: f64, seed: u64) -> Result<()>;
    /// The adapters' parameter layout and values, when LoRA is on.
    fn lora_params(&self) -> Option<&Slab<f32>>;
    /// Clip the adapters' gradient norm and AdamW-update them; returns the norm before clipping.
    fn lora_update(&mut self, opt: &mut AdamW, clip: f64, lr: f64) -> f64;
    /// Every weight with the adapters merged in (f32, full layout); None without LoRA.
    fn merged_params(&self) -> Option<Vec<f32>>;
}

impl<Bk: Backend<F = f32>, A: Arch> LanguageModel for Decoder<Bk, A> {
    fn forward(&mut self, tokens: &[u32], targets: Option<&[u32]>, b: usize, t: usize) -> Result<Option<f64>> {
        Decoder::forward(self, tokens, targets, b, t)
    }
    fn backward(&mut self) -> Result<()> {
        Decoder::backward(self)
    }
    fn zero_grad(&mut self) {
        Decoder::zero_grad(self)
    }
    fn logits(&self) -> &[f32] {
        Decoder::logits(self)
    }
    fn vocab(&self) -> (usize, usize) {
        let d = self.cfg.dims();
        (d.vocab_size, d.padded_vocab)
    }
    fn max_seq_len(&self) -> usize {
        self.cfg.dims().max_seq_len
    }
    fn num_params(&self) -> usize {
        self.cfg.param_layout().total()
    }
    fn decay_flags(&self) -> Vec<bool> {
        self.cfg.decay_flags(&self.cfg.param_layout())
    }
    fn full_layout(&self) -> octet_core::Layout {
        self.cfg.param_layout()
    }
    fn buffers(&mut self) -> Buffers<'_> {
        match &mut self.narrow {
            Some(nw) => Buffers::Narrow(nw),
            None => Buffers::Plain { params: &mut self.params, grads: &mut self.grads },
        }
    }
    fn narrow(&self) -> Option<&Narrow> {
        self.narrow.as_ref()
    }
    fn plain(&self) -> Option<(&Slab<f32>, &Slab<f32>)> {
        if self.narrow.is_some() { None } else { Some((&self.params, &self.grads)) }
    }
    fn set_grad_scale(&mut self, s: f64) {
        self.grad_scale = s;
    }
    fn set_accumulate(&mut self, on: bool) {
        if let Some(nw) = &mut self.narrow {
            nw.accumulate = on;
        }
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    fn scaling(&self) -> &[LinearScaling] {
        &self.scaling
    }
    fn scaling_mut(&mut self) -> &mut Vec<LinearScaling> {
        &mut self.scaling
    }
    fn activation_elems(&self) -> (usize, usize, usize) {
        Decoder::activation_elems(self)
    }
    fn working_bytes(&self) -> usize {
        if self.narrow.is_some() { (self.params.data.len() + self.grads.data.len()) * 4 } else { 0 }
    }
    fn ensure_acts(&mut self, b: usize, t: usize) -> Result<()> {
        Decoder::ensure_acts(self, b, t)
    }
    fn allocator(&self) -> Option<std::sync::Arc<dyn octet_core::Allocator>> {
        self.backend.allocator()
    }
    fn plain_update(&mut self, opt: &mut AdamW, clip: f64, lr: f64) -> f64 {
        assert!(self.narrow.is_none(), "plain_update at a narrow level");
        plain_update(&self.backend, &mut self.params.data, &mut self.grads.data, opt, clip, lr)
    }
    fn enable_lora(&mut self, rank: usize, alpha: f64, seed: u64) -> Result<()> {
        Decoder::enable_lora(self, rank, alpha, seed)
    }
    fn lora_params(&self) -> Option<&Slab<f32>> {
        self.lora.as_ref().map(|l| &l.params)
    }
    fn lora_update(&mut self, opt: &mut AdamW, clip: f64, lr: f64) -> f64 {
        let lo = self.lora.as_mut().expect("lora_update without adapters");
        plain_update(&self.backend, &mut lo.params.data, &mut lo.grads.data, opt, clip, lr)
    }
    fn merged_params(&self) -> Option<Vec<f32>> {
        Decoder::merged_params(self)
    }
}

/// The plain levels' update on the model's backend (so a device backend runs it in its memory):
/// global-norm clipping to `clip` (0 = off), then one AdamW step. Returns the norm before clipping;
/// a non-finite norm changes nothing (the caller reports it). On the CPU this is exactly
/// `clip_global_norm` + `AdamW::update`.
pub fn plain_update<Bk: Backend<F = f32>>(
    be: &Bk,
    params: &mut [f32],
    grads: &mut [f32],
    opt: &mut AdamW,
    clip: f64,
    lr: f64,
) -> f64 {
    let norm = be.global_norm(grads);
    if !norm.is_finite() {
        return norm;
    }
    if clip > 0.0 && norm > clip {
        be.scale_in_place(grads, (clip / norm) as f32);
    }
    opt.update_with(params, grads, lr, |p, g, m, v, t, lr, cfg, decay| be.adamw_update(p, g, m, v, t, lr, cfg, decay));
    // The step is done when this returns: the next step, a checkpoint or the caller may touch the
    // weights, moments or gradients from the host (a device backend queues the updates).
    be.synchronize();
    norm
}
