"""Heterogeneity benchmark: device mixes × cut policy, and availability with and without over-selection.

Every cell is an ``sfprompt`` run on the default configuration (the demo's data, clients,
rounds and pruning) plus the cell's overrides, once per seed:

* device mix {all ``rpi4``, the default mix (rpi4 0.5 / phone 0.3 / laptop 0.2), all
  ``laptop``} × ``split.policy`` {``fixed`` (1/1), ``per_device``};
* availability, on the default mix with 20 clients and 10 per round: every class online
  with probability 1 (reference) or 0.5, the latter without and with
  ``federation.over_select=1.0`` (20 selected, the first 10 to finish averaged).

Writes to ``benchmarks/results/``: ``heterogeneity_runs.csv`` (one row per run, appended as
runs finish, so an interrupted benchmark resumes), ``heterogeneity_classes_runs.csv`` (per
run and device class: cut, simulated seconds, client FLOPs and bytes per participation),
``heterogeneity.csv`` / ``heterogeneity_classes.csv`` (mean ± t-95 % CI over seeds),
``heterogeneity_tables.md`` and ``heterogeneity_acc_vs_time.png`` (accuracy against
cumulative simulated time, one curve per cell).

Run: ``.venv/bin/python benchmarks/heterogeneity.py [--seeds 0,1,2] [--only CELL,...]`` (the
serial executor by default: the same numbers as the Ray executor, tested in
``tests/test_placement.py`` and ``tests/test_ray.py``, without actor start-up per run).
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
RESULTS = HERE / "results"
CACHE = HERE.parent / ".cache" / "benchmarks" / "heterogeneity"

MIXES = {"all_rpi4": "{rpi4: 1.0}", "default": "{rpi4: 0.5, phone: 0.3, laptop: 0.2}", "all_laptop": "{laptop: 1.0}"}
AVAIL_BASE = ("federation.num_clients=20", "federation.clients_per_round=10", f"devices.mix={MIXES['default']}")


@dataclass(frozen=True)
class Cell:
    name: str
    group: str  # mix | availability
    overrides: tuple[str, ...]


def cells(catalog: Path) -> list[Cell]:
    out = [Cell(f"{mix}/{policy}", "mix", (f"devices.mix={spec}", f"split.policy={policy}"))
           for mix, spec in MIXES.items() for policy in ("fixed", "per_device")]
    out += [
        Cell("avail1.0", "availability", AVAIL_BASE),
        Cell("avail0.5", "availability", (*AVAIL_BASE, f"devices.catalog={catalog}")),
        Cell("avail0.5/over_select1.0", "availability",
             (*AVAIL_BASE, f"devices.catalog={catalog}", "federation.over_select=1.0")),
    ]
    return out


def half_available_catalog() -> Path:
    """A catalogue giving every built-in class availability 0.5 (written under .cache/)."""
    import yaml

    from sfp_ray.devices import load_catalog

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "half_available.yaml"
    devices = {}
    for name, d in load_catalog().items():
        entry = d.to_dict()
        entry.pop("name")
        entry["availability"] = 0.5
        devices[name] = entry
    path.write_text(yaml.safe_dump({"devices": devices}, sort_keys=False))
    return path


def run_cell(cell: Cell, seed: int, executor: str) -> tuple[dict, list[dict]]:
    import sfp_ray

    out = CACHE / "runs" / cell.name.replace("/", "+") / f"seed{seed}"
    t0 = time.perf_counter()
    # lr 1e-3, as when the committed results were made (train.lr now defaults to the method's own tuned rate)
    r = sfp_ray.run(["train.lr=0.001", *cell.overrides], method="sfprompt", seeds=[seed], executor=executor, out=out,
                    plots=False)
    rounds = pd.read_csv(out / "rounds.csv").sort_values("round")
    clients = pd.read_csv(out / "clients.csv")
    costs = pd.read_csv(out / "costs.csv")
    row = r.summary_by_seed.iloc[0].to_dict()
    row.update(cell=cell.name, group=cell.group, overrides=" ".join(cell.overrides),
               round_sim_s=float(rounds["sim_s"].mean()), total_sim_s=float(rounds["sim_s"].sum()),
               averaged_per_round=float(rounds["finished"].mean()),
               offline_per_round=float(rounds["offline"].mean()), late_per_round=float(rounds["late"].mean()),
               acc_curve=" ".join(f"{a:.4f}" for a in rounds["test_accuracy"]),
               time_curve=" ".join(f"{t:.3f}" for t in rounds["cum_sim_s"]), process_s=time.perf_counter() - t0)
    ran = clients[clients["status"] != "offline"]
    own = costs[costs["client_id"] >= 0].merge(ran[["round", "client_id", "device"]].rename(
        columns={"device": "cls"}), on=["round", "client_id"])
    per_class = []
    for cls, g in ran.groupby("device"):
        c = own[own["cls"] == cls]
        n = max(len(g), 1)
        per_class.append({
            "cell": cell.name, "seed": seed, "device": cls, "participations": len(g),
            "head_blocks": int(g["head_blocks"].mode().iloc[0]), "tail_blocks": int(g["tail_blocks"].mode().iloc[0]),
            "sim_s_per_participation": float(g["sim_s"].mean()),
            "client_gflops_per_participation": float(c[c["side"] == "client"]["flops"].sum()) / n / 1e9,
            "server_gflops_per_participation": float(c[c["side"] == "server"]["flops"].sum()) / n / 1e9,
            "mb_per_participation": float(c[c["side"] == "link"][["bytes_up", "bytes_down"]].sum().sum()) / n / 1e6,
        })
    return row, per_class


def summarize(runs: pd.DataFrame, classes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sfp_ray.stats import spread

    rows = []
    for name, g in runs.groupby("cell", sort=False):
        acc, rt = spread(g["final_accuracy"].tolist()), spread(g["round_sim_s"].tolist())
        rows.append({"cell": name, "group": g["group"].iloc[0], "seeds": len(g),
                     "final_accuracy_mean": acc.mean, "final_accuracy_ci95": acc.ci95,
                     "round_sim_s_mean": rt.mean, "round_sim_s_ci95": rt.ci95,
                     "client_gflops_per_client_round": g["client_flops_per_client_round"].mean() / 1e9,
                     "mb_per_client_round": g["bytes_per_client_round"].mean() / 1e6,
                     "averaged_per_round": g["averaged_per_round"].mean(),
                     "offline_per_round": g["offline_per_round"].mean(), "late_per_round": g["late_per_round"].mean()})
    per = []
    for (name, cls), g in classes.groupby(["cell", "device"], sort=False):
        s = spread(g["sim_s_per_participation"].tolist())
        per.append({"cell": name, "device": cls, "seeds": len(g),
                    "cut": f"{int(g['head_blocks'].mode().iloc[0])}/{int(g['tail_blocks'].mode().iloc[0])}",
                    "sim_s_mean": s.mean, "sim_s_ci95": s.ci95,
                    "client_gflops": g["client_gflops_per_participation"].mean(),
                    "server_gflops": g["server_gflops_per_participation"].mean(),
                    "mb": g["mb_per_participation"].mean()})
    return pd.DataFrame(rows), pd.DataFrame(per)


def plot(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, g in runs.groupby("cell", sort=False):
        accs = np.array([[float(a) for a in c.split()] for c in g["acc_curve"]])
        times = np.array([[float(t) for t in c.split()] for c in g["time_curve"]])
        ax.plot(times.mean(axis=0), accs.mean(axis=0), marker="o", ms=3,
                ls="--" if "per_device" in name else ("-" if g["group"].iloc[0] == "mix" else ":"),
                label=f"{name} ({len(g)} seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative simulated time (s, log; mean over seeds)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("SFPrompt: accuracy against simulated time, per device mix")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tables(summary: pd.DataFrame, per: pd.DataFrame) -> list[str]:
    lines = ["| cell | seeds | final acc (mean ± CI) | round sim s (mean ± CI) | client GFLOP / client-round | "
             "MB / client-round | averaged / round | offline / round | late / round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['cell']} | {r['seeds']} | {r['final_accuracy_mean']:.3f} ± {r['final_accuracy_ci95']:.3f} "
                     f"| {r['round_sim_s_mean']:.2f} ± {r['round_sim_s_ci95']:.2f} "
                     f"| {r['client_gflops_per_client_round']:.2f} | {r['mb_per_client_round']:.2f} "
                     f"| {r['averaged_per_round']:.1f} | {r['offline_per_round']:.1f} | {r['late_per_round']:.1f} |")
    lines += ["", "Per device class (per participation):", "",
              "| cell | class | cut head/tail | sim s (mean ± CI) | client GFLOP | server GFLOP | MB |",
              "|---|---|---|---:|---:|---:|---:|"]
    for _, r in per.iterrows():
        lines.append(f"| {r['cell']} | {r['device']} | {r['cut']} | {r['sim_s_mean']:.2f} ± {r['sim_s_ci95']:.2f} "
                     f"| {r['client_gflops']:.2f} | {r['server_gflops']:.2f} | {r['mb']:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=None, help="comma-separated cell names (default: all)")
    ap.add_argument("--executor", default="serial", choices=("serial", "ray"))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = cells(half_available_catalog())
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in todo}
        if unknown:
            ap.error(f"unknown cells {sorted(unknown)}; known: {', '.join(c.name for c in todo)}")
        todo = [c for c in todo if c.name in wanted]
    RESULTS.mkdir(exist_ok=True)
    runs_p, classes_p = RESULTS / "heterogeneity_runs.csv", RESULTS / "heterogeneity_classes_runs.csv"
    runs = pd.read_csv(runs_p) if runs_p.is_file() else pd.DataFrame()
    classes = pd.read_csv(classes_p) if classes_p.is_file() else pd.DataFrame()
    done = set(zip(runs["cell"], runs["seed"])) if len(runs) else set()
    jobs = [(c, s) for s in seeds for c in todo if (c.name, s) not in done]
    for i, (cell, seed) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {cell.name} seed {seed}", file=sys.stderr, flush=True)
        row, per = run_cell(cell, seed, args.executor)
        runs = pd.concat([runs, pd.DataFrame([row])], ignore_index=True)
        classes = pd.concat([classes, pd.DataFrame(per)], ignore_index=True)
        runs.to_csv(runs_p, index=False)
        classes.to_csv(classes_p, index=False)
    order = [c.name for c in cells(Path("x"))]
    runs = runs.assign(_o=runs["cell"].map(order.index)).sort_values(["_o", "seed"]).drop(columns="_o")
    classes = classes.assign(_o=classes["cell"].map(order.index)).sort_values(["_o", "device", "seed"]).drop(
        columns="_o")
    summary, per = summarize(runs, classes)
    summary.to_csv(RESULTS / "heterogeneity.csv", index=False)
    per.to_csv(RESULTS / "heterogeneity_classes.csv", index=False)
    (RESULTS / "heterogeneity_tables.md").write_text("\n".join(tables(summary, per)) + "\n")
    plot(runs, RESULTS / "heterogeneity_acc_vs_time.png")
    print("\n".join(tables(summary, per)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
