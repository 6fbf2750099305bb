#!/usr/bin/env python3
"""Independent float64 JAX reference for octet's simplified transformer blocks (SAS, SAS-P).

He & Hofmann, "Simplifying Transformer Blocks" (ICLR 2024); definitions as in the authors' code
(bobby-he/simplified_transformers, model_utils.py) with octet's conventions: no biases, RMSNorm
1/sqrt(mean(x^2) + 1e-8), learned positions, tied head, padded vocabulary ignored by the loss.

  SAS:   x' = g_attn * SA(h1),  h1 = N1(x);     y = g_ff * MLP(N2(x')) + g_skip * x'
  SAS-P: h = N1(x);                              y = g_attn * SA(h) + g_ff * MLP(h)
  SA(h) per head = (alpha I + beta softmax(q k^T / sqrt(hs) + mask) - gamma C) v,
         C the uniform causal matrix (row i = 1/(i+1) on columns 0..i), [q | k] = h Wqk^T,
         v = h (identity), except layer 0: v = alpha_V h + beta_V h dW^T.
  MLP(h) = relu(h Wfc^T) Wproj^T.

For each block, writes tests/golden/sas/<block>_tiny.safetensors with the inputs/targets, the
parameters (random around the initial values so that no gradient is trivial: W_Q and dW nonzero,
gains perturbed), the logits, loss and every parameter gradient, and the losses and final
parameters of 10 AdamW steps on the same batch (weight decay on matrices only).

Everything is computed in float64 and stored as float32 (tokens as int32). Run from the
repository root:

    python tools/ref/sas_golden.py

Pinned dependencies: tools/ref/requirements-gpt2.txt (same environment as gpt2_golden.py).
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

V, VP, MAXT, L, NH, C = 61, 64, 16, 2, 4, 32
HS = C // NH
B, T = 2, 8
RMS_EPS = 1e-8
LR, BETA1, BETA2, ADAM_EPS, WEIGHT_DECAY, STEPS = 1e-3, 0.9, 0.95, 1e-8, 0.1, 10
SEED = 4242
OUT_DIR = os.path.join("tests", "golden", "sas")
DECAYED = {"wte", "wpe", "qkw", "fcw", "fcprojw", "v0w"}


def param_specs(block):
    """(name, shape, init) in octet's param_layout order; init = (mean, std) of a normal draw."""
    specs = [
        ("wte", (VP, C), (0.0, 0.02)),
        ("wpe", (MAXT, C), (0.0, 0.02)),
        ("ln1w", (L, C), (1.0, 0.1)),
        ("qkw", (L, 2 * C, C), (0.0, 0.2)),
        ("attn_alpha", (L, NH), (1.0, 0.1)),
        ("attn_beta", (L, NH), (1.0, 0.1)),
        ("attn_gamma", (L, NH), (1.0, 0.1)),
        ("attn_gain", (L,), (1.0, 0.1)),
        ("v0w", (C, C), (0.0, 0.1)),
        ("v0_alpha", (1,), (1.0, 0.1)),
        ("v0_beta", (1,), (1.0, 0.1)),
    ]
    if block == "sas":
        specs.append(("ln2w", (L, C), (1.0, 0.1)))
    specs += [
        ("fcw", (L, 4 * C, C), (0.0, 0.1)),
        ("fcprojw", (L, C, 4 * C), (0.0, 0.1)),
        ("mlp_gain", (L,), (0.1, 0.02)),
    ]
    if block == "sas":
        specs.append(("skip_gain", (L,), (1.0, 0.1)))
    specs.append(("lnfw", (C,), (1.0, 0.1)))
    return specs


def init(block):
    rng = np.random.default_rng(SEED)
    params = {}
    for name, shape, (mean, std) in param_specs(block):
        params[name] = np.asarray(mean + rng.normal(0.0, std, size=shape), dtype=np.float64)
    tokens = rng.integers(0, V, size=(B, T + 1))
    return params, tokens[:, :T].astype(np.int32), tokens[:, 1:].astype(np.int32)


def rmsnorm(x, w):
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * w


def heads(x):  # (B, T, C) -> (B, NH, T, HS)
    bsz, t, _ = x.shape
    return x.reshape(bsz, t, NH, HS).transpose(0, 2, 1, 3)


def shaped_attention(qk, v, alpha, beta, gamma):
    t = qk.shape[1]
    q, k, vh = heads(qk[..., :C]), heads(qk[..., C:]), heads(v)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(HS)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    scores = jnp.where(causal, scores, -jnp.inf)
    p = jax.nn.softmax(scores, axis=-1)
    cmat = jnp.tril(jnp.ones((t, t))) / jnp.arange(1, t + 1)[:, None]
    eye = jnp.eye(t)
    a = (alpha[None, :, None, None] * eye + beta[None, :, None, None] * p
         - gamma[None, :, None, None] * cmat)
    y = jnp.einsum("bhqk,bhkd->bhqd", a, vh)
    return y.transpose(0, 2, 1, 3).reshape(v.shape)


def mlp(h, fcw, fcprojw):
    return jax.nn.relu(h @ fcw.T) @ fcprojw.T


def forward(block, params, inputs):
    t = inputs.shape[1]
    x = params["wte"][inputs] + params["wpe"][:t]
    for l in range(L):
        h = rmsnorm(x, params["ln1w"][l])
        qk = h @ params["qkw"][l].T
        if l == 0:
            v = params["v0_alpha"][0] * h + params["v0_beta"][0] * (h @ params["v0w"].T)
        else:
            v = h
        sa = shaped_attention(qk, v, params["attn_alpha"][l], params["attn_beta"][l], params["attn_gamma"][l])
        if block == "sas":
            xp = params["attn_gain"][l] * sa
            m = mlp(rmsnorm(xp, params["ln2w"][l]), params["fcw"][l], params["fcprojw"][l])
            x = params["mlp_gain"][l] * m + params["skip_gain"][l] * xp
        else:
            m = mlp(h, params["fcw"][l], params["fcprojw"][l])
            x = params["attn_gain"][l] * sa + params["mlp_gain"][l] * m
    return rmsnorm(x, params["lnfw"]) @ params["wte"].T


def loss_from_logits(logits, targets):
    lg = logits[..., :V]
    lse = jax.nn.logsumexp(lg, axis=-1)
    tgt = jnp.take_along_axis(lg, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - tgt)


def fd_check(loss_fn, params, grads):
    """Central differences (h = 1e-6) on a few of the largest entries of every tensor."""
    h, worst = 1e-6, 0.0
    for name, base in params.items():
        g = np.asarray(grads[name])
        for pick in np.argsort(-np.abs(g).ravel(), kind="stable")[:3]:
            idx = np.unravel_index(int(pick), base.shape)
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            fd = (float(loss_fn({**params, name: plus})) - float(loss_fn({**params, name: minus}))) / (2 * h)
            worst = max(worst, abs(fd - g[idx]) / max(abs(fd), abs(g[idx]), 1e-3))
    assert worst < 1e-6, worst
    return worst


def canonicalize_header(path):
    """Sort the metadata keys of the safetensors header in place (see gpt2_golden.py)."""
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n).decode("utf-8"))
        meta = header.pop("__metadata__")
        canon = {"__metadata__": dict(sorted(meta.items()))}
        canon.update(header)
        raw = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert len(raw) <= n
        fh.seek(8)
        fh.write(raw + b" " * (n - len(raw)))


def run(block):
    params, inputs, targets = init(block)
    names = [n for n, _, _ in param_specs(block)]
    jin, jtg = jnp.asarray(inputs), jnp.asarray(targets)
    fwd = jax.jit(lambda p, x: forward(block, p, x))
    loss_fn = jax.jit(lambda p: loss_from_logits(forward(block, p, jin), jtg))
    vg = jax.jit(jax.value_and_grad(lambda p: loss_from_logits(forward(block, p, jin), jtg)))

    logits = np.asarray(fwd(params, jin))
    loss, grads = vg(params)
    worst = fd_check(loss_fn, params, grads)
    print(f"{block}: loss {float(loss):.10f}, FD check max rel err {worst:.2e}")

    p = {k: jnp.asarray(v) for k, v in params.items()}
    m = {k: jnp.zeros_like(v) for k, v in p.items()}
    v2 = {k: jnp.zeros_like(v) for k, v in p.items()}
    losses = []
    for t in range(1, STEPS + 1):
        lt, g = vg(p)
        losses.append(float(lt))
        for k in names:
            m[k] = BETA1 * m[k] + (1 - BETA1) * g[k]
            v2[k] = BETA2 * v2[k] + (1 - BETA2) * g[k] * g[k]
            mhat, vhat = m[k] / (1 - BETA1**t), v2[k] / (1 - BETA2**t)
            wd = WEIGHT_DECAY if k in DECAYED else 0.0
            p[k] = p[k] - LR * (mhat / (jnp.sqrt(vhat) + ADAM_EPS) + wd * p[k])

    f32 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32))  # noqa: E731
    tensors = {"inputs": np.ascontiguousarray(inputs), "targets": np.ascontiguousarray(targets)}
    for k in names:
        tensors[f"param.{k}"] = f32(params[k])
        tensors[f"grad.{k}"] = f32(grads[k])
        tensors[f"final.{k}"] = f32(p[k])
    tensors["logits"] = f32(logits)
    tensors["loss"] = f32([float(loss)])
    tensors["step_losses"] = f32(losses)
    metadata = {
        "block": block, "V": str(V), "Vp": str(VP), "maxT": str(MAXT), "L": str(L), "NH": str(NH),
        "C": str(C), "B": str(B), "T": str(T), "rms_eps": repr(RMS_EPS), "lr": repr(LR),
        "beta1": repr(BETA1), "beta2": repr(BETA2), "eps": repr(ADAM_EPS),
        "weight_decay": repr(WEIGHT_DECAY), "weight_decay_params": ",".join(n for n in names if n in DECAYED),
        "steps": str(STEPS), "seed": str(SEED), "param_order": ",".join(names),
        "jax_version": jax.__version__, "numpy_version": np.__version__,
        "safetensors_version": safetensors.__version__, "generator": "tools/ref/sas_golden.py",
    }
    os.makedirs(OUT_DIR, exist_ok=True)
    out = os.path.join(OUT_DIR, f"{block.replace('-', '_')}_tiny.safetensors")
    fd, tmp = tempfile.mkstemp(prefix=".sas.", suffix=".tmp", dir=OUT_DIR)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        canonicalize_header(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


def main():
    for block in ("sas", "sas-p"):
        run(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
