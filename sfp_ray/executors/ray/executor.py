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
tried once more, on a slot serving its class (its actor restarted by the pool when it died:
in pooled mode the clients queued behind it are retried too); clients that fail twice are
reported ``failed``. Before every round the pool follows the cluster's nodes
(:meth:`~sfp_ray.executors.ray.pool.ActorPool.check_nodes`); a client whose class has no
slot with an actor (its node was lost, ``ray.on_node_loss``) fails at once with the reason,
e.g. ``node lost: no node offers device:laptop``. When the server actor dies, the executor
restarts it and raises :class:`~sfp_ray.errors.ServerLost` so the orchestrator starts the
round over; client results that were held on a node that left before they were folded,
and an aggregator that died mid-round with the states folded into it, raise
:class:`~sfp_ray.errors.RoundLost` alike (ServerLost is one). A client actor lost during
evaluation is restarted and the evaluation repeated.

Ray must already be running (:func:`~sfp_ray.executors.ray.runtime.start_ray`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import ray

from sfp_ray.errors import ClusterError, RoundLost, ServerLost
from sfp_ray.executors.base import Aggregate, Executor, RunSpec, Started, State, failed_output, settle
from sfp_ray.executors.ray.actors import RayState, RunSetup
from sfp_ray.executors.ray.planning import route
from sfp_ray.executors.ray.pool import ActorPool
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

    def run_clients(self, tasks: Sequence[ClientTask], state: State,
                    on_done: Callable[[ClientOutput, int], None] | None = None) -> list[ClientOutput]:
        """See :meth:`Executor.run_clients`; ``on_done(output, slot)`` sees each successful client as soon as it
        has settled (in client-id order within an attempt).
        """
        spec, setup, pool = self.spec, self.setup, self.pool
        assert spec is not None and setup is not None and pool is not None, "start() first"
        if not isinstance(state, RayState):
            raise TypeError(f"the Ray executor holds its states in the object store, got {type(state).__name__}")
        pool.check_nodes()
        ordered = sorted(tasks, key=lambda t: t.client_id)
        self.last_routing = {}  # the slot of each client's last attempt (aggregate() folds on that slot's node)
        t0 = time.perf_counter()
        done: dict[int, ClientOutput] = {}
        errors: dict[int, list[str]] = {t.client_id: [] for t in ordered}
        pending = ordered
        for attempt in range(1, ATTEMPTS + 1):
            if not pending:
                break
            batch = [dataclasses.replace(t, attempt=attempt) for t in pending]
            routing, unplaced = self._route(batch)
            self.last_routing.update(routing)
            for t in batch:  # no slot serving its class has an actor: it fails now, with the reason
                if t.client_id in unplaced:
                    done[t.client_id] = failed_output(t, attempt - 1, unplaced[t.client_id])
            batch = [t for t in batch if t.client_id in routing]
            if not batch:
                pending = []
                break

            def succeeded(out: ClientOutput, slot: int, attempt: int = attempt) -> None:
                done[out.client_id] = settle(out, attempt, errors[out.client_id])
                if on_done is not None:
                    on_done(done[out.client_id], slot)

            results, dead_slots, server_suspect = self._attempt(batch, state, routing, succeeded)
            pending = []
            for t in batch:
                r = results[t.client_id]
                if isinstance(r, str):
                    errors[t.client_id].append(r)
                    pending.append(t)
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
        """The slot of each client whose class a slot with an actor serves, and why the others have none."""
        pool = self.pool
        assert pool is not None
        served = pool.served_classes()
        placed = [t for t in batch if t.device.name in served]
        unplaced = {t.client_id: pool.unavailable(t.device.name) for t in batch if t.device.name not in served}
        return route([(t.client_id, t.device.name) for t in placed], pool.live_classes(), pool.plan.serves), unplaced

    def _attempt(self, batch: Sequence[ClientTask], state: RayState, routing: dict[int, int],
                 succeeded: Callable[[ClientOutput, int], None]) -> tuple[dict[int, Outcome], set[int], bool]:
        """One attempt of each client of ``batch``, in parallel, on the slots of ``routing``; ``succeeded`` is
        called as each one succeeds.

        Returns each client's output (its error as one line when it failed), the slots whose
        actor died, and whether a failure may be the server's (its actor is then probed).
        With a trained body, each client actor opens its body copy on the server when its
        task starts, and the executor closes it as soon as the client's task is done, so the
        server holds a copy per running client, not per client of the round.
        """
        setup, pool = self.setup, self.pool
        assert setup is not None and pool is not None
        server = pool.server if setup.server is not None else None
        trained = server is not None and state.server is not None
        results: dict[int, Outcome] = {}
        dead: set[int] = set()
        suspect = False
        # a window of tasks ahead of the one awaited: one running per slot and two queued, so no slot idles long
        # and no more states than that wait in the object store for their turn (the fold goes in client-id order)
        window = sum(a is not None for a in pool.slots) + 2
        refs: dict[int, Any] = {}
        queue = iter(batch)

        def top_up() -> None:
            while len(refs) < window:
                t = next(queue, None)
                if t is None:
                    return
                refs[t.client_id] = pool.slots[routing[t.client_id]].run.remote(setup.key, t, state, server)

        for t in batch:
            top_up()
            slot = routing[t.client_id]
            state_ref, meta_ref = refs.pop(t.client_id)  # the state leaves the store once nothing refers to it
            try:
                meta = ray.get(meta_ref)
            except ray.exceptions.RayTaskError as e:  # the task raised; its actor lives on
                results[t.client_id] = _describe(e)
                suspect = suspect or server is not None  # a request to a dead server fails the task
                continue
            except ray.exceptions.RayActorError as e:  # the client's actor died (with its node, perhaps)
                kind = pool.plan.slot_classes[slot]
                results[t.client_id] = _describe(e, f"{kind} client actor" if _node_died(e)
                                                 else f"client actor of slot {slot} ({kind})")
                dead.add(slot)
                continue
            body_ref = None
            if trained:
                body_ref, ok_ref = server.close.remote(setup.key, t.client_id, t.round)
                try:
                    ray.get(ok_ref)
                except ray.exceptions.RayError as e:  # a non-finite body copy, or the server died
                    results[t.client_id] = _describe(e, "server")
                    suspect = True
                    continue
            res = dict(meta.resources, executor="ray", pooled=not pool.plan.per_client, placed_away=slot in pool.away)
            out = dataclasses.replace(meta, state=RayState(state_ref, body_ref), resources=res)
            del state_ref, body_ref
            results[t.client_id] = out
            succeeded(out, slot)
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

    # ------------------------------------------------------------------ aggregation

    def run_and_aggregate(self, tasks: Sequence[ClientTask], state: State,
                          accept: Callable[[ClientOutput], bool]) -> tuple[list[ClientOutput], Aggregate | None]:
        """Each accepted client's state is folded into the aggregator of its slot's node as soon as it settles.

        States are folded in client-id order (a retried client's when its retry succeeds); the
        driver drops its reference right after, so the state leaves the object store once
        folded. The driver never fetches a state.
        """
        fold = _Fold(self, state)
        outputs = self.run_clients(tasks, state, lambda o, slot: fold.add(o, slot) if accept(o) else None)
        return outputs, fold.finish()

    def aggregate(self, outputs: Sequence[ClientOutput], state: State) -> Aggregate:
        fold = _Fold(self, state)
        for o in sorted(outputs, key=lambda o: o.client_id):
            fold.add(o, self.last_routing.get(o.client_id, 0))
        agg = fold.finish()
        assert agg is not None, "aggregate() needs at least one output"
        return agg

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
        return [dict(r, label=lb, executor="ray", placed_away=r.get("slot", -1) in self.pool.away, stage="end")
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


class _Fold:
    """One round's FedAvg on the aggregator actors: fold states as they come, then finish.

    A state goes to the aggregator of the node its client ran on (one aggregator when the
    pool's slots share a node); :meth:`finish` has one aggregator add the other nodes'
    partial sums to its own. When an aggregator dies mid-round, the states folded into it
    are gone (they left the object store): the executor restarts it and raises
    :class:`~sfp_ray.errors.ServerLost`; when a client's state was held on a node that left
    before it was folded, :class:`~sfp_ray.errors.RoundLost`. Either way the orchestrator
    starts the round over.
    """

    def __init__(self, executor: RayExecutor, state: State) -> None:
        self.executor = executor
        self.pool = executor.pool
        self.state = state
        self.key = uuid.uuid4().hex[:12]
        self.refs: list[Any] = []
        self.used: dict[str, Any] = {}  # node id -> the aggregator folding that node's states
        self.with_server = False  # the states have a server part (a trained body)
        self.done: set[Any] = set()  # fold calls known to have run
        self.backlog = 2  # folds allowed to wait: states stay in the object store until theirs has run

    def add(self, out: ClientOutput, slot: int) -> None:
        """Fold ``out``'s state into its node's aggregator; ``out`` keeps no reference to it."""
        node, agg = self.pool.aggregator_for(slot)
        self.used[node] = agg
        st = out.state
        self.with_server = self.with_server or st.server is not None
        self.refs.append(agg.fold.remote(self.key, out.num_samples, st.client, st.server))
        out.state = None
        # a state stays in the object store until its fold has run: wait for the aggregators to keep up
        behind = [r for r in self.refs if r not in self.done]
        if len(behind) > self.backlog:
            ready, _ = ray.wait(behind, num_returns=len(behind) - self.backlog)
            self.done.update(ready)

    def finish(self) -> Aggregate | None:
        pool, spec = self.pool, self.executor.spec
        assert spec is not None
        if not self.used:
            return None
        try:
            ray.get(self.refs)
            root_node, root = next(iter(self.used.items()))
            partials = [a.partial.remote(self.key) for n, a in self.used.items() if n != root_node]
            previous = self.state.client if spec.cut_plan is not None and isinstance(self.state, RayState) else None
            client_ref, server_ref, info_ref = root.finish.remote(self.key, previous, *partials)
            info = ray.get(info_ref)
        except ray.exceptions.ObjectLostError as e:  # a client state was stored on a node that left
            self._discard()
            raise RoundLost(f"client results held on a lost node could not be averaged ({_describe(e)})") from e
        except ray.exceptions.RayActorError:
            self._discard()
            restarted = pool.heal_aggregators()
            raise ServerLost(f"an aggregator actor died while averaging ({', '.join(restarted) or 'restarted'}); "
                             "it was restarted") from None
        return Aggregate(RayState(client_ref, server_ref if self.with_server else None), info["flops"], info["wall_s"])

    def _discard(self) -> None:
        """Drop the round's partial sums on the aggregators that still live."""
        for a in self.used.values():
            with contextlib.suppress(ray.exceptions.RayError):
                a.discard.remote(self.key)


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
