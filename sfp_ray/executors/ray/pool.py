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

Recovery: an actor that died is replaced by a new one with the same options, which is set
up again for every run the pool hosts (:meth:`ActorPool.restart_slot`,
:meth:`ActorPool.restart_server`, :meth:`ActorPool.heal`); the executor decides when.
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

#: Planning estimate of one client actor's own memory (torch, timm, a small ViT), MiB. With
#: torch 2.14.1's CUDA build an actor's unique set size is ~430 MiB at start and its PSS ~490
#: (benchmarks/results/ray_overhead.md); the rest of its ~780 MiB RSS is shared libraries.
#: It only bounds how many slots the pool starts, it is never requested from Ray.
ACTOR_MEMORY_MB = 600

__all__ = ["ACTOR_MEMORY_MB", "ActorPool", "PoolPlan", "plan_pool", "plan_slots", "route"]


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
        try:
            if plan.server is not None:
                self.server = self._new_server()
            self.aggregator = AggregatorActor.options(num_cpus=0).remote()
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
        return ServerActor.options(**plan.server_options, max_concurrency=self.server_max_concurrency).remote(
            plan.server, plan.server.name in plan.gpu_fallback)

    def _new_slot(self, i: int) -> Any:
        c = self.plan.slot_classes[i]
        return ClientActor.options(**self.plan.options[c]).remote(self.plan.profiles[c], i, c in self.plan.gpu_fallback)

    @classmethod
    def for_specs(cls, specs: Sequence[RunSpec], **kwargs: Any) -> ActorPool:
        """A pool planned for the runs ``specs`` on the connected cluster."""
        first = specs[0]
        servers = [s.server_device for s in specs if s.method.server(s.cfg) is not None]
        caps = [s.cfg.ray.max_actors for s in specs if s.cfg.ray.max_actors is not None]
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
        except BaseException:
            self.close()
            raise
        self._ready = [dict(r, label=lb, executor="ray", pooled=not self.plan.per_client)
                       for r, lb in zip(rows, [*self.labels, "aggregator"], strict=True)]
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

    def _start(self, actor: Any, label: str, setups: Sequence[RunSetup]) -> None:
        """Wait for a new actor to start and set the given runs up on it."""
        try:
            ray.get(actor.ready.remote(), timeout=self.ready_timeout_s)
            ray.get([actor.setup.remote(s) for s in setups])
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
        self._start(new, f"client:{self.plan.slot_classes[i]} (slot {i})", list(self._setups.values()))
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
        self.aggregator = AggregatorActor.options(num_cpus=0).remote()
        self._start(self.aggregator, "aggregator", [])

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
            for a in [self.server, self.aggregator, *self.slots]:
                if a is None:
                    continue
                try:
                    ray.kill(a)
                except Exception as e:  # noqa: BLE001 - best effort; the actor may already be gone
                    log.debug("ray.kill failed: %s", e)
        self.server, self.aggregator, self.slots = None, None, []
        self._data.clear()
        self._setups.clear()
