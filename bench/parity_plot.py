"""Plot and tabulate the loss-parity runs written by bench/parity.sh (one JSON line per event).

Usage: python3 bench/parity_plot.py bench/parity    -> bench/parity/parity.png and a Markdown table.
The first level found among bf16 / fp32 is the baseline; each other level's final validation loss is
reported relative to it.
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    steps, evals, summary = [], [], None
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d.get("event") == "step":
            steps.append(d)
        elif d.get("event") == "eval":
            evals.append(d)
        elif d.get("event") == "summary":
            summary = d
    return steps, evals, summary


def main(folder):
    folder = Path(folder)
    runs = {p.stem: load(p) for p in sorted(folder.glob("*.jsonl"))}
    if not runs:
        sys.exit(f"no runs in {folder}")
    base = next((b for b in ("bf16", "fp32") if b in runs), next(iter(runs)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, (steps, evals, _) in runs.items():
        xs = [s["step"] for s in steps]
        ys = [s["loss"] for s in steps]
        k = 20  # moving average over 20 steps for the noisy training loss
        sm = [statistics.fmean(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
        a1.plot(xs, sm, label=name, lw=1)
        a2.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], label=name, marker="o", ms=3)
    a1.set(title="training loss (20-step mean)", xlabel="step", ylabel="loss")
    a2.set(title="validation loss", xlabel="step", ylabel="loss")
    for a in (a1, a2):
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle("GPT-2 6L d=256 on tinyshakespeare, same seed: precision levels (octet, CPU)")
    fig.tight_layout()
    fig.savefig(folder / "parity.png", dpi=110)
    bval = runs[base][1][-1]["val_loss"]
    print("| level | final val loss | vs " + base + " | final train loss | train tok/s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (steps, evals, summ) in runs.items():
        v = evals[-1]["val_loss"]
        tps = summ["tokens_per_s"] if summ else float("nan")
        rss = summ["peak_rss_bytes"] / 2**20 if summ else float("nan")
        print(f"| {name} | {v:.4f} | {100 * (v - bval) / bval:+.2f}% | {steps[-1]['loss']:.4f} | {tps:.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/parity")
