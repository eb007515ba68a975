"""``sfp-ray devices calibrate --address ADDR``: measure a device class on a node of a Ray cluster.

Nodes that stand for a device class advertise the custom resource ``device:<class>``
(``cluster/``). The calibration (:func:`sfp_ray.calibration.calibrate`) runs as one Ray task
that asks for a sliver of that resource and ``threads`` CPUs, so Ray places it on such a
node; the result (a plain :class:`~sfp_ray.calibration.Calibration`) comes back to the
driver, which writes the catalogue file. A cluster without such a node is refused at once,
naming the class, instead of leaving the task pending.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ray

from sfp_ray.config import Config
from sfp_ray.devices import device_resource
from sfp_ray.errors import ClusterError, SfpRayError, first_line
from sfp_ray.executors.ray.runtime import cluster_nodes, start_ray, stop_ray

#: Amount of the node's ``device:<class>`` resource the task asks for (any node offering it qualifies).
SLIVER = 0.001


@ray.remote(max_retries=0)
def _calibrate_task(cfg: Config, kwargs: dict[str, Any]) -> Any:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see sfp_ray/cli/commands.py)
    from sfp_ray.calibration import calibrate

    return calibrate(cfg, **kwargs)


def calibrate_on_cluster(cfg: Config, *, address: str, name: str, threads: int = 1, repeats: int = 7,
                         batch_sizes: Sequence[int] | None = None, timer: str = "wall",
                         say: Callable[[str], None] | None = None) -> Any:
    """Calibrate device class ``name`` on a node of the cluster at ``address`` that offers ``device:<name>``.

    Raises:
        ClusterError: no alive node offers ``device:<name>`` with ``threads`` CPUs, or the task failed.
    """
    started = start_ray(cfg.ray, address)
    try:
        res = device_resource(name)
        nodes = [n for n in cluster_nodes() if float(n.get(res, 0.0)) > 0]
        if not nodes:
            raise ClusterError(f"--address {address}: no node of the cluster offers the resource {res!r}; start one "
                               f"for this class (cluster/README.md: --resources '{{\"{res}\": 1}}') or calibrate "
                               "on the device itself without --address")
        if not any(float(n.get("CPU", 0.0)) >= threads for n in nodes):
            raise ClusterError(f"--threads {threads}: no node offering {res!r} has that many CPUs (largest: "
                               f"{max(float(n.get('CPU', 0.0)) for n in nodes):g})")
        if say is not None:
            say(f"devices calibrate: measuring {name!r} on a node offering {res!r} ({len(nodes)} such node(s))")
        ref = _calibrate_task.options(num_cpus=threads, resources={res: SLIVER}).remote(
            cfg, {"name": name, "threads": threads, "repeats": repeats, "batch_sizes": batch_sizes, "timer": timer})
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, SfpRayError):
                raise cause from None
            raise ClusterError(f"devices calibrate on the cluster failed: {first_line(cause)}") from None
    finally:
        if started:
            stop_ray()


__all__ = ["calibrate_on_cluster"]
