//! octet's CUDA backend (issue 7): NVRTC-compiled kernels for every operation of the GPT-2 training
//! step ([`kernels`]; launch wrappers on `Gpu`), cuBLASLt bf16 and FP8 GEMMs (`gemm`), and AdamW on
//! the device, f32 and FP8-LM O2 (`optim`). Each is tested against the CPU reference
//! (`octet_kernels::reference`, `octet_kernels::fp8_gemm`, `octet_optim`) in tests/, on random data.
//!
//! The kernel sources are plain strings and always compiled in, so they can be checked offline
//! (`tools/cuda/nvrtc_check.py`). Everything that touches a device is behind the `cuda` feature
//! (cudarc with dynamic loading: building needs no CUDA toolkit, running needs a driver and a GPU).
//! Without it this crate is a stub whose [`probe`] says that CUDA is not built in.
//!
//! # What a device `Backend` still needs (the model does not run on the GPU yet)
//!
//! `octet_kernels::Backend` works on host slices and returns host values; the pieces here work on
//! device buffers. The missing boundary, as far as writing these kernels showed:
//! - Buffers: either associated types on the trait (a backend-owned buffer and its views, sliced by
//!   `Layout` ranges), or `[T]` slices in memory both sides address (CUDA managed memory behind an
//!   allocator). The second keeps model code as it is, but every host read of a result becomes a
//!   sync point (or a page migration), so the model must read only the loss.
//! - Saved statistics (mean, rstd, lse) and losses are f32 on the device whatever the storage type
//!   (the trait has them in `F`); tokens and targets are uploaded once per batch, with the token
//!   grouping of the deterministic encoder backward (`TokenBuckets`).
//! - Scaling without host syncs: `amax` and `qdq_fp8` return a host f32 today. On the device the amax
//!   stays a device scalar (`Gpu::amax`, the GEMM's D amax), a kernel turns it into the next scale (as
//!   `adam_o2_scales` does) and cuBLASLt and the quantise kernels read scales by pointer; the trait
//!   needs scale/amax handles instead, and delayed scaling's amax history must live on the device.
//! - FP8 GEMMs need the TN layout, so the FP8 linear layer (quantise, transpose, three GEMMs) becomes
//!   one backend operation rather than host code over `qdq_fp8`.
//! - Host syncs per step: the loss, the optimizer's skip flag (`optim::O2AdamW::step`) and the
//!   gradient clipping norm (or fold the clip factor into `grad_mult` on the device); all else can
//!   stay asynchronous on one stream, with step-long scratch (attention's delta, cuBLASLt's
//!   workspace) owned by the backend instead of allocated per call.

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
