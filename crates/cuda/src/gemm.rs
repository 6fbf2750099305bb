//! cuBLASLt GEMMs (feature `cuda`): bf16 and FP8 tensor-core matmuls for the linear layers.
//!
//! One shape convention, the one FP8 needs: `D (rows, cols) = A (rows, k) @ B (cols, k)^T`, every
//! matrix row-major, so both operands are "k-major" (each row of A and of B is contiguous along k).
//! That is a linear layer's forward as it is (A = X (N, IC), B = W (OC, IC)); the data gradient uses
//! A = dY (N, OC), B = W^T (IC, OC), and the weight gradient A = dY^T (OC, N), B = X^T (IC, N), the
//! transposes made once per step by `transpose_fp8` (FP8) or a cast kernel.
//!
//! cuBLASLt is column-major. A row-major (r, c) matrix is a column-major (c, r) one with leading
//! dimension c, so the row-major D (rows, cols) is the column-major D^T (cols, rows) = B A^T. In
//! cuBLASLt's terms: its A is our B, stored (k, cols) column-major and transposed (op = T); its B is
//! our A, stored (k, rows) and not transposed (op = N); m = cols, n = rows, k = k. This is the "TN"
//! layout, the only one cuBLASLt accepts for FP8 on Hopper.
//!
//! FP8 scaling (per tensor, device pointers, so no host sync): an operand quantised as
//! `q = fp8(x * scale)` is passed with `scale_inv = 1 / scale` (cuBLASLt's A/B scale pointers multiply
//! the decoded operand); an FP8 output gets `D = fp8(scale_d * result)` (D scale pointer), and the
//! optional amax pointer receives max |result| (f32, computed before the D scale, as cuBLASLt
//! documents for `CUBLASLT_MATMUL_DESC_AMAX_D_POINTER`), which feeds the next step's scale of D.
//!
//! Type combinations (cuBLASLt's FP8 table, compute type 32F, scale type 32F): bf16 x bf16 -> f32 or
//! bf16 (C = D's type); E4M3 x E4M3, E4M3 x E5M2, E5M2 x E4M3 -> f32 (C f32), bf16 (C bf16) or FP8
//! (C bf16, not read: no accumulation into an FP8 D). E5M2 x E5M2 is not supported by cuBLASLt.
//! FP8 also needs 16-byte alignment: k and cols multiples of 16 here (GPT-2's dimensions all are).
//! Accumulation (`accumulate`, beta = 1, C = D in place) is how parameter gradients add up (`+=`).
//! FP8 accumulation is exact f32 (no `CUBLASLT_MATMUL_DESC_FAST_ACCUM`), like the CPU emulation in
//! `octet_kernels::fp8_gemm`.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, SyncOnDrop};
use half::bf16;
use octet_core::fp8::Fp8Format;

use crate::device::{CudaError, Gpu, Result};

/// Workspace for cuBLASLt's kernels: NVIDIA recommends 32 MiB on Hopper (4 MiB before).
const WORKSPACE_BYTES: usize = 32 << 20;

/// A GEMM input (k-major rows).
pub enum Input<'a> {
    Bf16(CudaView<'a, bf16>),
    /// FP8 codes and the device `1 / scale` of their cast (one f32).
    Fp8 {
        format: Fp8Format,
        codes: CudaView<'a, u8>,
        scale_inv: CudaView<'a, f32>,
    },
}

/// A GEMM output.
pub enum Output<'a> {
    F32(CudaViewMut<'a, f32>),
    Bf16(CudaViewMut<'a, bf16>),
    /// FP8 codes of `scale * result` (`scale`: one device f32).
    Fp8 {
        format: Fp8Format,
        codes: CudaViewMut<'a, u8>,
        scale: CudaView<'a, f32>,
    },
}

/// Sizes of `D (rows, cols) = A (rows, k) @ B (cols, k)^T`, and whether D accumulates (`+=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub accumulate: bool,
}

fn data_type(format: Fp8Format) -> sys::cudaDataType {
    match format {
        Fp8Format::E4M3 => sys::cudaDataType::CUDA_R_8F_E4M3,
        Fp8Format::E5M2 => sys::cudaDataType::CUDA_R_8F_E5M2,
    }
}

/// A cuBLASLt handle with its workspace, on one stream.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
}

// SAFETY: the handle is only used through &self methods that enqueue on `stream`; cuBLASLt handles
// may be shared across threads (NVIDIA: thread safe as long as the workspace is not shared between
// concurrent calls, and every call here uses this handle's stream, which orders them).
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// Owned cuBLASLt descriptors, destroyed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

impl Desc {
    /// Sets a descriptor attribute to a plain value.
    fn set<V>(&self, attr: sys::cublasLtMatmulDescAttributes_t, value: &V) -> Result<()> {
        // SAFETY: the descriptor is live; cuBLASLt copies `size_of::<V>()` bytes from `value`.
        unsafe { lt::set_matmul_desc_attribute(self.0, attr, value as *const V as *const c_void, size_of::<V>()) }?;
        Ok(())
    }
}

impl Blas {
    /// A handle and a workspace on `gpu`'s stream. Fails (without panicking) when libcublasLt is
    /// not installed.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Unavailable("cuBLASLt (libcublasLt.so) is not installed".into()));
        }
        gpu.context().bind_to_thread()?;
        let handle = lt::create_handle()?;
        let workspace = gpu.stream().alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(Blas { handle, workspace, stream: gpu.stream().clone() })
    }

    /// `D (rows, cols) (+)= A (rows, k) @ B (cols, k)^T` (see the module doc for layouts, scales and
    /// the supported types). `d_amax`, if given, receives max |A @ B| as one f32 (FP8 inputs only).
    pub fn matmul(
        &self,
        d: Output<'_>,
        a: Input<'_>,
        b: Input<'_>,
        dims: Dims,
        d_amax: Option<CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let Dims { rows, cols, k, accumulate } = dims;
        let shape = |what: String| Err(CudaError::Shape(format!("gemm {rows}x{cols}x{k}: {what}")));
        let len_ok = |name: &str, len: usize, want: usize| {
            if len == want { Ok(()) } else { shape(format!("{name} has {len} elements, expected {want}")) }
        };

        // Operand types and lengths.
        let input = |x: &Input<'_>, n: usize, name: &str| -> Result<(sys::cudaDataType, Option<Fp8Format>)> {
            match x {
                Input::Bf16(v) => len_ok(name, v.len(), n).map(|_| (sys::cudaDataType::CUDA_R_16BF, None)),
                Input::Fp8 { format, codes, scale_inv } => {
                    len_ok(name, codes.len(), n)?;
                    len_ok("scale_inv", scale_inv.len(), 1)?;
                    Ok((data_type(*format), Some(*format)))
                }
            }
        };
        let (a_type, a_fp8) = input(&a, rows * k, "A")?;
        let (b_type, b_fp8) = input(&b, cols * k, "B")?;
        let fp8 = match (a_fp8, b_fp8) {
            (None, None) => false,
            (Some(Fp8Format::E5M2), Some(Fp8Format::E5M2)) => return shape("E5M2 x E5M2 is not supported".into()),
            (Some(_), Some(_)) => true,
            _ => return shape("both inputs must be bf16 or both FP8".into()),
        };
        if fp8 && (k % 16 != 0 || cols % 16 != 0) {
            return shape("FP8 needs k and cols multiples of 16".into());
        }
        let (d_type, c_type) = match &d {
            Output::F32(v) => {
                len_ok("D", v.len(), rows * cols)?;
                (sys::cudaDataType::CUDA_R_32F, sys::cudaDataType::CUDA_R_32F)
            }
            Output::Bf16(v) => {
                len_ok("D", v.len(), rows * cols)?;
                (sys::cudaDataType::CUDA_R_16BF, sys::cudaDataType::CUDA_R_16BF)
            }
            Output::Fp8 { format, codes, scale } => {
                len_ok("D", codes.len(), rows * cols)?;
                len_ok("D scale", scale.len(), 1)?;
                if !fp8 || accumulate {
                    return shape("an FP8 D needs FP8 inputs and no accumulation".into());
                }
                (data_type(*format), sys::cudaDataType::CUDA_R_16BF)
            }
        };
        if d_amax.as_ref().is_some_and(|m| m.len() != 1) || (d_amax.is_some() && !fp8) {
            return shape("d_amax is one f32, for FP8 inputs".into());
        }

        // Descriptors: cuBLASLt's A = our B (k, cols) op T; its B = our A (k, rows) op N; D (cols, rows).
        let (m64, n64, k64) = (cols as u64, rows as u64, k as u64);
        let lay = |t, r, c, ld: u64| lt::create_matrix_layout(t, r, c, ld as i64).map(Layout);
        let a_lay = lay(b_type, k64, m64, k64)?;
        let b_lay = lay(a_type, k64, n64, k64)?;
        let c_lay = lay(c_type, m64, n64, m64)?;
        let d_lay = lay(d_type, m64, n64, m64)?;
        let desc =
            Desc(lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)?);
        use sys::cublasLtMatmulDescAttributes_t as Attr;
        // cublasOperation_t values (an int32 attribute): our B is transposed, our A is not.
        let (op_t, op_n) = (CUBLAS_OP_T as i32, CUBLAS_OP_N as i32);
        desc.set(Attr::CUBLASLT_MATMUL_DESC_TRANSA, &op_t)?;
        desc.set(Attr::CUBLASLT_MATMUL_DESC_TRANSB, &op_n)?;

        // Device pointers; each guard records the use on our stream when dropped (after the call).
        let s: &CudaStream = &self.stream;
        let (a_ptr, a_scale, _a_guards) = input_ptrs(&a, s);
        let (b_ptr, b_scale, _b_guards) = input_ptrs(&b, s);
        let mut d = d;
        let (d_ptr, d_scale, _d_guards) = output_ptrs(&mut d, s);
        let mut d_amax = d_amax;
        let amax_ptr = d_amax.as_mut().map(|m| m.device_ptr_mut(s));
        if let Some(p) = b_scale {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p)?;
        }
        if let Some(p) = a_scale {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p)?;
        }
        if let Some(p) = d_scale {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &p)?;
        }
        if let Some((p, _)) = &amax_ptr {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, p)?;
        }

        let pref = Pref(lt::create_matmul_pref()?);
        let ws_bytes = self.workspace.len();
        // SAFETY: the preference is live; the value is a usize, as the attribute requires (uint64).
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws_bytes as *const usize as *const c_void,
                size_of::<usize>(),
            )
        }?;
        // SAFETY: every descriptor is live and describes the buffers passed below.
        let heuristic =
            unsafe { lt::get_matmul_algo_heuristic(self.handle, desc.0, a_lay.0, b_lay.0, c_lay.0, d_lay.0, pref.0) }?;
        let (ws_ptr, _ws_guard) = self.workspace.device_ptr(s);
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // C: D itself (read only when accumulating; for an FP8 D, beta is 0 and C is never read).
        // SAFETY: lengths and types were checked against the layouts above; pointers stay valid
        // (their guards live to the end of this function); the call is enqueued on our stream.
        unsafe {
            lt::matmul(
                self.handle,
                desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b_ptr as *const c_void,
                a_lay.0,
                a_ptr as *const c_void,
                b_lay.0,
                d_ptr as *const c_void,
                c_lay.0,
                d_ptr as *mut c_void,
                d_lay.0,
                &heuristic.algo,
                ws_ptr as *mut c_void,
                ws_bytes,
                s.cu_stream() as sys::cudaStream_t,
            )
        }?;
        Ok(())
    }
}

/// The device pointer of an input and of its scale_inv (FP8), with the guards to keep alive.
fn input_ptrs<'s>(x: &'s Input<'_>, s: &'s CudaStream) -> (CUdeviceptr, Option<CUdeviceptr>, Vec<SyncOnDrop<'s>>) {
    match x {
        Input::Bf16(v) => {
            let (p, g) = v.device_ptr(s);
            (p, None, vec![g])
        }
        Input::Fp8 { codes, scale_inv, .. } => {
            let ((p, g), (q, h)) = (codes.device_ptr(s), scale_inv.device_ptr(s));
            (p, Some(q), vec![g, h])
        }
    }
}

/// The device pointer of the output and of its scale (FP8), with the guards to keep alive.
fn output_ptrs<'s>(
    d: &'s mut Output<'_>,
    s: &'s CudaStream,
) -> (CUdeviceptr, Option<CUdeviceptr>, Vec<SyncOnDrop<'s>>) {
    match d {
        Output::F32(v) => {
            let (p, g) = v.device_ptr_mut(s);
            (p, None, vec![g])
        }
        Output::Bf16(v) => {
            let (p, g) = v.device_ptr_mut(s);
            (p, None, vec![g])
        }
        Output::Fp8 { codes, scale, .. } => {
            let ((p, g), (q, h)) = (codes.device_ptr_mut(s), scale.device_ptr(s));
            (p, Some(q), vec![g, h])
        }
    }
}
