//! The device side (feature `cuda`): a [`Gpu`] owns a CUDA context and stream, the kernel module
//! compiled by NVRTC (once per process and architecture, then cached) and its functions, and offers
//! one launch wrapper per kernel of [`crate::kernels`] on device slices.
//!
//! Argument order follows the reference kernels: outputs, saved values, inputs, sizes. Launches are
//! asynchronous on the `Gpu`'s stream; copying results back (`stream().clone_dtoh`) synchronises.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::kernels;

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable driver or device (the message says which).
    #[error("no CUDA device: {0}")]
    Unavailable(String),
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// NVRTC rejected the kernel source (the log is included).
    #[error("NVRTC compile for {arch}: {log}")]
    Compile { arch: String, log: String },
    /// cuBLASLt rejected a GEMM (e.g. an unsupported type combination or alignment).
    #[error("cuBLASLt: {0}")]
    Blas(#[from] cudarc::cublaslt::result::CublasError),
    /// Buffers whose lengths do not match the sizes given.
    #[error("shape: {0}")]
    Shape(String),
}

pub(crate) type Result<T> = std::result::Result<T, CudaError>;

/// Storage types the kernels are instantiated for; arithmetic is f32 in every case.
pub trait DeviceFloat: DeviceRepr + Copy + 'static {
    /// Suffix of the kernel entry points for this type (`f32`, `bf16`).
    const SUFFIX: &'static str;
}
impl DeviceFloat for f32 {
    const SUFFIX: &'static str = "f32";
}
impl DeviceFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// Checks that the driver library and NVRTC load and a device exists, without creating a context
/// that would panic: cudarc's dynamic loader panics when a library is missing, so look first.
fn check_libraries() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::Unavailable("the CUDA driver library (libcuda.so) is not installed".into()));
    }
    check_nvrtc()?;
    let n = CudaContext::device_count().map_err(|e| CudaError::Unavailable(format!("cuInit/device count: {e}")))?;
    if n == 0 {
        return Err(CudaError::Unavailable("the driver reports no devices".into()));
    }
    Ok(())
}

/// NVRTC can be loaded (compiling the kernels needs it, not a device).
fn check_nvrtc() -> Result<()> {
    // SAFETY: only tries to dlopen the library.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::Unavailable("NVRTC (libnvrtc.so) is not installed or not on LD_LIBRARY_PATH".into()))
    }
}

/// `Ok("device 0: <name>, sm_XY, N devices; driver CUDA a.b, NVRTC c.d, cuBLASLt e.f.g")`, or why no
/// CUDA device can be used.
pub fn probe() -> std::result::Result<String, String> {
    let describe = || -> Result<String> {
        check_libraries()?;
        let ctx = CudaContext::new(0)?;
        let (major, minor) = ctx.compute_capability()?;
        Ok(format!(
            "device 0: {}, sm_{major}{minor}, {} device(s); {}",
            ctx.name()?,
            CudaContext::device_count()?,
            library_versions()
        ))
    };
    describe().map_err(|e| e.to_string())
}

/// The versions of the CUDA libraries this process loaded. cudarc tries unversioned names
/// (`libcublasLt.so`) before versioned ones, so a toolkit earlier on the search path than the one
/// meant can win; `octet device` prints these so a run shows which it got.
fn library_versions() -> String {
    let mut parts = Vec::new();
    let mut v = 0;
    // SAFETY: plain version queries; each library is checked for presence before its first call.
    unsafe {
        if cudarc::driver::sys::cuDriverGetVersion(&mut v) == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            parts.push(format!("driver CUDA {}.{}", v / 1000, (v % 1000) / 10));
        }
        let (mut major, mut minor) = (0, 0);
        if cudarc::nvrtc::sys::is_culib_present()
            && cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor)
                == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS
        {
            parts.push(format!("NVRTC {major}.{minor}"));
        }
        if cudarc::cublaslt::sys::is_culib_present() {
            let v = cudarc::cublaslt::sys::cublasLtGetVersion();
            parts.push(format!("cuBLASLt {}.{}.{}", v / 10_000, (v / 100) % 100, v % 100));
        } else {
            parts.push("cuBLASLt not found".into());
        }
    }
    parts.join(", ")
}

/// Include directories for `cuda_fp8.h`: `$OCTET_CUDA_INCLUDE`, `$CUDA_HOME/include`,
/// `$CUDA_PATH/include`, then `/usr/local/cuda/include`.
fn include_paths() -> Vec<String> {
    let mut paths = Vec::new();
    if let Ok(p) = std::env::var("OCTET_CUDA_INCLUDE") {
        paths.push(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(p) = std::env::var(var) {
            paths.push(format!("{p}/include"));
        }
    }
    paths.push("/usr/local/cuda/include".into());
    paths
}

/// [`kernels::source`] compiled for one architecture, at most once per process.
///
/// The image is a cubin (SASS for `arch`), not PTX: the driver loads SASS without a JIT, so an NVRTC
/// newer than the driver still works under CUDA's minor-version compatibility, where PTX from it
/// would fail to load with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION` (NVRTC 13.x emits a PTX ISA newer
/// than a CUDA 13.0 driver accepts).
fn compiled_module(arch: &str) -> Result<Ptx> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cubin) = cache.get(arch) {
        return Ok(Ptx::from_binary(cubin.clone()));
    }
    let cubin = compile_cubin(arch)?;
    cache.insert(arch.into(), cubin.clone());
    Ok(Ptx::from_binary(cubin))
}

/// NVRTC options: a real architecture (`sm_XY`, so that NVRTC emits SASS), C++17, and the include
/// directories for `cuda_fp8.h`.
fn compile_options(arch: &str) -> Vec<String> {
    let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
    options.extend(include_paths().into_iter().map(|p| format!("-I{p}")));
    options
}

/// Compiles [`kernels::source`] to a cubin for `arch` (e.g. `sm_90`) with NVRTC; needs only
/// libnvrtc, not a device. Fails with [`CudaError::Unavailable`] when libnvrtc cannot be loaded and
/// with [`CudaError::Compile`] (NVRTC's log included) when the source does not compile.
pub fn compile_cubin(arch: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::{CStr, CString};

    /// Destroys the NVRTC program on every return path.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created by create_program and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }

    check_nvrtc()?;
    let fail = |log: String| CudaError::Compile { arch: arch.into(), log };
    let source = CString::new(kernels::source()).map_err(|_| fail("the kernel source contains a NUL byte".into()))?;
    let program = Program(result::create_program(&source, Some(c"octet.cu")).map_err(|e| fail(e.to_string()))?);
    // SAFETY: `program` is live until the end of this function; `source` outlives it.
    unsafe {
        if let Err(e) = result::compile_program(program.0, &compile_options(arch)) {
            let log = result::get_program_log(program.0)
                .map(|log| CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(fail(format!("{e}: {log}")));
        }
        let mut size = 0usize;
        sys::nvrtcGetCUBINSize(program.0, &mut size).result().map_err(|e| fail(format!("nvrtcGetCUBINSize: {e}")))?;
        if size == 0 {
            return Err(fail(format!("NVRTC produced no cubin for {arch} (a virtual architecture?)")));
        }
        let mut cubin = vec![0u8; size];
        sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast())
            .result()
            .map_err(|e| fail(format!("nvrtcGetCUBIN: {e}")))?;
        Ok(cubin)
    }
}

/// Threads per block for the elementwise kernels.
pub(crate) const BLOCK: u32 = 256;

/// A grid-stride launch over `n` elements: enough blocks to cover them, capped (each thread loops).
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per row for `n` rows (the layernorm and attention kernels): BLOCK / 32 rows per block.
pub(crate) fn warp_rows(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil((BLOCK / 32) as usize).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Column sums of an (N, C) matrix (the bias, LayerNorm and RMSNorm parameter gradients): one (32, 32)
/// block per 32 columns, 32 row lanes each (`column_tile_sum` in kernels::PRELUDE). One thread per
/// column looping over all N rows would leave C / 256 blocks, a handful of SMs, latency-bound.
pub(crate) fn column_tiles(cols: usize) -> LaunchConfig {
    let blocks = cols.div_ceil(32).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32, 32, 1), shared_mem_bytes: 0 }
}

/// The tiled attention kernels (kernels::ATTENTION_TILED): one block of 4 warps per 32 rows of one
/// (batch, head): grid (ceil(T / 32), B * NH).
pub(crate) fn attention_tiles(t: usize, bh: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (t.div_ceil(32).max(1) as u32, bh.max(1) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(crate) fn check_len(name: &str, len: usize, want: usize) -> Result<()> {
    if len == want { Ok(()) } else { Err(CudaError::Shape(format!("{name} has {len} elements, expected {want}"))) }
}

pub(crate) fn as_i32(name: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Shape(format!("{name} = {v} does not fit in i32")))
}

/// One device: context, stream, and the compiled kernel module.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

impl Gpu {
    /// Opens device `ordinal` on a new stream and loads the kernels (compiling them on the first call
    /// in this process for this architecture). Fails with [`CudaError::Unavailable`], without
    /// panicking, when there is no driver or device.
    pub fn new(ordinal: usize) -> Result<Self> {
        check_libraries()?;
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = format!("sm_{major}{minor}");
        let module = ctx.load_module(compiled_module(&arch)?)?;
        let mut functions = HashMap::new();
        for name in kernels::KERNEL_NAMES {
            functions.insert(name, module.load_function(name)?);
        }
        let stream = ctx.new_stream()?;
        Ok(Gpu { ctx, stream, arch, _module: module, functions })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every wrapper launches on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `sm_XY` the kernels were compiled for.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub(crate) fn function(&self, name: &str) -> &CudaFunction {
        // KERNEL_NAMES are all loaded in `new`; wrappers only ask for those.
        &self.functions[name]
    }

    pub(crate) fn typed<T: DeviceFloat>(&self, stem: &str) -> &CudaFunction {
        self.function(&format!("{stem}_{}", T::SUFFIX))
    }

    /// out = a + b.
    pub fn residual_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
    ) -> Result<()> {
        let n = out.len();
        check_len("a", a.len(), n)?;
        check_len("b", b.len(), n)?;
        let n64 = n as i64;
        let mut launch = self.stream.launch_builder(self.typed::<T>("residual_forward"));
        launch.arg(out).arg(a).arg(b).arg(&n64);
        // SAFETY: argument types and order match `residual_forward_*` in kernels::RESIDUAL; every
        // buffer holds n elements (checked above).
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// out = gelu(inp) (tanh form).
    pub fn gelu_forward<T: DeviceFloat>(&self, out: &mut CudaSlice<T>, inp: &CudaSlice<T>) -> Result<()> {
        let n = out.len();
        check_len("inp", inp.len(), n)?;
        let n64 = n as i64;
        let mut launch = self.stream.launch_builder(self.typed::<T>("gelu_forward"));
        launch.arg(out).arg(inp).arg(&n64);
        // SAFETY: matches `gelu_forward_*` in kernels::GELU; lengths checked.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// dinp = gelu'(inp) * dout (overwrite).
    pub fn gelu_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        dout: &CudaSlice<T>,
    ) -> Result<()> {
        let n = dinp.len();
        check_len("inp", inp.len(), n)?;
        check_len("dout", dout.len(), n)?;
        let n64 = n as i64;
        let mut launch = self.stream.launch_builder(self.typed::<T>("gelu_backward"));
        launch.arg(dinp).arg(inp).arg(dout).arg(&n64);
        // SAFETY: matches `gelu_backward_*` in kernels::GELU; lengths checked.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// out (N,OC) += bias (OC).
    pub fn bias_add<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        bias: &CudaSlice<T>,
        n: usize,
        oc: usize,
    ) -> Result<()> {
        check_len("out", out.len(), n * oc)?;
        check_len("bias", bias.len(), oc)?;
        let (n32, oc32) = (as_i32("n", n)?, as_i32("oc", oc)?);
        let mut launch = self.stream.launch_builder(self.typed::<T>("bias_add"));
        launch.arg(out).arg(bias).arg(&n32).arg(&oc32);
        // SAFETY: matches `bias_add_*` in kernels::BIAS; lengths checked.
        unsafe { launch.launch(elementwise(n * oc)) }?;
        Ok(())
    }

    /// dbias (OC) += column sums of dout (N,OC).
    pub fn bias_backward<T: DeviceFloat>(
        &self,
        dbias: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        n: usize,
        oc: usize,
    ) -> Result<()> {
        check_len("dbias", dbias.len(), oc)?;
        check_len("dout", dout.len(), n * oc)?;
        let (n32, oc32) = (as_i32("n", n)?, as_i32("oc", oc)?);
        let cfg = column_tiles(oc);
        let mut launch = self.stream.launch_builder(self.typed::<T>("bias_backward"));
        launch.arg(dbias).arg(dout).arg(&n32).arg(&oc32);
        // SAFETY: matches `bias_backward_*` in kernels::BIAS; 32-column tiles, lengths checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// LayerNorm forward over rows of `c`; saves mean and rstd (N, f32).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        mean: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        inp: &CudaSlice<T>,
        w: &CudaSlice<T>,
        b: &CudaSlice<T>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_len("out", out.len(), n * c)?;
        check_len("inp", inp.len(), n * c)?;
        check_len("mean", mean.len(), n)?;
        check_len("rstd", rstd.len(), n)?;
        check_len("w", w.len(), c)?;
        check_len("b", b.len(), c)?;
        let (n32, c32) = (as_i32("n", n)?, as_i32("c", c)?);
        let warps_per_block = BLOCK / 32;
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(warps_per_block), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(self.typed::<T>("layernorm_forward"));
        launch.arg(out).arg(mean).arg(rstd).arg(inp).arg(w).arg(b).arg(&n32).arg(&c32);
        // SAFETY: matches `layernorm_forward_*` in kernels::LAYERNORM; one warp per row, BLOCK is a
        // multiple of 32; lengths checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// FP8 codes `out = fp8(inp * scale)` (saturating, round to nearest even) in `format`, and
    /// `amax = max(amax, max |inp|)` as f32 bits (zero it first for a fresh maximum; read it back
    /// with `f32::from_bits`).
    pub fn quantize_fp8<T: DeviceFloat>(
        &self,
        format: octet_core::fp8::Fp8Format,
        out: &mut CudaSlice<u8>,
        amax: &mut CudaSlice<u32>,
        inp: &CudaSlice<T>,
        scale: f32,
    ) -> Result<()> {
        let n = inp.len();
        check_len("out", out.len(), n)?;
        check_len("amax", amax.len(), 1)?;
        let stem = match format {
            octet_core::fp8::Fp8Format::E4M3 => "quantize_e4m3",
            octet_core::fp8::Fp8Format::E5M2 => "quantize_e5m2",
        };
        let n64 = n as i64;
        let mut launch = self.stream.launch_builder(self.typed::<T>(stem));
        launch.arg(out).arg(amax).arg(inp).arg(&scale).arg(&n64);
        // SAFETY: matches `quantize_*` in kernels::QUANTIZE (FP8 types are one byte, so u8 buffers);
        // lengths checked; the block size is a multiple of 32 for the warp reduction.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// out (cols, rows) = inp (rows, cols)^T for bf16 values (kernel `transpose_u16`).
    pub fn transpose_bf16(
        &self,
        out: &mut CudaSlice<half::bf16>,
        inp: &CudaSlice<half::bf16>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check_len("inp", inp.len(), rows * cols)?;
        check_len("out", out.len(), rows * cols)?;
        let (r32, c32) = (as_i32("rows", rows)?, as_i32("cols", cols)?);
        let cfg = LaunchConfig {
            grid_dim: ((cols as u32).div_ceil(32), (rows as u32).div_ceil(32), 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(self.function("transpose_u16"));
        launch.arg(out).arg(inp).arg(&r32).arg(&c32);
        // SAFETY: matches `transpose_u16` in kernels::TRANSPOSE (bf16 is two bytes); lengths checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// out (cols, rows) = inp (rows, cols)^T for one-byte FP8 codes.
    pub fn transpose_fp8(&self, out: &mut CudaSlice<u8>, inp: &CudaSlice<u8>, rows: usize, cols: usize) -> Result<()> {
        check_len("inp", inp.len(), rows * cols)?;
        check_len("out", out.len(), rows * cols)?;
        let (r32, c32) = (as_i32("rows", rows)?, as_i32("cols", cols)?);
        let cfg = LaunchConfig {
            grid_dim: ((cols as u32).div_ceil(32), (rows as u32).div_ceil(32), 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(self.function("transpose_fp8"));
        launch.arg(out).arg(inp).arg(&r32).arg(&c32);
        // SAFETY: matches `transpose_fp8` in kernels::TRANSPOSE; lengths checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
