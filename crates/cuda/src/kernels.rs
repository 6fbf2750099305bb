//! CUDA C sources of the GPT-2 and Llama kernels (all but the GEMMs: see `gemm`), compiled at run time by NVRTC.
//!
//! Each kernel is one raw-string constant (`PRELUDE` first, then one per operation) so that
//! `tools/cuda/nvrtc_check.py` can extract and compile them offline without a GPU; [`source`] joins
//! them into the one module the device backend compiles once per process. They follow
//! `octet_kernels::reference` exactly (same formulas, same argument order: outputs, saved values,
//! inputs, sizes; activation gradients overwrite, parameter gradients accumulate), with f32 arithmetic
//! instead of the reference's f64 sums. Every templated kernel is instantiated for `f32` and `bf16`
//! storage (suffixes `_f32`, `_bf16`); arithmetic is always f32. Sizes are `long long` (Rust `i64`) for
//! element counts and `int` (Rust `i32`) for row and column counts.
//!
//! Without a GPU, `tools/cuda/emulate/run.py` runs every entry point of [`KERNEL_NAMES`] on the CPU
//! (NVIDIA's host-callable bf16/FP8 conversions, blocks in shuffled order, per-block write sets
//! checked disjoint) against numpy references, and fails if one is not exercised.

/// Headers and helpers shared by every kernel: f32 <-> storage conversions, warp reductions, the
/// type list the kernels are instantiated for.
pub const PRELUDE: &str = r#"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
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
// Column sums of an (N, C) matrix, launched as `column_tiles` (block (32, 32), one block per 32
// columns): thread (x, y) has summed rows y, y + 32, ... of column blockIdx.x * 32 + x into `acc` (0 past
// the last column); the block adds the 32 row lanes in lane order, so the result is deterministic, and
// returns the column total to the threads with y == 0 (0 to the rest). Every thread of the block must
// call it (it synchronises); `part` is the caller's __shared__ float[32][32], free again on return.
__device__ __forceinline__ float column_tile_sum(float (*part)[32], float acc) {
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    float s = 0.0f;
    if (threadIdx.y == 0)
        for (int k = 0; k < 32; k++) s += part[k][threadIdx.x];
    __syncthreads();
    return s;
}
__device__ __forceinline__ unsigned int warp_max_u32(unsigned int v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// +inf without <math.h> (NVRTC has no INFINITY macro).
#define OCTET_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum / max for blockDim.x a multiple of 32 (<= 1024): warp partials through shared
// memory, then warp 0 reduces them; every thread gets the result. `scratch` holds 32 floats and may be
// reused right after the call returns (the trailing barrier protects it).
__device__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}
__device__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -OCTET_INF;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// max |x| of a thread's values into *amax as f32 bits (see QUANTIZE): one atomic per warp. Every
// lane of the warp must call it.
__device__ __forceinline__ void amax_commit(unsigned int* amax, unsigned int m) {
    m = warp_max_u32(m);
    if (threadIdx.x % 32 == 0 && m != 0) atomicMax(amax, m);
}
__device__ __forceinline__ unsigned int abs_bits(float x) { return __float_as_uint(x) & 0x7fffffffu; }

#define OCTET_GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)
#define OCTET_FOR_EACH_TYPE(M) M(f32, float) M(bf16, __nv_bfloat16)

// floor(log2(num / den)) for positive finite num, den (octet_core::scaling::floor_log2_ratio):
// compare significands normalised to [2^23, 2^24) and subtract exponents.
__device__ __forceinline__ void significand_exponent(float x, unsigned int& sig, int& e) {
    unsigned int bits = __float_as_uint(x), field = (bits >> 23) & 0xff, mant = bits & 0x7fffff;
    if (field == 0) {
        int lz = __clz(mant) - 8;
        sig = mant << lz;
        e = -126 - lz;
    } else {
        sig = mant | 0x800000;
        e = (int)field - 127;
    }
}
// octet_core::scaling::compute_scale: 2^k, k = floor(log2(fp_max / amax)) - margin clamped to
// +-126, or `previous` for a zero or non-finite amax.
__device__ float compute_scale(float amax, float fp_max, int margin, float previous) {
    if (!(isfinite(amax) && amax > 0.0f)) return previous;
    unsigned int sn, sd;
    int en, ed;
    significand_exponent(fp_max, sn, en);
    significand_exponent(amax, sd, ed);
    int k = en - ed - (sn < sd ? 1 : 0) - margin;
    k = min(max(k, -126), 126);
    return __uint_as_float((unsigned int)(k + 127) << 23);
}

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
/// (launch as `column_tiles`: 32 row lanes per column, adjacent threads on adjacent columns so every
/// row read is coalesced, the lanes added in order by `column_tile_sum`: deterministic).
pub const BIAS: &str = r#"
template <typename T>
__device__ void bias_add(T* out, const T* bias, int n, int oc) {
    OCTET_GRID_STRIDE(i, (long long)n * oc) { out[i] = from_f32<T>(to_f32(out[i]) + to_f32(bias[i % oc])); }
}
template <typename T>
__device__ void bias_backward(T* dbias, const T* dout, int n, int oc) {
    __shared__ float part[32][32];
    int o = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (o < oc)
        for (int r = threadIdx.y; r < n; r += 32) acc += to_f32(dout[(long long)r * oc + o]);
    float sum = column_tile_sum(part, acc);
    if (threadIdx.y == 0 && o < oc) dbias[o] = from_f32<T>(to_f32(dbias[o]) + sum);
}
#define OCTET_BIAS(S, T) \
    extern "C" __global__ void bias_add_##S(T* out, const T* bias, int n, int oc) { \
        bias_add<T>(out, bias, n, oc); \
    } \
    extern "C" __global__ void __launch_bounds__(1024) bias_backward_##S(T* dbias, const T* dout, int n, int oc) { \
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
    amax_commit(amax, m);
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

/// `qdq_{e4m3,e5m2}_*(out, amax, inp, scale, n)`: out = decode(fp8(inp * scale)) / scale in the storage
/// type, the exact values an FP8 GEMM multiplies (`Backend::qdq_fp8`; saturating, round to nearest
/// even; scale a power of two, so the division is exact and an FP8 value, at most 4 significant bits,
/// is exact in bf16 too), and `*amax = max(*amax, max |inp|)` as QUANTIZE does.
pub const QDQ: &str = r#"
template <typename T, __nv_fp8_interpretation_t F>
__device__ void qdq_fp8(T* out, unsigned int* amax, const T* inp, float scale, long long n) {
    unsigned int m = 0;
    float inv = 1.0f / scale;
    OCTET_GRID_STRIDE(i, n) {
        float x = to_f32(inp[i]);
        m = max(m, abs_bits(x));
        __half h = __nv_cvt_fp8_to_halfraw(__nv_cvt_float_to_fp8(x * scale, __NV_SATFINITE, F), F);
        out[i] = from_f32<T>(__half2float(h) * inv);
    }
    amax_commit(amax, m);
}
#define OCTET_QDQ(S, T) \
    extern "C" __global__ void qdq_e4m3_##S(T* out, unsigned int* amax, const T* inp, float scale, long long n) { \
        qdq_fp8<T, __NV_E4M3>(out, amax, inp, scale, n); \
    } \
    extern "C" __global__ void qdq_e5m2_##S(T* out, unsigned int* amax, const T* inp, float scale, long long n) { \
        qdq_fp8<T, __NV_E5M2>(out, amax, inp, scale, n); \
    }
OCTET_FOR_EACH_TYPE(OCTET_QDQ)
"#;

/// `transpose_fp8(out, inp, rows, cols)`: out (cols, rows) = inp (rows, cols)^T for one-byte FP8 codes
/// of either format (cuBLASLt FP8 GEMMs need the TN layout, so weights and gradients are transposed
/// once per step). Tiles of 32x32 through shared memory (one padding column against bank conflicts);
/// launch with blockDim (32, 8) and grid (ceil(cols/32), ceil(rows/32)). `transpose_u16` is the same
/// for two-byte elements (bf16 GEMM operands in the TN layout).
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
extern "C" __global__ void transpose_u16(unsigned short* out, const unsigned short* inp, int rows,
                                         int cols) {
    __shared__ unsigned short tile[32][33];
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

/// Encoder (token + position embedding), forward and backward.
/// - `encoder_forward_*(out, tokens, wte, wpe, bt, t, c)`: out (B*T, C) row r = wte[tokens[r]] +
///   wpe[r % T] (grid-stride over B*T*C).
/// - `encoder_backward_wpe_*(dwpe, dout, b, t, c)`: dwpe (T, C) += sum over the batch of dout; one
///   thread per (t, c), the B terms summed in f32 in batch order, then added once (deterministic).
/// - `encoder_backward_wte_*(dwte, dout, starts, positions, ids, nbuckets, c)`: dwte[id] += sum of the
///   dout rows whose token is `id`. The rows are grouped by token on the host (`positions[starts[u] ..
///   starts[u + 1]]` are the rows of token `ids[u]`, ascending): grid (ceil(C / blockDim.x), buckets),
///   one thread per (token, channel) sums its rows in order and adds once. No atomics, so the result
///   does not depend on scheduling.
pub const ENCODER: &str = r#"
template <typename T>
__device__ void encoder_forward(T* out, const unsigned int* tokens, const T* wte, const T* wpe, int bt, int t,
                                int c) {
    OCTET_GRID_STRIDE(i, (long long)bt * c) {
        long long r = i / c;
        int ch = (int)(i % c);
        out[i] = from_f32<T>(to_f32(wte[(long long)tokens[r] * c + ch]) + to_f32(wpe[(r % t) * c + ch]));
    }
}
template <typename T>
__device__ void encoder_backward_wpe(T* dwpe, const T* dout, int b, int t, int c) {
    OCTET_GRID_STRIDE(i, (long long)t * c) {
        float acc = 0.0f;
        for (int bi = 0; bi < b; bi++) acc += to_f32(dout[(long long)bi * t * c + i]);
        dwpe[i] = from_f32<T>(to_f32(dwpe[i]) + acc);
    }
}
template <typename T>
__device__ void encoder_backward_wte(T* dwte, const T* dout, const int* starts, const int* positions,
                                     const unsigned int* ids, int nbuckets, int c) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    for (int u = blockIdx.y; u < nbuckets; u += gridDim.y) {
        float acc = 0.0f;
        for (int k = starts[u]; k < starts[u + 1]; k++) acc += to_f32(dout[(long long)positions[k] * c + ch]);
        long long o = (long long)ids[u] * c + ch;
        dwte[o] = from_f32<T>(to_f32(dwte[o]) + acc);
    }
}
#define OCTET_ENCODER(S, T) \
    extern "C" __global__ void encoder_forward_##S(T* out, const unsigned int* tokens, const T* wte, const T* wpe, \
                                                   int bt, int t, int c) { \
        encoder_forward<T>(out, tokens, wte, wpe, bt, t, c); \
    } \
    extern "C" __global__ void encoder_backward_wpe_##S(T* dwpe, const T* dout, int b, int t, int c) { \
        encoder_backward_wpe<T>(dwpe, dout, b, t, c); \
    } \
    extern "C" __global__ void encoder_backward_wte_##S(T* dwte, const T* dout, const int* starts, \
                                                        const int* positions, const unsigned int* ids, \
                                                        int nbuckets, int c) { \
        encoder_backward_wte<T>(dwte, dout, starts, positions, ids, nbuckets, c); \
    }
OCTET_FOR_EACH_TYPE(OCTET_ENCODER)
"#;

/// LayerNorm backward, in two kernels (the reference's formulas; mean and rstd (N) are f32):
/// - `layernorm_backward_dinp_*(dinp, dout, inp, w, mean, rstd, n, c)`: one warp per row. With
///   xhat = (x - mean) rstd and g = dout w: dinp += rstd (g - mean(g) - xhat mean(g xhat))
///   (accumulates: the residual stream's gradient). Launch as `layernorm_forward`.
/// - `layernorm_backward_dwdb_*(dw, db, dout, inp, mean, rstd, n, c)`: column sums like
///   `bias_backward` (launch as `column_tiles`), dw += sum_r dout xhat, db += sum_r dout (parameter
///   gradients accumulate; deterministic).
pub const LAYERNORM_BACKWARD: &str = r#"
template <typename T>
__device__ void layernorm_backward_dinp(T* dinp, const T* dout, const T* inp, const T* w, const float* mean,
                                        const float* rstd, int n, int c) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= n) return;
    const T* x = inp + row * c;
    const T* d = dout + row * c;
    float m = mean[row], s = rstd[row];
    float mg = 0.0f, mgx = 0.0f;
    for (int i = lane; i < c; i += 32) {
        float g = to_f32(d[i]) * to_f32(w[i]);
        mg += g;
        mgx += g * (to_f32(x[i]) - m) * s;
    }
    mg = warp_sum(mg) / c;
    mgx = warp_sum(mgx) / c;
    T* dx = dinp + row * c;
    for (int i = lane; i < c; i += 32) {
        float xhat = (to_f32(x[i]) - m) * s;
        float g = to_f32(d[i]) * to_f32(w[i]);
        dx[i] = from_f32<T>(to_f32(dx[i]) + s * (g - mg - xhat * mgx));
    }
}
template <typename T>
__device__ void layernorm_backward_dwdb(T* dw, T* db, const T* dout, const T* inp, const float* mean,
                                        const float* rstd, int n, int c) {
    __shared__ float part[32][32];
    int i = blockIdx.x * 32 + threadIdx.x;
    float aw = 0.0f, ab = 0.0f;
    if (i < c)
        for (int r = threadIdx.y; r < n; r += 32) {
            float d = to_f32(dout[(long long)r * c + i]);
            aw += d * (to_f32(inp[(long long)r * c + i]) - mean[r]) * rstd[r];
            ab += d;
        }
    float sw = column_tile_sum(part, aw);
    float sb = column_tile_sum(part, ab);
    if (threadIdx.y == 0 && i < c) {
        dw[i] = from_f32<T>(to_f32(dw[i]) + sw);
        db[i] = from_f32<T>(to_f32(db[i]) + sb);
    }
}
#define OCTET_LAYERNORM_BACKWARD(S, T) \
    extern "C" __global__ void layernorm_backward_dinp_##S(T* dinp, const T* dout, const T* inp, const T* w, \
                                                           const float* mean, const float* rstd, int n, int c) { \
        layernorm_backward_dinp<T>(dinp, dout, inp, w, mean, rstd, n, c); \
    } \
    extern "C" __global__ void __launch_bounds__(1024) layernorm_backward_dwdb_##S(T* dw, T* db, const T* dout, const T* inp, \
                                                           const float* mean, const float* rstd, int n, int c) { \
        layernorm_backward_dwdb<T>(dw, db, dout, inp, mean, rstd, n, c); \
    }
OCTET_FOR_EACH_TYPE(OCTET_LAYERNORM_BACKWARD)
"#;

/// Causal multi-head attention over qkv (B, T, 3C) = [q | k | v] per row, head h in columns
/// h*hs..(h+1)*hs of each part; lse (B, NH, T) is f32. Every kernel gives one warp to one row
/// r = (b*NH + h)*T + i of lse (grid covering B*NH*T warps, blockDim.x a multiple of 32); lane l holds
/// the head dimensions l, l + 32, ... in registers, so hs <= 32 * OCTET_ATTN_REGS = 256.
/// - `attention_forward_*(out, lse, qkv, b, t, c, nh)`: online softmax over keys j <= i (running max
///   and sum, rescaling the accumulator when the max grows), out = sum_j exp(s_ij - lse_i) v_j,
///   lse_i = max + log(sum), s_ij = q_i . k_j / sqrt(hs).
/// - `attention_backward_delta_*(delta, dout, out, ...)`: D_i = dout_i . out_i (B, NH, T), f32.
/// - `attention_backward_dq_*(dqkv, dout, qkv, lse, delta, ...)`: per query i, over j <= i:
///   p = exp(s_ij - lse_i), ds = p (dout_i . v_j - D_i), dq_i = sum_j ds k_j / sqrt(hs). Writes the q
///   part of dqkv.
/// - `attention_backward_dkv_*(dqkv, dout, qkv, lse, delta, ...)`: per key j, over i >= j:
///   dv_j = sum_i p dout_i, dk_j = sum_i ds q_i / sqrt(hs). Writes the k and v parts.
///
/// Together they overwrite dqkv, with no atomics (deterministic).
///
/// Speed: correctness first. Each (query, key) pair costs one or two warp reductions (5 shuffles
/// each) and nothing is reused through shared memory, so these are O(T^2 hs) with poor arithmetic
/// intensity: at GPT-2 124M (B=16, T=1024, 12 heads of 64) roughly 0.1 G warp-iterations per layer
/// forward and 0.2 G backward, i.e. an estimated several ms per layer on an H100-class GPU, one to
/// two orders slower than a flash-attention kernel (not measured: no GPU in this session). A tiled
/// kernel (blocks of queries sharing K/V tiles in shared memory, tensor-core MMAs) replaces these
/// once the step runs on the device: `ATTENTION_TILED` is its first step (shared-memory tiles, no MMAs
/// yet); these stay selectable (`ops::AttentionKernel`) so one GPU run can compare them.
pub const ATTENTION: &str = r#"
#define OCTET_ATTN_REGS 8

template <typename T>
__device__ void attention_forward(T* out, float* lse, const T* qkv, int b, int t, int c, int nh) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= (long long)b * nh * t) return;
    int hs = c / nh;
    int i = (int)(row % t), h = (int)((row / t) % nh);
    long long bi = row / ((long long)t * nh);
    float scale = rsqrtf((float)hs);
    const T* q = qkv + (bi * t + i) * 3 * c + h * hs;
    float qr[OCTET_ATTN_REGS], acc[OCTET_ATTN_REGS];
    for (int k = 0; k < OCTET_ATTN_REGS; k++) {
        int d = lane + 32 * k;
        qr[k] = d < hs ? to_f32(q[d]) : 0.0f;
        acc[k] = 0.0f;
    }
    float mx = -OCTET_INF, z = 0.0f;
    for (int j = 0; j <= i; j++) {
        const T* kj = qkv + (bi * t + j) * 3 * c + c + h * hs;
        float s = 0.0f;
        for (int k = 0; k < OCTET_ATTN_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) s += qr[k] * to_f32(kj[d]);
        }
        s = warp_sum(s) * scale;
        float mnew = fmaxf(mx, s);
        float corr = expf(mx - mnew);  // 0 on the first key (mx = -inf)
        float p = expf(s - mnew);
        z = z * corr + p;
        const T* vj = kj + c;
        for (int k = 0; k < OCTET_ATTN_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) acc[k] = acc[k] * corr + p * to_f32(vj[d]);
        }
        mx = mnew;
    }
    T* o = out + (bi * t + i) * c + h * hs;
    for (int k = 0; k < OCTET_ATTN_REGS; k++) {
        int d = lane + 32 * k;
        if (d < hs) o[d] = from_f32<T>(acc[k] / z);
    }
    if (lane == 0) lse[row] = mx + logf(z);
}

template <typename T>
__device__ void attention_backward_delta(float* delta, const T* dout, const T* out, int b, int t, int c, int nh) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= (long long)b * nh * t) return;
    int hs = c / nh;
    int i = (int)(row % t), h = (int)((row / t) % nh);
    long long bi = row / ((long long)t * nh);
    long long off = (bi * t + i) * c + h * hs;
    float acc = 0.0f;
    for (int d = lane; d < hs; d += 32) acc += to_f32(dout[off + d]) * to_f32(out[off + d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

template <typename T>
__device__ void attention_backward_dq(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                                      int b, int t, int c, int nh) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= (long long)b * nh * t) return;
    int hs = c / nh;
    int i = (int)(row % t), h = (int)((row / t) % nh);
    long long bi = row / ((long long)t * nh);
    float scale = rsqrtf((float)hs);
    const T* q = qkv + (bi * t + i) * 3 * c + h * hs;
    const T* dout_i = dout + (bi * t + i) * c + h * hs;
    float qr[OCTET_ATTN_REGS], dor[OCTET_ATTN_REGS], dq[OCTET_ATTN_REGS];
    for (int k = 0; k < OCTET_ATTN_REGS; k++) {
        int d = lane + 32 * k;
        qr[k] = d < hs ? to_f32(q[d]) : 0.0f;
        dor[k] = d < hs ? to_f32(dout_i[d]) : 0.0f;
        dq[k] = 0.0f;
    }
    float l = lse[row], dd = delta[row];
    for (int j = 0; j <= i; j++) {
        const T* kj = qkv + (bi * t + j) * 3 * c + c + h * hs;
        const T* vj = kj + c;
        float s = 0.0f, dp = 0.0f;
        for (int k = 0; k < OCTET_ATTN_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) {
                s += qr[k] * to_f32(kj[d]);
                dp += dor[k] * to_f32(vj[d]);
            }
        }
        s = warp_sum(s) * scale;
        dp = warp_sum(dp);
        float ds = expf(s - l) * (dp - dd) * scale;
        for (int k = 0; k < OCTET_ATTN_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) dq[k] += ds * to_f32(kj[d]);
        }
    }
    T* o = dqkv + (bi * t + i) * 3 * c + h * hs;
    for (int k = 0; k < OCTET_ATTN_REGS; k++) {
        int d = lane + 32 * k;
        if (d < hs) o[d] = from_f32<T>(dq[k]);
    }
}

template <typename T>
__device__ void attention_backward_dkv(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                                       int b, int t, int c, int nh) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= (long long)b * nh * t) return;
    int hs = c / nh;
    int j = (int)(row % t), h = (int)((row / t) % nh);
    long long bi = row / ((long long)t * nh);
    long long lrow0 = row - j;  // lse/delta index of query 0 of this (b, h)
    float scale = rsqrtf((float)hs);
    const T* kj = qkv + (bi * t + j) * 3 * c + c + h * hs;
    const T* vj = kj + c;
    float kr[OCTET_ATTN_REGS], vr[OCTET_ATTN_REGS], dk[OCTET_ATTN_REGS], dv[OCTET_ATTN_REGS];
    for (int k = 0; k < OCTET_ATTN_REGS; k++) {
        int d = lane + 32 * k;
        kr[k] = d < hs ? to_f32(kj[d]) : 0.0f;
        vr[k] = d < hs ? to_f32(vj[d]) : 0.0f;
        dk[k] = 0.0f;
        dv[k] = 0.0f;
    }
    for (int i = j; i < t; i++) {
        const T* qi = qkv + (bi * t + i) * 3 * c + h * hs;
        const T* dout_i = dout + (bi * t + i) * c + h * hs;
        float s = 0.0f, dp = 0.0f;
        for (int k = 0; k < OCTET_ATTN_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) {
                s += to_f32(qi[d]) * kr[k];
                dp += to_f32(dout_i[d]) * vr[k];
            }
        }
        s = warp_sum(s) * scale;
        dp = warp_sum(dp);
        float p = expf(s - lse[lrow0 + i]);
        float ds = p * (dp - delta[lrow0 + i]) * scale;
        for (int k = 0; k < OCTET_ATTN_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) {
                dv[k] += p * to_f32(dout_i[d]);
                dk[k] += ds * to_f32(qi[d]);
            }
        }
    }
    T* ok = dqkv + (bi * t + j) * 3 * c + c + h * hs;
    for (int k = 0; k < OCTET_ATTN_REGS; k++) {
        int d = lane + 32 * k;
        if (d < hs) {
            ok[d] = from_f32<T>(dk[k]);
            ok[c + d] = from_f32<T>(dv[k]);
        }
    }
}
#define OCTET_ATTENTION(S, T) \
    extern "C" __global__ void attention_forward_##S(T* out, float* lse, const T* qkv, int b, int t, int c, int nh) { \
        attention_forward<T>(out, lse, qkv, b, t, c, nh); \
    } \
    extern "C" __global__ void attention_backward_delta_##S(float* delta, const T* dout, const T* out, int b, int t, \
                                                            int c, int nh) { \
        attention_backward_delta<T>(delta, dout, out, b, t, c, nh); \
    } \
    extern "C" __global__ void attention_backward_dq_##S(T* dqkv, const T* dout, const T* qkv, const float* lse, \
                                                         const float* delta, int b, int t, int c, int nh) { \
        attention_backward_dq<T>(dqkv, dout, qkv, lse, delta, b, t, c, nh); \
    } \
    extern "C" __global__ void attention_backward_dkv_##S(T* dqkv, const T* dout, const T* qkv, const float* lse, \
                                                          const float* delta, int b, int t, int c, int nh) { \
        attention_backward_dkv<T>(dqkv, dout, qkv, lse, delta, b, t, c, nh); \
    }
OCTET_FOR_EACH_TYPE(OCTET_ATTENTION)
"#;

/// Tiled causal attention (issue 18 item 5, first version: no tensor-core intrinsics, so the CPU
/// emulator runs it): a block takes `OCTET_TILE` = 32 rows of one (batch, head) — grid
/// (ceil(T / 32), B * NH), 128 threads = 4 warps, warp w the rows w, w + 4, ... of the tile — and walks
/// the other side's rows in tiles of 32 staged in shared memory (f32), so each K/V (or Q/dO) element
/// is read from global memory once per 32 rows instead of once per row. Per row the arithmetic is
/// `ATTENTION`'s, term for term in the same order, so the results are bit-identical to those
/// kernels (the emulator checks it) and the saved lse is the same. Head size at most
/// `OCTET_TILE_HS` = 128 (`ops::TILED_MAX_HEAD_SIZE`; larger heads use `ATTENTION`).
/// - `attention_tiled_forward_*(out, lse, qkv, b, t, c, nh)`: K and V tiles up to the block's last
///   query; online softmax per row.
/// - `attention_tiled_backward_dq_*(dqkv, dout, qkv, lse, delta, b, t, c, nh)`: the q part of dqkv,
///   K and V tiles staged (delta from `attention_backward_delta_*`).
/// - `attention_tiled_backward_dkv_*(...)`: the k and v parts; a block takes 32 key rows and stages
///   the Q and dO tiles from its first key on, with their lse and delta.
pub const ATTENTION_TILED: &str = r#"
#define OCTET_TILE 32
#define OCTET_TILE_WARPS 4
#define OCTET_TILE_ROWS (OCTET_TILE / OCTET_TILE_WARPS)
#define OCTET_TILE_HS 128
#define OCTET_TILE_REGS (OCTET_TILE_HS / 32)

// tile (32, OCTET_TILE_HS) = rows r0.. r0+31 (zero past t) of a head's hs columns; row r of the source
// at base + r * ld. Every thread of the block calls it.
template <typename T>
__device__ void stage_tile(float (*tile)[OCTET_TILE_HS], const T* base, long long ld, int r0, int t, int hs) {
    for (int e = threadIdx.x; e < OCTET_TILE * hs; e += blockDim.x) {
        int r = e / hs, d = e % hs;
        tile[r][d] = r0 + r < t ? to_f32(base[(long long)(r0 + r) * ld + d]) : 0.0f;
    }
}

template <typename T>
__device__ void attention_tiled_forward(T* out, float* lse, const T* qkv, int b, int t, int c, int nh) {
    __shared__ float ks[OCTET_TILE][OCTET_TILE_HS], vs[OCTET_TILE][OCTET_TILE_HS];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int hs = c / nh, h = blockIdx.y % nh;
    long long bi = blockIdx.y / nh;
    int q0 = blockIdx.x * OCTET_TILE;
    float scale = rsqrtf((float)hs);
    const T* base = qkv + bi * t * 3 * c + h * hs;  // q of row r at base + r 3C; k at + C; v at + 2C
    float qr[OCTET_TILE_ROWS][OCTET_TILE_REGS], acc[OCTET_TILE_ROWS][OCTET_TILE_REGS];
    float mx[OCTET_TILE_ROWS], z[OCTET_TILE_ROWS];
    for (int r = 0; r < OCTET_TILE_ROWS; r++) {
        int i = q0 + warp + OCTET_TILE_WARPS * r;
        for (int k = 0; k < OCTET_TILE_REGS; k++) {
            int d = lane + 32 * k;
            qr[r][k] = i < t && d < hs ? to_f32(base[(long long)i * 3 * c + d]) : 0.0f;
            acc[r][k] = 0.0f;
        }
        mx[r] = -OCTET_INF;
        z[r] = 0.0f;
    }
    int last = min(q0 + OCTET_TILE, t) - 1;
    for (int k0 = 0; k0 <= last; k0 += OCTET_TILE) {
        __syncthreads();  // the previous tile is consumed
        stage_tile(ks, base + c, 3LL * c, k0, t, hs);
        stage_tile(vs, base + 2 * c, 3LL * c, k0, t, hs);
        __syncthreads();
        for (int r = 0; r < OCTET_TILE_ROWS; r++) {
            int i = q0 + warp + OCTET_TILE_WARPS * r;  // the same for the whole warp
            int jend = min(k0 + OCTET_TILE - 1, i);
            for (int j = k0; j <= jend; j++) {
                float s = 0.0f;
                for (int k = 0; k < OCTET_TILE_REGS; k++) {
                    int d = lane + 32 * k;
                    if (d < hs) s += qr[r][k] * ks[j - k0][d];
                }
                s = warp_sum(s) * scale;
                float mnew = fmaxf(mx[r], s);
                float corr = expf(mx[r] - mnew);
                float p = expf(s - mnew);
                z[r] = z[r] * corr + p;
                for (int k = 0; k < OCTET_TILE_REGS; k++) {
                    int d = lane + 32 * k;
                    if (d < hs) acc[r][k] = acc[r][k] * corr + p * vs[j - k0][d];
                }
                mx[r] = mnew;
            }
        }
    }
    for (int r = 0; r < OCTET_TILE_ROWS; r++) {
        int i = q0 + warp + OCTET_TILE_WARPS * r;
        if (i >= t) continue;
        T* o = out + (bi * t + i) * c + h * hs;
        for (int k = 0; k < OCTET_TILE_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) o[d] = from_f32<T>(acc[r][k] / z[r]);
        }
        if (lane == 0) lse[(bi * nh + h) * t + i] = mx[r] + logf(z[r]);
    }
}

template <typename T>
__device__ void attention_tiled_backward_dq(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                            const float* delta, int b, int t, int c, int nh) {
    __shared__ float ks[OCTET_TILE][OCTET_TILE_HS], vs[OCTET_TILE][OCTET_TILE_HS];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int hs = c / nh, h = blockIdx.y % nh;
    long long bi = blockIdx.y / nh, lrow0 = (bi * nh + h) * t;
    int q0 = blockIdx.x * OCTET_TILE;
    float scale = rsqrtf((float)hs);
    const T* base = qkv + bi * t * 3 * c + h * hs;
    const T* dbase = dout + bi * t * c + h * hs;
    float qr[OCTET_TILE_ROWS][OCTET_TILE_REGS], dor[OCTET_TILE_ROWS][OCTET_TILE_REGS], dq[OCTET_TILE_ROWS][OCTET_TILE_REGS];
    float l[OCTET_TILE_ROWS], dd[OCTET_TILE_ROWS];
    for (int r = 0; r < OCTET_TILE_ROWS; r++) {
        int i = q0 + warp + OCTET_TILE_WARPS * r;
        for (int k = 0; k < OCTET_TILE_REGS; k++) {
            int d = lane + 32 * k;
            qr[r][k] = i < t && d < hs ? to_f32(base[(long long)i * 3 * c + d]) : 0.0f;
            dor[r][k] = i < t && d < hs ? to_f32(dbase[(long long)i * c + d]) : 0.0f;
            dq[r][k] = 0.0f;
        }
        l[r] = i < t ? lse[lrow0 + i] : 0.0f;
        dd[r] = i < t ? delta[lrow0 + i] : 0.0f;
    }
    int last = min(q0 + OCTET_TILE, t) - 1;
    for (int k0 = 0; k0 <= last; k0 += OCTET_TILE) {
        __syncthreads();
        stage_tile(ks, base + c, 3LL * c, k0, t, hs);
        stage_tile(vs, base + 2 * c, 3LL * c, k0, t, hs);
        __syncthreads();
        for (int r = 0; r < OCTET_TILE_ROWS; r++) {
            int i = q0 + warp + OCTET_TILE_WARPS * r;
            int jend = min(k0 + OCTET_TILE - 1, i);
            for (int j = k0; j <= jend; j++) {
                float s = 0.0f, dp = 0.0f;
                for (int k = 0; k < OCTET_TILE_REGS; k++) {
                    int d = lane + 32 * k;
                    if (d < hs) {
                        s += qr[r][k] * ks[j - k0][d];
                        dp += dor[r][k] * vs[j - k0][d];
                    }
                }
                s = warp_sum(s) * scale;
                dp = warp_sum(dp);
                float ds = expf(s - l[r]) * (dp - dd[r]) * scale;
                for (int k = 0; k < OCTET_TILE_REGS; k++) {
                    int d = lane + 32 * k;
                    if (d < hs) dq[r][k] += ds * ks[j - k0][d];
                }
            }
        }
    }
    for (int r = 0; r < OCTET_TILE_ROWS; r++) {
        int i = q0 + warp + OCTET_TILE_WARPS * r;
        if (i >= t) continue;
        T* o = dqkv + (bi * t + i) * 3 * c + h * hs;
        for (int k = 0; k < OCTET_TILE_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) o[d] = from_f32<T>(dq[r][k]);
        }
    }
}

template <typename T>
__device__ void attention_tiled_backward_dkv(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                             const float* delta, int b, int t, int c, int nh) {
    __shared__ float qs[OCTET_TILE][OCTET_TILE_HS], dos[OCTET_TILE][OCTET_TILE_HS];
    __shared__ float ls[OCTET_TILE], dls[OCTET_TILE];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int hs = c / nh, h = blockIdx.y % nh;
    long long bi = blockIdx.y / nh, lrow0 = (bi * nh + h) * t;
    int j0 = blockIdx.x * OCTET_TILE;
    float scale = rsqrtf((float)hs);
    const T* base = qkv + bi * t * 3 * c + h * hs;
    const T* dbase = dout + bi * t * c + h * hs;
    float kr[OCTET_TILE_ROWS][OCTET_TILE_REGS], vr[OCTET_TILE_ROWS][OCTET_TILE_REGS];
    float dk[OCTET_TILE_ROWS][OCTET_TILE_REGS], dv[OCTET_TILE_ROWS][OCTET_TILE_REGS];
    for (int r = 0; r < OCTET_TILE_ROWS; r++) {
        int j = j0 + warp + OCTET_TILE_WARPS * r;
        for (int k = 0; k < OCTET_TILE_REGS; k++) {
            int d = lane + 32 * k;
            kr[r][k] = j < t && d < hs ? to_f32(base[(long long)j * 3 * c + c + d]) : 0.0f;
            vr[r][k] = j < t && d < hs ? to_f32(base[(long long)j * 3 * c + 2 * c + d]) : 0.0f;
            dk[r][k] = 0.0f;
            dv[r][k] = 0.0f;
        }
    }
    for (int i0 = j0; i0 < t; i0 += OCTET_TILE) {
        __syncthreads();
        stage_tile(qs, base, 3LL * c, i0, t, hs);
        stage_tile(dos, dbase, (long long)c, i0, t, hs);
        for (int e = threadIdx.x; e < OCTET_TILE; e += blockDim.x) {
            ls[e] = i0 + e < t ? lse[lrow0 + i0 + e] : 0.0f;
            dls[e] = i0 + e < t ? delta[lrow0 + i0 + e] : 0.0f;
        }
        __syncthreads();
        for (int r = 0; r < OCTET_TILE_ROWS; r++) {
            int j = j0 + warp + OCTET_TILE_WARPS * r;
            if (j >= t) continue;
            int iend = min(i0 + OCTET_TILE, t);
            for (int i = max(i0, j); i < iend; i++) {
                float s = 0.0f, dp = 0.0f;
                for (int k = 0; k < OCTET_TILE_REGS; k++) {
                    int d = lane + 32 * k;
                    if (d < hs) {
                        s += qs[i - i0][d] * kr[r][k];
                        dp += dos[i - i0][d] * vr[r][k];
                    }
                }
                s = warp_sum(s) * scale;
                dp = warp_sum(dp);
                float p = expf(s - ls[i - i0]);
                float ds = p * (dp - dls[i - i0]) * scale;
                for (int k = 0; k < OCTET_TILE_REGS; k++) {
                    int d = lane + 32 * k;
                    if (d < hs) {
                        dv[r][k] += p * dos[i - i0][d];
                        dk[r][k] += ds * qs[i - i0][d];
                    }
                }
            }
        }
    }
    for (int r = 0; r < OCTET_TILE_ROWS; r++) {
        int j = j0 + warp + OCTET_TILE_WARPS * r;
        if (j >= t) continue;
        T* o = dqkv + (bi * t + j) * 3 * c + c + h * hs;
        for (int k = 0; k < OCTET_TILE_REGS; k++) {
            int d = lane + 32 * k;
            if (d < hs) {
                o[d] = from_f32<T>(dk[r][k]);
                o[c + d] = from_f32<T>(dv[r][k]);
            }
        }
    }
}
#define OCTET_ATTENTION_TILED(S, T) \
    extern "C" __global__ void attention_tiled_forward_##S(T* out, float* lse, const T* qkv, int b, int t, int c, \
                                                           int nh) { \
        attention_tiled_forward<T>(out, lse, qkv, b, t, c, nh); \
    } \
    extern "C" __global__ void attention_tiled_backward_dq_##S(T* dqkv, const T* dout, const T* qkv, \
                                                               const float* lse, const float* delta, int b, int t, \
                                                               int c, int nh) { \
        attention_tiled_backward_dq<T>(dqkv, dout, qkv, lse, delta, b, t, c, nh); \
    } \
    extern "C" __global__ void attention_tiled_backward_dkv_##S(T* dqkv, const T* dout, const T* qkv, \
                                                                const float* lse, const float* delta, int b, int t, \
                                                                int c, int nh) { \
        attention_tiled_backward_dkv<T>(dqkv, dout, qkv, lse, delta, b, t, c, nh); \
    }
OCTET_FOR_EACH_TYPE(OCTET_ATTENTION_TILED)
"#;

/// Fused softmax + cross-entropy over the first V of Vp columns (losses (N) are f32):
/// - `softmax_xent_forward_*(losses, logits, targets, n, v, vp)`: one block per row (blockDim.x a
///   multiple of 32, up to 1024): max, then sum of exp(x - max), both block reductions; loss =
///   max + log(sum) - x[target]; the row becomes probabilities in place, padded columns V..Vp zero.
/// - `softmax_xent_backward_*(probs, targets, dloss, n, v, vp)`: probs become dlogits =
///   (probs - onehot(target)) dloss in place over the first V columns (grid-stride; padded columns
///   are left as they are, zero after the forward).
/// - `classifier_*(losses, logits, targets, dloss, n, v, vp)`: the fused classifier (issue 18 item 5):
///   the forward's loss and, in the same pass, logits become dlogits = (softmax - onehot) dloss
///   (padded columns zero), from the f32 probabilities (no bf16 rounding in between, so with bf16
///   logits it is closer to the reference than the two kernels; with f32 it is bit-identical to
///   them). A target >= V marks a masked row (SFT's prompt tokens): loss 0, dlogits 0.
pub const SOFTMAX_XENT: &str = r#"
template <typename T>
__device__ void softmax_xent_forward(float* losses, T* logits, const unsigned int* targets, int n, int v, int vp) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < n; r += gridDim.x) {
        T* x = logits + r * vp;
        float mx = -OCTET_INF;
        for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, to_f32(x[j]));
        mx = block_max(mx, scratch);
        float z = 0.0f;
        for (int j = threadIdx.x; j < v; j += blockDim.x) z += expf(to_f32(x[j]) - mx);
        z = block_sum(z, scratch);
        if (threadIdx.x == 0) losses[r] = mx + logf(z) - to_f32(x[targets[r]]);
        __syncthreads();  // x[target] is read before any thread overwrites it
        float inv = 1.0f / z;
        for (int j = threadIdx.x; j < vp; j += blockDim.x) {
            x[j] = from_f32<T>(j < v ? expf(to_f32(x[j]) - mx) * inv : 0.0f);
        }
    }
}
template <typename T>
__device__ void softmax_xent_backward(T* probs, const unsigned int* targets, float dloss, int n, int v, int vp) {
    OCTET_GRID_STRIDE(i, (long long)n * vp) {
        long long r = i / vp;
        int j = (int)(i % vp);
        if (j < v) {
            float ind = (unsigned int)j == targets[r] ? 1.0f : 0.0f;
            probs[i] = from_f32<T>((to_f32(probs[i]) - ind) * dloss);
        }
    }
}
template <typename T>
__device__ void classifier(float* losses, T* logits, const unsigned int* targets, float dloss, int n, int v, int vp) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < n; r += gridDim.x) {
        T* x = logits + r * vp;
        unsigned int tg = targets[r];
        if (tg >= (unsigned int)v) {  // masked row: no loss, no gradient
            if (threadIdx.x == 0) losses[r] = 0.0f;
            for (int j = threadIdx.x; j < vp; j += blockDim.x) x[j] = from_f32<T>(0.0f);
            continue;
        }
        float mx = -OCTET_INF;
        for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, to_f32(x[j]));
        mx = block_max(mx, scratch);
        float z = 0.0f;
        for (int j = threadIdx.x; j < v; j += blockDim.x) z += expf(to_f32(x[j]) - mx);
        z = block_sum(z, scratch);
        if (threadIdx.x == 0) losses[r] = mx + logf(z) - to_f32(x[tg]);
        __syncthreads();  // x[target] is read before any thread overwrites it
        float inv = 1.0f / z;
        for (int j = threadIdx.x; j < vp; j += blockDim.x) {
            float ind = (unsigned int)j == tg ? 1.0f : 0.0f;
            x[j] = from_f32<T>(j < v ? (expf(to_f32(x[j]) - mx) * inv - ind) * dloss : 0.0f);
        }
    }
}
#define OCTET_SOFTMAX_XENT(S, T) \
    extern "C" __global__ void softmax_xent_forward_##S(float* losses, T* logits, const unsigned int* targets, \
                                                        int n, int v, int vp) { \
        softmax_xent_forward<T>(losses, logits, targets, n, v, vp); \
    } \
    extern "C" __global__ void softmax_xent_backward_##S(T* probs, const unsigned int* targets, float dloss, int n, \
                                                         int v, int vp) { \
        softmax_xent_backward<T>(probs, targets, dloss, n, v, vp); \
    } \
    extern "C" __global__ void classifier_##S(float* losses, T* logits, const unsigned int* targets, float dloss, \
                                              int n, int v, int vp) { \
        classifier<T>(losses, logits, targets, dloss, n, v, vp); \
    }
OCTET_FOR_EACH_TYPE(OCTET_SOFTMAX_XENT)
"#;

/// Reductions and casts.
/// - `amax_*(amax, inp, n)`: `*amax = max(*amax, max |inp|)` as f32 bits, NaN above inf (as
///   QUANTIZE; zero it first).
/// - `cast_f32_to_bf16(out, inp, n)`: bf16 storage of f32 values, round to nearest even.
/// - `round_bf16_f32(out, inp, n)`: the same rounding kept in f32 (a bf16 GEMM operand in the
///   compute type: `Backend::round_bf16`).
pub const CAST: &str = r#"
template <typename T>
__device__ void amax_reduce(unsigned int* amax, const T* inp, long long n) {
    unsigned int m = 0;
    OCTET_GRID_STRIDE(i, n) { m = max(m, abs_bits(to_f32(inp[i]))); }
    amax_commit(amax, m);
}
#define OCTET_AMAX(S, T) \
    extern "C" __global__ void amax_##S(unsigned int* amax, const T* inp, long long n) { amax_reduce<T>(amax, inp, n); }
OCTET_FOR_EACH_TYPE(OCTET_AMAX)

extern "C" __global__ void cast_f32_to_bf16(__nv_bfloat16* out, const float* inp, long long n) {
    OCTET_GRID_STRIDE(i, n) { out[i] = __float2bfloat16_rn(inp[i]); }
}
extern "C" __global__ void round_bf16_f32(float* out, const float* inp, long long n) {
    OCTET_GRID_STRIDE(i, n) { out[i] = __bfloat162float(__float2bfloat16_rn(inp[i])); }
}
"#;

/// AdamW. Coefficients travel in one struct, `AdamCoeffs` (the f32 values `octet_optim`'s `Coeffs`
/// holds: b1, b2, eps, lr, c1 = 1 - b1^t, c2 = 1 - b2^t, wd; `#[repr(C)]` twin in the device code).
/// Every operation is an explicit round-to-nearest intrinsic (`__fmul_rn`, ...), which the compiler
/// never contracts into an FMA, in the order `octet_kernels::cpu::adamw_update` evaluates it, so the
/// device update is bit-identical to the CPU one:
/// `m = b1 m + (1-b1) g; v = b2 v + ((1-b2) g) g; p = p - lr ((m/c1) / (sqrt(v/c2) + eps) + wd p)`.
/// - `adamw_f32(p, m, v, g, k, n)`: f32 parameters and moments, in place.
/// - FP8-LM O2 (`octet_optim::fp8_adamw`, formats F16 master, E4M3 m, F16 v, each with a per-tensor
///   power-of-two scale, stored = round(x * scale)), two stages per step:
///   - `adam_o2_stage1(amax, p, m, v, g, scales, grad_mult, k, n)`: decode with the current scales
///     (`scales` = [p, m, v] of this tensor), update in f32 registers, and fold max |g|, |m'|, |v'|,
///     |p'| into `amax` = [g, m, v, p] (f32 bits); writes nothing else.
///   - `adam_o2_scales(next, skip, scales, amax, ntensors, fp8_max, f16_max, margins...)`: one block;
///     `*skip = 1` if any amax of any tensor is NaN or inf (the whole step is skipped, as on the CPU),
///     else each tensor's next scale = 2^(floor(log2(fp_max / amax)) - margin) (`compute_scale`;
///     a zero amax keeps the scale). With skip, next = current.
///   - `adam_o2_stage2(p, m, v, g, scales, next, skip, grad_mult, k, n)`: unless skipped, recompute
///     exactly as stage 1 and store p, m, v with the next scales (f16 round to nearest even; E4M3
///     saturating).
///   - `adam_o2_stage{1,2}_e4m3g(..., g, gscale, ...)`: the same with E4M3 gradients read as
///     decode(g) / gscale[0] (FP8-LM O1/O2 weight gradients; `Fp8AdamW::update_master_scaled`).
///
/// The scales stay on the device: no host round trip between the stages.
pub const ADAM: &str = r#"
struct AdamCoeffs {
    float b1, b2, eps, lr, c1, c2, wd;
};

__device__ __forceinline__ void adam_update(const AdamCoeffs& k, float g, float& m, float& v, float& p) {
    m = __fadd_rn(__fmul_rn(k.b1, m), __fmul_rn(__fsub_rn(1.0f, k.b1), g));
    v = __fadd_rn(__fmul_rn(k.b2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, k.b2), g), g));
    float step = __fdiv_rn(__fdiv_rn(m, k.c1), __fadd_rn(__fsqrt_rn(__fdiv_rn(v, k.c2)), k.eps));
    p = __fsub_rn(p, __fmul_rn(k.lr, __fadd_rn(step, __fmul_rn(k.wd, p))));
}

extern "C" __global__ void adamw_f32(float* p, float* m, float* v, const float* g, AdamCoeffs k, long long n) {
    OCTET_GRID_STRIDE(i, n) {
        float pi = p[i], mi = m[i], vi = v[i];
        adam_update(k, g[i], mi, vi, pi);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

// (p, m, v) of element i decoded with the per-tensor scales s = [p, m, v]: stored * (1 / scale),
// exact for power-of-two scales.
__device__ __forceinline__ void o2_decode(const __half* p, const __nv_fp8_e4m3* m, const __half* v, const float* s,
                                          long long i, float& pi, float& mi, float& vi) {
    pi = __fmul_rn(__half2float(p[i]), __frcp_rn(s[0]));
    mi = __fmul_rn(float(m[i]), __frcp_rn(s[1]));
    vi = __fmul_rn(__half2float(v[i]), __frcp_rn(s[2]));
}

// Gradient element i: f32, or E4M3 decoded with its tensor's scale (`gscale` = [scale]); times
// grad_mult (clipping and the inverse loss scale), as the CPU's `Grads::{Plain, Scaled}` (x * 1 = x).
__device__ __forceinline__ float o2_grad(const float* g, const float*, long long i, float mult) {
    return __fmul_rn(g[i], mult);
}
__device__ __forceinline__ float o2_grad(const __nv_fp8_e4m3* g, const float* gscale, long long i, float mult) {
    return __fmul_rn(__fmul_rn(float(g[i]), __frcp_rn(gscale[0])), mult);
}

template <typename G>
__device__ void adam_o2_stage1_t(unsigned int* amax, const __half* p, const __nv_fp8_e4m3* m, const __half* v,
                                 const G* g, const float* gscale, const float* scales, float grad_mult, AdamCoeffs k,
                                 long long n) {
    unsigned int ag = 0, am = 0, av = 0, ap = 0;
    OCTET_GRID_STRIDE(i, n) {
        float pi, mi, vi;
        o2_decode(p, m, v, scales, i, pi, mi, vi);
        float gi = o2_grad(g, gscale, i, grad_mult);
        adam_update(k, gi, mi, vi, pi);
        ag = max(ag, abs_bits(gi));
        am = max(am, abs_bits(mi));
        av = max(av, abs_bits(vi));
        ap = max(ap, abs_bits(pi));
    }
    amax_commit(amax + 0, ag);
    amax_commit(amax + 1, am);
    amax_commit(amax + 2, av);
    amax_commit(amax + 3, ap);
}
extern "C" __global__ void adam_o2_stage1(unsigned int* amax, const __half* p, const __nv_fp8_e4m3* m,
                                          const __half* v, const float* g, const float* scales, float grad_mult,
                                          AdamCoeffs k, long long n) {
    adam_o2_stage1_t<float>(amax, p, m, v, g, nullptr, scales, grad_mult, k, n);
}
extern "C" __global__ void adam_o2_stage1_e4m3g(unsigned int* amax, const __half* p, const __nv_fp8_e4m3* m,
                                                const __half* v, const __nv_fp8_e4m3* g, const float* gscale,
                                                const float* scales, float grad_mult, AdamCoeffs k, long long n) {
    adam_o2_stage1_t<__nv_fp8_e4m3>(amax, p, m, v, g, gscale, scales, grad_mult, k, n);
}

extern "C" __global__ void adam_o2_scales(float* next, unsigned int* skip, const float* scales,
                                          const unsigned int* amax, int ntensors, float fp8_max, float f16_max,
                                          int margin_p, int margin_m, int margin_v) {
    int bad = 0;
    for (int t = threadIdx.x; t < ntensors; t += blockDim.x) {
        for (int j = 0; j < 4; j++) bad |= !isfinite(__uint_as_float(amax[4 * t + j]));
    }
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) *skip = bad ? 1u : 0u;
    for (int t = threadIdx.x; t < ntensors; t += blockDim.x) {
        const float* s = scales + 3 * t;
        const unsigned int* a = amax + 4 * t;
        float* o = next + 3 * t;
        o[0] = bad ? s[0] : compute_scale(__uint_as_float(a[3]), f16_max, margin_p, s[0]);
        o[1] = bad ? s[1] : compute_scale(__uint_as_float(a[1]), fp8_max, margin_m, s[1]);
        o[2] = bad ? s[2] : compute_scale(__uint_as_float(a[2]), f16_max, margin_v, s[2]);
    }
}

template <typename G>
__device__ void adam_o2_stage2_t(__half* p, __nv_fp8_e4m3* m, __half* v, const G* g, const float* gscale,
                                 const float* scales, const float* next, const unsigned int* skip, float grad_mult,
                                 AdamCoeffs k, long long n) {
    if (*skip) return;
    OCTET_GRID_STRIDE(i, n) {
        float pi, mi, vi;
        o2_decode(p, m, v, scales, i, pi, mi, vi);
        adam_update(k, o2_grad(g, gscale, i, grad_mult), mi, vi, pi);
        p[i] = __float2half_rn(__fmul_rn(pi, next[0]));
        m[i].__x = __nv_cvt_float_to_fp8(__fmul_rn(mi, next[1]), __NV_SATFINITE, __NV_E4M3);
        v[i] = __float2half_rn(__fmul_rn(vi, next[2]));
    }
}
extern "C" __global__ void adam_o2_stage2(__half* p, __nv_fp8_e4m3* m, __half* v, const float* g, const float* scales,
                                          const float* next, const unsigned int* skip, float grad_mult, AdamCoeffs k,
                                          long long n) {
    adam_o2_stage2_t<float>(p, m, v, g, nullptr, scales, next, skip, grad_mult, k, n);
}
extern "C" __global__ void adam_o2_stage2_e4m3g(__half* p, __nv_fp8_e4m3* m, __half* v, const __nv_fp8_e4m3* g,
                                                const float* gscale, const float* scales, const float* next,
                                                const unsigned int* skip, float grad_mult, AdamCoeffs k, long long n) {
    adam_o2_stage2_t<__nv_fp8_e4m3>(p, m, v, g, gscale, scales, next, skip, grad_mult, k, n);
}
"#;

/// RMSNorm (Llama), forward and backward; the saved 1/rms (N) is f32 whatever the storage type.
/// - `rmsnorm_forward_*(out, rrms, inp, w, n, c, eps)`: one warp per row (launch as
///   `layernorm_forward`): ms = sum_i x_i^2 / C in f32, rrms = 1 / sqrt(ms + eps) with the sum and
///   root in f64 as the CPU kernel does (eps is a double), out = x rrms w. `rrms` may be null.
/// - `rmsnorm_backward_dinp_*(dinp, dout, inp, w, rrms, n, c)`: one warp per row. With s = rrms,
///   xhat = x s, g = dout w: d/dx_i of sum_j g_j x_j s, s = (mean(x^2) + eps)^(-1/2), is
///   s g_i - s^3 x_i sum_j g_j x_j / C = s (g_i - xhat_i mean(g xhat)); dinp += that (accumulates).
/// - `rmsnorm_backward_dw_*(dw, dout, inp, rrms, n, c)`: column sums like `bias_backward` (launch as
///   `column_tiles`), dw_i += sum_r dout_ri xhat_ri (a parameter gradient; no atomics, deterministic).
pub const RMSNORM: &str = r#"
template <typename T>
__device__ void rmsnorm_forward(T* out, float* rrms, const T* inp, const T* w, int n, int c, double eps) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= n) return;  // the whole warp leaves together
    const T* x = inp + row * c;
    float ss = 0.0f;
    for (int i = lane; i < c; i += 32) {
        float v = to_f32(x[i]);
        ss += v * v;
    }
    float ms = warp_sum(ss) / c;
    float s = (float)(1.0 / sqrt((double)ms + eps));
    T* o = out + row * c;
    for (int i = lane; i < c; i += 32) o[i] = from_f32<T>(to_f32(x[i]) * s * to_f32(w[i]));
    if (lane == 0 && rrms) rrms[row] = s;
}
template <typename T>
__device__ void rmsnorm_backward_dinp(T* dinp, const T* dout, const T* inp, const T* w, const float* rrms, int n,
                                      int c) {
    int lane = threadIdx.x % 32;
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    if (row >= n) return;
    const T* x = inp + row * c;
    const T* d = dout + row * c;
    float s = rrms[row];
    float mgx = 0.0f;
    for (int i = lane; i < c; i += 32) mgx += to_f32(d[i]) * to_f32(w[i]) * to_f32(x[i]) * s;
    mgx = warp_sum(mgx) / c;
    T* dx = dinp + row * c;
    for (int i = lane; i < c; i += 32) {
        float xhat = to_f32(x[i]) * s;
        dx[i] = from_f32<T>(to_f32(dx[i]) + s * (to_f32(d[i]) * to_f32(w[i]) - xhat * mgx));
    }
}
template <typename T>
__device__ void rmsnorm_backward_dw(T* dw, const T* dout, const T* inp, const float* rrms, int n, int c) {
    __shared__ float part[32][32];
    int i = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (i < c)
        for (int r = threadIdx.y; r < n; r += 32)
            acc += to_f32(dout[(long long)r * c + i]) * (to_f32(inp[(long long)r * c + i]) * rrms[r]);
    float sum = column_tile_sum(part, acc);
    if (threadIdx.y == 0 && i < c) dw[i] = from_f32<T>(to_f32(dw[i]) + sum);
}
#define OCTET_RMSNORM(S, T) \
    extern "C" __global__ void rmsnorm_forward_##S(T* out, float* rrms, const T* inp, const T* w, int n, int c, \
                                                   double eps) { \
        rmsnorm_forward<T>(out, rrms, inp, w, n, c, eps); \
    } \
    extern "C" __global__ void rmsnorm_backward_dinp_##S(T* dinp, const T* dout, const T* inp, const T* w, \
                                                         const float* rrms, int n, int c) { \
        rmsnorm_backward_dinp<T>(dinp, dout, inp, w, rrms, n, c); \
    } \
    extern "C" __global__ void __launch_bounds__(1024) rmsnorm_backward_dw_##S(T* dw, const T* dout, const T* inp, const float* rrms, int n, \
                                                       int c) { \
        rmsnorm_backward_dw<T>(dw, dout, inp, rrms, n, c); \
    }
OCTET_FOR_EACH_TYPE(OCTET_RMSNORM)
"#;

/// Rotary position embedding, interleaved pairs (`reference::rope_forward`): rows r of inp (rows = B*T,
/// W) at position p = pos0 + r % T; in the first `rot` columns (heads of hs, rot a multiple of hs, hs
/// even) pair (2i, 2i+1) of each head rotates by a = sign p base^(-2i/hs):
/// out[2i] = x[2i] cos a - x[2i+1] sin a, out[2i+1] = x[2i] sin a + x[2i+1] cos a; columns rot..W are
/// copied. The angle and its sine and cosine are f64 (as the CPU's table: at p ~ 4000 an f32 angle
/// would be off by ~2e-4 rad), rounded once to f32; the rotation is f32. Grid-stride over rows x
/// (rot/2 pairs + W - rot copies), any launch shape. Speed: one f64 pow and sincos per pair, cheap on
/// an H100/H200 (FP64 at half the FP32 rate) but not on consumer parts (1/64): there, a (T, hs/2)
/// cos/sin table per call is the step.
/// - `rope_forward_*(out, inp, rows, t, pos0, w, rot, hs, base)`: sign +1.
/// - `rope_backward_*(dinp, dout, ...)`: sign -1 (the rotation is orthogonal: its transpose is the
///   rotation by -a); dinp overwritten.
pub const ROPE: &str = r#"
template <typename T>
__device__ void rope_rotate(T* out, const T* inp, int rows, int t, int pos0, int w, int rot, int hs, double base,
                            double sign) {
    int half = rot / 2, per_row = half + (w - rot), hp = hs / 2;
    OCTET_GRID_STRIDE(e, (long long)rows * per_row) {
        long long r = e / per_row;
        int j = (int)(e % per_row);
        const T* x = inp + r * w;
        T* o = out + r * w;
        if (j < half) {
            int i = j % hp, col = (j / hp) * hs + 2 * i;  // pair i of head j / hp
            double pos = (double)(pos0 + (long long)(r % t));
            double sd, cd;
            sincos(sign * (pos * pow(base, -2.0 * i / hs)), &sd, &cd);
            float sn = (float)sd, cs = (float)cd;
            float x0 = to_f32(x[col]), x1 = to_f32(x[col + 1]);
            o[col] = from_f32<T>(x0 * cs - x1 * sn);
            o[col + 1] = from_f32<T>(x0 * sn + x1 * cs);
        } else {
            int col = rot + (j - half);
            o[col] = x[col];
        }
    }
}
#define OCTET_ROPE(S, T) \
    extern "C" __global__ void rope_forward_##S(T* out, const T* inp, int rows, int t, int pos0, int w, int rot, \
                                                int hs, double base) { \
        rope_rotate<T>(out, inp, rows, t, pos0, w, rot, hs, base, 1.0); \
    } \
    extern "C" __global__ void rope_backward_##S(T* dinp, const T* dout, int rows, int t, int pos0, int w, int rot, \
                                                 int hs, double base) { \
        rope_rotate<T>(dinp, dout, rows, t, pos0, w, rot, hs, base, -1.0); \
    }
OCTET_FOR_EACH_TYPE(OCTET_ROPE)
"#;

/// SwiGLU, inp (N, 2H) = [gate | up] per row, out (N, H); grid-stride over N*H, any launch shape.
/// - `swiglu_forward_*(out, inp, n, h)`: out = silu(g) u, silu(g) = g sigmoid(g) = g / (1 + e^-g).
/// - `swiglu_backward_*(dinp, inp, dout, n, h)`: with sg = sigmoid(g), silu'(g) = sg (1 + g (1 - sg)):
///   dgate = dout u silu'(g), dup = dout g sg (dinp (N, 2H) overwritten).
pub const SWIGLU: &str = r#"
template <typename T>
__device__ void swiglu_forward(T* out, const T* inp, int n, int h) {
    OCTET_GRID_STRIDE(e, (long long)n * h) {
        long long r = e / h;
        int j = (int)(e % h);
        float g = to_f32(inp[r * 2 * h + j]), u = to_f32(inp[r * 2 * h + h + j]);
        out[e] = from_f32<T>(g / (1.0f + expf(-g)) * u);
    }
}
template <typename T>
__device__ void swiglu_backward(T* dinp, const T* inp, const T* dout, int n, int h) {
    OCTET_GRID_STRIDE(e, (long long)n * h) {
        long long r = e / h;
        int j = (int)(e % h);
        float g = to_f32(inp[r * 2 * h + j]), u = to_f32(inp[r * 2 * h + h + j]), d = to_f32(dout[e]);
        float sg = 1.0f / (1.0f + expf(-g));
        dinp[r * 2 * h + j] = from_f32<T>(d * u * sg * (1.0f + g * (1.0f - sg)));
        dinp[r * 2 * h + h + j] = from_f32<T>(d * g * sg);
    }
}
#define OCTET_SWIGLU(S, T) \
    extern "C" __global__ void swiglu_forward_##S(T* out, const T* inp, int n, int h) { \
        swiglu_forward<T>(out, inp, n, h); \
    } \
    extern "C" __global__ void swiglu_backward_##S(T* dinp, const T* inp, const T* dout, int n, int h) { \
        swiglu_backward<T>(dinp, inp, dout, n, h); \
    }
OCTET_FOR_EACH_TYPE(OCTET_SWIGLU)
"#;

/// Grouped-query attention to the multi-head layout (`reference::repeat_kv_forward`): C = NH hs,
/// KVD = NKV hs, rep = NH / NKV, inp (N, C + 2 KVD) = [q | k | v] -> out (N, 3C) = [q | k | v], query
/// head h reading kv head h / rep. Grid-stride, any launch shape.
/// - `repeat_kv_forward_*(out, inp, n, nh, nkv, hs)`: one thread per output element, a copy.
/// - `repeat_kv_backward_*(dinp, dout, n, nh, nkv, hs)`: one thread per dinp element (overwritten):
///   dq copied; dk, dv of kv head g at dim k = sum over j < rep of dout's head g rep + j, in f32 in
///   order j = 0, 1, ... (the CPU kernel's order).
pub const REPEAT_KV: &str = r#"
template <typename T>
__device__ void repeat_kv_forward(T* out, const T* inp, int n, int nh, int nkv, int hs) {
    int c = nh * hs, kvd = nkv * hs, rep = nh / nkv, wi = c + 2 * kvd;
    OCTET_GRID_STRIDE(e, (long long)n * 3 * c) {
        long long r = e / (3 * c);
        int col = (int)(e % (3 * c)), src = col;
        if (col >= c) {
            int part = (col - c) / c, hd = (col - c) % c;  // part 0: k, 1: v; hd = h hs + d
            src = c + part * kvd + (hd / hs / rep) * hs + hd % hs;
        }
        out[e] = inp[r * wi + src];
    }
}
template <typename T>
__device__ void repeat_kv_backward(T* dinp, const T* dout, int n, int nh, int nkv, int hs) {
    int c = nh * hs, kvd = nkv * hs, rep = nh / nkv, wi = c + 2 * kvd;
    OCTET_GRID_STRIDE(e, (long long)n * wi) {
        long long r = e / wi;
        int col = (int)(e % wi);
        const T* d = dout + r * 3 * c;
        if (col < c) {
            dinp[e] = d[col];
        } else {
            int part = (col - c) / kvd, gk = (col - c) % kvd;  // gk = g hs + k
            const T* src = d + (1 + part) * c + (gk / hs) * rep * hs + gk % hs;
            float acc = to_f32(src[0]);
            for (int j = 1; j < rep; j++) acc += to_f32(src[(long long)j * hs]);
            dinp[e] = from_f32<T>(acc);
        }
    }
}
#define OCTET_REPEAT_KV(S, T) \
    extern "C" __global__ void repeat_kv_forward_##S(T* out, const T* inp, int n, int nh, int nkv, int hs) { \
        repeat_kv_forward<T>(out, inp, n, nh, nkv, hs); \
    } \
    extern "C" __global__ void repeat_kv_backward_##S(T* dinp, const T* dout, int n, int nh, int nkv, int hs) { \
        repeat_kv_backward<T>(dinp, dout, n, nh, nkv, hs); \
    }
OCTET_FOR_EACH_TYPE(OCTET_REPEAT_KV)
"#;

/// `embed_forward_*(out, tokens, wte, n, c)`: out (N, C) row r = wte[tokens[r]] (token embedding without
/// positions, RoPE models); grid-stride over N*C. The backward, dwte[tokens] += dout, is ENCODER's
/// deterministic `encoder_backward_wte_*` over the token buckets.
pub const EMBED: &str = r#"
template <typename T>
__device__ void embed_forward(T* out, const unsigned int* tokens, const T* wte, int n, int c) {
    OCTET_GRID_STRIDE(e, (long long)n * c) { out[e] = wte[(long long)tokens[e / c] * c + e % c]; }
}
#define OCTET_EMBED(S, T) \
    extern "C" __global__ void embed_forward_##S(T* out, const unsigned int* tokens, const T* wte, int n, int c) { \
        embed_forward<T>(out, tokens, wte, n, c); \
    }
OCTET_FOR_EACH_TYPE(OCTET_EMBED)
"#;

/// FP8 per-tensor scaling state on the device (issue 18 item 4: amax -> scale with no read-back):
/// `octet_core::scaling::ScalingMeta`'s `begin_cast` / `finish_cast` for a set of tensors, one thread
/// per tensor. State of tensor k: `scale[k]`, its amax history `hist[k * window ..][..window]` (a ring:
/// `len[k]` values, the oldest at `next[k]` once full) and `pending[k]` (1 between a delayed
/// `begin` and its `finish`). `amax` holds f32 bits, as the cast kernels and cuBLASLt's D amax leave
/// them. Exact: the same compute_scale (ADAM) and the same history rules as the CPU.
/// - `fp8_scale_begin(scale, hist, len, next, pending, amax, ntensors, window, fp_max, margin, jit)`:
///   just-in-time (`jit`, or warm-up: fewer than `window` amaxes, or window 1): record amax[k] (the
///   source's, measured first) and scale from it; else scale from the max over the history
///   (0 when empty, NaN if any is NaN: both keep the scale) and mark the cast pending.
/// - `fp8_scale_finish(hist, len, next, pending, amax, ntensors, window)`: a pending (delayed) cast
///   records amax[k], the amax its cast measured.
pub const SCALING: &str = r#"
__device__ __forceinline__ void history_push(float* h, int* len, int* next, int window, float a) {
    if (*len == window) {
        h[*next] = a;
        *next = (*next + 1) % window;
    } else {
        h[(*len)++] = a;
    }
}
extern "C" __global__ void fp8_scale_begin(float* scale, float* hist, int* len, int* next, int* pending,
                                           const unsigned int* amax, int ntensors, int window, float fp_max,
                                           int margin, int jit) {
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < ntensors; k += gridDim.x * blockDim.x) {
        float* h = hist + (long long)k * window;
        if (jit || window == 1 || len[k] < window) {
            float a = __uint_as_float(amax[k]);
            history_push(h, len + k, next + k, window, a);
            scale[k] = compute_scale(a, fp_max, margin, scale[k]);
            pending[k] = 0;
        } else {
            float m = 0.0f;
            for (int i = 0; i < len[k]; i++) m = isnan(h[i]) || isnan(m) ? __int_as_float(0x7fc00000) : fmaxf(m, h[i]);
            scale[k] = compute_scale(m, fp_max, margin, scale[k]);
            pending[k] = 1;
        }
    }
}
extern "C" __global__ void fp8_scale_finish(float* hist, int* len, int* next, int* pending, const unsigned int* amax,
                                            int ntensors, int window) {
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < ntensors; k += gridDim.x * blockDim.x) {
        if (pending[k]) history_push(hist + (long long)k * window, len + k, next + k, window, __uint_as_float(amax[k]));
        pending[k] = 0;
    }
}
"#;

/// Every operation's source, in module order (after [`PRELUDE`]), with its name.
pub const OPS: [(&str, &str); 20] = [
    ("residual", RESIDUAL),
    ("gelu", GELU),
    ("bias", BIAS),
    ("layernorm", LAYERNORM),
    ("quantize", QUANTIZE),
    ("qdq", QDQ),
    ("transpose", TRANSPOSE),
    ("encoder", ENCODER),
    ("layernorm_backward", LAYERNORM_BACKWARD),
    ("attention", ATTENTION),
    ("attention_tiled", ATTENTION_TILED),
    ("softmax_xent", SOFTMAX_XENT),
    ("cast", CAST),
    ("adam", ADAM),
    ("rmsnorm", RMSNORM),
    ("rope", ROPE),
    ("swiglu", SWIGLU),
    ("repeat_kv", REPEAT_KV),
    ("embed", EMBED),
    ("scaling", SCALING),
];

/// Every `extern "C"` entry point the module defines.
pub const KERNEL_NAMES: [&str; 84] = [
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
    "qdq_e4m3_f32",
    "qdq_e4m3_bf16",
    "qdq_e5m2_f32",
    "qdq_e5m2_bf16",
    "transpose_fp8",
    "transpose_u16",
    "encoder_forward_f32",
    "encoder_forward_bf16",
    "encoder_backward_wpe_f32",
    "encoder_backward_wpe_bf16",
    "encoder_backward_wte_f32",
    "encoder_backward_wte_bf16",
    "layernorm_backward_dinp_f32",
    "layernorm_backward_dinp_bf16",
    "layernorm_backward_dwdb_f32",
    "layernorm_backward_dwdb_bf16",
    "attention_forward_f32",
    "attention_forward_bf16",
    "attention_backward_delta_f32",
    "attention_backward_delta_bf16",
    "attention_backward_dq_f32",
    "attention_backward_dq_bf16",
    "attention_backward_dkv_f32",
    "attention_backward_dkv_bf16",
    "attention_tiled_forward_f32",
    "attention_tiled_forward_bf16",
    "attention_tiled_backward_dq_f32",
    "attention_tiled_backward_dq_bf16",
    "attention_tiled_backward_dkv_f32",
    "attention_tiled_backward_dkv_bf16",
    "softmax_xent_forward_f32",
    "softmax_xent_forward_bf16",
    "softmax_xent_backward_f32",
    "softmax_xent_backward_bf16",
    "classifier_f32",
    "classifier_bf16",
    "amax_f32",
    "amax_bf16",
    "cast_f32_to_bf16",
    "round_bf16_f32",
    "adamw_f32",
    "adam_o2_stage1",
    "adam_o2_scales",
    "adam_o2_stage2",
    "adam_o2_stage1_e4m3g",
    "adam_o2_stage2_e4m3g",
    "rmsnorm_forward_f32",
    "rmsnorm_forward_bf16",
    "rmsnorm_backward_dinp_f32",
    "rmsnorm_backward_dinp_bf16",
    "rmsnorm_backward_dw_f32",
    "rmsnorm_backward_dw_bf16",
    "rope_forward_f32",
    "rope_forward_bf16",
    "rope_backward_f32",
    "rope_backward_bf16",
    "swiglu_forward_f32",
    "swiglu_forward_bf16",
    "swiglu_backward_f32",
    "swiglu_backward_bf16",
    "repeat_kv_forward_f32",
    "repeat_kv_forward_bf16",
    "repeat_kv_backward_f32",
    "repeat_kv_backward_bf16",
    "embed_forward_f32",
    "embed_forward_bf16",
    "fp8_scale_begin",
    "fp8_scale_finish",
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
        // `void __launch_bounds__(N) name(` declares `name` as well.
        let src = source().replace("void __launch_bounds__(1024) ", "void ");
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
