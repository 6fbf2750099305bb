#!/usr/bin/env python3
"""Space-group expansion golden data from pymatgen's CifParser, for octet-materials' CIF reader.

Writes tests/golden/cif/symmetry_expansion.json: for each case, a minimal CIF that gives its space group
only by a Hermann-Mauguin symbol (`_symmetry_space_group_name_H-M`), a Hall symbol, or only by its
International Tables number (`_symmetry_Int_Tables_number` / `_space_group_IT_number`), with no listed
symmetry operations, and pymatgen's expanded conventional cell: every site's species and fractional
coordinates (wrapped into [0, 1), sorted).

Every case has two sites: a general position A at (0.3429, 0.442, 0.2157) and B at the origin (a
special position in most groups, whose orbit shows which origin choice was taken). The cell follows the
crystal family (cubic a = 14 A, hexagonal a = 9 A: every pair of atoms > 0.5 A apart, octet's overlap limit; the point was drawn at random, the best of 60 by closest approach over all cases, 0.63 A; rhombohedral axes for the
`:R` cases).

Spellings: `symbol` is written into the CIF octet reads, as people write it ("P 21/c", "F m -3 m",
"P 21/n", "F d -3 m:2", "C m c a"). pymatgen 2026.10 knows the 230 standard symbols without spaces and
the COD setting table with spaces; where it does not know a spelling that octet accepts (`pymatgen`
given), the reference is computed from a CIF with pymatgen's spelling of the same setting instead (for
example "P 1 21/n 1" for "P 21/n", "P 1 2 1" for "P 2": CifParser reads no monoclinic short symbol).
Settings written with a colon ("F d -3 m:2", "R -3 m:R") and Hall symbols, which CifParser does not
read from a symbol, take the operations of the same setting from pymatgen's COD table (symm_ops.json,
matched by `universal_h_m` or `hall`) written into the CIF as `_symmetry_equiv_pos_as_xyz`, and
CifParser expands those. Every reference is checked not to have fallen back to P1; each case records
its route in `reference`.

Defaults (pymatgen, ASE and spglib agree; ITA lists it first): origin choice 1 where a group has two,
hexagonal axes for R groups in a hexagonal cell.

Run from the repository root (pins: tools/ref/requirements-cif.txt):

    python tools/ref/cif_symmetry_golden.py
"""

import json
import os
import re
import tempfile
import warnings

from importlib.metadata import version

from monty.serialization import loadfn
from pymatgen.io.cif import CifParser
import pymatgen.symmetry

COD = loadfn(os.path.join(os.path.dirname(pymatgen.symmetry.__file__), "symm_ops.json"))

OUT = os.path.join("tests", "golden", "cif", "symmetry_expansion.json")

GENERAL = (0.3429, 0.442, 0.2157)

# (tag, symbol as written for octet, spelling for pymatgen or None when the same, IT number, cell kind)
# cell kind: tri, mono, ortho, tet, hex, rho (rhombohedral axes), cub.
CASES = [
    # triclinic
    ("hm", "P 1", None, 1, "tri"),
    ("hm", "P -1", None, 2, "tri"),
    # monoclinic (unique axis b, cell choice 1 by default)
    ("hm", "P 2", "P 1 2 1", 3, "mono"),
    ("hm", "P 21", "P 1 21 1", 4, "mono"),
    ("hm", "C 2", "C 1 2 1", 5, "mono"),
    ("hm", "P m", "P 1 m 1", 6, "mono"),
    ("hm", "P c", "P 1 c 1", 7, "mono"),
    ("hm", "C m", "C 1 m 1", 8, "mono"),
    ("hm", "C c", "C 1 c 1", 9, "mono"),
    ("hm", "P 2/m", "P 1 2/m 1", 10, "mono"),
    ("hm", "P 21/m", "P 1 21/m 1", 11, "mono"),
    ("hm", "C 2/m", "C 1 2/m 1", 12, "mono"),
    ("hm", "P 2/c", "P 1 2/c 1", 13, "mono"),
    ("hm", "P 21/c", "P 1 21/c 1", 14, "mono"),
    ("hm", "P 1 21/c 1", None, 14, "mono"),
    ("hm", "P 21/n", "P 1 21/n 1", 14, "mono"),
    ("hm", "P 1 21/a 1", None, 14, "mono"),
    ("hm", "C 2/c", "C 1 2/c 1", 15, "mono"),
    ("hm", "I 1 2/a 1", None, 15, "mono"),
    # orthorhombic
    ("hm", "P 2 2 2", None, 16, "ortho"),
    ("hm", "P 21 21 21", None, 19, "ortho"),
    ("hm", "C 2 2 21", None, 20, "ortho"),
    ("hm", "P m m 2", None, 25, "ortho"),
    ("hm", "P n a 21", None, 33, "ortho"),
    ("hm", "C m c 21", None, 36, "ortho"),
    ("hm", "F d d 2", None, 43, "ortho"),
    ("hm", "I m m 2", None, 44, "ortho"),
    ("hm", "P m m m", None, 47, "ortho"),
    ("hm", "P n n n", None, 48, "ortho"),
    ("hm", "P n n n :2", "P n n n:2", 48, "ortho"),
    ("hm", "P b c a", None, 61, "ortho"),
    ("hm", "P n m a", None, 62, "ortho"),
    ("hm", "P b n m", None, 62, "ortho"),
    ("hm", "C m c m", None, 63, "ortho"),
    ("hm", "C m c a", "C m c e", 64, "ortho"),
    ("hm", "F m m m", None, 69, "ortho"),
    ("hm", "F d d d", None, 70, "ortho"),
    ("hm", "F d d d:2", None, 70, "ortho"),
    ("hm", "I m m m", None, 71, "ortho"),
    # tetragonal
    ("hm", "P 4", None, 75, "tet"),
    ("hm", "I 41", None, 80, "tet"),
    ("hm", "P -4", None, 81, "tet"),
    ("hm", "I -4", None, 82, "tet"),
    ("hm", "P 4/m", None, 83, "tet"),
    ("hm", "P 4/n", None, 85, "tet"),
    ("hm", "I 41/a", None, 88, "tet"),
    ("hm", "I 41/a:2", None, 88, "tet"),
    ("hm", "P 42 21 2", None, 94, "tet"),
    ("hm", "P 4 m m", None, 99, "tet"),
    ("hm", "I 41 m d", None, 109, "tet"),
    ("hm", "P -4 21 m", None, 113, "tet"),
    ("hm", "I -4 2 d", None, 122, "tet"),
    ("hm", "P 4/m m m", None, 123, "tet"),
    ("hm", "P 4/n m m", None, 129, "tet"),
    ("hm", "P 4/n m m:2", None, 129, "tet"),
    ("hm", "I 4/m m m", None, 139, "tet"),
    ("hm", "I 41/a m d", None, 141, "tet"),
    ("hm", "I 41/a m d:2", None, 141, "tet"),
    # trigonal
    ("hm", "P 3", None, 143, "hex"),
    ("hm", "R 3", None, 146, "hex"),
    ("hm", "P -3", None, 147, "hex"),
    ("hm", "R -3", None, 148, "hex"),
    ("hm", "P 31 2 1", None, 152, "hex"),
    ("hm", "R 3 2", None, 155, "hex"),
    ("hm", "P 3 m 1", None, 156, "hex"),
    ("hm", "R 3 m", None, 160, "hex"),
    ("hm", "R 3 c", None, 161, "hex"),
    ("hm", "P -3 m 1", None, 164, "hex"),
    ("hm", "R -3 m", None, 166, "hex"),
    ("hm", "R -3 m:H", None, 166, "hex"),
    ("hm", "R -3 m:R", None, 166, "rho"),
    ("hm", "R -3 c", None, 167, "hex"),
    ("hm", "R 3:R", None, 146, "rho"),
    # hexagonal
    ("hm", "P 6", None, 168, "hex"),
    ("hm", "P 63", None, 173, "hex"),
    ("hm", "P -6", None, 174, "hex"),
    ("hm", "P 63/m", None, 176, "hex"),
    ("hm", "P 61 2 2", None, 178, "hex"),
    ("hm", "P 63 m c", None, 186, "hex"),
    ("hm", "P -6 m 2", None, 187, "hex"),
    ("hm", "P -6 2 m", None, 189, "hex"),
    ("hm", "P 6/m m m", None, 191, "hex"),
    ("hm", "P 63/m m c", None, 194, "hex"),
    # cubic
    ("hm", "P 2 3", None, 195, "cub"),
    ("hm", "F 2 3", None, 196, "cub"),
    ("hm", "I 21 3", None, 199, "cub"),
    ("hm", "P m -3", None, 200, "cub"),
    ("hm", "P n -3", None, 201, "cub"),
    ("hm", "F m -3", None, 202, "cub"),
    ("hm", "F d -3", None, 203, "cub"),
    ("hm", "P a -3", None, 205, "cub"),
    ("hm", "P 41 3 2", None, 213, "cub"),
    ("hm", "P -4 3 m", None, 215, "cub"),
    ("hm", "F -4 3 m", None, 216, "cub"),
    ("hm", "I -4 3 d", None, 220, "cub"),
    ("hm", "P m -3 m", None, 221, "cub"),
    ("hm", "P n -3 n", None, 222, "cub"),
    ("hm", "F m -3 m", None, 225, "cub"),
    ("hm", "Fm-3m", None, 225, "cub"),
    ("hm", "F d -3 m", None, 227, "cub"),
    ("hm", "F d -3 m:1", None, 227, "cub"),
    ("hm", "F d -3 m:2", None, 227, "cub"),
    ("hm", "I a -3 d", None, 230, "cub"),
    # Hall symbols (exact settings)
    ("hall", "-P 2ybc", None, 14, "mono"),
    ("hall", "-F 4vw 2vw 3", None, 227, "cub"),
    ("hall", "-R 3 2\"", None, 166, "hex"),
    # International Tables number only (pymatgen: SpaceGroup.from_int_number)
    ("num_old", "2", None, 2, "tri"),
    ("num_old", "14", None, 14, "mono"),
    ("num_new", "15", None, 15, "mono"),
    ("num_old", "62", None, 62, "ortho"),
    ("num_new", "70", None, 70, "ortho"),
    ("num_old", "129", None, 129, "tet"),
    ("num_new", "141", None, 141, "tet"),
    ("num_old", "166", None, 166, "hex"),
    ("num_new", "194", None, 194, "hex"),
    ("num_old", "221", None, 221, "cub"),
    ("num_new", "225", None, 225, "cub"),
    ("num_old", "227", None, 227, "cub"),
]

CELLS = {
    "tri": (7.1, 8.3, 9.2, 81.0, 77.0, 69.0),
    "mono": (7.1, 8.3, 9.2, 90.0, 103.0, 90.0),
    "ortho": (7.1, 8.3, 9.2, 90.0, 90.0, 90.0),
    "tet": (7.7, 7.7, 9.2, 90.0, 90.0, 90.0),
    "hex": (9.0, 9.0, 10.0, 90.0, 90.0, 120.0),
    "rho": (7.0, 7.0, 7.0, 75.0, 75.0, 75.0),
    "cub": (14.0, 14.0, 14.0, 90.0, 90.0, 90.0),
}

TAGS = {
    "hm": "_symmetry_space_group_name_H-M",
    "hall": "_space_group_name_Hall",
    "num_old": "_symmetry_Int_Tables_number",
    "num_new": "_space_group_IT_number",
}


def cif_text(tag, value, kind):
    a, b, c, al, be, ga = CELLS[kind]
    v = value if tag.startswith("num") else "'" + value + "'"
    x, y, z = GENERAL
    return (
        "data_case\n"
        f"{TAGS[tag]}   {v}\n"
        f"_cell_length_a   {a}\n_cell_length_b   {b}\n_cell_length_c   {c}\n"
        f"_cell_angle_alpha   {al}\n_cell_angle_beta   {be}\n_cell_angle_gamma   {ga}\n"
        "loop_\n _atom_site_label\n _atom_site_type_symbol\n _atom_site_fract_x\n"
        " _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n"
        f"  Na1  Na  {x}  {y}  {z}  1.0\n"
        "  Cl1  Cl  0.0  0.0  0.0  1.0\n"
    )


def cod_ops(tag, value):
    """The symmetry operations of pymatgen's COD setting table (symm_ops.json) for a setting that
    CifParser cannot read from a symbol: matched by `universal_h_m` (e.g. "F d -3 m :2") or, for a
    Hall symbol, by `hall`, ignoring spaces."""
    key = re.sub(r"\s+", "", value)
    field = "hall" if tag == "hall" else "universal_h_m"
    for entry in COD:
        if re.sub(r"\s+", "", entry[field]) == key:
            return entry["symops"], entry["universal_h_m"]
    raise SystemExit(f"no COD setting for {value!r}")


def with_ops(text, ops):
    """`text` with its space-group line replaced by an explicit operation loop."""
    lines = [ln for ln in text.splitlines() if not ln.startswith(tuple(TAGS.values()))]
    loop = ["loop_", " _symmetry_equiv_pos_as_xyz"] + [f"  '{op}'" for op in ops]
    return "\n".join(lines[:1] + loop + lines[1:]) + "\n"


def expand(text):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = CifParser.from_str(text, site_tolerance=1e-4)
        s = parser.parse_structures(primitive=False)[0]
    msgs = [str(w.message) for w in caught] + list(parser.warnings)
    if any("Defaulting to P1" in m for m in msgs):
        return None
    d = s.distance_matrix + 1e9 * (s.distance_matrix == 0)
    if d.min() <= 0.5:
        raise SystemExit(f"atoms {d.min():.3f} A apart (octet refuses < 0.5 A):\n{text}")
    sites = []
    for site in s:
        f = [float(u) % 1.0 for u in site.frac_coords]
        f = [0.0 if u > 1.0 - 1e-12 else u for u in f]
        sites.append([site.specie.symbol, *[round(u, 12) for u in f]])
    sites.sort()
    return sites


def main():
    cases, failed = [], []
    for tag, symbol, pmg, number, kind in CASES:
        text = cif_text(tag, symbol, kind)
        ref = expand(cif_text(tag, pmg or symbol, kind))
        route = "CifParser reads the symbol"
        if ref is None and (":" in symbol or tag == "hall"):
            ops, name = cod_ops(tag, symbol)
            ref = expand(with_ops(text, ops))
            route = f"CifParser expands the operations of COD setting `{name}` (symm_ops.json)"
        if ref is None:
            failed.append(pmg or symbol)
            continue
        cases.append({"tag": TAGS[tag], "symbol": symbol, "pymatgen_symbol": pmg or symbol, "number": number,
                      "reference": route, "cell": kind, "cif": text, "atoms": len(ref), "sites": ref})
    if failed:
        raise SystemExit(f"pymatgen fell back to P1 for {failed}")
    out = {
        "generator": "tools/ref/cif_symmetry_golden.py",
        "pymatgen": version("pymatgen"),
        "site_tolerance": 1e-4,
        "note": "sites: [element, x, y, z], fractional, wrapped into [0, 1), sorted",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(OUT))
    # One case per line: reviewable diffs without a 300 KB indented file.
    head = json.dumps({k: v for k, v in out.items() if k != "cases"}, sort_keys=True)[:-1]
    body = ",\n".join(json.dumps(c, sort_keys=True, separators=(",", ":")) for c in cases)
    with os.fdopen(fd, "w") as f:
        f.write(f'{head}, "cases": [\n{body}\n]}}\n')
    os.chmod(tmp, 0o644)
    os.replace(tmp, OUT)
    print(f"{OUT}: {len(cases)} cases, {sum(c['atoms'] for c in cases)} atoms")


if __name__ == "__main__":
    main()
