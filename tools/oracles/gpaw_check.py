#!/usr/bin/python3
"""Checks the top discoveries of an `octet materials discover` run with real DFT: GPAW (PBE, plane
waves) single points on the oracle-relaxed structures of the top discoveries and of the hull's
elemental references, then formation energies per atom from each code against its own elemental
references (GPAW's absolute energies are relative to its atomic PAW references and cannot be set
against CHGNet's/MP's directly).

Top discoveries: candidates of the loop (bootstrap, selected, control) that are vertices of the
final oracle hull (pymatgen's PhaseDiagram over every successful oracle result of the run), the
smallest cells first (GPAW's cost grows steeply with atoms and oxides need ~600 eV), at most
--top of them. Single points are at the oracle's geometry, not re-relaxed with GPAW.

Usage (Debian's python3 with gpaw, gpaw-data, python3-pymatgen):
  /usr/bin/python3 tools/oracles/gpaw_check.py RUN_DIR [--top 4] [--ecut 600] [--kdensity 2.5]
      [--workers 2] [--max-atoms 6] [--out gpaw_check.json]
Prints a table; writes the numbers as JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load_run(run_dir):
    plans, results = {}, {}
    with open(os.path.join(run_dir, "journal.jsonl")) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if r.get("kind") == "plan":
                for it in r["items"]:
                    plans[it["id"]] = dict(it, round=r["round"])
            elif r.get("kind") == "oracle":
                results[r["result"]["id"]] = r["result"]
    return plans, results


def frame(fid, species, cell, positions, opts):
    head = 'Lattice="{}" Properties=species:S:1:pos:R:3 id="{}" task=single {} pbc="T T T"'.format(
        " ".join(f"{x:.10f}" for row in cell for x in row), fid, opts
    )
    lines = [str(len(species)), head]
    lines += [f"{s} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}" for s, p in zip(species, positions)]
    return "\n".join(lines) + "\n"


def run_gpaw(frames, workers):
    """Runs gpaw_worker.py processes over the frames (round-robin); returns {id: result}."""
    chunks = [frames[k::workers] for k in range(workers)]
    procs = []
    for chunk in chunks:
        if not chunk:
            continue
        p = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "gpaw_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        p.stdin.write("".join(chunk))
        p.stdin.close()
        procs.append(p)
    out = {}
    for p in procs:
        for line in p.stdout:
            r = json.loads(line)
            if "id" in r:
                out[r["id"]] = r
                print(f"  gpaw {r['id']}: ok={r['ok']} {r.get('wall_s', 0):.1f} s {r.get('error') or ''}", file=sys.stderr)
        p.wait()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--ecut", type=float, default=600.0)
    ap.add_argument("--kdensity", type=float, default=2.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-atoms", type=int, default=6)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated ids of hull structures to check instead of the smallest")
    ap.add_argument("--reuse", default=None, help="an earlier --out file: its successful GPAW results for the same ids, "
                    "settings and geometry are not recomputed")
    a = ap.parse_args()

    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    plans, results = load_run(a.run_dir)
    ok = {i: r for i, r in results.items() if r.get("ok") and i in plans}
    entries = []
    for i, r in ok.items():
        e = PDEntry(Composition("".join(plans[i]["species"])), r["energy"], name=i)
        entries.append(e)
    pd = PhaseDiagram(entries)
    refs = {el.symbol: e.name for el, e in pd.el_refs.items()}
    stable = [e for e in pd.stable_entries if plans[e.name]["role"] in ("bootstrap", "selected", "control")]
    stable.sort(key=lambda e: (len(plans[e.name]["species"]), pd.get_form_energy_per_atom(e)))
    top = [e for e in stable if len(plans[e.name]["species"]) <= a.max_atoms][: a.top]
    if a.only:
        top = [e for e in stable if e.name in a.only.split(",")]
    print(f"{len(ok)} oracle results; {len(stable)} loop structures on the final hull; checking {len(top)}", file=sys.stderr)
    opts = f"ecut={a.ecut} kdensity={a.kdensity}"
    needed = {sp for e in top for sp in plans[e.name]["species"]}
    refs = {el: i for el, i in refs.items() if el in needed or not top}
    ids = list(refs.values()) + [e.name for e in top]
    frames = [frame(i, plans[i]["species"], ok[i]["cell"], ok[i]["positions"], opts) for i in ids]
    g = {}
    if a.reuse and os.path.exists(a.reuse):
        prev = json.load(open(a.reuse))
        if prev.get("ecut") == a.ecut and prev.get("kdensity") == a.kdensity:
            for i in ids:
                r = prev.get("gpaw", {}).get(i)
                if r and r.get("ok") and r.get("frame") == frames[ids.index(i)]:
                    g[i] = r
        print(f"reusing {len(g)} GPAW results from {a.reuse}", file=sys.stderr)
    todo = [f for i, f in zip(ids, frames) if i not in g]
    t0 = time.time()
    g.update(run_gpaw(todo, a.workers))
    wall = time.time() - t0
    for i, f in zip(ids, frames):
        if i in g:
            g[i]["frame"] = f
    mu = {}
    for el, i in refs.items():
        if not g.get(i, {}).get("ok"):
            sys.exit(f"GPAW failed on the {el} reference {i}: {g.get(i, {}).get('error')}")
        mu[el] = g[i]["energy_per_atom"]
    rows = []
    for e in top:
        i = e.name
        sp = plans[i]["species"]
        comp = Composition("".join(sp))
        chg = pd.get_form_energy_per_atom(e)
        r = g.get(i, {})
        gpaw = None
        if r.get("ok"):
            gpaw = (r["energy"] - sum(mu[s] for s in sp)) / len(sp)
        rows.append(
            {
                "id": i,
                "formula": comp.reduced_formula,
                "atoms": len(sp),
                "round": plans[i]["round"],
                "role": plans[i]["role"],
                "chgnet_e_form": chg,
                "gpaw_e_form": gpaw,
                "diff": None if gpaw is None else gpaw - chg,
                "gpaw_wall_s": r.get("wall_s"),
                "gpaw_error": r.get("error"),
            }
        )
    cpu = sum(r.get("wall_s") or 0 for r in g.values())
    print(f"references: {refs}; GPAW PBE {a.ecut:.0f} eV, k-density {a.kdensity}; this call's wall {wall:.0f} s; "
          f"sum of single-point times {cpu:.0f} s")
    print("| id | formula | atoms | CHGNet E_f (eV/atom) | GPAW E_f (eV/atom) | GPAW - CHGNet | GPAW s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        gp = "failed" if r["gpaw_e_form"] is None else f"{r['gpaw_e_form']:.3f}"
        df = "" if r["diff"] is None else f"{r['diff']:+.3f}"
        print(f"| {r['id']} | {r['formula']} | {r['atoms']} | {r['chgnet_e_form']:.3f} | {gp} | {df} | {r['gpaw_wall_s'] or 0:.0f} |")
    diffs = [abs(r["diff"]) for r in rows if r["diff"] is not None]
    if diffs:
        print(f"mean |GPAW - CHGNet| = {sum(diffs) / len(diffs):.3f} eV/atom over {len(diffs)}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(
                {
                    "references": refs,
                    "gpaw_mu": mu,
                    "ecut": a.ecut,
                    "kdensity": a.kdensity,
                    "wall_s": wall,
                    "gpaw": {i: {k: v for k, v in r.items() if k not in ("forces", "positions", "cell", "trajectory")}
                             for i, r in g.items()},
                    "rows": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
