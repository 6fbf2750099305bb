#!/usr/bin/env python3
"""Convex-hull golden data from pymatgen's PhaseDiagram, for octet-materials' `hull` module.

Writes tests/golden/hull/phase_diagrams.json: for each fixture system, the entries (name, composition,
total energy in eV) and pymatgen's formation energy per atom, energy above hull, stability and
decomposition (entry name -> atom fraction) for every entry, plus the same for candidates that are
not in the diagram (`get_decomp_and_e_above_hull(..., allow_negative=True)`).

Fixtures (Cu-Ag-Au-Pd; energies are made up, not physical):
  quaternary: element polymorphs and a higher-energy elemental duplicate; duplicate compositions with
    different and with equal energies (Cu2Au2 vs CuAu); points exactly on a hull edge (CuAu between
    Cu3Au and CuAu3, CuPd3 between CuPd and Pd); positive formation energies; ternaries and
    quaternaries; 24 seeded random entries. Hand-made energies per atom are dyadic (k / 2^m) so the
    degenerate cases are exact in binary floating point, not rounded onto or off the hull.
  elements_only: the four elements, two with polymorphs.
  binary_collinear: Cu-Au with three collinear intermediate phases.
Run from the repository root (pins: tools/ref/requirements-hull.txt):

    python tools/ref/hull_reference.py
"""

import json
import os
import random
import sys
import tempfile

from importlib.metadata import version

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

OUT = os.path.join("tests", "golden", "hull", "phase_diagrams.json")

# Elemental ground-state energies per atom (eV), the references of every formation energy below.
MU = {"Cu": -4.0, "Ag": -3.0, "Au": -3.5, "Pd": -5.0}


def total(formula, e_form_per_atom):
    """Total energy of `formula` whose formation energy per atom against MU is `e_form_per_atom`."""
    comp = Composition(formula)
    n = comp.num_atoms
    return n * e_form_per_atom + sum(amt * MU[str(el)] for el, amt in comp.items())


def quaternary():
    e = [
        # elements: ground states, a polymorph above each, an exact duplicate of Ag's ground state
        ("Cu", "Cu", -4.0),
        ("Cu_fcc4", "Cu4", 4 * -3.875),
        ("Ag", "Ag", -3.0),
        ("Ag2_dup", "Ag2", 2 * -2.875),
        ("Au", "Au", -3.5),
        ("Pd", "Pd", -5.0),
        ("Pd_hi", "Pd", -4.5),
        # Cu-Au: CuAu lies exactly on the Cu3Au-CuAu3 edge; Cu2Au2 is CuAu again, higher
        ("Cu3Au", "Cu3Au", total("Cu3Au", -0.125)),
        ("CuAu3", "CuAu3", total("CuAu3", -0.125)),
        ("CuAu", "CuAu", total("CuAu", -0.125)),
        ("Cu2Au2", "Cu2Au2", total("Cu2Au2", -0.0625)),
        # Cu-Pd: CuPd3 lies exactly on the CuPd-Pd edge; Cu3Pd3 duplicates CuPd at equal energy per atom
        ("CuPd", "CuPd", total("CuPd", -0.25)),
        ("CuPd3", "CuPd3", total("CuPd3", -0.125)),
        ("Cu3Pd3", "Cu3Pd3", total("Cu3Pd3", -0.25)),
        ("AgAu", "AgAu", total("AgAu", -0.0625)),
        ("Ag3Pd", "Ag3Pd", total("Ag3Pd", 0.046875)),
        ("AuPd", "AuPd", total("AuPd", -0.1875)),
        ("AgPd", "AgPd", total("AgPd", -0.09375)),
        ("CuAg", "CuAg", total("CuAg", 0.03125)),
        # ternaries and quaternaries
        ("CuAuPd", "CuAuPd", total("CuAuPd", -0.3125)),
        ("CuAgAu", "CuAgAu", total("CuAgAu", -0.046875)),
        ("Cu2AgPd", "Cu2AgPd", total("Cu2AgPd", -0.203125)),
        ("AgAuPd2", "AgAuPd2", total("AgAuPd2", -0.21875)),
        ("CuAgAuPd", "CuAgAuPd", total("CuAgAuPd", -0.25)),
        ("Cu2AgAuPd2", "Cu2AgAuPd2", total("Cu2AgAuPd2", -0.2890625)),
    ]
    rng = random.Random(20231129)
    els = list(MU)
    for i in range(24):
        k = rng.randint(2, 4)
        sub = rng.sample(els, k)
        formula = "".join(f"{el}{rng.randint(1, 4)}" for el in sub)
        # rounded to 1e-6 eV so that the JSON value is the float both sides read
        e_tot = round(total(formula, rng.uniform(-0.2, 0.08)), 6)
        e.append((f"r{i:02d}", formula, e_tot))
    cands = [
        ("cand_below", "Cu2AuPd", total("Cu2AuPd", -0.5)),
        ("cand_above", "AgAu2Pd", total("AgAu2Pd", 0.0)),
        ("cand_on_edge", "Cu2Au2", total("Cu2Au2", -0.125)),
        ("cand_element", "Pd2", 2 * -4.75),
        ("cand_quat", "Cu3AgAu2Pd2", total("Cu3AgAu2Pd2", -0.2)),
    ]
    return e, cands


def elements_only():
    e = [
        ("Cu", "Cu", -4.0),
        ("Cu_hcp2", "Cu2", 2 * -3.9),
        ("Ag", "Ag", -3.0),
        ("Au4", "Au4", 4 * -3.5),
        ("Pd", "Pd", -5.0),
        ("Pd_bcc", "Pd", -4.875),
    ]
    cands = [("cand_bin", "CuPd", -8.5), ("cand_el", "Au", -3.25)]
    return e, cands


def binary_collinear():
    e = [
        ("Cu", "Cu", -4.0),
        ("Au", "Au", -3.5),
        ("Cu3Au", "Cu3Au", total("Cu3Au", -0.25)),
        ("CuAu", "CuAu", total("CuAu", -0.25)),
        ("CuAu3", "CuAu3", total("CuAu3", -0.25)),
        ("Cu7Au", "Cu7Au", total("Cu7Au", -0.125)),
        ("CuAu7", "CuAu7", total("CuAu7", -0.0625)),
    ]
    cands = [("cand_mid", "Cu5Au3", total("Cu5Au3", -0.25))]
    return e, cands


def comp_dict(comp):
    return {str(el): amt for el, amt in comp.items()}


def run(name, entries, cands):
    pd_entries = [PDEntry(Composition(f), en, name=n) for n, f, en in entries]
    pd = PhaseDiagram(pd_entries)
    stable = {id(s) for s in pd.stable_entries}
    out_entries, out_results = [], []
    for (n, f, en), ent in zip(entries, pd_entries):
        decomp, e_hull = pd.get_decomp_and_e_above_hull(ent, allow_negative=True)
        out_entries.append({"name": n, "composition": comp_dict(Composition(f)), "energy": en})
        out_results.append(
            {
                "name": n,
                "e_form_per_atom": pd.get_form_energy_per_atom(ent),
                "e_above_hull": e_hull,
                "stable": id(ent) in stable,
                "decomposition": {d.name: amt for d, amt in sorted(decomp.items(), key=lambda t: t[0].name)},
            }
        )
    out_cands = []
    for n, f, en in cands:
        ent = PDEntry(Composition(f), en, name=n)
        decomp, e_hull = pd.get_decomp_and_e_above_hull(ent, allow_negative=True, check_stable=False)
        out_cands.append(
            {
                "name": n,
                "composition": comp_dict(Composition(f)),
                "energy": en,
                "e_form_per_atom": pd.get_form_energy_per_atom(ent),
                "e_above_hull": e_hull,
                "decomposition": {d.name: amt for d, amt in sorted(decomp.items(), key=lambda t: t[0].name)},
            }
        )
    return {"name": name, "entries": out_entries, "results": out_results, "candidates": out_cands}


def main():
    systems = [run("quaternary", *quaternary()), run("elements_only", *elements_only())]
    systems.append(run("binary_collinear", *binary_collinear()))
    doc = {
        "generator": "tools/ref/hull_reference.py",
        "pymatgen": version("pymatgen"),
        "pymatgen-core": version("pymatgen-core"),
        "units": "energies in eV (total), per-atom quantities in eV/atom, decomposition in atom fractions",
        "systems": systems,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(OUT))
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, OUT)
    n = sum(len(s["results"]) + len(s["candidates"]) for s in systems)
    print(f"wrote {OUT}: {len(systems)} systems, {n} entries and candidates", file=sys.stderr)


if __name__ == "__main__":
    main()
