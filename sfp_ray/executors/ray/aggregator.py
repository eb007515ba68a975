"""The aggregator actor: FedAvg of client states in the object store, without torch.

It averages numpy arrays (:func:`sfp_ray.aggregation.average_parts`), so its process imports
numpy and Ray only: no torch, no timm. That saves the ~0.7 GB and the seconds of imports
that every torch actor costs (``benchmarks/results/ray_overhead.md``); a test checks that
the module stays free of torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray

from sfp_ray.aggregation import average_parts
from sfp_ray.executors.ray.procmem import process_memory_mb
from sfp_ray.packing import Packed, pack, unpack


@ray.remote
class AggregatorActor:
    """Sample-count-weighted FedAvg of client states that arrive as object refs.

    Pass the states' object refs as *top-level* arguments: Ray then resolves them here,
    zero-copy from the object store, and they never pass through the driver.
    """

    @ray.method(num_returns=3)
    def aggregate(self, weights: Sequence[float], client_ids: Sequence[int], with_server: bool, with_previous: bool,
                  *states: Packed | Mapping[str, np.ndarray]) -> tuple[Packed, Packed | None, dict[str, Any]]:
        """``(averaged client part, averaged server part or None, {"flops": {part: flops}, "wall_s"})``.

        The parts come back packed (:mod:`sfp_ray.packing`: one buffer per dtype, cheap to put
        into the object store); ``states`` may be packed or plain name -> array mappings.

        ``states`` holds the client parts, then (``with_server``) the server parts, in the
        order of ``client_ids``, then (``with_previous``) the previous global client part,
        whose names no client holds keep their values (per-device cuts).
        """
        t0 = time.perf_counter()
        n = len(client_ids)
        views = [unpack(s) for s in states]  # read-only views into the object store; the average only reads them
        previous = views[-1] if with_previous else None
        server_states = views[n:2 * n] if with_server else None
        client, server, flops = average_parts(weights, client_ids, views[:n], server_states, previous)
        out = pack(client), (pack(server) if server is not None else None)
        return *out, {"flops": flops, "wall_s": time.perf_counter() - t0}

    def ready(self) -> dict[str, Any]:
        """Where it runs and its memory (a resources.csv row)."""
        ctx = ray.get_runtime_context()
        return {"role": "aggregator", "slot": -1, **process_memory_mb(), "node_id": ctx.get_node_id(),
                "actor_id": ctx.get_actor_id() or "", "pid": os.getpid()}

    def resources(self) -> dict[str, Any]:
        """The same as :meth:`ready`, now."""
        return self.ready()

    def modules(self) -> list[str]:
        """Names of the modules loaded in this process (tests check that torch is not among them)."""
        import sys

        return sorted(sys.modules)


__all__ = ["AggregatorActor"]
