"""The actors of a Ray simulation, sized from the cluster with no knobs.

A pool is one server actor (when a method needs a body), one aggregator actor and
**device slots**: client actors, each created with the Ray tickets of one device class
(``DeviceProfile.ray_options``), plus one unit of ``device:<class>`` when the cluster
offers that resource (so a client lands on a node standing for its class).

Sizing (:func:`plan_pool`), as Flower sizes its actor pool from the cluster's resources:

* when the cluster has no GPU, device classes that ask for a GPU share run on the CPU
  instead: their GPU ticket is dropped, one notice says so, and ``resources.csv`` records
  ``gpu_fallback``;
* every actor asks Ray for the memory it needs, estimated from the model and the method on
  the ``meta`` device before any actor starts (:mod:`sfp_ray.sizing`: parameters held,
  gradients and optimizer state of what it trains, one batch's activations, the process
  itself); the server's grows with the requests it serves at once, the aggregator's with
  the state it folds. Ray then never places more actors on a node than its memory holds;
* one slot per client when all of them (with the server and the aggregator) fit the cluster
  at once; otherwise the largest number of slots that fits, so the pool's size is the
  smallest that the CPUs, the GPUs and the memory each allow, shared out among the device
  classes in use, at least one per class, the rest in proportion to the class's client
  count (D'Hondt, :func:`plan_slots`). ``ray.max_actors`` caps it;
* when not even one actor per class fits (a large model on a small machine), classes that
  compute alike (the same torch thread count, all on CPU or all with a GPU share) share
  slots, with the largest tickets among them, on clusters without ``device:<class>``
  nodes; a notice says so. The simulated device of a client is its own class's whatever
  slot runs it;
* a shape that cannot be placed at all fails at once, naming the device class and the
  shortfall (:func:`~sfp_ray.executors.ray.runtime.check_fit`), e.g. a custom resource
  that no node offers, or memory that no node holds.

Each round, the round's clients of a class are dealt round-robin onto the slots serving
that class in client-id order (:func:`route`); clients sharing a slot run one after another
in Ray's actor queue. A pool can serve several runs one after another (``sfp-ray compare`` over
methods and seeds): actors are started once, each run is set up on them by key, and the
training data is put into the object store once per dataset.

Recovery: an actor that died is replaced by a new one with the same options, which is set
up again for every run the pool hosts (:meth:`ActorPool.restart_slot`,
:meth:`ActorPool.restart_server`, :meth:`ActorPool.heal`); the executor decides when.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from sfp_ray.devices import DeviceProfile, device_resource
from sfp_ray.errors import ClusterError, ConfigError
from sfp_ray.executors.base import RunSpec
from sfp_ray.executors.ray.actors import ClientActor, RunSetup, ServerActor
from sfp_ray.executors.ray.aggregator import AggregatorActor
from sfp_ray.executors.ray.runtime import check_fit, cluster_nodes
from sfp_ray.sizing import MemoryEstimate, PoolMemory, pool_memory

log = logging.getLogger(__name__)


__all__ = ["ActorPool", "PoolPlan", "plan_pool", "plan_slots", "route"]


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


def route(cohort: Sequence[tuple[int, str]], slot_classes: Sequence[str],
          serves: Mapping[str, Sequence[str]] | None = None) -> dict[int, int]:
    """Slot index for each ``(client_id, class)`` of a round: round-robin within each class.

    ``serves`` maps a slot kind to the classes it serves (default: each kind its own class).

    Example:
        >>> route([(7, "a"), (2, "b"), (3, "a"), (9, "a")], ["a", "a", "b"])
        {3: 0, 7: 1, 9: 0, 2: 2}
        >>> route([(7, "a"), (2, "b"), (3, "a")], ["a+b", "a+b"], {"a+b": ("a", "b")})
        {3: 0, 7: 1, 2: 0}
        >>> route([(7, "a"), (2, "b"), (3, "a"), (9, "a")], ["a+b", "a+b"], {"a+b": ("a", "b")})
        {3: 0, 7: 1, 9: 0, 2: 1}
    """
    slots_of: dict[str, list[int]] = {}
    for i, kind in enumerate(slot_classes):
        for c in (serves or {}).get(kind, (kind,)):
            slots_of.setdefault(c, []).append(i)
    dealt: Counter[tuple[int, ...]] = Counter()  # per group of slots: classes sharing slots are dealt together
    out: dict[int, int] = {}
    for cid, cls in sorted(cohort, key=lambda x: (x[1], x[0])):
        if cls not in slots_of:
            raise ValueError(f"no slot of device class {cls!r} (slots: {sorted(set(slot_classes))})")
        ids = tuple(slots_of[cls])
        out[cid] = ids[dealt[ids] % len(ids)]
        dealt[ids] += 1
    return out


# --------------------------------------------------------------------------- planning


@dataclass
class PoolPlan:
    """Which actors a pool starts and with which Ray options.

    ``slot_classes`` names each slot's kind: a device class, or (when memory holds no actor
    per class) a group of classes sharing slots, e.g. ``rpi4+phone+laptop``; ``serves``
    maps a kind to the device classes whose clients its slots run, ``profiles`` and
    ``options`` give its profile (a group's: the largest tickets of its classes) and Ray
    options. ``memory`` holds the estimates the options request (None: none requested).
    """

    slot_classes: list[str]
    profiles: dict[str, DeviceProfile]
    options: dict[str, dict[str, Any]]
    server: DeviceProfile | None = None
    server_options: dict[str, Any] = field(default_factory=dict)
    gpu_fallback: set[str] = field(default_factory=set)
    notices: list[str] = field(default_factory=list)
    per_client: bool = False  # one slot per client
    serves: dict[str, tuple[str, ...]] = field(default_factory=dict)
    memory: PoolMemory | None = None
    aggregator_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 0})
    #: body requests the server is planned to hold at once: ``min(server_max_concurrency, slots)``
    server_concurrency: int = 1

    def classes_of(self, kind: str) -> tuple[str, ...]:
        """The device classes a slot of ``kind`` serves."""
        return self.serves.get(kind, (kind,))

    @property
    def server_estimate(self) -> MemoryEstimate | None:
        """The server's memory at the concurrency it is planned for."""
        if self.memory is None or self.server is None:
            return None
        return self.memory.server_at(self.server_concurrency)


def _options(device: DeviceProfile, nodes: Sequence[Mapping[str, float]], fallback: bool) -> dict[str, Any]:
    offers = any(float(n.get(device_resource(device.name), 0.0)) > 0 for n in nodes)
    opts = device.ray_options(include_memory=False, device_resource_amount=1.0 if offers else 0.0)
    if fallback:
        opts.pop("num_gpus", None)
    return opts


def _group(devices: Sequence[DeviceProfile], gpu: bool) -> DeviceProfile:
    """One profile for a slot serving several device classes: the largest of their tickets."""
    first = devices[0]
    return dataclasses.replace(
        first, name="+".join(d.name for d in devices),
        description="a slot shared by device classes " + ", ".join(d.name for d in devices),
        num_cpus=max(d.num_cpus for d in devices), num_gpus=max(d.num_gpus for d in devices) if gpu else 0.0,
        memory_mb=max(d.memory_mb for d in devices), resources={})


def plan_pool(clients: Sequence[DeviceProfile], server: DeviceProfile | None,
              nodes: Sequence[Mapping[str, float]], *, max_actors: int | None = None,
              memory: PoolMemory | None = None, server_max_concurrency: int = 8,
              memory_fraction: float = 1.0) -> PoolPlan:
    """Plan the actors for clients of the given device profiles (see the module docstring).

    ``memory`` (:func:`~sfp_ray.sizing.pool_memory`) is what each actor asks Ray for; the
    server's grows with the requests it serves at once, ``min(server_max_concurrency,
    slots)``. The plan fills at most ``memory_fraction`` of each node's memory with those
    estimates (``ray.memory_fraction``); when even the smallest pool needs more, it is
    planned against the whole node, with a notice.
    """
    if memory is not None and memory_fraction < 1.0 and any(float(n.get("memory", 0.0)) > 0 for n in nodes):
        share = [dict(n, memory=float(n["memory"]) * memory_fraction) if n.get("memory") else dict(n) for n in nodes]
        try:
            return plan_pool(clients, server, share, max_actors=max_actors, memory=memory,
                             server_max_concurrency=server_max_concurrency)
        except ClusterError:
            plan = plan_pool(clients, server, nodes, max_actors=max_actors, memory=memory,
                             server_max_concurrency=server_max_concurrency)
            plan.notices.append(f"ray.memory_fraction={memory_fraction:g}: even the smallest pool needs more of a "
                                f"node's memory (a client actor: {memory.client.describe()}); planned against the "
                                "whole node")
            return plan
    if not clients:
        raise ConfigError("federation.num_clients: a run needs at least one client")
    has_gpu = any(float(n.get("GPU", 0.0)) > 0 for n in nodes)
    profiles: dict[str, DeviceProfile] = {}
    for d in [*clients, *([server] if server is not None else [])]:
        profiles.setdefault(d.name, d)
    fallback = {name for name, d in profiles.items() if d.num_gpus > 0 and not has_gpu}
    notices = []
    if fallback:
        notices.append(f"the Ray cluster has no GPU: device classes {', '.join(sorted(fallback))} run their GPU "
                       "share on CPU (recorded as gpu_fallback in resources.csv)")
    options = {name: _options(d, nodes, name in fallback) for name, d in profiles.items()}
    # a cluster whose nodes offer no memory resource (a synthetic one in tests) is asked for none
    asks = memory is not None and any(float(n.get("memory", 0.0)) > 0 for n in nodes)
    client_memory = {"memory": int(memory.client.total)} if asks else {}
    aggregator = {"num_cpus": 0, **({"memory": int(memory.aggregator.total)} if asks else {})}

    def server_options(slots: int) -> dict[str, Any]:
        opts = dict(options[server.name]) if server is not None else {}
        if asks and memory.server is not None:
            opts["memory"] = int(memory.server_at(min(server_max_concurrency, slots)).total)
        return opts

    def shapes(kinds: Sequence[str], slot_options: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, dict]]:
        fixed = [(f"server:{server.name}", server_options(len(kinds)))] if server is not None else []
        return fixed + [("aggregator", aggregator)] + [(f"client:{k}", dict(slot_options[k])) for k in kinds]

    def fits(kinds: Sequence[str], slot_options: Mapping[str, Mapping[str, Any]]) -> bool:
        try:
            check_fit(shapes(kinds, slot_options), nodes=nodes)
            return True
        except ClusterError:
            return False

    def largest(kind_of: Mapping[str, str], slot_options: Mapping[str, Mapping[str, Any]]) -> list[str] | None:
        """The most slots (at least one per kind) that fit, or None when even that does not."""
        names = [kind_of[d.name] for d in clients]
        kinds = len(set(names))
        upper = len(names) if max_actors is None else min(len(names), max_actors)
        if upper < kinds:
            return None
        if fits(plan_slots(names, upper), slot_options):
            return plan_slots(names, upper)
        if not fits(plan_slots(names, kinds), slot_options):
            return None
        lo, hi = kinds, upper  # lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(plan_slots(names, mid), slot_options) else (lo, mid)
        return plan_slots(names, lo)

    classes = list(dict.fromkeys(d.name for d in clients))
    slot_options = {c: dict(options[c], **client_memory) for c in classes}
    serves = {c: (c,) for c in classes}
    slots = largest({c: c for c in classes}, slot_options)
    if slots is None and len(classes) > 1 and not any(device_resource(c) in options[c].get("resources", {})
                                                      for c in classes):
        # memory (or ray.max_actors) holds no actor per class: classes that compute alike share slots
        groups: dict[tuple[int, bool], list[str]] = {}
        for c in classes:
            groups.setdefault((profiles[c].torch_threads, "num_gpus" in options[c]), []).append(c)
        kind_of, grouped = {}, {}
        for (_, gpu), members in groups.items():
            kind = "+".join(members)
            kind_of.update({c: kind for c in members})
            grouped[kind] = (_group([profiles[c] for c in members], gpu), members)
        merged = {k: dict(_options(p, nodes, False), **client_memory) for k, (p, _) in grouped.items()}
        slots = largest(kind_of, merged)
        if slots is not None:
            for k, (p, members) in grouped.items():
                profiles[k], options[k], serves[k] = p, merged[k], tuple(members)
                slot_options[k] = merged[k]
            if len(grouped) < len(classes):
                notices.append(f"device classes {', '.join(classes)} share {len(slots)} slot actor(s) "
                               f"({', '.join(grouped)}): the cluster does not hold one actor per class"
                               + (f" of {memory.client.describe()} each" if memory is not None else ""))
    if slots is None:
        names = [d.name for d in clients]
        if max_actors is not None and max_actors < len(classes):
            plan_slots(names, max_actors)  # raises, naming ray.max_actors
        minimal = plan_slots(names, len(classes))
        bare = {c: options[c] for c in classes}
        check_fit(shapes(minimal, bare), nodes=nodes)  # names the shortfall of the shapes themselves
        try:
            check_fit(shapes(minimal, slot_options), nodes=nodes)  # or the memory of the actors together
        except ClusterError as e:
            raise ClusterError(f"{e}; memory per actor: client {memory.client.describe()}, aggregator "
                               f"{memory.aggregator.describe()}" if memory is not None else str(e)) from None
        raise ClusterError("the pool cannot be planned on this cluster")  # pragma: no cover - check_fit raised
    concurrency = min(server_max_concurrency, len(slots))
    plan = PoolPlan(slots, profiles, {k: slot_options.get(k, options[k]) for k in options}, server,
                    server_options(len(slots)), fallback, notices, per_client=len(slots) == len(clients),
                    serves=serves, memory=memory, aggregator_options=aggregator, server_concurrency=concurrency)
    if not plan.per_client:
        notices.append(f"{len(clients)} clients run on {len(slots)} device-slot actors (pooled mode: all of them do "
                       "not fit the cluster at once)")
    return plan


# --------------------------------------------------------------------------- the pool


class ActorPool:
    """The actors of a plan, started at once (placement and imports run in the background).

    Args:
        plan: from :func:`plan_pool`.
        ready_timeout_s: how long :meth:`wait_ready` waits for every actor to be placed and
            started before giving up with :class:`~sfp_ray.errors.ClusterError`.
        server_max_concurrency: requests the server actor serves at once.
    """

    def __init__(self, plan: PoolPlan, *, ready_timeout_s: float = 300.0, server_max_concurrency: int = 8) -> None:
        self.plan = plan
        self.ready_timeout_s = ready_timeout_s
        self._ready: list[dict[str, Any]] | None = None
        self._data: dict[int, tuple[Any, Any]] = {}
        self._setups: dict[str, RunSetup] = {}  # the runs set up on the actors, to set up again on a restart
        self.server_max_concurrency = server_max_concurrency
        self.slots: list[Any] = []
        self.server: Any = None
        self.aggregator: Any = None
        self.labels: list[str] = []
        #: the node each slot's actor runs on (from its resources row; None until known)
        self.slot_nodes: list[str | None] = [None] * len(plan.slot_classes)
        self._aggregator_node: str | None = None
        self._node_aggregators: dict[str, Any] = {}  # per-node aggregators when the slots span several nodes
        try:
            if plan.server is not None:
                self.server = self._new_server()
            self.aggregator = self._new_aggregator()
            for i in range(len(plan.slot_classes)):
                self.slots.append(self._new_slot(i))
        except BaseException:
            self.close()
            raise
        self.labels = ([f"server:{plan.server.name}"] if plan.server is not None else []) + [
            f"client:{c}" for c in plan.slot_classes]

    def _new_server(self) -> Any:
        plan = self.plan
        assert plan.server is not None
        est = plan.server_estimate
        return ServerActor.options(**plan.server_options, max_concurrency=self.server_max_concurrency).remote(
            plan.server, plan.server.name in plan.gpu_fallback, est.row() if est is not None else None)

    def _new_slot(self, i: int) -> Any:
        c = self.plan.slot_classes[i]
        est = self.plan.memory.client.row() if self.plan.memory is not None else None
        return ClientActor.options(**self.plan.options[c]).remote(self.plan.profiles[c], i,
                                                                   c in self.plan.gpu_fallback, est)

    def _new_aggregator(self, node: str | None = None) -> Any:
        """The aggregator actor (``node``: one pinned to that node, which folds the states of its clients)."""
        opts = dict(self.plan.aggregator_options)
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        est = self.plan.memory.aggregator.row() if self.plan.memory is not None else None
        return AggregatorActor.options(**opts).remote(est)

    def aggregator_for(self, slot: int) -> tuple[str, Any]:
        """``(node id, aggregator)`` that folds the states of clients run by ``slot``.

        One aggregator while the slots share a node; on several nodes, one per node (created
        on first use), so each node's states are summed where they are and one partial sum per
        node crosses the network.
        """
        nodes = {n for n in self.slot_nodes if n is not None}
        node = self.slot_nodes[slot] if 0 <= slot < len(self.slot_nodes) else None
        if len(nodes) <= 1 or node is None or node == self._aggregator_node:
            return self._aggregator_node or "", self.aggregator
        agg = self._node_aggregators.get(node)
        if agg is None:
            agg = self._node_aggregators[node] = self._new_aggregator(node)
        return node, agg

    def heal_aggregators(self) -> list[str]:
        """Replace aggregator actors that died (per-node ones are made again on first use); their labels."""
        restarted = []
        if self.aggregator is not None and not self.alive(self.aggregator):
            self.restart_aggregator()
            restarted.append("aggregator")
        for node, agg in list(self._node_aggregators.items()):
            if not self.alive(agg):
                del self._node_aggregators[node]
                restarted.append(f"aggregator of node {node[:8]}")
        return restarted

    @classmethod
    def for_specs(cls, specs: Sequence[RunSpec], **kwargs: Any) -> ActorPool:
        """A pool planned for the runs ``specs`` on the connected cluster (memory sized from their models)."""
        first = specs[0]
        servers = [s.server_device for s in specs if s.method.server(s.cfg) is not None]
        caps = [s.cfg.ray.max_actors for s in specs if s.cfg.ray.max_actors is not None]
        memory = pool_memory([(s.cfg, s.method) for s in specs], first.num_classes)
        return cls.for_devices(first.devices, servers[0] if servers else None, max_actors=min(caps) if caps else None,
                               server_max_concurrency=first.cfg.ray.server_max_concurrency, memory=memory,
                               memory_fraction=first.cfg.ray.memory_fraction, **kwargs)

    @classmethod
    def for_devices(cls, clients: Sequence[DeviceProfile], server: DeviceProfile | None, *,
                    max_actors: int | None = None, server_max_concurrency: int = 8, memory: PoolMemory | None = None,
                    memory_fraction: float = 1.0, **kwargs: Any) -> ActorPool:
        """A pool planned for clients of these device profiles (and a server) on the connected cluster.

        ``memory``: what each actor asks Ray for (:func:`~sfp_ray.sizing.pool_memory`; None:
        nothing), planned into ``memory_fraction`` of each node. The actors start at once, in
        the background: a caller can go on loading data while they import torch.
        """
        if not ray.is_initialized():
            raise ClusterError("Ray is not running: call sfp_ray.executors.ray.start_ray first")
        plan = plan_pool(clients, server, cluster_nodes(), max_actors=max_actors, memory=memory,
                         server_max_concurrency=server_max_concurrency, memory_fraction=memory_fraction)
        return cls(plan, ready_timeout_s=kwargs.pop("ready_timeout_s", 300.0),
                   server_max_concurrency=server_max_concurrency, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def actors(self) -> list[Any]:
        return ([self.server] if self.server is not None else []) + self.slots

    def wait_ready(self) -> list[dict[str, Any]]:
        """Wait until every actor is placed and started; their resource rows (once; the aggregator's last)."""
        if self._ready is not None:
            return self._ready
        actors = self.actors()
        refs = [a.ready.remote() for a in actors] + [self.aggregator.ready.remote()]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=self.ready_timeout_s)
        if pending:
            waiting = Counter([*self.labels, "aggregator"][refs.index(r)] for r in pending)
            self.close()
            raise ClusterError(
                f"{len(pending)} of {len(refs)} actors were not placed/started within {self.ready_timeout_s:g} s "
                f"({', '.join(f'{n} x {lb}' for lb, n in waiting.items())}); other jobs may hold the "
                "resources (see `ray status`)")
        try:
            rows = ray.get(refs)
        except ray.exceptions.RayTaskError as e:  # an actor refused to start (e.g. its GPU share is too small)
            self.close()
            cause = getattr(e, "cause", None)
            if isinstance(cause, ClusterError):
                raise ClusterError(str(cause)) from None
            raise
        except BaseException:
            self.close()
            raise
        self._ready = [dict(r, label=lb, executor="ray", pooled=not self.plan.per_client, stage="start")
                       for r, lb in zip(rows, [*self.labels, "aggregator"], strict=True)]
        first = 1 if self.server is not None else 0
        self.slot_nodes = [r.get("node_id") or None for r in rows[first:first + len(self.slots)]]
        self._aggregator_node = rows[-1].get("node_id") or None
        return self._ready

    def data_refs(self, data: Any) -> tuple[Any, Any]:
        """Object refs of a dataset's ``(images, labels)``, put once per dataset object."""
        key = id(data)
        if key not in self._data:
            self._data[key] = (ray.put(data.images.numpy()), ray.put(data.labels.numpy()))
        return self._data[key]

    def setup(self, spec: RunSpec) -> RunSetup:
        """Set a run up on every slot (and the server when the method has one); wait until done."""
        if spec.method.server(spec.cfg) is not None and self.server is None:
            raise ClusterError(f"{spec.method.name}: the pool was planned without a server actor")
        missing = {d.name for d in spec.devices} - {c for k in self.plan.slot_classes for c in self.plan.classes_of(k)}
        if missing:
            raise ClusterError(f"devices.mix: the pool has no slot of device classes {sorted(missing)}")
        train = spec.train
        setup = RunSetup(
            key=uuid.uuid4().hex[:12], cfg=spec.cfg, method=spec.method, num_classes=spec.num_classes,
            checkpoint=spec.checkpoint, train=self.data_refs(train), test=self.data_refs(spec.test),
            dataset=(train.num_classes, train.name, tuple(train.class_names)),
            server=self.server if spec.method.server(spec.cfg) is not None else None,
            cuts=(spec.global_cut, spec.server_cut) if spec.cut_plan is not None else None)
        waits = [a.setup.remote(setup) for a in self.slots]
        if setup.server is not None:
            waits.append(self.server.setup.remote(setup))
        ray.get(waits)
        self._setups[setup.key] = setup
        return setup

    # ------------------------------------------------------------------ recovery

    def alive(self, actor: Any, timeout_s: float = 60.0) -> bool:
        """Whether ``actor`` answers (False when it died; a busy actor that does not answer in time counts as alive)."""
        try:
            ray.get(actor.ready.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            return False
        except ray.exceptions.GetTimeoutError:
            return True
        return True

    def _start(self, actor: Any, label: str, setups: Sequence[RunSetup]) -> dict[str, Any]:
        """Wait for a new actor to start and set the given runs up on it; its resources row."""
        try:
            row = ray.get(actor.ready.remote(), timeout=self.ready_timeout_s)
            ray.get([actor.setup.remote(s) for s in setups])
            return row
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ClusterError(f"could not restart the {label} actor: {first}") from None

    def restart_slot(self, i: int) -> None:
        """Replace the client actor of slot ``i`` (it died) by a new one hosting the same runs."""
        old = self.slots[i]
        try:
            ray.kill(old)
        except Exception as e:  # noqa: BLE001 - it is gone already
            log.debug("ray.kill failed: %s", e)
        new = self._new_slot(i)
        self.slots[i] = new
        row = self._start(new, f"client:{self.plan.slot_classes[i]} (slot {i})", list(self._setups.values()))
        self.slot_nodes[i] = row.get("node_id") or None
        log.info("restarted the client actor of slot %d", i)

    def restart_server(self) -> None:
        """Replace the server actor (it died) by a new one hosting the same runs' bodies."""
        try:
            ray.kill(self.server)
        except Exception as e:  # noqa: BLE001 - it is gone already
            log.debug("ray.kill failed: %s", e)
        self.server = self._new_server()
        self._start(self.server, "server", [s for s in self._setups.values() if s.server is not None])
        log.info("restarted the server actor")

    def restart_aggregator(self) -> None:
        """Replace the aggregator actor (it died)."""
        try:
            ray.kill(self.aggregator)
        except Exception as e:  # noqa: BLE001 - it is gone already
            log.debug("ray.kill failed: %s", e)
        self.aggregator = self._new_aggregator()
        self._aggregator_node = self._start(self.aggregator, "aggregator", []).get("node_id") or None

    def heal(self) -> list[str]:
        """Restart every actor of the pool that died; the labels of those restarted."""
        restarted = []
        if self.server is not None and not self.alive(self.server):
            self.restart_server()
            restarted.append("server")
        for i, a in enumerate(self.slots):
            if not self.alive(a):
                self.restart_slot(i)
                restarted.append(f"client:{self.plan.slot_classes[i]}")
        if self.aggregator is not None and not self.alive(self.aggregator):
            self.restart_aggregator()
            restarted.append("aggregator")
        return restarted

    def drop(self, key: str) -> None:
        """Forget a finished run on every actor."""
        self._setups.pop(key, None)
        for a in self.actors():
            try:
                a.drop.remote(key)
            except Exception as e:  # noqa: BLE001 - best effort; the actor may be gone
                log.debug("drop failed: %s", e)

    def close(self) -> None:
        """Kill the actors of this pool (Ray itself stays up)."""
        if ray.is_initialized():
            for a in [self.server, self.aggregator, *self._node_aggregators.values(), *self.slots]:
                if a is None:
                    continue
                try:
                    ray.kill(a)
                except Exception as e:  # noqa: BLE001 - best effort; the actor may already be gone
                    log.debug("ray.kill failed: %s", e)
        self.server, self.aggregator, self.slots = None, None, []
        self._node_aggregators.clear()
        self._data.clear()
        self._setups.clear()
