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

One idea a module:

* :mod:`sfp_ray.sweeps.grid`: the grid, its cells and their validated configurations, the runs cells share;
* :mod:`sfp_ray.sweeps.cells`: one cell: its job, running it (here or as a Ray task), its finished marker;
* :mod:`sfp_ray.sweeps.tables`: ``sweep.csv``, ``sweep_summary.csv``, the terminal table and the plots;
* :mod:`sfp_ray.sweeps.run`: :func:`sweep` itself (checks, resuming, executors) and :func:`project_grid`.
"""

from __future__ import annotations

# ``NAME as NAME``: public names of the former single module kept importable here, outside __all__
from sfp_ray.sweeps.cells import MARKER, CellJob, CellOutput, run_cell, run_cell_packed
from sfp_ray.sweeps.cells import NOT_IN_RESULTS as NOT_IN_RESULTS
from sfp_ray.sweeps.cells import finished as finished
from sfp_ray.sweeps.grid import RESERVED as RESERVED
from sfp_ray.sweeps.grid import Cell, build_cells, cell_id, check_datasets, method_error, parse_grid
from sfp_ray.sweeps.grid import check_cells as check_cells
from sfp_ray.sweeps.grid import get_dotted as get_dotted
from sfp_ray.sweeps.grid import share_runs as share_runs
from sfp_ray.sweeps.grid import split_values as split_values
from sfp_ray.sweeps.run import DEFAULT_OUT as DEFAULT_OUT
from sfp_ray.sweeps.run import project_grid, sweep
from sfp_ray.sweeps.tables import SweepResults, build_tables, format_sweep, write_plots

__all__ = ["Cell", "CellJob", "CellOutput", "MARKER", "SweepResults", "build_cells", "build_tables", "cell_id",
           "check_datasets", "format_sweep", "method_error", "parse_grid", "project_grid", "run_cell",
           "run_cell_packed", "sweep", "write_plots"]
