"""The demo's comparison from Python: SFPrompt vs full federated fine-tuning over three seeds.

``make demo`` runs ``sfp-ray compare --methods sfprompt,fl_full --seeds 0,1,2``; this script
does the same through the Python API, prints the same mean ± 95 % CI table, and draws the
accuracy curves (mean over seeds, with the min-max band) from the returned DataFrames.

Run (after ``make install``; the offline backbone is pre-trained on first use)::

    .venv/bin/python examples/compare_from_python.py            # the demo: about 6 min on 2 cores
    .venv/bin/python examples/compare_from_python.py --quick    # 2 rounds, 2 seeds, a smoke run

Everything the CLI writes lands in ``--out``; the figure is ``<out>/example_accuracy.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import sfp_ray
from sfp_ray.reports import format_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/example-compare")
    ap.add_argument("--executor", choices=("ray", "serial"), default="ray")
    ap.add_argument("--quick", action="store_true", help="2 rounds and seeds 0,1: a smoke run")
    args = ap.parse_args()

    overrides = ["federation.rounds=2"] if args.quick else []
    seeds = [0, 1] if args.quick else [0, 1, 2]
    r = sfp_ray.compare(["sfprompt", "fl_full"], overrides=overrides, seeds=seeds, executor=args.executor,
                        out=args.out, echo=print)

    # the table the CLI prints: mean ± CI over seeds, costs relative to fl_full
    print(format_summary(r.summary))
    cols = ["method", "seeds", "final_accuracy_mean", "final_accuracy_ci95", "client_flops_ratio", "bytes_ratio"]
    print(r.summary[cols].to_string(index=False))

    # accuracy per round: mean over seeds, band from the lowest to the highest seed
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in r.rounds.dropna(subset=["test_accuracy"]).groupby("method", sort=False):
        per_round = g.groupby("round")["test_accuracy"]
        mean, lo, hi = per_round.mean(), per_round.min(), per_round.max()
        ax.plot(mean.index, mean.values, marker="o", label=method)
        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test accuracy (mean over {len(seeds)} seeds, min-max band)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(r.out) / "example_accuracy.png"
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
