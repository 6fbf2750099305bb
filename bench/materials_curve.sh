#!/usr/bin/env bash
# GNoME learning curves on the CPU (cf. GNoME Fig. 1e): held-out MAE (meV/atom) against training-set
# size, for the structural model on flla_2015 and the compositional model on OQMD, each point one
# `octet materials train --max-train N` run (a seeded random subset of the training formulas; the
# held-out test split is fixed). Epochs shrink as N grows so every point costs about the same number
# of graph visits (VISITS_S / VISITS_C). One summary JSON line per run is appended to
# bench/materials/curve.jsonl, then bench/materials_curve_plot.py draws bench/materials/curve.png.
#   bench/materials_curve.sh     (env: S_SIZES="250 500 1000 2000" C_SIZES="1000 4000 16000 64000"
#                                 VISITS_S=60000 VISITS_C=1000000 C_MAX_TEST= WIDTH=128
#                                 OCTET=path/to/octet to use a prebuilt binary)
# Needs the data sets from `octet materials data`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
S_SIZES=${S_SIZES:-"250 500 1000 2000"}
C_SIZES=${C_SIZES:-"1000 4000 16000 64000"}
VISITS_S=${VISITS_S:-60000}
VISITS_C=${VISITS_C:-1000000}
C_MAX_TEST=${C_MAX_TEST:-}
WIDTH=${WIDTH:-128}
OCTET=${OCTET:-}
if [[ -z $OCTET ]]; then
  cargo build --release -p octet-cli >&2
  OCTET=target/release/octet
fi
mkdir -p bench/materials
out=bench/materials/curve.jsonl
run() { # model size epochs extra...
  local model=$1 size=$2 epochs=$3; shift 3
  echo "== $model N=$size epochs=$epochs" >&2
  dir=$(mktemp -d)
  "$OCTET" materials train --json --model "$model" --max-train "$size" --epochs "$epochs" \
    --patience "$epochs" --width "$WIDTH" --out "$dir" "$@" | tail -n 1 >> "$out"
  rm -rf "$dir"
}
for n in $S_SIZES; do
  run structural "$n" $(( (VISITS_S + n - 1) / n ))
done
for n in $C_SIZES; do
  run compositional "$n" $(( (VISITS_C + n - 1) / n > 200 ? 200 : (VISITS_C + n - 1) / n )) \
    ${C_MAX_TEST:+--max-test "$C_MAX_TEST"} --batch 64
done
python3 bench/materials_curve_plot.py "$out" bench/materials/curve.png
