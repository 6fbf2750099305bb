//! Per-batch-shape buffers shared by the models: the activations forward saves, the activation-gradient
//! scratch backward reuses layer by layer, and the cast-operand workspace of the precision levels.

use octet_core::Slab;

use crate::precision::Workspace;

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
