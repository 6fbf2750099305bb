#!/usr/bin/env bash
# Step time per precision level at the parity model (GPT-2 6 layers, d=256, 8 heads, B=8, T=128,
# tinyshakespeare): `octet train --steps 40` per level, interleaved over ROUNDS rounds on one prepared
# data directory; prints tokens/s (mean over the 40 steps) and training seconds per run.
#   bench/precision_parity_model.sh     (env: ROUNDS=2 LEVELS="bf16 fp8-te fp8-o1 fp8-o2" OCTET=target/release/octet)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-2}
LEVELS=${LEVELS:-"bf16 fp8-te fp8-o1 fp8-o2"}
DATA=${DATA:-../shared/data/tinyshakespeare/input.txt}
OCTET=${OCTET:-}
if [[ -z $OCTET ]]; then
  cargo build --release -p octet-cli >&2
  OCTET=target/release/octet
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=(--model small --n-layer 6 --n-embd 256 --n-head 8 --vocab-size 1024 --batch 8 --seq 128)
"$OCTET" train --json --data "$DATA" --out "$work/prep" --steps 1 "${model[@]}" --eval-every 0 --checkpoint-every 0 > /dev/null
for r in $(seq "$ROUNDS"); do
  for p in $LEVELS; do
    "$OCTET" train --json --data "$work/prep/data" --out "$work/run-$p-$r" --precision "$p" "${model[@]}" \
      --steps 40 --lr 1e-3 --eval-every 0 --checkpoint-every 0 --seed 1337 | tail -1 |
      python3 -c "import json,sys; v=json.loads(sys.stdin.read()); print('$p', $r, round(v['tokens_per_s']), round(v['train_seconds'], 2))"
  done
done
