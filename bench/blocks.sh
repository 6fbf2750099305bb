#!/usr/bin/env bash
# Simplified transformer blocks on the CPU (issue 4): the same LM (8 layers, d=256, 8 heads, T=128,
# BPE vocabulary 1024), same data (tinyshakespeare), same seed, batches and steps, trained once per
# block: preln, parallel, sas, sas-p, sas-p-nonorm. One JSON line per step and evaluation per block
# under bench/blocks/, then bench/blocks_plot.py draws loss vs step and vs wall time and prints the
# table (parameters, tokens/s, validation loss at equal steps and at equal wall time).
#   bench/blocks.sh            (env: BLOCKS="preln parallel sas sas-p sas-p-nonorm" STEPS=2000 LAYERS=8
#                               PRECISION=fp32 DATA=../shared/data/tinyshakespeare/input.txt
#                               OCTET=path/to/octet to use a prebuilt binary instead of building one)
# Time: ~30 min per block at 8 layers on 2 cores (LAYERS=6 for ~25% less).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BLOCKS=${BLOCKS:-"preln parallel sas sas-p sas-p-nonorm"}
STEPS=${STEPS:-2000}
LAYERS=${LAYERS:-8}
PRECISION=${PRECISION:-fp32}
DATA=${DATA:-../shared/data/tinyshakespeare/input.txt}
[[ -f $DATA ]] || { echo "error: $DATA not found (set DATA=path/to/tinyshakespeare/input.txt)" >&2; exit 1; }
OCTET=${OCTET:-}
if [[ -z $OCTET ]]; then
  cargo build --release -p octet-cli >&2
  OCTET=target/release/octet
fi
if ! "$OCTET" train --help | grep -q -- '--block'; then
  echo "error: $OCTET train has no --block flag yet (the blocks model is in crates/lm/src/blocks.rs)" >&2
  exit 1
fi
mkdir -p bench/blocks
for k in $BLOCKS; do
  echo "== $k" >&2
  run=$(mktemp -d)
  "$OCTET" train --json --data "$DATA" --out "$run" --block "$k" --precision "$PRECISION" \
    --model small --n-layer "$LAYERS" --n-embd 256 --n-head 8 --vocab-size 1024 \
    --steps "$STEPS" --batch 8 --seq 128 --lr 1e-3 --eval-every 100 --checkpoint-every 0 --seed 1337 \
    > "bench/blocks/.$k.jsonl.tmp"
  mv "bench/blocks/.$k.jsonl.tmp" "bench/blocks/$k.jsonl"
  rm -rf "$run"
done
python3 bench/blocks_plot.py bench/blocks | tee bench/blocks/table.md
