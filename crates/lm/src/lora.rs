//! LoRA (low-rank adapters): a frozen linear y = x W^T (W (OC, IC)) gains a trainable rank-r update,
//! y = x W^T + s (x A^T) B^T with A (r, IC), B (OC, r), s = alpha / r; A starts random (N(0, 1/IC)),
//! B at zero, so training starts from the pretrained model exactly. Adapters sit on every block
//! linear an architecture lists (`Arch::linear_shapes`; Llama: attn_qkv, attn_output, ffn_gate_up,
//! ffn_down) in every layer; only they get an optimizer (`step::Optimizer::Lora`), and `merge` folds
//! them into the weights (W += s B A) for export.
//!
//! Forward of linear (l, k), N rows (the base linear runs first, at the model's precision; the
//! adapter path computes in the backend's element type, f32 on the CPU, at every level):
//! ```text
//! u    = x A^T                 (N, r)     saved for backward
//! out += s u B^T               (N, OC)
//! ```
//! Backward, from dout (N, OC) (parameter gradients accumulate, dx adds to the base linear's):
//! ```text
//! g    = s dout                (N, OC)
//! dB  += g^T u                 (OC, r)
//! du   = g B                   (N, r)
//! dA  += du^T x                (r, IC)
//! dx  += du A                  (N, IC)
//! ```
//! The base weights' gradients are still computed by the base linear's backward (and ignored): the
//! backend has no input-gradient-only GEMM yet.

use std::sync::Arc;

use octet_core::{Allocator, Error, Float, Layout, Result, Rng, Slab, TensorId};
use octet_kernels::Backend;

/// The adapters of a model and what their backward needs.
pub struct Lora<F> {
    pub rank: usize,
    pub alpha: f64,
    /// (IC, OC) of each linear of a layer (`Arch::linear_shapes`).
    pub shapes: Vec<(usize, usize)>,
    pub n_layer: usize,
    /// `l{l}.{k}.a` (r, IC) and `l{l}.{k}.b` (OC, r) for every layer l and linear k.
    pub params: Slab<F>,
    pub grads: Slab<F>,
    /// u = x A^T (N, r) of every adapter, saved by forward.
    saved: Slab<F>,
    /// Scratch: g (N, OC), du (N, r), dx (N, IC), each sized for the largest linear.
    scratch: Slab<F>,
    rows: usize,
    alloc: Option<Arc<dyn Allocator>>,
}

/// The adapter parameter layout of `shapes` per layer, `n_layer` layers, rank `r`.
pub fn layout(shapes: &[(usize, usize)], n_layer: usize, r: usize) -> Layout {
    let mut e: Vec<(String, Vec<usize>)> = Vec::new();
    for l in 0..n_layer {
        for (k, &(ic, oc)) in shapes.iter().enumerate() {
            e.push((format!("l{l}.{k}.a"), vec![r, ic]));
            e.push((format!("l{l}.{k}.b"), vec![oc, r]));
        }
    }
    Layout::new(e)
}

impl<F: Float> Lora<F> {
    /// Adapters of rank `rank` (A random with `seed`, B zero).
    pub fn new(
        shapes: Vec<(usize, usize)>,
        n_layer: usize,
        rank: usize,
        alpha: f64,
        seed: u64,
        alloc: Option<&Arc<dyn Allocator>>,
    ) -> Result<Self> {
        if shapes.is_empty() {
            return Err(Error::config("lora_rank", "this architecture has no LoRA targets (Llama only)"));
        }
        if rank == 0 || !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::config("lora_rank", format!("rank {rank} and alpha {alpha} must be positive")));
        }
        let lay = Arc::new(layout(&shapes, n_layer, rank));
        let mut p = vec![F::default(); lay.total()];
        let mut rng = Rng::new(seed ^ 0x10_7A);
        for s in lay.specs().iter().filter(|s| s.name.ends_with(".a")) {
            let std = 1.0 / (s.shape[1] as f64).sqrt();
            for x in &mut p[s.range()] {
                *x = F::from_f64(std * rng.normal());
            }
        }
        Ok(Lora {
            rank,
            alpha,
            shapes,
            n_layer,
            params: Slab::from_vec_in(lay.clone(), p, alloc)?,
            grads: Slab::zeros_in(lay, alloc)?,
            saved: Slab::zeros_in(Arc::new(Layout::new([("u", vec![0])])), alloc)?,
            scratch: Slab::zeros_in(Arc::new(Layout::new([("s", vec![0])])), alloc)?,
            rows: 0,
            alloc: alloc.cloned(),
        })
    }

    /// s = alpha / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn num_params(&self) -> usize {
        self.params.data.len()
    }

    /// Room for forwards of `n` rows.
    pub fn ensure_rows(&mut self, n: usize) -> Result<()> {
        if self.rows == n {
            return Ok(());
        }
        let per = self.shapes.len();
        let r = self.rank;
        let widest = self.shapes.iter().map(|&(ic, oc)| ic.max(oc)).max().unwrap_or(0);
        let a = self.alloc.as_ref();
        self.saved = Slab::zeros_in(Arc::new(Layout::new([("u", vec![self.n_layer * per, n * r])])), a)?;
        self.scratch = Slab::zeros_in(Arc::new(Layout::new([("s", vec![n * (2 * widest + r)])])), a)?;
        self.rows = n;
        Ok(())
    }

    fn ids(&self, l: usize, k: usize) -> (TensorId, TensorId) {
        let i = 2 * (l * self.shapes.len() + k);
        (TensorId(i), TensorId(i + 1))
    }

    /// out (N, OC) += s (inp A^T) B^T for linear `k` of layer `l` (module doc).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<Bk: Backend<F = F>>(&mut self, be: &Bk, l: usize, k: usize, out: &mut [F], inp: &[F], n: usize) {
        let ((ic, oc), r, s) = (self.shapes[k], self.rank, self.scale() as f32);
        let (ia, ib) = self.ids(l, k);
        let u = &mut self.saved.data[(l * self.shapes.len() + k) * self.rows * r..][..n * r];
        be.matmul_forward(u, inp, self.params.get(ia), None, n, ic, r);
        let tmp = &mut self.scratch.data[..n * oc];
        be.matmul_forward(tmp, u, self.params.get(ib), None, n, r, oc);
        be.scale_in_place(tmp, s);
        be.accumulate(out, tmp);
    }

    /// Backward of `forward`: dA, dB accumulate; dinp += the adapter's input gradient.
    pub fn backward<Bk: Backend<F = F>>(
        &mut self,
        be: &Bk,
        l: usize,
        k: usize,
        dinp: &mut [F],
        dout: &[F],
        inp: &[F],
        n: usize,
    ) {
        let ((ic, oc), r, s) = (self.shapes[k], self.rank, self.scale() as f32);
        let (ia, ib) = self.ids(l, k);
        let u = &self.saved.data[(l * self.shapes.len() + k) * self.rows * r..][..n * r];
        let widest = self.shapes.iter().map(|&(ic, oc)| ic.max(oc)).max().unwrap_or(0);
        let (g, rest) = self.scratch.data.split_at_mut(n * widest);
        let (du, dx) = rest.split_at_mut(n * r);
        let (g, dx) = (&mut g[..n * oc], &mut dx[..n * ic]);
        be.zero(g);
        be.accumulate(g, dout);
        be.scale_in_place(g, s);
        let (ra, rb) = (self.params.layout.range(ia), self.params.layout.range(ib));
        let [da, db] = self.grads.disjoint_mut([ra.clone(), rb.clone()]);
        be.matmul_backward(du, db, None, g, u, &self.params.data[rb], n, r, oc);
        be.matmul_backward(dx, da, None, du, inp, &self.params.data[ra], n, ic, r);
        be.accumulate(dinp, dx);
    }

    /// W += s B A for every adapted linear: `weight(l, k)` is that linear's (OC, IC) weight in the
    /// model's f32 parameters.
    pub fn merge(&self, params: &mut [f32], weight: impl Fn(usize, usize) -> std::ops::Range<usize>) {
        let (r, s) = (self.rank, self.scale());
        for l in 0..self.n_layer {
            for (k, &(ic, oc)) in self.shapes.iter().enumerate() {
                let (ia, ib) = self.ids(l, k);
                let (a, b) = (self.params.get(ia), self.params.get(ib));
                let w = &mut params[weight(l, k)];
                for o in 0..oc {
                    for i in 0..ic {
                        let d: f64 = (0..r).map(|j| b[o * r + j].into() * a[j * ic + i].into()).sum();
                        w[o * ic + i] = (w[o * ic + i] as f64 + s * d) as f32;
                    }
                }
            }
        }
    }
}
