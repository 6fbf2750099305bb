#!/usr/bin/env bash
# Step throughput of two octet binaries, interleaved (A, B, A, B, ...) so that load drifts hit both:
# `octet bench train --json` on the same configurations; prints tok/s per run and the median ratio.
#   BASE=/path/to/old/octet NEW=target/release/octet ROUNDS=3 bench/engine_speed_ab.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=${BASE:?set BASE to the octet binary to compare against}
NEW=${NEW:-target/release/octet}
ROUNDS=${ROUNDS:-3}
CONFIGS=${CONFIGS:-"gpt2:small:16:128:fp32 gpt2:small:16:128:fp8-o2 gpt2:gpt2-124m:4:64:fp32 gpt2:gpt2-124m:4:64:fp8-o2 llama:small:16:128:fp8-o2"}
echo "# $(date -u +%FT%TZ) $(lscpu | grep 'Model name' | sed 's/  */ /g'); base $BASE, new $NEW; load $(cut -d' ' -f1-3 /proc/loadavg)"
for c in $CONFIGS; do
  IFS=: read -r arch model b t p <<<"$c"
  a=(); n=()
  for _ in $(seq "$ROUNDS"); do
    for tag in base new; do
      bin=$BASE; [[ $tag == new ]] && bin=$NEW
      tok=$("$bin" bench train --json --arch "$arch" --model "$model" --batch "$b" --seq "$t" --precision "$p" --steps 5 --warmup 2 \
        | python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin if l.strip()][-1]["tokens_per_s"])')
      if [[ $tag == base ]]; then a+=("$tok"); else n+=("$tok"); fi
    done
  done
  python3 - "$c" "${a[*]}" "${n[*]}" <<'PY'
import statistics, sys
c, a, n = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
r = [y / x for x, y in zip(a, n)]
print(f"{c:34s} base {' '.join(f'{x:8.0f}' for x in a)} | new {' '.join(f'{x:8.0f}' for x in n)} | new/base per round {' '.join(f'{x:.2f}' for x in r)} median {statistics.median(r):.2f}")
PY
done
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)"
