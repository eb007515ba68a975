"""The sink that writes a run's reports: typed records in, a run folder's files out.

Files in a run's output folder (a contract: columns may be added, never renamed; every
column is listed with its unit in ``docs/reports.md``):

- ``costs.parquet`` / ``costs.csv``: one row per (round, client, phase, part, side);
- ``rounds.csv``: one row per round, with cumulative ``bytes_total`` and ``client_flops_total``;
- ``summary.csv``: one row per method, with ratios to ``fl_full`` when it was run
  (:mod:`sfp_ray.reports.summaries` computes it, :func:`write_summary` writes it);
- ``messages.csv``: one row per message (direction, kind, sender, receiver, bytes, tensor shapes);
- ``clients.csv``: one row per (round, selected client): device, status (``ok``, ``retried``: it
  succeeded on its second attempt, ``failed``: both attempts failed and it was left out of the
  round; ``offline``, ``dropped``, ``late``: see :mod:`sfp_ray.availability`), attempts, error
  (one line), samples, kept samples, wall and simulated seconds, the client's cut;
- ``resources.csv``: requested / enforced / observed resources per actor (Ray executor);
- ``timeline.csv``: each client's simulated round, segment by segment (phase, side, start and end);
- ``config.yaml``: the resolved configuration, seeds and library versions;
- ``accuracy_vs_bytes.png``, ``accuracy_vs_sim_time.png``, ``client_flops_by_method.png``,
  ``timeline.png`` (the last round's schedule of the first run,
  :func:`~sfp_ray.reports.plots.plot_timeline`), drawn by :mod:`sfp_ray.reports.plots`.

CSV files are rewritten atomically after every round, so a crash keeps every finished
round; ``sfp-ray report RUN_DIR`` rebuilds the summary and plots from them
(:mod:`sfp_ray.reports.rebuild`), and ``--resume RUN_DIR`` continues the run
(:meth:`ReportSink.resume` takes the rows up again). Every row names its ``method`` and ``seed``.
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
from sfp_ray.errors import SfpRayError
from sfp_ray.records import ClientRecord, CostRecord, MessageRecord, RoundRecord, RunMeta
from sfp_ray.reports.plots import plot_timeline, write_plots
from sfp_ray.reports.summaries import summarize, summarize_by_seed

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


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` as CSV (no index) through a temporary file, so a reader never sees half a file."""
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
        return order_columns(df, COST_COLUMNS)

    def round_frame(self) -> pd.DataFrame:
        return order_columns(pd.DataFrame(self.rounds), ROUND_COLUMNS)

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
            df = order_columns(df, first) if first is not None else df
            write_csv(df, path)
            self._columns[name], self._colset[name] = list(df.columns), set(df.columns)
        self._written[name] = len(rows)

    def finalize(self) -> pd.DataFrame:
        """Write parquet, summary and plots; return the summary."""
        self.flush()
        costs = self.cost_frame()
        costs.to_parquet(self.out / "costs.parquet", index=False)
        return write_summary(self.out, costs, self.round_frame(), plots=self.plots)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resource row's nested mappings as dotted columns (configurations: :func:`sfp_ray.config.dotted_items`)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _diff(a: Any, b: Any) -> dict[str, Any]:
    """The settings of configuration ``b`` that differ from ``a``, by dotted key (as ``--set`` names them)."""
    from sfp_ray.config import dotted_items

    fa, fb = dotted_items(a), dotted_items(b)
    return {k: fb[k] for k in fb if fa.get(k) != fb[k]}


def order_columns(df: pd.DataFrame, first: Sequence[str], last: Sequence[str] = ()) -> pd.DataFrame:
    """``df`` with the columns of ``first`` first and those of ``last`` last (the rest in between, as they are);
    an empty frame becomes one with just the columns of ``first``.

    Example:
        >>> list(order_columns(pd.DataFrame([{"b": 1, "error": "", "a": 2}]), ["a"], ["error"]).columns)
        ['a', 'b', 'error']
    """
    if df.empty:
        return pd.DataFrame(columns=list(first))
    cols = [c for c in first if c in df.columns]
    cols += [c for c in df.columns if c not in cols and c not in last]
    cols += [c for c in last if c in df.columns and c not in cols]
    return df[cols]


# --------------------------------------------------------------------------- summary and plots


def write_summary(out: Path, costs: pd.DataFrame, rounds: pd.DataFrame, *, plots: bool = True) -> pd.DataFrame:
    by_seed = summarize_by_seed(costs, rounds)
    summary = summarize(costs, rounds, by_seed)
    write_csv(summary, out / "summary.csv")
    if by_seed["seed"].nunique() > 1:
        write_csv(by_seed, out / "summary_by_seed.csv")
    if plots and not rounds.empty:
        write_plots(out, costs, rounds, summary)
        if (out / "timeline.csv").is_file():
            plot_timeline(out)
    return summary
