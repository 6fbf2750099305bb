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
//! (C bf16, never read: no accumulation into an FP8 D; a distinct buffer, since CUDA 13 rejects C == D
//! when their types differ). E5M2 x E5M2 is not supported by cuBLASLt. FP8 also needs 16-byte
//! aligned pointers and k and cols multiples of 16 (GPT-2's dimensions all are). Every such choice is
//! made by [`plan`], a pure function unit-tested without a GPU.
//! Accumulation (`accumulate`, beta = 1, C = D in place) is how parameter gradients add up (`+=`).
//! FP8 accumulation is exact f32 (no `CUBLASLT_MATMUL_DESC_FAST_ACCUM`), like the CPU emulation in
//! `octet_kernels::fp8_gemm`.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

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

/// Element type of a GEMM matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    Bf16,
    Fp8(Fp8Format),
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 => 2,
            Elem::Fp8(_) => 1,
        }
    }

    fn data_type(self) -> sys::cudaDataType {
        match self {
            Elem::F32 => sys::cudaDataType::CUDA_R_32F,
            Elem::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            Elem::Fp8(f) => data_type(f),
        }
    }
}

/// A column-major cuBLASLt matrix: element type, rows, cols, leading dimension (elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LtMatrix {
    pub elem: Elem,
    pub rows: u64,
    pub cols: u64,
    pub ld: u64,
}

/// Device addresses of our A, B and D (for the alignment rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    pub a: u64,
    pub b: u64,
    pub d: u64,
}

/// Alignment of every FP8 GEMM pointer (cuBLASLt's FP8 requirement).
pub const FP8_ALIGN: u64 = 16;

/// Every descriptor and pointer choice of one `Blas::matmul`, made from the types, sizes and
/// addresses alone, so it is unit-tested without a GPU. The TN layout (module doc): cuBLASLt's A is
/// our B (k, cols) with op T, its B is our A (k, rows) with op N, C and D are (cols, rows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub a: LtMatrix,
    pub b: LtMatrix,
    pub c: LtMatrix,
    pub d: LtMatrix,
    /// cuBLASLt's ops on its A and B: T and N.
    pub trans_a: bool,
    pub trans_b: bool,
    /// 1 when D accumulates (C = D read back), else 0.
    pub beta: f32,
    /// C is D's own buffer (accumulation, or C's type equals D's). Otherwise C is a distinct buffer of
    /// C's type and size, never read (beta 0): since CUDA 13 cuBLASLt rejects C == D when their
    /// types differ (an FP8 D has a bf16 C).
    pub c_is_d: bool,
    /// FP8 inputs: cuBLASLt's A / B scale pointers carry our B's / A's scale_inv.
    pub fp8: bool,
}

/// The plan of `D (rows, cols) (+)= A (rows, k) @ B (cols, k)^T` for these element types, or why
/// cuBLASLt cannot run it: inputs both bf16 or both FP8 (not E5M2 x E5M2); D f32 or bf16 (C the
/// same type, C = D), or FP8 from FP8 inputs without accumulation (C bf16, a distinct buffer); FP8
/// needs k and cols multiples of 16 and 16-byte aligned A, B and D.
pub fn plan(a: Elem, b: Elem, d: Elem, dims: Dims, addrs: Addrs) -> std::result::Result<Plan, String> {
    let Dims { rows, cols, k, accumulate } = dims;
    let fp8 = match (a, b) {
        (Elem::Bf16, Elem::Bf16) => false,
        (Elem::Fp8(Fp8Format::E5M2), Elem::Fp8(Fp8Format::E5M2)) => return Err("E5M2 x E5M2 is not supported".into()),
        (Elem::Fp8(_), Elem::Fp8(_)) => true,
        _ => return Err(format!("inputs must be both bf16 or both FP8, not {a:?} x {b:?}")),
    };
    let c = match d {
        Elem::F32 | Elem::Bf16 => d,
        Elem::Fp8(_) if fp8 && !accumulate => Elem::Bf16,
        Elem::Fp8(_) => return Err("an FP8 D needs FP8 inputs and no accumulation".into()),
    };
    if fp8 {
        if k % 16 != 0 || cols % 16 != 0 {
            return Err(format!("FP8 needs k and cols multiples of 16 (k {k}, cols {cols})"));
        }
        for (name, addr) in [("A", addrs.a), ("B", addrs.b), ("D", addrs.d)] {
            if addr % FP8_ALIGN != 0 {
                return Err(format!("FP8 needs 16-byte aligned pointers: {name} is at {addr:#x}"));
            }
        }
    }
    let (m, n, k) = (cols as u64, rows as u64, k as u64);
    let mat = |elem, rows, cols, ld| LtMatrix { elem, rows, cols, ld };
    Ok(Plan {
        a: mat(b, k, m, k),
        b: mat(a, k, n, k),
        c: mat(c, m, n, m),
        d: mat(d, m, n, m),
        trans_a: true,
        trans_b: false,
        beta: if accumulate { 1.0 } else { 0.0 },
        c_is_d: c == d,
        fp8,
    })
}

/// A cuBLASLt handle with its workspace, on one stream.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// The distinct C of an FP8 D (`Plan::c_is_d` false; never read), grown on demand.
    c_scratch: Mutex<Option<CudaSlice<u8>>>,
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
        Ok(Blas { handle, workspace, c_scratch: Mutex::new(None), stream: gpu.stream().clone() })
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
        let Dims { rows, cols, k, .. } = dims;
        let shape = |what: String| Err(CudaError::Shape(format!("gemm {rows}x{cols}x{k}: {what}")));
        let len_ok = |name: &str, len: usize, want: usize| {
            if len == want { Ok(()) } else { shape(format!("{name} has {len} elements, expected {want}")) }
        };
        let input = |x: &Input<'_>, n: usize, name: &str| -> Result<Elem> {
            match x {
                Input::Bf16(v) => len_ok(name, v.len(), n).map(|_| Elem::Bf16),
                Input::Fp8 { format, codes, scale_inv } => {
                    len_ok(name, codes.len(), n)?;
                    len_ok("scale_inv", scale_inv.len(), 1)?;
                    Ok(Elem::Fp8(*format))
                }
            }
        };
        let (a_elem, b_elem) = (input(&a, rows * k, "A")?, input(&b, cols * k, "B")?);
        let d_elem = match &d {
            Output::F32(v) => len_ok("D", v.len(), rows * cols).map(|_| Elem::F32)?,
            Output::Bf16(v) => len_ok("D", v.len(), rows * cols).map(|_| Elem::Bf16)?,
            Output::Fp8 { format, codes, scale } => {
                len_ok("D", codes.len(), rows * cols)?;
                len_ok("D scale", scale.len(), 1)?;
                Elem::Fp8(*format)
            }
        };

        // Device pointers; each guard records the use on our stream when dropped (after the call).
        let s: &CudaStream = &self.stream;
        let (a_ptr, a_scale, _a_guards) = input_ptrs(&a, s);
        let (b_ptr, b_scale, _b_guards) = input_ptrs(&b, s);
        let mut d = d;
        let (d_ptr, d_scale, _d_guards) = output_ptrs(&mut d, s);
        let p = plan(a_elem, b_elem, d_elem, dims, Addrs { a: a_ptr, b: b_ptr, d: d_ptr })
            .map_err(|e| CudaError::Shape(format!("gemm {rows}x{cols}x{k}: {e}")))?;
        if d_amax.as_ref().is_some_and(|m| m.len() != 1) || (d_amax.is_some() && !p.fp8) {
            return shape("d_amax is one f32, for FP8 inputs".into());
        }

        let lay = |m: LtMatrix| lt::create_matrix_layout(m.elem.data_type(), m.rows, m.cols, m.ld as i64).map(Layout);
        let (a_lay, b_lay, c_lay, d_lay) = (lay(p.a)?, lay(p.b)?, lay(p.c)?, lay(p.d)?);
        let desc =
            Desc(lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)?);
        use sys::cublasLtMatmulDescAttributes_t as Attr;
        let op = |t: bool| (if t { CUBLAS_OP_T } else { CUBLAS_OP_N }) as i32; // an int32 attribute
        desc.set(Attr::CUBLASLT_MATMUL_DESC_TRANSA, &op(p.trans_a))?;
        desc.set(Attr::CUBLASLT_MATMUL_DESC_TRANSB, &op(p.trans_b))?;
        let mut d_amax = d_amax;
        let amax_ptr = d_amax.as_mut().map(|m| m.device_ptr_mut(s));
        if let Some(ptr) = b_scale {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ptr)?;
        }
        if let Some(ptr) = a_scale {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &ptr)?;
        }
        if let Some(ptr) = d_scale {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &ptr)?;
        }
        if let Some((ptr, _)) = &amax_ptr {
            desc.set(Attr::CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, ptr)?;
        }
        // C: D itself, or the distinct scratch of C's type (beta 0: never read).
        let mut scratch = self.c_scratch.lock().unwrap_or_else(|e| e.into_inner());
        let c_bytes = (p.c.cols * p.c.ld) as usize * p.c.elem.bytes();
        if !p.c_is_d && scratch.as_ref().is_none_or(|c| c.len() < c_bytes) {
            *scratch = Some(self.stream.alloc_zeros::<u8>(c_bytes)?);
        }
        let c_guard = (!p.c_is_d).then(|| scratch.as_mut().expect("allocated above").device_ptr_mut(s));
        let c_ptr = c_guard.as_ref().map_or(d_ptr, |(ptr, _)| *ptr);

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
        let (alpha, beta) = (1.0f32, p.beta);
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
                c_ptr as *const c_void,
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

#[cfg(test)]
mod tests {
    use super::*;

    const E4: Elem = Elem::Fp8(Fp8Format::E4M3);
    const E5: Elem = Elem::Fp8(Fp8Format::E5M2);
    const ALIGNED: Addrs = Addrs { a: 0x1000, b: 0x2000, d: 0x3000 };

    fn dims(rows: usize, cols: usize, k: usize, accumulate: bool) -> Dims {
        Dims { rows, cols, k, accumulate }
    }

    #[test]
    fn fp8_output_gets_a_distinct_bf16_c() {
        // CUDA 13: C == D is rejected when their types differ; beta 0, so C is never read.
        for d in [E4, E5] {
            let p = plan(E4, E4, d, dims(64, 32, 48, false), ALIGNED).unwrap();
            assert_eq!((p.c.elem, p.d.elem, p.c_is_d, p.beta), (Elem::Bf16, d, false, 0.0));
            assert_eq!((p.c.rows, p.c.cols, p.c.ld), (p.d.rows, p.d.cols, p.d.ld), "C shaped as D");
        }
        assert!(plan(E4, E4, E4, dims(64, 32, 48, true), ALIGNED).is_err(), "no accumulation into FP8");
        assert!(plan(Elem::Bf16, Elem::Bf16, E4, dims(64, 32, 48, false), ALIGNED).is_err());
    }

    #[test]
    fn same_type_c_is_d_and_accumulation_reads_it() {
        for (a, b, d) in [
            (E4, E4, Elem::F32),
            (E5, E4, Elem::Bf16),
            (E4, E5, Elem::F32),
            (Elem::Bf16, Elem::Bf16, Elem::F32),
            (Elem::Bf16, Elem::Bf16, Elem::Bf16),
        ] {
            for acc in [false, true] {
                let p = plan(a, b, d, dims(64, 32, 48, acc), ALIGNED).unwrap();
                assert!(p.c_is_d && p.c == p.d, "{a:?} {b:?} {d:?}");
                assert_eq!(p.beta, if acc { 1.0 } else { 0.0 });
                assert_eq!(p.fp8, a != Elem::Bf16);
            }
        }
    }

    #[test]
    fn tn_layout_swaps_the_operands() {
        // Row-major D (rows, cols) = A (rows, k) B (cols, k)^T is column-major D^T = B A^T: cuBLASLt's
        // A is our B stored (k, cols), op T; its B is our A stored (k, rows), op N; D (cols, rows).
        let (rows, cols, k) = (80, 48, 32);
        let p = plan(E5, E4, Elem::F32, dims(rows, cols, k, false), ALIGNED).unwrap();
        assert_eq!((p.trans_a, p.trans_b), (true, false));
        assert_eq!(p.a, LtMatrix { elem: E4, rows: 32, cols: 48, ld: 32 });
        assert_eq!(p.b, LtMatrix { elem: E5, rows: 32, cols: 80, ld: 32 });
        assert_eq!(p.d, LtMatrix { elem: Elem::F32, rows: 48, cols: 80, ld: 48 });
    }

    #[test]
    fn fp8_needs_multiples_of_16_and_aligned_pointers() {
        assert!(plan(E4, E4, Elem::F32, dims(7, 32, 48, false), ALIGNED).is_ok(), "rows are free");
        for (cols, k) in [(40, 48), (32, 40)] {
            let e = plan(E4, E4, Elem::F32, dims(64, cols, k, false), ALIGNED).unwrap_err();
            assert!(e.contains("multiples of 16"), "{e}");
            assert!(plan(Elem::Bf16, Elem::Bf16, Elem::F32, dims(64, cols, k, false), ALIGNED).is_ok());
        }
        for bad in [Addrs { a: 0x1008, ..ALIGNED }, Addrs { b: 0x2004, ..ALIGNED }, Addrs { d: 0x3001, ..ALIGNED }] {
            let e = plan(E4, E4, Elem::F32, dims(64, 32, 48, false), bad).unwrap_err();
            assert!(e.contains("16-byte aligned"), "{e}");
            assert!(plan(Elem::Bf16, Elem::Bf16, Elem::F32, dims(64, 32, 48, false), bad).is_ok());
        }
    }

    #[test]
    fn unsupported_type_pairs_are_refused() {
        assert!(plan(E5, E5, Elem::F32, dims(64, 32, 48, false), ALIGNED).unwrap_err().contains("E5M2 x E5M2"));
        assert!(plan(E4, Elem::Bf16, Elem::F32, dims(64, 32, 48, false), ALIGNED).is_err());
        assert!(plan(Elem::F32, Elem::F32, Elem::F32, dims(64, 32, 48, false), ALIGNED).is_err());
    }
}
