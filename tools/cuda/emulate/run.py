#!/usr/bin/env python3
"""Run octet's f32 CUDA kernels on the CPU, without a GPU, against numpy transcriptions of
octet_kernels::reference (and of octet_core::scaling::compute_scale for the O2 scale kernel).

Extracts the kernels from crates/cuda/src/kernels.rs (the f32 instantiations; the bf16, f16 and FP8 code
is left out: it needs conversions this harness does not emulate), compiles them with g++ against
shim.h (one OS thread per CUDA thread; see there) and launch.cpp, and runs each with the launch shape of
its Rust wrapper (crates/cuda/src/{device,ops,llama_ops,optim}.rs). What this checks: indexing, reductions,
warp/block synchronisation and formulas. What it cannot: GPU arithmetic (expf ulps, FMA contraction,
which nvrtc_check.py checks for AdamW), bf16/FP8, cuBLASLt, real scheduling. Tolerances: F32's
(atol 1e-5, rtol 1e-4, as octet_core::Tolerance::F32); AdamW, the scale kernel and the copies (repeat_kv
forward, embedding forward) exact. Covered: the GPT-2 step's kernels and Llama's (RMSNorm, RoPE, SwiGLU,
repeat_kv, embedding).

    python3 tools/cuda/emulate/run.py        # ~1 min on 2 cores; exit status 0 iff all checks pass
"""
import ctypes as C, math, pathlib, re, shutil, subprocess, sys, tempfile
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
KERNELS_RS = HERE.parents[2] / "crates" / "cuda" / "src" / "kernels.rs"


def extract_f32():
    """The f32-only module: PRELUDE without headers and bf16 helpers, the f32-capable operations."""
    consts = dict(re.findall(r'pub const (\w+): &str = r#"(.*?)"#;', KERNELS_RS.read_text(), re.S))
    pre = "\n".join(l for l in consts["PRELUDE"].splitlines() if not l.startswith("#include"))
    pre = re.sub(r"__device__ __forceinline__ float to_f32\(__nv_bfloat16 x\).*?\n", "", pre)
    pre = re.sub(r"template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>\(float x\) \{.*?\}\n",
                 "", pre, flags=re.S)
    pre = pre.replace("M(f32, float) M(bf16, __nv_bfloat16)", "M(f32, float)")
    ops = "".join(consts[k] for k in ["RESIDUAL", "GELU", "BIAS", "LAYERNORM", "ENCODER", "LAYERNORM_BACKWARD",
                                       "ATTENTION", "SOFTMAX_XENT", "RMSNORM", "ROPE", "SWIGLU", "REPEAT_KV",
                                       "EMBED"])
    cast = consts["CAST"].split('extern "C" __global__ void cast_f32_to_bf16')[0]
    adam = consts["ADAM"]
    # Drop the O2 stages (f16 and E4M3 storage); keep AdamW f32, compute_scale and the scale kernel.
    adam = re.sub(r"// \(p, m, v\) of element i decoded.*?(?=// floor\(log2)", "", adam, flags=re.S)
    adam = adam.split("template <typename G>\n__device__ void adam_o2_stage2_t")[0]
    return pre + ops + cast + adam


def build():
    out = pathlib.Path(tempfile.mkdtemp(prefix="octet-emu-"))
    (out / "kernels.inc").write_text(extract_f32())
    lib = out / "libemu.so"
    subprocess.run(["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-fPIC", "-shared", f"-I{out}", f"-I{HERE}",
                    "-o", str(lib), str(HERE / "launch.cpp"), "-lpthread"], check=True)
    loaded = C.CDLL(str(lib))
    shutil.rmtree(out)  # the loaded library stays mapped
    return loaded


L = build()
P = lambda a: a.ctypes.data_as(C.c_void_p)
f64 = np.float64
rng = np.random.default_rng(0)
BLOCK = 256
def ew(n): return max(1, min(-(-n // BLOCK), 65535 * 8))
def wr(n): return max(1, -(-n // (BLOCK // 32)))
fails = 0
def close(name, got, want, atol=1e-5, rtol=1e-4):
    global fails
    got, want = np.asarray(got, f64), np.asarray(want, f64)
    err = np.abs(got - want) - (atol + rtol * np.abs(want))
    ok = bool(np.all(err <= 0)) and got.shape == want.shape
    i = int(np.argmax(err)) if err.size else 0
    print(f"{'ok  ' if ok else 'FAIL'} {name}: worst index {i}, got {got.flat[i]:.6g} want {want.flat[i]:.6g}")
    fails += not ok
I = C.c_int
# encoder
b, t, c, v = 3, 17, 75, 20
tok = rng.integers(0, v, b * t).astype(np.uint32)
wte, wpe = rng.standard_normal((v, c)).astype(np.float32), rng.standard_normal((t, c)).astype(np.float32)
dout = rng.standard_normal((b * t, c)).astype(np.float32)
out = np.zeros((b * t, c), np.float32)
L.L_encoder_forward(ew(b*t*c), BLOCK, P(out), P(tok), P(wte), P(wpe), I(b*t), I(t), I(c))
close("encoder_forward", out, wte[tok].astype(f64) + np.tile(wpe, (b, 1)))
dwte0, dwpe0 = rng.standard_normal((v, c)).astype(np.float32), rng.standard_normal((t, c)).astype(np.float32)
dwte, dwpe = dwte0.copy(), dwpe0.copy()
L.L_encoder_backward_wpe(ew(t*c), BLOCK, P(dwpe), P(dout), I(b), I(t), I(c))
order = np.argsort(tok, kind='stable').astype(np.int32)
ids, starts = np.unique(tok[order], return_index=True)
starts = np.append(starts, b * t).astype(np.int32); ids = ids.astype(np.uint32)
L.L_encoder_backward_wte(-(-c // BLOCK), len(ids), BLOCK, P(dwte), P(dout), P(starts), P(order), P(ids), I(len(ids)), I(c))
want_wte = dwte0.astype(f64); np.add.at(want_wte, tok, dout.astype(f64))
close("encoder dwte", dwte, want_wte); close("encoder dwpe", dwpe, dwpe0 + dout.reshape(b, t, c).astype(f64).sum(0))
# layernorm fwd + bwd
n, c = 83, 768
x = (rng.standard_normal((n, c)) + 3).astype(np.float32)
w, bias, dout = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32), rng.standard_normal((n, c)).astype(np.float32)
y, mean, rstd = np.zeros((n, c), np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
L.L_layernorm_forward(wr(n), BLOCK, P(y), P(mean), P(rstd), P(x), P(w), P(bias), I(n), I(c))
xd = x.astype(f64); m = xd.mean(1); s = 1 / np.sqrt(((xd - m[:, None]) ** 2).mean(1) + 1e-5)
xhat = (xd - m[:, None]) * s[:, None]
close("layernorm_forward", y, xhat * w + bias); close("layernorm mean", mean, m); close("layernorm rstd", rstd, s)
dx0, dw0, db0 = rng.standard_normal((n, c)).astype(np.float32), rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
L.L_layernorm_backward_dinp(wr(n), BLOCK, P(dx), P(dout), P(x), P(w), P(mean), P(rstd), I(n), I(c))
L.L_layernorm_backward_dwdb(-(-c // 32), P(dw), P(db), P(dout), P(x), P(mean), P(rstd), I(n), I(c))
m32, s32 = mean.astype(f64), rstd.astype(f64); xh = (xd - m32[:, None]) * s32[:, None]
g = dout.astype(f64) * w
close("layernorm dinp", dx, dx0 + s32[:, None] * (g - g.mean(1, keepdims=True) - xh * (g * xh).mean(1, keepdims=True)))
close("layernorm dw", dw, dw0 + (dout * xh).sum(0)); close("layernorm db", db, db0 + dout.astype(f64).sum(0))
# bias backward: dbias += column sums (column tiles; n not a multiple of 32, oc not of 32)
for n, oc in [(83, 75), (5, 40), (1000, 33)]:
    dout = rng.standard_normal((n, oc)).astype(np.float32)
    db0 = rng.standard_normal(oc).astype(np.float32); db = db0.copy()
    L.L_bias_backward(-(-oc // 32), P(db), P(dout), I(n), I(oc))
    close(f"bias_backward n={n} oc={oc}", db, db0 + dout.astype(f64).sum(0))
# attention
def attn_ref(qkv, b, t, c, nh):
    hs = c // nh
    q, k, vv = [qkv.reshape(b, t, 3, nh, hs)[:, :, i].transpose(0, 2, 1, 3).astype(f64) for i in range(3)]
    S = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
    S = np.where(np.tril(np.ones((t, t), bool)), S, -np.inf)
    mx = S.max(-1, keepdims=True); lse = mx + np.log(np.exp(S - mx).sum(-1, keepdims=True))
    Pm = np.exp(S - lse)
    o = Pm @ vv
    return o, lse[..., 0], Pm, q, k, vv
for (b, t, nh, hs) in [(2, 37, 3, 40), (1, 64, 2, 64), (1, 9, 1, 256)]:
    c = nh * hs
    qkv = rng.standard_normal((b, t, 3 * c)).astype(np.float32)
    out, lse = np.zeros((b, t, c), np.float32), np.zeros((b, nh, t), np.float32)
    L.L_attention_forward(wr(b*nh*t), BLOCK, P(out), P(lse), P(qkv), I(b), I(t), I(c), I(nh))
    o, l, Pm, q, k, vv = attn_ref(qkv, b, t, c, nh)
    close(f"attention out {b,t,nh,hs}", out, o.transpose(0, 2, 1, 3).reshape(b, t, c)); close(f"attention lse {b,t,nh,hs}", lse, l)
    dout = rng.standard_normal((b, t, c)).astype(np.float32)
    do = dout.reshape(b, t, nh, hs).transpose(0, 2, 1, 3).astype(f64)
    delta = np.zeros((b, nh, t), np.float32); dqkv = np.full((b, t, 3 * c), np.nan, np.float32)
    L.L_attention_backward_delta(wr(b*nh*t), BLOCK, P(delta), P(dout), P(out), I(b), I(t), I(c), I(nh))
    L.L_attention_backward_dq(wr(b*nh*t), BLOCK, P(dqkv), P(dout), P(qkv), P(lse), P(delta), I(b), I(t), I(c), I(nh))
    L.L_attention_backward_dkv(wr(b*nh*t), BLOCK, P(dqkv), P(dout), P(qkv), P(lse), P(delta), I(b), I(t), I(c), I(nh))
    # reference backward on the device's out/lse
    Pd = np.exp(np.where(np.tril(np.ones((t, t), bool)), q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs), -np.inf) - lse.astype(f64)[..., None])
    D = (do * out.reshape(b, t, nh, hs).transpose(0, 2, 1, 3)).sum(-1, keepdims=True)
    dP = do @ vv.transpose(0, 1, 3, 2); dS = Pd * (dP - D)
    dq, dk, dv = dS @ k / np.sqrt(hs), dS.transpose(0, 1, 3, 2) @ q / np.sqrt(hs), Pd.transpose(0, 1, 3, 2) @ do
    want = np.concatenate([z.transpose(0, 2, 1, 3).reshape(b, t, c) for z in (dq, dk, dv)], -1)
    close(f"attention dqkv {b,t,nh,hs}", dqkv, want)
# softmax + xent
n, v, vp = 37, 1000, 1024
logits = (rng.standard_normal((n, vp)) * 3).astype(np.float32); logits[5] += 80
tg = rng.integers(0, v, n).astype(np.uint32)
probs, losses = logits.copy(), np.zeros(n, np.float32)
L.L_softmax_xent_forward(n, 512, P(losses), P(probs), P(tg), I(n), I(v), I(vp))
ld = logits[:, :v].astype(f64); mx = ld.max(1, keepdims=True); z = np.exp(ld - mx).sum(1, keepdims=True)
wp = np.zeros((n, vp)); wp[:, :v] = np.exp(ld - mx) / z
close("softmax probs", probs, wp); close("xent losses", losses, (mx + np.log(z))[:, 0] - ld[np.arange(n), tg])
d = probs.copy(); dl = 1.0 / n
L.L_softmax_xent_backward(ew(n*vp), BLOCK, P(d), P(tg), C.c_float(dl), I(n), I(v), I(vp))
wd = probs.astype(f64).copy(); wd[np.arange(n), tg] -= 1; wd[:, :v] *= dl
close("xent dlogits", d, wd)
# amax
x = (rng.standard_normal(37 * 257) * 10).astype(np.float32); x[123] = -1e30
a = np.zeros(1, np.uint32)
L.L_amax(ew(x.size), BLOCK, P(a), P(x), C.c_longlong(x.size))
close("amax", a.view(np.float32), [np.abs(x).max()], 0, 0)
x[5] = np.nan; a[:] = 0
L.L_amax(ew(x.size), BLOCK, P(a), P(x), C.c_longlong(x.size))
print(("ok  " if np.isnan(a.view(np.float32)[0]) else "FAIL") + " amax NaN"); fails += not np.isnan(a.view(np.float32)[0])
# adamw f32 vs a float32 transcription of adamw_fast
class K(C.Structure): _fields_ = [(f, C.c_float) for f in ("b1", "b2", "eps", "lr", "c1", "c2", "wd")]
n = 5000; p = (rng.standard_normal(n) * 0.02).astype(np.float32); m = np.zeros(n, np.float32); vv = np.zeros(n, np.float32)
pp, mm, vq = p.copy(), m.copy(), vv.copy()
F = np.float32
for step in range(1, 5):
    gr = (rng.standard_normal(n) * 10.0 ** (step - 3)).astype(np.float32)
    lr, wdc = 6e-4 / step, 0.1 if step % 2 else 0.0
    k = K(0.9, 0.95, 1e-8, lr, 1 - 0.9 ** step, 1 - 0.95 ** step, wdc)
    L.L_adamw(ew(n), BLOCK, P(pp), P(mm), P(vq), P(gr), k, C.c_longlong(n))
    b1, b2, eps, lr32, c1, c2, wd32 = F(0.9), F(0.95), F(1e-8), F(lr), F(1 - 0.9 ** step), F(1 - 0.95 ** step), F(wdc)
    m = b1 * m + (F(1) - b1) * gr
    vv = b2 * vv + (F(1) - b2) * gr * gr
    p = p - lr32 * ((m / c1) / (np.sqrt(vv / c2) + eps) + wd32 * p)
close("adamw p (exact)", pp, p, 0, 0); close("adamw m (exact)", mm, m, 0, 0); close("adamw v (exact)", vq, vv, 0, 0)
# O2 scale kernel: next scales from the amaxes (compute_scale), skip when any amax is not finite.
def compute_scale(amax, fp_max, margin, prev):
    """octet_core::scaling::compute_scale: 2^k, k = the largest integer with amax 2^k <= fp_max, minus
    margin, clamped to +-126; prev for a zero or non-finite amax (exact in Python's f64)."""
    if not (math.isfinite(amax) and amax > 0):
        return prev
    k = math.floor(math.log2(fp_max / amax))
    while amax * 2.0 ** (k + 1) <= fp_max:
        k += 1
    while amax * 2.0 ** k > fp_max:
        k -= 1
    return 2.0 ** min(max(k - margin, -126), 126)
nt = 300  # more tensors than threads: the kernel loops
bits = rng.integers(0, 0x7F800000, (nt, 4), dtype=np.uint32)
bits[:10] = [[0, 1, 0x00400000, 0x7F7FFFFF]] * 10  # zero, min subnormal, a subnormal, f32 max
bits[10] = [0, 0x43E00000, 0x477FE000, 0x3F800000]  # 448 (E4M3 max) and 65504 (f16 max) exactly
amaxb = bits.copy()
prev = (2.0 ** rng.integers(-40, 40, (nt, 3))).astype(np.float32)
margins = (0, 2, -1)
for bad in (False, True):
    if bad:
        amaxb[7, 2] = 0x7F800000  # an inf v amax: the whole step is skipped
    nxt, skip = np.zeros((nt, 3), np.float32), np.zeros(1, np.uint32)
    L.L_adam_o2_scales(BLOCK, P(nxt), P(skip), P(prev), P(amaxb), I(nt), C.c_float(448.0), C.c_float(65504.0),
                       I(margins[0]), I(margins[1]), I(margins[2]))
    a = amaxb.view(np.float32).astype(f64)
    want = prev.astype(f64).copy()
    if not bad:
        for i in range(nt):
            want[i] = [compute_scale(a[i, 3], 65504.0, margins[0], prev[i, 0]),
                       compute_scale(a[i, 1], 448.0, margins[1], prev[i, 1]),
                       compute_scale(a[i, 2], 65504.0, margins[2], prev[i, 2])]
    close(f"adam_o2_scales next ({'skipped step' if bad else 'finite amaxes'})", nxt, want, 0, 0)
    ok = int(skip[0]) == int(bad)
    print(("ok  " if ok else "FAIL") + f" adam_o2_scales skip flag {int(skip[0])}")
    fails += not ok
# --- Llama ops: RMSNorm, RoPE, SwiGLU, repeat_kv, embedding ---
# rmsnorm fwd + bwd (reference::rmsnorm_forward / rmsnorm_backward; dinp and dw accumulate)
n, c, eps = 45, 300, 1e-5
x = (rng.standard_normal((n, c)) * 2).astype(np.float32)
w, dout = rng.standard_normal(c).astype(np.float32), rng.standard_normal((n, c)).astype(np.float32)
y, rr = np.zeros((n, c), np.float32), np.zeros(n, np.float32)
L.L_rmsnorm_forward(wr(n), BLOCK, P(y), P(rr), P(x), P(w), I(n), I(c), C.c_double(eps))
xd = x.astype(f64); s = 1 / np.sqrt((xd ** 2).mean(1) + eps)
close("rmsnorm_forward", y, xd * s[:, None] * w); close("rmsnorm rrms", rr, s)
dx0, dw0 = rng.standard_normal((n, c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
dx, dw = dx0.copy(), dw0.copy()
L.L_rmsnorm_backward_dinp(wr(n), BLOCK, P(dx), P(dout), P(x), P(w), P(rr), I(n), I(c))
L.L_rmsnorm_backward_dw(-(-c // 32), P(dw), P(dout), P(x), P(rr), I(n), I(c))
s32 = rr.astype(f64)[:, None]; xh = xd * s32; g = dout.astype(f64) * w
close("rmsnorm dinp", dx, dx0 + s32 * (g - xh * (g * xh).mean(1, keepdims=True)))
close("rmsnorm dw", dw, dw0 + (dout * xh).sum(0))
# rope fwd + bwd (reference::rope_forward / rope_backward: interleaved pairs, angle p base^(-2i/hs))
def rope_ref(x, b, t, pos0, w, rot, hs, base, sign):
    o = x.astype(f64).copy()
    pos = pos0 + np.arange(b * t) % t
    i = np.arange(hs // 2)
    a = sign * (pos[:, None] * base ** (-2.0 * i / hs))  # (rows, hs/2)
    cs, sn = np.cos(a).astype(np.float32).astype(f64), np.sin(a).astype(np.float32).astype(f64)
    for h in range(rot // hs):
        x0, x1 = x[:, h * hs:(h + 1) * hs:2].astype(f64), x[:, h * hs + 1:(h + 1) * hs:2].astype(f64)
        o[:, h * hs:(h + 1) * hs:2] = x0 * cs - x1 * sn
        o[:, h * hs + 1:(h + 1) * hs:2] = x0 * sn + x1 * cs
    return o
for (b, t, pos0, nh, nkv, hs, base) in [(2, 37, 0, 3, 1, 16, 1e4), (1, 5, 4000, 2, 2, 64, 1e5)]:
    w, rot, rows = (nh + 2 * nkv) * hs, (nh + nkv) * hs, b * t
    x = rng.standard_normal((rows, w)).astype(np.float32)
    work = rows * (rot // 2 + w - rot)
    for name, fn, sign in (("rope_forward", L.L_rope_forward, 1.0), ("rope_backward", L.L_rope_backward, -1.0)):
        out = np.full((rows, w), np.nan, np.float32)
        fn(ew(work), BLOCK, P(out), P(x), I(rows), I(t), I(pos0), I(w), I(rot), I(hs), C.c_double(base))
        close(f"{name} {b,t,pos0,nh,nkv,hs}", out, rope_ref(x, b, t, pos0, w, rot, hs, base, sign))
# swiglu fwd + bwd (reference::swiglu_forward / swiglu_backward; dinp overwritten)
n, h = 29, 150
x = (rng.standard_normal((n, 2 * h)) * 3).astype(np.float32); x[0, :4] = [-100, 100, -1e4, 0]
dout = rng.standard_normal((n, h)).astype(np.float32)
out, dx = np.zeros((n, h), np.float32), np.full((n, 2 * h), np.nan, np.float32)
L.L_swiglu_forward(ew(n * h), BLOCK, P(out), P(x), I(n), I(h))
L.L_swiglu_backward(ew(n * h), BLOCK, P(dx), P(x), P(dout), I(n), I(h))
gd, ud, dd = x[:, :h].astype(f64), x[:, h:].astype(f64), dout.astype(f64)
with np.errstate(over="ignore"): sg = 1 / (1 + np.exp(-gd))  # e^100 overflows to inf: sg = 0, as in f32
close("swiglu_forward", out, gd * sg * ud)
close("swiglu_backward", dx, np.concatenate([dd * ud * sg * (1 + gd * (1 - sg)), dd * gd * sg], 1))
# repeat_kv fwd + bwd (reference::repeat_kv_forward / repeat_kv_backward; dinp overwritten)
for (n, nh, nkv, hs) in [(13, 6, 2, 20), (7, 4, 4, 8), (5, 3, 1, 33)]:
    c, kvd, rep = nh * hs, nkv * hs, nh // nkv
    x = rng.standard_normal((n, c + 2 * kvd)).astype(np.float32)
    out = np.full((n, 3 * c), np.nan, np.float32)
    L.L_repeat_kv_forward(ew(n * 3 * c), BLOCK, P(out), P(x), I(n), I(nh), I(nkv), I(hs))
    k, vv = x[:, c:c + kvd].reshape(n, nkv, hs), x[:, c + kvd:].reshape(n, nkv, hs)
    want = np.concatenate([x[:, :c], np.repeat(k, rep, 1).reshape(n, c), np.repeat(vv, rep, 1).reshape(n, c)], 1)
    close(f"repeat_kv_forward {n,nh,nkv,hs} (exact)", out, want, 0, 0)
    dout = rng.standard_normal((n, 3 * c)).astype(np.float32)
    dx = np.full((n, c + 2 * kvd), np.nan, np.float32)
    L.L_repeat_kv_backward(ew(dx.size), BLOCK, P(dx), P(dout), I(n), I(nh), I(nkv), I(hs))
    dd = dout.astype(f64)
    red = lambda part: dd[:, (1 + part) * c:(2 + part) * c].reshape(n, nkv, rep, hs).sum(2).reshape(n, kvd)
    close(f"repeat_kv_backward {n,nh,nkv,hs}", dx, np.concatenate([dd[:, :c], red(0), red(1)], 1))
# embedding fwd; bwd = encoder_backward_wte over the token buckets (+ the wpe kernel with B = N, T = 1
# into a (1, C) scratch: Gpu::embed_backward's launches)
n, c, v = 51, 75, 20
tok = rng.integers(0, v, n).astype(np.uint32)
wte, dout = rng.standard_normal((v, c)).astype(np.float32), rng.standard_normal((n, c)).astype(np.float32)
out = np.full((n, c), np.nan, np.float32)
L.L_embed_forward(ew(n * c), BLOCK, P(out), P(tok), P(wte), I(n), I(c))
close("embed_forward (exact)", out, wte[tok], 0, 0)
dwte0 = rng.standard_normal((v, c)).astype(np.float32); dwte, scratch = dwte0.copy(), np.zeros(c, np.float32)
L.L_encoder_backward_wpe(ew(c), BLOCK, P(scratch), P(dout), I(n), I(1), I(c))
order = np.argsort(tok, kind='stable').astype(np.int32)
ids, starts = np.unique(tok[order], return_index=True)
starts = np.append(starts, n).astype(np.int32); ids = ids.astype(np.uint32)
L.L_encoder_backward_wte(-(-c // BLOCK), len(ids), BLOCK, P(dwte), P(dout), P(starts), P(order), P(ids), I(len(ids)), I(c))
want_wte = dwte0.astype(f64); np.add.at(want_wte, tok, dout.astype(f64))
close("embed_backward dwte", dwte, want_wte)
print("all ok" if not fails else f"{fails} failure(s)"); sys.exit(1 if fails else 0)
