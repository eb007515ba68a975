"""Summaries: the figures of each run (method, seed) and of each method across seeds, and a terminal table of them.

``summary_by_seed.csv`` holds one row per (method, seed) (:func:`summarize_by_seed`),
``summary.csv`` one row per method (:func:`summarize`: accuracy as mean, std and 95 %
t-interval over seeds, mean costs, ratios to ``fl_full`` when it was run);
:func:`format_summary` prints the latter for the terminal. The sink writes them
(:func:`sfp_ray.reports.sink.write_summary`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sfp_ray.methods import REFERENCE_METHOD
from sfp_ray.records import tally
from sfp_ray.stats import ratio_text, spread

#: Per-run cost columns of ``summary_by_seed.csv``; ``summary.csv`` holds their mean over seeds.
COST_SUMMARY_COLUMNS = [
    "client_flops_per_client_round", "server_flops_per_round", "bytes_per_client_round", "bytes_up_per_client_round",
    "bytes_down_per_client_round", "prune_flops_share", "prune_events", "prune_flops_per_event",
    "prune_flops_amortised_per_client_round", "wall_s", "sim_s", "bytes_total", "client_flops_total",
]


def _run_summary(c: pd.DataFrame, r: pd.DataFrame) -> dict[str, Any]:
    """The figures of one run (one method, one seed) from its cost rows and round rows."""
    r = r.sort_values("round")
    participations = max(float(r["participants"].sum()), 1.0)
    n_rounds = int(r["round"].max()) if len(r) else 0
    t = tally(c.itertuples(index=False))
    prune_rows = c[(c["side"] == "client") & (c["phase"] == "prune")]
    prune = float(prune_rows["flops"].sum())
    prune_events = prune_rows.groupby(["round", "client_id"]).ngroups if len(prune_rows) else 0
    acc = r["test_accuracy"].dropna()
    return {
        "rounds": n_rounds,
        "precision": str(r["precision"].iloc[0]) if "precision" in r and len(r) else "fp32",
        "final_accuracy": float(acc.iloc[-1]) if len(acc) else float("nan"),
        "best_accuracy": float(acc.max()) if len(acc) else float("nan"),
        "client_flops_per_client_round": t.client_flops / participations,
        "server_flops_per_round": t.server_flops / max(n_rounds, 1),
        "bytes_per_client_round": t.bytes / participations,
        "bytes_up_per_client_round": t.bytes_up / participations,
        "bytes_down_per_client_round": t.bytes_down / participations,
        "prune_flops_share": prune / t.client_flops if t.client_flops else 0.0,
        # EL2N scoring is charged to the client when it happens; without pruning.every_round
        # a client prunes once, so its cost spreads over all of that client's participations
        "prune_events": prune_events,
        "prune_flops_per_event": prune / prune_events if prune_events else 0.0,
        "prune_flops_amortised_per_client_round": prune / participations,
        "wall_s": float(r["wall_s"].sum()),
        "sim_s": float(r["sim_s"].sum()),
        "bytes_total": int(r["bytes_total"].iloc[-1]) if len(r) else 0,
        "client_flops_total": float(r["client_flops_total"].iloc[-1]) if len(r) else 0.0,
    }


def _seeds(rounds: pd.DataFrame) -> pd.Series:
    return rounds["seed"] if "seed" in rounds else pd.Series(0, index=rounds.index)


def summarize_by_seed(costs: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, seed): the run's final accuracy and per-run cost columns."""
    rounds = rounds.assign(seed=_seeds(rounds))
    rows = []
    for (method, seed), r in rounds.groupby(["method", "seed"], sort=False):
        c = costs[costs["run_id"].isin(set(r["run_id"]))] if "run_id" in costs else costs[costs["method"] == method]
        rows.append({"method": method, "seed": int(seed), **_run_summary(c, r)})
    return pd.DataFrame(rows)


def summarize(costs: pd.DataFrame, rounds: pd.DataFrame, by_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method: accuracy over seeds (mean, std, 95 % t-interval), mean costs, ratios to fl_full.

    Client FLOPs are those the clients' devices executed, server FLOPs the body's and
    aggregation's (the ``side`` of each cost row; :func:`~sfp_ray.records.tally`);
    evaluation is a measurement and is excluded from both. With one seed, ``std`` and
    ``ci95`` are empty. When ``fl_full`` ran, ratios to it are of the means, and
    ``accuracy_delta`` is the mean over the seeds both methods ran of the paired
    difference, with its own interval (``accuracy_delta_ci95``).
    """
    by_seed = summarize_by_seed(costs, rounds) if by_seed is None else by_seed
    rows = []
    for method, g in by_seed.groupby("method", sort=False):
        acc = spread(g["final_accuracy"])
        row = {"method": method, "seeds": int(len(g)), "rounds": int(g["rounds"].max()),
               "precision": ",".join(dict.fromkeys(str(p) for p in g["precision"])) if "precision" in g else "fp32",
               "final_accuracy": acc.mean, "final_accuracy_mean": acc.mean, "final_accuracy_std": acc.std,
               "final_accuracy_ci95": acc.ci95, "best_accuracy": float(g["best_accuracy"].mean())}
        row.update({k: float(g[k].mean()) for k in COST_SUMMARY_COLUMNS})
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty and REFERENCE_METHOD in set(df["method"]):
        ref = df[df["method"] == REFERENCE_METHOD].iloc[0]
        df["client_flops_ratio"] = df["client_flops_per_client_round"] / ref["client_flops_per_client_round"]
        df["bytes_ratio"] = df["bytes_per_client_round"] / ref["bytes_per_client_round"]
        df["sim_time_ratio"] = df["sim_s"] / ref["sim_s"]
        base = by_seed[by_seed["method"] == REFERENCE_METHOD].set_index("seed")["final_accuracy"]
        deltas = []
        for method in df["method"]:
            own = by_seed[by_seed["method"] == method].set_index("seed")["final_accuracy"]
            deltas.append(spread((own - base).dropna()))
        df["accuracy_delta"] = [d.mean for d in deltas]
        df["accuracy_delta_ci95"] = [d.ci95 for d in deltas]
    return df


def format_summary(summary: pd.DataFrame) -> str:
    """A plain-text comparison table for the terminal (accuracy as mean ± 95 % CI over seeds)."""
    if summary.empty:
        return "(no rounds)"
    multi = "seeds" in summary and int(summary["seeds"].max()) > 1

    def acc(row: pd.Series) -> str:
        return (f"{row['final_accuracy']:.3f} ± {row['final_accuracy_ci95']:.3f}" if multi and row["seeds"] > 1
                else f"{row['final_accuracy']:.3f}")

    def delta(row: pd.Series) -> str:
        ci = row.get("accuracy_delta_ci95", float("nan"))
        return f"{row['accuracy_delta']:+.3f}" + (f" ± {ci:.3f}" if multi and ci == ci else "")

    cols: list[tuple[str, Any]] = [("method", lambda r: str(r["method"]))]
    if multi:
        cols.append(("seeds", lambda r: str(int(r["seeds"]))))
    cols += [("accuracy" + (" (95% CI)" if multi else ""), acc),
             ("client GFLOP/cl/rd", lambda r: f"{r['client_flops_per_client_round'] * 1e-9:.3g}"),
             ("MB/cl/rd", lambda r: f"{r['bytes_per_client_round'] * 1e-6:.3g}"),
             ("sim s", lambda r: f"{r['sim_s']:.1f}"), ("wall s", lambda r: f"{r['wall_s']:.1f}")]
    if "client_flops_ratio" in summary:
        cols += [("FLOPs vs fl_full", lambda r: ratio_text(r["client_flops_ratio"])),
                 ("bytes vs fl_full", lambda r: ratio_text(r["bytes_ratio"])), ("acc - fl_full", delta)]
    header = [c[0] for c in cols]
    body = [[fmt(row) for _, fmt in cols] for _, row in summary.iterrows()]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
