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

Faults: a client whose task raises, whose actor dies, or whose state is not finite is
tried once more, on a slot of its class (its actor restarted by the pool when it died: in
pooled mode the clients queued behind it are retried too); clients that fail twice are
reported ``failed``. Before every round the pool follows the cluster's nodes
(:meth:`~sfp_ray.executors.ray.pool.ActorPool.check_nodes`); a client whose class has no
slot with an actor (its node was lost, ``ray.on_node_loss``) fails at once with the reason,
e.g. ``node lost: no node offers device:laptop``. When the server actor dies, the executor
restarts it and raises :class:`~sfp_ray.errors.ServerLost` so the orchestrator starts the
round over; client results that were held on a node that left before they were averaged
raise :class:`~sfp_ray.errors.RoundLost` alike. A dead aggregator, or a client actor lost
during evaluation, is restarted and the call repeated.

Ray must already be running (:func:`~sfp_ray.executors.ray.runtime.start_ray`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray

from sfp_ray.errors import ClusterError, RoundLost, ServerLost
from sfp_ray.executors.base import Aggregate, Executor, RunSpec, Started, State, failed_output, settle
from sfp_ray.executors.ray.actors import RayState, RunSetup
from sfp_ray.executors.ray.pool import ActorPool, route
from sfp_ray.faults import ATTEMPTS, one_line
from sfp_ray.packing import pack
from sfp_ray.roles.client import ClientOutput, ClientTask
from sfp_ray.roles.evaluation import EvalResult, combine, num_batches
from sfp_ray.tensors import numpy_state

log = logging.getLogger(__name__)

__all__ = ["RayExecutor"]

#: A client's attempt: its output, or its error as one line.
Outcome = ClientOutput | str


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
        state = RayState(ray.put(pack(numpy_state(client))),
                         ray.put(pack(numpy_state(server))) if server is not None else None)
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
        pool.check_nodes()
        ordered = sorted(tasks, key=lambda t: t.client_id)
        t0 = time.perf_counter()
        done: dict[int, ClientOutput] = {}
        errors: dict[int, list[str]] = {t.client_id: [] for t in ordered}
        pending = ordered
        for attempt in range(1, ATTEMPTS + 1):
            if not pending:
                break
            batch = [dataclasses.replace(t, attempt=attempt) for t in pending]
            routing, unplaced = self._route(batch)
            if attempt == 1:
                self.last_routing = dict(routing)
            for t in batch:  # no slot of its class has an actor: it fails now, with the reason
                if t.client_id in unplaced:
                    done[t.client_id] = failed_output(t, attempt - 1, unplaced[t.client_id])
            batch = [t for t in batch if t.client_id in routing]
            results, dead_slots, server_suspect = self._attempt(batch, state, routing) if batch else ({}, set(), False)
            pending = []
            for t in batch:
                r = results[t.client_id]
                if isinstance(r, str):
                    errors[t.client_id].append(r)
                    pending.append(t)
                else:
                    done[t.client_id] = settle(r, attempt, errors[t.client_id])
            if batch:
                hosts = {i: pool.node_of.get(i, "") for i in dead_slots}
                self._recover(dead_slots, server_suspect, batch[0].round)
                for t in pending:  # Ray may report an actor on a dying node as unavailable before it calls it dead
                    if hosts.get(routing[t.client_id]) in pool.lost_nodes:
                        errors[t.client_id][-1] = f"node lost: the {t.device.name} client actor died with its node"
        wall = time.perf_counter() - t0
        for t in pending:
            done[t.client_id] = failed_output(t, ATTEMPTS, errors[t.client_id][-1], wall)
        return [done[t.client_id] for t in ordered]

    def _route(self, batch: Sequence[ClientTask]) -> tuple[dict[int, int], dict[int, str]]:
        """The slot of each client whose class has a slot with an actor, and why the others have none."""
        pool = self.pool
        assert pool is not None
        classes = pool.live_classes()
        served = [t for t in batch if t.device.name in classes]
        unplaced = {t.client_id: pool.unavailable(t.device.name) for t in batch if t.device.name not in classes}
        return route([(t.client_id, t.device.name) for t in served], classes), unplaced

    def _attempt(self, batch: Sequence[ClientTask], state: RayState,
                 routing: dict[int, int]) -> tuple[dict[int, Outcome], set[int], bool]:
        """One attempt of each client of ``batch``, in parallel, on the slots of ``routing``.

        Returns each client's output (its error as one line when it failed), the slots whose
        actor died, and whether a failure may be the server's (its actor is then probed).
        """
        setup, pool = self.setup, self.pool
        assert setup is not None and pool is not None
        server = pool.server if setup.server is not None else None
        trained = server is not None and state.server is not None
        results: dict[int, Outcome] = {}
        dead: set[int] = set()
        suspect = False
        live = list(batch)
        if trained:  # each client's body copy must exist before its first request
            opens = [(t, server.open.remote(setup.key, t.client_id, t.round, state.server)) for t in batch]
            live = []
            for t, ref in opens:
                try:
                    ray.get(ref)
                    live.append(t)
                except ray.exceptions.RayError as e:
                    results[t.client_id] = _describe(e, "server")
                    suspect = True
        refs = {t.client_id: pool.slots[routing[t.client_id]].run.remote(setup.key, t, state, server) for t in live}
        metas: dict[int, ClientOutput] = {}
        for t in live:
            slot = routing[t.client_id]
            try:
                metas[t.client_id] = ray.get(refs[t.client_id][1])
            except ray.exceptions.RayTaskError as e:  # the task raised; its actor lives on
                results[t.client_id] = _describe(e)
                suspect = suspect or server is not None  # a request to a dead server fails the task
            except ray.exceptions.RayActorError as e:  # the client's actor died (with its node, perhaps)
                cls = pool.plan.slot_classes[slot]
                results[t.client_id] = _describe(e, f"{cls} client actor" if _node_died(e)
                                                 else f"client actor of slot {slot} ({cls})")
                dead.add(slot)
        closes = {cid: server.close.remote(setup.key, cid, batch[0].round) for cid in metas} if trained else {}
        for t in live:
            if t.client_id not in metas:
                continue
            body_ref = None
            if trained:
                body_ref, ok_ref = closes[t.client_id]
                try:
                    ray.get(ok_ref)
                except ray.exceptions.RayError as e:  # a non-finite body copy, or the server died
                    results[t.client_id] = _describe(e, "server")
                    suspect = True
                    continue
            m = metas[t.client_id]
            slot = routing[t.client_id]
            res = dict(m.resources, executor="ray", pooled=not pool.plan.per_client, placed_away=slot in pool.away)
            results[t.client_id] = dataclasses.replace(m, state=RayState(refs[t.client_id][0], body_ref),
                                                       resources=res)
        failed = [t for t in batch if isinstance(results[t.client_id], str)]
        if server is not None and failed:  # drop what the server still holds for them (graphs, body copies)
            try:
                ray.get([server.release.remote(setup.key, t.client_id, t.round) for t in failed])
            except ray.exceptions.RayError:
                suspect = True
        return results, dead, suspect

    def _recover(self, dead_slots: set[int], server_suspect: bool, round: int) -> None:
        """Restart the client actors that died; restart a dead server and raise :class:`ServerLost`."""
        pool = self.pool
        assert pool is not None
        gone = [i for i in sorted(dead_slots) if pool.slots[i] is not None and not pool.alive(pool.slots[i])]
        if gone:
            pool.restart_slots(gone)
        if server_suspect and pool.server is not None and not pool.alive(pool.server):
            where = pool.restart_server()
            raise ServerLost(f"round {round}: the server actor died; it was restarted"
                             + (f" on {where}" if where else ""))

    def aggregate(self, outputs: Sequence[ClientOutput], state: State) -> Aggregate:
        pool, spec = self.pool, self.spec
        assert pool is not None and spec is not None, "start() first"
        outs = sorted(outputs, key=lambda o: o.client_id)
        with_server = outs[0].state.server is not None
        with_previous = spec.cut_plan is not None and isinstance(state, RayState)
        refs = [o.state.client for o in outs] + ([o.state.server for o in outs] if with_server else [])
        if with_previous:
            refs.append(state.client)
        for attempt in range(1, ATTEMPTS + 1):
            client_ref, server_ref, info_ref = pool.aggregator.aggregate.remote(
                [o.num_samples for o in outs], [o.client_id for o in outs], with_server, with_previous, *refs)
            try:
                info = ray.get(info_ref)
                break
            except ray.exceptions.ObjectLostError as e:  # a client state was stored on a node that left
                raise RoundLost(f"client results held on a lost node could not be averaged ({_describe(e)})") from e
            except ray.exceptions.RayActorError:  # the aggregator died: a new one averages the same states
                if attempt == ATTEMPTS:
                    raise
                pool.restart_aggregator()
                pool.notify("the aggregator actor died; it was restarted")
        return Aggregate(RayState(client_ref, server_ref if with_server else None), info["flops"], info["wall_s"])

    def evaluate(self, state: State) -> EvalResult:
        spec, setup, pool = self.spec, self.setup, self.pool
        assert spec is not None and setup is not None and pool is not None, "start() first"
        t0 = time.perf_counter()
        total = num_batches(len(spec.test), spec.cfg.train.eval_batch_size)
        for attempt in range(1, ATTEMPTS + 1):
            slots = [a for a in pool.slots if a is not None]
            if not slots:
                raise ClusterError("no client actor is left to evaluate the model on: every slot lost its node "
                                   f"({'; '.join(sorted(set(pool.lost.values())))})")
            shards = min(len(slots), total)
            bounds = [round(i * total / shards) for i in range(shards + 1)] if shards else [0]
            refs = [slots[i].evaluate.remote(setup.key, state, bounds[i], bounds[i + 1]) for i in range(shards)]
            try:
                results = [b for part in ray.get(refs) for b in part]
                break
            except ray.exceptions.RayActorError:  # a client actor died: restart it and evaluate again
                if attempt == ATTEMPTS:
                    raise
                log.info("a client actor died during evaluation; restarted: %s", ", ".join(pool.heal()))
        return combine(results, len(spec.test), time.perf_counter() - t0)

    def resources(self) -> list[dict[str, Any]]:
        """One row per actor now (server, slots, aggregator): requested vs enforced vs observed."""
        assert self.pool is not None, "start() first"
        labelled = self.pool.labelled_actors()
        rows = ray.get([a.resources.remote() for _, a in labelled])
        return [dict(r, label=lb, executor="ray", placed_away=r.get("slot", -1) in self.pool.away)
                for r, (lb, _) in zip(rows, labelled, strict=True)]

    def close(self) -> None:
        """End this run on the pool (and the pool itself when this executor started it)."""
        if self.pool is not None:
            if self.setup is not None:
                self.pool.drop(self.setup.key)
            if self._own_pool:
                self.pool.close()
                self.pool = None
        self.setup = None


def _describe(e: BaseException, who: str | None = None) -> str:
    """One line for a failed Ray call: the exception a task raised, or which actor died."""
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        return one_line(cause) if isinstance(cause, BaseException) else one_line(e)
    if isinstance(e, ray.exceptions.RayActorError) and who is not None:
        if _node_died(e):
            return f"node lost: the {who} died with its node"
        return f"{type(e).__name__}: the {who} died"
    return one_line(e)


def _node_died(e: BaseException) -> bool:
    """Whether Ray says an actor died because its node did."""
    return "node has died" in str(e)
