//! octet-kernels: every operation of a training step, three ways — `reference` (naive loops that are
//! the spec, generic over f32/f64, accumulating in f64), `cpu` (fast f32: gemm + rayon), and the
//! `Backend` trait the models call so one model code path runs on any of them.
//!
//! Argument order everywhere (as llm.c): outputs, saved-for-backward, inputs, dimensions.
//! Gradient convention: parameter gradients accumulate (`+=`); activation gradients overwrite (`=`),
//! except the residual stream's, which accumulates (`+=`) because two branches feed it.

pub mod backend;
pub mod cpu;
pub mod fp8_gemm;
pub mod gemm;
pub mod reference;

pub use backend::{AdamWConfig, Backend, CpuBackend, HostFallback, Memory, RefBackend};

/// A target that takes no part in the loss (the masked cross-entropy of supervised fine-tuning: only
/// assistant tokens are learned). `softmax_xent_forward` gives its row loss 0, `softmax_xent_backward`
/// a zero gradient row; as PyTorch's `ignore_index`, but u32 (no valid token id is u32::MAX).
pub const IGNORE_TARGET: u32 = u32::MAX;

/// sqrt(2/pi), the GELU tanh-approximation constant.
pub const GELU_SCALE: f64 = 0.797_884_560_802_865_4;
/// Cubic coefficient of the GELU tanh approximation (GPT-2).
pub const GELU_CUBIC: f64 = 0.044715;
