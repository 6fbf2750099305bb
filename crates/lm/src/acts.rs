//! Per-batch-shape buffers shared by the models: the activations forward saves, the activation-gradient
//! scratch backward reuses layer by layer, and the cast-operand workspace of the precision levels.

use std::sync::Arc;

use octet_core::{Allocator, Float, Layout, Result, Slab};

use crate::precision::{Precision, Workspace};

/// Buffers for one (B, T) batch shape.
pub(crate) struct Acts<F> {
    pub b: usize,
    pub t: usize,
    /// Saved activations (the model's activation layout).
    pub a: Slab<F>,
    /// Activation-gradient scratch (the model's gradient-activation layout).
    pub d: Slab<F>,
    /// Cast GEMM operands (empty at fp32).
    pub ws: Workspace<F>,
}

impl<F: Float> Acts<F> {
    /// Zeroed buffers for (B, T) from `alloc` (the backend's memory; None: the host heap): activations
    /// over `al`, their gradients over `dl`, and at every precision but fp32 a cast workspace for
    /// operands of up to `ws.0` inputs, `ws.1` weights and `ws.2` output gradients.
    pub fn alloc(
        b: usize,
        t: usize,
        al: Layout,
        dl: Layout,
        precision: Precision,
        ws: (usize, usize, usize),
        alloc: Option<&Arc<dyn Allocator>>,
    ) -> Result<Self> {
        let ws = if precision == Precision::Fp32 { (0, 0, 0) } else { ws };
        Ok(Acts {
            b,
            t,
            a: Slab::zeros_in(Arc::new(al), alloc)?,
            d: Slab::zeros_in(Arc::new(dl), alloc)?,
            ws: Workspace::new_in(ws.0, ws.1, ws.2, alloc)?,
        })
    }
}
