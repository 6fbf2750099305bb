#!/usr/bin/env bash
# Step time per precision level on the CPU: `octet bench train` at fp32, bf16, fp8-te, fp8-o1, fp8-o2,
# interleaved over REPS rounds (so drift on a shared machine hits every level alike); prints each
# level's median tokens/s and its ratio to fp32, and writes every JSON line to bench/results-precision.jsonl.
#   bench/precision.sh            (env: MODEL=small BATCH=16 SEQ=128 STEPS=20 REPS=5 LEVELS="fp32 bf16 ...")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL=${MODEL:-small} BATCH=${BATCH:-16} SEQ=${SEQ:-128} STEPS=${STEPS:-20} REPS=${REPS:-5}
cargo build --release -p octet-cli >&2
out=bench/results-precision.jsonl
tmp=$(mktemp bench/.results-precision.XXXXXX)
trap 'rm -f "$tmp"' EXIT
for r in $(seq "$REPS"); do
  for p in ${LEVELS:-fp32 bf16 fp8-te fp8-o1 fp8-o2}; do
    target/release/octet bench train --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --precision "$p" --json >> "$tmp"
  done
done
mv "$tmp" "$out"
trap - EXIT
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["precision"], []).append(r["tokens_per_s"])
base, best = statistics.median(by["fp32"]), max(by["fp32"])
print(f"{'precision':<10} {'median tok/s':>13} {'vs fp32':>8} {'best tok/s':>11} {'vs fp32':>8}   runs")
for p, v in by.items():
    m, b = statistics.median(v), max(v)
    print(f"{p:<10} {m:>13.0f} {m / base:>8.3f} {b:>11.0f} {b / best:>8.3f}   {', '.join(f'{x:.0f}' for x in v)}")
PY
