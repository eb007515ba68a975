"""One cell of a sweep: its job, running it (here or as a Ray task's body), and the marker that says it finished.

Every cell runs :func:`~sfp_ray.api.run_methods` once (the methods valid on it, all seeds, the
serial executor) into its own regular run folder, ``OUT/cells/<cell-id>/``, and
:data:`MARKER` (``sweep-cell.json``) is written there last. A cell is finished
(:func:`finished`) when its marker exists and records the same configuration (the ``ray`` and
``project`` sections aside: they do not change what a cell computes), methods and seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfp_ray.api import run_methods
from sfp_ray.config import Config, to_dict
from sfp_ray.sweeps.grid import Cell

#: Written into a cell's folder after its report is complete: the cell is finished.
MARKER = "sweep-cell.json"


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

