#!/usr/bin/env bash
# The engine redesign (one decoder shell, issue 13) must leave every number as it was: this trains the
# same runs with two octet binaries (BASE, the commit before the redesign, and NEW) and checks that
# every step loss and validation loss is bit-identical, for GPT-2 at every precision level and every
# simplified block at fp32 and fp8-o2. Loss curves and parity numbers in BENCHMARKS.md therefore carry
# over unchanged; only speed needs measuring again (bench/engine_speed.sh).
#   BASE=/path/to/old/octet NEW=target/release/octet bench/engine_identical.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=${BASE:?set BASE to the octet binary built before the redesign}
NEW=${NEW:-target/release/octet}
STEPS=${STEPS:-40}
DATA=${DATA:-../shared/data/tinyshakespeare/input.txt}
OUT=${OUT:-bench/engine/identical.txt}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
run() { # binary tag extra...
  local bin=$1 tag=$2; shift 2
  "$bin" train --json --data "$DATA" --out "$tmp/$tag" --model small --steps "$STEPS" --batch 8 --seq 64 \
    --eval-every 20 --checkpoint-every 0 --seed 7 "$@" 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    d = json.loads(l)
    if d.get("event") in ("step", "eval"):
        print(d["event"], d["step"], repr(d.get("loss", d.get("val_loss"))))'
}
{
  echo "# octet engine redesign: bit-identical losses, $STEPS steps (base $BASE vs new $NEW), $(date -u +%F)"
  cases=()
  for p in fp32 bf16 fp8-te fp8-o1 fp8-o2; do cases+=("--precision $p"); done
  for k in preln parallel sas sas-p sas-p-nonorm; do for p in fp32 fp8-o2; do cases+=("--block $k --precision $p"); done; done
  for p in fp32 bf16 fp8-o2; do cases+=("--arch llama --precision $p"); done
  cases+=("--arch llama --block sas-p --precision fp8-o2")
  for c in "${cases[@]}"; do
    # shellcheck disable=SC2086
    a=$(run "$BASE" a $c); rm -rf "$tmp/a"
    # shellcheck disable=SC2086
    b=$(run "$NEW" b $c); rm -rf "$tmp/b"
    n=$(echo "$a" | grep -c . || true)
    if [[ -n $a && "$a" == "$b" ]]; then
      echo "identical  $c  ($n losses; last: $(echo "$a" | tail -1))"
    else
      echo "DIFFERENT  $c"
      diff <(echo "$a") <(echo "$b") | head -5
    fi
  done
} | tee "$OUT"
fails=$(grep -c '^DIFFERENT' "$OUT" || true)
echo "# $fails case(s) differ" | tee -a "$OUT"
[[ $fails == 0 ]]
