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

Recovery: an actor that died is replaced by a new one, which is set up again for every run
the pool hosts (:meth:`ActorPool.restart_slots`, :meth:`ActorPool.restart_server`,
:meth:`ActorPool.restart_aggregator`, :meth:`ActorPool.heal`); the executor decides when.
A new actor asks for the same options (its memory included) and gets the same memory
estimate as the one it replaces. When the actor's node is gone, the slot is placed again
(:func:`placement`): on a node that still offers ``device:<class>``; otherwise, under
``ray.on_node_loss: replace``, on any node with room (the slot is then *placed away* from
its class, ``resources.csv``: ``placed_away``); under ``fail``, or when no node has room, or
when the new actor is not placed within ``ray.placement_timeout_s``, the slot is left
without an actor and the executor fails its clients with the reason. A slot shared by
several classes (``rpi4+phone``) asks for no ``device:<class>``, so it goes to any node with
room. :meth:`ActorPool.check_nodes`, called before every round, notices nodes that left or
joined: it replaces what was lost, tries the slots left out again when the cluster's nodes
changed, and moves slots placed away back to a node of their class when one offers it. The
server and the root aggregator are always placed again, on any node with room; a per-node
aggregator of a lost node is dropped (one is made again where states are folded). Every
such event is one line (``notify``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sfp_ray.devices import DeviceProfile, device_resource
from sfp_ray.errors import ClusterError, ConfigError
from sfp_ray.executors.base import RunSpec
from sfp_ray.executors.ray.actors import ClientActor, RunSetup, ServerActor
from sfp_ray.executors.ray.aggregator import AggregatorActor
from sfp_ray.executors.ray.runtime import check_fit, cluster_nodes
from sfp_ray.sizing import MemoryEstimate, PoolMemory, pool_memory

log = logging.getLogger(__name__)

__all__ = ["ActorPool", "NodeInfo", "PoolPlan", "alive_nodes", "placement", "plan_pool", "plan_slots", "route"]


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


def route(cohort: Sequence[tuple[int, str]], slot_classes: Sequence[str | None],
          serves: Mapping[str, Sequence[str]] | None = None) -> dict[int, int]:
    """Slot index for each ``(client_id, class)`` of a round: round-robin within each class.

    ``serves`` maps a slot kind to the classes it serves (default: each kind its own class).
    A slot whose kind is None (it has no actor) gets no client.

    Example:
        >>> route([(7, "a"), (2, "b"), (3, "a"), (9, "a")], ["a", "a", "b"])
        {3: 0, 7: 1, 9: 0, 2: 2}
        >>> route([(7, "a"), (2, "b"), (3, "a")], ["a+b", "a+b"], {"a+b": ("a", "b")})
        {3: 0, 7: 1, 2: 0}
        >>> route([(7, "a"), (2, "b"), (3, "a"), (9, "a")], ["a+b", "a+b"], {"a+b": ("a", "b")})
        {3: 0, 7: 1, 9: 0, 2: 1}
        >>> route([(7, "a"), (3, "a")], ["a", None])
        {3: 0, 7: 0}
        >>> route([(7, "a"), (2, "b")], [None, "a+b"], {"a+b": ("a", "b")})
        {7: 1, 2: 1}
    """
    slots_of: dict[str, list[int]] = {}
    for i, kind in enumerate(slot_classes):
        if kind is None:
            continue
        for c in (serves or {}).get(kind, (kind,)):
            slots_of.setdefault(c, []).append(i)
    dealt: Counter[tuple[int, ...]] = Counter()  # per group of slots: classes sharing slots are dealt together
    out: dict[int, int] = {}
    for cid, cls in sorted(cohort, key=lambda x: (x[1], x[0])):
        if cls not in slots_of:
            raise ValueError(f"no slot of device class {cls!r} (slots: {sorted(slots_of)})")
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


def _asking_for(plan: PoolPlan, memory: PoolMemory) -> PoolPlan:
    """``plan`` with every actor asking Ray for its own estimate in ``memory`` (the plan may hold more)."""
    for kind, opts in plan.options.items():
        if "memory" in opts:
            plan.options[kind] = dict(opts, memory=int(memory.client.total))
    if "memory" in plan.aggregator_options:
        plan.aggregator_options = dict(plan.aggregator_options, memory=int(memory.aggregator.total))
    if "memory" in plan.server_options and memory.server is not None:
        plan.server_options = dict(plan.server_options, memory=int(memory.server_at(plan.server_concurrency).total))
    plan.memory = memory
    return plan


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
    estimates and the states a round keeps in flight in the object store
    (:meth:`~sfp_ray.sizing.PoolMemory.with_traffic`; ``ray.memory_fraction``); when even the
    smallest pool needs more, it is planned against the whole node, with a notice: still with the
    states in flight where that holds a pool, else for the estimates alone.
    """
    if memory is not None and memory_fraction < 1.0 and any(float(n.get("memory", 0.0)) > 0 for n in nodes):
        share = [dict(n, memory=float(n["memory"]) * memory_fraction) if n.get("memory") else dict(n) for n in nodes]
        # the share with the states in flight in the object store; else the whole node, still counting them (fewer
        # slots, nothing spilled); else the whole node for the estimates alone. Each actor asks Ray for its estimate.
        attempts = [(share, memory.with_traffic()), (nodes, memory.with_traffic()), (nodes, memory)]
        for i, (where, planned_for) in enumerate(attempts):
            try:
                plan = _asking_for(plan_pool(clients, server, where, max_actors=max_actors, memory=planned_for,
                                             server_max_concurrency=server_max_concurrency), memory)
            except ClusterError:
                if i == len(attempts) - 1:
                    raise
                continue
            if i:
                plan.notices.append(f"ray.memory_fraction={memory_fraction:g}: even the smallest pool needs more of "
                                    f"a node's memory (a client actor: {memory.client.describe()}); planned against "
                                    "the whole node")
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



# --------------------------------------------------------------------------- nodes and re-placement


@dataclass(frozen=True)
class NodeInfo:
    """An alive node of the cluster: its id, address and total resources."""

    node_id: str
    address: str
    resources: Mapping[str, float]

    def describe(self) -> str:
        """``3ecb2eef (10.0.0.7, device:laptop)``: short id, address and the device classes it offers."""
        offers = sorted(k for k, v in self.resources.items() if k.startswith("device:") and v)
        return f"{self.node_id[:8]} ({', '.join([self.address, *offers])})"


def alive_nodes() -> dict[str, NodeInfo]:
    """The alive nodes of the connected cluster, by node id."""
    return {n["NodeID"]: NodeInfo(n["NodeID"], str(n.get("NodeManagerAddress", "")), dict(n.get("Resources") or {}))
            for n in ray.nodes() if n.get("Alive", n.get("alive", False))}


def placement(device: str, options: Mapping[str, Any], nodes: Sequence[Mapping[str, float]], policy: str,
              free: list[dict[str, float]] | None = None) -> tuple[dict[str, Any], bool] | str:
    """Where a client slot of class ``device`` can start now: ``(options, placed away)``, or why it cannot.

    ``options`` are the slot's planned Ray options, ``nodes`` the alive nodes' total
    resources, ``free`` what is left of them now (default: all of it); what the slot will
    take is reserved in ``free``. The slot keeps its options when a node offers
    ``device:<class>`` with room for it (or when the plan did not ask for the class).
    Otherwise, under ``policy="replace"``, it takes the same options without
    ``device:<class>`` (any node with room for its CPUs, GPUs, memory and other resources);
    under ``"fail"``, or when no node has room, the answer is the reason.

    Example:
        >>> opts = {"num_cpus": 0.5, "resources": {"device:laptop": 1.0}}
        >>> placement("laptop", opts, [{"CPU": 2.0, "device:laptop": 2.0}], "replace")
        ({'num_cpus': 0.5, 'resources': {'device:laptop': 1.0}}, False)
        >>> placement("laptop", opts, [{"CPU": 2.0}], "replace")
        ({'num_cpus': 0.5}, True)
        >>> placement("laptop", opts, [{"CPU": 2.0}], "fail")
        'no node offers device:laptop'
        >>> placement("laptop", opts, [{"CPU": 2.0}], "replace", free=[{"CPU": 0.25}])
        'no node offers device:laptop, and no node has room for a laptop actor'
    """
    key = device_resource(device)
    room = free if free is not None else [dict(n) for n in nodes]
    wanted = dict(options.get("resources") or {})
    if key not in wanted:
        return (dict(options), False) if _reserve(room, options) else f"no node has room for a {device} actor"
    offered = any(float(n.get(key, 0.0)) > 0 for n in nodes)
    if offered and _reserve(room, options):
        return dict(options), False
    full = f"the nodes that offer {key} are full" if offered else f"no node offers {key}"
    if policy == "fail":
        return full
    away = {k: v for k, v in options.items() if k != "resources"}
    if len(wanted) > 1:
        away["resources"] = {k: v for k, v in wanted.items() if k != key}
    if _reserve(room, away):
        return away, True
    return f"{full}, and no node has room for a {device} actor"


def _amounts(options: Mapping[str, Any]) -> dict[str, float]:
    """The resources Ray options ask for: ``{"CPU": .., "GPU": .., "memory": .., <custom>: ..}`` (none zero)."""
    need = {"CPU": float(options.get("num_cpus", 1) or 0), "GPU": float(options.get("num_gpus") or 0),
            "memory": float(options.get("memory") or 0)}
    need.update({str(k): float(v) for k, v in (options.get("resources") or {}).items()})
    return {k: v for k, v in need.items() if v > 0}


def _reserve(free: list[dict[str, float]], options: Mapping[str, Any]) -> bool:
    """Take what ``options`` ask for from the first node of ``free`` that has it all; whether one had."""
    need = _amounts(options)
    for node in free:
        if all(node.get(k, 0.0) >= v - 1e-9 for k, v in need.items()):
            for k, v in need.items():
                node[k] = node.get(k, 0.0) - v
            return True
    return False


# --------------------------------------------------------------------------- the pool


#: What the pool keeps an actor under: a slot's index, ``"server"`` or ``"aggregator"``.
Key = int | str


class ActorPool:
    """The actors of a plan, started at once (placement and imports run in the background).

    Args:
        plan: from :func:`plan_pool`.
        ready_timeout_s: how long :meth:`wait_ready` waits at the start while no actor becomes
            placed and started, before giving up with :class:`~sfp_ray.errors.ClusterError`
            (many actors importing torch at once on a small node take a while, so the wait
            goes on as long as they keep coming up).
        server_max_concurrency: requests the server actor serves at once.
        placement_timeout_s: how long an actor started again during the run (after a death or
            a node loss, or moved back to its class) may take to be placed and started.
        on_node_loss: ``replace`` or ``fail`` (``ray.on_node_loss``; see :func:`placement`).
        notify: called with one line per event (a node lost, slots re-placed or left out, the
            server or aggregator started again elsewhere); default: a warning of this module's
            logger.
    """

    def __init__(self, plan: PoolPlan, *, ready_timeout_s: float = 300.0, server_max_concurrency: int = 8,
                 placement_timeout_s: float = 60.0, on_node_loss: str = "replace",
                 notify: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.ready_timeout_s = ready_timeout_s
        self.placement_timeout_s = placement_timeout_s
        self.on_node_loss = on_node_loss
        self.notify: Callable[[str], None] = notify if notify is not None else (lambda msg: log.warning("%s", msg))
        self._ready: list[dict[str, Any]] | None = None
        self._data: dict[int, tuple[Any, Any]] = {}
        self._setups: dict[str, RunSetup] = {}  # the runs set up on the actors, to set up again on a restart
        self.server_max_concurrency = server_max_concurrency
        self.slots: list[Any] = []  # each slot's actor; None while it has none (``lost`` says why)
        self.server: Any = None
        self.aggregator: Any = None
        self.node_of: dict[Key, str] = {}  # the node each actor runs on, once it started
        self.options_of: dict[Key, dict[str, Any]] = {}  # the Ray options each actor was started with
        self.lost_nodes: set[str] = set()  # nodes seen leaving the cluster
        self.away: set[int] = set()  # slots started without their device:<class> resource
        self.lost: dict[int, str] = {}  # slots without an actor, and why (their clients fail with it)
        self._tried: dict[int, frozenset[str]] = {}  # the alive nodes when a slot's last placement failed
        self._nodes: dict[str, NodeInfo] = {}  # the alive nodes at the last look
        self._node_aggregators: dict[str, Any] = {}  # per-node aggregators when the slots span several nodes
        try:
            if plan.server is not None:
                self.server = self._new_server(plan.server_options)
            self.aggregator = self._new_aggregator()
            for i, c in enumerate(plan.slot_classes):
                self.slots.append(self._new_slot(i, plan.options[c]))
        except BaseException:
            self.close()
            raise

    @property
    def labels(self) -> list[str]:
        """``server:<class>`` (when the plan has a server), then ``client:<kind>`` of every slot."""
        plan = self.plan
        return ([f"server:{plan.server.name}"] if plan.server is not None else []) + [
            f"client:{c}" for c in plan.slot_classes]

    @property
    def slot_nodes(self) -> list[str | None]:
        """The node each slot's actor runs on (None until it started, or while the slot has no actor)."""
        return [self.node_of.get(i) or None for i in range(len(self.plan.slot_classes))]

    def _new_server(self, options: Mapping[str, Any]) -> Any:
        plan = self.plan
        assert plan.server is not None
        est = plan.server_estimate
        self.options_of["server"] = dict(options)
        return ServerActor.options(**options, max_concurrency=self.server_max_concurrency).remote(
            plan.server, plan.server.name in plan.gpu_fallback, est.row() if est is not None else None)

    def _new_slot(self, i: int, options: Mapping[str, Any]) -> Any:
        c = self.plan.slot_classes[i]
        est = self.plan.memory.client.row() if self.plan.memory is not None else None
        self.options_of[i] = dict(options)
        return ClientActor.options(**options).remote(self.plan.profiles[c], i, c in self.plan.gpu_fallback, est)

    def _new_aggregator(self, node: str | None = None) -> Any:
        """The root aggregator actor, or (``node``) one for that node, which folds the states of its clients.

        Both prefer their node (a soft affinity: elsewhere when it has no room); the root's is
        the driver's, so the global states it returns are stored where they outlive the loss
        of any other node.
        """
        opts = dict(self.plan.aggregator_options)
        if node is None:
            self.options_of["aggregator"] = dict(opts)
        here = node if node is not None else ray.get_runtime_context().get_node_id()
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=True)
        est = self.plan.memory.aggregator.row() if self.plan.memory is not None else None
        return AggregatorActor.options(**opts).remote(est)

    def aggregator_for(self, slot: int) -> tuple[str, Any]:
        """``(node id, aggregator)`` that folds the states of clients run by ``slot``.

        The root aggregator for slots on its own node; a slot on any other node gets that node's
        aggregator (created on first use), so each node's states are summed where they are and
        one partial sum per node crosses the network, even when every slot sits away from the
        root's node.
        """
        slot_nodes = self.slot_nodes
        node = slot_nodes[slot] if 0 <= slot < len(slot_nodes) else None
        root = self.node_of.get("aggregator") or None
        if node is None or root is None or node == root:
            return root or "", self.aggregator
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
        kwargs.setdefault("placement_timeout_s", first.cfg.ray.placement_timeout_s)
        kwargs.setdefault("on_node_loss", first.cfg.ray.on_node_loss)
        return cls.for_devices(first.devices, servers[0] if servers else None, max_actors=min(caps) if caps else None,
                               server_max_concurrency=first.cfg.ray.server_max_concurrency, memory=memory,
                               memory_fraction=first.cfg.ray.memory_fraction, **kwargs)

    @classmethod
    def for_devices(cls, clients: Sequence[DeviceProfile], server: DeviceProfile | None, *,
                    max_actors: int | None = None, server_max_concurrency: int = 8, memory: PoolMemory | None = None,
                    memory_fraction: float = 1.0, **kwargs: Any) -> ActorPool:
        """A pool planned for clients of these device profiles (and a server) on the connected cluster.

        ``memory``: what each actor asks Ray for (:func:`~sfp_ray.sizing.pool_memory`; None:
        nothing), planned into ``memory_fraction`` of each node; the other keyword arguments go
        to :class:`ActorPool` (``ready_timeout_s``, ``placement_timeout_s``, ``on_node_loss``,
        ``notify``). The actors start at once, in the background: a caller can go on loading
        data while they import torch.
        """
        if not ray.is_initialized():
            raise ClusterError("Ray is not running: call sfp_ray.executors.ray.start_ray first")
        plan = plan_pool(clients, server, cluster_nodes(), max_actors=max_actors, memory=memory,
                         server_max_concurrency=server_max_concurrency, memory_fraction=memory_fraction)
        return cls(plan, server_max_concurrency=server_max_concurrency, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def actors(self) -> list[Any]:
        """The server (when there is one) and every slot that has an actor."""
        return ([self.server] if self.server is not None else []) + [a for a in self.slots if a is not None]

    def labelled_actors(self) -> list[tuple[str, Any]]:
        """``(label, actor)`` of the server, every slot that has an actor, and the aggregator."""
        return [(label, a) for _, label, a in self._labelled()]

    def _labelled(self) -> list[tuple[Key, str, Any]]:
        out: list[tuple[Key, str, Any]] = []
        if self.server is not None and self.plan.server is not None:
            out.append(("server", f"server:{self.plan.server.name}", self.server))
        out += [(i, f"client:{c}", a) for i, (c, a) in enumerate(zip(self.plan.slot_classes, self.slots, strict=True))
                if a is not None]
        if self.aggregator is not None:
            out.append(("aggregator", "aggregator", self.aggregator))
        return out

    def wait_ready(self) -> list[dict[str, Any]]:
        """Wait until every actor is placed and started; their resource rows (once; the aggregator's last)."""
        if self._ready is not None:
            return self._ready
        labelled = self._labelled()
        refs = [a.ready.remote() for _, _, a in labelled]
        pending = list(refs)
        while pending:  # as long as actors keep coming up, wait for the others
            done, pending = ray.wait(pending, num_returns=1, timeout=self.ready_timeout_s)
            if not done:
                break
        if pending:
            waiting = Counter(labelled[refs.index(r)][1] for r in pending)
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
        self._nodes = alive_nodes()
        for (key, _, _), row in zip(labelled, rows, strict=True):
            self.node_of[key] = str(row.get("node_id") or "")
        self._ready = [dict(r, label=lb, executor="ray", pooled=not self.plan.per_client, placed_away=False,
                            stage="start") for r, (_, lb, _) in zip(rows, labelled, strict=True)]
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
        waits = [a.setup.remote(setup) for a in self.slots if a is not None]
        if setup.server is not None:
            waits.append(self.server.setup.remote(setup))
        ray.get(waits)
        self._setups[setup.key] = setup
        return setup

    # ------------------------------------------------------------------ recovery

    def alive(self, actor: Any, timeout_s: float = 60.0) -> bool:
        """Whether ``actor`` answers (False when it died; a busy actor that does not answer in time counts as alive).

        An actor Ray cannot reach for now (``ActorUnavailableError``: its node may be dying,
        not yet declared dead) is asked again until ``timeout_s``, and counts as dead then.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(actor.ready.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return True
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.5)
            except ray.exceptions.RayActorError:
                return False
            except ray.exceptions.GetTimeoutError:
                return True

    def live_classes(self) -> list[str | None]:
        """Each slot's kind, None for a slot without an actor (for :func:`route`, with ``plan.serves``)."""
        return [c if a is not None else None for c, a in zip(self.plan.slot_classes, self.slots, strict=True)]

    def served_classes(self) -> set[str]:
        """The device classes that a slot with an actor serves (a shared slot serves several)."""
        return {c for kind in self.live_classes() if kind is not None for c in self.plan.classes_of(kind)}

    def unavailable(self, device: str) -> str:
        """Why no slot serving class ``device`` has an actor: the error its clients fail with."""
        why = [self.lost[i] for i, kind in enumerate(self.plan.slot_classes)
               if device in self.plan.classes_of(kind) and i in self.lost]
        return why[0] if why else f"no slot of device class {device!r} has an actor"

    def _look(self) -> dict[str, NodeInfo]:
        """The alive nodes now; one line for each node that left since the last look."""
        nodes = alive_nodes()
        for nid, info in self._nodes.items():
            if nid not in nodes:
                self.lost_nodes.add(nid)
                hosted = self._hosted(nid)
                self.notify(f"Ray node {info.describe()} was lost" + (f", with {hosted}" if hosted else ""))
        self._nodes = nodes
        return nodes

    def _hosted(self, node_id: str) -> str:
        """What of this pool ran on a node: ``client:laptop slots 3, 4 and the server``."""
        keys = [k for k, n in self.node_of.items() if n == node_id]
        parts = [_slots_text(self.plan.slot_classes, [k for k in keys if isinstance(k, int)])]
        parts = [p for p in parts if p] + [f"the {k} actor" for k in ("server", "aggregator") if k in keys]
        if len(parts) <= 1:
            return "".join(parts)
        return ", ".join(parts[:-1]) + " and " + parts[-1]

    def _where(self, node_id: str) -> str:
        info = self._nodes.get(node_id)
        return f"node {info.describe()}" if info is not None else f"node {node_id[:8]}"

    def _free(self, nodes: Mapping[str, NodeInfo]) -> list[dict[str, float]]:
        """What the alive nodes have left once this pool's actors took their share (other jobs not counted)."""
        free = {nid: dict(info.resources) for nid, info in nodes.items()}
        actors: dict[Key, Any] = {"server": self.server, "aggregator": self.aggregator, **dict(enumerate(self.slots))}
        for key, nid in self.node_of.items():
            if nid in free and actors.get(key) is not None:
                for k, v in _amounts(self.options_of.get(key, {})).items():
                    free[nid][k] = free[nid].get(k, 0.0) - v
        for nid in self._node_aggregators:  # asked for on their node (a soft affinity: where they most likely are)
            if nid in free:
                for k, v in _amounts(self.plan.aggregator_options).items():
                    free[nid][k] = free[nid].get(k, 0.0) - v
        return list(free.values())

    def check_nodes(self) -> None:
        """Follow the cluster's nodes before a round (one ``ray.nodes()`` call when nothing changed).

        Actors whose node left are started again (the server and the root aggregator anywhere
        with room, slots as :func:`placement` says); the per-node aggregator of a node that
        left is dropped (folds of that node's clients are not expected any more); slots left
        without an actor are tried again when the set of alive nodes changed since their last
        try; slots placed away from their class go back to a node of their class when one
        offers it.
        """
        nodes = self._look()
        gone = {k for k, n in self.node_of.items() if n and n not in nodes}
        for nid in [n for n in self._node_aggregators if n not in nodes]:
            self._kill(self._node_aggregators.pop(nid))
        if "server" in gone:
            self.notify(f"the server actor was restarted on {self.restart_server() or 'another node'}")
        if "aggregator" in gone:
            self.restart_aggregator()
            self.notify(f"the aggregator actor was restarted on {self._where(self.node_of['aggregator'])}")
        seen = frozenset(nodes)
        offered = {k for n in nodes.values() for k, v in n.resources.items() if k.startswith("device:") and v}
        back = [i for i in sorted(self.away)
                if self._tried.get(i) != seen and device_resource(self.plan.slot_classes[i]) in offered]
        moved = self._move_back(back) if back else False
        todo = {k for k in gone if isinstance(k, int)} | {i for i in self.lost if moved or self._tried.get(i) != seen}
        if todo:
            self.restart_slots(sorted(todo))

    def _kill(self, actor: Any) -> None:
        if actor is None:
            return
        try:
            ray.kill(actor)
        except Exception as e:  # noqa: BLE001 - it is gone already
            log.debug("ray.kill failed: %s", e)

    def _await(self, actors: Mapping[Key, Any]) -> tuple[dict[Key, dict[str, Any]], dict[Key, str]]:
        """Wait for new actors to be placed and started and set the runs up on them.

        Returns the start-up rows of those that came up and, for the others, why not (an
        actor still pending after ``placement_timeout_s``, or one that died starting).
        """
        rows: dict[Key, dict[str, Any]] = {}
        failed: dict[Key, str] = {}
        if not actors:
            return rows, failed
        refs = {a.ready.remote(): k for k, a in actors.items()}
        done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=self.placement_timeout_s)
        for r in pending:
            failed[refs[r]] = f"not placed within {self.placement_timeout_s:g} s (ray.placement_timeout_s)"
        for r in done:
            try:
                rows[refs[r]] = ray.get(r)
            except ray.exceptions.RayError as e:
                failed[refs[r]] = _first_line(e)
        setups = {k: [s for s in self._setups.values() if k != "server" or s.server is not None] for k in rows
                  if k != "aggregator"}
        for k, runs in setups.items():
            try:
                ray.get([actors[k].setup.remote(s) for s in runs])
            except ray.exceptions.RayError as e:
                failed[k] = _first_line(e)
                del rows[k]
        return rows, failed

    def restart_slots(self, indices: Sequence[int]) -> None:
        """Start new actors for the slots ``indices`` (their actors died, or they have none).

        Each is placed as :func:`placement` says; a slot that cannot be placed, or whose
        actor is not placed and started within ``placement_timeout_s``, is left without an
        actor (``lost``) and tried again by :meth:`check_nodes` once the cluster's nodes
        change. One line per outcome when a node was lost or a slot leaves its class.
        """
        nodes = self._look()
        seen = frozenset(nodes)
        capacity = [n.resources for n in nodes.values()]
        starts: dict[int, tuple[dict[str, Any], bool]] = {}
        node_lost: dict[int, bool] = {}
        for i in indices:
            before = self.node_of.pop(i, "")
            node_lost[i] = (bool(before) and before not in nodes) or self.lost.get(i, "").startswith("node lost")
            self._kill(self.slots[i])
            self.slots[i] = None
            self.away.discard(i)
        room = self._free(nodes)
        for i in indices:
            cls = self.plan.slot_classes[i]
            decision = placement(cls, self.plan.options[cls], capacity, self.on_node_loss, free=room)
            if isinstance(decision, str):
                self._leave_out(i, decision, node_lost[i], seen)
            else:
                starts[i] = decision
        actors = {i: self._new_slot(i, opts) for i, (opts, _) in starts.items()}
        rows, failed = self._await(actors)
        placed: dict[tuple[str, str, bool, bool], list[int]] = {}
        for i, actor in actors.items():
            if i in failed:
                self._kill(actor)
                self._leave_out(i, str(failed[i]), node_lost[i], seen)
                continue
            was_lost = i in self.lost
            self.slots[i], self.node_of[i] = actor, str(rows[i].get("node_id", ""))
            self.lost.pop(i, None)
            self._tried.pop(i, None)
            if starts[i][1]:
                self.away.add(i)
            group = (self.plan.slot_classes[i], self.node_of[i], starts[i][1], node_lost[i] or was_lost)
            placed.setdefault(group, []).append(i)
        for (cls, node, away, moved), slots in placed.items():
            what = _slots_text(self.plan.slot_classes, slots)
            if away:
                their = "its" if len(slots) == 1 else "their"
                key = device_resource(cls)
                why = (f"the nodes that offer {key} are full" if any(n.resources.get(key) for n in nodes.values())
                       else f"no node offers {key}")
                self.notify(f"{what} re-placed on {self._where(node)}, away from {their} class: {why} "
                            "(ray.on_node_loss=replace)")
            elif moved:
                self.notify(f"{what} re-placed on {self._where(node)}")
            else:
                log.info("restarted the client actor of %s", what)
        self._say_left_out([i for i in indices if i in self.lost])

    def _leave_out(self, i: int, reason: str, node_lost: bool, seen: frozenset[str]) -> None:
        self.lost[i] = f"node lost: {reason}" if node_lost and not reason.startswith("node lost") else reason
        self._tried[i] = seen

    def _say_left_out(self, slots: Sequence[int]) -> None:
        by_reason: dict[str, list[int]] = {}
        for i in slots:
            by_reason.setdefault(self.lost[i], []).append(i)
        live = set(self.live_classes())
        for reason, group in by_reason.items():
            kinds = {self.plan.slot_classes[i] for i in group}  # a shared slot's kind stands for several classes
            served = sorted(c for k in kinds if k in live for c in self.plan.classes_of(k))
            then = (f"the {', '.join(served)} clients use the class's other slots" if served else
                    f"the {', '.join(sorted(c for k in kinds for c in self.plan.classes_of(k)))} clients fail")
            them = "it" if len(group) == 1 else "them"
            self.notify(f"{_slots_text(self.plan.slot_classes, group)} left out ({reason}); {then} until a node can "
                        f"take {them} (checked before every round)")

    def _move_back(self, slots: Sequence[int]) -> bool:
        """Start slots placed away again on a node of their class; a slot that cannot be stays where it is.

        Returns whether one moved (its old place is free then).
        """
        seen = frozenset(self._nodes)
        capacity = [n.resources for n in self._nodes.values()]
        room = self._free(self._nodes)
        fits = []
        for i in slots:
            cls = self.plan.slot_classes[i]
            if placement(cls, self.plan.options[cls], capacity, "fail", free=room) == (self.plan.options[cls], False):
                fits.append(i)
            else:
                self._tried[i] = seen  # the nodes of its class are full: tried again when the nodes change
        away_options = {i: self.options_of.get(i, {}) for i in fits}
        actors = {i: self._new_slot(i, self.plan.options[self.plan.slot_classes[i]]) for i in fits}
        rows, failed = self._await(actors)
        moved: dict[tuple[str, str], list[int]] = {}
        for i, actor in actors.items():
            if i in failed:
                self._kill(actor)
                self.options_of[i] = away_options[i]
                self._tried[i] = seen
                log.info("slot %d stays away from its class: %s", i, failed[i])
                continue
            self._kill(self.slots[i])
            self.slots[i], self.node_of[i] = actor, str(rows[i].get("node_id", ""))
            self.away.discard(i)
            self._tried.pop(i, None)
            moved.setdefault((self.plan.slot_classes[i], self.node_of[i]), []).append(i)
        for (cls, node), group in moved.items():
            self.notify(f"{_slots_text(self.plan.slot_classes, group)} back on {self._where(node)}, which offers "
                        f"{device_resource(cls)}")
        if failed:
            self.notify(f"{_slots_text(self.plan.slot_classes, list(failed))} stayed away from the nodes of "
                        f"{'its' if len(failed) == 1 else 'their'} class ({next(iter(failed.values()))}); tried again "
                        "when the cluster's nodes change")
        return bool(moved)

    def restart_server(self) -> str:
        """Replace the server actor (it died) by one hosting the same runs' bodies.

        It keeps its class (``device:<class>``) while a node offers it, and goes to any node
        with room otherwise; :class:`~sfp_ray.errors.ClusterError` when no node can take it.
        Returns where it now runs when its node was lost or it left its class, else ``""``.
        """
        plan = self.plan
        assert plan.server is not None
        nodes = self._look()
        before = self.node_of.get("server", "")
        self._kill(self.server)
        self.server = None
        self.node_of.pop("server", None)
        decision = placement(plan.server.name, plan.server_options, [n.resources for n in nodes.values()], "replace",
                             free=self._free(nodes))
        if isinstance(decision, str):
            raise ClusterError(f"could not restart the server actor: {decision}")
        options, away = decision
        actor = self._new_server(options)
        rows, failed = self._await({"server": actor})
        if failed:
            self._kill(actor)
            raise ClusterError(f"could not restart the server actor: {failed['server']}")
        self.server, self.node_of["server"] = actor, str(rows["server"].get("node_id", ""))
        log.info("restarted the server actor")
        where = self._where(self.node_of["server"])
        if away:
            return f"{where}, away from its class: no node offers {device_resource(plan.server.name)}"
        return where if before and before not in nodes else ""

    def restart_aggregator(self) -> None:
        """Replace the aggregator actor (it died)."""
        self._look()
        self._kill(self.aggregator)
        self.aggregator = self._new_aggregator()
        rows, failed = self._await({"aggregator": self.aggregator})
        if failed:
            raise ClusterError(f"could not restart the aggregator actor: {failed['aggregator']}")
        self.node_of["aggregator"] = str(rows["aggregator"].get("node_id", ""))

    def heal(self) -> list[str]:
        """Restart every actor of the pool that died; the labels of those restarted."""
        restarted = []
        if self.server is not None and not self.alive(self.server):
            where = self.restart_server()
            self.notify("the server actor died; it was restarted" + (f" on {where}" if where else ""))
            restarted.append("server")
        dead = [i for i, a in enumerate(self.slots) if a is not None and not self.alive(a)]
        if dead:
            self.restart_slots(dead)
            restarted.extend(f"client:{self.plan.slot_classes[i]}" for i in dead)
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
        self.node_of.clear()
        self.away.clear()
        self.lost.clear()
        self._data.clear()
        self._setups.clear()


def _slots_text(classes: Sequence[str], slots: Sequence[int]) -> str:
    """``client:laptop slots 3, 4`` (classes in order of first slot; ``; `` between classes); empty for none.

    Example:
        >>> _slots_text(["rpi4", "laptop", "laptop"], [2, 1])
        'client:laptop slots 1, 2'
    """
    by_class: dict[str, list[int]] = {}
    for i in sorted(slots):
        by_class.setdefault(classes[i], []).append(i)
    return "; ".join(f"client:{c} slot{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
                     for c, ids in by_class.items())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
