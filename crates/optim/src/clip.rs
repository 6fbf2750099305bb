//! Global gradient-norm clipping: if ||g||_2 > max_norm, scale every gradient by max_norm / ||g||_2.
//! The norm and the scaling are the kernels' (`octet_kernels::cpu`), so the backend ops equal this.

pub use octet_kernels::cpu::global_norm;
use octet_kernels::cpu::scale_in_place;

/// Clip in place; returns the norm before clipping. A non-finite norm leaves `g` untouched (the
/// caller decides whether to skip the step).
pub fn clip_global_norm(g: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(g);
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
        scale_in_place(g, (max_norm / norm) as f32);
    }
    norm
}
