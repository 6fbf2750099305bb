#!/usr/bin/env python3
"""EMT oracle worker for octet-materials' `oracle` module: ASE's effective-medium potential (Al, Cu, Ag,
Au, Ni, Pd, Pt; H, C, N, O only crudely), cheap and real, for running the discovery loop in CI.

Protocol (see crates/materials/src/oracle.rs and shared ORACLES.md):
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

import io
import json
import math
import re
import sys
import time
import traceback

ID_RE = re.compile(r'(?:^|\s)id="((?:[^"\\]|\\.)*)"')
PROTOCOL_OUT = sys.stdout
# Everything else that prints (ASE, numpy warnings) goes to stderr, never into the protocol.
sys.stdout = sys.stderr


def emit(obj):
    try:
        line = json.dumps(obj, allow_nan=False)
    except ValueError as e:  # a NaN or inf that escaped the checks below
        line = json.dumps({"id": obj.get("id"), "ok": False, "error": f"non-finite value in result: {e}"})
    PROTOCOL_OUT.write(line + "\n")
    PROTOCOL_OUT.flush()


def finite(x):
    return all(math.isfinite(v) for v in x.ravel())


def snapshot(atoms):
    return {
        "energy": float(atoms.get_potential_energy()),
        "cell": atoms.cell.array.tolist(),
        "positions": atoms.positions.tolist(),
    }


def compute(text, ase_mods):
    read, EMT, FIRE, FrechetCellFilter = ase_mods
    t0 = time.perf_counter()
    atoms = read(io.StringIO(text), format="extxyz")
    info = atoms.info
    # The id is read from the raw comment line: ASE turns id="007" into the integer 7.
    m = ID_RE.search(text.split("\n", 2)[1])
    fid = re.sub(r"\\(.)", r"\1", m.group(1)) if m else str(info.get("id", ""))
    res = {"id": fid, "ok": False}
    try:
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
                opt.attach(lambda: traj.append(snapshot(atoms)), interval=1)
            converged = bool(opt.run(fmax=fmax, steps=max_steps))
            steps = int(opt.nsteps)
        else:
            raise ValueError(f"unknown task {task!r} (single or relax)")
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces()
        stress = atoms.get_stress(voigt=False)
        if not (math.isfinite(energy) and finite(forces) and finite(stress) and finite(atoms.positions)):
            raise ValueError("non-finite energy, forces, stress or positions")
        res.update(
            ok=True,
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
    except Exception as e:  # one bad frame never stops the worker
        res["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    res["wall_s"] = time.perf_counter() - t0
    return res


def main():
    try:
        from ase.calculators.emt import EMT
        from ase.filters import FrechetCellFilter
        from ase.io import read
        from ase.optimize import FIRE
    except Exception as e:
        emit({"ready": False, "error": f"cannot import ASE: {type(e).__name__}: {e}"})
        return 1
    mods = (read, EMT, FIRE, FrechetCellFilter)
    emit({"ready": True})
    stdin = sys.stdin
    while True:
        line = stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        try:
            n = int(line)
        except ValueError:
            emit({"id": None, "ok": False, "error": f"expected an atom count, got {line.strip()[:80]!r}"})
            continue
        text = line + "".join(stdin.readline() for _ in range(n + 1))
        try:
            emit(compute(text, mods))
        except Exception as e:  # unreadable frame
            emit({"id": None, "ok": False, "error": f"cannot read frame: {type(e).__name__}: {e}"})


if __name__ == "__main__":
    sys.exit(main())
