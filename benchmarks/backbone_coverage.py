"""Does SFPrompt keep up with full fine-tuning when the frozen backbone covers the target task?

SFPrompt freezes the head and the body, so its accuracy is bounded by what the pre-trained
features already separate. The paper's backbone saw ImageNet-21k, which holds the categories
of its CIFAR targets; the offline default saw five *other* Fashion-MNIST classes. This script
compares ``sfprompt``, ``sfprompt_no_prune``, ``fl_full`` and ``fl_linear`` (a linear probe of
the frozen backbone: how much the features alone give), each at its default learning rate,
seeds 0, 1, 2, 8 rounds, the Ray executor, on three source/target pairs with the same
pre-training budget (12,000 images, 2 epochs):

- ``default``: source classes 0-4, target 5-9 (disjoint; the project's default);
- ``even-odd``: source 0, 2, 4, 6, 8, target 1, 3, 5, 7, 9 (disjoint, the other obvious split);
- ``all-10``: source all ten classes, target 5-9: the backbone has seen the target
  categories (about 20 % of the target-class training images, 1,200 per class, labelled),
  as ImageNet has CIFAR's. A diagnostic, not a transfer task.

Every report under ``--runs/<variant>/`` is read (``summary_by_seed.csv``, any depth) and
only the (method, seed) pairs still missing are run, one ``sfp-ray compare`` per method into
``--runs/<variant>/<method>``. Writes ``benchmarks/results/backbone_coverage.csv`` (one row
per variant, method and seed) and ``backbone_coverage_table.md`` (mean ± 95 % CI per method,
paired differences).

Run: ``.venv/bin/python benchmarks/backbone_coverage.py [--runs runs/bench-coverage]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
from backbone import source_accuracy  # benchmarks/backbone.py: the backbone's own source-task accuracy

HERE = Path(__file__).parent
ROOT = HERE.parent
METHODS = ("sfprompt", "sfprompt_no_prune", "fl_full", "fl_linear")
SEEDS = (0, 1, 2)
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "even-odd": ("pretrain.classes=0,2,4,6,8", "data.classes=1,3,5,7,9"),
    "all-10": ("pretrain.classes=null",),
}
PAIRS = (("sfprompt", "fl_full"), ("sfprompt_no_prune", "fl_full"), ("sfprompt", "sfprompt_no_prune"),
         ("fl_linear", "fl_full"))


def collected(variant_dir: Path) -> pd.DataFrame:
    """Every (method, seed) row of the reports under ``variant_dir``, the first of duplicates kept."""
    frames = []
    for p in sorted(variant_dir.rglob("summary_by_seed.csv")):
        df = pd.read_csv(p)
        df["report"] = str(p.parent)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["method", "seed", "final_accuracy", "report"])
    df = pd.concat(frames, ignore_index=True)
    df["seed"] = df["seed"].astype(int)
    return df.drop_duplicates(["method", "seed"])


def run(out: Path, method: str, seeds: list[int], sets: tuple[str, ...]) -> None:
    cmd = [sys.executable, "-m", "sfp_ray", "--quiet", "compare", "--methods", method, "--seeds",
           ",".join(map(str, seeds)), "--no-plots", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def table(rows: pd.DataFrame, sources: dict[str, float]) -> list[str]:
    from sfp_ray.stats import spread

    head = ["| backbone | source accuracy | " + " | ".join(METHODS) + " | "
            + " | ".join(f"{a} − {b}" for a, b in PAIRS) + " |",
            "|---|---:|" + "---:|" * (len(METHODS) + len(PAIRS))]
    for name in VARIANTS:
        acc = rows[rows["backbone"] == name].pivot_table(index="seed", columns="method", values="final_accuracy")
        cells = [str(spread(acc[m])) for m in METHODS]
        for a, b in PAIRS:
            d = spread(acc[a] - acc[b])
            cells.append(f"{d.mean:+.3f} ± {d.ci95:.3f}")
        head.append(f"| {name} | {sources[name]:.3f} | " + " | ".join(cells) + " |")
    return head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-coverage"))
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    runs, res = Path(args.runs), Path(args.results)
    rows, sources = [], {}
    for name, sets in VARIANTS.items():
        vdir = runs / name
        have = collected(vdir)
        for m in METHODS:
            missing = [s for s in SEEDS if not ((have["method"] == m) & (have["seed"] == s)).any()]
            if missing:
                run(vdir / m, m, missing, sets)
        have = collected(vdir)
        have = have[have["method"].isin(METHODS) & have["seed"].isin(SEEDS)]
        sources[name] = source_accuracy(Path(have["report"].iloc[0]))
        for r in have.itertuples():
            rows.append({"backbone": name, "overrides": " ".join(sets), "source_accuracy": sources[name],
                         "method": r.method, "seed": int(r.seed), "final_accuracy": float(r.final_accuracy),
                         "client_flops_per_client_round": float(r.client_flops_per_client_round),
                         "bytes_per_client_round": float(r.bytes_per_client_round)})
    df = pd.DataFrame(rows).sort_values(["backbone", "method", "seed"], key=lambda c: c.map(
        {n: i for i, n in enumerate(list(VARIANTS) + list(METHODS))}) if c.name != "seed" else c)
    md = table(df, sources)
    res.mkdir(parents=True, exist_ok=True)
    df.to_csv(res / "backbone_coverage.csv", index=False)
    (res / "backbone_coverage_table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
