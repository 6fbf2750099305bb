//! Global gradient-norm clipping: if ||g||_2 > max_norm, scale every gradient by max_norm / ||g||_2.

use rayon::prelude::*;

/// ||g||_2, summed in f64 over fixed chunks in order (deterministic for any thread count).
pub fn global_norm(g: &[f32]) -> f64 {
    let partials: Vec<f64> = g.par_chunks(1 << 14).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum()).collect();
    partials.iter().sum::<f64>().sqrt()
}

/// Clip in place; returns the norm before clipping. A non-finite norm leaves `g` untouched (the
/// caller decides whether to skip the step).
pub fn clip_global_norm(g: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(g);
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
        let s = (max_norm / norm) as f32;
        g.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|x| *x *= s));
    }
    norm
}
