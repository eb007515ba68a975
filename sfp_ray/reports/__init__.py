"""Reports: a sink that turns typed records into pandas DataFrames, files and plots.

One idea a module (each imports the others directly, never through this package):

- :mod:`sfp_ray.reports.sink`: the sink that writes a run folder's files (:class:`ReportSink`,
  the contract of every file it writes, and the summary it writes at the end of a run);
- :mod:`sfp_ray.reports.summaries`: the figures of each run and of each method across seeds,
  and the terminal table of them (:func:`format_summary`);
- :mod:`sfp_ray.reports.plots`: the plots (:func:`write_plots`, :func:`plot_timeline`);
- :mod:`sfp_ray.reports.rebuild`: reading a run folder back (:func:`load_run`) and rebuilding
  its summary and plots (:func:`rebuild`, ``sfp-ray report RUN_DIR``).

Every file and column of a run folder, with units: ``docs/reports.md``. This package
re-exports every public name of its modules (those used as ``sfp_ray.reports.NAME``).
"""

from __future__ import annotations

from sfp_ray.reports.plots import PHASE_COLOURS, SERVER_COLOUR, STATUS_MARKS, log_axis, plot_timeline, write_plots
from sfp_ray.reports.rebuild import COST_KEY_COLUMNS, ROUND_KEY_COLUMNS, load_run, rebuild
from sfp_ray.reports.sink import COST_COLUMNS, ROUND_COLUMNS, ReportSink, library_versions, write_summary
from sfp_ray.reports.summaries import COST_SUMMARY_COLUMNS, format_summary, summarize, summarize_by_seed

#: The public names of the modules, as they were before the package was split (``sfp_ray.reports.NAME``).
__all__ = ["COST_COLUMNS", "COST_KEY_COLUMNS", "COST_SUMMARY_COLUMNS", "PHASE_COLOURS", "ROUND_COLUMNS",
           "ROUND_KEY_COLUMNS", "SERVER_COLOUR", "STATUS_MARKS", "ReportSink", "format_summary", "library_versions",
           "load_run", "log_axis", "plot_timeline", "rebuild", "summarize", "summarize_by_seed", "write_plots",
           "write_summary"]
