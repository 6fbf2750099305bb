//! octet's CUDA backend (issue 7), first slice: NVRTC-compiled kernels for the elementwise parts of
//! the GPT-2 step, each tested against `octet_kernels::reference`.
//!
//! The kernel sources ([`kernels`]) are plain strings and always compiled in, so they can be checked
//! offline (`tools/cuda/nvrtc_check.py`). Everything that touches a device is behind the `cuda` feature
//! (cudarc with dynamic loading: building needs no CUDA toolkit, running needs a driver and a GPU).
//! Without it this crate is a stub whose [`probe`] says that CUDA is not built in.

pub mod kernels;

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
mod ops;
#[cfg(feature = "cuda")]
pub mod optim;
#[cfg(feature = "cuda")]
pub use device::{CudaError, DeviceFloat, Gpu};
#[cfg(feature = "cuda")]
pub use ops::{MAX_HEAD_SIZE, TokenBuckets};

/// Whether this build contains the CUDA backend (the `cuda` feature).
pub const BUILT_WITH_CUDA: bool = cfg!(feature = "cuda");

/// What a CUDA device would be used: `Ok("device 0: <name>, sm_XY, ...")`, or why none can be.
#[cfg(not(feature = "cuda"))]
pub fn probe() -> Result<String, String> {
    Err("CUDA is not built in: rebuild with `--features cuda` (crate octet-cuda)".into())
}

#[cfg(feature = "cuda")]
pub use device::probe;
