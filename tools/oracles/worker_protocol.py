"""The oracle worker protocol shared by emt_worker.py, chgnet_worker.py and gpaw_worker.py: the stdout
discipline, frame reading, option parsing, result lines and the geometry checks made before a
calculator sees a frame.

  * the first stdout line is {"ready": true} (or {"ready": false, "error": ...});
  * stdin carries extended-XYZ frames; the comment line holds the options
      id="..."  task=single|relax  fmax=0.05 (eV/A)  steps=200  relax_cell=T|F  trajectory=T|F
  * stdout gets exactly one JSON line per frame (id, ok, energy, energy_per_atom, forces, stress,
    cell, positions, steps, converged, wall_s, error, trajectory);
  * everything else (library chatter, tracebacks) goes to stderr; a frame that raises gives ok=false
    with the reason, and the worker goes on with the next frame.
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
# Everything else that prints goes to stderr, never into the protocol.
sys.stdout = sys.stderr


class Refused(Exception):
    """A frame the calculator must not see (the message is the recorded reason)."""


def emit(obj):
    try:
        line = json.dumps(obj, allow_nan=False)
    except ValueError as e:  # a NaN or inf that escaped the checks
        line = json.dumps({"id": obj.get("id"), "ok": False, "error": f"non-finite value in result: {e}"})
    PROTOCOL_OUT.write(line + "\n")
    PROTOCOL_OUT.flush()


def finite(x):
    return all(math.isfinite(float(v)) for v in x.ravel())


def snapshot(atoms):
    return {
        "energy": float(atoms.get_potential_energy()),
        "cell": atoms.cell.array.tolist(),
        "positions": atoms.positions.tolist(),
    }


def check_geometry(atoms, max_z, neighbour_cutoff, min_ratio=0.5, min_abs=0.5):
    """Refuses what a calculator would fail on or silently get wrong: no atoms, elements past
    `max_z`, a degenerate cell, two atoms closer than min(min_abs, min_ratio x the sum of their
    covalent radii) (A), or an atom without a neighbour within `neighbour_cutoff` (A)."""
    import numpy as np
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    if n == 0:
        raise Refused("no atoms")
    z = atoms.numbers
    if int(z.max()) > max_z or int(z.min()) < 1:
        bad = sorted({int(x) for x in z if x > max_z or x < 1})
        raise Refused(f"atomic number(s) {bad} outside 1..{max_z}")
    if not (finite(atoms.cell.array) and finite(atoms.positions)):
        raise Refused("non-finite cell or positions")
    vol = abs(float(np.linalg.det(atoms.cell.array)))
    if vol < 0.5 * n:
        raise Refused(f"cell volume {vol:.3g} A^3 for {n} atoms")
    i, j, d = neighbor_list("ijd", atoms, neighbour_cutoff, self_interaction=False)
    if len(set(i.tolist())) < n:
        lonely = sorted(set(range(n)) - set(i.tolist()))
        raise Refused(f"isolated atom(s) {lonely}: no neighbour within {neighbour_cutoff} A")
    lim = np.minimum(min_abs, min_ratio * (covalent_radii[z[i]] + covalent_radii[z[j]]))
    close = d < lim
    if close.any():
        k = int(np.argmax(lim - d))
        raise Refused(
            f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.3f} A apart (limit {lim[k]:.3f} A): unphysical geometry"
        )


def frame_id(text, atoms):
    # Read from the raw comment line: ASE turns id="007" into the integer 7.
    m = ID_RE.search(text.split("\n", 2)[1])
    return re.sub(r"\\(.)", r"\1", m.group(1)) if m else str(atoms.info.get("id", ""))


def serve(setup, compute):
    """Runs the worker: `setup()` returns a context (or raises: ready=false), `compute(ctx, atoms)`
    returns the result fields of one frame (raising Refused or anything else gives ok=false)."""
    try:
        from ase.io import read

        ctx = setup()
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        emit({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return 1
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
        t0 = time.perf_counter()
        try:
            atoms = read(io.StringIO(text), format="extxyz")
        except Exception as e:  # unreadable frame
            emit({"id": None, "ok": False, "error": f"cannot read frame: {type(e).__name__}: {e}"})
            continue
        res = {"id": frame_id(text, atoms), "ok": False}
        try:
            res.update(compute(ctx, atoms))
            res["ok"] = True
        except Refused as e:
            res["error"] = f"refused: {e}"
        except Exception as e:  # one bad frame never stops the worker
            res["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        res["wall_s"] = time.perf_counter() - t0
        emit(res)


def options(atoms):
    info = atoms.info
    return {
        "task": str(info.get("task", "single")),
        "fmax": float(info.get("fmax", 0.05)),
        "steps": int(info.get("steps", 200)),
        "relax_cell": bool(info.get("relax_cell", True)),
        "trajectory": bool(info.get("trajectory", False)),
    }


def cell_filter(atoms):
    """FrechetCellFilter (ASE >= 3.23) or ExpCellFilter (Debian's ASE 3.22)."""
    try:
        from ase.filters import FrechetCellFilter

        return FrechetCellFilter(atoms)
    except ImportError:
        from ase.constraints import ExpCellFilter

        return ExpCellFilter(atoms)


def run_task(atoms, check=None):
    """single or relax (FIRE, cell too when relax_cell) on `atoms` with its calculator attached;
    `check(atoms)` runs before every force call of a relaxation when given. Returns result fields."""
    from ase.optimize import FIRE

    o = options(atoms)
    traj = []
    if o["task"] == "single":
        steps, converged = 0, True
    elif o["task"] == "relax":
        target = cell_filter(atoms) if o["relax_cell"] else atoms
        opt = FIRE(target, logfile=None)
        if o["trajectory"]:
            opt.attach(lambda: traj.append(snapshot(atoms)), interval=1)
        if check is not None:
            opt.attach(lambda: check(atoms), interval=1)
        converged = bool(opt.run(fmax=o["fmax"], steps=o["steps"]))
        steps = int(opt.nsteps)
    else:
        raise ValueError(f"unknown task {o['task']!r} (single or relax)")
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    if not (math.isfinite(energy) and finite(forces) and finite(stress) and finite(atoms.positions)):
        raise ValueError("non-finite energy, forces, stress or positions")
    out = dict(
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
        out["trajectory"] = traj
    return out
