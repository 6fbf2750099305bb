#!/usr/bin/python3
"""GPAW oracle worker for octet-materials' `oracle` module: real PBE DFT (Debian's `gpaw` 22.8 and
`gpaw-data` PAW setups: `apt-get install gpaw gpaw-data`), plane waves. Slow: for single points on
a few final discoveries, not for screening (8-atom oxide cells at 500-600 eV take 25-47 s per single
point on 2 cores, ../shared/ORACLES.md).

Extra options in the comment line, besides the protocol's (worker_protocol.py):
  ecut=600        plane-wave cut-off (eV); oxides need ~600 (MgO's stress was 151 GPa at 300)
  kdensity=2.5    Monkhorst-Pack k-point density (points per reciprocal A); a cell with an axis
                  longer than 15 A (a molecule in a box) gets that axis' k-points set to 1
  spinpol=T|F     spin polarisation (default: T for a frame made only of O, H or N, i.e. the O2/N2/H2
                  molecule references; F otherwise)
  magmom=1.0      initial moment per atom when spin-polarised
Energies are GPAW's, relative to its atomic PAW references: comparable with another code's only as
formation energies against elemental phases computed by GPAW itself (tools/oracles/gpaw_check.py).

Usage: /usr/bin/python3 tools/oracles/gpaw_worker.py  (Debian's python; started by octet, or by
gpaw_check.py). OMP_NUM_THREADS=1 is set: run one worker per core.
"""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker_protocol as wp  # noqa: E402


def setup():
    import gpaw  # noqa: F401
    from gpaw import GPAW, PW  # noqa: F401

    return None


def compute(_ctx, atoms):
    import numpy as np
    from gpaw import GPAW, PW

    info = atoms.info
    wp.check_geometry(atoms, 86, 8.0)
    ecut = float(info.get("ecut", 600.0))
    density = float(info.get("kdensity", 2.5))
    lengths = atoms.cell.lengths()
    recip = np.linalg.norm(atoms.cell.reciprocal(), axis=1)  # 1/A, without the 2 pi
    kpts = [1 if L > 15.0 else max(1, int(np.ceil(2 * np.pi * b * density))) for L, b in zip(lengths, recip)]
    gas = set(atoms.get_chemical_symbols()) <= {"O", "H", "N"}
    spinpol = bool(info.get("spinpol", gas))
    if spinpol:
        atoms.set_initial_magnetic_moments([float(info.get("magmom", 1.0))] * len(atoms))
    atoms.calc = GPAW(
        mode=PW(ecut),
        xc="PBE",
        kpts={"size": kpts, "gamma": True},
        spinpol=spinpol,
        occupations={"name": "fermi-dirac", "width": 0.05},
        txt=None,
        parallel={"domain": 1, "band": 1},
    )
    out = wp.run_task(atoms)
    out["kpts"] = kpts
    out["ecut"] = ecut
    out["spinpol"] = spinpol
    return out


if __name__ == "__main__":
    sys.exit(wp.serve(setup, compute))
