"""Hit rate and control prevalence of each round against the fixed round-0 hull (CHGNet-relaxed flla
phases + elements + bootstrap), from a discover journal (pymatgen PhaseDiagram)."""
import json, sys
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition
plans, res = {}, {}
for l in open(sys.argv[1]):
    try: r = json.loads(l)
    except ValueError: continue
    if r["kind"] == "plan":
        for it in r["items"]: plans[it["id"]] = dict(it, round=r["round"])
    elif r["kind"] == "oracle": res[r["result"]["id"]] = r["result"]
ent = lambda i: PDEntry(Composition("".join(plans[i]["species"])), res[i]["energy"], name=i)
pd0 = PhaseDiagram([ent(i) for i in res if res[i]["ok"] and plans[i]["round"] == 0])
for rnd in sorted({p["round"] for p in plans.values()} - {0}):
    out = {}
    for role in ("selected", "control"):
        ids = [i for i, p in plans.items() if p["round"] == rnd and p["role"] == role and res.get(i, {}).get("ok")]
        e = [pd0.get_decomp_and_e_above_hull(ent(i), allow_negative=True)[1] for i in ids]
        out[role] = (sum(x <= 1e-6 for x in e), sum(x <= 0.025 for x in e), len(e))
    s, c = out["selected"], out["control"]
    print(f"round {rnd}: vs round-0 hull: selected {s[0]}/{s[2]} on/below ({s[1]} within 25 meV), control {c[0]}/{c[2]} ({c[1]})")
