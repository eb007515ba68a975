"""The actors of a Ray simulation, sized from the cluster with no knobs.

A pool is one server actor (when a method needs a body), one aggregator actor and
**device slots**: client actors, each created with the Ray tickets of one device class
(``DeviceProfile.ray_options``), plus one unit of ``device:<class>`` when the cluster
offers that resource (so a client lands on a node standing for its class).

Sizing (:func:`plan_pool`), as Flower sizes its actor pool from the cluster's resources:

* when the cluster has no GPU, device classes that ask for a GPU share run on the CPU
  instead: their GPU ticket is dropped, one notice says so, and ``resources.csv`` records
  ``gpu_fallback``;
* one slot per client when all of them (with the server and a per-actor memory estimate)
  fit the cluster at once; otherwise the largest number of slots that fits, shared out
  among the device classes in use, at least one per class, the rest in proportion to the
  class's client count (D'Hondt, :func:`plan_slots`). ``ray.max_actors`` caps it;
* a shape that cannot be placed at all fails at once, naming the device class and the
  shortfall (:func:`~sfp_ray.executors.ray.runtime.check_fit`), e.g. a custom resource
  that no node offers.

Each round, the round's clients of a class are dealt round-robin onto that class's slots
in client-id order (:func:`route`); clients sharing a slot run one after another in Ray's
actor queue. A pool can serve several runs one after another (``sfp-ray compare`` over
methods and seeds): actors are started once, each run is set up on them by key, and the
training data is put into the object store once per dataset.

Recovery: an actor that died is replaced by a new one, which is set up again for every run
the pool hosts (:meth:`ActorPool.restart_slots`, :meth:`ActorPool.restart_server`,
:meth:`ActorPool.restart_aggregator`, :meth:`ActorPool.heal`); the executor decides when.
When the actor's node is gone, the slot is placed again (:func:`placement`): on a node that
still offers ``device:<class>``; otherwise, under ``ray.on_node_loss: replace``, on any node
with room (the slot is then *placed away* from its class, ``resources.csv``:
``placed_away``); under ``fail``, or when no node has room, or when the new actor is not
placed within ``ray.placement_timeout_s``, the slot is left without an actor and the
executor fails its clients with the reason. :meth:`ActorPool.check_nodes`, called before
every round, notices nodes that left or joined: it replaces what was lost, tries the slots
left out again when the cluster's nodes changed, and moves slots placed away back to a node
of their class when one offers it. A server or aggregator is always placed again, on any
node with room. Every such event is one line (``notify``).
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

#: Planning estimate of one client actor's own memory (torch, timm, a small ViT), MiB. With
#: torch 2.14.1's CUDA build an actor's unique set size is ~430 MiB at start and its PSS ~490
#: (benchmarks/results/ray_overhead.md); the rest of its ~780 MiB RSS is shared libraries.
#: It only bounds how many slots the pool starts, it is never requested from Ray.
ACTOR_MEMORY_MB = 600

__all__ = ["ACTOR_MEMORY_MB", "ActorPool", "NodeInfo", "PoolPlan", "alive_nodes", "placement", "plan_pool",
           "plan_slots", "route"]


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


def route(cohort: Sequence[tuple[int, str]], slot_classes: Sequence[str | None]) -> dict[int, int]:
    """Slot index for each ``(client_id, class)`` of a round: round-robin within each class.

    A slot whose class is None (it has no actor) gets no client.

    Example:
        >>> route([(7, "a"), (2, "b"), (3, "a"), (9, "a")], ["a", "a", "b"])
        {3: 0, 7: 1, 9: 0, 2: 2}
        >>> route([(7, "a"), (3, "a")], ["a", None])
        {3: 0, 7: 0}
    """
    slots_of: dict[str, list[int]] = {}
    for i, c in enumerate(slot_classes):
        if c is not None:
            slots_of.setdefault(c, []).append(i)
    dealt: Counter[str] = Counter()
    out: dict[int, int] = {}
    for cid, cls in sorted(cohort, key=lambda x: (x[1], x[0])):
        if cls not in slots_of:
            raise ValueError(f"no slot of device class {cls!r} (slots: {sorted(slots_of)})")
        ids = slots_of[cls]
        out[cid] = ids[dealt[cls] % len(ids)]
        dealt[cls] += 1
    return out


# --------------------------------------------------------------------------- planning


@dataclass
class PoolPlan:
    """Which actors a pool starts and with which Ray options."""

    slot_classes: list[str]
    profiles: dict[str, DeviceProfile]
    options: dict[str, dict[str, Any]]
    server: DeviceProfile | None = None
    server_options: dict[str, Any] = field(default_factory=dict)
    gpu_fallback: set[str] = field(default_factory=set)
    notices: list[str] = field(default_factory=list)
    per_client: bool = False  # one slot per client


def _options(device: DeviceProfile, nodes: Sequence[Mapping[str, float]], fallback: bool) -> dict[str, Any]:
    offers = any(float(n.get(device_resource(device.name), 0.0)) > 0 for n in nodes)
    opts = device.ray_options(include_memory=False, device_resource_amount=1.0 if offers else 0.0)
    if fallback:
        opts.pop("num_gpus", None)
    return opts


def plan_pool(clients: Sequence[DeviceProfile], server: DeviceProfile | None,
              nodes: Sequence[Mapping[str, float]], *, max_actors: int | None = None,
              actor_memory_mb: float = ACTOR_MEMORY_MB) -> PoolPlan:
    """Plan the actors for clients of the given device profiles (see the module docstring)."""
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
    server_opts = options[server.name] if server is not None else {}
    fixed = ([(f"server:{server.name}", server_opts)] if server is not None else []) + [("aggregator", {"num_cpus": 0})]
    memory = {"memory": int(actor_memory_mb * 2**20)} if any(n.get("memory") for n in nodes) else {}

    def shapes(slot_classes: Sequence[str], with_memory: bool) -> list[tuple[str, dict[str, Any]]]:
        extra = memory if with_memory else {}
        return fixed + [(f"client:{c}", dict(options[c], **extra)) for c in slot_classes]

    def fits(slot_classes: Sequence[str]) -> bool:
        try:
            check_fit(shapes(slot_classes, True), nodes=nodes)
            return True
        except ClusterError:
            return False

    names = [d.name for d in clients]
    n_classes = len(set(names))
    upper = len(names) if max_actors is None else min(len(names), max_actors)
    if upper < n_classes:
        plan_slots(names, upper)  # raises, naming ray.max_actors
    if fits(plan_slots(names, upper)):
        best = upper
    else:
        minimal = plan_slots(names, n_classes)
        if not fits(minimal):
            check_fit(shapes(minimal, False), nodes=nodes)  # names the shortfall of the shapes themselves
            check_fit(shapes(minimal, True), nodes=nodes)  # or the memory of the actors together
        lo, hi = n_classes, upper  # lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(plan_slots(names, mid)) else (lo, mid)
        best = lo
    plan = PoolPlan(plan_slots(names, best), profiles, options, server, server_opts, fallback, notices,
                    per_client=best == len(names))
    if not plan.per_client:
        notices.append(f"{len(names)} clients run on {best} device-slot actors (pooled mode: all of them do not "
                       "fit the cluster at once)")
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
        """``server:<class>`` (when the plan has a server), then ``client:<class>`` of every slot."""
        plan = self.plan
        return ([f"server:{plan.server.name}"] if plan.server is not None else []) + [
            f"client:{c}" for c in plan.slot_classes]

    def _new_server(self, options: Mapping[str, Any]) -> Any:
        plan = self.plan
        assert plan.server is not None
        self.options_of["server"] = dict(options)
        return ServerActor.options(**options, max_concurrency=self.server_max_concurrency).remote(
            plan.server, plan.server.name in plan.gpu_fallback)

    def _new_aggregator(self) -> Any:
        # on the driver's node: the global states it returns are stored where it runs, and there they survive
        # the loss of any other node (the driver does not survive its own node). Ray's soft affinity was seen
        # to put a 0-CPU actor on another node, hence a hard one.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.options_of["aggregator"] = {"num_cpus": 0}
        return AggregatorActor.options(num_cpus=0, scheduling_strategy=here).remote()

    def _new_slot(self, i: int, options: Mapping[str, Any]) -> Any:
        c = self.plan.slot_classes[i]
        self.options_of[i] = dict(options)
        return ClientActor.options(**options).remote(self.plan.profiles[c], i, c in self.plan.gpu_fallback)

    @classmethod
    def for_specs(cls, specs: Sequence[RunSpec], **kwargs: Any) -> ActorPool:
        """A pool planned for the runs ``specs`` on the connected cluster."""
        first = specs[0]
        servers = [s.server_device for s in specs if s.method.server(s.cfg) is not None]
        caps = [s.cfg.ray.max_actors for s in specs if s.cfg.ray.max_actors is not None]
        kwargs.setdefault("placement_timeout_s", first.cfg.ray.placement_timeout_s)
        kwargs.setdefault("on_node_loss", first.cfg.ray.on_node_loss)
        return cls.for_devices(first.devices, servers[0] if servers else None, max_actors=min(caps) if caps else None,
                               server_max_concurrency=first.cfg.ray.server_max_concurrency, **kwargs)

    @classmethod
    def for_devices(cls, clients: Sequence[DeviceProfile], server: DeviceProfile | None, *,
                    max_actors: int | None = None, server_max_concurrency: int = 8, **kwargs: Any) -> ActorPool:
        """A pool planned for clients of these device profiles (and a server) on the connected cluster.

        The actors start at once, in the background: a caller can go on loading data while
        they import torch.
        """
        if not ray.is_initialized():
            raise ClusterError("Ray is not running: call sfp_ray.executors.ray.start_ray first")
        plan = plan_pool(clients, server, cluster_nodes(), max_actors=max_actors)
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
        except BaseException:
            self.close()
            raise
        self._nodes = alive_nodes()
        for (key, _, _), row in zip(labelled, rows, strict=True):
            self.node_of[key] = str(row.get("node_id", ""))
        self._ready = [dict(r, label=lb, executor="ray", pooled=not self.plan.per_client, placed_away=False)
                       for r, (_, lb, _) in zip(rows, labelled, strict=True)]
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
        missing = {d.name for d in spec.devices} - set(self.plan.slot_classes)
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
        """Each slot's device class, None for a slot without an actor (for :func:`route`)."""
        return [c if a is not None else None for c, a in zip(self.plan.slot_classes, self.slots, strict=True)]

    def unavailable(self, device: str) -> str:
        """Why no slot of class ``device`` has an actor: the error its clients fail with."""
        why = [self.lost[i] for i, c in enumerate(self.plan.slot_classes) if c == device and i in self.lost]
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
        return list(free.values())

    def check_nodes(self) -> None:
        """Follow the cluster's nodes before a round (one ``ray.nodes()`` call when nothing changed).

        Actors whose node left are started again (the server and aggregator anywhere with
        room, slots as :func:`placement` says); slots left without an actor are tried again
        when the set of alive nodes changed since their last try; slots placed away from
        their class go back to a node of their class when one offers it.
        """
        nodes = self._look()
        gone = {k for k, n in self.node_of.items() if n and n not in nodes}
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

    def restart_slot(self, i: int) -> None:
        """Replace the client actor of slot ``i`` (it died); see :meth:`restart_slots`."""
        self.restart_slots([i])

    def _leave_out(self, i: int, reason: str, node_lost: bool, seen: frozenset[str]) -> None:
        self.lost[i] = f"node lost: {reason}" if node_lost and not reason.startswith("node lost") else reason
        self._tried[i] = seen

    def _say_left_out(self, slots: Sequence[int]) -> None:
        by_reason: dict[str, list[int]] = {}
        for i in slots:
            by_reason.setdefault(self.lost[i], []).append(i)
        for reason, group in by_reason.items():
            classes = {self.plan.slot_classes[i] for i in group}
            served = [c for c in classes if c in self.live_classes()]
            then = (f"the {', '.join(sorted(served))} clients use the class's other slots" if served else
                    f"the {', '.join(sorted(classes))} clients fail")
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
            for a in [self.server, self.aggregator, *self.slots]:
                if a is None:
                    continue
                try:
                    ray.kill(a)
                except Exception as e:  # noqa: BLE001 - best effort; the actor may already be gone
                    log.debug("ray.kill failed: %s", e)
        self.server, self.aggregator, self.slots = None, None, []
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
