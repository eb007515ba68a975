"""Running a sweep (``sfp-ray sweep``): check everything, skip the finished cells, run the others, gather them.

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

:func:`project_grid` projects the costs of every cell instead, without running anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sfp_ray.api import ConfigLike, check_out_dir, seed_list, string_list, to_config
from sfp_ray.config import Config, RayConfig, dump_config
from sfp_ray.errors import ConfigError, SfpRayError, first_line
from sfp_ray.reports.sink import write_csv
from sfp_ray.sweeps.cells import CellJob, CellOutput, _unpack, _write_marker, finished, run_cell, run_cell_packed
from sfp_ray.sweeps.grid import (
    Cell,
    _column,
    _sharing_note,
    build_cells,
    check_cells,
    method_error,
    parse_grid,
    share_runs,
)
from sfp_ray.sweeps.tables import SweepResults, _cell_frames, build_tables, write_plots

log = logging.getLogger(__name__)

#: Default output folder of ``sfp-ray sweep`` (a fixed name, so that running it again resumes).
DEFAULT_OUT = Path("runs") / "sweep"


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
    say = echo or (lambda _msg: None)
    base, cells, methods, seeds = _checked(grid, methods, config, overrides, seeds, executor)
    keys = list(cells[0].values)
    folder = Path(out) if out is not None else DEFAULT_OUT
    if executor == "ray":  # the cluster must answer before anything is written
        from sfp_ray.executors.ray.runtime import resolve_address

        resolve_address(address if address is not None else base.ray.address)
    check_out_dir(folder, create=False)

    invalid = _invalid_pairs(cells, methods, say)
    shared = share_runs(cells, methods, invalid) if share else {}
    say(_sharing_note(cells, methods, seeds, invalid, shared))

    check_out_dir(folder)
    (folder / "cells").mkdir(exist_ok=True)
    jobs = {c.id: CellJob(c.id, c.cfg, tuple(m for m in methods if (c.id, m) not in invalid
                                             and (c.id, m) not in shared), tuple(seeds), plots)
            for c in cells}
    grid_values = _swept_values(cells)
    _write_record(folder, base, grid_values, cells, methods, seeds, executor, shared)

    frames, skipped, todo = _finished_cells(folder, cells, jobs, say)
    _resolve_backbones([jobs[c.id] for c in todo], say)
    progress = _Progress(folder, cells, methods, seeds, jobs, frames, invalid, shared, len(todo), say)
    _run_cells(todo, progress, executor=executor, cfg_ray=base.ray, address=address, cell_cpus=cell_cpus)

    sw, sm = progress.write_tables()
    paths = write_plots(folder, sm, keys, methods) if plots else []
    return SweepResults(folder, sw, sm, grid_values, progress.ran, skipped, progress.failed, invalid, paths, shared)


def _checked(grid: Mapping[str, Sequence[Any]] | Sequence[str], methods: Sequence[str], config: ConfigLike,
             overrides: Sequence[str], seeds: Sequence[int] | None,
             executor: str) -> tuple[Config, list[Cell], list[str], list[int]]:
    """The request checked before anything runs: the base configuration, the validated cells, the methods, the seeds."""
    from sfp_ray.methods.catalog import method_info

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
    return base, cells, methods, seeds


def _invalid_pairs(cells: Sequence[Cell], methods: Sequence[str],
                   say: Callable[[str], None]) -> dict[tuple[str, str], str]:
    """``(cell, method) -> why`` for the pairs that cannot run, each cell's said in one notice; none valid raises."""
    invalid = {(c.id, m): why for c in cells for m in methods if (why := method_error(c.cfg, m)) is not None}
    if len(invalid) == len(cells) * len(methods):
        (cid, m), why = next(iter(invalid.items()))
        raise ConfigError(f"no method can run on any cell of the grid; e.g. {m} on {cid}: {why}")
    grouped: dict[tuple[str, str], list[str]] = {}
    for (cid, m), why in invalid.items():
        grouped.setdefault((cid, why), []).append(m)
    for (cid, why), ms in grouped.items():
        say(f"notice: cell {cid}: skipping {', '.join(ms)}, which cannot run there: {why}")
    return invalid


def _swept_values(cells: Sequence[Cell]) -> dict[str, list[Any]]:
    """Every swept key's values, in the order the cells first take them."""
    keys = list(cells[0].values)
    grid_values: dict[str, list[Any]] = {k: [] for k in keys}
    for c in cells:
        for k in keys:
            if c.values[k] not in grid_values[k]:
                grid_values[k].append(c.values[k])
    return grid_values


def _write_record(folder: Path, base: Config, grid_values: Mapping[str, Sequence[Any]], cells: Sequence[Cell],
                  methods: Sequence[str], seeds: Sequence[int], executor: str,
                  shared: Mapping[tuple[str, str], str]) -> None:
    """``OUT/sweep.yaml``: the grid, methods, seeds, cells and shared runs, then the base configuration."""
    record = {"grid": {k: [_column(v) for v in vs] for k, vs in grid_values.items()}, "methods": methods,
              "seeds": seeds, "executor": executor, "cells": [c.id for c in cells],
              "shared_runs": [{"cell": cid, "method": m, "run_in": owner} for (cid, m), owner in shared.items()]}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(record, sort_keys=False)
                                       + "# the base configuration of every cell\n" + dump_config(base))


def _finished_cells(folder: Path, cells: Sequence[Cell], jobs: Mapping[str, CellJob],
                    say: Callable[[str], None]) -> tuple[dict[str, Any], list[str], list[Cell]]:
    """The runs of the cells finished earlier, their ids, and the cells still to run (those with a valid method)."""
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
    return frames, skipped, todo


@dataclass
class _Progress:
    """The cells' runs as they finish, the cells run and failed; both tables are rewritten as each cell ends."""

    folder: Path
    cells: Sequence[Cell]
    methods: Sequence[str]
    seeds: Sequence[int]
    jobs: Mapping[str, CellJob]
    frames: dict[str, Any]
    invalid: Mapping[tuple[str, str], str]
    shared: Mapping[tuple[str, str], str]
    todo: int
    say: Callable[[str], None]
    failed: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    notices_seen: set[str] = field(default_factory=set)
    t0: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.by_id = {c.id: c for c in self.cells}

    def write_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        sw, sm = build_tables(self.cells, self.methods, self.seeds, self.frames, self.invalid, self.failed,
                              self.shared)
        write_csv(sw, self.folder / "sweep.csv")
        write_csv(sm, self.folder / "sweep_summary.csv")
        return sw, sm

    def done(self, cid: str, res: CellOutput | None, error: str | None) -> None:
        """A cell ended (``res``) or raised (``error``): record it, say so, rewrite the tables."""
        where = self.folder / "cells" / cid
        n = len(self.ran) + len(self.failed) + 1
        if error is not None:
            self.failed[cid] = error
            self.say(f"[{n}/{self.todo}] cell {cid}: failed: {error}")
        else:
            assert res is not None
            if res.files is not None:
                _unpack(where, res.files)
            _write_marker(where, self.jobs[cid], self.by_id[cid], res)
            self.frames[cid] = _cell_frames(where)
            self.ran.append(cid)
            for note in res.notices:
                if note not in self.notices_seen:
                    self.notices_seen.add(note)
                    self.say(f"notice: {note}")
            self.say(f"[{n}/{self.todo}] cell {cid}: done in {res.finished - res.started:.0f} s "
                     f"({time.perf_counter() - self.t0:.0f} s since the sweep started)")
        self.write_tables()


def _run_cells(todo: Sequence[Cell], progress: _Progress, *, executor: str, cfg_ray: RayConfig, address: str | None,
               cell_cpus: int | None) -> None:
    """Clear the unfinished cells' folders and run the cells, one after another here or as Ray tasks."""
    folder, jobs, say = progress.folder, progress.jobs, progress.say
    for cell in todo:  # an unfinished folder holds a partial or stale report
        where = folder / "cells" / cell.id
        if where.exists():
            shutil.rmtree(where)
    if todo:
        n_runs = sum(len(jobs[c.id].methods) for c in todo) * len(progress.seeds)
        say(f"running {len(todo)} cells ({n_runs} runs) with the {executor} executor; cells in {folder / 'cells'}")
    if executor == "serial":
        for cell in todo:
            where = folder / "cells" / cell.id
            try:
                res = run_cell(jobs[cell.id], where)
            except Exception as e:  # a failed cell does not stop the others; KeyboardInterrupt does
                log.debug("cell %s failed", cell.id, exc_info=True)
                progress.done(cell.id, None, first_line(e, typed=True))
                continue
            progress.done(cell.id, res, None)
    elif todo:
        from sfp_ray.executors.ray.sweep import run_tasks

        run_tasks(run_cell_packed, [jobs[c.id] for c in todo],
                  lambda i, res, err: progress.done(todo[i].id, res, err),
                  cfg_ray=cfg_ray, address=address, cpus_per_task=cell_cpus, say=say)


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
