#!/usr/bin/env python3
"""CHGNet oracle worker for octet-materials' `oracle` module: the universal ML potential CHGNet
0.3.1 (pretrained weights shipped in the wheel; energies compatible with the Materials Project's,
~30 meV/atom), on CPU, one thread.

Stack (tools/oracles/setup_chgnet.sh, ../shared/ORACLES.md): Debian's python3-torch 1.13,
python3-pymatgen 2022.11, python3-ase 3.22 and a --system-site-packages venv with
`pip install --no-deps chgnet==0.3.1 nvidia-ml-py3==7.352.0`. Two incompatibilities of CHGNet 0.3.1
with that stack are patched here at import time, never in site-packages:
  1. chgnet.graph.converter builds int32 index tensors, which torch 1.13 cannot index with: the
     converter's output graphs get their index tensors cast to int64;
  2. chgnet.model.dynamics calls `Structure.to_ase_atoms()`, which pymatgen 2022 lacks: it is
     supplied through `AseAtomsAdaptor.get_atoms`.

Before CHGNet sees a frame it is checked (worker_protocol.check_geometry): elements past Pu (Z > 94,
CHGNet's embedding ends there), atoms without a neighbour within the model's atom-graph cutoff
(CHGNet fails or is wrong on isolated atoms), atoms closer than half their covalent radii (CHGNet
returns numbers silently for such geometries) and degenerate cells are refused as failed frames
with the reason; the same checks run at every relaxation step. Relaxation: ASE FIRE with a cell
filter (ExpCellFilter on ASE 3.22), CHGNet through its ASE calculator.

Protocol: worker_protocol.py (first line {"ready": true}, extended-XYZ frames in, one JSON line per
frame out, chatter on stderr, a bad frame never stops the worker).

Usage: OMP_NUM_THREADS=1 <venv>/bin/python tools/oracles/chgnet_worker.py  (started by octet)
"""

import os
import sys

# One OpenMP thread: two were 4-10x slower on 2-core machines (ORACLES.md); run N workers instead.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker_protocol as wp  # noqa: E402

MAX_Z = 94


def patch_chgnet():
    """The two runtime patches (module doc). Idempotent."""
    import torch
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    if not hasattr(Structure, "to_ase_atoms"):
        Structure.to_ase_atoms = lambda self, **kw: AseAtomsAdaptor.get_atoms(self, **kw)

    from chgnet.graph import converter

    cls = converter.CrystalGraphConverter
    if getattr(cls, "_octet_int64", False):
        return
    forward = cls.forward

    def forward_int64(self, *args, **kwargs):
        g = forward(self, *args, **kwargs)
        for name in ("atomic_number", "atom_graph", "bond_graph", "directed2undirected", "undirected2directed"):
            t = getattr(g, name, None)
            if isinstance(t, torch.Tensor) and t.dtype == torch.int32:
                setattr(g, name, t.long())
        return g

    cls.forward = forward_int64
    cls._octet_int64 = True


def setup():
    import torch

    torch.set_num_threads(1)
    patch_chgnet()
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    model = CHGNet.load()
    calc = CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="error")
    cutoff = float(model.graph_converter.atom_graph_cutoff)
    return calc, cutoff


def compute(ctx, atoms):
    calc, cutoff = ctx

    def check(a):
        wp.check_geometry(a, MAX_Z, cutoff)

    check(atoms)
    atoms.calc = calc
    return wp.run_task(atoms, check)


if __name__ == "__main__":
    sys.exit(wp.serve(setup, compute))
