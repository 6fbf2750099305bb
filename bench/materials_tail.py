#!/usr/bin/env python3
"""Where a structural model's error on flla_2015 comes from: MAE by split and by energy above hull.

Usage:
  octet materials predict --model runs/X --data <cache>/datasets/flla_2015.jsonl --out pred.csv
  python3 bench/materials_tail.py pred.csv [<cache>/matminer-0.3.9.tar.gz]

The split is recomputed exactly as octet does (crates/materials/src/dataset.rs, train.rs): test when
FNV-1a 64 of the reduced formula mod 10,000 < 1,500; of the rest, early-stopping validation when
(hash / 10,000) mod 10 == 0. `e_above_hull` is not in octet's data set (it is a label, not an input),
so it is read from matminer's flla_2015.csv inside the sdist that `octet materials data` cached.
Prints a markdown table: per split and hull band, count, MAE and the band's share of the split's MAE.
"""

import csv
import io
import os
import sys
import tarfile

BANDS = [(0.0, 0.001), (0.001, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, float("inf"))]


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def split_of(formula):
    h = fnv1a64(formula)
    if h % 10_000 < 1_500:
        return "test"
    return "valid" if (h // 10_000) % 10 == 0 else "train"


def e_above_hull(sdist):
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("datasets/flla_2015.csv"))
        text = tar.extractfile(member).read().decode()
    csv.field_size_limit(1 << 30)
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    return {r["material_id"]: float(r["e_above_hull"]) for r in rows}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pred_path = sys.argv[1]
    sdist = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser(
        "~/.cache/octet/materials/matminer-0.3.9.tar.gz")
    hull = e_above_hull(sdist)
    with open(pred_path) as f:
        preds = list(csv.DictReader(f))
    missing = [p["id"] for p in preds if p["id"] not in hull]
    if missing:
        sys.exit(f"{pred_path}: {len(missing)} ids not in flla_2015.csv (first: {missing[0]})")
    print("| split | e_above_hull (eV/atom) | structures | MAE (meV/atom) | share of the split's MAE (meV/atom) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for split in ["train", "valid", "test"]:
        rows = [p for p in preds if split_of(p["formula"]) == split]
        errs = [(abs(float(p["energy_per_atom"]) - float(p["target"])), hull[p["id"]]) for p in rows]
        total = sum(e for e, _ in errs)
        print(f"| {split} | all | {len(errs)} | {1000 * total / len(errs):.1f} | |")
        for lo, hi in BANDS:
            band = [e for e, h in errs if lo <= h < hi]
            if band:
                label = f"[{lo:g}, {hi:g})" if hi != float("inf") else f">= {lo:g}"
                print(f"| {split} | {label} | {len(band)} | {1000 * sum(band) / len(band):.1f} "
                      f"| {1000 * sum(band) / len(errs):.1f} |")


if __name__ == "__main__":
    main()
