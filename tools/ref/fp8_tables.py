#!/usr/bin/env python3
"""Write the FP8 golden files that crates/core/tests/fp8_codec.rs checks octet's codecs against.

Reference: ml_dtypes (float8_e4m3fn, float8_e5m2), versions pinned in tools/ref/requirements-fp8.txt.

    pip install -r tools/ref/requirements-fp8.txt
    python tools/ref/fp8_tables.py            # (re)write tests/golden/fp8/
    python tools/ref/fp8_tables.py --check    # exit 1 if the committed files differ from a fresh run

Files (all raw little-endian, no header; MANIFEST.txt lists sizes, counts and sha256):
    e4m3_decode.f32le, e5m2_decode.f32le   the f32 value of each of the 256 codes, in code order
    encode_inputs.f32le                    N f32 inputs (as bit patterns), sorted by bit pattern:
                                           every bf16 bit pattern widened to f32 (65536 values: every
                                           sign and exponent, zeros, subnormals, inf, NaN) plus the
                                           hand-picked values of `hand_picked` (ties, near-ties, values
                                           around the FP8 max and the subnormal boundaries, NaN payloads)
    e4m3_encode.u8, e5m2_encode.u8         ml_dtypes' plain astype of each input (round to nearest even,
                                           non-saturating: overflow gives NaN for E4M3, inf for E5M2)
"""

import argparse
import hashlib
import pathlib
import sys

import ml_dtypes
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "golden" / "fp8"
FORMATS = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
F32_SIGN = np.uint32(0x8000_0000)
# f32 NaNs the bf16 patterns cannot produce (payload only in the low 16 bits) plus the usual ones.
EXTRA_NAN_BITS = [0x7F80_0001, 0x7F80_FFFF, 0x7FC0_0000, 0x7FC0_0001, 0x7FFF_FFFF, 0x7FA0_0000]


def decode_table(dtype) -> np.ndarray:
    """The f32 value of every code 0..=255 of `dtype`."""
    return np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)


def neighbours(v: np.ndarray) -> np.ndarray:
    """v and its two f32 neighbours (one ulp below and above)."""
    v = v.astype(np.float32)
    with np.errstate(over="ignore"):  # the neighbour above f32 max is inf, which we want
        return np.concatenate(
            [v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))]
        )


def hand_picked() -> np.ndarray:
    """Inputs where a codec is most likely to be wrong, for both formats, both signs."""
    picks = []
    for dtype in FORMATS.values():
        table = decode_table(dtype)
        finite = np.unique(table[np.isfinite(table) & (table >= 0)])  # sorted, 0 .. max
        # Every FP8 value and its f32 neighbours (exact hits, just below, just above).
        picks.append(neighbours(finite))
        # Midpoints between adjacent FP8 values: exact ties (FP8 has at most 4 significant bits, so a
        # midpoint has at most 5 and is exact in f32) and the f32 values either side of each tie.
        mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
        picks.append(neighbours(mids))
        # Beyond the max: the tie between max and the next value of the unbounded format (max + ulp),
        # that next value, twice max. The ulp at max is max minus its finite predecessor.
        fmax, ulp = np.float64(finite[-1]), np.float64(finite[-1] - finite[-2])
        picks.append(neighbours(np.array([fmax + ulp / 2, fmax + ulp, 2 * fmax])))
        # Below the smallest subnormal: the tie with zero, a quarter of it, and their neighbours.
        sub = np.float64(finite[1])
        picks.append(neighbours(np.array([sub / 2, sub / 4, sub * 1.5])))
    f32 = np.finfo(np.float32)
    picks.append(neighbours(np.array([f32.max, f32.tiny, f32.smallest_subnormal, 1.0])))
    picks.append(np.array([np.inf], dtype=np.float32))
    values = np.concatenate(picks).astype(np.float32)
    bits = values.view(np.uint32)
    bits = np.concatenate([bits, np.array(EXTRA_NAN_BITS, dtype=np.uint32)])
    return np.concatenate([bits, bits ^ F32_SIGN])  # both signs of everything, NaNs included


def encode_inputs() -> np.ndarray:
    """All inputs as u32 bit patterns, deduplicated and sorted by bit pattern."""
    bf16 = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    return np.unique(np.concatenate([bf16, hand_picked()]))


def build() -> dict[str, bytes]:
    files = {}
    for name, dtype in FORMATS.items():
        files[f"{name}_decode.f32le"] = decode_table(dtype).astype("<f4").tobytes()
    inputs = encode_inputs()
    files["encode_inputs.f32le"] = inputs.astype("<u4").tobytes()
    x = inputs.view(np.float32)
    for name, dtype in FORMATS.items():
        with np.errstate(invalid="ignore", over="ignore"):
            codes = x.astype(dtype).view(np.uint8)
        files[f"{name}_encode.u8"] = codes.tobytes()
    lines = [
        "# FP8 golden files written by tools/ref/fp8_tables.py; do not edit by hand.",
        f"ml_dtypes {ml_dtypes.__version__}",
        f"numpy {np.__version__}",
        f"encode_inputs {inputs.size}",
    ]
    for fname in sorted(files):
        data = files[fname]
        lines.append(f"file {fname} {len(data)} {hashlib.sha256(data).hexdigest()}")
    files["MANIFEST.txt"] = ("\n".join(lines) + "\n").encode()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args()
    files = build()
    if args.check:
        stale = [f for f, d in files.items() if not (args.out / f).is_file()
                 or (args.out / f).read_bytes() != d]
        for f in stale:
            print(f"stale: {args.out / f}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        (args.out / fname).write_bytes(data)
        print(f"wrote {args.out / fname} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
