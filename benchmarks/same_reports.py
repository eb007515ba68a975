"""Whether two runs' reports agree row for row, timing columns aside (a check for changes meant to change no result).

Compares ``rounds.csv``, ``summary.csv`` and ``clients.csv`` (and any other CSV named with
``--files``) of two report folders, e.g. the demo's before and after a refactoring::

    sfp-ray compare --methods sfprompt,fl_full --seeds 0,1,2 --out runs/before   # at the old commit
    sfp-ray compare --methods sfprompt,fl_full --seeds 0,1,2 --out runs/after    # at the new one
    python benchmarks/same_reports.py runs/before runs/after

Columns measured on the clock of the machine (wall and CPU seconds, queueing, memory, run
ids and timestamps) differ between any two runs and are left out; every other column must
be equal (floats to 1e-12 relative, as CSV round-trips them). Exits 0 when every file
agrees, 1 otherwise, printing the first differing rows of each file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

FILES = ("rounds.csv", "summary.csv", "clients.csv")
#: columns that measure the machine, not the method
TIMING = re.compile(r"wall|cpu_s|queue|elapsed|run_id|rss|memory|_mib|_gib|_mb$|pid|host|node_id|actor_id")


def compare(a: Path, b: Path) -> list[str]:
    """The differences between two report files (empty when they agree)."""
    x, y = pd.read_csv(a), pd.read_csv(b)
    problems = []
    if list(x.columns) != list(y.columns):
        problems.append(f"columns differ: only in {a}: {sorted(set(x.columns) - set(y.columns))}; "
                        f"only in {b}: {sorted(set(y.columns) - set(x.columns))}")
    if len(x) != len(y):
        problems.append(f"{len(x)} rows vs {len(y)}")
        return problems
    for col in [c for c in x.columns if c in y.columns and not TIMING.search(c)]:
        u, v = x[col], y[col]
        if pd.api.types.is_float_dtype(u) and pd.api.types.is_float_dtype(v):
            same = np.isclose(u, v, rtol=1e-12, atol=0.0, equal_nan=True)
        else:
            same = ((u.astype(str) == v.astype(str)) | (u.isna() & v.isna())).to_numpy()
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"column {col!r}: {int((~same).sum())} rows differ, first row {i}: {u.iloc[i]!r} vs "
                            f"{v.iloc[i]!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="a report folder (sfp-ray run/compare --out)")
    p.add_argument("after", type=Path, help="the report folder to compare with it")
    p.add_argument("--files", default=",".join(FILES), help=f"comma-separated CSV names (default: {','.join(FILES)})")
    args = p.parse_args(argv)
    bad = 0
    for name in [f for f in args.files.split(",") if f]:
        a, b = args.before / name, args.after / name
        missing = [str(f) for f in (a, b) if not f.is_file()]
        if missing:
            print(f"{name}: missing {', '.join(missing)}")
            bad += 1
            continue
        problems = compare(a, b)
        rows = len(pd.read_csv(a))
        print(f"{name}: {rows} rows, " + ("equal (timing columns aside)" if not problems else "DIFFERENT"))
        for line in problems:
            print(f"  {line}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
