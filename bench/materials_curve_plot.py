"""Learning curve of the GNoME models: held-out MAE (meV/atom) vs training-set size, log-log.

Reads the summary lines `octet materials train --json` prints (bench/materials_curve.sh collects them)
and draws one line per model; prints the table. Usage: materials_curve_plot.py curve.jsonl out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    runs = [json.loads(line) for line in open(src) if line.strip()]
    by_model = {}
    for r in runs:
        name = r["data"].rsplit("/", 1)[-1].removesuffix(".jsonl")
        by_model.setdefault(f'{r["model"]} ({name})', []).append((r["train"], 1e3 * r["ensemble_test_mae"], r["test"]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    print("| model | training samples | held-out MAE (meV/atom) | test samples |")
    print("| --- | ---: | ---: | ---: |")
    for model, pts in sorted(by_model.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=model)
        for n, mae, test in pts:
            print(f"| {model} | {n} | {mae:.1f} | {test} |")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples")
    ax.set_ylabel("held-out MAE (meV/atom)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("GNoME models on the CPU: MAE vs data")
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
