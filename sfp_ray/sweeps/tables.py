"""The tables and plots of a sweep: ``sweep.csv``, ``sweep_summary.csv``, the terminal table, a PNG per swept key.

Both tables are rewritten as cells finish (cells not run yet show ``status`` ``pending``).
``sweep.csv`` has the swept keys as columns (named by the dotted key), the run's final
accuracy and per-run cost columns (those of ``summary_by_seed.csv``), and, when the
reference method ``fl_full`` is among the methods, the ratios to it in the same cell and
seed: ``client_flops_ratio``, ``bytes_ratio``, ``sim_time_ratio`` and ``accuracy_delta``
(a difference). ``sweep_summary.csv`` holds, per cell and method, the columns of a run's
``summary.csv`` (:func:`~sfp_ray.reports.summarize`: ``final_accuracy_mean/std/ci95``, mean
costs, ratios to ``fl_full`` within the cell and the paired ``accuracy_delta`` with its
``accuracy_delta_ci95``). A ``status`` column says ``ok``, ``invalid`` (the method cannot
run on the cell's configuration; ``error`` says why) or ``failed`` (the cell raised).

Plots: for each swept key, final accuracy (left), client FLOPs (middle) and bytes (right)
relative to ``fl_full`` (absolute client GFLOPs and MB per client-round without
``fl_full``; a log axis when the methods span more than 10x) against the key's values, one
line per method. Each point is the mean over the cells with that value, i.e.
averaged over the other swept keys; the error bars span the lowest to the highest of
those cells' means. With a single swept key, the error bars are the 95 % CI over seeds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sfp_ray.reports.sink import order_columns
from sfp_ray.stats import ratio_text
from sfp_ray.sweeps.grid import Cell, _column, _show


@dataclass
class SweepResults:
    """The tables of a sweep (the same as its files) and what this call did.

    ``sweep`` has one row per cell x method x seed, ``summary`` one per cell x method;
    ``ran`` / ``skipped`` list the cells run now / found finished, ``failed`` maps a cell
    that raised to its error, ``invalid`` maps ``(cell, method)`` pairs not run to the reason,
    ``shared`` maps ``(cell, method)`` pairs whose rows come from another cell's run to that cell.
    """

    out: Path
    sweep: pd.DataFrame
    summary: pd.DataFrame
    grid: dict[str, list[Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    invalid: dict[tuple[str, str], str] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    shared: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def runs_saved(self) -> int:
        """Runs not trained because a cell shares another cell's run (:func:`share_runs`)."""
        return len(self.shared) * int(self.sweep["seed"].nunique()) if len(self.sweep) else 0


def _cell_frames(folder: Path) -> pd.DataFrame:
    """A finished cell's runs: one row per (method, seed), as ``summary_by_seed.csv``."""
    from sfp_ray.reports import load_run, summarize_by_seed

    costs, rounds = load_run(folder)
    return summarize_by_seed(costs, rounds)


def _per_seed_ratios(rows: pd.DataFrame) -> pd.DataFrame:
    """Ratios to the reference method within each seed of one cell (rows: that cell's ok rows)."""
    from sfp_ray.methods import REFERENCE_METHOD

    if REFERENCE_METHOD not in set(rows["method"]):
        return rows
    ref = rows[rows["method"] == REFERENCE_METHOD].set_index("seed")
    r = ref.reindex(rows["seed"]).reset_index(drop=True)
    rows = rows.reset_index(drop=True)
    rows["client_flops_ratio"] = rows["client_flops_per_client_round"] / r["client_flops_per_client_round"]
    rows["bytes_ratio"] = rows["bytes_per_client_round"] / r["bytes_per_client_round"]
    rows["sim_time_ratio"] = rows["sim_s"] / r["sim_s"]
    rows["accuracy_delta"] = rows["final_accuracy"] - r["final_accuracy"]
    return rows


def build_tables(cells: Sequence[Cell], methods: Sequence[str], seeds: Sequence[int], frames: Mapping[str, Any],
                 invalid: Mapping[tuple[str, str], str], failed: Mapping[str, str],
                 shared: Mapping[tuple[str, str], str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``sweep.csv`` and ``sweep_summary.csv`` rows, in grid order, methods order, seeds order.

    ``frames`` maps a finished cell to its runs (:func:`_cell_frames`); a (cell, method) pair in
    ``shared`` takes its rows from the cell that ran them (:func:`share_runs`), unless its own
    folder holds the method. Ratios to ``fl_full`` and the summary are computed within each cell.
    """
    from sfp_ray.reports import summarize

    shared = shared or {}
    keys = list(cells[0].values) if cells else []
    runs, summaries = [], []
    for cell in cells:
        head = {"cell_id": cell.id, **{k: _column(v) for k, v in cell.values.items()}}
        state: dict[str, tuple[str, str | None]] = {}
        rows = []
        for m in methods:
            why = invalid.get((cell.id, m))
            own = frames.get(cell.id)
            source = cell.id if own is not None and (own["method"] == m).any() else shared.get((cell.id, m), cell.id)
            got = frames.get(source)
            if why:
                state[m] = ("invalid", why)
            elif got is not None and (got["method"] == m).any():
                state[m] = ("ok", None)
                rows.append(got[got["method"] == m])
            elif source in failed:
                err = failed[source]
                state[m] = ("failed", err if source == cell.id else f"shared with cell {source}, which failed: {err}")
            else:
                state[m] = ("pending", None)
        by_seed = _per_seed_ratios(pd.concat(rows, ignore_index=True)) if rows else None
        summary = summarize(pd.DataFrame(), pd.DataFrame(), by_seed) if by_seed is not None else None
        for m in methods:
            status, error = state[m]
            if status == "ok":
                assert by_seed is not None and summary is not None
                mine = by_seed[by_seed["method"] == m]
                for sd in seeds:
                    row = mine[mine["seed"] == sd].iloc[0].to_dict()
                    runs.append({**head, "method": m, "seed": sd, "status": status,
                                 **{k: v for k, v in row.items() if k not in ("method", "seed")}})
                srow = summary[summary["method"] == m].iloc[0].to_dict()
                summaries.append({**head, "method": m, "status": status,
                                  **{k: v for k, v in srow.items() if k != "method"}})
            else:
                runs += [{**head, "method": m, "seed": sd, "status": status, "error": error} for sd in seeds]
                summaries.append({**head, "method": m, "status": status, "seeds": 0, "error": error})
    first = ["cell_id", *keys, "method", "seed", "status", "rounds", "final_accuracy", "best_accuracy"]
    sweep = order_columns(pd.DataFrame(runs), first, last=("error",))
    summary = order_columns(pd.DataFrame(summaries), ["cell_id", *keys, "method", "status", "seeds", "rounds",
                                                      "final_accuracy_mean", "final_accuracy_std",
                                                      "final_accuracy_ci95"], last=("error",))
    return sweep, summary


def write_plots(out: Path, summary: pd.DataFrame, keys: Sequence[str], methods: Sequence[str]) -> list[Path]:
    """One PNG per swept key: accuracy, client FLOPs and bytes (relative to fl_full when it ran) against the key.

    A point is the mean over the cells with that value of the key (over the other swept
    keys); its bars span the lowest to the highest of those cells, or, with one swept key,
    the 95 % CI over seeds of the accuracy.
    """
    import numbers

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = summary[summary["status"] == "ok"]
    if ok.empty:
        return []
    from sfp_ray.reports import log_axis

    relative = "client_flops_ratio" in ok.columns and ok["client_flops_ratio"].notna().any()
    panels = [("final_accuracy_mean", "final test accuracy", 1.0),
              ("client_flops_ratio", "client FLOPs / fl_full (same cell and seeds)", 1.0) if relative
              else ("client_flops_per_client_round", "client GFLOPs per client-round", 1e-9),
              ("bytes_ratio", "bytes / fl_full (same cell and seeds)", 1.0) if relative
              else ("bytes_per_client_round", "MB per client-round", 1e-6)]
    paths = []
    for key in keys:
        xv = summary[key].astype(object).where(summary[key].notna(), "null")
        order = list(dict.fromkeys(xv.tolist()))
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in order)
        x_of = {v: (float(v) if numeric else float(i)) for i, v in enumerate(order)}
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, (col, label, scale) in zip(axes, panels):
            tops = []
            for m in methods:
                g = ok[ok["method"] == m]
                pts = []
                for v in order:
                    here = g[xv[g.index] == v]
                    vals = here[col].dropna() * scale
                    if vals.empty:
                        continue
                    mean = float(vals.mean())
                    if len(keys) == 1 and col == "final_accuracy_mean":
                        ci = float(here["final_accuracy_ci95"].iloc[0])
                        ci = 0.0 if math.isnan(ci) else ci
                        lo, hi = min(ci, mean), min(ci, 1.0 - mean)  # the bar stays within [0, 1]
                    else:
                        lo, hi = mean - float(vals.min()), float(vals.max()) - mean
                    pts.append((x_of[v], mean, lo, hi))
                if pts:
                    pts.sort()
                    tops.append(max(p[1] for p in pts))
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                                yerr=[[p[2] for p in pts], [p[3] for p in pts]], marker="o", capsize=3, label=m)
            ax.set_xlabel(key)
            if col != "final_accuracy_mean" and log_axis(tops):
                ax.set_yscale("log")
                label += " (log scale)"
            elif col == "final_accuracy_mean":
                low, high = ax.get_ylim()
                ax.set_ylim(max(low, -0.02), min(high, 1.02))
            ax.set_ylabel(label)
            if not numeric or len(order) <= 12:
                ax.set_xticks([x_of[v] for v in order], [_show(v) for v in order])
            ax.grid(alpha=0.3)
        axes[0].legend()
        others = [k for k in keys if k != key]
        fig.suptitle(f"sweep over {key}: " + (f"mean over {', '.join(others)} (bars: lowest to highest cell)"
                                              if others else "bars: 95% CI over seeds"), fontsize=10)
        fig.tight_layout()
        path = out / f"sweep_{re.sub(r'[^A-Za-z0-9._-]', '-', key)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths



def format_sweep(summary: pd.DataFrame, keys: Sequence[str]) -> str:
    """A terminal table of ``sweep_summary.csv``: the swept values, method, accuracy ± CI, ratios to fl_full."""
    if summary.empty:
        return "(no cells)"
    rel = "client_flops_ratio" in summary.columns

    def acc(r: pd.Series) -> str:
        if r["status"] != "ok":
            return r["status"]
        ci = r.get("final_accuracy_ci95", float("nan"))
        return f"{r['final_accuracy_mean']:.3f}" + (f" ± {ci:.3f}" if ci == ci else "")

    def num(r: pd.Series, col: str, fmt: str, scale: float = 1.0) -> str:
        v = r.get(col, float("nan"))
        return format(v * scale, fmt) if r["status"] == "ok" and v == v else "-"

    header = [*keys, "method", "accuracy (95% CI)"]
    header += (["FLOPs vs fl_full", "bytes vs fl_full", "acc - fl_full"] if rel
               else ["client GFLOP/cl/rd", "MB/cl/rd"])
    body = []
    for _, r in summary.iterrows():
        row = [_show(r[k]) for k in keys] + [str(r["method"]), acc(r)]
        if rel:
            row += [ratio_text(r["client_flops_ratio"]) if r["status"] == "ok" else "-",
                    ratio_text(r["bytes_ratio"]) if r["status"] == "ok" else "-", num(r, "accuracy_delta", "+.3f")]
        else:
            row += [num(r, "client_flops_per_client_round", ".3g", 1e-9), num(r, "bytes_per_client_round", ".3g", 1e-6)]
        body.append(row)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)

