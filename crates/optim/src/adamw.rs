//! AdamW with decoupled weight decay (Loshchilov & Hutter), bias-corrected moments:
//! m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p).
//! Weight decay applies per tensor: the model says which (matrices yes; norms, biases, gains no).
//! The spec is `adamw_reference` (f64) here; the fast f32 step is the kernel `octet_kernels::cpu::adamw_update`.

use std::sync::Arc;

use octet_core::{Allocator, Layout, Result, Slab};
use octet_kernels::cpu::adamw_update;

pub use octet_kernels::AdamWConfig;

/// The spec: one AdamW update of `p` in f64, step `t` >= 1.
#[allow(clippy::too_many_arguments)]
pub fn adamw_reference(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    t: u64,
    lr: f64,
    cfg: &AdamWConfig,
    decay: bool,
) {
    let wd = if decay { cfg.weight_decay } else { 0.0 };
    let (c1, c2) = (1.0 - cfg.beta1.powi(t as i32), 1.0 - cfg.beta2.powi(t as i32));
    for i in 0..p.len() {
        m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
        v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
        p[i] -= lr * ((m[i] / c1) / ((v[i] / c2).sqrt() + cfg.eps) + wd * p[i]);
    }
}

/// AdamW state over a parameter layout: m and v share the parameters' layout table.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Slab<f32>,
    pub v: Slab<f32>,
    /// Completed steps (the next update uses t = step + 1).
    pub step: u64,
    /// One flag per tensor of the layout: apply weight decay?
    decay: Vec<bool>,
}

impl AdamW {
    pub fn new(layout: Arc<Layout>, decay: Vec<bool>, cfg: AdamWConfig) -> Self {
        assert_eq!(decay.len(), layout.specs().len(), "one decay flag per tensor");
        AdamW { cfg, m: Slab::zeros(layout.clone()), v: Slab::zeros(layout), step: 0, decay }
    }

    /// `new` with m and v in `alloc`'s memory (a device backend's; None: the host heap).
    pub fn new_in(
        layout: Arc<Layout>,
        decay: Vec<bool>,
        cfg: AdamWConfig,
        alloc: Option<&Arc<dyn Allocator>>,
    ) -> Result<Self> {
        assert_eq!(decay.len(), layout.specs().len(), "one decay flag per tensor");
        let (m, v) = (Slab::zeros_in(layout.clone(), alloc)?, Slab::zeros_in(layout, alloc)?);
        Ok(AdamW { cfg, m, v, step: 0, decay })
    }

    /// One update of every tensor in `params` (laid out as `self.m.layout`) with learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        self.update_with(params, grads, lr, adamw_update);
    }

    /// `update` with each tensor's step done by `step_fn` (`cpu::adamw_update`'s signature: p, g, m, v, t,
    /// lr, cfg, decay), e.g. a backend's kernel over its own memory.
    pub fn update_with(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        lr: f64,
        mut step_fn: impl FnMut(&mut [f32], &[f32], &mut [f32], &mut [f32], u64, f64, &AdamWConfig, bool),
    ) {
        self.step += 1;
        for (spec, &decay) in self.m.layout.specs().iter().zip(&self.decay) {
            let r = spec.range();
            let (m, v) = (&mut self.m.data[r.clone()], &mut self.v.data[r.clone()]);
            step_fn(&mut params[r.clone()], &grads[r], m, v, self.step, lr, &self.cfg, decay);
        }
    }
}
