"""The aggregator actor: FedAvg of client states in the object store, without torch.

It folds numpy arrays into running sums (:class:`sfp_ray.aggregation.PartSums`), so its
process imports numpy and Ray only: no torch, no timm. That saves the ~0.7 GB and the seconds of imports
that every torch actor costs (``benchmarks/results/ray_overhead.md``); a test checks that
the module stays free of torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray

from sfp_ray.aggregation import PartSums
from sfp_ray.executors.ray.procmem import process_memory_mb, sampler
from sfp_ray.packing import Packed, pack, unpack


@ray.remote
class AggregatorActor:
    """Sample-count-weighted FedAvg of client states, folded in as the clients finish.

    :meth:`fold` adds one client's state (passed as an object ref at the *top level* of
    the call, so Ray resolves it here, zero-copy from the object store, and it never passes
    through the driver) into the round's float64 running sums; the state is released as
    soon as the call returns. :meth:`finish` divides and returns the new global state.
    Memory is the sums, about twice one float32 state, whatever the number of clients.

    On a cluster of several nodes, each node's aggregator folds the states of that node's
    clients and hands its sums (:meth:`partial`) to one aggregator's :meth:`finish`, so one
    partial sum per node crosses the network instead of every client's state.
    """

    def __init__(self, memory: Mapping[str, float] | None = None) -> None:
        self.rounds: dict[str, PartSums] = {}
        self.seconds: dict[str, float] = {}
        self.memory = dict(memory or {})  # the estimate the pool asked Ray for
        sampler()  # the private-memory peak, set beside the estimate

    def fold(self, key: str, weight: float, client: Packed | Mapping[str, np.ndarray],
             server: Packed | Mapping[str, np.ndarray] | None = None) -> int:
        """Add one client's state parts to the sums of round ``key``; the number of states folded so far."""
        t0 = time.perf_counter()
        sums = self.rounds.setdefault(key, PartSums())
        sums.add(weight, unpack(client), unpack(server) if server is not None else None)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
        return sums.client.clients

    def partial(self, key: str) -> tuple[PartSums, float]:
        """The sums of round ``key`` folded here (handed over: this actor forgets them), and the seconds spent."""
        return self.rounds.pop(key, PartSums()), self.seconds.pop(key, 0.0)

    @ray.method(num_returns=3)
    def finish(self, key: str, previous: Packed | Mapping[str, np.ndarray] | None = None,
               *partials: tuple[PartSums, float]) -> tuple[Packed, Packed | None, dict[str, Any]]:
        """``(averaged client part, averaged server part or None, {"flops": {part: flops}, "wall_s"})``.

        The sums are those folded here plus ``partials`` (other nodes' :meth:`partial`).
        ``previous`` (the global client part) supplies the names no client holds
        (per-device cuts): they keep their values. The parts come back packed
        (:mod:`sfp_ray.packing`).
        """
        t0 = time.perf_counter()
        sums, seconds = self.partial(key)
        for part, spent in partials:
            sums.merge(part)
            seconds += spent
        client, server, flops = sums.finish(unpack(previous) if previous is not None else None, release=True)
        del sums
        out = pack(client), (pack(server) if server is not None else None)
        return *out, {"flops": flops, "wall_s": seconds + time.perf_counter() - t0}

    def discard(self, key: str) -> None:
        """Forget round ``key`` (it is started over)."""
        self.rounds.pop(key, None)
        self.seconds.pop(key, None)

    def ready(self) -> dict[str, Any]:
        """Where it runs and its memory (a resources.csv row)."""
        ctx = ray.get_runtime_context()
        return {"role": "aggregator", "slot": -1, **self.memory, **process_memory_mb(), **sampler().figures(),
                "node_id": ctx.get_node_id(),
                "actor_id": ctx.get_actor_id() or "", "pid": os.getpid()}

    def resources(self) -> dict[str, Any]:
        """The same as :meth:`ready`, now."""
        return self.ready()

    def modules(self) -> list[str]:
        """Names of the modules loaded in this process (tests check that torch is not among them)."""
        import sys

        return sorted(sys.modules)


__all__ = ["AggregatorActor"]
