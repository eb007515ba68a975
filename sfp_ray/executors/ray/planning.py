"""Planning a Ray simulation's actor pool: sized from the cluster with no knobs.

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
in Ray's actor queue. The actors themselves are started by
:class:`~sfp_ray.executors.ray.pool.ActorPool`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sfp_ray.devices import DeviceProfile, device_resource
from sfp_ray.errors import ClusterError, ConfigError
from sfp_ray.executors.ray.runtime import check_fit
from sfp_ray.sizing import MemoryEstimate, PoolMemory

__all__ = ["PoolPlan", "plan_pool", "plan_slots", "route"]


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
