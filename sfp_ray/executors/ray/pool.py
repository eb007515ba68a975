"""The actor pool of a Ray simulation: starting the planned actors, and keeping the pool whole.

A pool starts the actors of a :class:`~sfp_ray.executors.ray.planning.PoolPlan` at once
(placement and imports run in the background). It can serve several runs one after another
(``sfp-ray compare`` over methods and seeds): actors are started once, each run is set up on
them by key, and the training data is put into the object store once per dataset.

Recovery: an actor that died is replaced by a new one, which is set up again for every run
the pool hosts (:meth:`ActorPool.restart_slots`, :meth:`ActorPool.restart_server`,
:meth:`ActorPool.restart_aggregator`, :meth:`ActorPool.heal`); the executor decides when.
A new actor asks for the same options (its memory included) and gets the same memory
estimate as the one it replaces. When the actor's node is gone, the slot is placed again as
:func:`~sfp_ray.executors.ray.nodes.placement` says; when it cannot be, or when the new
actor is not placed within ``ray.placement_timeout_s``, the slot is left without an actor
and the executor fails its clients with the reason. :meth:`ActorPool.check_nodes`, called
before every round, notices nodes that left or joined: it replaces what was lost, tries the
slots left out again when the cluster's nodes changed, and moves slots placed away back to
a node of their class when one offers it. The server and the root aggregator are always
placed again, on any node with room; a per-node aggregator of a lost node is dropped (one is
made again where states are folded). Every such event is one line (``notify``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sfp_ray.devices import DeviceProfile, device_resource
from sfp_ray.errors import ClusterError
from sfp_ray.executors.base import RunSpec
from sfp_ray.executors.ray.actors import ClientActor, RunSetup, ServerActor
from sfp_ray.executors.ray.aggregator import AggregatorActor
from sfp_ray.executors.ray.lifecycle import answers, await_started, kill, wait_started
from sfp_ray.executors.ray.nodes import (
    NodeInfo,
    alive_nodes,
    hosted_text,
    left_out_lines,
    placement,
    room_left,
    slots_text,
)
from sfp_ray.executors.ray.planning import PoolPlan, plan_pool, route
from sfp_ray.executors.ray.runtime import cluster_nodes
from sfp_ray.sizing import PoolMemory, pool_memory

log = logging.getLogger(__name__)

# placement and route are re-exported: tests import them from here
__all__ = ["ActorPool", "placement", "route"]

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
        rows = wait_started([(lb, a) for _, lb, a in labelled], self.ready_timeout_s, self.close)
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
        return answers(actor, timeout_s)

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
                hosted = hosted_text(self.plan.slot_classes, [k for k, n in self.node_of.items() if n == nid])
                self.notify(f"Ray node {info.describe()} was lost" + (f", with {hosted}" if hosted else ""))
        self._nodes = nodes
        return nodes

    def _where(self, node_id: str) -> str:
        info = self._nodes.get(node_id)
        return f"node {info.describe()}" if info is not None else f"node {node_id[:8]}"

    def _free(self, nodes: Mapping[str, NodeInfo]) -> list[dict[str, float]]:
        """What the alive nodes have left once this pool's actors took their share (other jobs not counted)."""
        actors: dict[Key, Any] = {"server": self.server, "aggregator": self.aggregator, **dict(enumerate(self.slots))}
        held = [(nid, self.options_of.get(key, {})) for key, nid in self.node_of.items() if actors.get(key) is not None]
        # per-node aggregators are asked for on their node (a soft affinity: where they most likely are)
        held += [(nid, self.plan.aggregator_options) for nid in self._node_aggregators]
        return room_left(nodes, held)

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
            kill(self._node_aggregators.pop(nid))
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

    def _await(self, actors: Mapping[Key, Any]) -> tuple[dict[Key, dict[str, Any]], dict[Key, str]]:
        """Wait for new actors to be placed and started and set the runs up on them (:func:`await_started`)."""
        return await_started(actors, self.placement_timeout_s, self._runs_of)

    def _runs_of(self, key: Key) -> list[RunSetup]:
        """The runs an actor hosts: every run on a slot, the runs with a body on the server, none on the aggregator."""
        if key == "aggregator":
            return []
        return [s for s in self._setups.values() if key != "server" or s.server is not None]

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
            kill(self.slots[i])
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
                kill(actor)
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
            what = slots_text(self.plan.slot_classes, slots)
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
        for line in left_out_lines(self.plan, self.lost, self.live_classes(), [i for i in indices if i in self.lost]):
            self.notify(line)

    def _leave_out(self, i: int, reason: str, node_lost: bool, seen: frozenset[str]) -> None:
        self.lost[i] = f"node lost: {reason}" if node_lost and not reason.startswith("node lost") else reason
        self._tried[i] = seen

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
                kill(actor)
                self.options_of[i] = away_options[i]
                self._tried[i] = seen
                log.info("slot %d stays away from its class: %s", i, failed[i])
                continue
            kill(self.slots[i])
            self.slots[i], self.node_of[i] = actor, str(rows[i].get("node_id", ""))
            self.away.discard(i)
            self._tried.pop(i, None)
            moved.setdefault((self.plan.slot_classes[i], self.node_of[i]), []).append(i)
        for (cls, node), group in moved.items():
            self.notify(f"{slots_text(self.plan.slot_classes, group)} back on {self._where(node)}, which offers "
                        f"{device_resource(cls)}")
        if failed:
            self.notify(f"{slots_text(self.plan.slot_classes, list(failed))} stayed away from the nodes of "
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
        kill(self.server)
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
            kill(actor)
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
        kill(self.aggregator)
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
                kill(a)
        self.server, self.aggregator, self.slots = None, None, []
        self._node_aggregators.clear()
        self.node_of.clear()
        self.away.clear()
        self.lost.clear()
        self._data.clear()
        self._setups.clear()

