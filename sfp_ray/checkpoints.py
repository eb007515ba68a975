"""Checkpoints: what ``--resume`` continues an interrupted run from.

A run folder holds ``checkpoint/run.yaml`` (written before the first round: the methods,
seeds, executor and the configuration of the whole invocation, and the address of the Ray
cluster it runs on, which a resume joins again) and, after every finished
round of a (method, seed) run, ``checkpoint/<method>-seed<seed>.pt`` with everything the
next round depends on:

* the global state: the client part and, when the server trains the body, the body part;
* every client's persistent state (``client_states``: the kept EL2N indices and the round
  they were chosen);
* the index of the last finished round, the running totals of ``rounds.csv`` (bytes,
  FLOPs, wall and simulated seconds), the run id and the run's resolved configuration.

No random-number state is needed: cohorts come from ``(seed, round)`` and each client's
training from ``(seed, round, client_id)`` (:mod:`sfp_ray.orchestrator`), so a resumed
run draws what an uninterrupted one would.

Files are replaced atomically (written to a temporary file, then ``os.replace``), and the
report rows of a round are flushed *before* its checkpoint: a driver killed at any moment
leaves the last finished round's checkpoint and at most the rows of the round in progress,
which a resume drops and runs again (:meth:`sfp_ray.reports.ReportSink.resume`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from sfp_ray.config import Config, build_config, to_dict
from sfp_ray.errors import ConfigError, first_line

#: Version of the checkpoint and plan formats.
FORMAT = 1
#: The folder of a run folder that holds the checkpoints.
FOLDER = "checkpoint"
#: The plan of the invocation, in :data:`FOLDER`.
PLAN = "run.yaml"

__all__ = ["FOLDER", "FORMAT", "PLAN", "Plan", "checkpoint_path", "clear", "load_run_state", "read_plan",
           "save_run_state", "write_plan"]


def checkpoint_path(out: str | os.PathLike, method: str, seed: int) -> Path:
    """``<out>/checkpoint/<method>-seed<seed>.pt``."""
    return Path(out) / FOLDER / f"{method}-seed{seed}.pt"


def _replace_atomically(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_run_state(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically (a reader sees the previous file or this one, never a part)."""
    _replace_atomically(Path(path), lambda tmp: torch.save({"format": FORMAT, **ckpt}, tmp))


def load_run_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """A checkpoint written by :func:`save_run_state`; None when there is none.

    Checkpoints hold numpy arrays (client states) besides tensors, so they are unpickled in
    full: load only files of your own runs.
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        first = first_line(e, typed=True)
        raise ConfigError(f"--resume: cannot read the checkpoint {p} ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"--resume: {p} is not an sfp-ray checkpoint of format {FORMAT}")
    return ckpt


@dataclass(frozen=True)
class Plan:
    """What an invocation runs: every method once per seed, on one executor, with one configuration."""

    methods: list[str]
    seeds: list[int]
    executor: str
    config: Config
    #: the Ray cluster the run used (``HOST:PORT``, or ``local`` for a private instance); None: not recorded
    address: str | None = None


def write_plan(out: str | os.PathLike, methods: Sequence[str], seeds: Sequence[int], executor: str,
               cfg: Config, address: str | None = None) -> None:
    """Write ``checkpoint/run.yaml`` (atomically); ``address``: the Ray cluster the run uses, if any."""
    plan: dict[str, Any] = {"format": FORMAT, "methods": list(methods), "seeds": [int(s) for s in seeds],
                            "executor": executor}
    if address is not None:
        plan["address"] = str(address)
    text = yaml.safe_dump({**plan, "config": to_dict(cfg)}, sort_keys=False)
    _replace_atomically(Path(out) / FOLDER / PLAN, lambda tmp: tmp.write_text(text))


def read_plan(out: str | os.PathLike) -> Plan:
    """The plan of a run folder; :class:`~sfp_ray.errors.ConfigError` (one line) when it is not a run folder."""
    d = Path(out)
    if not d.is_dir():
        raise ConfigError(f"--resume: not a folder: {d}")
    p = d / FOLDER / PLAN
    if not p.is_file():
        raise ConfigError(f"--resume: {d} is not a resumable sfp-ray run folder (it has no {FOLDER}/{PLAN})")
    try:
        data = yaml.safe_load(p.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an sfp-ray run plan of format {FORMAT}")
        cfg = build_config(data["config"])
        address = data.get("address")
        if address is not None and not isinstance(address, str):
            raise ValueError(f"address: expected HOST:PORT or local, got {address!r}")
        return Plan([str(m) for m in data["methods"]], [int(s) for s in data["seeds"]], str(data["executor"]), cfg,
                    address)
    except ConfigError as e:
        raise ConfigError(f"--resume: {p}: {e}") from None
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"--resume: {p} cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from None


def clear(out: str | os.PathLike) -> None:
    """Remove the checkpoints and plan of an earlier invocation in ``out`` (a new run starts afresh)."""
    folder = Path(out) / FOLDER
    if not folder.is_dir():
        return
    for p in list(folder.glob("*.pt")) + list(folder.glob("*.tmp")) + [folder / PLAN]:
        if p.is_file():
            p.unlink()
