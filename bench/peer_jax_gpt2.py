#!/usr/bin/env python3
"""Peer benchmark: GPT-2 training-step throughput in JAX (XLA:CPU, float32).

The counterpart of `octet bench train` (crates/lm/src/bench.rs), so that octet's
CPU training throughput can be compared with JAX on the same machine in the same
run (see bench/cpu.sh). The model is the one of tools/ref/gpt2_golden.py (llm.c
conventions): learned positions, Pre-LN blocks (LayerNorm eps 1e-5), fused qkv,
causal attention, GELU (tanh), 4x MLP, tied embeddings, padded vocabulary with
the loss over the first V logit columns. Weights are (out, in): y = x @ W^T + b.

One training step = forward + backward (jax.value_and_grad) + global-norm clip
to 1.0 + AdamW (lr 1e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on the
matrices wte, wpe, qkvw, attprojw, fcw, fcprojw), all inside one jax.jit'd
function with the parameters and optimizer state donated. Inputs and targets
are fresh uniform random tokens every step, drawn outside the timed region, as
octet does.

Flags mirror `octet bench train` (--model, --vocab-size, --batch, --seq,
--steps, --warmup). The compiled executable is built ahead of time (its time
is reported as compile_s); the warm-up steps are then run untimed; each timed
step is measured from the call to block_until_ready() on all of its outputs.
The reported median is sorted_times[steps // 2], the same rule as octet.

Prints one JSON line on stdout. Pinned dependencies: bench/requirements-peer.txt.
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
import warnings

# ------------------------------------------------------------------ CLI ----
PRESETS = ("tiny", "small", "gpt2-124m")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small", choices=PRESETS,
                   help="model preset (default: small)")
    p.add_argument("--vocab-size", type=int, default=1024,
                   help="vocabulary for tiny/small; gpt2-124m keeps 50257 (default: 1024)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=None,
                   help="sequence length (default: 128, clamped to the preset's max_seq_len "
                        "when not given; octet instead rejects seq > max_seq_len)")
    p.add_argument("--steps", type=int, default=10,
                   help="timed steps after warm-up; the median is reported (default: 10)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps after compilation (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="restrict the process to the first N allowed CPUs (sched_setaffinity, "
                        "before JAX starts; XLA:CPU sizes its thread pool from the affinity "
                        "mask). Default: leave all CPUs, as JAX does.")
    a = p.parse_args(argv)
    if a.batch <= 0 or a.steps <= 0 or a.warmup < 0 or a.vocab_size <= 0:
        p.error("need batch > 0, steps > 0, warmup >= 0, vocab-size > 0")
    return a


def pad_vocab(v, m):
    return -(-v // m) * m


def model_config(name, vocab_size):
    """Same presets as octet's Gpt2Config::named (crates/lm/src/gpt2.rs)."""
    if name == "gpt2-124m":
        return dict(vocab_size=50257, padded_vocab=50304, max_seq_len=1024,
                    n_layer=12, n_head=12, n_embd=768)
    base = {"tiny": dict(max_seq_len=16, n_layer=2, n_head=4, n_embd=32),
            "small": dict(max_seq_len=128, n_layer=4, n_head=4, n_embd=128)}[name]
    return dict(vocab_size=vocab_size, padded_vocab=pad_vocab(vocab_size, 64), **base)


ARGS = parse_args()
if ARGS.threads is not None:
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= ARGS.threads <= len(allowed):
        sys.exit(f"--threads must be in 1..{len(allowed)}")
    os.sched_setaffinity(0, allowed[: ARGS.threads])

# Import JAX only now, so that the affinity above is what XLA sees.
import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_enable_x64", False)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

CFG = model_config(ARGS.model, ARGS.vocab_size)
V = CFG["vocab_size"]
VP = CFG["padded_vocab"]
MAXT = CFG["max_seq_len"]
L = CFG["n_layer"]
NH = CFG["n_head"]
C = CFG["n_embd"]
if C % NH:
    sys.exit(f"n_embd {C} must be divisible by n_head {NH}")
HS = C // NH
LN_EPS = 1e-5

LR = 1e-4
BETA1 = 0.9
BETA2 = 0.95
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_NORM = 1.0

# Parameter order, names and shapes: llm.c order, as octet's param_layout.
PARAM_SPECS = [
    ("wte", (VP, C)),
    ("wpe", (MAXT, C)),
    ("ln1w", (L, C)),
    ("ln1b", (L, C)),
    ("qkvw", (L, 3 * C, C)),
    ("qkvb", (L, 3 * C)),
    ("attprojw", (L, C, C)),
    ("attprojb", (L, C)),
    ("ln2w", (L, C)),
    ("ln2b", (L, C)),
    ("fcw", (L, 4 * C, C)),
    ("fcb", (L, 4 * C)),
    ("fcprojw", (L, C, 4 * C)),
    ("fcprojb", (L, C)),
    ("lnfw", (C,)),
    ("lnfb", (C,)),
]
PARAM_NAMES = [n for n, _ in PARAM_SPECS]
DECAYED = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"}


# ------------------------------------------------------------------ init ----
def init_params(seed):
    """GPT-2 init as octet's init_params: N(0, 0.02) matrices, residual
    projections N(0, 0.02/sqrt(2L)), zero biases, unit norm gains (not the same
    random numbers; irrelevant for throughput)."""
    rng = np.random.default_rng(seed)
    proj_std = 0.02 / math.sqrt(2 * L)
    params = {}
    for name, shape in PARAM_SPECS:
        if name in ("ln1w", "ln2w", "lnfw"):
            p = np.ones(shape, np.float32)
        elif name in DECAYED:
            std = proj_std if name in ("attprojw", "fcprojw") else 0.02
            p = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        else:  # biases
            p = np.zeros(shape, np.float32)
        params[name] = jnp.asarray(p)
    return params


# --------------------------------------------------------------- forward ----
# Same math as tools/ref/gpt2_golden.py (there in float64, here in float32).
def layernorm(x, w, b):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)  # biased
    return (x - mean) / jnp.sqrt(var + LN_EPS) * w + b


def gelu_tanh(u):
    return 0.5 * u * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3)))


def attention(qkv):
    # qkv: (B, T, 3C); q/k/v blocks of C columns, head j = columns j*HS:(j+1)*HS.
    bsz, t, _ = qkv.shape
    q = qkv[..., 0:C].reshape(bsz, t, NH, HS).transpose(0, 2, 1, 3)
    k = qkv[..., C : 2 * C].reshape(bsz, t, NH, HS).transpose(0, 2, 1, 3)
    v = qkv[..., 2 * C : 3 * C].reshape(bsz, t, NH, HS).transpose(0, 2, 1, 3)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(HS)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))  # key <= query
    scores = jnp.where(causal, scores, -jnp.inf)
    scores = scores - jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(scores)
    att = e / jnp.sum(e, axis=-1, keepdims=True)
    y = jnp.einsum("bhqk,bhkd->bhqd", att, v)
    return y.transpose(0, 2, 1, 3).reshape(bsz, t, C)


def forward(params, inputs):
    t = inputs.shape[1]
    x = params["wte"][inputs] + params["wpe"][0:t]
    for l in range(L):
        h = layernorm(x, params["ln1w"][l], params["ln1b"][l])
        qkv = h @ params["qkvw"][l].T + params["qkvb"][l]
        y = attention(qkv)
        x = x + y @ params["attprojw"][l].T + params["attprojb"][l]
        h2 = layernorm(x, params["ln2w"][l], params["ln2b"][l])
        f = gelu_tanh(h2 @ params["fcw"][l].T + params["fcb"][l])
        x = x + f @ params["fcprojw"][l].T + params["fcprojb"][l]
    xf = layernorm(x, params["lnfw"], params["lnfb"])
    return xf @ params["wte"].T  # (B, T, VP): the padded columns are computed too


def loss_from_logits(logits, targets):
    # Softmax over the first V columns only; padded columns get no gradient.
    lg = logits[..., :V]
    m = jnp.max(lg, axis=-1, keepdims=True)
    lse = jnp.log(jnp.sum(jnp.exp(lg - m), axis=-1)) + m[..., 0]
    tgt = jnp.take_along_axis(lg, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - tgt)


def loss_fn(params, inputs, targets):
    return loss_from_logits(forward(params, inputs), targets)


# ------------------------------------------------------------ train step ----
def train_step(params, opt_state, inputs, targets):
    """forward + backward + clip_global_norm(1.0) + AdamW, as octet's bench_train."""
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
    # Global-norm clip (octet: scale by max/norm only when norm is finite and > max).
    sq = sum(jnp.sum(jnp.square(g)) for g in grads.values())
    norm = jnp.sqrt(sq)
    scale = jnp.where(jnp.isfinite(norm) & (norm > MAX_NORM), MAX_NORM / norm, 1.0)
    m, v, step = opt_state
    step = step + 1
    tf = step.astype(jnp.float32)
    c1 = 1.0 - BETA1**tf
    c2 = 1.0 - BETA2**tf
    new_p, new_m, new_v = {}, {}, {}
    for k in PARAM_NAMES:
        g = grads[k] * scale
        mk = BETA1 * m[k] + (1.0 - BETA1) * g
        vk = BETA2 * v[k] + (1.0 - BETA2) * g * g
        wd = WEIGHT_DECAY if k in DECAYED else 0.0
        p = params[k]
        new_p[k] = p - LR * ((mk / c1) / (jnp.sqrt(vk / c2) + ADAM_EPS) + wd * p)
        new_m[k] = mk
        new_v[k] = vk
    return new_p, (new_m, new_v, step), loss, norm


def flops_per_token(t):
    """Same formula as octet's bench::flops_per_token."""
    gemm_weights = L * 12.0 * C * C + C * VP
    return 6.0 * gemm_weights + 6.0 * L * t * C


def xla_thread_info():
    """What XLA:CPU can use: it sizes its intra-op pool from the CPUs in the
    affinity mask unless XLA_FLAGS says otherwise (nothing is set here)."""
    flags = os.environ.get("XLA_FLAGS", "")
    info = {
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "os_cpu_count": os.cpu_count(),
        "xla_flags": flags,
        "xla_cpu_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false" not in flags,
    }
    return info


def os_thread_count():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


# ------------------------------------------------------------------- main ----
def main():
    a = ARGS
    seq = a.seq
    if seq is None:
        seq = min(128, MAXT)
        if seq != 128:
            print(f"note: --seq not given, using max_seq_len {seq} for {a.model}",
                  file=sys.stderr)
    if not 0 < seq <= MAXT:
        sys.exit(f"need 0 < seq <= {MAXT}")
    b, t = a.batch, seq

    threads_before = os_thread_count()
    params = init_params(a.seed)
    n_params = sum(int(np.prod(s)) for _, s in PARAM_SPECS)
    opt_state = ({k: jnp.zeros_like(p) for k, p in params.items()},
                 {k: jnp.zeros_like(p) for k, p in params.items()},
                 jnp.zeros((), jnp.int32))

    rng = np.random.default_rng(a.seed + 1)

    def batch():
        x = rng.integers(0, V, size=(b, t), dtype=np.int32)
        y = rng.integers(0, V, size=(b, t), dtype=np.int32)
        return jax.device_put(x), jax.device_put(y)

    step_fn = jax.jit(train_step, donate_argnums=(0, 1))
    x0, y0 = batch()
    t0 = time.perf_counter()
    compiled = step_fn.lower(params, opt_state, x0, y0).compile()
    compile_s = time.perf_counter() - t0

    # First call: check that donation really happened (the old buffers are deleted).
    probe = params["wte"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, opt_state, loss, norm = compiled(params, opt_state, x0, y0)
        jax.block_until_ready((params, opt_state, loss, norm))
    donation_ok = probe.is_deleted()
    donation_warnings = [str(w.message) for w in caught if "donat" in str(w.message).lower()]
    del probe
    first_loss = float(loss)

    for _ in range(max(a.warmup - 1, 0)):
        x, y = batch()
        params, opt_state, loss, norm = compiled(params, opt_state, x, y)
        jax.block_until_ready((params, opt_state, loss, norm))

    times = []
    for _ in range(a.steps):
        x, y = batch()
        t0 = time.perf_counter()
        params, opt_state, loss, norm = compiled(params, opt_state, x, y)
        jax.block_until_ready((params, opt_state, loss, norm))
        times.append(time.perf_counter() - t0)
    threads_after = os_thread_count()

    last_loss = float(loss)
    if not (math.isfinite(first_loss) and math.isfinite(last_loss)):
        sys.exit(f"non-finite loss: first {first_loss}, last {last_loss}")

    times.sort()
    med = times[len(times) // 2]  # octet's rule (upper median for an even count)
    tps = b * t / med
    fpt = flops_per_token(t)
    dev = jax.devices()[0]
    out = {
        "peer": "jax",
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jax.lib, "__version__", None)
        or __import__("jaxlib").__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "n_devices": jax.device_count(),
        "dtype": "float32",
        "model": a.model,
        "config": CFG,
        "batch": b,
        "seq": t,
        "steps": a.steps,
        "warmup": a.warmup,
        "params": n_params,
        "median_step_ms": med * 1e3,
        "min_step_ms": times[0] * 1e3,
        "max_step_ms": times[-1] * 1e3,
        "tokens_per_s": tps,
        "flops_per_token": fpt,
        "gflops": tps * fpt / 1e9,
        "compile_s": compile_s,
        "first_loss": first_loss,
        "last_loss": last_loss,
        "donation": donation_ok,
        "donation_warnings": donation_warnings,
        # XLA:CPU thread usage: by default JAX uses every CPU in the affinity
        # mask for its intra-op (Eigen) pool; os_threads_* count this process's
        # OS threads before JAX started computing and after the timed steps.
        "threads": len(os.sched_getaffinity(0)),
        "threads_flag": a.threads,
        "xla_threading": xla_thread_info(),
        "os_threads_before": threads_before,
        "os_threads_after": threads_after,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
