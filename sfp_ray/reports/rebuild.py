"""Rebuilding a run folder's reports: read its tables back, write its summary and plots again.

``sfp-ray report RUN_DIR`` calls :func:`rebuild`; :func:`load_run` reads ``costs``
(parquet, else CSV) and ``rounds.csv``, and a damaged or foreign file is a one-line
:class:`~sfp_ray.errors.DataError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sfp_ray.errors import DataError
from sfp_ray.reports.sink import write_summary


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
