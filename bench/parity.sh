#!/usr/bin/env bash
# FP8-LM loss parity on the CPU: the same GPT-2 (6 layers, d=256, 8 heads, T=128), same data
# (tinyshakespeare), same seed and batches, trained at each precision level; one JSON line per step and
# evaluation per level under bench/parity/, then bench/parity_plot.py draws the curves and the table.
#   bench/parity.sh            (env: LEVELS="bf16 fp8-te fp8-o1 fp8-o2" STEPS=2000 DATA=../shared/data/tinyshakespeare/input.txt
#                               OCTET=path/to/octet to use a prebuilt binary instead of building one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LEVELS=${LEVELS:-"bf16 fp8-te fp8-o1 fp8-o2"}
STEPS=${STEPS:-2000}
DATA=${DATA:-../shared/data/tinyshakespeare/input.txt}
[[ -f $DATA ]] || { echo "error: $DATA not found (set DATA=path/to/tinyshakespeare/input.txt)" >&2; exit 1; }
OCTET=${OCTET:-}
if [[ -z $OCTET ]]; then
  cargo build --release -p octet-cli >&2
  OCTET=target/release/octet
fi
mkdir -p bench/parity
for p in $LEVELS; do
  echo "== $p" >&2
  run=$(mktemp -d)
  "$OCTET" train --json --data "$DATA" --out "$run" --precision "$p" \
    --model small --n-layer 6 --n-embd 256 --n-head 8 --vocab-size 1024 \
    --steps "$STEPS" --batch 8 --seq 128 --lr 1e-3 --eval-every 100 --checkpoint-every 0 --seed 1337 \
    > "bench/parity/.$p.jsonl.tmp"
  mv "bench/parity/.$p.jsonl.tmp" "bench/parity/$p.jsonl"
  rm -rf "$run"
done
python3 bench/parity_plot.py bench/parity
