//! octet-core: the vocabulary every other crate speaks — number formats, their codecs (reference and
//! branch-free) and scaling metadata, scaled (narrow) buffers, named buffer layouts and their storage
//! (host or a backend's memory), test tolerances, errors, run directories and a deterministic RNG.

pub mod codec;
pub mod dtype;
pub mod error;
pub mod fp8;
pub mod fs;
pub mod layout;
pub mod manifest;
pub mod rng;
pub mod rundir;
pub mod scaled;
pub mod scaling;
pub mod storage;
pub mod tolerance;

pub use dtype::{DType, Float};
pub use error::{Error, Result};
pub use layout::{Layout, Slab, TensorId, TensorSpec};
pub use rng::Rng;
pub use scaled::{ScaledBuf, StateFormat};
pub use storage::{Allocator, Storage, ZeroBits};
pub use tolerance::Tolerance;
