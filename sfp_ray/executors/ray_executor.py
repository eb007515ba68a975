"""The Ray executor: the same roles as the serial executor, run inside Ray actors.

Layout of a run (DESIGN.md §3):

* one :class:`~sfp_ray.actors.ServerActor` (the body, a threaded actor serving
  ``ray.server_max_concurrency`` requests at once; it also evaluates the global model),
  placed with the server device's tickets. When the method trains the body, the body
  lives in this actor between rounds: :meth:`RayExecutor.begin_round` and
  :meth:`RayExecutor.finish_round` open and close its per-client copies, and only
  :meth:`RayExecutor.body_state` brings the body to the driver;
* one :class:`~sfp_ray.actors.AggregatorActor`;
* client actors, each created with its device profile's tickets
  (``DeviceProfile.ray_options``), plus one unit of ``device:<class>`` when the cluster
  offers that resource (so a client lands on a node standing for its class):

  - default: **one actor per client**;
  - **pooled mode** (``ray.max_actors`` < ``federation.num_clients``): K = ``max_actors``
    device-slot actors. Slots are shared out among the device classes in use, at least
    one per class, the rest in proportion to the class's client count (D'Hondt, see
    :func:`plan_slots`); each round, the round's clients of a class are dealt round-robin
    onto that class's slots in client-id order (:func:`route`). Clients sharing a slot run
    one after another in Ray's actor queue.

Slots are stateless: what a logical client keeps between rounds (``client_state``, e.g.
its kept EL2N indices) is owned by the orchestrator, sent with every task and returned in
the output, and clients re-download the global state each round.

Data paths: the training images/labels go into the object store once (numpy, zero-copy);
each round's global state is put once and shared by all tasks; each client returns its new
state as a separate object (``num_returns=2``), and :meth:`RayExecutor.run_clients`
returns :class:`~sfp_ray.roles.client.ClientOutput` objects whose ``state`` is that
**ObjectRef** (not the tensors). :meth:`RayExecutor.aggregate` passes those refs to the
aggregator as top-level arguments, so client states never pass through the driver; the
driver fetches only the averaged state, once per round, for the next download. A
sequential method (split learning) passes each client's state ref on as the next client's
global state, so only the last client's state reaches the driver (:meth:`RayExecutor.adopt`).

Ray must already be running (:func:`sfp_ray.runtime.start_ray`); :meth:`RayExecutor.close`
kills the actors this executor made and leaves Ray up.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sfp_ray.costs import state_bytes
from sfp_ray.devices import device_resource
from sfp_ray.errors import ClusterError, ConfigError
from sfp_ray.executors.base import AggregateResult, ClientSpec, EvalResult, Executor, RunSpec
from sfp_ray.roles.client import ClientOutput
from sfp_ray.roles.server import BodyAggregate
from sfp_ray.roles.workspace import to_numpy_state, to_torch_state
from sfp_ray.runtime import check_fit, cluster_nodes

log = logging.getLogger(__name__)

__all__ = ["RayExecutor", "plan_slots", "route"]


# --------------------------------------------------------------------------- pooled mode


def plan_slots(classes: Sequence[str], max_actors: int) -> list[str]:
    """Device class of each of ``max_actors`` slots for clients of the given ``classes``.

    Every class present gets one slot; the remaining slots go one by one to the class with
    the largest ``clients / (slots + 1)`` (D'Hondt), never more slots than clients; ties go
    to the class that appears first. Slots of a class are contiguous, classes in order of
    first appearance.

    Example:
        >>> plan_slots(["rpi4"] * 30 + ["phone"] * 10, 4)
        ['rpi4', 'rpi4', 'rpi4', 'phone']
        >>> plan_slots(["rpi4", "phone", "rpi4", "phone"], 2)
        ['rpi4', 'phone']
    """
    counts = Counter(classes)
    if max_actors < len(counts):
        raise ConfigError(
            f"ray.max_actors: {max_actors} slot actors cannot serve {len(counts)} device classes "
            f"({', '.join(counts)}); a client only runs on a slot of its own class, so set "
            f"ray.max_actors >= {len(counts)}"
        )
    slots = {c: 1 for c in counts}
    for _ in range(max_actors - len(counts)):
        open_ = [c for c in counts if slots[c] < counts[c]]
        if not open_:
            break
        best = max(open_, key=lambda c: counts[c] / (slots[c] + 1))
        slots[best] += 1
    return [c for c in counts for _ in range(slots[c])]


def route(cohort: Sequence[tuple[int, str]], slot_classes: Sequence[str]) -> dict[int, int]:
    """Slot index for each ``(client_id, class)`` of a round: round-robin within each class.

    Example:
        >>> route([(7, "a"), (2, "b"), (3, "a"), (9, "a")], ["a", "a", "b"])
        {3: 0, 7: 1, 9: 0, 2: 2}
    """
    slots_of: dict[str, list[int]] = {}
    for i, c in enumerate(slot_classes):
        slots_of.setdefault(c, []).append(i)
    dealt: Counter[str] = Counter()
    out: dict[int, int] = {}
    for cid, cls in sorted(cohort, key=lambda x: (x[1], x[0])):
        if cls not in slots_of:
            raise ValueError(f"no slot of device class {cls!r} (slots: {sorted(set(slot_classes))})")
        ids = slots_of[cls]
        out[cid] = ids[dealt[cls] % len(ids)]
        dealt[cls] += 1
    return out


# --------------------------------------------------------------------------- executor


def _has(cluster: Mapping[str, float], name: str) -> bool:
    return float(cluster.get(name, 0.0)) > 0


class RayExecutor(Executor):
    """Runs clients, the body server and aggregation in Ray actors.

    Args:
        address: for error messages only - Ray is started/joined by
            :func:`sfp_ray.runtime.start_ray`, never here.
        ready_timeout_s: how long :meth:`start` waits for all actors to be placed and
            built before giving up with :class:`~sfp_ray.errors.ClusterError`.

    ``run_clients`` returns outputs whose ``state`` is an ``ObjectRef`` to the client's
    new state (a name -> numpy mapping); :meth:`aggregate` accepts those (or plain
    mappings, which it puts into the object store first).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, ready_timeout_s: float = 300.0) -> None:
        self.address = address
        self.ready_timeout_s = ready_timeout_s
        self.spec: RunSpec | None = None
        self.server: Any = None
        self.aggregator: Any = None
        self.client_actors: list[Any] = []
        self.slot_classes: list[str] | None = None  # pooled mode: device class of each slot
        self.last_routing: dict[int, int] = {}
        self._actor_labels: list[str] = []  # plan labels: server, aggregator, then clients/slots
        self._train_images: Any = None  # object refs of the training arrays
        self._train_labels: Any = None
        self._init: dict[str, np.ndarray] = {}
        self._global: tuple[Mapping[str, torch.Tensor], Any] | None = None

    # ------------------------------------------------------------------ set-up

    @property
    def pooled(self) -> bool:
        return self.slot_classes is not None

    def _client_options(self, device: Any, cluster: Mapping[str, float]) -> dict[str, Any]:
        amount = 1.0 if _has(cluster, device_resource(device.name)) else 0.0
        return device.ray_options(include_memory=False, device_resource_amount=amount)

    def plan(self, spec: RunSpec, cluster: Mapping[str, float]) -> list[tuple[str, dict[str, Any], Any]]:
        """``(label, ray options, device)`` of every actor a run creates: server, aggregator, clients.

        Also decides the mode: sets :attr:`slot_classes` in pooled mode, None otherwise.
        """
        cfg = spec.cfg
        server_opts = spec.server_device.ray_options(
            include_memory=False,
            device_resource_amount=1.0 if _has(cluster, device_resource(spec.server_device.name)) else 0.0)
        shapes: list[tuple[str, dict[str, Any], Any]] = [
            (f"server:{spec.server_device.name}", server_opts, spec.server_device),
            ("aggregator", {"num_cpus": 0}, None),
        ]
        n = len(spec.devices)
        k = cfg.ray.max_actors
        if k is not None and k < n:
            self.slot_classes = plan_slots([d.name for d in spec.devices], k)
            by_name = {d.name: d for d in spec.devices}
            devices = [by_name[c] for c in self.slot_classes]
        else:
            self.slot_classes = None
            devices = list(spec.devices)
        for d in devices:
            shapes.append((f"client:{d.name}", self._client_options(d, cluster), d))
        return shapes

    def start(self, spec: RunSpec) -> None:
        import ray

        from sfp_ray.actors import AggregatorActor, ClientActor, ServerActor

        if not ray.is_initialized():
            where = f" (address {self.address!r})" if self.address else ""
            raise ClusterError(f"Ray is not running{where}: call sfp_ray.runtime.start_ray first")
        if self.client_actors or self.server is not None:
            self.close()
        cfg = spec.cfg
        cluster = ray.cluster_resources()
        plan = self.plan(spec, cluster)
        check_fit([(label, opts) for label, opts, _ in plan], cluster, cluster_nodes())

        self.spec = spec
        train, test = spec.train, spec.test
        self._train_images = ray.put(train.images.numpy())
        self._train_labels = ray.put(train.labels.numpy())
        meta = (train.num_classes, train.name, tuple(train.class_names))
        test_meta = (test.num_classes, test.name, tuple(test.class_names))

        (_, sopts, sdev), (_, aopts, _) = plan[0], plan[1]
        self._actor_labels = [label for label, _, _ in plan]
        try:
            self.server = ServerActor.options(**sopts, max_concurrency=cfg.ray.server_max_concurrency).remote(
                cfg, spec.num_classes, spec.checkpoint, sdev, ray.put(test.images.numpy()),
                ray.put(test.labels.numpy()), test_meta, train_body=spec.method.trains_body)
            self.aggregator = AggregatorActor.options(**aopts).remote()
            link_server = self.server if spec.method.uses_server else None
            self.client_actors = []
            for i, (_, opts, dev) in enumerate(plan[2:]):
                self.client_actors.append(ClientActor.options(**opts).remote(
                    cfg, spec.method, spec.num_classes, spec.checkpoint, meta, dev, link_server,
                    i if self.pooled else None, i))
        except BaseException:
            self.close()
            raise
        self._wait_ready([self.server, self.aggregator] + self.client_actors)
        # the method's trainable state as built, before any round changed an actor's copy
        self._init = ray.get(self.client_actors[0].initial_state.remote())

    def _wait_ready(self, actors: list[Any]) -> None:
        import ray

        refs = [a.ready.remote() for a in actors]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=self.ready_timeout_s)
        if pending:
            waiting = Counter(self._actor_labels[refs.index(r)] for r in pending)
            self.close()
            raise ClusterError(
                f"{len(pending)} of {len(refs)} actors were not placed/built within {self.ready_timeout_s:g} s "
                f"({', '.join(f'{n} x {lb}' for lb, n in waiting.items())}); other jobs may hold the "
                "resources (see `ray status`), or raise RayExecutor(ready_timeout_s=...)")
        try:
            ray.get(done)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ state

    def _state_ref(self, state: Mapping[str, torch.Tensor] | Any) -> Any:
        """Object ref of a global state: reused when it is the state this executor last produced.

        A state that is already an ``ObjectRef`` (a client's output, relayed by a
        sequential method) is passed on as it is.
        """
        import ray

        if isinstance(state, ray.ObjectRef):
            return state
        if self._global is not None and self._global[0] is state:
            return self._global[1]
        ref = ray.put(to_numpy_state(state))
        self._global = (state, ref)
        return ref

    def initial_state(self) -> dict[str, torch.Tensor]:
        assert self.spec is not None, "start() first"
        return to_torch_state(self._init)

    # ------------------------------------------------------------------ rounds

    def run_clients(self, specs: Sequence[ClientSpec], global_state: Mapping[str, torch.Tensor]) -> list[ClientOutput]:
        import ray

        spec = self.spec
        assert spec is not None, "start() first"
        gref = self._state_ref(global_state)
        ordered = sorted(specs, key=lambda s: s.client_id)
        if self.pooled:
            assert self.slot_classes is not None
            self.last_routing = route([(s.client_id, spec.devices[s.client_id].name) for s in ordered],
                                      self.slot_classes)
        else:
            self.last_routing = {s.client_id: s.client_id for s in ordered}
        state_refs, meta_refs = [], []
        for s in ordered:
            actor = self.client_actors[self.last_routing[s.client_id]]
            st, mt = actor.run.remote(s.round, s.client_id, s.seed, s.client_state, spec.devices[s.client_id],
                                      spec.server_device, np.asarray(spec.client_indices[s.client_id]), gref,
                                      self._train_images, self._train_labels)
            state_refs.append(st)
            meta_refs.append(mt)
        metas: list[ClientOutput] = ray.get(meta_refs)
        outputs = []
        for st, m in zip(state_refs, metas, strict=True):
            res = dict(m.resources, executor="ray", pooled=self.pooled)
            outputs.append(dataclasses.replace(m, state=st, resources=res))
        return sorted(outputs, key=lambda o: o.client_id)

    def aggregate(self, outputs: Sequence[ClientOutput]) -> AggregateResult:
        import ray

        assert self.aggregator is not None, "start() first"
        outs = sorted(outputs, key=lambda o: o.client_id)
        refs = [o.state if isinstance(o.state, ray.ObjectRef) else ray.put(to_numpy_state(o.state)) for o in outs]
        state_ref, info_ref = self.aggregator.aggregate.remote(
            [o.num_samples for o in outs], [o.client_id for o in outs], *refs)
        info = ray.get(info_ref)
        state = to_torch_state(ray.get(state_ref))
        self._global = (state, state_ref)
        return AggregateResult(state, info["flops"], info["wall_s"], info["payload_bytes"])

    def adopt(self, output: ClientOutput) -> AggregateResult:
        import ray

        if not isinstance(output.state, ray.ObjectRef):
            return super().adopt(output)
        state = to_torch_state(ray.get(output.state))
        self._global = (state, output.state)
        return AggregateResult(state, 0.0, 0.0, state_bytes(state)[0])

    def _trains_body(self) -> bool:
        return self.spec is not None and self.server is not None and self.spec.method.trains_body

    def begin_round(self, round: int, client_ids: Sequence[int]) -> None:
        import ray

        if self._trains_body():
            ray.get(self.server.begin_round.remote(round, sorted(client_ids)))

    def finish_round(self, outputs: Sequence[ClientOutput]) -> BodyAggregate | None:
        import ray

        if not self._trains_body():
            return None
        return ray.get(self.server.finish_round.remote({o.client_id: o.num_samples for o in outputs}))

    def body_state(self) -> dict[str, torch.Tensor] | None:
        import ray

        if self.spec is None or self.server is None or not self.spec.method.uses_server:
            return None
        return to_torch_state(ray.get(self.server.body_state.remote()))

    def evaluate(self, global_state: Mapping[str, torch.Tensor]) -> EvalResult:
        import ray

        assert self.server is not None, "start() first"
        acc, loss, flops, wall = ray.get(self.server.evaluate.remote(self._state_ref(global_state)))
        return EvalResult(acc, loss, flops, wall)

    def server_stats(self) -> list[Any]:
        import ray

        return ray.get(self.server.take_stats.remote()) if self.server is not None else []

    def resource_report(self) -> list[dict[str, Any]]:
        """One row per actor (server first, then client actors/slots): requested vs enforced vs observed."""
        import ray

        actors = ([self.server] if self.server is not None else []) + self.client_actors
        rows = ray.get([a.resources.remote() for a in actors])
        labels = [self._actor_labels[0]] + self._actor_labels[2:] if self.server is not None else self._actor_labels[2:]
        return [dict(r, label=lb, executor="ray", pooled=self.pooled) for r, lb in zip(rows, labels, strict=True)]

    @property
    def num_client_actors(self) -> int:
        return len(self.client_actors)

    def close(self) -> None:
        """Kill the actors this executor created (Ray itself stays up)."""
        try:
            import ray
        except ImportError:  # pragma: no cover
            return
        actors = [a for a in [self.server, self.aggregator, *self.client_actors] if a is not None]
        if ray.is_initialized():
            for a in actors:
                try:
                    ray.kill(a)
                except Exception as e:  # noqa: BLE001 - best effort; the actor may already be gone
                    log.debug("ray.kill failed: %s", e)
        self.server, self.aggregator, self.client_actors = None, None, []
        self._global = None
        self._train_images = self._train_labels = None
