"""The Ray executor: the same roles as the serial executor, run inside Ray actors.

A run uses an :class:`~sfp_ray.executors.ray.pool.ActorPool` (its own, or one shared by
several runs): device-slot client actors, a server actor when the method has a body on
the server, and an aggregator actor.

Data paths:

* the training and test arrays go into the object store once per dataset; each actor
  fetches them (zero-copy) when a run is set up on it, so a task carries only its client's
  row indices (:class:`~sfp_ray.roles.client.ClientTask`);
* a global state is a :class:`~sfp_ray.executors.ray.actors.RayState`: one object for
  the client part and, when the server trains the body, one for the body. A client actor
  fetches only the client part; the body part goes straight to the server actor when the
  executor opens the client's body copy;
* each client returns its new state as a separate object, and the trained body copy is
  closed into another; :meth:`RayExecutor.aggregate` hands those references to the
  aggregator as top-level arguments, so client states never pass through the driver.

Evaluation is split over all client actors (idle at that point of a round), each taking
a contiguous run of test batches; the per-batch figures are summed in order, so they equal
a single pass.

Ray must already be running (:func:`~sfp_ray.executors.ray.runtime.start_ray`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray

from sfp_ray.errors import ClusterError
from sfp_ray.executors.base import Aggregate, Executor, RunSpec, Started, State
from sfp_ray.executors.ray.actors import RayState, RunSetup
from sfp_ray.executors.ray.pool import ActorPool, route
from sfp_ray.roles.client import ClientOutput, ClientTask
from sfp_ray.roles.evaluation import EvalResult, combine, num_batches
from sfp_ray.tensors import numpy_state

log = logging.getLogger(__name__)

__all__ = ["RayExecutor"]


class RayExecutor(Executor):
    """Runs clients, the body server, aggregation and evaluation in Ray actors.

    Args:
        pool: actors to run on (shared by several runs); by default :meth:`start` plans and
            starts a pool for its run from the cluster's resources, and :meth:`close` ends it.
        ready_timeout_s: how long to wait for the actors to be placed and started.
    """

    name = "ray"

    def __init__(self, pool: ActorPool | None = None, *, ready_timeout_s: float = 300.0) -> None:
        self.pool = pool
        self._own_pool = pool is None
        self.ready_timeout_s = ready_timeout_s
        self.spec: RunSpec | None = None
        self.setup: RunSetup | None = None
        self.last_routing: dict[int, int] = {}

    # ------------------------------------------------------------------ set-up

    def start(self, spec: RunSpec) -> Started:
        if not ray.is_initialized():
            raise ClusterError("Ray is not running: call sfp_ray.executors.ray.start_ray first")
        if self.pool is None:
            self.pool = ActorPool.for_specs([spec], ready_timeout_s=self.ready_timeout_s)
        try:
            rows = self.pool.wait_ready()
        except BaseException:
            if self._own_pool:
                self.pool.close()
                self.pool = None
            raise
        self.spec = spec
        self.setup = self.pool.setup(spec)
        client, server = spec.initial_state()
        state = RayState(ray.put(numpy_state(client)), ray.put(numpy_state(server)) if server is not None else None)
        return Started(state, rows, list(self.pool.plan.notices))

    @property
    def slot_classes(self) -> list[str]:
        return list(self.pool.plan.slot_classes) if self.pool is not None else []

    # ------------------------------------------------------------------ rounds

    def run_clients(self, tasks: Sequence[ClientTask], state: State) -> list[ClientOutput]:
        spec, setup, pool = self.spec, self.setup, self.pool
        assert spec is not None and setup is not None and pool is not None, "start() first"
        if not isinstance(state, RayState):
            raise TypeError(f"the Ray executor holds its states in the object store, got {type(state).__name__}")
        ordered = sorted(tasks, key=lambda t: t.client_id)
        self.last_routing = route([(t.client_id, t.device.name) for t in ordered], pool.plan.slot_classes)
        server = setup.server
        trained = server is not None and state.server is not None
        if trained:  # each client's body copy must exist before its first request
            ray.get([server.open.remote(setup.key, t.client_id, t.round, state.server) for t in ordered])
        refs = [pool.slots[self.last_routing[t.client_id]].run.remote(setup.key, t, state) for t in ordered]
        metas: list[ClientOutput] = ray.get([m for _, m in refs])
        outputs = []
        for t, (state_ref, _), m in zip(ordered, refs, metas, strict=True):
            body_ref = server.close.remote(setup.key, t.client_id, t.round) if trained else None
            res = dict(m.resources, executor="ray", pooled=not pool.plan.per_client)
            outputs.append(dataclasses.replace(m, state=RayState(state_ref, body_ref), resources=res))
        return outputs

    def aggregate(self, outputs: Sequence[ClientOutput]) -> Aggregate:
        pool = self.pool
        assert pool is not None, "start() first"
        outs = sorted(outputs, key=lambda o: o.client_id)
        with_server = outs[0].state.server is not None
        refs = [o.state.client for o in outs] + ([o.state.server for o in outs] if with_server else [])
        client_ref, server_ref, info_ref = pool.aggregator.aggregate.remote(
            [o.num_samples for o in outs], [o.client_id for o in outs], with_server, *refs)
        info = ray.get(info_ref)
        return Aggregate(RayState(client_ref, server_ref if with_server else None), info["flops"], info["wall_s"])

    def evaluate(self, state: State) -> EvalResult:
        spec, setup, pool = self.spec, self.setup, self.pool
        assert spec is not None and setup is not None and pool is not None, "start() first"
        t0 = time.perf_counter()
        total = num_batches(len(spec.test), spec.cfg.train.eval_batch_size)
        shards = min(len(pool.slots), total)
        bounds = [round(i * total / shards) for i in range(shards + 1)] if shards else [0]
        refs = [pool.slots[i].evaluate.remote(setup.key, state, bounds[i], bounds[i + 1]) for i in range(shards)]
        results = [b for part in ray.get(refs) for b in part]
        return combine(results, len(spec.test), time.perf_counter() - t0)

    def resources(self) -> list[dict[str, Any]]:
        """One row per actor now (server first, then the slots): requested vs enforced vs observed."""
        assert self.pool is not None, "start() first"
        rows = ray.get([a.resources.remote() for a in self.pool.actors()])
        return [dict(r, label=lb, executor="ray") for r, lb in zip(rows, self.pool.labels, strict=True)]

    def close(self) -> None:
        """End this run on the pool (and the pool itself when this executor started it)."""
        if self.pool is not None:
            if self.setup is not None:
                self.pool.drop(self.setup.key)
            if self._own_pool:
                self.pool.close()
                self.pool = None
        self.setup = None
