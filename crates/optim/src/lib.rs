//! octet-optim: AdamW (a naive f64 reference and a fast f32 version), FP8-LM's AdamW with moments (and
//! optionally master weights) stored in FP8 / f16 / bf16 with tensor scaling, warm-up +
//! cosine/linear/constant learning-rate schedules, and global gradient-norm clipping.

pub mod adamw;
pub mod clip;
pub mod fp8_adamw;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_global_norm, global_norm};
pub use fp8_adamw::{Fp8AdamW, StateFormats, UpdateReport};
pub use schedule::{Decay, Schedule};
