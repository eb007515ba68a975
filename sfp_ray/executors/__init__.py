"""Executors: where a run's clients, aggregation and evaluation execute.

:mod:`~sfp_ray.executors.base` defines the interface, :mod:`~sfp_ray.executors.serial` the
in-process reference, and :mod:`sfp_ray.executors.ray` the Ray runtime (the only package,
besides the CLI, that imports Ray).
"""
