"""The Ray runtime of sfp-ray: the only package (besides the CLI) that imports Ray.

* :mod:`.runtime`: starting a private local Ray or joining a cluster; the fit check;
* :mod:`.pool`: which actors a run gets, sized from the cluster with no knobs;
* :mod:`.actors`: thin ``@ray.remote`` shells around the plain roles (client, server);
* :mod:`.aggregator`: the aggregator actor (numpy only: its process never imports torch);
* :mod:`.limits`: what an actor enforces of its device profile, and observes;
* :mod:`.executor`: :class:`RayExecutor`, the executor verbs on top of a pool.

Names are imported lazily, so that a worker process unpickling the aggregator actor
imports this package without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RayExecutor": "executor",
    "ActorPool": "pool",
    "PoolPlan": "pool",
    "plan_pool": "pool",
    "plan_slots": "pool",
    "route": "pool",
    "check_fit": "runtime",
    "cluster_nodes": "runtime",
    "parse_address": "runtime",
    "ray_address_file": "runtime",
    "resolve_address": "runtime",
    "start_ray": "runtime",
    "stop_ray": "runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sfp_ray.executors.ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
