"""Command-line interface: the `sfp-ray` command, a thin layer over the Python API (Ray is reached through it).

::

    sfp-ray run      [--config FILE] [--set KEY=VALUE ...] [--method NAME] [--seeds 0,1,2]
                     [--executor ray|serial] [--address ADDR] [--threads N] [--device auto|cpu|cuda]
                     [--out DIR | --resume RUN_DIR]
    sfp-ray compare  [--config FILE] [--set KEY=VALUE ...] --methods sfprompt,fl_full[,...] [--seeds ...]
                     [--executor ray|serial] [--address ADDR] [--threads N] [--device auto|cpu|cuda]
                     [--out DIR | --resume RUN_DIR]
    sfp-ray sweep    --grid KEY=V1,V2,... [--grid ...] [--config FILE] [--set KEY=VALUE ...]
                     [--methods sfprompt,fl_full] [--seeds 0,1,2] [--executor ray|serial] [--address ADDR]
                     [--cell-cpus N] [--no-share] [--out DIR]
    sfp-ray pretrain [--config FILE] [--set KEY=VALUE ...] [--out FILE] [--force]
    sfp-ray project  [--model NAME] [--config FILE] [--set KEY=VALUE ...] [--grid KEY=V1,V2 ...] [--methods ...]
                     [--out DIR]
    sfp-ray report   RUN_DIR
    sfp-ray methods | devices [--catalog FILE] | datasets
    sfp-ray devices calibrate [--config FILE] [--set KEY=VALUE ...] [--name NAME] [--threads N] [--out FILE]
                     [--repeats N] [--batch-sizes B1,B2] [--timer wall|cpu] [--address ADDR]

The package's modules: :mod:`~sfp_ray.cli.parser` (the argument parser) and
:mod:`~sfp_ray.cli.commands` (the commands and :func:`main`). ``--debug`` and ``--quiet`` go
before or after the subcommand; exit codes: :mod:`sfp_ray.cli.commands`.
"""

from __future__ import annotations

from sfp_ray.cli.commands import main
from sfp_ray.cli.parser import build_parser
from sfp_ray.errors import ClusterError, ConfigError, DataError, ModelError

__all__ = ["main", "build_parser", "ClusterError", "ConfigError", "DataError", "ModelError"]
