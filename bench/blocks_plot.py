"""Plot and tabulate the block-comparison runs written by bench/blocks.sh (one JSON line per event).

Usage: python3 bench/blocks_plot.py bench/blocks   -> bench/blocks/blocks.png and a Markdown table.

Wall time is training time only: the sum over steps of batch*seq / tokens_per_s (evaluation and
checkpoint time excluded), so "equal wall time" compares what each block learns per second of
training. The equal-time budget is the shortest total training time among the runs; each run's
validation loss there is interpolated linearly between its evaluations. Baseline: preln.
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["preln", "parallel", "sas", "sas-p", "sas-p-nonorm"]


def load(path):
    start, steps, evals, summary = None, [], [], None
    for line in path.read_text().splitlines():
        d = json.loads(line)
        ev = d.get("event")
        if ev == "start":
            start = d
        elif ev == "step":
            steps.append(d)
        elif ev == "eval":
            evals.append(d)
        elif ev == "summary":
            summary = d
    return start, steps, evals, summary


def train_clock(steps, summary):
    """Cumulative training seconds at the end of each step: the sum of step durations, each
    batch*seq / tokens_per_s (batch*seq from the summary's tokens/s and seconds; bench/blocks.sh
    uses 8 * 128)."""
    tokens_per_step = 8 * 128
    if summary and summary.get("train_seconds") and summary.get("steps"):
        tokens_per_step = round(summary["tokens_per_s"] * summary["train_seconds"] / summary["steps"])
    clock, t = {}, 0.0
    for s in steps:
        t += tokens_per_step / s["tokens_per_s"]
        clock[s["step"]] = t
    return clock


def interp(xs, ys, x):
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def main(folder):
    folder = Path(folder)
    found = {p.stem: load(p) for p in folder.glob("*.jsonl")}
    if not found:
        sys.exit(f"no runs in {folder}")
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    runs = {n: found[n] for n in names}
    base = "preln" if "preln" in runs else names[0]

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 4.8))
    curves = {}
    for name, (start, steps, evals, summ) in runs.items():
        clock = train_clock(steps, summ)
        xs = [s["step"] for s in steps]
        ys = [s["loss"] for s in steps]
        k = 20  # moving average over 20 steps for the noisy training loss
        sm = [statistics.fmean(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
        a1.plot(xs, sm, label=name, lw=1)
        es = [e["step"] for e in evals]
        vs = [e["val_loss"] for e in evals]
        ts = [clock.get(s, 0.0) for s in es]
        a2.plot(es, vs, label=name, marker="o", ms=2)
        a3.plot([t / 60 for t in ts], vs, label=name, marker="o", ms=2)
        curves[name] = (es, ts, vs, clock[xs[-1]] if xs else 0.0)
    a1.set(title="training loss (20-step mean)", xlabel="step", ylabel="loss")
    a2.set(title="validation loss vs step", xlabel="step", ylabel="loss")
    a3.set(title="validation loss vs training wall time", xlabel="minutes (training only)", ylabel="loss")
    for a in (a1, a2, a3):
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle("Simplified transformer blocks on tinyshakespeare, same seed and steps (octet, CPU)")
    fig.tight_layout()
    fig.savefig(folder / "blocks.png", dpi=110)

    budget = min(c[3] for c in curves.values())
    bstart, _, bevals, bsum = runs[base]
    bparams = bstart["params"] if bstart else float("nan")
    btps = bsum["tokens_per_s"] if bsum else float("nan")
    bval = bevals[-1]["val_loss"]
    bes, bts, bvs, _ = curves[base]
    btime = interp(bts, bvs, budget)
    print(f"Equal wall time: {budget / 60:.1f} min of training (the fastest run's total).")
    print()
    print(
        "| block | params | vs " + base + " | tokens/s | vs " + base + " | val loss @ step "
        + str(bes[-1]) + " | vs " + base + " | val loss @ " + f"{budget / 60:.1f} min" + " | vs " + base + " |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (start, steps, evals, summ) in runs.items():
        p = start["params"] if start else float("nan")
        tps = summ["tokens_per_s"] if summ else float("nan")
        v = evals[-1]["val_loss"]
        es, ts, vs, _ = curves[name]
        vt = interp(ts, vs, budget)
        print(
            f"| {name} | {p} | {p / bparams:.3f} | {tps:.0f} | {tps / btps:.3f}x | {v:.4f} | "
            f"{100 * (v - bval) / bval:+.2f}% | {vt:.4f} | {100 * (vt - btime) / btime:+.2f}% |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/blocks")
