//! CUDA C sources of the elementwise kernels of the GPT-2 step, compiled at run time by NVRTC.
//!
//! Each kernel is one raw-string constant (`PRELUDE` first, then one per operation) so that
//! `tools/cuda/nvrtc_check.py` can extract and compile them offline without a GPU; [`source`] joins
//! them into the one module the device backend compiles once per process. They follow
//! `octet_kernels::reference` exactly (same formulas, same argument order: outputs, saved values,
//! inputs, sizes; activation gradients overwrite, parameter gradients accumulate), with f32 arithmetic
//! instead of the reference's f64 sums. Every templated kernel is instantiated for `f32` and `bf16`
//! storage (suffixes `_f32`, `_bf16`); arithmetic is always f32. Sizes are `long long` (Rust `i64`) for
//! element counts and `int` (Rust `i32`) for row and column counts.

/// Headers and helpers shared by every kernel: f32 <-> storage conversions, warp reductions, the
/// type list the kernels are instantiated for.
pub const PRELUDE: &str = r#"
#include <cuda_bf16.h>
#include <cuda_fp8.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ unsigned int warp_max_u32(unsigned int v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#define OCTET_GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)
#define OCTET_FOR_EACH_TYPE(M) M(f32, float) M(bf16, __nv_bfloat16)

// GELU tanh-approximation constants: sqrt(2/pi) and GPT-2's cubic coefficient.
#define OCTET_GELU_SCALE 0.7978845608028654f
#define OCTET_GELU_CUBIC 0.044715f
"#;

/// `residual_forward_{f32,bf16}(out, a, b, n)`: out = a + b (grid-stride, any launch shape).
pub const RESIDUAL: &str = r#"
template <typename T>
__device__ void residual_forward(T* out, const T* a, const T* b, long long n) {
    OCTET_GRID_STRIDE(i, n) { out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i])); }
}
#define OCTET_RESIDUAL(S, T) \
    extern "C" __global__ void residual_forward_##S(T* out, const T* a, const T* b, long long n) { \
        residual_forward<T>(out, a, b, n); \
    }
OCTET_FOR_EACH_TYPE(OCTET_RESIDUAL)
"#;

/// `gelu_forward_*(out, inp, n)` and `gelu_backward_*(dinp, inp, dout, n)` (tanh form; dinp is
/// overwritten).
pub const GELU: &str = r#"
template <typename T>
__device__ void gelu_forward(T* out, const T* inp, long long n) {
    OCTET_GRID_STRIDE(i, n) {
        float x = to_f32(inp[i]);
        float u = OCTET_GELU_SCALE * (x + OCTET_GELU_CUBIC * x * x * x);
        out[i] = from_f32<T>(0.5f * x * (1.0f + tanhf(u)));
    }
}
template <typename T>
__device__ void gelu_backward(T* dinp, const T* inp, const T* dout, long long n) {
    OCTET_GRID_STRIDE(i, n) {
        float x = to_f32(inp[i]);
        float u = OCTET_GELU_SCALE * (x + OCTET_GELU_CUBIC * x * x * x);
        float th = tanhf(u);
        float du = OCTET_GELU_SCALE * (1.0f + 3.0f * OCTET_GELU_CUBIC * x * x);
        float g = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
        dinp[i] = from_f32<T>(g * to_f32(dout[i]));
    }
}
#define OCTET_GELU(S, T) \
    extern "C" __global__ void gelu_forward_##S(T* out, const T* inp, long long n) { \
        gelu_forward<T>(out, inp, n); \
    } \
    extern "C" __global__ void gelu_backward_##S(T* dinp, const T* inp, const T* dout, long long n) { \
        gelu_backward<T>(dinp, inp, dout, n); \
    }
OCTET_FOR_EACH_TYPE(OCTET_GELU)
"#;

/// `bias_add_*(out, bias, n, oc)`: out (N,OC) += bias (OC) in place (the epilogue of a GEMM without
/// a fused bias), and `bias_backward_*(dbias, dout, n, oc)`: dbias (OC) += column sums of dout
/// (one thread per column; adjacent threads read adjacent columns, so every row read is coalesced).
pub const BIAS: &str = r#"
template <typename T>
__device__ void bias_add(T* out, const T* bias, int n, int oc) {
    OCTET_GRID_STRIDE(i, (long long)n * oc) { out[i] = from_f32<T>(to_f32(out[i]) + to_f32(bias[i % oc])); }
}
template <typename T>
__device__ void bias_backward(T* dbias, const T* dout, int n, int oc) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= oc) return;
    float acc = 0.0f;
    for (int r = 0; r < n; r++) acc += to_f32(dout[(long long)r * oc + o]);
    dbias[o] = from_f32<T>(to_f32(dbias[o]) + acc);
}
#define OCTET_BIAS(S, T) \
    extern "C" __global__ void bias_add_##S(T* out, const T* bias, int n, int oc) { \
        bias_add<T>(out, bias, n, oc); \
    } \
    extern "C" __global__ void bias_backward_##S(T* dbias, const T* dout, int n, int oc) { \
        bias_backward<T>(dbias, dout, n, oc); \
    }
OCTET_FOR_EACH_TYPE(OCTET_BIAS)
"#;

/// `layernorm_forward_*(out, mean, rstd, inp, w, b, n, c)`: one warp per row (blockDim.x a multiple
/// of 32, grid covering n warps); two passes over the row (mean, then the biased variance of x - mean,
/// as the reference), eps 1e-5. mean and rstd (N) are always f32; either may be null (inference).
pub const LAYERNORM: &str = r#"
template <typename T>
__device__ void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w,
                                  const T* b, int n, int c) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= n) return;  // the whole warp leaves together
    const T* x = inp + row * c;
    float sum = 0.0f;
    for (int i = lane; i < c; i += 32) sum += to_f32(x[i]);
    float m = warp_sum(sum) / c;
    float var = 0.0f;
    for (int i = lane; i < c; i += 32) {
        float d = to_f32(x[i]) - m;
        var += d * d;
    }
    float s = rsqrtf(warp_sum(var) / c + 1e-5f);
    T* o = out + row * c;
    for (int i = lane; i < c; i += 32) o[i] = from_f32<T>((to_f32(x[i]) - m) * s * to_f32(w[i]) + to_f32(b[i]));
    if (lane == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = s;
    }
}
#define OCTET_LAYERNORM(S, T) \
    extern "C" __global__ void layernorm_forward_##S(T* out, float* mean, float* rstd, const T* inp, \
                                                     const T* w, const T* b, int n, int c) { \
        layernorm_forward<T>(out, mean, rstd, inp, w, b, n, c); \
    }
OCTET_FOR_EACH_TYPE(OCTET_LAYERNORM)
"#;

/// `quantize_{e4m3,e5m2}_*(out, amax, inp, scale, n)`: out = fp8(inp * scale), round to nearest even,
/// saturating to the largest finite value (inf too; NaN stays NaN) — `octet_core::fp8::quantize`.
/// `*amax = max(*amax, max |inp|)` over the unscaled input, as f32 bits in a `unsigned int` (|x| bit
/// patterns order like their values and put NaN above inf, so a NaN input makes amax NaN). Zero
/// `*amax` first for a fresh maximum.
pub const QUANTIZE: &str = r#"
template <typename T, __nv_fp8_interpretation_t F, typename Q>
__device__ void quantize_fp8(Q* out, unsigned int* amax, const T* inp, float scale, long long n) {
    unsigned int m = 0;
    OCTET_GRID_STRIDE(i, n) {
        float x = to_f32(inp[i]);
        m = max(m, __float_as_uint(x) & 0x7fffffffu);
        out[i].__x = __nv_cvt_float_to_fp8(x * scale, __NV_SATFINITE, F);
    }
    m = warp_max_u32(m);
    if (threadIdx.x % 32 == 0 && m != 0) atomicMax(amax, m);
}
#define OCTET_QUANTIZE(S, T) \
    extern "C" __global__ void quantize_e4m3_##S(__nv_fp8_e4m3* out, unsigned int* amax, const T* inp, \
                                                 float scale, long long n) { \
        quantize_fp8<T, __NV_E4M3>(out, amax, inp, scale, n); \
    } \
    extern "C" __global__ void quantize_e5m2_##S(__nv_fp8_e5m2* out, unsigned int* amax, const T* inp, \
                                                 float scale, long long n) { \
        quantize_fp8<T, __NV_E5M2>(out, amax, inp, scale, n); \
    }
OCTET_FOR_EACH_TYPE(OCTET_QUANTIZE)
"#;

/// `transpose_fp8(out, inp, rows, cols)`: out (cols, rows) = inp (rows, cols)^T for one-byte FP8 codes
/// of either format (cuBLASLt FP8 GEMMs need the TN layout, so weights and gradients are transposed
/// once per step). Tiles of 32x32 through shared memory (one padding column against bank conflicts);
/// launch with blockDim (32, 8) and grid (ceil(cols/32), ceil(rows/32)).
pub const TRANSPOSE: &str = r#"
extern "C" __global__ void transpose_fp8(__nv_fp8_storage_t* out, const __nv_fp8_storage_t* inp, int rows,
                                         int cols) {
    __shared__ __nv_fp8_storage_t tile[32][33];
    int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        int r = r0 + j, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[j][threadIdx.x] = inp[(long long)r * cols + c];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        int c = c0 + j, r = r0 + threadIdx.x;
        if (r < rows && c < cols) out[(long long)c * rows + r] = tile[threadIdx.x][j];
    }
}
"#;

/// Every operation's source, in module order (after [`PRELUDE`]), with its name.
pub const OPS: [(&str, &str); 6] = [
    ("residual", RESIDUAL),
    ("gelu", GELU),
    ("bias", BIAS),
    ("layernorm", LAYERNORM),
    ("quantize", QUANTIZE),
    ("transpose", TRANSPOSE),
];

/// Every `extern "C"` entry point the module defines.
pub const KERNEL_NAMES: [&str; 17] = [
    "residual_forward_f32",
    "residual_forward_bf16",
    "gelu_forward_f32",
    "gelu_forward_bf16",
    "gelu_backward_f32",
    "gelu_backward_bf16",
    "bias_add_f32",
    "bias_add_bf16",
    "bias_backward_f32",
    "bias_backward_bf16",
    "layernorm_forward_f32",
    "layernorm_forward_bf16",
    "quantize_e4m3_f32",
    "quantize_e4m3_bf16",
    "quantize_e5m2_f32",
    "quantize_e5m2_bf16",
    "transpose_fp8",
];

/// The whole module: [`PRELUDE`] followed by every operation in [`OPS`].
pub fn source() -> String {
    let mut s = String::from(PRELUDE);
    for (_, op) in OPS {
        s.push_str(op);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed entry point is defined (directly or by an instantiation macro) and every macro
    /// instantiation is listed: catches a renamed kernel before it reaches a GPU.
    #[test]
    fn every_kernel_name_is_defined() {
        let src = source();
        for name in KERNEL_NAMES {
            let direct = src.contains(&format!("void {name}("));
            let instantiated = name
                .rsplit_once('_')
                .is_some_and(|(stem, ty)| ["f32", "bf16"].contains(&ty) && src.contains(&format!("void {stem}_##S(")));
            assert!(direct || instantiated, "kernel {name} is not defined in the CUDA source");
        }
        let entry_points = src.matches("extern \"C\" __global__").count();
        let per_type = src.matches("_##S(").count();
        assert_eq!(entry_points - per_type + 2 * per_type, KERNEL_NAMES.len());
    }
}
