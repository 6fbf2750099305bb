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
//! # The device `Backend` ([`CudaBackend`], `backend.rs`) and what it still needs
//!
//! The models' slabs live in CUDA managed memory (`octet_core::Storage` over [`ManagedAlloc`]), so
//! the model code is the CPU's, unchanged: ops with device kernels launch on the slices' addresses;
//! the others are `octet_kernels::HostFallback`'s CPU kernels on the same memory after a stream
//! synchronise. `tests/backend.rs` checks GPT-2 (fp32, fp8-o2), SAS-P and Llama against the CPU.
//! What writing the kernels showed is still to do for speed (each a change behind the same boundary):
//! - Device ops for the rest: the shaped attention and scalar gains, ReLU, `accumulate`, the cached
//!   attention. The plain levels' optimizer runs on the device (`step::plain_update` through the
//!   backend); the narrow levels' (fp8-o1/o2) does not yet: their f16/E4M3 buffers are host memory
//!   and staging decodes on the host. Moving them to the device (staging as a kernel,
//!   `optim::O2AdamW::step_e4m3_grads` as the update) is the next step for FP8 on the GPU.
//! - Scaling without host syncs: `amax` and `qdq_fp8` return a host f32 today. On the device the amax
//!   should stay a device scalar (`Gpu::amax`, the GEMM's D amax), a kernel turns it into the next
//!   scale and cuBLASLt and the quantise kernels read scales by pointer. That kernel exists:
//!   `scaling::DeviceScaling` (kernels::SCALING, `ScalingMeta::begin_cast` / `finish_cast` with the
//!   amax history on the device, checked exact in the emulator); wiring it in needs the casts to take
//!   the scale by pointer.
//! - Memory: managed memory (the device docs warn it can hang a GPU when oversubscribed) is to become
//!   plain device allocations, which needs every op on the step's path on the device first.
//! - Attention: `ops::AttentionKernel` selects the row kernels or the shared-memory-tiled ones
//!   (`OCTET_CUDA_ATTENTION=tiled`, bit-identical); an MMA (tensor-core) variant is next. The fused
//!   classifier (`Gpu::classifier`: loss and dlogits in one pass, masked rows) is not yet used by the
//!   backend.
//! - The precision levels' linear is one backend operation (`Backend::linear_gemm`, one call per GEMM
//!   role: forward, data gradient, weight gradient, operands with their cast: bf16 or FP8 format +
//!   scale); by default device casts + an f32 cuBLAS GEMM. `OCTET_CUDA_LINEAR=lt` maps the bf16 and
//!   FP8 levels' GEMMs to cuBLASLt (bf16 operands or FP8 codes, transposes for the TN layout, scale
//!   pointers, `gemm::plan`; written without a GPU, UNVERIFIED until bench/gpu.sh runs it). Still to
//!   do: operands cast per call into fresh buffers (cache the weights' casts per step), bf16
//!   activations, the bias/GELU epilogues, D-amax and FP8 outputs, the LM head in bf16.
//! - Saved statistics (mean, rstd, lse) are f32 on the device whatever the storage type, and
//!   activations in bf16 would halve the traffic (a `Float` bf16 element type for the backend).
//! - Host syncs per step: the loss, the optimizer's skip flag (`optim::O2AdamW::step`) and the
//!   gradient clipping norm (or fold the clip factor into `grad_mult` on the device); step-long
//!   scratch (attention's delta, targets, cuBLASLt's workspace) owned by the backend instead of
//!   allocated per call.

pub mod kernels;

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
mod llama_ops;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(feature = "cuda")]
mod ops;
#[cfg(feature = "cuda")]
pub mod optim;
#[cfg(feature = "cuda")]
pub mod scaling;
#[cfg(feature = "cuda")]
pub use backend::{CudaBackend, LinearGemms, ManagedAlloc};
#[cfg(feature = "cuda")]
pub use device::{CudaError, DeviceFloat, Gpu, compile_cubin};
#[cfg(feature = "cuda")]
pub use ops::{AttentionKernel, MAX_HEAD_SIZE, TILED_MAX_HEAD_SIZE, TokenBuckets};

/// Whether this build contains the CUDA backend (the `cuda` feature).
pub const BUILT_WITH_CUDA: bool = cfg!(feature = "cuda");

/// What a CUDA device would be used: `Ok("device 0: <name>, sm_XY, ...; <library versions>")`, or why
/// none can be.
#[cfg(not(feature = "cuda"))]
pub fn probe() -> Result<String, String> {
    Err("CUDA is not built in: rebuild with `--features cuda` (crate octet-cuda)".into())
}

#[cfg(feature = "cuda")]
pub use device::probe;
