#!/usr/bin/env python3
"""Independent float64 JAX reference for octet's GPT-2 (llm.c conventions).

Writes tests/golden/gpt2_tiny.safetensors with the inputs/targets, the initial
parameters, the logits, loss and gradients at the initial parameters, and the
losses and final parameters of 10 AdamW steps on the same batch.

Everything is computed in float64 and stored as float32 (tokens as int32).
Run from the repository root:

    python tools/ref/gpt2_golden.py

Pinned dependencies: tools/ref/requirements-gpt2.txt. The output is
deterministic (seeded numpy init, float64 XLA CPU computation).
"""

import json
import math
import os
import struct
import sys
import tempfile

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import safetensors  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

# ---------------------------------------------------------------- config ----
V = 61  # vocab_size
VP = 64  # padded_vocab_size
MAXT = 16  # max_seq_len
L = 2  # n_layer
NH = 4  # n_head
C = 32  # n_embd
HS = C // NH  # head size
B = 2  # batch
T = 8  # sequence length
LN_EPS = 1e-5

LR = 1e-3
BETA1 = 0.9
BETA2 = 0.95
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.1
STEPS = 10
SEED = 1337

OUT_PATH = os.path.join("tests", "golden", "gpt2_tiny.safetensors")

# Parameter order, names and shapes (weights are (out, in): y = x @ W^T + b).
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
# AdamW weight decay applies only to these (the weight matrices).
DECAYED = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"}


# ------------------------------------------------------------------ init ----
def init_params_and_tokens():
    """Draw params (in PARAM_SPECS order) then tokens from one rng."""
    rng = np.random.default_rng(SEED)
    proj_std = 0.02 / math.sqrt(2 * L)
    params = {}
    for name, shape in PARAM_SPECS:
        if name in ("attprojw", "fcprojw"):
            p = rng.normal(0.0, proj_std, size=shape)
        elif name in ("ln1w", "ln2w", "lnfw"):
            p = 1.0 + rng.normal(0.0, 0.1, size=shape)
        else:  # wte, wpe, qkvw, fcw, all biases, LN biases
            p = rng.normal(0.0, 0.02, size=shape)
        params[name] = np.asarray(p, dtype=np.float64)
    tokens = rng.integers(0, V, size=(B, T + 1))
    inputs = tokens[:, :T].astype(np.int32)
    targets = tokens[:, 1:].astype(np.int32)
    return params, inputs, targets


# --------------------------------------------------------------- forward ----
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
    return xf @ params["wte"].T  # (B, T, VP)


def loss_from_logits(logits, targets):
    # Softmax over the first V columns only; padded columns get no gradient.
    lg = logits[..., :V]
    m = jnp.max(lg, axis=-1, keepdims=True)
    lse = jnp.log(jnp.sum(jnp.exp(lg - m), axis=-1)) + m[..., 0]
    tgt = jnp.take_along_axis(lg, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - tgt)


def loss_fn(params, inputs, targets):
    return loss_from_logits(forward(params, inputs), targets)


loss_jit = jax.jit(loss_fn)
value_and_grad_jit = jax.jit(jax.value_and_grad(loss_fn))
forward_jit = jax.jit(forward)


# ------------------------------------------------------------- self-check ----
def finite_difference_check(params, inputs, targets, grads):
    """Central FD (float64, h=1e-6) on random entries of several params."""
    rng = np.random.default_rng(SEED + 1)
    h = 1e-6
    checked = ["wte", "wpe", "ln1w", "qkvw", "qkvb", "attprojw", "ln2b",
               "fcw", "fcprojw", "fcprojb", "lnfw", "lnfb"]
    per_param = 4
    max_rel = 0.0
    max_abs = 0.0
    worst = None
    n = 0
    for name in checked:
        base = params[name]
        g = np.asarray(grads[name])
        # FD round-off is ~1e-9 absolute (eps_mach * loss / h), so pick random
        # entries whose |grad| >= 1e-3 where enough exist, else the largest
        # ones (the LayerNorm params have few large entries). Padded wte rows
        # are excluded (their gradient is exactly zero, asserted below).
        mag = np.abs(g).copy()
        if name == "wte":
            mag[V:] = -1.0
        flat = np.flatnonzero(mag.ravel() >= 1e-3)
        if flat.size >= per_param:
            picks = rng.choice(flat, size=per_param, replace=False)
        else:
            picks = np.argsort(-mag.ravel(), kind="stable")[:per_param]
        for pick in picks:
            idx = tuple(int(i) for i in np.unravel_index(int(pick), base.shape))
            plus = base.copy()
            plus[idx] += h
            minus = base.copy()
            minus[idx] -= h
            lp = float(loss_jit({**params, name: jnp.asarray(plus)}, inputs, targets))
            lm = float(loss_jit({**params, name: jnp.asarray(minus)}, inputs, targets))
            fd = (lp - lm) / (2 * h)
            an = float(g[idx])
            # Floor on the denominator so that near-zero entries do not
            # produce meaningless relative errors from float64 round-off.
            rel = abs(fd - an) / max(abs(fd), abs(an), 1e-3)
            n += 1
            max_abs = max(max_abs, abs(fd - an))
            if rel > max_rel:
                max_rel = rel
                worst = (name, idx, an, fd)
    print(f"FD check: {n} entries over {len(checked)} params, "
          f"max relative error {max_rel:.3e}, max abs error {max_abs:.3e} "
          f"(worst rel: {worst[0]}{list(worst[1])} "
          f"jax={worst[2]:.6e} fd={worst[3]:.6e})")
    assert max_rel < 1e-6, f"finite-difference check failed: max rel err {max_rel}"
    # The padded rows of wte must receive exactly zero gradient.
    assert np.all(np.asarray(grads["wte"])[V:] == 0.0)
    return max_rel


# ------------------------------------------------------------------ AdamW ----
def adamw_train(params0, inputs, targets):
    params = {k: jnp.asarray(v) for k, v in params0.items()}
    m = {k: jnp.zeros_like(v) for k, v in params.items()}
    v = {k: jnp.zeros_like(p) for k, p in params.items()}
    losses = []
    for t in range(1, STEPS + 1):
        loss, grads = value_and_grad_jit(params, inputs, targets)
        losses.append(float(loss))
        new = {}
        for k in PARAM_NAMES:
            g = grads[k]
            m[k] = BETA1 * m[k] + (1 - BETA1) * g
            v[k] = BETA2 * v[k] + (1 - BETA2) * g * g
            mhat = m[k] / (1 - BETA1**t)
            vhat = v[k] / (1 - BETA2**t)
            wd = WEIGHT_DECAY if k in DECAYED else 0.0
            new[k] = params[k] - LR * (mhat / (jnp.sqrt(vhat) + ADAM_EPS) + wd * params[k])
        params = new
    return np.array(losses), {k: np.asarray(p) for k, p in params.items()}


# ------------------------------------------------------------------ output ----
def canonicalize_header(path):
    """Sort the metadata keys in the safetensors JSON header in place.

    safetensors writes __metadata__ from a Rust HashMap, so its key order (and
    hence the file bytes) changes from run to run. Tensor data and offsets are
    already deterministic; rewriting the header with sorted metadata keys, at
    the same length, makes the whole file byte-for-byte reproducible.
    """
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n).decode("utf-8"), object_pairs_hook=dict)
        meta = header.pop("__metadata__")
        canon = {"__metadata__": dict(sorted(meta.items()))}
        canon.update(header)
        raw = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert len(raw) <= n, (len(raw), n)
        fh.seek(8)
        fh.write(raw + b" " * (n - len(raw)))  # trailing-space padding is allowed


# ------------------------------------------------------------------- main ----
def main():
    params, inputs, targets = init_params_and_tokens()
    jparams = {k: jnp.asarray(p) for k, p in params.items()}
    jin = jnp.asarray(inputs)
    jtg = jnp.asarray(targets)

    logits = np.asarray(forward_jit(jparams, jin))
    loss, grads = value_and_grad_jit(jparams, jin, jtg)
    loss = float(loss)
    print(f"initial loss {loss:.10f} (ln(V) = {math.log(V):.10f})")
    assert abs(float(loss_from_logits(jnp.asarray(logits), jtg)) - loss) < 1e-12

    finite_difference_check(params, jin, jtg, grads)

    step_losses, final = adamw_train(params, jin, jtg)
    assert step_losses[0] == loss
    for i, sl in enumerate(step_losses):
        print(f"step {i + 1:2d} loss {sl:.10f}")

    f32 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32))  # noqa: E731
    tensors = {
        "inputs": np.ascontiguousarray(inputs, dtype=np.int32),
        "targets": np.ascontiguousarray(targets, dtype=np.int32),
    }
    for k in PARAM_NAMES:
        tensors[f"param.{k}"] = f32(params[k])
    tensors["logits"] = f32(logits)
    tensors["loss"] = f32([loss])
    for k in PARAM_NAMES:
        tensors[f"grad.{k}"] = f32(grads[k])
    tensors["step_losses"] = f32(step_losses)
    for k in PARAM_NAMES:
        tensors[f"final.{k}"] = f32(final[k])

    metadata = {
        "V": str(V),
        "Vp": str(VP),
        "maxT": str(MAXT),
        "L": str(L),
        "NH": str(NH),
        "C": str(C),
        "B": str(B),
        "T": str(T),
        "ln_eps": repr(LN_EPS),
        "lr": repr(LR),
        "beta1": repr(BETA1),
        "beta2": repr(BETA2),
        "eps": repr(ADAM_EPS),
        "weight_decay": repr(WEIGHT_DECAY),
        "weight_decay_params": ",".join(n for n in PARAM_NAMES if n in DECAYED),
        "steps": str(STEPS),
        "seed": str(SEED),
        "param_order": ",".join(PARAM_NAMES),
        "jax_version": jax.__version__,
        "jaxlib_version": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
        "numpy_version": np.__version__,
        "safetensors_version": safetensors.__version__,
        "generator": "tools/ref/gpt2_golden.py",
    }

    out_dir = os.path.dirname(OUT_PATH)
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gpt2_tiny.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        canonicalize_header(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, OUT_PATH)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    print(f"wrote {OUT_PATH} ({os.path.getsize(OUT_PATH)} bytes, {len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
