"""Sweep cells as Ray tasks on one cluster (``sfp-ray sweep --executor ray``).

Each cell of a sweep is one Ray task that runs the cell's methods and seeds with the
serial executor inside the task (:func:`sfp_ray.sweeps.run_cell_packed`). Ray's own task
scheduling places them: every task asks for ``num_cpus`` CPUs, so Ray runs as many at
once as the cluster has CPUs for and queues the rest; nothing here schedules by hand.

Sizing (:func:`plan_task_cpus`): unless given, a cell gets the cluster's CPUs shared out
among the cells (whole CPUs, at least 1, at most the largest node's), and the task's torch
uses as many threads. The serial executor computes on the CPU, so tasks ask for no GPU.

One Ray instance serves the whole grid: :func:`run_tasks` starts (or joins) it once with
:func:`~sfp_ray.executors.ray.runtime.start_ray` and stops what it started at the end.
Results come back as tasks finish; a task that raises is reported with its error and the
other tasks go on. Tasks are not retried (``max_retries=0``): a sweep started again runs
the cells that did not finish.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from sfp_ray.config import RayConfig
from sfp_ray.errors import ClusterError
from sfp_ray.executors.ray.runtime import cluster_nodes, start_ray, stop_ray

log = logging.getLogger(__name__)

__all__ = ["plan_task_cpus", "run_tasks"]


def plan_task_cpus(n_tasks: int, nodes: Sequence[Mapping[str, float]], requested: float | None = None) -> int:
    """Whole CPUs per task: ``requested``, or the cluster's CPUs shared out among ``n_tasks`` tasks.

    Example (a 2-node cluster of 8 + 4 CPUs):
        >>> nodes = [{"CPU": 8.0}, {"CPU": 4.0}]
        >>> plan_task_cpus(3, nodes), plan_task_cpus(27, nodes), plan_task_cpus(1, nodes), plan_task_cpus(2, nodes, 4)
        (4, 1, 8, 4)
    """
    cpus = [float(n.get("CPU", 0.0)) for n in nodes]
    largest = int(max(cpus, default=0.0))
    if largest < 1:
        raise ClusterError("the Ray cluster has no node with a whole CPU to run a sweep cell on")
    if requested is not None:
        if requested < 1 or int(requested) != requested:
            raise ClusterError(f"--cell-cpus {requested}: give a whole number of CPUs >= 1")
        if requested > largest:
            raise ClusterError(f"--cell-cpus {int(requested)}: the largest node of the cluster has {largest} CPUs")
        return int(requested)
    share = math.floor(sum(int(c) for c in cpus) / max(n_tasks, 1))
    return max(1, min(share, largest))


@ray.remote(max_retries=0)
def _task(fn: Callable[[Any], Any], job: Any, threads: int) -> Any:
    # idle OpenMP threads must sleep rather than spin (see sfp_ray/cli/commands.py); before torch is imported
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(threads)
    return fn(job)


def _error_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    text = str(err).strip()
    if isinstance(cause, BaseException) and text:
        return f"{type(err).__name__}: {text.splitlines()[0]}"
    return text.splitlines()[-1] if text else type(err).__name__


def run_tasks(fn: Callable[[Any], Any], jobs: Sequence[Any], on_done: Callable[[int, Any, str | None], None], *,
              cfg_ray: RayConfig, address: str | None = None, cpus_per_task: int | None = None,
              say: Callable[[str], None] | None = None) -> None:
    """Run ``fn(job)`` for every job as a Ray task on one cluster; call ``on_done`` as each finishes.

    Args:
        fn: a module-level function (Ray ships it to the workers by reference).
        jobs: the tasks' arguments.
        on_done: called in the driver, in completion order, with ``(job index, result, None)``
            or ``(job index, None, one-line error)``.
        cfg_ray: the ``ray`` section (sizes a private local instance; its ``address`` when
            ``address`` is None).
        address: ``local``, ``auto`` or ``HOST:PORT`` (see :func:`start_ray`).
        cpus_per_task: CPUs per task (default: :func:`plan_task_cpus`).
        say: one-line messages (the plan).

    Pending tasks are cancelled when the driver is interrupted.
    """
    started = start_ray(cfg_ray, address if address is not None else cfg_ray.address)
    refs: dict[Any, int] = {}
    try:
        nodes = cluster_nodes()
        cpus = plan_task_cpus(len(jobs), nodes, cpus_per_task)
        total = sum(int(float(n.get("CPU", 0.0))) for n in nodes)
        if say is not None:
            at_once = min(len(jobs), max(1, sum(int(float(n.get("CPU", 0.0))) // cpus for n in nodes)))
            say(f"Ray: {len(jobs)} cell tasks of {cpus} CPU each on {len(nodes)} node(s) with {total} CPUs: "
                f"up to {at_once} at once")
        refs = {_task.options(num_cpus=cpus).remote(fn, job, cpus): i for i, job in enumerate(jobs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ref = ready[0]
            i = refs.pop(ref)
            try:
                value = ray.get(ref)
            except Exception as e:  # a failed cell (RayTaskError, a crashed worker) does not stop the others
                log.debug("sweep task %d failed", i, exc_info=True)
                on_done(i, None, _error_line(e))
                continue
            on_done(i, value, None)
    finally:
        for ref in refs:  # still pending: interrupted
            try:
                ray.cancel(ref, force=True)
            except Exception:  # best effort while unwinding
                pass
        if started:
            stop_ray()
