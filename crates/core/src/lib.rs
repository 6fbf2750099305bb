//! octet-core: the vocabulary every other crate speaks — number formats, FP8 codecs and scaling
//! metadata, named buffer layouts and their storage (host or a backend's memory), test tolerances,
//! errors and a deterministic RNG.

pub mod dtype;
pub mod error;
pub mod fp8;
pub mod fs;
pub mod layout;
pub mod manifest;
pub mod rng;
pub mod rundir;
pub mod scaling;
pub mod storage;
pub mod tolerance;

pub use dtype::{DType, Float};
pub use error::{Error, Result};
pub use layout::{Layout, Slab, TensorId, TensorSpec};
pub use rng::Rng;
pub use storage::{Allocator, Storage, ZeroBits};
pub use tolerance::Tolerance;
