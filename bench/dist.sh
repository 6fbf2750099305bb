#!/usr/bin/env bash
# Data-parallel benchmark (issue 17): the bar run (fp8-o2, 200 steps, 1 process vs mpirun -np 2 on the
# same global batch), bytes on the wire per step per level (2 ranks), and tokens/s on 1 vs 2 ranks,
# interleaved. Needs `cargo build --release --features octet-cli/mpi`. Raw JSON lines go to bench/dist/.
# The machine is shared (2 cores, other builds running): throughput numbers are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
O=target/release/octet
R=bench/dist
T=$(mktemp -d)
MPI="mpirun --allow-run-as-root --oversubscribe -np 2"
# `bench/dist.sh speed` reruns only section 3 (into speed_*.json, with its own load readings).
if [ "${1:-}" = speed ]; then SPEED_ONLY=1; else SPEED_ONLY=0; fi
if [ $SPEED_ONLY = 0 ]; then
lscpu | grep 'Model name' > $R/machine.txt
nproc >> $R/machine.txt
uptime >> $R/machine.txt
# 1. The bar: fp8-o2, 200 steps, default model and global batch (16 x 128), 1 vs 2 ranks.
$O train --precision fp8-o2 --steps 200 --json --out $T/bar1 > $R/bar_fp8-o2_1rank.jsonl
$MPI $O train --precision fp8-o2 --steps 200 --json --out $T/bar2 > $R/bar_fp8-o2_2ranks.jsonl
# 2. Bytes per step at each level on 2 ranks (20 steps; the counts do not depend on the data).
for p in fp32 bf16 fp8-te fp8-o1 fp8-o2; do
  $MPI $O train --precision $p --steps 20 --eval-every 0 --checkpoint-every 0 --json --out $T/bytes-$p \
    | tail -1 > $R/bytes_$p.json
done
$MPI $O train --precision fp8-o2 --zero --steps 20 --eval-every 0 --checkpoint-every 0 --json --out $T/bytes-zero \
  | tail -1 > $R/bytes_fp8-o2-zero.json
fi
uptime > $R/speed_load.txt
# 3. Tokens/s, 1 vs 2 ranks (2 ranks also with one rayon thread each), interleaved, two rounds.
for round in 1 2; do
  for p in fp32 fp8-o2; do
    a="--precision $p --steps 60 --eval-every 0 --checkpoint-every 0 --json"
    $O train $a --out $T/t1-$p-$round | tail -1 > $R/speed_${p}_1rank_r$round.json
    $MPI $O train $a --out $T/t2-$p-$round | tail -1 > $R/speed_${p}_2ranks_r$round.json
    $MPI -x RAYON_NUM_THREADS=1 $O train $a --out $T/t3-$p-$round | tail -1 > $R/speed_${p}_2ranks_1thread_r$round.json
  done
done
uptime >> $R/speed_load.txt
[ $SPEED_ONLY = 1 ] || uptime >> $R/machine.txt
rm -rf $T
