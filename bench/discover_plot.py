"""Per-round metrics of `octet materials discover`, labelled: hit rate and control prevalence with
Wilson 95% intervals, DAF, precision/recall/F1 of the model's "stable" call, the model's MAE on each
round's new oracle labels before training on them (and, where the run has them, on held-out oracle
labels and on flla's DFT labels after each round's training), and new stable structures (cumulative).

The binary's own metrics.png is drawn without a font (no labels); this draws the same numbers for
people. Usage: discover_plot.py RUN_DIR/metrics.jsonl out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def with_ci(ax, rounds, rows, key, label, color):
    nan = float("nan")
    v = [nan if r[key]["value"] is None else 100 * r[key]["value"] for r in rows]  # 0/0: no point
    lo = [0.0 if r[key]["value"] is None else max(0.0, 100 * (r[key]["value"] - r[key]["ci95"][0])) for r in rows]
    hi = [0.0 if r[key]["value"] is None else max(0.0, 100 * (r[key]["ci95"][1] - r[key]["value"])) for r in rows]
    ax.errorbar(rounds, v, yerr=[lo, hi], marker="o", capsize=3, label=label, color=color)


def main(src, dst):
    rows = [json.loads(line) for line in open(src) if line.strip()]
    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    ax = axes[0][0]
    with_ci(ax, rounds, rows, "hit_rate", "selected: on/below hull", "tab:red")
    with_ci(ax, rounds, rows, "prevalence", "control: on/below hull", "tab:gray")
    ax.set(title="hit rate vs control prevalence (%)", xlabel="round")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    with_ci(ax, rounds, rows, "hit_rate_25mev", "selected: within 25 meV", "tab:red")
    with_ci(ax, rounds, rows, "prevalence_25mev", "control: within 25 meV", "tab:gray")
    ax.set(title="within 25 meV/atom of the hull (%)", xlabel="round")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    for key, label in (("daf", "DAF (on hull)"), ("daf_25mev", "DAF (25 meV)")):
        ax.plot(rounds, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label=label)
    ax.set(title="discovery acceleration factor", xlabel="round", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    for key in ("precision", "recall"):
        with_ci(ax, rounds, rows, key, key, None)
    ax.plot(rounds, [float("nan") if r["f1"] is None else 100 * r["f1"] for r in rows], marker="s", label="F1")
    ax.set(title='model\'s "stable" call (%)', xlabel="round")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    ax.plot(rounds, [1e3 * r["mae_before_training"] for r in rows], marker="o", color="tab:red",
            label="new labels, before training")
    # The learning curve (runs with --holdout / --known): the ensemble after each round's training.
    for key, label, color in (("heldout_mae_after", "held-out oracle labels", "tab:blue"),
                              ("dft_mae_after", "flla DFT labels", "tab:purple")):
        if any(r.get(key) is not None for r in rows):
            ax.plot(rounds, [1e3 * r[key] if r.get(key) is not None else float("nan") for r in rows],
                    marker="s", color=color, label=label)
    ax.set(title="ensemble MAE (meV/atom)", xlabel="round")
    ax.legend(fontsize=8)
    ax = axes[1][2]
    ax.plot(rounds, [r["discovered_cumulative"] for r in rows], marker="o", color="tab:green")
    ax.set(title="new stable structures (cumulative)", xlabel="round")
    for a in axes.flat:
        a.set_xticks(rounds)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    for r in rows:
        h, p = r["hit_rate"], r["prevalence"]
        print(f'round {r["round"]}: hit {h["k"]}/{h["n"]}  prevalence {p["k"]}/{p["n"]}  DAF {r["daf"]}  '
              f'MAE {1e3 * r["mae_before_training"]:.1f} meV/atom  discovered {r["discovered_cumulative"]}')


if __name__ == "__main__":
    main(*sys.argv[1:3])
