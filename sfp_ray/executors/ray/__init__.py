"""The Ray runtime of sfp-ray: the only package that imports Ray.

* :mod:`.runtime`: starting a private local Ray or joining a cluster; the fit check;
* :mod:`.planning`: which actors a run gets, sized from the cluster with no knobs;
* :mod:`.pool`: :class:`ActorPool`, the planned actors started, and kept whole when one dies or a node is lost;
* :mod:`.nodes`: the cluster's alive nodes, and where a slot can start again when its node is lost;
* :mod:`.lifecycle`: an actor seen from the driver: waiting until it started, whether it answers, killing it;
* :mod:`.actors`: thin ``@ray.remote`` shells around the plain roles (client, server);
* :mod:`.aggregator`: the aggregator actor (numpy only: its process never imports torch);
* :mod:`.limits`: what an actor enforces of its device profile, and observes;
* :mod:`.executor`: :class:`RayExecutor`, the executor verbs on top of a pool.

Names are imported lazily, so that a worker process unpickling the aggregator actor
imports this package without torch.
"""

from __future__ import annotations

from sfp_ray.lazy import lazy_exports

_EXPORTS = {
    ".executor": ("RayExecutor",),
    ".planning": ("PoolPlan", "plan_pool", "plan_slots", "route"),
    ".pool": ("ActorPool",),
    ".runtime": ("check_fit", "cluster_nodes", "parse_address", "ray_address_file", "resolve_address", "start_ray",
                 "stop_ray"),
}

__all__ = sorted(n for names in _EXPORTS.values() for n in names)
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
