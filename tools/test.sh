#!/usr/bin/env bash
# The whole test suite, one command on a fresh machine: installs Open MPI and libclang (Debian
# packages; the `mpi` feature's build needs them) when it can, then runs the workspace tests with the
# CUDA backend (its tests skip without a GPU) and, where Open MPI is there, MPI (the multi-process
# tests launch `mpirun -np 2`; without it they skip with a printed reason).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpicc >/dev/null || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  ( (apt-get update -qq && apt-get install -y -q libopenmpi-dev openmpi-bin libclang-dev) \
    || (sudo apt-get update -qq && sudo apt-get install -y -q libopenmpi-dev openmpi-bin libclang-dev) ) >/dev/null 2>&1 \
    || echo "Open MPI / libclang not installable here: building without MPI, its tests skip"
fi
features="octet-cli/cuda"
if command -v mpicc >/dev/null && command -v mpirun >/dev/null && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  features="$features,octet-cli/mpi"
fi
set -x
cargo test --workspace --release --features "$features"
