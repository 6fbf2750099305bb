//! `CudaBackend`: the models' `octet_kernels::Backend` on a CUDA device, so GPT-2, the simplified
//! blocks and Llama run their one code path on the GPU.
//!
//! Memory: every slab a model allocates comes from [`ManagedAlloc`] (`cuMemAllocManaged`, attached
//! globally), so a model's `&[f32]` is also a device address; the model code is unchanged. The ops with
//! device kernels here launch on the slices' addresses (wrapped as non-owning `CudaSlice`s for the
//! launch); every other op is `HostFallback`'s CPU kernel on the same memory after a stream
//! synchronise (correct, and slow where pages migrate). The host waits (`Memory::synchronize`) only
//! where the model reads results: the loss, narrow staging, the optimizer.
//!
//! On the device now: encoder forward/backward, LayerNorm forward/backward, matmul forward/backward
//! (cuBLAS f32 GEMMs + bias kernels), attention forward/backward, GELU forward/backward, residual,
//! softmax + cross-entropy forward/backward, bias backward, amax, bf16 rounding and FP8 quantise-
//! dequantise (the precision levels' GEMM operands; each amax is read back at once), and Llama's
//! RMSNorm, RoPE, SwiGLU, repeat_kv and token embedding, each forward and backward (`llama_ops`), and
//! the plain levels' optimizer step (`step::plain_update`: cuBLAS nrm2/scal for clipping, the f32
//! AdamW kernel; m and v in managed memory), and zeroing (gradients, the residual gradient) as a
//! stream-ordered memset, so the host never writes a buffer a queued kernel may still read. Still on the host: the cached inference attention
//! (`attention_kv_forward`), the shaped attention and the scalar gains (SAS-P), ReLU, `accumulate`,
//! and the narrow levels' optimizer (their f16/E4M3 buffers are host memory; `crate::optim::O2AdamW`
//! is the device version for when they move).
//!
//! Kernel and cuBLAS failures inside an op panic with the op's name: the `Backend` ops return no
//! `Result` (on the CPU they cannot fail); a failed launch leaves the context unusable anyway.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::cublas::sys as cublas_sys;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, result, sys};
use half::bf16;
use octet_core::{Allocator, Error};
use octet_kernels::backend::{AdamWConfig, Cast, Fp8Format, GemmRole};
use octet_kernels::{HostFallback, Memory, impl_backend_via_host_fallback};

use crate::device::{CudaError, Gpu};
use crate::gemm::{Blas, Dims, Input, Output};
use crate::ops::TokenBuckets;
use crate::optim::AdamCoeffs;

/// CUDA managed memory: host- and device-addressable, zeroed on the device.
#[derive(Debug)]
pub struct ManagedAlloc {
    ctx: Arc<CudaContext>,
}

impl Allocator for ManagedAlloc {
    fn name(&self) -> &'static str {
        "cuda-managed"
    }

    fn alloc_zeroed(&self, bytes: usize) -> octet_core::Result<NonNull<u8>> {
        let err = |what: &str, e: cudarc::driver::DriverError| {
            Error::Other(format!("cuda-managed {what} of {bytes} bytes: {e}"))
        };
        self.ctx.bind_to_thread().map_err(|e| err("bind", e))?;
        // SAFETY: a plain allocation; the pointer is owned by the returned Storage, zeroed before use.
        let ptr = unsafe { result::malloc_managed(bytes, sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL) }
            .map_err(|e| err("allocation", e))?;
        // SAFETY: ptr holds bytes bytes (just allocated); the memset completes before returning.
        unsafe { result::memset_d8_sync(ptr, 0, bytes) }.map_err(|e| err("memset", e))?;
        NonNull::new(ptr as *mut u8).ok_or_else(|| Error::Other("cuda-managed allocation returned null".into()))
    }

    unsafe fn free(&self, ptr: NonNull<u8>, _bytes: usize) {
        // Queued work may still read the buffer: wait for it (free is rare: model teardown, resize).
        let _ = self.ctx.synchronize();
        // SAFETY: ptr came from malloc_managed (alloc_zeroed) and is freed once (Allocator contract).
        if let Err(e) = unsafe { result::free_sync(ptr.as_ptr() as sys::CUdeviceptr) } {
            eprintln!("warning: cuda-managed free failed: {e}");
        }
    }
}

/// The device backend: one GPU, its stream, cuBLAS, and managed memory for the models' slabs.
pub struct CudaBackend {
    gpu: Gpu,
    blas: CudaBlas,
    alloc: Arc<dyn Allocator>,
    /// cuBLASLt for the FP8 levels' linear (`OCTET_CUDA_LINEAR=lt`), else None: f32 cuBLAS.
    lt: Option<Blas>,
    /// GEMMs run on cuBLASLt so far (tests check the path was taken).
    lt_gemms: AtomicUsize,
}

/// Which GEMMs run the bf16 and FP8 levels' linear: `Sgemm` (device casts, then f32 cuBLAS: the
/// CPU's composition) or `Lt` (bf16 operands, or FP8 codes with scale pointers, on cuBLASLt;
/// UNVERIFIED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearGemms {
    Sgemm,
    Lt,
}

impl LinearGemms {
    /// `OCTET_CUDA_LINEAR=lt` selects `Lt`; anything else `Sgemm`.
    pub fn from_env() -> Self {
        match std::env::var("OCTET_CUDA_LINEAR").as_deref() {
            Ok("lt") => LinearGemms::Lt,
            _ => LinearGemms::Sgemm,
        }
    }
}

// SAFETY: the backend is used from one thread at a time by the model that owns it (Backend requires
// Send + Sync for the CPU backend's rayon use; nothing here is shared across threads concurrently).
unsafe impl Send for CudaBackend {}
unsafe impl Sync for CudaBackend {}

impl CudaBackend {
    /// Device `ordinal`, or why it cannot be used (no driver, no GPU, no managed memory); the FP8
    /// linear's GEMMs per `LinearGemms::from_env`.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        Self::with_linear(ordinal, LinearGemms::from_env())
    }

    /// Device `ordinal` with the FP8 linear's GEMMs on `linear`.
    pub fn with_linear(ordinal: usize, linear: LinearGemms) -> Result<Self, CudaError> {
        let gpu = Gpu::new(ordinal)?;
        let ctx = gpu.context().clone();
        // The models write managed memory from the host while kernels are queued (staging, the
        // loss): legal only with concurrent managed access; without it that is a SIGBUS, not an error.
        for (attr, what) in [
            (sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, "managed memory"),
            (sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, "concurrent managed access"),
        ] {
            if ctx.attribute(attr)? == 0 {
                return Err(CudaError::Unavailable(format!(
                    "device {ordinal} has no {what} (the CUDA backend needs it)"
                )));
            }
        }
        // SAFETY: only asks the dynamic loader whether libcublas can be opened.
        if !unsafe { cublas_sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "cuBLAS (libcublas.so) is not installed or not on LD_LIBRARY_PATH".into(),
            ));
        }
        // One stream, ordered launches: cudarc's per-buffer events are not needed, and the launch
        // views below must not create (and leak) any.
        // SAFETY: every launch of this backend is on `gpu.stream()`.
        unsafe { ctx.disable_event_tracking() };
        let blas =
            CudaBlas::new(gpu.stream().clone()).map_err(|e| CudaError::Unavailable(format!("cuBLAS handle: {e:?}")))?;
        let alloc: Arc<dyn Allocator> = Arc::new(ManagedAlloc { ctx });
        // UNVERIFIED (no GPU has run it): the FP8 levels' GEMMs on cuBLASLt, opt-in.
        let lt = match linear {
            LinearGemms::Lt => match Blas::new(&gpu) {
                Ok(b) => Some(b),
                Err(e) => {
                    eprintln!("warning: OCTET_CUDA_LINEAR=lt, but cuBLASLt is unusable ({e}): f32 GEMMs instead");
                    None
                }
            },
            LinearGemms::Sgemm => None,
        };
        Ok(CudaBackend { gpu, blas, alloc, lt, lt_gemms: AtomicUsize::new(0) })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// How many linear GEMMs ran on cuBLASLt (`LinearGemms::Lt`) so far.
    pub fn lt_gemms(&self) -> usize {
        self.lt_gemms.load(Ordering::Relaxed)
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.gpu.stream()
    }

    /// A launch view of `s` (managed memory of a model slab, or host memory for the fallbacks' sake:
    /// see `upload`).
    fn view<T>(&self, s: &[T]) -> View<T> {
        // SAFETY: s lives in managed memory for the whole launch (the model's slab outlives the op,
        // and ops are ordered on one stream); the view never frees it (View::drop leaks it back).
        View(Some(unsafe { self.stream().upgrade_device_ptr(s.as_ptr() as sys::CUdeviceptr, s.len()) }))
    }

    /// Host ids (tokens, targets: not in a slab) copied to the device for one op.
    fn upload(&self, ids: &[u32], what: &str) -> CudaSlice<u32> {
        self.stream().clone_htod(ids).unwrap_or_else(|e| panic!("cuda: uploading {what}: {e}"))
    }

    /// Make this device's context current on the calling thread (raw cuBLAS calls use the current one).
    fn bind(&self, op: &str) {
        self.gpu.context().bind_to_thread().unwrap_or_else(|e| panic!("cuda {op}: binding the context: {e}"));
    }

    /// A zeroed device cell for an amax (f32 bits, max-reduced by the kernels).
    fn amax_cell(&self, op: &str) -> CudaSlice<u32> {
        self.stream().alloc_zeros::<u32>(1).unwrap_or_else(|e| panic!("cuda {op}: amax cell: {e}"))
    }

    /// The amax back on the host (waits for the op: FP8 scaling reads it at once).
    fn read_amax(&self, op: &str, a: &CudaSlice<u32>) -> f32 {
        let v = self.stream().clone_dtoh(a).unwrap_or_else(|e| panic!("cuda {op}: reading amax: {e}"));
        f32::from_bits(v[0])
    }

    /// The FP8 linear GEMM of `role` on cuBLASLt (issue 18 item 3, opt-in with `OCTET_CUDA_LINEAR=lt`;
    /// UNVERIFIED: written without a GPU): A and B quantised to FP8 codes (their amaxes read back, as
    /// the f32 path does), transposed where the TN layout needs it (data gradient: W^T (IC, OC);
    /// weight gradient: dY^T (OC, N) and X^T (IC, N)), one FP8 GEMM with the scale_inv pointers, f32
    /// D (accumulating for the weight gradient), bias added after. None when cuBLASLt's FP8 rules
    /// (`gemm::plan`: k and cols multiples of 16, 16-byte aligned D) do not hold: the caller then runs
    /// the f32 path.
    #[allow(clippy::too_many_arguments)]
    fn linear_gemm_lt(
        &self,
        lt: &Blas,
        out: &mut [f32],
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        role: GemmRole,
        (fa, sa): (Fp8Format, f32),
        (fb, sb): (Fp8Format, f32),
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Option<[f32; 2]> {
        // D (rows, cols) = A' (rows, k) @ B' (cols, k)^T (gemm.rs's one convention).
        let (rows, cols, k) = match role {
            GemmRole::Forward => (n, oc, ic),
            GemmRole::DataGrad => (n, ic, oc),
            GemmRole::WeightGrad => (oc, ic, n),
        };
        let (la, lb, lo) = role.sizes(n, ic, oc);
        let fits = k.is_multiple_of(16) && cols.is_multiple_of(16) && (out.as_ptr() as usize).is_multiple_of(16);
        if !fits || (fa == Fp8Format::E5M2 && fb == Fp8Format::E5M2) || la == 0 || lb == 0 {
            return None;
        }
        let op = "linear_gemm_lt";
        let s = self.stream();
        let codes = |len: usize| s.alloc_zeros::<u8>(len).unwrap_or_else(|e| panic!("cuda {op}: codes: {e}"));
        let (mut ca, mut cb) = (codes(la), codes(lb));
        let (mut ma, mut mb) = (self.amax_cell(op), self.amax_cell(op));
        ok(op, self.gpu.quantize_fp8(fa, &mut ca, &mut ma, &self.view(&a[..la]), sa));
        ok(op, self.gpu.quantize_fp8(fb, &mut cb, &mut mb, &self.view(&b[..lb]), sb));
        let transposed = |c: &CudaSlice<u8>, r: usize, cl: usize| {
            let mut t = codes(r * cl);
            ok(op, self.gpu.transpose_fp8(&mut t, c, r, cl));
            t
        };
        let (a_op, b_op) = match role {
            GemmRole::Forward => (ca, cb),
            GemmRole::DataGrad => (ca, transposed(&cb, oc, ic)),
            GemmRole::WeightGrad => (transposed(&ca, n, oc), transposed(&cb, n, ic)),
        };
        let inv = |scale: f32| s.clone_htod(&[scale.recip()]).unwrap_or_else(|e| panic!("cuda {op}: scale: {e}"));
        let (ia, ib) = (inv(sa), inv(sb));
        let mut o = self.view(&out[..lo]);
        let dims = Dims { rows, cols, k, accumulate: role == GemmRole::WeightGrad };
        let ain = Input::Fp8 { format: fa, codes: a_op.as_view(), scale_inv: ia.as_view() };
        let bin = Input::Fp8 { format: fb, codes: b_op.as_view(), scale_inv: ib.as_view() };
        ok(op, lt.matmul(Output::F32(o.as_view_mut()), ain, bin, dims, None));
        if let Some(bias) = bias {
            ok(op, self.gpu.bias_add(&mut o, &self.view(bias), n, oc));
        }
        self.lt_gemms.fetch_add(1, Ordering::Relaxed);
        Some([self.read_amax(op, &ma), self.read_amax(op, &mb)])
    }

    /// The bf16 linear GEMM of `role` on cuBLASLt (`OCTET_CUDA_LINEAR=lt`; UNVERIFIED: written without
    /// a GPU): A and B cast to bf16 storage, transposed where the TN layout needs it (as
    /// `linear_gemm_lt`), one bf16 GEMM with f32 D (accumulating for the weight gradient), bias added
    /// after. False (nothing done) for empty operands.
    #[allow(clippy::too_many_arguments)]
    fn linear_gemm_lt_bf16(
        &self,
        lt: &Blas,
        out: &mut [f32],
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        role: GemmRole,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> bool {
        let (rows, cols, k) = match role {
            GemmRole::Forward => (n, oc, ic),
            GemmRole::DataGrad => (n, ic, oc),
            GemmRole::WeightGrad => (oc, ic, n),
        };
        let (la, lb, lo) = role.sizes(n, ic, oc);
        if la == 0 || lb == 0 {
            return false;
        }
        let op = "linear_gemm_lt bf16";
        let s = self.stream();
        let buf = |len: usize| s.alloc_zeros::<bf16>(len).unwrap_or_else(|e| panic!("cuda {op}: bf16 operand: {e}"));
        let (mut ha, mut hb) = (buf(la), buf(lb));
        ok(op, self.gpu.cast_f32_to_bf16(&mut ha, &self.view(&a[..la])));
        ok(op, self.gpu.cast_f32_to_bf16(&mut hb, &self.view(&b[..lb])));
        let transposed = |x: &CudaSlice<bf16>, r: usize, c: usize| {
            let mut t = buf(r * c);
            ok(op, self.gpu.transpose_bf16(&mut t, x, r, c));
            t
        };
        let (a_op, b_op) = match role {
            GemmRole::Forward => (ha, hb),
            GemmRole::DataGrad => (ha, transposed(&hb, oc, ic)),
            GemmRole::WeightGrad => (transposed(&ha, n, oc), transposed(&hb, n, ic)),
        };
        let mut o = self.view(&out[..lo]);
        let dims = Dims { rows, cols, k, accumulate: role == GemmRole::WeightGrad };
        let (ain, bin) = (Input::Bf16(a_op.as_view()), Input::Bf16(b_op.as_view()));
        ok(op, lt.matmul(Output::F32(o.as_view_mut()), ain, bin, dims, None));
        if let Some(bias) = bias {
            ok(op, self.gpu.bias_add(&mut o, &self.view(bias), n, oc));
        }
        self.lt_gemms.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// `src` itself or its device cast into `q`, and the FP8 cast's amax (else 0).
    fn cast_operand<'s>(&self, q: &'s mut [f32], src: &'s [f32], cast: Cast) -> (&'s [f32], f32) {
        match cast {
            Cast::None => (src, 0.0),
            Cast::Bf16 => {
                let q = &mut q[..src.len()];
                <Self as HostFallback>::round_bf16(self, q, src);
                (q, 0.0)
            }
            Cast::Fp8 { format, scale } => {
                let q = &mut q[..src.len()];
                let amax = <Self as HostFallback>::qdq_fp8(self, q, src, format, scale);
                (q, amax)
            }
        }
    }

    /// out (N,OC) = inp (N,IC) @ w^T (w (OC,IC) row-major), f32 cuBLAS; beta = 0 overwrites.
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
        &self,
        op: &str,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) {
        let t = |x| if x { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let i = |x: usize| i32::try_from(x).unwrap_or_else(|_| panic!("cuda {op}: dimension {x} exceeds i32"));
        let cfg = GemmConfig {
            transa: t(ta),
            transb: t(tb),
            m: i(m),
            n: i(n),
            k: i(k),
            alpha: 1.0f32,
            lda: i(lda),
            ldb: i(ldb),
            beta,
            ldc: i(ldc),
        };
        self.bind(op);
        let (va, vb, mut vc) = (self.view(a), self.view(b), self.view(c));
        // SAFETY: column-major shapes derived by the callers from the row-major buffers' lengths.
        unsafe { self.blas.gemm(cfg, &*va, &*vb, &mut *vc) }.unwrap_or_else(|e| panic!("cuda {op}: cuBLAS {e:?}"));
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Queued kernels must finish before the module and stream go (the model's slabs are freed
        // after the backend, each with its own synchronise).
        let _ = self.stream().synchronize();
    }
}

/// A non-owning `CudaSlice` over managed memory for one launch.
struct View<T>(Option<CudaSlice<T>>);

impl<T> Deref for View<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        self.0.as_ref().expect("view present until drop")
    }
}

impl<T> DerefMut for View<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        self.0.as_mut().expect("view present until drop")
    }
}

impl<T> Drop for View<T> {
    fn drop(&mut self) {
        // The memory belongs to the model's slab: give the pointer back instead of freeing it.
        if let Some(s) = self.0.take() {
            s.leak();
        }
    }
}

impl Memory for CudaBackend {
    fn allocator(&self) -> Option<Arc<dyn Allocator>> {
        Some(self.alloc.clone())
    }
    fn synchronize(&self) {
        self.stream().synchronize().unwrap_or_else(|e| panic!("cuda: stream synchronize: {e}"));
    }
}

fn blas_ok(op: &str, st: cublas_sys::cublasStatus_t) {
    if st != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        panic!("cuda {op}: cuBLAS {st:?}");
    }
}

fn ok<T>(op: &str, r: Result<T, CudaError>) -> T {
    r.unwrap_or_else(|e| panic!("cuda {op}: {e}"))
}

impl HostFallback for CudaBackend {
    fn encoder_forward(&self, out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], b: usize, t: usize, c: usize) {
        let tok = self.upload(tokens, "tokens");
        let (mut o, e, p) = (self.view(out), self.view(wte), self.view(wpe));
        ok("encoder_forward", self.gpu.encoder_forward(&mut o, &tok, &e, &p, b, t, c));
    }

    fn encoder_backward(
        &self,
        dwte: &mut [f32],
        dwpe: &mut [f32],
        dout: &[f32],
        tokens: &[u32],
        b: usize,
        t: usize,
        c: usize,
    ) {
        let buckets = ok("encoder_backward", TokenBuckets::new(&self.gpu, tokens));
        let (mut de, mut dp, d) = (self.view(dwte), self.view(dwpe), self.view(dout));
        ok("encoder_backward", self.gpu.encoder_backward(&mut de, &mut dp, &d, &buckets, b, t, c));
    }

    fn layernorm_forward(
        &self,
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        inp: &[f32],
        w: &[f32],
        bias: &[f32],
        n: usize,
        c: usize,
    ) {
        let (mut o, mut m, mut r) = (self.view(out), self.view(mean), self.view(rstd));
        let (i, wv, bv) = (self.view(inp), self.view(w), self.view(bias));
        ok("layernorm_forward", self.gpu.layernorm_forward(&mut o, &mut m, &mut r, &i, &wv, &bv, n, c));
    }

    fn layernorm_backward(
        &self,
        dinp: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        w: &[f32],
        mean: &[f32],
        rstd: &[f32],
        n: usize,
        c: usize,
    ) {
        let (mut di, mut dwv, mut dbv) = (self.view(dinp), self.view(dw), self.view(db));
        let (d, i, wv, m, r) = (self.view(dout), self.view(inp), self.view(w), self.view(mean), self.view(rstd));
        ok("layernorm_backward", self.gpu.layernorm_backward(&mut di, &mut dwv, &mut dbv, &d, &i, &wv, &m, &r, n, c));
    }

    fn matmul_forward(
        &self,
        out: &mut [f32],
        inp: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        // Column-major: out^T (OC, N) = w (IC, OC)^T-as-stored . inp^T (IC, N).
        self.sgemm("matmul_forward", true, false, oc, n, ic, w, ic, inp, ic, 0.0, out, oc);
        if let Some(bias) = bias {
            let (mut o, bv) = (self.view(out), self.view(bias));
            ok("matmul_forward bias", self.gpu.bias_add(&mut o, &bv, n, oc));
        }
    }

    fn matmul_backward(
        &self,
        dinp: &mut [f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        w: &[f32],
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        // dinp^T (IC, N) = w^T-as-stored (IC, OC) . dout^T (OC, N): overwrite.
        self.sgemm("matmul_backward dinp", false, false, ic, n, oc, w, ic, dout, oc, 0.0, dinp, ic);
        // dw^T (IC, OC) += inp^T (IC, N) . dout (N, OC): accumulate.
        self.sgemm("matmul_backward dw", false, true, ic, oc, n, inp, ic, dout, oc, 1.0, dw, ic);
        if let Some(db) = dbias {
            <Self as HostFallback>::bias_backward(self, db, dout, n, oc);
        }
    }

    fn attention_forward(
        &self,
        out: &mut [f32],
        lse: &mut [f32],
        qkv: &[f32],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) {
        let (mut o, mut l, q) = (self.view(out), self.view(lse), self.view(qkv));
        ok("attention_forward", self.gpu.attention_forward(&mut o, &mut l, &q, b, t, c, nh));
    }

    fn attention_backward(
        &self,
        dqkv: &mut [f32],
        dout: &[f32],
        qkv: &[f32],
        out: &[f32],
        lse: &[f32],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) {
        let (mut dq, d, q, o, l) = (self.view(dqkv), self.view(dout), self.view(qkv), self.view(out), self.view(lse));
        ok("attention_backward", self.gpu.attention_backward(&mut dq, &d, &q, &o, &l, b, t, c, nh));
    }

    fn gelu_forward(&self, out: &mut [f32], inp: &[f32]) {
        let (mut o, i) = (self.view(out), self.view(inp));
        ok("gelu_forward", self.gpu.gelu_forward(&mut o, &i));
    }

    fn gelu_backward(&self, dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        let (mut di, i, d) = (self.view(dinp), self.view(inp), self.view(dout));
        ok("gelu_backward", self.gpu.gelu_backward(&mut di, &i, &d));
    }

    fn residual_forward(&self, out: &mut [f32], a: &[f32], b: &[f32]) {
        let (mut o, av, bv) = (self.view(out), self.view(a), self.view(b));
        ok("residual_forward", self.gpu.residual_forward(&mut o, &av, &bv));
    }

    fn softmax_xent_forward(
        &self,
        losses: &mut [f32],
        logits: &mut [f32],
        targets: &[u32],
        n: usize,
        v: usize,
        vp: usize,
    ) {
        if targets.contains(&octet_kernels::IGNORE_TARGET) {
            // Masked cross-entropy has no device kernel yet: the CPU kernel on the same memory.
            self.synchronize();
            return octet_kernels::cpu::softmax_xent_forward(losses, logits, targets, n, v, vp);
        }
        let tg = self.upload(targets, "targets");
        let (mut l, mut lg) = (self.view(losses), self.view(logits));
        ok("softmax_xent_forward", self.gpu.softmax_xent_forward(&mut l, &mut lg, &tg, n, v, vp));
    }

    fn softmax_xent_backward(&self, probs: &mut [f32], targets: &[u32], dloss: f64, n: usize, v: usize, vp: usize) {
        if targets.contains(&octet_kernels::IGNORE_TARGET) {
            self.synchronize();
            return octet_kernels::cpu::softmax_xent_backward(probs, targets, dloss, n, v, vp);
        }
        let tg = self.upload(targets, "targets");
        let mut p = self.view(probs);
        ok("softmax_xent_backward", self.gpu.softmax_xent_backward(&mut p, &tg, dloss as f32, n, v, vp));
    }

    fn amax(&self, src: &[f32]) -> f32 {
        if src.is_empty() {
            return 0.0;
        }
        let mut a = self.amax_cell("amax");
        ok("amax", self.gpu.amax(&mut a, &self.view(src)));
        self.read_amax("amax", &a)
    }

    fn round_bf16(&self, dst: &mut [f32], src: &[f32]) {
        let (mut d, sv) = (self.view(dst), self.view(src));
        ok("round_bf16", self.gpu.round_bf16(&mut d, &sv));
    }

    fn qdq_fp8(&self, dst: &mut [f32], src: &[f32], format: Fp8Format, scale: f32) -> f32 {
        if src.is_empty() {
            return 0.0;
        }
        let mut a = self.amax_cell("qdq_fp8");
        let (mut d, sv) = (self.view(dst), self.view(src));
        ok("qdq_fp8", self.gpu.qdq_fp8(format, &mut d, &mut a, &sv, scale));
        self.read_amax("qdq_fp8", &a)
    }

    // The precision levels' linear: device casts (one amax read-back each, as `qdq_fp8`), then the
    // f32 cuBLAS GEMM of the role. Bit-for-bit the CPU's composition; cuBLASLt bf16/FP8 is next.
    fn linear_gemm(
        &self,
        out: &mut [f32],
        qa: &mut [f32],
        qb: &mut [f32],
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        role: GemmRole,
        cast_a: Cast,
        cast_b: Cast,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> [f32; 2] {
        assert!(bias.is_none() || role == GemmRole::Forward, "linear_gemm: bias only in the forward GEMM");
        if let (Some(lt), Cast::Fp8 { format: fa, scale: sa }, Cast::Fp8 { format: fb, scale: sb }) =
            (&self.lt, cast_a, cast_b)
            && let Some(amaxes) = self.linear_gemm_lt(lt, out, a, b, bias, role, (fa, sa), (fb, sb), n, ic, oc)
        {
            return amaxes;
        }
        if let (Some(lt), Cast::Bf16, Cast::Bf16) = (&self.lt, cast_a, cast_b)
            && self.linear_gemm_lt_bf16(lt, out, a, b, bias, role, n, ic, oc)
        {
            return [0.0, 0.0];
        }
        let (la, lb, _) = role.sizes(n, ic, oc);
        let (a, amax_a) = self.cast_operand(qa, &a[..la], cast_a);
        let (b, amax_b) = self.cast_operand(qb, &b[..lb], cast_b);
        match role {
            GemmRole::Forward => <Self as HostFallback>::matmul_forward(self, out, a, b, bias, n, ic, oc),
            // dX^T (IC, N) = W^T-as-stored (IC, OC) . dY^T (OC, N): overwrite.
            GemmRole::DataGrad => self.sgemm("linear_gemm dgrad", false, false, ic, n, oc, b, ic, a, oc, 0.0, out, ic),
            // dW^T (IC, OC) += X^T (IC, N) . dY (N, OC): accumulate.
            GemmRole::WeightGrad => self.sgemm("linear_gemm wgrad", false, true, ic, oc, n, b, ic, a, oc, 1.0, out, ic),
        }
        [amax_a, amax_b]
    }

    fn zero(&self, x: &mut [f32]) {
        if x.is_empty() {
            return;
        }
        // SAFETY: x is managed memory of x.len() f32, zeroed in stream order (no host page touch).
        let r = unsafe {
            result::memset_d8_async(x.as_mut_ptr() as sys::CUdeviceptr, 0, size_of_val(x), self.stream().cu_stream())
        };
        r.unwrap_or_else(|e| panic!("cuda zero: {e}"));
    }

    fn global_norm(&self, x: &[f32]) -> f64 {
        if x.is_empty() {
            return 0.0;
        }
        self.bind("global_norm");
        // f32 accumulation (cuBLAS nrm2 scales to avoid overflow; ~1e-6 relative of the f64 norm the
        // op's spec names, harmless for clipping; a norm beyond f32's range reads as inf: the step
        // then stops with a non-finite-norm error where the CPU would clip).
        let mut norm = 0.0f32;
        // SAFETY: x is managed memory of x.len() f32; host pointer mode (cuBLAS's default) writes the
        // result to `norm` before returning, after the queued work on the handle's stream.
        let st =
            unsafe { cublas_sys::cublasSnrm2_v2_64(*self.blas.handle(), x.len() as i64, x.as_ptr(), 1, &mut norm) };
        blas_ok("global_norm", st);
        norm as f64
    }

    fn scale_in_place(&self, x: &mut [f32], s: f32) {
        if x.is_empty() {
            return;
        }
        self.bind("scale_in_place");
        // SAFETY: x is managed memory of x.len() f32; alpha is read from the host at the call.
        let st = unsafe { cublas_sys::cublasSscal_v2_64(*self.blas.handle(), x.len() as i64, &s, x.as_mut_ptr(), 1) };
        blas_ok("scale_in_place", st);
    }

    fn adamw_update(
        &self,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        t: u64,
        lr: f64,
        cfg: &AdamWConfig,
        decay: bool,
    ) {
        let k = AdamCoeffs::new(cfg, t, lr, decay);
        let (mut pv, mut mv, mut vv, gv) = (self.view(p), self.view(m), self.view(v), self.view(g));
        ok("adamw_update", self.gpu.adamw_f32(&mut pv, &mut mv, &mut vv, &gv, &k));
    }

    fn bias_backward(&self, dbias: &mut [f32], dout: &[f32], n: usize, oc: usize) {
        let (mut db, d) = (self.view(dbias), self.view(dout));
        ok("bias_backward", self.gpu.bias_backward(&mut db, &d, n, oc));
    }

    // Llama's ops. Slices are cut to the sizes given (the CPU kernels accept longer ones).
    fn rmsnorm_forward(&self, out: &mut [f32], rrms: &mut [f32], inp: &[f32], w: &[f32], n: usize, c: usize, eps: f64) {
        let (mut o, mut r) = (self.view(&out[..n * c]), self.view(&rrms[..n]));
        let (i, wv) = (self.view(&inp[..n * c]), self.view(&w[..c]));
        ok("rmsnorm_forward", self.gpu.rmsnorm_forward(&mut o, &mut r, &i, &wv, n, c, eps));
    }

    fn rmsnorm_backward(
        &self,
        dinp: &mut [f32],
        dw: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        w: &[f32],
        rrms: &[f32],
        n: usize,
        c: usize,
    ) {
        let (mut di, mut dwv) = (self.view(&dinp[..n * c]), self.view(&dw[..c]));
        let (d, i) = (self.view(&dout[..n * c]), self.view(&inp[..n * c]));
        let (wv, r) = (self.view(&w[..c]), self.view(&rrms[..n]));
        ok("rmsnorm_backward", self.gpu.rmsnorm_backward(&mut di, &mut dwv, &d, &i, &wv, &r, n, c));
    }

    fn rope_forward(
        &self,
        out: &mut [f32],
        inp: &[f32],
        b: usize,
        t: usize,
        pos0: usize,
        w: usize,
        rot: usize,
        hs: usize,
        base: f64,
    ) {
        let (mut o, i) = (self.view(&out[..b * t * w]), self.view(&inp[..b * t * w]));
        ok("rope_forward", self.gpu.rope_forward(&mut o, &i, b, t, pos0, w, rot, hs, base));
    }

    fn rope_backward(
        &self,
        dinp: &mut [f32],
        dout: &[f32],
        b: usize,
        t: usize,
        pos0: usize,
        w: usize,
        rot: usize,
        hs: usize,
        base: f64,
    ) {
        let (mut di, d) = (self.view(&dinp[..b * t * w]), self.view(&dout[..b * t * w]));
        ok("rope_backward", self.gpu.rope_backward(&mut di, &d, b, t, pos0, w, rot, hs, base));
    }

    fn swiglu_forward(&self, out: &mut [f32], inp: &[f32], n: usize, h: usize) {
        let (mut o, i) = (self.view(&out[..n * h]), self.view(&inp[..n * 2 * h]));
        ok("swiglu_forward", self.gpu.swiglu_forward(&mut o, &i, n, h));
    }

    fn swiglu_backward(&self, dinp: &mut [f32], inp: &[f32], dout: &[f32], n: usize, h: usize) {
        let (mut di, i, d) = (self.view(&dinp[..n * 2 * h]), self.view(&inp[..n * 2 * h]), self.view(&dout[..n * h]));
        ok("swiglu_backward", self.gpu.swiglu_backward(&mut di, &i, &d, n, h));
    }

    fn repeat_kv_forward(&self, out: &mut [f32], inp: &[f32], n: usize, nh: usize, nkv: usize, hs: usize) {
        let (wide, narrow) = (n * 3 * nh * hs, n * (nh + 2 * nkv) * hs);
        let (mut o, i) = (self.view(&out[..wide]), self.view(&inp[..narrow]));
        ok("repeat_kv_forward", self.gpu.repeat_kv_forward(&mut o, &i, n, nh, nkv, hs));
    }

    fn repeat_kv_backward(&self, dinp: &mut [f32], dout: &[f32], n: usize, nh: usize, nkv: usize, hs: usize) {
        let (wide, narrow) = (n * 3 * nh * hs, n * (nh + 2 * nkv) * hs);
        let (mut di, d) = (self.view(&dinp[..narrow]), self.view(&dout[..wide]));
        ok("repeat_kv_backward", self.gpu.repeat_kv_backward(&mut di, &d, n, nh, nkv, hs));
    }

    fn embed_forward(&self, out: &mut [f32], tokens: &[u32], wte: &[f32], n: usize, c: usize) {
        if n == 0 {
            return; // nothing to write (and cudarc cannot upload an empty token list)
        }
        let tok = self.upload(&tokens[..n], "tokens");
        let (mut o, e) = (self.view(&out[..n * c]), self.view(wte));
        ok("embed_forward", self.gpu.embed_forward(&mut o, &tok, &e, n, c));
    }

    fn embed_backward(&self, dwte: &mut [f32], dout: &[f32], tokens: &[u32], n: usize, c: usize) {
        if n == 0 {
            return;
        }
        let buckets = ok("embed_backward", TokenBuckets::new(&self.gpu, &tokens[..n]));
        let (mut de, d) = (self.view(dwte), self.view(&dout[..n * c]));
        ok("embed_backward", self.gpu.embed_backward(&mut de, &d, &buckets, n, c));
    }
}

impl_backend_via_host_fallback!(CudaBackend, "cuda");
