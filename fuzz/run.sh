#!/usr/bin/env bash
# Run every fuzz target to RUNS executions or SECONDS seconds, whichever comes first, one after the
# other, with a 2 GiB RSS limit and a 10 s per-input timeout; prints one summary line per target
# (runs, coverage, features, crashes) and keeps the full logs in fuzz/logs/.
# Usage: bash fuzz/run.sh [RUNS=1000000] [SECONDS=1800] [targets...]
set -uo pipefail
cd "$(dirname "$0")"
RUNS=${1:-1000000}; SECS=${2:-1800}; shift 2 2>/dev/null || true
TARGETS=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v octet-fuzz)}
mkdir -p logs
for t in $TARGETS; do
  mkdir -p corpus/$t
  start=$(date +%s)
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -runs="$RUNS" -max_total_time="$SECS" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "logs/$t.log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
  crashes=$(ls artifacts/$t 2>/dev/null | grep -c -E '^(crash|oom|timeout|leak)-' || true)
  echo "$t runs=${runs:-?} cov=${cov:-?} ft=${ft:-?} seconds=$(( $(date +%s) - start )) exit=$rc crashes=$crashes"
done
