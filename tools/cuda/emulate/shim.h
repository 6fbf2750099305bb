// Host emulation of the CUDA features octet's kernels use, for tools/cuda/emulate/run.py (no GPU needed):
// one OS thread per CUDA thread, blocks run one after another (in a shuffled order, or one block alone:
// see `launch`), shuffles through per-warp barriers, __syncthreads through a block barrier, __shared__ as
// statics (one block at a time). The bf16, f16 and FP8 types and conversions are NVIDIA's own
// (cuda_bf16.h, cuda_fp16.h, cuda_fp8.h are host-callable; their include folder is passed with -I), so
// the bf16 and FP8 instantiations run with the same rounding as on the device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>
#include <algorithm>
// dim3 comes from vector_types.h (through the CUDA headers).
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)
static std::barrier<>* g_block_bar;
static std::vector<std::unique_ptr<std::barrier<>>> g_warp_bars;
static float g_slots[1024];
static unsigned g_uslots[1024];
static std::atomic<int> g_or;
inline int tid() { return threadIdx.x + threadIdx.y * blockDim.x; }
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline int __syncthreads_or(int p) {
    g_block_bar->arrive_and_wait();
    if (tid() == 0) g_or = 0;
    g_block_bar->arrive_and_wait();
    if (p) g_or |= 1;
    g_block_bar->arrive_and_wait();
    int r = g_or;
    g_block_bar->arrive_and_wait();
    return r;
}
inline float __shfl_xor_sync(unsigned, float v, int o) {
    int t = tid(), w = t / 32;
    g_slots[t] = v;
    g_warp_bars[w]->arrive_and_wait();
    float r = g_slots[(t & ~31) | ((t & 31) ^ o)];
    g_warp_bars[w]->arrive_and_wait();
    return r;
}
inline unsigned __shfl_xor_sync(unsigned, unsigned v, int o) {
    int t = tid(), w = t / 32;
    g_uslots[t] = v;
    g_warp_bars[w]->arrive_and_wait();
    unsigned r = g_uslots[(t & ~31) | ((t & 31) ^ o)];
    g_warp_bars[w]->arrive_and_wait();
    return r;
}
inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
inline float __int_as_float(int u) { float x; memcpy(&x, &u, 4); return x; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
using std::max; using std::min; using std::isfinite; using std::isnan;
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline unsigned atomicMax(unsigned* p, unsigned v) {
    auto* a = reinterpret_cast<std::atomic<unsigned>*>(p);
    unsigned old = a->load();
    while (old < v && !a->compare_exchange_weak(old, v)) {}
    return old;
}
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }

// Run the grid: every block (in an order shuffled by `seed`; seed 0 keeps the natural order), or, with
// `only_block` >= 0, that block alone (run.py compares what each block writes: write sets must be
// disjoint). gridDim is the whole grid either way.
inline void launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, int only_block, unsigned seed,
                   std::function<void()> k) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    unsigned nt = bx * by;
    std::vector<unsigned> order;
    if (only_block >= 0) order.push_back((unsigned)only_block);
    else
        for (unsigned b = 0; b < gx * gy; b++) order.push_back(b);
    if (seed) std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    for (unsigned b : order) {
        unsigned xx = b % gx, yy = b / gx;
        std::barrier<> bb(nt);
        g_block_bar = &bb;
        g_warp_bars.clear();
        for (unsigned w = 0; w < (nt + 31) / 32; w++) g_warp_bars.emplace_back(new std::barrier<>(32));
        std::vector<std::thread> th;
        for (unsigned t = 0; t < nt; t++)
            th.emplace_back([=] {
                threadIdx = {t % bx, t / bx, 0};
                blockIdx = {xx, yy, 0};
                k();
            });
        for (auto& x : th) x.join();
    }
}
