#!/usr/bin/env bash
# GPU benchmark (issues 7 and 18): kernel checks, a memory check, then GPT-2 124M training throughput
# of octet's CUDA step next to the PyTorch peer (bench/peer_torch_gpt2.py) on the same GPU, same run.
#
# The GPU machine has CUDA 13, a driver, PyTorch 2.11 and Python, but no Rust toolchain, so this runs
# in two places:
#
#   bench/gpu.sh build     # on the CPU machine (Rust, no CUDA needed): builds the binaries, stripped,
#                          # into target/gpu/ and checks that the tree that travels stays under 64 MiB
#   bench/gpu.sh           # on the GPU machine: checks, then benchmarks (about 5 minutes on an H200)
#   bench/gpu_dryrun.sh    # here: this script over stub binaries (results table and failure paths)
#
# Through the device tool: run(command="bash bench/gpu.sh", carry=["target/gpu"], timeout_s=600); its
# $OUT is a folder, so results-gpu.jsonl and gpu.log come back from there.
#
# What the GPU run does (no step stops a later one: a failed check is recorded, the benchmarks and
# the peer still run, and the exit status is 1 if anything failed):
#   1. prints the device (nvidia-smi) and makes libnvrtc, libcublasLt and cuda_fp8.h findable: the
#      toolkit's /usr/local/cuda/lib64 first, then the NVIDIA wheels PyTorch installed
#      (site-packages/nvidia/cu13/{lib,include}; cuda_nvrtc/lib);
#   2. kernel checks: `octet device`, then target/gpu/octet-cuda-{nvrtc,kernels,llama_kernels,gemm,backend}
#      (the test binaries of crates/cuda/tests/*.rs: the sm_90 cubin, every NVRTC kernel of the GPT-2
#      and Llama steps, the device AdamW, the cuBLASLt bf16/FP8 GEMMs, models trained on the
#      CudaBackend against the CPU), each under a time limit. Here a skipped test (no driver/GPU) is a
#      failure;
#   3. compute-sanitizer memcheck over the kernel tests for at most SANITIZER_TIMEOUT seconds, where the
#      machine's runtime allows it (Firecracker; on gVisor it refuses the device, so it is skipped and
#      recorded as such);
#   4. octet's GPT-2 124M training step on the device, `octet bench train --device cuda`, at each of
#      OCTET_PRECISIONS, each under a time limit; a run that fails or times out is recorded, not dropped;
#   5. the PyTorch peer at B=16, T=1024: eager, then torch.compile (bf16 autocast; tokens/s, MFU, peak
#      memory), each under a time limit;
#   6. the variants, so one run compares them: the bf16/FP8 GEMMs on cuBLASLt (OCTET_LT_PRECISIONS;
#      UNVERIFIED code until this runs), then the tiled attention kernels (OCTET_TILED_PRECISIONS).
# The whole run stays inside DEADLINE (540 s): each step's limit is cut to what is left.
# Every result is a JSON line in $RESULTS (written to a temp file, moved into place at the end) and
# a table is printed. On the device machine $OUT is a folder: results go to $OUT/results-gpu.jsonl and
# the whole log to $OUT/gpu.log.
#
# Environment (all optional):
#   BATCH, SEQ        peer and octet batch and sequence length (default 16, 1024)
#   STEPS, WARMUP     timed / untimed peer steps (default 20, 5)
#   PYTHON            interpreter with torch 2.11 (default python3)
#   PEER              the peer script (default bench/peer_torch_gpt2.py)
#   GPU_BIN           directory of the prebuilt binaries (default target/gpu)
#   OCTET_PRECISIONS  octet precision levels for step 4 (default "bf16 fp8-o2"), row attention kernels
#   OCTET_TILED_PRECISIONS  levels run again with the tiled attention kernels (default "bf16"; "" none)
#   OCTET_LT_PRECISIONS     levels run again with their GEMMs on cuBLASLt (default "bf16 fp8-o2"; "" none)
#   OCTET_STEPS, OCTET_WARMUP, OCTET_TIMEOUT   timed / untimed octet steps, seconds per level (5, 1, 120)
#   CHECK_TIMEOUT     seconds per kernel-check binary (default 90); PEER_TIMEOUT per peer run (200)
#   DEADLINE          seconds for the whole run (default 540, inside the device's 600 s per command):
#                     each step's limit is cut to what is left, and steps past it are recorded as skipped
#   SANITIZER_TIMEOUT seconds of memcheck (default 60; 0 skips it)
#   SKIP_KERNELS=1    skip steps 2-3;  SKIP_OCTET=1  skip step 4;  SKIP_PEER=1  skip step 5
#   CUDA_HOME         the toolkit (default /usr/local/cuda); NV_WHEELS the wheels' nvidia/ folder
#   RESULTS           results file (default $OUT/results-gpu.jsonl if $OUT is a folder, else
#                     bench/results-gpu.jsonl)
#   MAX_TREE_MIB      `build`: the limit on tracked files + target/gpu (default 64, the device's)
set -uo pipefail
cd "$(dirname "$0")/.."

BATCH=${BATCH:-16}
SEQ=${SEQ:-1024}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
PYTHON=${PYTHON:-python3}
PEER=${PEER:-bench/peer_torch_gpt2.py}
GPU_BIN=${GPU_BIN:-target/gpu}
OCTET_PRECISIONS=${OCTET_PRECISIONS:-bf16 fp8-o2}
OCTET_TILED_PRECISIONS=${OCTET_TILED_PRECISIONS-bf16}
OCTET_LT_PRECISIONS=${OCTET_LT_PRECISIONS-bf16 fp8-o2}
OCTET_STEPS=${OCTET_STEPS:-5}
OCTET_WARMUP=${OCTET_WARMUP:-1}
OCTET_TIMEOUT=${OCTET_TIMEOUT:-120}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-90}
PEER_TIMEOUT=${PEER_TIMEOUT:-200}
DEADLINE=${DEADLINE:-540}
SANITIZER_TIMEOUT=${SANITIZER_TIMEOUT:-60}
CHECKS="nvrtc kernels llama_kernels gemm backend"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

if [[ "${1:-}" == "build" ]]; then
    set -e
    # The kernel checks: the octet-cuda test binaries, built with the `cuda` feature (cudarc loads CUDA
    # at run time, so this needs no CUDA here). `cargo test --no-run` prints each executable's path in
    # its JSON messages. Binaries are stripped (debug info is 90% of them: 218 MiB -> ~27 MiB).
    mkdir -p "$GPU_BIN"
    exes=$(cargo test --release -p octet-cuda --features cuda --no-run --message-format=json 2>/dev/null \
        | "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["test"] and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
    for name in $CHECKS; do
        exe=$(awk -v n="$name" '$1 == n { print $2 }' <<<"$exes")
        [[ -n "$exe" ]] || { echo "gpu.sh build: no $name test executable found" >&2; exit 1; }
        cp "$exe" "$GPU_BIN/octet-cuda-$name"
    done
    # The CLI with the CUDA backend: `octet device` and `octet bench train --device cuda`.
    cargo build --release -p octet-cli --features cuda
    cp "${CARGO_TARGET_DIR:-target}/release/octet" "$GPU_BIN/octet"
    strip "$GPU_BIN"/octet "$GPU_BIN"/octet-cuda-*
    # What travels to the device: tracked files (and untracked ones git does not ignore) plus the
    # carried target/gpu, 64 MiB in all.
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    bin=$(du -cb "$GPU_BIN" | tail -n 1 | cut -f1)
    limit=$(( ${MAX_TREE_MIB:-64} << 20 ))
    echo "travels: tree $((tree >> 20)) MiB + $GPU_BIN $((bin >> 20)) MiB = $(((tree + bin) >> 20)) MiB (limit $((limit >> 20)) MiB)"
    (( tree + bin < limit )) || { echo "gpu.sh build: the carried tree is over the limit" >&2; exit 1; }
    echo "built $GPU_BIN/{octet,octet-cuda-{${CHECKS// /,}}}; run bench/gpu.sh on the GPU machine with carry [\"$GPU_BIN\"]"
    exit 0
fi

if [[ -z "${RESULTS:-}" ]]; then
    if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then RESULTS="$OUT/results-gpu.jsonl"; else RESULTS=bench/results-gpu.jsonl; fi
fi
if [[ -n "${OUT:-}" && -d "${OUT}" && -z "${GPU_SH_LOGGING:-}" ]]; then
    # The whole log comes back too (the device returns only the tail of stdout).
    export GPU_SH_LOGGING=1
    exec > >(tee "$OUT/gpu.log") 2>&1
fi
tmp=$(mktemp "${RESULTS}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
failed=0
record() { echo "$1" | tee -a "$tmp"; }
# Seconds a step may take: its own limit, cut to what is left before DEADLINE (seconds since the
# start); fails when less than 5 s are left, and the step is recorded as skipped.
limit() {
    local want=$1 left=$((DEADLINE - SECONDS))
    (( left < 5 )) && return 1
    (( left < want )) && want=$left
    echo "$want"
}

echo "== device"
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"

# Libraries and headers: the toolkit's first, then the wheels that came with PyTorch.
nv_dir=${NV_WHEELS:-$(timeout 60 "$PYTHON" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null || true)}
libs=""
for d in "$CUDA_HOME"/lib64 "$nv_dir"/cu13/lib "$nv_dir"/cuda_nvrtc/lib "$nv_dir"/cublas/lib; do
    [[ -d "$d" ]] && libs="${libs:+$libs:}$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if [[ -z "${OCTET_CUDA_INCLUDE:-}" && ! -f "$CUDA_HOME"/include/cuda_fp8.h ]]; then
    for d in "$nv_dir"/cu13/include "$nv_dir"/cuda_runtime/include; do
        [[ -f "$d/cuda_fp8.h" ]] && export OCTET_CUDA_INCLUDE="$d" && break
    done
fi

echo "== octet device"
timeout 60 "$GPU_BIN/octet" device || echo "octet device: no usable CUDA device (the kernel checks below will say why)" >&2

# One test binary under its limit: a JSON line with pass / FAIL / timeout / skipped and the counts.
check() { # name, command...
    local name=$1; shift
    local log; log=$(mktemp)
    local t
    t=$(limit "$CHECK_TIMEOUT") || { record "{\"check\": \"$name\", \"status\": \"skipped\", \"why\": \"out of time (DEADLINE)\"}"; failed=1; return; }
    timeout "$t" "$@" --test-threads=1 --nocapture >"$log" 2>&1
    local rc=$?
    cat "$log"
    local passed failed_n status
    passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    failed_n=$(sed -n 's/^test result: .* \([0-9][0-9]*\) failed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    if [[ $rc == 124 ]]; then status=timeout
    elif grep -q 'SKIPPED' "$log"; then status=skipped
    elif [[ $rc == 0 ]]; then status=pass
    else status=FAIL
    fi
    rm -f "$log"
    [[ $status == pass ]] || failed=1
    record "{\"check\": \"$name\", \"status\": \"$status\", \"passed\": $passed, \"failed\": $failed_n, \"exit\": $rc}"
}

if [[ "${SKIP_KERNELS:-0}" != 1 ]]; then
    echo "== kernel checks (CUDA kernels, device AdamW and cuBLASLt GEMMs vs the CPU reference)"
    for t in $CHECKS; do
        echo "-- octet-cuda-$t"
        check "$t" "$GPU_BIN/octet-cuda-$t"
    done

    echo "== compute-sanitizer memcheck (kernel tests, at most ${SANITIZER_TIMEOUT}s)"
    san=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer 2>/dev/null || true)
    if [[ "$SANITIZER_TIMEOUT" == 0 ]]; then
        record '{"check": "memcheck", "status": "skipped", "why": "SANITIZER_TIMEOUT=0"}'
    elif [[ -z "$san" ]]; then
        record '{"check": "memcheck", "status": "skipped", "why": "no compute-sanitizer"}'
    elif [[ "${GPU_SH_KERNEL:-$(uname -r)}" == 4.4.0* ]] || { [[ -z "${GPU_SH_KERNEL:-}" ]] && grep -qi gvisor /proc/version 2>/dev/null; }; then
        record '{"check": "memcheck", "status": "skipped", "why": "gVisor runtime (compute-sanitizer refuses the device there)"}'
    else
        log=$(mktemp)
        timeout "$(limit "$SANITIZER_TIMEOUT" || echo 1)" "$san" --tool memcheck --error-exitcode 99 --print-limit 20 \
            "$GPU_BIN/octet-cuda-kernels" --test-threads=1 >"$log" 2>&1
        rc=$?
        tail -n 40 "$log"
        errors=$(sed -n 's/^========= ERROR SUMMARY: \([0-9][0-9]*\) error.*/\1/p' "$log" | tail -n 1)
        passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
        ran=$(grep -c '^test .* \.\.\. ' "$log" || true)
        rm -f "$log"
        # A timeout is a partial check: the tests it reached are reported, no error among them.
        if [[ $rc == 124 ]]; then status=partial; elif [[ $rc == 0 ]]; then status=pass; else status=FAIL; failed=1; fi
        record "{\"check\": \"memcheck\", \"status\": \"$status\", \"errors\": ${errors:-null}, \"tests_run\": $ran, \"passed\": $passed, \"exit\": $rc}"
    fi
fi

# One octet training benchmark: precision, attention kernels, linear GEMMs.
octet_run() {
    local p=$1 att=$2 lin=$3 t
    t=$(limit "$OCTET_TIMEOUT") || { record "{\"octet\": \"skipped\", \"precision\": \"$p\", \"attention\": \"$att\", \"linear\": \"$lin\", \"why\": \"out of time (DEADLINE)\"}"; return; }
    echo "== octet GPT-2 124M training step on the GPU, $p, attention $att, linear $lin, B=$BATCH T=$SEQ"
    local out status line what
    out=$(OCTET_CUDA_ATTENTION=$att OCTET_CUDA_LINEAR=$lin timeout "$t" "$GPU_BIN/octet" bench train --device cuda \
        --model gpt2-124m --batch "$BATCH" --seq "$SEQ" --precision "$p" --steps "$OCTET_STEPS" \
        --warmup "$OCTET_WARMUP" --json)
    status=$?
    line=$(tail -n 1 <<<"$out")
    if [[ $status == 0 && "$line" == "{"* ]]; then
        record "{\"attention\": \"$att\", \"linear\": \"$lin\", ${line#\{}"
    else
        what=$([[ $status == 124 ]] && echo "timeout after ${t}s" || echo "exit status $status")
        echo "octet $p ($att attention, $lin linear): $what" >&2
        failed=1
        record "{\"octet\": \"failed\", \"precision\": \"$p\", \"attention\": \"$att\", \"linear\": \"$lin\", \"why\": \"$what\"}"
    fi
}

# The levels of OCTET_PRECISIONS with the row attention kernels and f32 GEMMs, then the peer, then
# the variants: OCTET_LT_PRECISIONS with the GEMMs on cuBLASLt (OCTET_CUDA_LINEAR=lt) and
# OCTET_TILED_PRECISIONS with the tiled attention kernels (OCTET_CUDA_ATTENTION=tiled), so one run
# compares them.
if [[ "${SKIP_OCTET:-0}" != 1 ]]; then
    for p in $OCTET_PRECISIONS; do octet_run "$p" rows sgemm; done
fi

if [[ "${SKIP_PEER:-0}" != 1 ]]; then
    for compile in "" "--compile"; do
        c=$([[ -n $compile ]] && echo true || echo false)
        t=$(limit "$PEER_TIMEOUT") || { record "{\"peer\": \"failed\", \"compile\": $c, \"why\": \"out of time (DEADLINE)\"}"; continue; }
        echo "== PyTorch peer ${compile:-(eager)} B=$BATCH T=$SEQ"
        out=$(timeout "$t" "$PYTHON" "$PEER" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" $compile)
        status=$?
        line=$(tail -n 1 <<<"$out")
        if [[ $status == 0 && "$line" == "{"* ]]; then
            record "$line"
        else
            what=$([[ $status == 124 ]] && echo "timeout after ${t}s" || echo "exit status $status")
            failed=1
            record "{\"peer\": \"failed\", \"compile\": $c, \"why\": \"$what\"}"
        fi
    done
fi

if [[ "${SKIP_OCTET:-0}" != 1 ]]; then
    for p in $OCTET_LT_PRECISIONS; do octet_run "$p" rows lt; done
    for p in $OCTET_TILED_PRECISIONS; do octet_run "$p" tiled sgemm; done
fi

mv "$tmp" "$RESULTS"
trap - EXIT
echo "== results ($RESULTS)"
"$PYTHON" - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'system':<34} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}")
for r in rows:
    if r.get("peer") == "pytorch":
        name = "pytorch " + ("compile" if r["compile"] else "eager") + " " + r["precision"]
        print(f"{name:<34} {r['tokens_per_s']:>10.0f} {r['mfu']:>6.3f} {r['peak_mem_gib']:>9.2f}")
    elif r.get("peer") == "failed":
        name = "pytorch " + ("compile" if r["compile"] else "eager")
        print(f"{name:<34} {'failed':>10} {r.get('why', '')}")
    elif r.get("device") == "cuda":
        name = f"octet cuda {r['precision']} {r.get('attention', '')} {r.get('linear', '')}"
        print(f"{name:<34} {r['tokens_per_s']:>10.0f} {'':>6} {r['peak_rss_bytes'] / 2**30:>9.2f} (host RSS)")
    elif "octet" in r:
        name = f"octet {r.get('precision', '')} {r.get('attention', '')} {r.get('linear', '')}"
        print(f"{name:<34} {r['octet']:>10} {r.get('why', '')}")
    elif "check" in r:
        extra = r.get("why") or f"{r.get('passed', 0)} passed, {r.get('failed', 0)} failed" + (
            f", {r['errors']} memcheck errors in {r['tests_run']} tests" if r["check"] == "memcheck" else "")
        print(f"{'check ' + r['check']:<34} {r['status']:>10} {extra}")
PY
if [[ $failed != 0 ]]; then echo "gpu.sh: something failed (see the table)" >&2; fi
exit $failed
