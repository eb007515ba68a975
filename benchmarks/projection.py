"""Paper-scale cost projections for ViT-Base and ViT-Large (meta device, no training).

Writes ``benchmarks/results/projection_<model>.csv`` (every method at the default cut) and
``benchmarks/results/projection_grid.csv`` (SFPrompt over cuts, keep ratios and samples per
client), plus ``benchmarks/results/projection.md`` comparing with the paper's figures:
client compute 0.46% of full federated fine-tuning, communication 0.47x (ViT-Base) and
0.19x (ViT-Large) (Cao et al., arXiv 2407.17533).

Run: ``.venv/bin/python benchmarks/projection.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see sfp_ray/cli/commands.py

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd

from sfp_ray.config import load_config
from sfp_ray.projection import project, project_method

RESULTS = Path(__file__).parent / "results"
MODELS = ("vit_base_patch16_224", "vit_large_patch16_224")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the timm model at its own size (224 px, patch 16, 3 channels, all blocks), 100 classes, 500 samples
    base = ["project.num_classes=100", "project.samples_per_client=500", "model.img_size=null",
            "model.patch_size=null", "model.in_chans=null", "model.depth=null"]
    tables = {}
    for model in MODELS:
        cfg = load_config(overrides=base + [f"model.name={model}"])
        df = project(cfg)
        df.to_csv(out / f"projection_{model}.csv", index=False)
        tables[model] = df
    rows = []
    grid = itertools.product(MODELS, [(0, 0), (1, 1), (2, 2)], [0.5, 1.0], [100, 500, 1000], [0, 1])
    for model, (h, t), keep, n, local in grid:
        common = base + [f"model.name={model}", f"split.head_blocks={h}", f"split.tail_blocks={t}",
                         f"pruning.keep_ratio={keep}", f"project.samples_per_client={n}"]
        s = project_method(load_config(overrides=common + [f"train.local_epochs={local}"]), "sfprompt")
        f = project_method(load_config(overrides=common + ["train.local_epochs=1"]), "fl_full")
        rows.append({
            "model": model, "head_blocks": h, "tail_blocks": t, "keep_ratio": keep, "samples_per_client": n,
            "local_epochs": local,
            "client_flops_ratio": s["client_flops"] / f["client_flops"],
            "bytes_ratio": (s["bytes_up"] + s["bytes_down"]) / (f["bytes_up"] + f["bytes_down"]),
            "sfprompt_client_gflops": s["client_flops"] / 1e9, "fl_full_client_gflops": f["client_flops"] / 1e9,
            "sfprompt_mb": (s["bytes_up"] + s["bytes_down"]) / 1e6,
            "fl_full_mb": (f["bytes_up"] + f["bytes_down"]) / 1e6,
        })
    grid_df = pd.DataFrame(rows)
    grid_df.to_csv(out / "projection_grid.csv", index=False)
    write_markdown(out / "projection.md", tables, grid_df, time.perf_counter() - t0)
    print((out / "projection.md").read_text())


def write_markdown(path: Path, tables: dict[str, pd.DataFrame], grid: pd.DataFrame, seconds: float) -> None:
    lines = ["# Paper-scale cost projection (meta device)", "",
             "Made by `.venv/bin/python benchmarks/projection.py` "
             f"({seconds:.0f} s). Per client per round, 224 px, 100 classes, defaults otherwise "
             "(10 prompts, keep 0.5, 1 local epoch, 1 split epoch, 500 samples per client, cut 1/1).", ""]
    for model, df in tables.items():
        lines += [f"## {model}", "",
                  "| method | client GFLOP | server GFLOP | MB up | MB down | client FLOPs / fl_full "
                  "| bytes / fl_full |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for _, r in df.iterrows():
            lines.append(f"| {r['method']} | {r['client_flops'] / 1e9:.1f} | {r['server_flops'] / 1e9:.1f} | "
                         f"{r['bytes_up'] / 1e6:.1f} | {r['bytes_down'] / 1e6:.1f} | {r['client_flops_ratio']:.2%} | "
                         f"{r['bytes_ratio']:.3f} |")
        lines.append("")
    lines += ["## SFPrompt vs fl_full over settings", "",
              "| model | cut (head/tail) | keep | samples | SFPrompt local epochs | client FLOPs / fl_full "
              "| bytes / fl_full |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for _, r in grid.iterrows():
        lines.append(f"| {r['model']} | {r['head_blocks']}/{r['tail_blocks']} | {r['keep_ratio']} | "
                     f"{r['samples_per_client']} | {r['local_epochs']} | {r['client_flops_ratio']:.2%} | "
                     f"{r['bytes_ratio']:.3f} |")
    lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
