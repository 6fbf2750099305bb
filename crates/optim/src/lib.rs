//! octet-optim: AdamW (a naive f64 reference and a fast f32 version), warm-up + cosine/linear/constant
//! learning-rate schedules, and global gradient-norm clipping.

pub mod adamw;
pub mod clip;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_global_norm, global_norm};
pub use schedule::{Decay, Schedule};
