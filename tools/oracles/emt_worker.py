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

Relaxation: ase.optimize.FIRE, with ase.filters.FrechetCellFilter when relax_cell (cell and positions
together; the filter's fmax then also bounds stress x volume). Requires ase==3.29.0.

Usage: python3 tools/oracles/emt_worker.py   (normally started by the Rust `Oracle`)
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker_protocol as wp  # noqa: E402


def setup():
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    return EMT, FIRE, FrechetCellFilter


def compute(ctx, atoms):
    EMT, FIRE, FrechetCellFilter = ctx
    info = atoms.info
    task = str(info.get("task", "single"))
    atoms.calc = EMT()
    traj = []
    if task == "single":
        steps, converged = 0, True
    elif task == "relax":
        fmax = float(info.get("fmax", 0.05))
        max_steps = int(info.get("steps", 200))
        target = FrechetCellFilter(atoms) if bool(info.get("relax_cell", True)) else atoms
        opt = FIRE(target, logfile=None)
        if bool(info.get("trajectory", False)):
            opt.attach(lambda: traj.append(wp.snapshot(atoms)), interval=1)
        converged = bool(opt.run(fmax=fmax, steps=max_steps))
        steps = int(opt.nsteps)
    else:
        raise ValueError(f"unknown task {task!r} (single or relax)")
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    if not (math.isfinite(energy) and wp.finite(forces) and wp.finite(stress) and wp.finite(atoms.positions)):
        raise ValueError("non-finite energy, forces, stress or positions")
    res = dict(
        energy=energy,
        energy_per_atom=energy / len(atoms),
        forces=forces.tolist(),
        stress=stress.tolist(),
        cell=atoms.cell.array.tolist(),
        positions=atoms.positions.tolist(),
        steps=steps,
        converged=converged,
    )
    if traj:
        res["trajectory"] = traj
    return res


if __name__ == "__main__":
    sys.exit(wp.serve(setup, compute))
