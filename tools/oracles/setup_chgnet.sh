#!/usr/bin/env bash
# Installs the CHGNet oracle's stack as ../shared/ORACLES.md prescribes (measured on 2-core Debian 12):
# Debian's CPU torch 1.13 + pymatgen 2022 + ASE 3.22 for /usr/bin/python3.11, then a venv that sees
# them (--system-site-packages) with CHGNet 0.3.1 (ships its weights; newer versions need newer torch
# or pymatgen) installed without dependencies. The two runtime incompatibilities of this stack are
# patched at import time by chgnet_worker.py, not here.
#
#   tools/oracles/setup_chgnet.sh [VENV]       (default: $OCTET_CHGNET_VENV or ~/.cache/octet/chgnet-venv)
#   tools/oracles/setup_chgnet.sh --gpaw [VENV]  also `apt-get install gpaw gpaw-data` (real PBE DFT)
#
# Needs root (apt-get). About 212 MB download, 1.1 GB installed (+137 MB for GPAW).
set -euo pipefail
gpaw=0
if [ "${1:-}" = "--gpaw" ]; then gpaw=1; shift; fi
venv="${1:-${OCTET_CHGNET_VENV:-$HOME/.cache/octet/chgnet-venv}}"
pkgs=(python3-torch python3-pymatgen python3-ase python3-venv)
if [ "$gpaw" = 1 ]; then pkgs+=(gpaw gpaw-data); fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y --no-install-recommends "${pkgs[@]}"
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3.11 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install --quiet --no-deps chgnet==0.3.1 nvidia-ml-py3==7.352.0
OMP_NUM_THREADS=1 "$venv/bin/python" - <<'PY'
import torch, pymatgen.core, ase, chgnet
print("torch", torch.__version__, "ase", ase.__version__, "chgnet", chgnet.__version__)
PY
echo "CHGNet venv ready: $venv (worker: $venv/bin/python tools/oracles/chgnet_worker.py)"
