"""The Ray runtime of sfp-ray: the only package (besides the CLI) that imports Ray.

* :mod:`.runtime`: starting a private local Ray or joining a cluster; the fit check;
* :mod:`.pool`: which actors a run gets, sized from the cluster with no knobs;
* :mod:`.actors`: thin ``@ray.remote`` shells around the plain roles;
* :mod:`.limits`: what an actor enforces of its device profile, and observes;
* :mod:`.executor`: :class:`RayExecutor`, the executor verbs on top of a pool.
"""

from sfp_ray.executors.ray.executor import RayExecutor
from sfp_ray.executors.ray.pool import ActorPool, PoolPlan, plan_pool, plan_slots, route
from sfp_ray.executors.ray.runtime import check_fit, cluster_nodes, parse_address, start_ray, stop_ray

__all__ = ["ActorPool", "PoolPlan", "RayExecutor", "check_fit", "cluster_nodes", "parse_address", "plan_pool",
           "plan_slots", "route", "start_ray", "stop_ray"]
