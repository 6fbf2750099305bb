"""Golden data for octet's ggml block formats (crates/lm/src/gguf/dequant.rs), from the `gguf` package.

Writes tests/golden/gguf/kquants.json:
- `dequant`: for Q8_0, Q4_0, Q4_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, a few synthetic blocks (random bytes
  with the f16 scale fields replaced by finite f16 values: normal, negative, subnormal, zero) and
  `gguf.quants.dequantize` of them (f32, little-endian hex);
- `q8_0_quantize`: f32 rows and `gguf.quants.quantize(..., Q8_0)` of them (bit-exact with ggml's
  `quantize_row_q8_0_ref`, per the package), including an all-zero block and tiny values;
- `f16_encode`: f32 values (random, exact midpoints between neighbouring f16 values, overflow,
  underflow, subnormals) and numpy's `astype(float16)` of them (round to nearest, ties to even).

Run from the repo root: `pip install -r tools/ref/requirements-gguf.txt && python tools/ref/gguf_kquants.py`.
The output is deterministic (seeded numpy Generator); `--check` exits 1 if the committed file differs.
"""

import json
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf import quants

OUT = "tests/golden/gguf/kquants.json"

# Byte offsets of each type's f16 scale fields within a block (see dequant.rs's layout table).
F16_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def hexf32(a):
    return np.asarray(a, dtype="<f4").tobytes().hex()


def scale_values(rng, n):
    """n finite f16 scales: normal-sized of both signs, then a subnormal and a zero."""
    v = (rng.normal(size=n) * 0.02).astype(np.float16)
    if n >= 3:
        v[-2] = np.float16(3e-6)  # subnormal in f16
        v[-1] = np.float16(0.0)
    return v


def main():
    rng = np.random.default_rng(20261207)
    dequant = {}
    for ty, fields in F16_FIELDS.items():
        block_elems, block_bytes = GGML_QUANT_SIZES[ty]
        n_blocks = 3 if block_elems == 256 else 6
        blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        for off in fields:
            blocks[:, off : off + 2] = scale_values(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        values = quants.dequantize(blocks.reshape(-1), ty)
        assert values.dtype == np.float32 and values.size == n_blocks * block_elems
        assert np.isfinite(values).all()
        dequant[ty.name] = {"blocks": blocks.tobytes().hex(), "values": hexf32(values)}

    x = (rng.normal(size=(6, 32)) * np.array([[1.0], [0.05], [30.0], [1e-6], [0.0], [1.0]])).astype(np.float32)
    x[5, :8] = [127.0, -127.0, 63.5, -63.5, 0.5, -0.5, 1.5, -2.5]  # exact halves: round away from zero
    q = quants.quantize(x.reshape(-1), T.Q8_0)

    mids = []
    for h in rng.integers(0, 0x7BFF, size=24, dtype=np.uint16):
        lo = np.array([h], dtype=np.uint16).view(np.float16).astype(np.float32)[0]
        hi = np.array([h + 1], dtype=np.uint16).view(np.float16).astype(np.float32)[0]
        mids.append((np.float64(lo) + np.float64(hi)) / 2)  # exact in f32 (f16 has 11 bits)
    f = np.concatenate(
        [
            rng.normal(size=24) * 10.0,
            np.array(mids),
            [65504.0, 65519.99, 65520.0, 1e6, -1e6, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-26, 1e-8, -0.0, 0.0],
            rng.normal(size=12) * 1e-6,
        ]
    ).astype(np.float32)
    assert all(np.float32(m) == m for m in mids)
    with np.errstate(over="ignore"):
        f16 = f.astype(np.float16)

    out = {
        "generator": "tools/ref/gguf_kquants.py",
        "gguf": version("gguf"),
        "numpy": np.__version__,
        "dequant": dequant,
        "q8_0_quantize": {"input": hexf32(x.reshape(-1)), "output": q.tobytes().hex()},
        "f16_encode": {"input": hexf32(f), "output": f16.astype("<f2").tobytes().hex()},
    }
    text = json.dumps(out, indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        same = open(OUT).read() == text
        print("up to date" if same else f"{OUT} is stale")
        sys.exit(0 if same else 1)
    with open(OUT, "w") as fh:
        fh.write(text)
    print(f"wrote {OUT} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
