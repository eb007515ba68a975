"""Pruning and cut benchmark: which EL2N policy keeps SFPrompt's accuracy, at what client cost.

Every cell is one ``sfprompt`` (or ``fl_full``) run on the default configuration (the demo's
data, clients and rounds) plus the cell's overrides, once per seed:

* ``policy`` arms × keep ratio {0.25, 0.5, 0.75}: the literal reading (``hardest``), the
  easy-sample reading (``easiest``, Sorscher et al. 2022), both with class quotas
  (``per_class``), and a seeded ``random`` control;
* extra arms at keep 0.5: scoring after the local update, refreshing the scores, dropping
  the top 10 % outliers;
* keep 1.0 (``sfprompt_no_prune``) and ``fl_full``, the references;
* the cut: head/tail blocks 0/0 (the paper's thin client), 1/1 (default) and 2/2, with the
  default policy.

Writes ``benchmarks/results/pruning_runs.csv`` (one row per run, appended as runs finish, so
an interrupted benchmark resumes where it stopped), ``pruning.csv`` / ``pruning_cut.csv``
(mean ± t-95 % CI per cell, client FLOPs and bytes relative to fl_full), ``pruning.md`` and
the accuracy-vs-client-FLOPs plots ``pruning_pareto.png`` / ``pruning_cut.png``.

Run: ``.venv/bin/python benchmarks/pruning.py [--seeds 0,1,2] [--only ARM,...] [--set KEY=VALUE] [--lr tuned]``
(the serial executor by default: it gives the same numbers as the Ray executor, tested in
``tests/test_ray.py``, without actor start-up per cell).

``--lr pinned`` (the default) trains every method at Adam 1e-3, as when the committed
``pruning_*`` files were made; ``--lr tuned`` lets each method train at its own default rate
(``sfp-ray methods``) and writes ``pruning_tuned_*`` files instead, beside the pinned ones.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see sfp_ray/cli/commands.py

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
KEEPS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Arm:
    name: str
    method: str
    overrides: tuple[str, ...]
    keeps: tuple[float, ...] = (1.0,)
    group: str = "policy"  # policy | reference | cut


def pol(policy: str, per_class: bool, *extra: str) -> tuple[str, ...]:
    """Overrides of a policy arm; every pruning key the arms vary is spelled out (``scope=all`` unless given)."""
    scope = () if any(e.startswith("pruning.scope=") for e in extra) else ("pruning.scope=all",)
    return (f"pruning.policy={policy}", f"pruning.per_class={str(per_class).lower()}", *scope, *extra)


# the default policy (sfp_ray/config/schema.py), spelled out so the cut cells do not depend on it
DEFAULT_POLICY = ("pruning.policy=easiest", "pruning.per_class=true", "pruning.scope=split")
DEFAULT_ARM = "easiest_per_class_scope_split"  # the arm with DEFAULT_POLICY (cut 1/1, the default cut)

ARMS: tuple[Arm, ...] = (
    Arm("fl_full", "fl_full", (), group="reference"),
    Arm("no_prune", "sfprompt_no_prune", (), group="reference"),
    Arm("hardest", "sfprompt", pol("hardest", False), KEEPS),
    Arm("easiest_per_class_scope_split", "sfprompt", pol("easiest", True, "pruning.scope=split"), KEEPS),
    Arm("easiest_per_class", "sfprompt", pol("easiest", True), KEEPS),
    Arm("random", "sfprompt", pol("random", False), KEEPS),
    Arm("hardest_per_class", "sfprompt", pol("hardest", True), (0.5,)),
    Arm("easiest", "sfprompt", pol("easiest", False), (0.5,)),
    Arm("hardest_per_class_after_local", "sfprompt", pol("hardest", True, "pruning.score_at=local_update"), (0.5,)),
    Arm("hardest_skip_top10", "sfprompt", pol("hardest", False, "pruning.skip_top=0.1"), (0.5,)),
    # the same sample passes as no pruning (2 local + 2 split epochs on the kept half): separates
    # "fewer optimiser steps" from "worse samples"
    Arm("easiest_per_class_scope_split_2ep", "sfprompt",
        pol("easiest", True, "pruning.scope=split", "train.local_epochs=2", "train.split_epochs=2"), (0.5,)),
    # two epochs of the local-loss update only (client-side, no communication); split training unchanged
    Arm("easiest_per_class_scope_split_local2", "sfprompt",
        pol("easiest", True, "pruning.scope=split", "train.local_epochs=2"), (0.5,)),
    Arm("cut_0_0", "sfprompt", (*DEFAULT_POLICY, "split.head_blocks=0", "split.tail_blocks=0"), group="cut"),
    Arm("cut_2_2", "sfprompt", (*DEFAULT_POLICY, "split.head_blocks=2", "split.tail_blocks=2"), group="cut"),
)

# the order cells run in: what decides the default first, so an interrupted grid has the essentials
PRIORITY = ("reference", "hardest@0.5", "easiest_per_class_scope_split@0.5", "easiest_per_class@0.5",
            "easiest_per_class_scope_split_2ep@0.5", "easiest_per_class_scope_split_local2@0.5", "random@0.5",
            "easiest_per_class_scope_split@*", "hardest@*", "cut", "*")


def priority(arm: Arm, keep: float) -> int:
    for i, p in enumerate(PRIORITY):
        if p in (arm.group, f"{arm.name}@{keep}", f"{arm.name}@*", "*"):
            return i
    return len(PRIORITY)


def cells(arms: list[Arm]) -> list[tuple[Arm, float]]:
    return [(a, k) for a in arms for k in a.keeps]


def run_cell(arm: Arm, keep: float, seed: int, base: list[str], executor: str, out: Path) -> dict:
    import sfp_ray

    overrides = [*base, *arm.overrides]
    if arm.group == "policy":
        overrides.append(f"pruning.keep_ratio={keep}")
    t0 = time.perf_counter()
    r = sfp_ray.run(overrides, method=arm.method, seeds=[seed], executor=executor, out=out, plots=False)
    row = r.summary_by_seed.iloc[0].to_dict()
    acc = r.rounds.sort_values("round")["test_accuracy"].tolist()
    row.update(arm=arm.name, group=arm.group, keep_ratio=keep if arm.group == "policy" else (
        1.0 if arm.method != "sfprompt" else None), overrides=" ".join(overrides),
        last3_accuracy=sum(acc[-3:]) / len(acc[-3:]), curve=" ".join(f"{a:.4f}" for a in acc),
        process_s=time.perf_counter() - t0)
    return row


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± CI of the final accuracy per (arm, keep); client FLOPs and bytes relative to fl_full."""
    from sfp_ray.stats import spread

    ref = runs[runs["arm"] == "fl_full"]
    ref_flops = ref["client_flops_per_client_round"].mean() if len(ref) else float("nan")
    ref_bytes = ref["bytes_per_client_round"].mean() if len(ref) else float("nan")
    ref_acc = ref.set_index("seed")["final_accuracy"]
    rows = []
    keyed = runs.assign(keep=runs["keep_ratio"].fillna(-1))
    for (arm, keep), g in keyed.groupby(["arm", "keep"], sort=False):
        s, last3 = spread(g["final_accuracy"].tolist()), spread(g["last3_accuracy"].tolist())
        paired = g.set_index("seed")["final_accuracy"] - ref_acc
        d = spread(paired.dropna().tolist()) if paired.notna().any() else None
        rows.append({
            "arm": arm, "group": g["group"].iloc[0], "method": g["method"].iloc[0],
            "keep_ratio": None if keep < 0 else keep, "seeds": len(g),
            "final_accuracy_mean": s.mean, "final_accuracy_std": s.std, "final_accuracy_ci95": s.ci95,
            "last3_accuracy_mean": last3.mean, "last3_accuracy_ci95": last3.ci95,
            "delta_vs_fl_full": d.mean if d else float("nan"), "delta_vs_fl_full_ci95": d.ci95 if d else float("nan"),
            "client_gflops_per_client_round": g["client_flops_per_client_round"].mean() / 1e9,
            "client_flops_vs_fl_full": g["client_flops_per_client_round"].mean() / ref_flops,
            "bytes_vs_fl_full": g["bytes_per_client_round"].mean() / ref_bytes,
        })
    return pd.DataFrame(rows)


def pareto(df: pd.DataFrame) -> pd.DataFrame:
    """The rows no other row beats on both accuracy (higher) and client FLOPs (lower)."""
    keep = []
    for i, r in df.iterrows():
        dominated = ((df["final_accuracy_mean"] >= r["final_accuracy_mean"])
                     & (df["client_flops_vs_fl_full"] <= r["client_flops_vs_fl_full"])
                     & ((df["final_accuracy_mean"] > r["final_accuracy_mean"])
                        | (df["client_flops_vs_fl_full"] < r["client_flops_vs_fl_full"]))).any()
        if not dominated:
            keep.append(i)
    return df.loc[keep].sort_values("client_flops_vs_fl_full")


def plot(df: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for arm, g in df.groupby("arm", sort=False):
        g = g.sort_values("client_flops_vs_fl_full")
        ax.errorbar(g["client_flops_vs_fl_full"], g["final_accuracy_mean"], yerr=g["final_accuracy_ci95"],
                    marker="o", capsize=3, label=arm, linestyle="-" if len(g) > 1 else "none")
    front = pareto(df)
    ax.plot(front["client_flops_vs_fl_full"], front["final_accuracy_mean"], color="k", lw=1, ls=":",
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("client FLOPs per client-round, relative to fl_full (log)")
    ax.set_ylabel("final test accuracy (mean ± 95% CI over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(df: pd.DataFrame) -> list[str]:
    lines = ["| arm | keep | seeds | final acc (mean ± CI) | std | last-3 acc | Δ vs fl_full (paired) | "
             "client FLOPs vs fl_full | bytes vs fl_full |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in df.iterrows():
        keep = "" if pd.isna(r["keep_ratio"]) else f"{r['keep_ratio']:.2f}"
        lines.append(f"| {r['arm']} | {keep} | {r['seeds']} | {r['final_accuracy_mean']:.3f} ± "
                     f"{r['final_accuracy_ci95']:.3f} | {r['final_accuracy_std']:.3f} | "
                     f"{r['last3_accuracy_mean']:.3f} | {r['delta_vs_fl_full']:+.3f} ± "
                     f"{r['delta_vs_fl_full_ci95']:.3f} | {r['client_flops_vs_fl_full']:.3f} | "
                     f"{r['bytes_vs_fl_full']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=None, help="comma-separated arm names (default: all)")
    ap.add_argument("--keeps", default=None, help="comma-separated keep ratios of the policy arms (default: all)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--executor", choices=("serial", "ray"), default="serial")
    ap.add_argument("--out", default="runs/bench-pruning", help="run folders (not committed)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--report-only", action="store_true", help="rebuild tables and plots from the runs file")
    ap.add_argument("--lr", choices=("pinned", "tuned"), default="pinned",
                    help="pinned: every method at Adam 1e-3 (the committed pruning_* files); tuned: each method's "
                         "own default rate, written to pruning_tuned_* (default: pinned)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = list(ARMS)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {a.name for a in ARMS})
        if unknown:
            ap.error(f"--only: unknown arms {unknown}; known: {', '.join(a.name for a in ARMS)}")
        arms = [a for a in ARMS if a.name in names]
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    stem = "pruning" if args.lr == "pinned" else "pruning_tuned"
    runs_csv = res / f"{stem}_runs.csv"
    runs = pd.read_csv(runs_csv) if runs_csv.is_file() else pd.DataFrame()
    # --lr pinned: every method at lr 1e-3, as when the committed pruning_* results were made (train.lr
    # now defaults to each method's own tuned rate: benchmarks/learning_rate.py); --lr tuned: those rates
    base = (["train.lr=0.001"] if args.lr == "pinned" else []) + list(args.overrides)
    keeps = {float(k) for k in args.keeps.split(",")} if args.keeps else None
    todo = [(a, k, s) for a, k in cells(arms) for s in seeds if keeps is None or a.group != "policy" or k in keeps]
    todo.sort(key=lambda c: priority(c[0], c[1]))  # stable: seeds stay in order within a cell
    t0 = time.perf_counter()
    if not args.report_only:
        for i, (arm, keep, seed) in enumerate(todo, 1):
            kcol = keep if arm.group == "policy" else None
            if len(runs) and ((runs["arm"] == arm.name) & (runs["seed"] == seed) & (
                    (runs["keep_ratio"] == kcol) if kcol is not None else True)).any():
                continue
            tag = f"{arm.name}-k{keep}-s{seed}"
            print(f"[{i}/{len(todo)}] {tag} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            row = run_cell(arm, keep, seed, base, args.executor, Path(args.out) / tag)
            print(f"    final {row['final_accuracy']:.4f}  curve {row['curve']}", file=sys.stderr, flush=True)
            runs = pd.concat([runs, pd.DataFrame([row])], ignore_index=True)
            runs.to_csv(runs_csv, index=False)
    if runs.empty:
        print("no runs yet", file=sys.stderr)
        return 1
    summary = summarize(runs)
    pol_df = summary[summary["group"] != "cut"]
    cut_df = summary[summary["group"] != "policy"].copy()
    cut_default = summary[(summary["arm"] == DEFAULT_ARM) & (summary["keep_ratio"] == 0.5)].assign(arm="cut_1_1")
    cut_df = pd.concat([cut_df, cut_default], ignore_index=True)
    pol_df.to_csv(res / f"{stem}.csv", index=False)
    cut_df.to_csv(res / f"{stem}_cut.csv", index=False)
    plot(pol_df, res / f"{stem}_pareto.png", "EL2N pruning policies: accuracy vs client FLOPs")
    plot(cut_df, res / f"{stem}_cut.png", "Cut (head/tail blocks): accuracy vs client FLOPs")
    cmd = "python benchmarks/pruning.py " + " ".join(
        [f"--set {o}" for o in args.overrides] + ([f"--lr {args.lr}"] if args.lr != "pinned" else []))
    if args.only:
        cmd += f" --only {args.only}"
    if args.keeps:
        cmd += f" --keeps {args.keeps}"
    md = ["# Pruning and cut benchmark", "", f"Command: `{cmd.strip()} --seeds {args.seeds}`; "
          f"{len(runs)} runs in `{runs_csv.name}` (per-run rows, with accuracy curves).", "",
          "Learning rates: " + ("Adam 1e-3 for every method." if args.lr == "pinned" else
                               "each method's own default (sfp-ray methods)."), "",
          "Final accuracy is the last round's test accuracy; the CI is the Student-t 95 % half-width "
          "over seeds; Δ is paired by seed against fl_full. FLOPs and bytes are per client per round, "
          "relative to fl_full's.", "", "## Policies", "", *table(pol_df), "", "## Cut", "",
          *table(cut_df), "", "Pareto front (accuracy vs client FLOPs): " + ", ".join(
              f"{r.arm}@{'' if pd.isna(r.keep_ratio) else r.keep_ratio}" for r in pareto(pol_df).itertuples()), ""]
    (res / f"{stem}_tables.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
