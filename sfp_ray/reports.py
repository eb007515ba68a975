"""Reports: a sink that turns typed records into pandas DataFrames, files and plots.

Files in a run's output folder (DESIGN.md §4 contract; columns may be added, never renamed):

- ``costs.parquet`` / ``costs.csv``: one row per (round, client, phase, part);
- ``rounds.csv``: one row per round, with cumulative ``bytes_total`` and ``client_flops_total``;
- ``summary.csv``: one row per method, with ratios to ``fl_full`` when it was run;
- ``messages.csv``: one row per message (direction, kind, sender, receiver, bytes);
- ``resources.csv``: requested / enforced / observed resources per client (Ray executor);
- ``config.yaml``: the resolved configuration, seeds and library versions;
- ``accuracy_vs_bytes.png``, ``accuracy_vs_sim_time.png``, ``client_flops_by_method.png``.

CSV files are rewritten atomically after every round, so a crash keeps every finished
round; ``sfp-ray report RUN_DIR`` rebuilds the summary and plots from them.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sfp_ray.config import dump_config
from sfp_ray.costs import CostRecord, MessageRecord
from sfp_ray.orchestrator import RoundRecord, RunMeta

COST_COLUMNS = ["run_id", "method", "round", "client_id", "device", "phase", "part", "flops", "bytes_up",
                "bytes_down", "wall_s", "sim_s"]
ROUND_COLUMNS = ["run_id", "method", "round", "participants", "test_accuracy", "test_loss", "wall_s", "sim_s",
                 "bytes_total", "client_flops_total"]


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import ray
    import timm

    import sfp_ray

    return {
        "sfp_ray": sfp_ray.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "timm": timm.__version__,
        "ray": ray.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


class ReportSink:
    """Collects records of one or several runs (methods) into one output folder.

    Args:
        out_dir: the run's output folder (created).
        plots: write PNG plots at the end of each run.
    """

    def __init__(self, out_dir: str | os.PathLike, *, plots: bool = True) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.plots = plots
        self.costs: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.configs: dict[str, str] = {}
        self.metas: list[RunMeta] = []

    # ------------------------------------------------------------------ sink protocol

    def start_run(self, meta: RunMeta) -> None:
        self.metas.append(meta)
        self._write_config()

    def add_costs(self, meta: RunMeta, records: Sequence[CostRecord]) -> None:
        for r in records:
            row = {"run_id": meta.run_id, "method": meta.method, "executor": meta.executor}
            row.update(dataclasses.asdict(r))
            self.costs.append(row)

    def add_messages(self, meta: RunMeta, records: Sequence[MessageRecord]) -> None:
        for m in records:
            row = {"run_id": meta.run_id, "method": meta.method}
            row.update(dataclasses.asdict(m))
            self.messages.append(row)

    def add_resources(self, meta: RunMeta, rows: Sequence[Mapping[str, Any]]) -> None:
        for r in rows:
            self.resources.append({"run_id": meta.run_id, "method": meta.method, **_flatten(r)})

    def add_round(self, meta: RunMeta, record: RoundRecord) -> None:
        self.rounds.append(dataclasses.asdict(record))
        self.flush()

    def end_run(self, meta: RunMeta, final_state: Mapping[str, torch.Tensor]) -> None:
        torch.save({k: v.detach().cpu() for k, v in final_state.items()}, self.out / f"final_state_{meta.method}.pt")
        self.finalize()

    # ------------------------------------------------------------------ files

    def _write_config(self) -> None:
        runs = [{"run_id": m.run_id, "method": m.method, "executor": m.executor, "checkpoint": m.checkpoint,
                 "devices": m.devices, "train_sizes": m.train_sizes, "num_classes": m.num_classes}
                for m in self.metas]
        first = self.metas[0].config
        per_method = {m.method: _diff(first, m.config) for m in self.metas[1:]}
        text = dump_config(first, extra={"runs": runs, "method_overrides": per_method,
                                         "versions": library_versions()})
        (self.out / "config.yaml").write_text(text)

    def cost_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.costs)
        return _order(df, COST_COLUMNS)

    def round_frame(self) -> pd.DataFrame:
        return _order(pd.DataFrame(self.rounds), ROUND_COLUMNS)

    def flush(self) -> None:
        """Rewrite the CSV files with every record so far (atomically)."""
        _atomic_csv(self.cost_frame(), self.out / "costs.csv")
        _atomic_csv(self.round_frame(), self.out / "rounds.csv")
        if self.messages:
            _atomic_csv(pd.DataFrame(self.messages), self.out / "messages.csv")
        if self.resources:
            _atomic_csv(pd.DataFrame(self.resources), self.out / "resources.csv")

    def finalize(self) -> pd.DataFrame:
        """Write parquet, summary and plots; return the summary."""
        self.flush()
        costs = self.cost_frame()
        costs.to_parquet(self.out / "costs.parquet", index=False)
        return write_summary(self.out, costs, self.round_frame(), plots=self.plots)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _diff(a: Any, b: Any) -> dict[str, Any]:
    from sfp_ray.config import to_dict

    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return {k: fb[k] for k in fb if fa.get(k) != fb[k]}


def _order(df: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=first)
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    return df[cols]


# --------------------------------------------------------------------------- summary


def summarize(costs: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per method: accuracy, per-client-per-round costs, totals and ratios to fl_full.

    Client FLOPs are those executed on client devices (every part but ``body``) in the
    training phases; server FLOPs are the body's and aggregation's; evaluation is a
    measurement and is excluded from both.
    """
    rows = []
    for method, r in rounds.groupby("method", sort=False):
        c = costs[costs["method"] == method]
        r = r.sort_values("round")
        participations = float(r["participants"].sum())
        on_client = c[(c["client_id"] >= 0) & (c["part"] != "body")]
        server = c[(c["part"] == "body") | ((c["client_id"] < 0) & (c["phase"] == "aggregate"))]
        client_rows = c[c["client_id"] >= 0]
        acc = r["test_accuracy"].dropna()
        prune_rows = on_client[on_client["phase"] == "prune"]
        prune = prune_rows["flops"].sum()
        prune_events = prune_rows.groupby(["round", "client_id"]).ngroups if len(prune_rows) else 0
        n_rounds = int(r["round"].max()) if len(r) else 0
        rows.append({
            "method": method,
            "rounds": n_rounds,
            "final_accuracy": float(acc.iloc[-1]) if len(acc) else float("nan"),
            "best_accuracy": float(acc.max()) if len(acc) else float("nan"),
            "client_flops_per_client_round": on_client["flops"].sum() / max(participations, 1.0),
            "server_flops_per_round": server["flops"].sum() / max(n_rounds, 1),
            "bytes_per_client_round": (client_rows["bytes_up"].sum() + client_rows["bytes_down"].sum())
            / max(participations, 1.0),
            "bytes_up_per_client_round": client_rows["bytes_up"].sum() / max(participations, 1.0),
            "bytes_down_per_client_round": client_rows["bytes_down"].sum() / max(participations, 1.0),
            "prune_flops_share": prune / on_client["flops"].sum() if on_client["flops"].sum() else 0.0,
            # EL2N scoring is charged to the client when it happens; without pruning.every_round
            # a client prunes once, so its cost spreads over all of that client's participations
            "prune_events": prune_events,
            "prune_flops_per_event": prune / prune_events if prune_events else 0.0,
            "prune_flops_amortised_per_client_round": prune / max(participations, 1.0),
            "wall_s": float(r["wall_s"].sum()),
            "sim_s": float(r["sim_s"].sum()),
            "bytes_total": int(r["bytes_total"].iloc[-1]) if len(r) else 0,
            "client_flops_total": float(r["client_flops_total"].iloc[-1]) if len(r) else 0.0,
        })
    df = pd.DataFrame(rows)
    if not df.empty and "fl_full" in set(df["method"]):
        ref = df[df["method"] == "fl_full"].iloc[0]
        df["client_flops_ratio"] = df["client_flops_per_client_round"] / ref["client_flops_per_client_round"]
        df["bytes_ratio"] = df["bytes_per_client_round"] / ref["bytes_per_client_round"]
        df["sim_time_ratio"] = df["sim_s"] / ref["sim_s"]
        df["accuracy_delta"] = df["final_accuracy"] - ref["final_accuracy"]
    return df


def write_summary(out: Path, costs: pd.DataFrame, rounds: pd.DataFrame, *, plots: bool = True) -> pd.DataFrame:
    summary = summarize(costs, rounds)
    _atomic_csv(summary, out / "summary.csv")
    if plots and not rounds.empty:
        write_plots(out, costs, rounds, summary)
    return summary


def write_plots(out: Path, costs: pd.DataFrame, rounds: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
    """Accuracy vs cumulative bytes, accuracy vs simulated time, client FLOPs by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    evald = rounds.dropna(subset=["test_accuracy"])
    for x, label, fname, scale in (
        ("bytes_total", "cumulative bytes transferred (MB)", "accuracy_vs_bytes.png", 1e-6),
        ("cum_sim_s", "cumulative simulated time (s)", "accuracy_vs_sim_time.png", 1.0),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, g in evald.groupby("method", sort=False):
            if x in g:
                ax.plot(g[x] * scale, g["test_accuracy"], marker="o", label=method)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    on_client = costs[(costs["client_id"] >= 0) & (costs["part"] != "body")]
    if not on_client.empty:
        part = on_client.groupby(["method", "phase"], sort=False)["flops"].sum().unstack(fill_value=0.0)
        participations = rounds.groupby("method")["participants"].sum().reindex(part.index)
        per = part.div(participations, axis=0) / 1e9
        per = per.loc[:, per.sum(axis=0) > 0]  # phases without compute (download/upload) add nothing
        fig, ax = plt.subplots(figsize=(7, 4))
        per.plot(kind="bar", stacked=True, ax=ax, logy=False, rot=0)
        ax.legend(title="phase", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_ylabel("client GFLOPs per client per round")
        ax.set_xlabel("")
        ax.set_title("client compute by phase")
        fig.tight_layout()
        p = out / "client_flops_by_method.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def load_run(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``costs`` (parquet, else csv) and ``rounds.csv`` of a run folder."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"RUN_DIR: not a folder: {d}")
    rounds_p = d / "rounds.csv"
    if not rounds_p.is_file():
        raise FileNotFoundError(f"RUN_DIR: {d} has no rounds.csv (is it an sfp-ray run folder?)")
    costs_p = d / "costs.csv"
    costs = pd.read_csv(costs_p) if costs_p.is_file() else pd.read_parquet(d / "costs.parquet")
    return costs, pd.read_csv(rounds_p)


def rebuild(run_dir: str | os.PathLike, *, plots: bool = True) -> pd.DataFrame:
    """Rebuild ``summary.csv`` (and plots, parquet) from a run folder's files."""
    d = Path(run_dir)
    costs, rounds = load_run(d)
    costs.to_parquet(d / "costs.parquet", index=False)
    return write_summary(d, costs, rounds, plots=plots)


def format_summary(summary: pd.DataFrame) -> str:
    """A plain-text comparison table for the terminal."""
    if summary.empty:
        return "(no rounds)"
    cols = [("method", "method", "{}"), ("final_accuracy", "accuracy", "{:.3f}"),
            ("client_flops_per_client_round", "client GFLOP/cl/rd", "{:.3g}"),
            ("bytes_per_client_round", "MB/cl/rd", "{:.3g}"),
            ("sim_s", "sim s", "{:.1f}"), ("wall_s", "wall s", "{:.1f}")]
    if "client_flops_ratio" in summary:
        cols += [("client_flops_ratio", "FLOPs vs fl_full", "{:.4f}"), ("bytes_ratio", "bytes vs fl_full", "{:.3f}"),
                 ("accuracy_delta", "acc - fl_full", "{:+.3f}")]
    scale = {"client_flops_per_client_round": 1e-9, "bytes_per_client_round": 1e-6}
    header = [c[1] for c in cols]
    body = []
    for _, row in summary.iterrows():
        cells = []
        for key, _, fmt in cols:
            v = row[key]
            if key in scale:
                v = v * scale[key]
            cells.append(fmt.format(v))
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
