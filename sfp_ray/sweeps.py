"""Parameter sweeps: every cell of a grid of configuration values, per method and seed (``sfp-ray sweep``).

A grid maps dotted configuration keys to lists of values; its cells are their cartesian
product, in the grid's key order (the last key varies fastest). Every cell runs
:func:`~sfp_ray.api.run_methods` once (all methods, all seeds, the serial executor) into
its own regular run folder, ``OUT/cells/<cell-id>/``, and the sweep gathers them::

    OUT/sweep.yaml              the grid, methods, seeds and the base configuration
    OUT/cells/<cell-id>/        a run report (summary.csv, rounds.csv, costs.csv, ... config.yaml)
    OUT/cells/<cell-id>/sweep-cell.json   written last: the cell is finished
    OUT/sweep.csv               one row per cell x method x seed
    OUT/sweep_summary.csv       one row per cell x method: mean, std and 95 % CI over seeds
    OUT/sweep_<key>.png         one plot per swept key

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

Before anything runs, the configuration of every cell is built and validated (a bad key
or value fails with one line naming it), every method is checked against every cell on
the ``meta`` device (invalid pairs are skipped and reported, not run), and the backbones
the cells need are resolved (pre-trained once when missing).

Resuming: a cell is finished when its ``sweep-cell.json`` exists and records the same
configuration (the ``ray`` and ``project`` sections aside: they do not change what a cell
computes), methods and seeds; finished cells are skipped, so a sweep started again
after an interruption runs only what is missing, and a finished sweep started again
trains nothing and rewrites the same tables. An unfinished cell folder is cleared and
its cell run again.

Executors: ``serial`` runs the cells one after another in this process; ``ray`` starts
(or joins) one Ray cluster for the whole grid and submits every cell as a Ray task that
runs it with the serial executor (:mod:`sfp_ray.executors.ray.sweep`), so Ray runs as many
cells at once as the cluster has CPUs for.

Plots: for each swept key, final accuracy (left), client FLOPs (middle) and bytes (right)
relative to ``fl_full`` (absolute client GFLOPs and MB per client-round without
``fl_full``; a log axis when the methods span more than 10x) against the key's values, one
line per method. Each point is the mean over the cells with that value, i.e.
averaged over the other swept keys; the error bars span the lowest to the highest of
those cells' means. With a single swept key, the error bars are the 95 % CI over seeds.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sfp_ray.api import ConfigLike, check_out_dir, run_methods, seed_list, string_list, to_config
from sfp_ray.config import Config, dump_config, set_value, split_assignment, to_dict
from sfp_ray.errors import ConfigError, SfpRayError
from sfp_ray.stats import ratio_text

log = logging.getLogger(__name__)

#: Written into a cell's folder after its report is complete: the cell is finished.
MARKER = "sweep-cell.json"
#: Configuration keys a grid may not sweep, and what to use instead.
RESERVED = {"seed": "use seeds (--seeds) to repeat runs", "method": "use methods (--methods)"}
#: Default output folder of ``sfp-ray sweep`` (a fixed name, so that running it again resumes).
DEFAULT_OUT = Path("runs") / "sweep"


# --------------------------------------------------------------------------- the grid


def split_values(text: str) -> list[str]:
    """Split ``"0,1,[2,3]"`` at the commas outside brackets and braces.

    Example:
        >>> split_values("0, 0.5,1.0"), split_values("[0,1],[2,3]")
        (['0', '0.5', '1.0'], ['[0,1]', '[2,3]'])
    """
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        return raw


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid`` arguments (``KEY=V1,V2,...``) -> ``{key: [values]}`` (values read as YAML).

    Example:
        >>> parse_grid(["split.head_blocks=0,1,2", "pruning.keep_ratio=0.25,1.0"])
        {'split.head_blocks': [0, 1, 2], 'pruning.keep_ratio': [0.25, 1.0]}
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, raw = split_assignment(item, "--grid", "KEY=V1,V2,..., e.g. split.head_blocks=0,1,2")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; list all its values once, e.g. {key}=V1,V2")
        values = split_values(raw.strip())
        if any(v == "" for v in values):
            raise ConfigError(f"--grid {key}: empty value in {raw.strip()!r}; expected V1,V2,...")
        grid[key] = [_parse_value(v) for v in values]
    return grid


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its id (a folder name), the swept values and the configuration."""

    id: str
    values: dict[str, Any]
    cfg: Config


def get_dotted(cfg: Any, key: str) -> Any:
    """The value of a dotted key in a configuration.

    Example:
        >>> get_dotted(Config(), "split.head_blocks")
        1
    """
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_show(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _column(value: Any) -> Any:
    """A swept value as a table cell: scalars as they are, lists and mappings as text."""
    return _show(value) if isinstance(value, (tuple, list, Mapping)) else value


def cell_id(values: Mapping[str, Any]) -> str:
    """A readable, stable folder name for a cell; a hash is appended when characters had to be replaced.

    Example:
        >>> cell_id({"split.head_blocks": 0, "pruning.keep_ratio": 0.25})
        'split.head_blocks=0__pruning.keep_ratio=0.25'
    """
    text = "__".join(f"{k}={_show(v)}" for k, v in values.items())
    safe = re.sub(r"[^A-Za-z0-9._=,+\[\]{}-]", "-", text)
    if safe != text or len(safe) > 150:
        import hashlib

        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[:150]}-{digest}"
    return safe


def _strip_key(key: str, msg: str) -> str:
    return msg[len(key) + 1:].strip() if msg.startswith(f"{key}:") else msg


def build_cells(grid: Mapping[str, Sequence[Any]], base: Config) -> list[Cell]:
    """The validated configuration of every cell of ``grid`` on top of ``base`` (nothing runs).

    Every key and value is checked first (known key, value of the key's type), then every
    cell's combination of values (ranges, cross-field constraints).

    Raises:
        ConfigError: one line naming the grid key (and value) that is unknown or invalid, or
            the cell whose combination of values is invalid.
    """
    if not grid:
        raise ConfigError("--grid: give at least one KEY=V1,V2,... to sweep, e.g. split.head_blocks=0,1,2")
    values: dict[str, list[Any]] = {}
    for key, vals in grid.items():
        key = str(key).strip()
        if key in RESERVED:
            raise ConfigError(f"--grid {key}: cannot be swept; {RESERVED[key]}")
        if isinstance(vals, str):
            vals = [_parse_value(v) for v in split_values(vals)]
        vals = list(vals)
        if not vals:
            raise ConfigError(f"--grid {key}: give at least one value")
        coerced: list[Any] = []
        for v in vals:
            try:
                c = get_dotted(set_value(base, key, v), key)
            except ConfigError as e:
                what = key if "unknown configuration key" in str(e) or "section" in str(e) else f"{key}={_show(v)}"
                raise ConfigError(f"--grid {what}: {_strip_key(key, str(e))}") from None
            if c in coerced:
                raise ConfigError(f"--grid {key}: value {_show(c)} is given twice")
            coerced.append(c)
        values[key] = coerced
    cells = []
    for combo in itertools.product(*values.values()):
        point = dict(zip(values, combo))
        try:
            cfg = base.replace(**point)
        except ConfigError as e:
            for k, v in point.items():  # a value that is invalid on its own is named alone
                if str(e).startswith(f"{k}:"):
                    try:
                        base.replace(**{k: v})
                    except ConfigError as alone:
                        if str(alone) == str(e):
                            raise ConfigError(f"--grid {k}={_show(v)}: {_strip_key(k, str(e))}") from None
            where = ", ".join(f"{k}={_show(v)}" for k, v in point.items())
            raise ConfigError(f"--grid cell {where}: {e}") from None
        cells.append(Cell(cell_id(point), point, cfg))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("--grid: two cells have the same name; use distinct values")
    return cells


def check_datasets(cells: Sequence[Cell]) -> None:
    """Every cell's ``data.name`` is a registered dataset (a one-line ConfigError otherwise)."""
    from sfp_ray.data import list_datasets

    known = set(list_datasets())
    for cell in cells:
        name = cell.cfg.data.name
        if name.strip().lower().replace("_", "-") not in known:
            where = f"--grid data.name={name}" if "data.name" in cell.values else "data.name"
            raise ConfigError(f"{where}: unknown dataset {name!r}; registered datasets: {', '.join(sorted(known))}")


def method_error(cfg: Config, method: str) -> str | None:
    """Why ``method`` cannot run on ``cfg`` (its settings, the model, the cut), or None when it can.

    Checked on the ``meta`` device, without data or weights, like the checks before a run
    (:func:`~sfp_ray.preflight.check_on_meta`).
    """
    from sfp_ray.methods.catalog import method_info, resolve
    from sfp_ray.preflight import check_cut, check_on_meta

    try:
        rcfg = resolve(method_info(method), cfg)
        check_cut(rcfg)
        check_on_meta([(method, rcfg)])
    except SfpRayError as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def check_cells(cells: Sequence[Cell], methods: Sequence[str]) -> None:
    """What every cell's configuration can be checked for without torch: the dataset and its classes, the
    device mix, catalogue and server, a checkpoint file (:func:`~sfp_ray.preflight.check_config`; the cut is
    checked per method, :func:`method_error`). One line naming the swept value when one is the cause.
    """
    from sfp_ray.methods.catalog import method_info, resolve
    from sfp_ray.preflight import check_config

    check_datasets(cells)
    for cell in cells:
        for m in methods:
            try:
                check_config(resolve(method_info(m), cell.cfg), cut=False)
            except ConfigError as e:
                key = next((k for k in cell.values if str(e).startswith(f"{k}:") or str(e).startswith(f"{k}.")),
                           None)
                if key is None:
                    raise
                raise ConfigError(f"--grid {key}={_show(cell.values[key])}: {_strip_key(key, str(e))}") from None


def share_runs(cells: Sequence[Cell], methods: Sequence[str],
               invalid: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """``(cell, method) -> cell`` whose run it shares: the first cell with the same effective configuration.

    A method's effective configuration (:meth:`~sfp_ray.methods.base.Method.effective_config`) holds
    only the keys it reads, so a swept key it ignores (``fl_full`` and ``split.*``) gives it the
    same run in several cells; that run is trained once, in the first of them, and its rows are
    shared by the others. Invalid pairs share nothing.
    """
    from sfp_ray.methods import get_method

    first: dict[tuple[str, str], str] = {}
    shared: dict[tuple[str, str], str] = {}
    for cell in cells:
        for m in methods:
            if (cell.id, m) in invalid:
                continue
            key = (m, json.dumps(get_method(m).effective_config(cell.cfg), sort_keys=True, default=str))
            owner = first.setdefault(key, cell.id)
            if owner != cell.id:
                shared[(cell.id, m)] = owner
    return shared


def _sharing_note(cells: Sequence[Cell], methods: Sequence[str], seeds: Sequence[int],
                  invalid: Mapping[tuple[str, str], str], shared: Mapping[tuple[str, str], str]) -> str:
    """One line: runs in the grid, runs to train, runs saved by sharing, and why."""
    from sfp_ray.methods import get_method

    total = len(cells) * len(methods) * len(seeds)
    valid = total - len(invalid) * len(seeds)
    saved = len(shared) * len(seeds)
    line = (f"{total} runs in the grid ({len(cells)} cells x {len(methods)} methods x {len(seeds)} seeds"
            + (f", {len(invalid) * len(seeds)} invalid" if invalid else "") + f"), {valid - saved} distinct to train")
    if not saved:
        return line + ": no run saved (every method reads every swept key)"
    keys = list(cells[0].values)
    why = []
    for m in dict.fromkeys(mm for (_, mm) in shared):
        method = get_method(m)
        unread = [k for k in keys if k not in method.reads(cells[0].cfg)]
        forced = [k for k in keys if k in method.overrides]
        why.append(f"{m} does not read {', '.join(unread)}" if unread else
                   f"{m} forces {', '.join(forced)}" if forced else f"{m} runs the same in several cells")
    return f"{line}: {saved} runs saved by sharing ({'; '.join(why)})"


# --------------------------------------------------------------------------- one cell


@dataclass(frozen=True)
class CellJob:
    """What one cell runs: its configuration, the methods valid on it, the seeds."""

    id: str
    cfg: Config
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    plots: bool = True


@dataclass
class CellOutput:
    """What running a cell returns: one-line notices, timing, and (from a Ray task) the report's files."""

    notices: list[str]
    started: float
    finished: float
    pid: int
    host: str
    files: dict[str, bytes] | None = None


def run_cell(job: CellJob, out: str | os.PathLike) -> CellOutput:
    """Run a cell's methods and seeds with the serial executor into the run folder ``out``.

    The serial executor computes with the torch threads of this process (the Ray task's
    CPUs, see :mod:`sfp_ray.executors.ray.sweep`).
    """
    import socket

    import torch

    notices: list[str] = []

    def echo(msg: str) -> None:
        if msg.startswith("notice: "):
            notices.append(msg[len("notice: "):])

    t0 = time.time()
    run_methods(job.methods, job.cfg, seeds=job.seeds, executor="serial", out=out, plots=job.plots, echo=echo,
                threads=torch.get_num_threads())
    return CellOutput(list(dict.fromkeys(notices)), t0, time.time(), os.getpid(), socket.gethostname())


def run_cell_packed(job: CellJob) -> CellOutput:
    """Run a cell into a temporary folder and return the report's files with it (a Ray task's body).

    The files travel back to the driver through Ray's object store, so the sweep's folder
    need not be visible from the node the task ran on.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"sfp-ray-cell-{os.getpid()}-"))
    try:
        res = run_cell(job, tmp)
        res.files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(tmp.rglob("*")) if p.is_file()}
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Configuration sections that do not change what a cell computes (a cell runs the serial executor).
NOT_IN_RESULTS = ("ray", "project")


def _request(job: CellJob) -> dict[str, Any]:
    """What a finished cell must have run for it to be skipped (JSON-normalised)."""
    cfg = {k: v for k, v in to_dict(job.cfg).items() if k not in NOT_IN_RESULTS}
    req = {"methods": list(job.methods), "seeds": list(job.seeds), "config": cfg}
    return json.loads(json.dumps(req, default=str))


def finished(folder: Path, job: CellJob) -> bool | None:
    """True: the cell ran with this request; False: it ran with another; None: it never finished."""
    marker = folder / MARKER
    if not marker.is_file() or not (folder / "rounds.csv").is_file():
        return None
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    req, want = done.get("request") or {}, _request(job)
    if req == want:
        return True
    # a cell that ran more methods than it must run now (an earlier sweep, before runs were shared) will do
    return (isinstance(req, dict) and req.get("config") == want["config"] and req.get("seeds") == want["seeds"]
            and set(want["methods"]) <= set(req.get("methods") or []))


def _write_marker(folder: Path, job: CellJob, cell: Cell, res: CellOutput) -> None:
    body = {"cell": cell.id, "values": json.loads(json.dumps(cell.values, default=str)), "request": _request(job),
            "started": res.started, "finished": res.finished, "seconds": res.finished - res.started,
            "pid": res.pid, "host": res.host, "notices": res.notices}
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, folder / MARKER)


def _unpack(folder: Path, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# --------------------------------------------------------------------------- tables


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


def _order(df: pd.DataFrame, first: Sequence[str], last: Sequence[str] = ("error",)) -> pd.DataFrame:
    cols = [c for c in first if c in df.columns]
    cols += [c for c in df.columns if c not in cols and c not in last]
    cols += [c for c in last if c in df.columns and c not in cols]
    return df[cols]


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
    sweep = _order(pd.DataFrame(runs), first)
    summary = _order(pd.DataFrame(summaries), ["cell_id", *keys, "method", "status", "seeds", "rounds",
                                               "final_accuracy_mean", "final_accuracy_std", "final_accuracy_ci95"])
    return sweep, summary


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


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


# --------------------------------------------------------------------------- the sweep


def sweep(grid: Mapping[str, Sequence[Any]] | Sequence[str], methods: Sequence[str] = ("sfprompt", "fl_full"),
          config: ConfigLike = None, *, overrides: Sequence[str] = (), seeds: Sequence[int] | None = None,
          executor: str = "ray", address: str | None = None, out: str | os.PathLike | None = None,
          plots: bool = True, cell_cpus: int | None = None, share: bool = True,
          echo: Callable[[str], None] | None = None) -> SweepResults:
    """Run every cell of ``grid`` once per method and seed; write and return the sweep's tables.

    Args:
        grid: ``{dotted key: [values]}`` (or ``--grid`` strings ``KEY=V1,V2``); cells are the
            cartesian product.
        methods: registered method names run in every cell.
        config: the base configuration (see :func:`~sfp_ray.api.to_config`).
        overrides: ``key=value`` settings applied on top of ``config`` in every cell.
        seeds: run seeds (default: the configuration's ``seed``).
        executor: ``ray`` (every cell a Ray task on one cluster) or ``serial`` (one after another here).
        address: the Ray cluster to join (``auto`` or ``HOST:PORT``); default a private local Ray.
        out: the sweep folder (default ``runs/sweep``); the same folder again resumes.
        plots: write the PNG plots (the sweep's and every cell's).
        cell_cpus: CPUs per cell task with the Ray executor (default: the cluster's CPUs
            shared out among the cells, at least 1).
        share: train a method once per distinct configuration of the keys it reads and share
            the run among the cells that differ only in keys it ignores (:func:`share_runs`);
            False trains every cell's runs (to check that the shared rows are what each cell gives).
        echo: called with one-line progress messages and notices.

    Raises:
        ConfigError: a grid key or value, a method, the seeds or the executor are invalid
            (before anything runs), or no method can run on any cell.
    """
    from sfp_ray.methods.catalog import method_info

    say = echo or (lambda _msg: None)
    if executor not in ("ray", "serial"):
        raise ConfigError(f"executor: got {executor!r}, allowed: 'ray', 'serial'")
    base = to_config(config, overrides)
    if isinstance(grid, str):
        raise ConfigError(f"grid: expected a mapping {{key: [values]}} or a list of 'KEY=V1,V2' strings, got the "
                          f"string {grid!r}; write grid=[{grid!r}]")
    grid = parse_grid(grid) if not isinstance(grid, Mapping) else dict(grid)
    methods = string_list(methods, "methods", "method names")
    if not methods:
        raise ConfigError("methods: give at least one method, e.g. sfprompt,fl_full")
    for m in methods:
        method_info(m)
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods: a method is repeated: {methods}")
    seeds = seed_list(seeds) if seeds is not None else [base.seed]
    cells = build_cells(grid, base)
    check_cells(cells, methods)
    keys = list(cells[0].values)
    folder = Path(out) if out is not None else DEFAULT_OUT
    if executor == "ray":  # the cluster must answer before anything is written
        from sfp_ray.executors.ray.runtime import resolve_address

        resolve_address(address if address is not None else base.ray.address)
    check_out_dir(folder, create=False)

    invalid = {(c.id, m): why for c in cells for m in methods if (why := method_error(c.cfg, m)) is not None}
    if len(invalid) == len(cells) * len(methods):
        (cid, m), why = next(iter(invalid.items()))
        raise ConfigError(f"no method can run on any cell of the grid; e.g. {m} on {cid}: {why}")
    grouped: dict[tuple[str, str], list[str]] = {}
    for (cid, m), why in invalid.items():
        grouped.setdefault((cid, why), []).append(m)
    for (cid, why), ms in grouped.items():
        say(f"notice: cell {cid}: skipping {', '.join(ms)}, which cannot run there: {why}")

    shared = share_runs(cells, methods, invalid) if share else {}
    say(_sharing_note(cells, methods, seeds, invalid, shared))

    check_out_dir(folder)
    (folder / "cells").mkdir(exist_ok=True)
    jobs = {c.id: CellJob(c.id, c.cfg, tuple(m for m in methods if (c.id, m) not in invalid
                                             and (c.id, m) not in shared), tuple(seeds), plots)
            for c in cells}
    grid_values: dict[str, list[Any]] = {k: [] for k in keys}
    for c in cells:
        for k in keys:
            if c.values[k] not in grid_values[k]:
                grid_values[k].append(c.values[k])
    record = {"grid": {k: [_column(v) for v in vs] for k, vs in grid_values.items()}, "methods": methods,
              "seeds": seeds, "executor": executor, "cells": [c.id for c in cells],
              "shared_runs": [{"cell": cid, "method": m, "run_in": owner} for (cid, m), owner in shared.items()]}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(record, sort_keys=False)
                                       + "# the base configuration of every cell\n" + dump_config(base))

    frames: dict[str, Any] = {}
    skipped, todo = [], []
    for cell in cells:
        job, where = jobs[cell.id], folder / "cells" / cell.id
        if not job.methods:
            continue
        state = finished(where, job)
        if state:
            frames[cell.id] = _cell_frames(where)
            skipped.append(cell.id)
            continue
        if state is False:
            say(f"notice: cell {cell.id} finished earlier with another configuration, methods or seeds; "
                "running it again")
        todo.append(cell)
    if skipped:
        say(f"{len(skipped)} of {len(cells)} cells already finished: skipped")

    _resolve_backbones([jobs[c.id] for c in todo], say)

    failed: dict[str, str] = {}
    ran: list[str] = []
    by_id = {c.id: c for c in cells}
    notices_seen: set[str] = set()
    t0 = time.perf_counter()

    def write_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
        sw, sm = build_tables(cells, methods, seeds, frames, invalid, failed, shared)
        _atomic_csv(sw, folder / "sweep.csv")
        _atomic_csv(sm, folder / "sweep_summary.csv")
        return sw, sm

    def done(cid: str, res: CellOutput | None, error: str | None) -> None:
        where = folder / "cells" / cid
        n = len(ran) + len(failed) + 1
        if error is not None:
            failed[cid] = error
            say(f"[{n}/{len(todo)}] cell {cid}: failed: {error}")
        else:
            assert res is not None
            if res.files is not None:
                _unpack(where, res.files)
            _write_marker(where, jobs[cid], by_id[cid], res)
            frames[cid] = _cell_frames(where)
            ran.append(cid)
            for note in res.notices:
                if note not in notices_seen:
                    notices_seen.add(note)
                    say(f"notice: {note}")
            say(f"[{n}/{len(todo)}] cell {cid}: done in {res.finished - res.started:.0f} s "
                f"({time.perf_counter() - t0:.0f} s since the sweep started)")
        write_tables()

    for cell in todo:  # an unfinished folder holds a partial or stale report
        where = folder / "cells" / cell.id
        if where.exists():
            shutil.rmtree(where)
    if todo:
        n_runs = sum(len(jobs[c.id].methods) for c in todo) * len(seeds)
        say(f"running {len(todo)} cells ({n_runs} runs) with the {executor} executor; cells in {folder / 'cells'}")
    if executor == "serial":
        for cell in todo:
            where = folder / "cells" / cell.id
            try:
                res = run_cell(jobs[cell.id], where)
            except Exception as e:  # a failed cell does not stop the others; KeyboardInterrupt does
                log.debug("cell %s failed", cell.id, exc_info=True)
                done(cell.id, None, _first_line(e))
                continue
            done(cell.id, res, None)
    elif todo:
        from sfp_ray.executors.ray.sweep import run_tasks

        run_tasks(run_cell_packed, [jobs[c.id] for c in todo],
                  lambda i, res, err: done(todo[i].id, res, err),
                  cfg_ray=base.ray, address=address, cpus_per_task=cell_cpus, say=say)

    sw, sm = write_tables()
    paths = write_plots(folder, sm, keys, methods) if plots else []
    return SweepResults(folder, sw, sm, grid_values, ran, skipped, failed, invalid, paths, shared)


def _resolve_backbones(jobs: Sequence[CellJob], say: Callable[[str], None]) -> None:
    """Resolve every backbone the cells need once, here: a missing one is pre-trained now, not in every cell."""
    from sfp_ray.methods import get_method
    from sfp_ray.pretrain import resolve_checkpoint

    done: set[str] = set()
    for job in jobs:
        for m in job.methods:
            rcfg = get_method(m).resolve(job.cfg)
            key = repr((rcfg.model, rcfg.pretrain, rcfg.data.root))
            if key not in done:
                resolve_checkpoint(rcfg, log_fn=say)
                done.add(key)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def project_grid(grid: Mapping[str, Sequence[Any]] | Sequence[str], config: ConfigLike = None, *,
                 overrides: Sequence[str] = (), methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Cost projection (:func:`~sfp_ray.projection.project`) of every cell: one row per cell x method.

    The swept keys come first as columns (named by the dotted key), after ``cell_id``.
    """
    from sfp_ray.projection import project

    base = to_config(config, overrides)
    grid = parse_grid(grid) if not isinstance(grid, Mapping) else dict(grid)
    cells = build_cells(grid, base)
    frames = []
    for cell in cells:
        try:
            df = project(cell.cfg, methods=methods)
        except SfpRayError as e:
            raise type(e)(f"--grid cell {cell.id}: {e}") from None
        head = pd.DataFrame([{"cell_id": cell.id, **{k: _column(v) for k, v in cell.values.items()}}] * len(df))
        frames.append(pd.concat([head, df.reset_index(drop=True)], axis=1))
    return pd.concat(frames, ignore_index=True)


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


__all__ = ["Cell", "CellJob", "CellOutput", "MARKER", "SweepResults", "build_cells", "build_tables", "cell_id",
           "check_datasets", "format_sweep", "method_error", "parse_grid", "project_grid", "run_cell",
           "run_cell_packed", "sweep", "write_plots"]
