"""Reports: a sink that turns typed records into pandas DataFrames, files and plots.

Files in a run's output folder (a contract: columns may be added, never renamed; every
column is listed with its unit in ``docs/reports.md``):

- ``costs.parquet`` / ``costs.csv``: one row per (round, client, phase, part, side);
- ``rounds.csv``: one row per round, with cumulative ``bytes_total`` and ``client_flops_total``;
- ``summary.csv``: one row per method, with ratios to ``fl_full`` when it was run;
- ``messages.csv``: one row per message (direction, kind, sender, receiver, bytes, tensor shapes);
- ``clients.csv``: one row per (round, selected client): device, status (``ok``, ``retried``: it
  succeeded on its second attempt, ``failed``: both attempts failed and it was left out of the
  round; ``offline``, ``dropped``, ``late``: see :mod:`sfp_ray.availability`), attempts, error
  (one line), samples, kept samples, wall and simulated seconds, the client's cut;
- ``resources.csv``: requested / enforced / observed resources per actor (Ray executor);
- ``timeline.csv``: each client's simulated round, segment by segment (phase, side, start and end);
- ``config.yaml``: the resolved configuration, seeds and library versions;
- ``accuracy_vs_bytes.png``, ``accuracy_vs_sim_time.png``, ``client_flops_by_method.png``,
  ``timeline.png`` (the last round's schedule of the first run, :func:`plot_timeline`).

CSV files are rewritten atomically after every round, so a crash keeps every finished
round; ``sfp-ray report RUN_DIR`` rebuilds the summary and plots from them, and
``--resume RUN_DIR`` continues the run (:meth:`ReportSink.resume` takes the rows up again).
Every row names its ``method`` and ``seed``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sfp_ray.config import dump_config
from sfp_ray.errors import DataError, SfpRayError
from sfp_ray.methods import REFERENCE_METHOD
from sfp_ray.records import ClientRecord, CostRecord, MessageRecord, RoundRecord, RunMeta, tally
from sfp_ray.stats import ratio_text, spread

COST_COLUMNS = ["run_id", "method", "round", "client_id", "device", "phase", "part", "side", "flops", "bytes_up",
                "bytes_down", "wall_s", "sim_s"]
ROUND_COLUMNS = ["run_id", "method", "round", "participants", "test_accuracy", "test_loss", "wall_s", "sim_s",
                 "bytes_total", "client_flops_total"]


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (read from the installed packages)."""
    import sfp_ray

    out = {"sfp_ray": sfp_ray.__version__, "python": platform.python_version()}
    for dist in ("torch", "timm", "ray", "pandas", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["platform"] = platform.platform()
    return out


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
        self.clients: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []
        self.configs: dict[str, str] = {}
        self.metas: list[RunMeta] = []
        # per CSV file: rows already in it, and its columns (flush appends what is new)
        self._written: dict[str, int] = {}
        self._columns: dict[str, list[str]] = {}
        self._colset: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ sink protocol

    def start_run(self, meta: RunMeta) -> None:
        self.metas.append(meta)
        self._write_config()

    def add_costs(self, meta: RunMeta, records: Sequence[CostRecord]) -> None:
        for r in records:
            row = {"run_id": meta.run_id, "method": meta.method, "executor": meta.executor}
            row.update(dataclasses.asdict(r))
            row["seed"] = meta.seed
            self.costs.append(row)

    def add_messages(self, meta: RunMeta, records: Sequence[MessageRecord]) -> None:
        for m in records:
            row = {"run_id": meta.run_id, "method": meta.method, "seed": meta.seed}
            row.update(dataclasses.asdict(m))
            self.messages.append(row)

    def add_clients(self, meta: RunMeta, records: Sequence[ClientRecord]) -> None:
        for c in records:
            row = {"run_id": meta.run_id, "method": meta.method, "seed": meta.seed}
            row.update(dataclasses.asdict(c))
            self.clients.append(row)

    def add_resources(self, meta: RunMeta, rows: Sequence[Mapping[str, Any]]) -> None:
        for r in rows:
            self.resources.append({"run_id": meta.run_id, "method": meta.method, "seed": meta.seed, **_flatten(r)})

    def add_timeline(self, meta: RunMeta, rows: Sequence[Mapping[str, Any]]) -> None:
        for r in rows:
            self.timeline.append({"run_id": meta.run_id, "method": meta.method, "seed": meta.seed, **r})

    def add_round(self, meta: RunMeta, record: RoundRecord) -> None:
        self.rounds.append(dataclasses.asdict(record))
        self.flush()

    def end_run(self, meta: RunMeta, final_state: Mapping[str, torch.Tensor]) -> None:
        self.save_final_state(meta, final_state)
        self.finalize()

    def final_state_path(self, meta: RunMeta) -> Path:
        """``final_state_<method>_seed<seed>.pt`` in the folder."""
        return self.out / f"final_state_{meta.method}_seed{meta.seed}.pt"

    def save_final_state(self, meta: RunMeta, final_state: Mapping[str, torch.Tensor]) -> None:
        torch.save({k: v.detach().cpu() for k, v in final_state.items()}, self.final_state_path(meta))

    # ------------------------------------------------------------------ resume

    def resume(self, keep_rounds: Mapping[tuple[str, int], int]) -> None:
        """Take up the rows already in the folder's CSV files, for a resumed invocation.

        ``keep_rounds`` maps each (method, seed) run that will execute again to the last
        round its checkpoint holds (0 when it has none): that run's rows of later rounds,
        and its per-actor rows written at start-up, are dropped (it writes them again), so
        no row is duplicated. Rows of other runs (finished ones) are kept as they are.
        Numbers are read back exactly (``float_precision="round_trip"``).
        """
        targets = {(str(m), int(s)): int(k) for (m, s), k in keep_rounds.items()}
        for name, rows in (("costs.csv", self.costs), ("rounds.csv", self.rounds), ("messages.csv", self.messages),
                           ("clients.csv", self.clients), ("resources.csv", self.resources),
                           ("timeline.csv", self.timeline)):
            p = self.out / name
            if not p.is_file() or p.stat().st_size == 0:
                continue
            df = pd.read_csv(p, float_precision="round_trip", low_memory=False, dtype={"run_id": str})
            if df.empty:
                continue
            if "seed" not in df or "method" not in df:
                raise SfpRayError(f"--resume: {p} has no method/seed columns (written by an older sfp-ray?)")
            keep = pd.Series(True, index=df.index)
            rnd = df["round"] if "round" in df else pd.Series(float("nan"), index=df.index)
            for (m, sd), k in targets.items():
                mine = (df["method"] == m) & (df["seed"] == sd)
                keep &= ~(mine & (rnd.isna() | (rnd > k)))
            rows.extend(df[keep].to_dict("records"))

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
        """Write the records added since the last flush to the CSV files.

        A file is appended to (one write of the new rows), so a round costs the same
        whatever the run's length; it is rewritten whole, atomically, the first time and
        whenever new rows bring a column the file lacks. ``costs.csv`` and ``rounds.csv``
        exist (with their header) from the first flush on.
        """
        self._write("costs.csv", self.costs, COST_COLUMNS, always=True)
        self._write("rounds.csv", self.rounds, ROUND_COLUMNS, always=True)
        self._write("messages.csv", self.messages)
        self._write("clients.csv", self.clients)
        self._write("resources.csv", self.resources)
        self._write("timeline.csv", self.timeline)

    def _write(self, name: str, rows: list[dict[str, Any]], first: list[str] | None = None, *,
               always: bool = False) -> None:
        done = self._written.get(name, 0)
        if done == len(rows) and (done or not always or name in self._columns):
            return
        path = self.out / name
        cols = self._columns.get(name)
        new = rows[done:]
        if done and cols is not None and all(k in self._colset[name] for r in new for k in r):
            with path.open("a", encoding="utf-8", newline="") as f:
                f.write(pd.DataFrame(new, columns=cols).to_csv(index=False, header=False))
        else:
            df = pd.DataFrame(rows)
            df = _order(df, first) if first is not None else df
            _atomic_csv(df, path)
            self._columns[name], self._colset[name] = list(df.columns), set(df.columns)
        self._written[name] = len(rows)

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


def write_summary(out: Path, costs: pd.DataFrame, rounds: pd.DataFrame, *, plots: bool = True) -> pd.DataFrame:
    by_seed = summarize_by_seed(costs, rounds)
    summary = summarize(costs, rounds, by_seed)
    _atomic_csv(summary, out / "summary.csv")
    if by_seed["seed"].nunique() > 1:
        _atomic_csv(by_seed, out / "summary_by_seed.csv")
    if plots and not rounds.empty:
        write_plots(out, costs, rounds, summary)
        if (out / "timeline.csv").is_file():
            plot_timeline(out)
    return summary


def log_axis(values: Sequence[float]) -> bool:
    """Whether values compared on one axis (each method's final position) span more than 10x: then a log axis.

    Example:
        >>> log_axis([0.3, 160, 390]), log_axis([160, 390]), log_axis([0.0, 5.0])
        (True, False, False)
    """
    pos = [v for v in values if v > 0]
    return len(pos) > 1 and max(pos) > 10 * min(pos)


def write_plots(out: Path, costs: pd.DataFrame, rounds: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
    """Accuracy vs cumulative bytes, accuracy vs simulated time, client FLOPs by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    evald = rounds.assign(seed=_seeds(rounds)).dropna(subset=["test_accuracy"])
    for x, label, fname, scale in (
        ("bytes_total", "cumulative bytes transferred (MB)", "accuracy_vs_bytes.png", 1e-6),
        ("cum_sim_s", "cumulative simulated time (s)", "accuracy_vs_sim_time.png", 1.0),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        ends = []
        for method, g in evald.groupby("method", sort=False):
            if x not in g:
                continue
            seeds = g["seed"].nunique()
            curve = [(float(rg[x].mean()) * scale, spread(rg["test_accuracy"])) for _, rg in g.groupby("round")]
            xs = [c[0] for c in curve]
            ends.append(max(xs))
            line = ax.plot(xs, [c[1].mean for c in curve], marker="o",
                           label=f"{method} (mean of {seeds} seeds)" if seeds > 1 else method)[0]
            if seeds > 1:  # an accuracy lies in [0, 1]; so does its band
                ax.fill_between(xs, [max(0.0, c[1].mean - c[1].ci95) for c in curve],
                                [min(1.0, c[1].mean + c[1].ci95) for c in curve],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        if log_axis(ends):
            ax.set_xscale("log")
            label += ", log scale: the methods span more than 10x"
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.02), min(high, 1.02))
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy" + (" (band: 95% t-interval over seeds)" if evald["seed"].nunique() > 1 else ""))
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.1, which="minor")
        ax.legend()
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    on_client = costs[(costs["side"] == "client") & (costs["phase"] != "eval")]
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


#: Colours of the timeline plot's phases (waits for the server are grey, server compute dark).
PHASE_COLOURS = {"download": "#4c72b0", "prune": "#dd8452", "local_update": "#55a868", "local_train": "#55a868",
                 "split_train": "#c44e52", "upload": "#8172b3", "wait": "#c8c8c8"}
SERVER_COLOUR = "#222222"
#: How each status other than ``ok`` is marked at the end of a client's bar: (marker, colour).
STATUS_MARKS = {"dropped": ("X", "#d62728"), "late": (">", "#ff7f0e"), "failed": ("X", "#7f7f7f"),
                "offline": ("o", "#7f7f7f"), "retried": ("*", "#1f77b4")}


def _round_clients(d: Path, df: pd.DataFrame, method: str, seed: int, rnd: int) -> pd.DataFrame:
    """The round's selected clients (``clients.csv``: also those without segments), with status and cut."""
    p = d / "clients.csv"
    if p.is_file():
        c = pd.read_csv(p, dtype={"run_id": str})
        c = c[(c["method"] == method) & (c["seed"] == seed) & (c["round"] == rnd)]
        if not c.empty and {"client_id", "device", "status"} <= set(c.columns):
            return c.sort_values("client_id").reset_index(drop=True)
    return df.groupby("client_id", as_index=False)[["device", "status"]].first()


def _seconds(x: float) -> str:
    """Simulated seconds for a plot label: ``1.2 s``, ``0.49 ms``."""
    return f"{x:.2g} s" if x >= 0.1 else f"{x * 1e3:.2g} ms"


def _deadline(d: Path) -> float | None:
    """``federation.deadline_s`` of the folder's runs (``config.yaml``), when set."""
    import yaml

    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        value = cfg["federation"]["deadline_s"]
        return float(value) if value is not None else None
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def plot_timeline(run_dir: str | os.PathLike, *, round: int | None = None, method: str | None = None,
                  seed: int | None = None, out: str | os.PathLike | None = None) -> Path:
    """Plot one round's simulated schedule from ``timeline.csv``: a bar per selected client, a segment per phase.

    Every client selected in the round has a row (from ``clients.csv``): its label names it,
    its device class (the label's colour) and its cut (head/tail blocks); a client that was
    offline, dropped out, finished late, failed or was retried is marked at the end of its
    bar and named there. Segments are coloured by phase; the server's compute for a client is
    dark and hatched, its waits for the server grey, and both are drawn at least a visible
    width and summed at the end of the bar; the top row shows when the server is busy. A
    dashed line marks ``federation.deadline_s`` when set. Defaults: the first method and seed
    of the folder, its last round; written to ``timeline.png`` in the folder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    d = Path(run_dir)
    path = d / "timeline.csv"
    if not path.is_file():
        raise FileNotFoundError(f"RUN_DIR: {d} has no timeline.csv (folders from before timelines were recorded "
                                "have none)")
    df = pd.read_csv(path)
    if df.empty:
        raise DataError(f"{path} has no rows")
    method = method if method is not None else str(df["method"].iloc[0])
    df = df[df["method"] == method]
    if df.empty:
        raise DataError(f"{path}: no rows of method {method!r}")
    seed = seed if seed is not None else int(df["seed"].iloc[0])
    df = df[df["seed"] == seed]
    round = round if round is not None else int(df["round"].max()) if not df.empty else 0
    df = df[df["round"] == round]
    if df.empty:
        raise DataError(f"{path}: no rows of {method} seed {seed} round {round}")
    clients = _round_clients(d, df, method, seed, round)
    deadline = _deadline(d)
    span = max(float(df["end_s"].max()), deadline or 0.0)
    least = span * 0.004  # the narrowest segment drawn: server and wait slivers stay visible
    cmap = plt.get_cmap("tab10")
    dev_colour = {dv: cmap(i % 10) for i, dv in enumerate(sorted(clients["device"].unique()))}
    fig, ax = plt.subplots(figsize=(10, 0.38 * (len(clients) + 1) + 1.8))
    server = df[df["side"] == "server"]
    for row in server.itertuples(index=False):  # row 0: the server's busy time, all clients together
        ax.barh(0, max(row.end_s - row.start_s, least), left=row.start_s, color=SERVER_COLOUR, height=0.5)
    labels = [f"server (busy {_seconds(float(server['end_s'].sub(server['start_s']).sum()))})"]
    label_colours: list[Any] = ["black"]
    for y, c in enumerate(clients.itertuples(index=False), start=1):
        segs = df[df["client_id"] == c.client_id].sort_values("start_s")
        for row in segs.itertuples(index=False):
            width = row.end_s - row.start_s
            if row.side == "server":  # drawn on top of the client's segments, at least `least` wide
                ax.barh(y, max(width, least), left=row.start_s, color=SERVER_COLOUR, edgecolor="white",
                        linewidth=0.3, hatch="///", zorder=3)
            elif row.side == "wait":
                ax.barh(y, max(width, least), left=row.start_s, color=PHASE_COLOURS["wait"], edgecolor="#888888",
                        linewidth=0.3, zorder=3)
            else:
                ax.barh(y, width, left=row.start_s, color=PHASE_COLOURS.get(row.phase, "#999999"),
                        edgecolor="white", linewidth=0.3)
        end = float(segs["end_s"].max()) if not segs.empty else 0.0
        notes = []
        srv = float(segs.loc[segs["side"] == "server", "end_s"].sub(segs.loc[segs["side"] == "server",
                                                                              "start_s"]).sum())
        wait = float(segs.loc[segs["side"] == "wait", "end_s"].sub(segs.loc[segs["side"] == "wait", "start_s"]).sum())
        if srv > 0:
            notes.append(f"server {_seconds(srv)}")
        if wait > 0:
            notes.append(f"wait {_seconds(wait)}")
        status = str(c.status) if isinstance(c.status, str) else ""
        if status in STATUS_MARKS:
            marker, colour = STATUS_MARKS[status]
            ax.plot([end], [y], marker=marker, color=colour, markersize=9, markeredgecolor="black",
                    markeredgewidth=0.5, linestyle="none", zorder=5)
            notes.insert(0, status.upper() if status != "offline" else "OFFLINE: selected, not online, no work")
        if notes:
            gap = span * (0.03 if status in STATUS_MARKS else 0.012)
            ax.text(end + gap, y, ", ".join(notes), va="center", fontsize=7,
                    color=STATUS_MARKS.get(status, (None, "#444444"))[1])
        cut = ""
        if "head_blocks" in clients.columns and pd.notna(c.head_blocks):
            cut = f"  cut {int(c.head_blocks)}/{int(c.tail_blocks)}"
        labels.append(f"{c.client_id} {c.device}{cut}" + (f" ({status})" if status not in ("ok", "") else ""))
        label_colours.append(dev_colour[c.device])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    for tick, colour in zip(ax.get_yticklabels(), label_colours, strict=True):
        tick.set_color(colour)
    if deadline is not None:
        ax.axvline(deadline, color="#ff7f0e", linestyle="--", linewidth=1)
        ax.text(deadline, 0.01, f" deadline {deadline:g} s", color="#ff7f0e", fontsize=7, va="bottom",
                transform=ax.get_xaxis_transform())
    ax.set_xlim(0, span * 1.5)  # room for the notes after the bars
    ax.invert_yaxis()
    ax.set_xlabel("simulated seconds in the round")
    ax.set_title(f"{method} seed {seed}, round {round}: simulated timeline per selected client\n"
                 "(label: client, device (colour), cut head/tail blocks; server and wait segments drawn at least "
                 f"{_seconds(least)} wide)", fontsize=9)
    phases = [p for p in PHASE_COLOURS if p != "wait" and p in set(df.loc[df["side"] != "server", "phase"])]
    handles: list[Any] = [Patch(color=PHASE_COLOURS[p], label=p) for p in dict.fromkeys(phases)]
    handles.append(Patch(facecolor=SERVER_COLOUR, edgecolor="white", hatch="///", label="server computes"))
    handles.append(Patch(facecolor=PHASE_COLOURS["wait"], edgecolor="#888888", label="waits for the server"))
    for status in [st for st in STATUS_MARKS if st in set(clients["status"])]:
        marker, colour = STATUS_MARKS[status]
        handles.append(Line2D([], [], marker=marker, color=colour, markeredgecolor="black", linestyle="none",
                              label=status))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    target = Path(out) if out is not None else d / "timeline.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def load_run(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``costs`` (parquet, else csv) and ``rounds.csv`` of a run folder."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"RUN_DIR: not a folder: {d}")
    rounds_p = d / "rounds.csv"
    if not rounds_p.is_file():
        raise FileNotFoundError(f"RUN_DIR: {d} has no rounds.csv (is it an sfp-ray run folder?)")
    rounds = _read_table(rounds_p, ROUND_KEY_COLUMNS)
    costs_p = d / "costs.csv"
    costs = _read_table(costs_p if costs_p.is_file() else d / "costs.parquet", COST_KEY_COLUMNS)
    return costs, rounds


#: Columns without which a run folder's tables cannot be summarised (older folders may lack newer columns).
ROUND_KEY_COLUMNS = ("method", "round", "test_accuracy")
COST_KEY_COLUMNS = ("method", "round", "phase", "side", "flops")


def _read_table(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A CSV or parquet table of a run folder; a damaged or foreign file is a one-line DataError naming it."""
    if not path.is_file():
        raise DataError(f"RUN_DIR: {path} not found (is {path.parent} an sfp-ray run folder?)")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"run_id": str})
    except Exception as e:  # noqa: BLE001  (pandas/pyarrow raise many types for one user error: a bad file)
        raise DataError(f"RUN_DIR: cannot read {path} ({type(e).__name__}: {e})".splitlines()[0]) from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"RUN_DIR: {path} is not an sfp-ray table: no column {', '.join(missing)}")
    return df


def rebuild(run_dir: str | os.PathLike, *, plots: bool = True) -> pd.DataFrame:
    """Rebuild ``summary.csv`` (and plots, parquet) from a run folder's files."""
    d = Path(run_dir)
    costs, rounds = load_run(d)
    costs.to_parquet(d / "costs.parquet", index=False)
    return write_summary(d, costs, rounds, plots=plots)


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
