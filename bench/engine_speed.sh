#!/usr/bin/env bash
# Training throughput before and after the engine redesign (issue 13), measured in the same run on the
# same machine: `octet bench train` of the BASE binary (built before the redesign) and the NEW one,
# interleaved config by config and round by round (this VM's speed drifts by 10-15% over minutes, so
# each pair runs back to back). Writes every JSON line to bench/engine/speed.jsonl and prints the median
# tokens/s per configuration and binary and the ratio new / base.
#   BASE=/path/to/old/octet NEW=target/release/octet bench/engine_speed.sh
# Env: CONFIGS (space-separated model:batch:seq:steps:precision[:block]), ROUNDS (default 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=${BASE:?set BASE to the octet binary built before the redesign}
NEW=${NEW:-target/release/octet}
ROUNDS=${ROUNDS:-3}
CONFIGS=${CONFIGS:-"small:16:128:10:fp32 small:16:128:10:fp8-o2 small:16:128:10:fp32:sas-p gpt2-124m:4:64:5:fp32 gpt2-124m:8:256:3:fp32"}
OUT=${OUT:-bench/engine/speed.jsonl}
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^[[:space:]]*//')
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for cfg in $CONFIGS; do
    IFS=: read -r M B T S P K <<<"$cfg"
    for which in base new; do
      bin=$BASE; [[ $which == new ]] && bin=$NEW
      extra=(); [[ -n ${K:-} ]] && extra=(--block "$K")
      line=$("$bin" bench train --model "$M" --batch "$B" --seq "$T" --steps "$S" --warmup 2 --precision "$P" "${extra[@]}" --json)
      WHICH=$which ROUND=$r CFG=$cfg CPU="$CPU_MODEL" LOAD="$(cut -d' ' -f1 /proc/loadavg)" python3 -c '
import json, os, sys
d = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(json.dumps({"binary": os.environ["WHICH"], "round": int(os.environ["ROUND"]), "config": os.environ["CFG"],
                  "tokens_per_s": d["tokens_per_s"], "median_step_ms": d["median_step_ms"], "params": d["params"],
                  "peak_rss_bytes": d["peak_rss_bytes"], "cpu_model": os.environ["CPU"], "load1": float(os.environ["LOAD"])}))' \
        <<<"$line" | tee -a "$tmp" >&2
    done
  done
done
mv "$tmp" "$OUT"; trap - EXIT
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"| config | params | base tok/s | new tok/s | new / base | rounds |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for cfg in dict.fromkeys(r["config"] for r in rows):
    med = {w: statistics.median(r["tokens_per_s"] for r in rows if r["config"] == cfg and r["binary"] == w) for w in ("base", "new")}
    n = sum(1 for r in rows if r["config"] == cfg and r["binary"] == "new")
    p = next(r["params"] for r in rows if r["config"] == cfg)
    print(f"| {cfg} | {p/1e6:.2f}M | {med['base']:,.0f} | {med['new']:,.0f} | {med['new']/med['base']:.3f} | {n} |")
PY
