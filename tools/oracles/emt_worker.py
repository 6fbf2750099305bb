#!/usr/bin/env python3
"""EMT oracle worker for octet-materials' `oracle` module: ASE's effective-medium potential (Al, Cu, Ag,
Au, Ni, Pd, Pt; H, C, N, O only crudely), cheap and real, for running the discovery loop in CI.

Protocol (see crates/materials/src/oracle.rs, shared ORACLES.md; the loop, stdout discipline and frame
reading are worker_protocol.py's, shared with the CHGNet and GPAW workers):
  * the first stdout line is {"ready": true} (or {"ready": false, "error": ...} if ASE is missing);
  * stdin carries extended-XYZ frames; the comment line holds the options
      id="..."  task=single|relax  fmax=0.05 (eV/A)  steps=200  relax_cell=T|F  trajectory=T|F
  * stdout gets exactly one JSON line per frame:
      id, ok, energy (eV), energy_per_atom, forces (n x 3, eV/A), stress (3 x 3, eV/A^3),
      cell (3 x 3, A, rows are lattice vectors), positions (n x 3, Cartesian A), steps, converged,
      wall_s, error, and for relaxations with trajectory=T, trajectory: [{energy, cell, positions}]
      (the starting point and every optimiser step);
  * library chatter goes to stderr; a frame that raises gives ok=false with the error, and the
    worker goes on with the next frame.

Relaxation (`worker_protocol.run_task`): ase.optimize.FIRE, with ase.filters.FrechetCellFilter when
relax_cell (cell and positions together; the filter's fmax then also bounds stress x volume).
Requires ase==3.29.0.

Usage: python3 tools/oracles/emt_worker.py   (normally started by the Rust `Oracle`)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker_protocol as wp  # noqa: E402


def setup():
    from ase.calculators.emt import EMT

    return EMT


def compute(EMT, atoms):
    atoms.calc = EMT()
    return wp.run_task(atoms)


if __name__ == "__main__":
    sys.exit(wp.serve(setup, compute))
