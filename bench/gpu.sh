#!/usr/bin/env bash
# GPU benchmark for issue 7 (CUDA backend): kernel checks, then GPT-2 124M training throughput of
# octet's CUDA step next to the PyTorch peer (bench/peer_torch_gpt2.py) on the same GPU, same run.
#
# The GPU machine has CUDA 13, a driver, PyTorch 2.11 and Python, but no Rust toolchain, so this runs
# in two places:
#
#   bench/gpu.sh build     # on the CPU machine (Rust, no CUDA needed): builds the prebuilt binaries
#                          # into target/gpu/ (copy the repository, or bench/ and target/gpu/, across)
#   bench/gpu.sh           # on the GPU machine: checks, then benchmarks (under 5 minutes on an H200)
#
# What the GPU run does:
#   1. prints the device (nvidia-smi) and makes libnvrtc and cuda_fp8.h findable: /usr/local/cuda, else
#      the NVIDIA wheels that PyTorch installed (site-packages/nvidia/cu13/{lib,include});
#   2. kernel checks: `octet device`, then target/gpu/octet-cuda-{nvrtc,kernels,llama_kernels,gemm,backend}
#      (the test binaries of crates/cuda/tests/{nvrtc,kernels,llama_kernels,gemm,backend}.rs: the sm_90 cubin, every NVRTC
#      kernel of the GPT-2 and Llama steps, the device AdamW (f32 and FP8-LM O2, bit-identical to the
#      CPU) and the cuBLASLt bf16/FP8 GEMMs, each against the CPU reference on random data; then models
#      trained on the CudaBackend against the CPU). On this machine a skipped test (no driver/GPU found) is a failure;
#   3. octet's own GPT-2 124M training step on the device: `octet bench train --device cuda` (the
#      CudaBackend over managed memory: the main ops on the device, the rest host fallbacks on the same
#      memory, so expect it far below the peer until those move) at each of OCTET_PRECISIONS, each
#      under a time limit; a run that fails or times out is recorded as such, not dropped;
#   4. the PyTorch peer at B=16, T=1024: eager, then torch.compile (bf16 autocast; tokens/s, MFU, peak
#      memory).
# Every JSON line goes to bench/results-gpu.jsonl (written to a temp file, moved into place at the end)
# and a table is printed.
#
# Environment (all optional):
#   BATCH, SEQ        peer batch and sequence length (default 16, 1024)
#   STEPS, WARMUP     timed / untimed peer steps (default 20, 5)
#   PYTHON            interpreter with torch 2.11 (default python3)
#   GPU_BIN           directory of the prebuilt binaries (default target/gpu)
#   OCTET_PRECISIONS  octet precision levels for step 3 (default "fp32 fp8-o2")
#   OCTET_STEPS, OCTET_WARMUP, OCTET_TIMEOUT   timed / untimed octet steps, seconds per level (5, 1, 180)
#   SKIP_KERNELS=1    skip step 2;  SKIP_OCTET=1  skip step 3;  SKIP_PEER=1  skip step 4
#   OUT               results file (default bench/results-gpu.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."

BATCH=${BATCH:-16}
SEQ=${SEQ:-1024}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
PYTHON=${PYTHON:-python3}
GPU_BIN=${GPU_BIN:-target/gpu}
OUT=${OUT:-bench/results-gpu.jsonl}
OCTET_PRECISIONS=${OCTET_PRECISIONS:-fp32 fp8-o2}
OCTET_STEPS=${OCTET_STEPS:-5}
OCTET_WARMUP=${OCTET_WARMUP:-1}
OCTET_TIMEOUT=${OCTET_TIMEOUT:-180}

if [[ "${1:-}" == "build" ]]; then
    # The kernel checks: the octet-cuda test binaries (tests/nvrtc.rs: the module compiles to an sm_90
    # cubin, the image the backend loads; tests/kernels.rs: every NVRTC kernel and the
    # device AdamW; tests/llama_kernels.rs: Llama's RMSNorm, RoPE, SwiGLU, repeat_kv and embedding;
    # tests/gemm.rs: the cuBLASLt GEMMs; tests/backend.rs: models trained on the CudaBackend against
    # the CPU), built with the `cuda` feature (cudarc loads CUDA
    # at run time, so this needs no CUDA here). `cargo test --no-run` prints each executable's path in
    # its JSON messages.
    mkdir -p "$GPU_BIN"
    exes=$(cargo test --release -p octet-cuda --features cuda --no-run --message-format=json 2>/dev/null \
        | "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] in ("nvrtc", "kernels", "llama_kernels", "gemm", "backend") and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
    for name in nvrtc kernels llama_kernels gemm backend; do
        exe=$(awk -v n="$name" '$1 == n { print $2 }' <<<"$exes")
        [[ -n "$exe" ]] || { echo "gpu.sh build: no $name test executable found" >&2; exit 1; }
        cp "$exe" "$GPU_BIN/octet-cuda-$name"
    done
    # The CLI with the CUDA backend: `octet device` (the device check) and `octet bench train --device
    # cuda` (step 3) of the run below.
    cargo build --release -p octet-cli --features cuda
    cp "${CARGO_TARGET_DIR:-target}/release/octet" "$GPU_BIN/octet"
    echo "built $GPU_BIN/{octet-cuda-nvrtc,octet-cuda-kernels,octet-cuda-llama_kernels,octet-cuda-gemm,octet-cuda-backend,octet}; copy the repository (with $GPU_BIN) to the GPU machine and run bench/gpu.sh"
    exit 0
fi

tmp=$(mktemp "${OUT}.XXXXXX")
trap 'rm -f "$tmp"' EXIT

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"

# Libraries and headers: the CUDA toolkit if installed, else the wheels that came with PyTorch.
nv_dir=$("$PYTHON" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null || true)
for d in /usr/local/cuda/lib64 "$nv_dir"/cu13/lib "$nv_dir"/cuda_nvrtc/lib; do
    [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
if [[ -z "${OCTET_CUDA_INCLUDE:-}" && ! -f /usr/local/cuda/include/cuda_fp8.h ]]; then
    for d in "$nv_dir"/cu13/include "$nv_dir"/cuda_runtime/include; do
        [[ -f "$d/cuda_fp8.h" ]] && export OCTET_CUDA_INCLUDE="$d" && break
    done
fi

echo "== octet device"
"$GPU_BIN/octet" device || echo "octet device: no usable CUDA device (the kernel checks below will say why)" >&2

if [[ "${SKIP_KERNELS:-0}" != 1 ]]; then
    echo "== kernel checks (CUDA kernels, device AdamW and cuBLASLt GEMMs vs the CPU reference)"
    log=$(mktemp)
    status=0
    for t in nvrtc kernels llama_kernels gemm backend; do
        "$GPU_BIN/octet-cuda-$t" --test-threads=1 --nocapture 2>&1 | tee -a "$log" || status=$?
    done
    if grep -q 'SKIPPED' "$log"; then
        echo "kernel checks were skipped: no usable CUDA driver/GPU/cuBLASLt (see the SKIPPED lines)" >&2
        status=1
    fi
    passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    rm -f "$log"
    echo "{\"kernel_checks\": \"$([[ $status == 0 ]] && echo pass || echo FAIL)\", \"passed\": ${passed:-0}}" >> "$tmp"
    [[ $status == 0 ]] || { echo "kernel checks FAILED" >&2; mv "$tmp" "$OUT"; trap - EXIT; exit 1; }
fi

if [[ "${SKIP_OCTET:-0}" != 1 ]]; then
    for p in $OCTET_PRECISIONS; do
        echo "== octet GPT-2 124M training step on the GPU, $p, B=$BATCH T=$SEQ"
        status=0
        line=$(timeout "$OCTET_TIMEOUT" "$GPU_BIN/octet" bench train --device cuda --model gpt2-124m \
            --batch "$BATCH" --seq "$SEQ" --precision "$p" --steps "$OCTET_STEPS" --warmup "$OCTET_WARMUP" \
            --json | tail -n 1) || status=$?
        if [[ $status == 0 && -n "$line" ]]; then
            echo "$line" | tee -a "$tmp"
        else
            what=$([[ $status == 124 ]] && echo "timeout after ${OCTET_TIMEOUT}s" || echo "exit status $status")
            echo "octet $p: $what" >&2
            echo "{\"octet\": \"failed\", \"precision\": \"$p\", \"why\": \"$what\"}" >> "$tmp"
        fi
    done
fi

if [[ "${SKIP_PEER:-0}" != 1 ]]; then
    for compile in "" "--compile"; do
        echo "== PyTorch peer ${compile:-(eager)} B=$BATCH T=$SEQ"
        "$PYTHON" bench/peer_torch_gpt2.py --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" \
            $compile | tail -n 1 | tee -a "$tmp"
    done
fi

mv "$tmp" "$OUT"
trap - EXIT
echo "== results ($OUT)"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'system':<28} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}")
for r in rows:
    if r.get("peer") == "pytorch":
        name = "pytorch " + ("compile" if r["compile"] else "eager") + " " + r["precision"]
        print(f"{name:<28} {r['tokens_per_s']:>10} {r['mfu']:>6.3f} {r['peak_mem_gib']:>9.2f}")
    elif r.get("device") == "cuda":
        name = f"octet cuda {r['precision']}"
        print(f"{name:<28} {r['tokens_per_s']:>10.0f} {'':>6} {r['peak_rss_bytes'] / 2**30:>9.2f} (host RSS)")
    elif "octet" in r:
        print(f"{'octet ' + r.get('precision', ''):<28} {r['octet']:>10} {r.get('why', '')}")
    elif "kernel_checks" in r:
        print(f"{'octet kernel checks':<28} {r['kernel_checks']:>10} ({r['passed']} tests)")
PY
