#!/usr/bin/env bash
# CPU training throughput: octet vs the JAX peer (bench/peer_jax_gpt2.py), same machine, same run.
#
#   bench/cpu.sh
#
# Builds octet in release, then for each configuration runs `octet bench train --json` and the JAX
# peer with the same model/batch/seq/steps/warmup, one after the other (never concurrently), writes
# every JSON line to bench/results-cpu.jsonl (via a temp file, moved into place at the end) and
# prints a table of tokens/s with the ratio octet/jax.
#
# Environment (all optional):
#   BENCH_CONFIGS     space-separated model:batch:seq:steps
#                     (default "small:16:128:10 gpt2-124m:4:64:5 gpt2-124m:8:256:3")
#   WARMUP            untimed warm-up steps for both (default 2; JAX compiles before warm-up)
#   PYTHON            interpreter with bench/requirements-peer.txt installed (default python3)
#   OCTET_SKIP_BUILD  1 = use the existing target/release/octet instead of `cargo build`
#   OUT               results file (default bench/results-cpu.jsonl)
#
# Both sides use every CPU in the process's affinity mask by default (octet: rayon; JAX: XLA:CPU's
# intra-op pool). To pin both to N cores, run the whole script under `taskset -c 0-(N-1)`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH_CONFIGS=${BENCH_CONFIGS:-"small:16:128:10 gpt2-124m:4:64:5 gpt2-124m:8:256:3"}
WARMUP=${WARMUP:-2}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/results-cpu.jsonl}
OCTET=target/release/octet

if [[ ${OCTET_SKIP_BUILD:-0} == 1 ]]; then
    [[ -x $OCTET ]] || { echo "error: $OCTET missing (unset OCTET_SKIP_BUILD to build it)" >&2; exit 1; }
    echo "using existing $OCTET (OCTET_SKIP_BUILD=1)" >&2
else
    # A no-op when target/release/octet is up to date with the sources.
    cargo build --release -p octet-cli >&2
fi
"$PYTHON" -c 'import jax' || { echo "error: $PYTHON cannot import jax; pip install -r bench/requirements-peer.txt" >&2; exit 1; }

NPROC=$(nproc)
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^[[:space:]]*//' || true)
CPU_MODEL=${CPU_MODEL:-unknown}
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null || true) ]]; then GIT_REV="$GIT_REV-dirty"; fi
export NPROC CPU_MODEL GIT_REV

TMP=$(mktemp "$(dirname "$OUT")/.results-cpu.XXXXXX")
trap 'rm -f "$TMP"' EXIT

# Annotate one JSON line (stdin) with the runner's context and append it to $TMP.
annotate() { # peer preset
    PEER=$1 PRESET=$2 "$PYTHON" -c '
import json, os, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
if not lines:
    sys.exit("no JSON output from " + os.environ["PEER"])
r = json.loads(lines[-1])
r.setdefault("peer", os.environ["PEER"])
r["preset"] = os.environ["PRESET"]
r["nproc"] = int(os.environ["NPROC"])
r["cpu_model"] = os.environ["CPU_MODEL"]
r["octet_rev"] = os.environ["GIT_REV"]
if r["peer"] == "octet":
    r["threads"] = len(os.sched_getaffinity(0))
    r["rayon_num_threads"] = os.environ.get("RAYON_NUM_THREADS")
print(json.dumps(r))
' >>"$TMP"
}

for cfg in $BENCH_CONFIGS; do
    IFS=: read -r M B T S <<<"$cfg"
    [[ -n $M && -n $B && -n $T && -n $S ]] || { echo "error: bad config '$cfg' (want model:batch:seq:steps)" >&2; exit 1; }
    echo "== $M B=$B T=$T steps=$S warmup=$WARMUP: octet" >&2
    "$OCTET" bench train --model "$M" --batch "$B" --seq "$T" --steps "$S" --warmup "$WARMUP" --json \
        | annotate octet "$M"
    echo "== $M B=$B T=$T steps=$S warmup=$WARMUP: jax" >&2
    "$PYTHON" bench/peer_jax_gpt2.py --model "$M" --batch "$B" --seq "$T" --steps "$S" --warmup "$WARMUP" \
        | annotate jax "$M"
done

mv "$TMP" "$OUT"
trap - EXIT
echo "wrote $OUT" >&2

OUT=$OUT "$PYTHON" - <<'EOF'
import json, os
rows = [json.loads(l) for l in open(os.environ["OUT"]) if l.strip()]
print(f"nproc: {os.environ['NPROC']}   cpu: {os.environ['CPU_MODEL']}   octet: {os.environ['GIT_REV']}")
jax_v = next((r.get("jax_version") for r in rows if r["peer"] == "jax"), "?")
print(f"jax {jax_v} (XLA:CPU, float32)")
hdr = f"{'model':<10} {'B':>3} {'T':>5} {'params':>11} {'octet tok/s':>12} {'jax tok/s':>12} {'octet/jax':>10}"
print(hdr)
print("-" * len(hdr))
seen = []
for r in rows:
    key = (r["preset"], r["batch"], r["seq"])
    if key not in seen:
        seen.append(key)
for key in seen:
    by = {r["peer"]: r for r in rows if (r["preset"], r["batch"], r["seq"]) == key}
    o, j = by.get("octet"), by.get("jax")
    ot = o["tokens_per_s"] if o else float("nan")
    jt = j["tokens_per_s"] if j else float("nan")
    params = (o or j)["params"]
    ratio = ot / jt if o and j and jt > 0 else float("nan")
    print(f"{key[0]:<10} {key[1]:>3} {key[2]:>5} {params:>11,} {ot:>12.0f} {jt:>12.0f} {ratio:>9.2f}x")
EOF
