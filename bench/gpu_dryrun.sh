#!/usr/bin/env bash
# Dry run of bench/gpu.sh without a GPU (issue 18 item 1): stub binaries stand in for the kernel
# checks, compute-sanitizer, nvidia-smi, `octet` and the PyTorch peer, covering every outcome the
# script must survive — a passing check, a failing one, a skipped one (no GPU), one past its time
# limit; memcheck on Firecracker and its skip on gVisor; an octet level that succeeds, one that
# fails, one that times out; a peer run that succeeds and one that fails. Checks that every run
# still happens after a failure, that the results land in $OUT/results-gpu.jsonl when $OUT is a
# folder (the device's), that the log comes back as $OUT/gpu.log, that the exit status says a check
# failed, that a run past DEADLINE records the steps it skips, and prints the results table.
#   bash bench/gpu_dryrun.sh        # ~15 s; exit status 0 iff the script behaved as described
set -uo pipefail
cd "$(dirname "$0")/.."
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/bin" "$d/gpu" "$d/out" "$d/out2" "$d/cuda/lib64" "$d/nv/cu13/lib"

stub() { # path, body
    printf '#!/usr/bin/env bash\n%s\n' "$2" >"$1"
    chmod +x "$1"
}
stub "$d/bin/nvidia-smi" 'echo "NVIDIA H100 80GB HBM3 (stub), 580.159.04, 81559 MiB"'
stub "$d/bin/compute-sanitizer" 'while [[ $1 == --* ]]; do shift; [[ $1 != --* && $1 != /* ]] && shift; done
echo "========= COMPUTE-SANITIZER"; "$@"; rc=$?; echo "========= ERROR SUMMARY: 0 errors"; exit $rc'
pass='echo "test a ... ok"; echo "test b ... ok"; echo; echo "test result: ok. 2 passed; 0 failed; 0 ignored"'
stub "$d/gpu/octet-cuda-nvrtc" "$pass"
stub "$d/gpu/octet-cuda-kernels" "$pass"
stub "$d/gpu/octet-cuda-llama_kernels" 'echo "SKIPPED rmsnorm: no CUDA driver"; echo "test result: ok. 1 passed; 0 failed; 0 ignored"'
stub "$d/gpu/octet-cuda-gemm" 'echo "test fp8 ... FAILED"; echo "test result: FAILED. 3 passed; 1 failed; 0 ignored"; exit 101'
stub "$d/gpu/octet-cuda-backend" 'sleep 30'
stub "$d/gpu/octet" 'case "$1 $*" in
  device*) echo "device 0: NVIDIA H100 (stub), sm_90";;
  *"--precision bf16"*) echo "warming up" >&2; echo "{\"device\": \"cuda\", \"precision\": \"bf16\", \"tokens_per_s\": 123456.7, \"peak_rss_bytes\": 2147483648}";;
  *"--precision fp8-o2"*) echo "cuda linear_gemm: CUBLAS_STATUS_NOT_SUPPORTED" >&2; exit 101;;
  *) sleep 30;;
esac'
stub "$d/peer.py" 'import json, sys
if "--compile" in sys.argv:
    sys.exit("torch.compile: stub failure")
print(json.dumps({"peer": "pytorch", "compile": False, "precision": "bf16", "tokens_per_s": 383000, "mfu": 0.41, "peak_mem_gib": 21.5}))'

run() { # out dir, extra env...
    local out=$1; shift
    env PATH="$d/bin:$PATH" CUDA_HOME="$d/cuda" NV_WHEELS="$d/nv" GPU_BIN="$d/gpu" PEER="$d/peer.py" OUT="$out" CHECK_TIMEOUT=2 OCTET_TIMEOUT=2 \
        SANITIZER_TIMEOUT=5 OCTET_PRECISIONS="bf16 fp8-o2 fp8-te" OCTET_TILED_PRECISIONS= OCTET_LT_PRECISIONS= "$@" bash bench/gpu.sh
}

fails=0
expect() { # description, condition...
    if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi
}

echo "=== run 1: Firecracker"
run "$d/out" GPU_SH_KERNEL=6.18.44-fc
rc=$?
r="$d/out/results-gpu.jsonl"
expect "exit status 1 (a check failed)" test "$rc" = 1
expect "results in \$OUT/results-gpu.jsonl" test -s "$r"
expect "log in \$OUT/gpu.log" grep -q "== results" "$d/out/gpu.log"
expect "11 result rows" test "$(grep -c . "$r")" = 11
expect "nvrtc check passed" grep -q '"check": "nvrtc", "status": "pass", "passed": 2' "$r"
expect "gemm check failed, counted" grep -q '"check": "gemm", "status": "FAIL", "passed": 3, "failed": 1' "$r"
expect "skipped check recorded" grep -q '"check": "llama_kernels", "status": "skipped"' "$r"
expect "hung check timed out" grep -q '"check": "backend", "status": "timeout"' "$r"
expect "memcheck ran" grep -q '"check": "memcheck", "status": "pass", "errors": 0' "$r"
expect "octet bf16 timed after the failed checks" grep -q '"precision": "bf16", "tokens_per_s": 123456.7' "$r"
expect "octet fp8-o2 failure recorded" grep -q '"octet": "failed", "precision": "fp8-o2", "attention": "rows", "linear": "sgemm", "why": "exit status 101"' "$r"
expect "octet fp8-te timeout recorded" grep -q '"precision": "fp8-te", "attention": "rows", "linear": "sgemm", "why": "timeout after 2s"' "$r"
expect "peer eager ran" grep -q '"peer": "pytorch"' "$r"
expect "peer compile failure recorded" grep -q '"peer": "failed", "compile": true' "$r"
expect "table has the octet row" grep -q "octet cuda bf16 rows sgemm .* 123457" "$d/out/gpu.log"
expect "toolkit lib64 before the wheels" grep -q "^LD_LIBRARY_PATH=$d/cuda/lib64:$d/nv/cu13/lib" "$d/out/gpu.log"

echo "=== run 2: gVisor (memcheck skipped), kernels skipped by flag"
run "$d/out2" GPU_SH_KERNEL=4.4.0 SKIP_OCTET=1 SKIP_PEER=1 >/dev/null 2>&1
expect "memcheck skipped on gVisor" grep -q '"check": "memcheck", "status": "skipped", "why": "gVisor' "$d/out2/results-gpu.jsonl"
run "$d/out2" SKIP_KERNELS=1 SKIP_PEER=1 OCTET_PRECISIONS=bf16 OCTET_TILED_PRECISIONS=bf16 OCTET_LT_PRECISIONS=bf16 >/dev/null 2>&1
expect "all-good run exits 0" test $? = 0
expect "bf16 timed three ways (rows, tiled, cuBLASLt)" test "$(grep -c '"precision": "bf16"' "$d/out2/results-gpu.jsonl")" = 3
expect "the tiled run is labelled" grep -q '"attention": "tiled", "linear": "sgemm", "device": "cuda"' "$d/out2/results-gpu.jsonl"
expect "the cuBLASLt run is labelled" grep -q '"attention": "rows", "linear": "lt", "device": "cuda"' "$d/out2/results-gpu.jsonl"

run "$d/out2" DEADLINE=3 >/dev/null 2>&1
rc=$?
expect "past DEADLINE: exit status 1" test "$rc" = 1
expect "past DEADLINE: skipped steps recorded, results still written" grep -q 'out of time (DEADLINE)' "$d/out2/results-gpu.jsonl"

echo "=== results table of run 1"
sed -n '/^== results/,$p' "$d/out/gpu.log"
echo "# $fails expectation(s) failed"
[[ $fails == 0 ]]
