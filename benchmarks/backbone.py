"""How much of SFPrompt's gap to full fine-tuning is the offline backbone?

The default task fine-tunes a small ViT that sfp-ray pre-trains itself on Fashion-MNIST
classes 0-4 (the offline stand-in for ImageNet pre-training). The seeds of a comparison change
the partition, the cohorts and the client-side initialisation, never the backbone, so its own
luck is not in the comparison's interval. This script compares ``sfprompt``,
``sfprompt_no_prune`` and ``fl_full`` (each at its default learning rate, seeds 0, 1, 2, the
default 8 rounds, the Ray executor) on three backbones: the default (12,000 source images,
2 epochs) and two pre-trained on all 30,000 source images for 2 and 3 epochs.

Each backbone is one ``sfp-ray compare`` into ``--runs/<variant>`` (skipped when its report is
complete). Writes ``benchmarks/results/backbone.csv`` (one row per variant, method and seed)
and ``backbone.md`` (per variant: the source accuracy, mean ± 95 % CI per method, and the
paired differences).

Run: ``.venv/bin/python benchmarks/backbone.py [--runs runs/bench-backbone]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
ROOT = HERE.parent
METHODS = ("sfprompt", "sfprompt_no_prune", "fl_full")
SEEDS = (0, 1, 2)
VARIANTS: dict[str, tuple[str, ...]] = {
    "default-12k-2ep": (),
    "30k-2ep": ("pretrain.max_samples=null", "pretrain.epochs=2"),
    "30k-3ep": ("pretrain.max_samples=null", "pretrain.epochs=3"),
}


def complete(out: Path) -> bool:
    p = out / "summary_by_seed.csv"
    if not p.is_file():
        return False
    df = pd.read_csv(p)
    return {(m, int(s)) for m, s in zip(df["method"], df["seed"])} >= {(m, s) for m in METHODS for s in SEEDS}


def run(out: Path, sets: tuple[str, ...]) -> None:
    cmd = [sys.executable, "-m", "sfp_ray", "--quiet", "compare", "--methods", ",".join(METHODS), "--seeds",
           ",".join(map(str, SEEDS)), "--no-plots", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    subprocess.run(cmd, cwd=ROOT, check=True)


def source_accuracy(out: Path) -> float:
    import torch
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    ckpt = cfg["runs"][0]["checkpoint"]
    meta = torch.load(ROOT / ckpt if not Path(ckpt).is_absolute() else ckpt, map_location="cpu",
                      weights_only=False).get("sfp_ray", {})
    return float(meta.get("source_test_accuracy", float("nan")))


def main(argv: list[str] | None = None) -> int:
    from sfp_ray.stats import spread

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-backbone"))
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    runs, res = Path(args.runs), Path(args.results)
    rows, md = [], ["| backbone (source images x epochs) | source accuracy | sfprompt | sfprompt_no_prune | fl_full | "
                    "sfprompt - fl_full | no_prune - fl_full | sfprompt - no_prune |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, sets in VARIANTS.items():
        out = runs / name
        if not complete(out):
            run(out, sets)
        by = pd.read_csv(out / "summary_by_seed.csv")
        src = source_accuracy(out)
        for _, r in by.iterrows():
            rows.append({"backbone": name, "overrides": " ".join(sets), "source_accuracy": src, "method": r["method"],
                         "seed": int(r["seed"]), "final_accuracy": float(r["final_accuracy"])})
        acc = by.pivot_table(index="seed", columns="method", values="final_accuracy")
        md.append(f"| {name} | {src:.3f} | " + " | ".join(str(spread(acc[m])) for m in METHODS) + " | "
                  + " | ".join(f"{spread(acc[a] - acc[b]).mean:+.3f} ± {spread(acc[a] - acc[b]).ci95:.3f}"
                               for a, b in (("sfprompt", "fl_full"), ("sfprompt_no_prune", "fl_full"),
                                            ("sfprompt", "sfprompt_no_prune"))) + " |")
    res.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(res / "backbone.csv", index=False)
    (res / "backbone_table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
